"""End to end: `make smoke` (the whole smoke DAG through Snakemake) in a temporary copy of the project, then
the same DAG through DVC (`make dvc-adopt` takes Snakemake's outputs, `make dvc-smoke` has nothing to do),
reruns, a parameter change in the experiment that must rerun only what depends on it, MLflow's view of it
all, the Snakemake report, `make publish` and `make clean-smoke`. Slow (minutes): it is the test that the
product works, and it runs the README's commands as written (tests/test_readme.py points here)."""
from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.config import CHAIN_METHODS, ROOT

from .conftest import copy_env, make, project_copy

pytestmark = pytest.mark.slow
TEACHER = {"kd", "fourier_kd", "fourier_kd_anti", "fourier_kd_shuffled", "fourier_kd_reverse"}      # the methods that read distill.T


def sh(cmd, repo, env, timeout=1800, ok=True):
    r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout, shell=True)
    if ok:
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    repo = project_copy(tmp_path_factory.mktemp("e2e") / "repo")
    env = copy_env(repo)
    r = sh(make("smoke", repo), repo, env)
    return repo, env, r


def _jobs(cfg_path: Path) -> int:
    g = yaml.safe_load(cfg_path.read_text())["grid"]
    cells = len(g["datasets"]) * len(g["archs"]) * len(g["seeds"])
    methods = yaml.safe_load((ROOT / "params.yaml").read_text())["grid"]["methods"]
    chained = len([m for m in methods if m in CHAIN_METHODS])
    one_shot = len(methods) - chained
    # prepare per dataset; dense + its spectral per cell; one chain per iterative method per cell; per
    # sparsity: prune + spectral_pruned + (retrain + spectral) per one-shot method + spectral per chain level;
    # one report
    return (len(g["datasets"]) + 2 * cells + cells * chained
            + cells * len(g["sparsities"]) * (2 + 2 * one_shot + chained) + 1)


def _runs(cfg_path: Path) -> int:
    """MLflow runs: one per job, and one per level of each chain (stage retrain, like a retrained model)."""
    g = yaml.safe_load(cfg_path.read_text())["grid"]
    methods = yaml.safe_load((ROOT / "params.yaml").read_text())["grid"]["methods"]
    levels = len(g["datasets"]) * len(g["archs"]) * len(g["seeds"]) * len(g["sparsities"])
    return _jobs(cfg_path) + levels * len([m for m in methods if m in CHAIN_METHODS])


def test_every_output_exists_and_parses(smoke):
    repo, _, _ = smoke
    out = repo / "runs" / "smoke" / "report"
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
    # every job wrote its log: file; training jobs one progress line per epoch
    logs = repo / "runs" / "smoke" / "logs"
    assert len(list(logs.rglob("*.log"))) == _jobs(repo / "configs" / "smoke.yaml")
    dense_log = (logs / "train_dense" / "synthetic" / "resnet20" / "seed0.log").read_text()
    assert re.findall(r"epoch (\d)/2 .*loss .* acc .* lr .* elapsed .* left", dense_log) == ["1", "2"], dense_log
    assert "radius 22.63" in (logs / "retrain/synthetic/resnet20/seed0/s0.9/fourier_kd.log").read_text()


def test_mlflow_has_one_finished_run_per_job(smoke):
    repo, _, _ = smoke
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{repo / 'mlruns.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) == _runs(repo / "configs" / "smoke.yaml")
    assert {r.info.status for r in runs} == {"FINISHED"}
    stages = [r.data.tags["stage"] for r in runs]
    # 12 one-shot methods, and the 4 chains' levels (one each: the smoke grid has one sparsity)
    assert stages.count("retrain") == 16 and stages.count("chain") == 4 and stages.count("report") == 1
    assert {r.data.tags["invocation"] for r in runs} == {"snakemake"}
    assert len({r.data.tags["invocation_id"] for r in runs}) == 1
    assert {r.data.tags["superseded"] for r in runs} == {"false"}
    assert "tags.superseded" in exp.tags["mlflow.note.content"]
    for r in runs:
        if r.data.tags["stage"] in ("retrain", "train_dense", "spectral"):
            assert {"dataset", "arch", "seed", "sparsity", "method", "git_commit", "data_sha256",
                    "params_digest"} <= set(r.data.tags)
            assert r.info.run_name.startswith(r.data.tags["method"] + " ")
        if r.data.tags["stage"] == "retrain" and "chain_run" not in r.data.params:   # a chain level: no epochs
            val = client.get_metric_history(r.info.run_id, "val_acc")
            assert [m.step for m in val] == list(range(1, len(val) + 1)), "val_acc once per epoch, never twice"
            assert {"test_acc", "train_seconds"} <= set(r.data.metrics)
        if r.data.tags["stage"] == "retrain" and r.data.tags["method"] == "fourier_kd":
            radius = [m.value for m in client.get_metric_history(r.info.run_id, "radius")]
            assert radius[-1] == pytest.approx(22.627417), "the full band is logged as the corner radius"
        if r.data.tags["stage"] == "spectral":
            arts = [a.path for a in client.list_artifacts(r.info.run_id, "figures")]
            assert len(arts) == 1 and arts[0].endswith("_spectrum.png"), arts


def test_snakemake_rerun_does_nothing(smoke):
    repo, env, _ = smoke
    r = sh("snakemake -n --cores 2 --configfile configs/smoke.yaml", repo, env)
    assert "Nothing to be done" in r.stdout + r.stderr


def test_dvc_adopts_the_run_and_reruns_only_what_changed(smoke):
    repo, env, _ = smoke
    # A git checkout, as a user's clone is, with the project's .gitignore and .dvc/: DVC refuses to write a
    # dvc.lock that git ignores (the copy alone, without git, would hide that).
    sh("git init -q && git add -A && git -c user.name=e2e -c user.email=e2e@localhost commit -qm copy", repo, env)
    sh(make("dvc-adopt", repo), repo, env)                 # DVC takes Snakemake's outputs, computing nothing
    r = sh(make("dvc-smoke", repo), repo, env)
    assert "Running stage" not in r.stdout, r.stdout[-2000:]
    # DVC's record of this run stays out of git (untracked, not ignored); no tracked file changed
    assert sh("git status --porcelain", repo, env).stdout.split("\n")[:-1] == ["?? dvc.lock"]
    assert sh("dvc metrics show", repo, env).stdout.strip()
    sh("dvc plots show -o dvc_plots", repo, env)
    assert (repo / "dvc_plots" / "index.html").exists()
    # Change the temperature in the EXPERIMENT (not params.yaml): exactly the teacher-using methods are out of
    # date (not freq_ce, which reads no T), in both tools.
    smoke_cfg = repo / "configs" / "smoke.yaml"
    smoke_cfg.write_text(smoke_cfg.read_text().replace("distill:\n", "distill:\n  T: 3.0\n"))
    sh("python -m pipeline export_dvc --experiment smoke > dvc.yaml", repo, env)
    status = json.loads(sh("dvc status --json", repo, env).stdout)
    changed = {s for s in status if s.startswith("retrain-")}
    assert {s.rsplit("-", 1)[1] for s in changed} == TEACHER
    assert not {s for s in status if not s.startswith("retrain-")}, status
    plan = sh("snakemake -n --cores 2 --configfile configs/smoke.yaml", repo, env).stdout
    planned = dict(re.findall(r"^(\w+)\s+(\d+)$", plan.split("Job stats:")[1], re.M))
    n = str(len(TEACHER))
    assert planned == {"retrain": n, "spectral": n, "report": "1", "total": str(2 * len(TEACHER) + 2), "all": "1"}, \
        plan[-1500:]
    r = sh(make("dvc-smoke", repo), repo, env)
    ran = set(re.findall(r"Running stage '([^']+)'", r.stdout))
    assert {s for s in ran if s.startswith("retrain-")} == changed
    assert all(s.startswith(("retrain-", "spectral-", "report")) for s in ran), ran
    assert "Running stage" not in sh("dvc repro", repo, env).stdout
    # MLflow: the DVC reruns supersede the Snakemake runs of the same jobs; each job counts once
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{repo / 'mlruns.db'}")
    exp = client.get_experiment_by_name("smoke")
    current = client.search_runs([exp.experiment_id], "tags.superseded = 'false'", max_results=1000)
    assert len(current) == _runs(smoke_cfg)
    retrain = {r.data.tags["method"]: r.data.tags["invocation"] for r in current if r.data.tags["stage"] == "retrain"}
    assert {m for m, tool in retrain.items() if tool == "dvc"} == TEACHER
    old = client.search_runs([exp.experiment_id], "tags.superseded = 'true'", max_results=1000)
    assert sorted((r.data.tags["stage"], r.data.tags.get("method", "")) for r in old) == sorted(
        [("retrain", m) for m in TEACHER] + [("spectral", m) for m in TEACHER] + [("report", "")])


def test_snakemake_html_report(smoke):
    repo, env, _ = smoke
    sh("snakemake --report report.html --configfile configs/smoke.yaml", repo, env)
    html = (repo / "report.html").read_text(errors="ignore")
    for text in ("accuracy_vs_sparsity", "Fourier-MBP", "summary.csv", "Claims", "one colour per method"):
        assert text in html, text


def test_publish_then_clean(smoke):
    repo, env, _ = smoke
    sh(make("publish EXPERIMENT=smoke", repo), repo, env)
    out = repo / "results" / "smoke"
    assert sorted(p.name for p in out.iterdir()) == [".fourier-mbp-report.json", "README.md", "figures",
                                                      "metrics.json", "spectral.csv", "summary.csv"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        p.name for p in (repo / "runs/smoke/report/figures").glob("*.png"))
    sh(make("clean-smoke", repo), repo, env)
    assert not (repo / "runs" / "smoke").exists()
    assert "Nothing to be done" not in sh("snakemake -n --cores 2 --configfile configs/smoke.yaml", repo, env).stdout


def test_prune_exclude_end_to_end(tmp_path):
    """prune.exclude through the whole DAG (one method, one seed): the excluded classifier is never pruned
    and every later stage accepts the mask without it."""
    repo = project_copy(tmp_path / "repo")
    env = copy_env(repo)
    from pipeline.config import merge, read_yaml
    raw = merge(read_yaml(repo / "configs" / "smoke.yaml"), {
        "name": "exclude", "prune": {"exclude": ["fc"]}, "grid": {"methods": ["finetune"]}})
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
    assert set(spectral["variants"]) == {"pruned_bn", "random_mask", "random_mask_bn", "matched_mask",
                                         "matched_mask_bn"}
    rows = list(csv.DictReader((repo / "runs" / "exclude" / "report" / "summary.csv").open()))
    assert {r["method"] for r in rows} == {"dense", "finetune"}
