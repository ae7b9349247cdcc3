"""End to end: the whole smoke DAG through Snakemake in a temporary copy of the project, then the same DAG
through DVC (adopting Snakemake's outputs), reruns, and a parameter change that must rerun only what depends
on it. Slow (minutes): it is the test that the product works."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ROOT

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DISTILL = {"kd", "fourier_kd", "fourier_kd_reverse", "freq_ce"}


def sh(cmd, repo, env, timeout=1800, ok=True):
    r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout, shell=True)
    if ok:
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def project_copy(folder: Path) -> tuple[Path, dict]:
    """A copy of the project (Snakefile, params, dvc.yaml, package, experiments) and the environment that
    runs the copy's package, not the checkout's."""
    repo = folder / "repo"
    repo.mkdir()
    for f in ("Snakefile", "params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / f, repo / f)
    for d in ("pipeline", "configs"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PIPELINE_RUNS")}
    env.update(PATH=f"{BIN}:{env['PATH']}", PYTHONPATH=str(repo))
    return repo, env


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    repo, env = project_copy(tmp_path_factory.mktemp("e2e"))
    r = sh("snakemake --cores 2 --configfile configs/smoke.yaml", repo, env)
    return repo, env, r


def _jobs(cfg_path: Path) -> int:
    g = yaml.safe_load(cfg_path.read_text())["grid"]
    cells = len(g["datasets"]) * len(g["archs"]) * len(g["seeds"])
    methods = len(yaml.safe_load((ROOT / "params.yaml").read_text())["grid"]["methods"])
    # prepare per dataset; dense + its spectral per cell; prune + spectral_pruned + (retrain + spectral) per
    # method, per sparsity; one report
    return len(g["datasets"]) + 2 * cells + cells * len(g["sparsities"]) * (2 * methods + 2) + 1


def test_every_output_exists_and_parses(smoke):
    repo, _, _ = smoke
    out = repo / "results" / "smoke"
    rows = list(csv.DictReader((out / "summary.csv").open()))
    methods = {r["method"] for r in rows}
    assert methods == {"dense"} | set(yaml.safe_load((repo / "params.yaml").read_text())["grid"]["methods"])
    for r in rows:
        assert 0 <= float(r["test_acc"]) <= 1 and 0 <= float(r["val_acc"]) <= 1 and int(r["epochs"]) >= 1
        if r["method"] != "dense":
            assert int(r["nonzero_weights"]) < int(r["weights"])
    dense = next(r for r in rows if r["method"] == "dense")
    assert float(dense["test_acc"]) > 0.3, "the smoke task is learnable: dense accuracy well above chance (0.1)"
    spec = list(csv.DictReader((out / "spectral.csv").open()))
    # every model + the pruned topology (as is, recalibrated, and both for its random control), 2 bands, 8 radii
    assert len(spec) == (len(rows) + 4) * 2 * 8
    readme = (out / "README.md").read_text()
    for section in ("### Test accuracy", "### Paired differences", "### Band-limited accuracy",
                    "### Spectral signature of pruning", "## Claims", "Hardware:", "Experiment: `smoke`"):
        assert section in readme
    for png in re.findall(r"\(figures/([^)]+\.png)\)", readme):
        assert (out / "figures" / png).stat().st_size > 1000
    assert len(re.findall(r"\(figures/", readme)) == 3
    assert json.loads((out / "metrics.json").read_text())


def test_mlflow_has_one_finished_run_per_job(smoke):
    repo, _, _ = smoke
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{repo / 'mlruns.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) == _jobs(repo / "configs" / "smoke.yaml")
    assert {r.info.status for r in runs} == {"FINISHED"}
    stages = [r.data.tags["stage"] for r in runs]
    assert stages.count("retrain") == 12 and stages.count("report") == 1
    for r in runs:
        if r.data.tags["stage"] in ("retrain", "train_dense", "spectral"):
            assert {"dataset", "arch", "seed", "sparsity", "method", "git_commit", "data_sha256"} <= set(r.data.tags)
        if r.data.tags["stage"] == "retrain":
            assert client.get_metric_history(r.info.run_id, "val_acc"), "per-epoch metrics are logged"


def test_snakemake_rerun_does_nothing(smoke):
    repo, env, _ = smoke
    r = sh("snakemake -n --cores 2 --configfile configs/smoke.yaml", repo, env)
    assert "Nothing to be done" in r.stdout + r.stderr


def test_dvc_runs_the_same_dag_and_reruns_only_what_changed(smoke):
    repo, env, _ = smoke
    sh("dvc init --no-scm -q && dvc commit -f -q", repo, env)            # adopt Snakemake's outputs
    r = sh("dvc repro", repo, env)
    assert "Running stage" not in r.stdout, r.stdout[-2000:]
    assert sh("dvc metrics show", repo, env).stdout.strip()
    sh("dvc plots show -o dvc_plots", repo, env)
    assert (repo / "dvc_plots" / "index.html").exists()
    # Change the distillation temperature: exactly the four distillation methods' jobs are out of date.
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("  T: 4.0 ", "  T: 3.0 "))
    status = json.loads(sh("dvc status --json", repo, env).stdout)
    changed = {s for s in status if s.startswith("retrain-")}
    assert {s.rsplit("-", 1)[1] for s in changed} == DISTILL
    assert not {s for s in status if not s.startswith("retrain-")}, status
    plan = sh("snakemake -n --cores 2 --configfile configs/smoke.yaml", repo, env).stdout
    planned = dict(re.findall(r"^(\w+)\s+(\d+)$", plan.split("Job stats:")[1], re.M))
    assert planned == {"retrain": "4", "spectral": "4", "report": "1", "total": "10", "all": "1"}, plan[-1500:]
    r = sh("dvc repro", repo, env)
    ran = set(re.findall(r"Running stage '([^']+)'", r.stdout))
    assert {s for s in ran if s.startswith("retrain-")} == changed
    assert all(s.startswith(("retrain-", "spectral-", "report")) for s in ran), ran
    assert "Running stage" not in sh("dvc repro", repo, env).stdout


def test_snakemake_html_report(smoke):
    repo, env, _ = smoke
    sh("snakemake --report report.html --configfile configs/smoke.yaml", repo, env)
    html = (repo / "report.html").read_text(errors="ignore")
    assert "accuracy_vs_sparsity" in html


def test_prune_exclude_end_to_end(tmp_path):
    """prune.exclude through the whole DAG (one method, one seed): the excluded classifier is never pruned
    and every later stage accepts the mask without it."""
    repo, env = project_copy(tmp_path)
    from pipeline.config import merge, read_yaml
    raw = merge(read_yaml(repo / "configs" / "smoke.yaml"), {
        "name": "exclude", "prune": {"exclude": ["fc"]}, "grid": {"methods": ["finetune"]},
        "report": {"dir": "results/exclude"}})
    (repo / "configs" / "exclude.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sh("snakemake --cores 2 --configfile configs/exclude.yaml", repo, env)
    import torch
    cell = "synthetic/resnet20/seed0/s0.9"
    mask = json.loads((repo / f"runs/exclude/prune/{cell}/mask.json").read_text())
    assert "fc.weight" not in mask["layers"] and "conv.weight" in mask["layers"]
    assert mask["sparsity"] == pytest.approx(0.9, abs=1e-3)      # 0.9 of the pruned weights, fc not among them
    model = torch.load(repo / f"runs/exclude/retrain/{cell}/finetune/model.pt", weights_only=True)
    assert "fc.weight" not in model["masks"] and bool((model["state"]["fc.weight"] != 0).all())
    spectral = json.loads((repo / f"runs/exclude/spectral/{cell}/pruned.json").read_text())
    assert set(spectral["variants"]) == {"pruned_bn", "random_mask", "random_mask_bn"}
    rows = list(csv.DictReader((repo / "results" / "exclude" / "summary.csv").open()))
    assert {r["method"] for r in rows} == {"dense", "finetune"}
