"""End to end: `make smoke` (the whole smoke DAG through Snakemake) in a temporary copy of the project (the
session's `smoke` fixture, tests/conftest.py: one run shared with test_slurm), then the same DAG through DVC
(`make dvc-adopt` takes Snakemake's outputs, `make dvc-smoke` has nothing to do), reruns, a parameter change
in the experiment that must rerun only what depends on it, MLflow's view of it all, the Snakemake report,
`make publish` and `make clean-smoke`. Accuracies must match the committed results/smoke/summary.csv (the
CPU run is deterministic, torch is pinned). Slow (minutes): it is the test that the product works, and it
runs the README's commands as written (tests/test_readme.py points here).

Order-independent: the tests that only read the smoke run share it; each test that edits, adds or deletes
files (DVC, publish and clean, prune.exclude) works on its own clone of it."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline.config.catalog import CHAIN_METHODS
from pipeline.config.layout import ROOT

from .conftest import make, shell

pytestmark = pytest.mark.slow
TEACHER = {"kd", "fourier_kd", "fourier_kd_anti", "fourier_kd_shuffled", "fourier_kd_reverse"}      # the methods that read distill.T
# What spectral_pruned evaluates besides the pruned topology as it is (pipeline/evaluate/signature.py)
VARIANTS = {"pruned_bn", "random_mask", "random_mask_bn", "matched_mask", "matched_mask_bn"}


def sh(cmd, repo, env, timeout=1800, ok=True):
    r = shell(cmd, repo, env, timeout)
    if ok:
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


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
    repo = smoke.repo
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
    # every model + the pruned topology (as is, and its variants: recalibrated, random controls), 2 bands, 8 radii
    assert len(spec) == (len(rows) + 1 + len(VARIANTS)) * 2 * 8
    readme = (out / "README.md").read_text()
    for section in ("### Test accuracy", "### Paired differences", "### Band-limited accuracy",
                    "### Spectral signature of pruning", "### Learning curves and convergence", "## Claims",
                    "Hardware:", "Experiment: `smoke`"):
        assert section in readme
    for png in re.findall(r"\(figures/([^)]+\.png)\)", readme):
        assert (out / "figures" / png).stat().st_size > 1000
    assert len(re.findall(r"\(figures/", readme)) == 4          # accuracy, bands, heat maps, learning curves
    assert json.loads((out / "metrics.json").read_text())
    # every job wrote its log: file; training jobs one progress line per epoch
    logs = repo / "runs" / "smoke" / "logs"
    assert len(list(logs.rglob("*.log"))) == _jobs(repo / "configs" / "smoke.yaml")
    dense_log = (logs / "train_dense" / "synthetic" / "resnet20" / "seed0.log").read_text()
    assert re.findall(r"epoch (\d)/2 .*loss .* acc .* lr .* elapsed .* left", dense_log) == ["1", "2"], dense_log
    assert "radius 22.63" in (logs / "retrain/synthetic/resnet20/seed0/s0.9/fourier_kd.log").read_text()


# The committed smoke results against this run. On the CPU the run is deterministic and torch is pinned: on a
# machine with the same CPU model the figures repeat exactly (the tolerance is a margin for a few flipped
# predictions: 0.03 is 8 of the 256 test images, 4 of the 128 validation images). Across CPU models they do
# not: the float kernels differ (AVX-512 on the Xeon, AVX2 on the EPYC), and a 2-epoch quarter-width network
# turns last-bit differences into points (measured: the dense model 0.957 on the Xeon, 0.918 on the EPYC, with
# main's own code). So the reference is the one made on this CPU model: results/smoke/summary.csv (the
# published report's machine) or tests/references/smoke-<cpu>.csv (`make smoke` on another CPU model, its
# summary's columns below). What is counted, not trained, must be equal on every CPU.
TOLERANCE = 0.03
CLOSE = ("val_acc", "test_acc", "test_agreement")
EQUAL = ("nonzero_weights", "weights", "epochs", "rounds")
KEY = ("dataset", "arch", "seed", "sparsity", "method")
REFERENCES = ROOT / "tests" / "references"


def cpu_model(hardware: str) -> str:
    """'cpu:AMD EPYC, 2 cores, ...' -> 'amd-epyc' (the Hardware column's CPU, as jobs.hardware writes it)."""
    return re.sub(r"[^a-z0-9]+", "-", hardware.split(",")[0].removeprefix("cpu:").lower()).strip("-")


def _rows(path: Path) -> dict:
    return {tuple(r[k] for k in KEY): r for r in csv.DictReader(path.open())}


def test_accuracies_match_the_committed_smoke_results(smoke):
    """Every row of the committed reference for this CPU model is in this run's summary, with its accuracies
    within TOLERANCE and its counts equal; every row of results/smoke/summary.csv with its counts equal. A
    row only this run has (a method added since the results were published) is not compared; `make smoke &&
    make publish` brings the results up to date."""
    ran = _rows(smoke.repo / "runs" / "smoke" / "report" / "summary.csv")
    here = cpu_model(next(iter(ran.values()))["hardware"])
    published = _rows(ROOT / "results/smoke/summary.csv")
    assert published, "results/smoke/summary.csv has no rows"
    same = {cpu_model(r["hardware"]) for r in published.values()} == {here}
    ref_path = ROOT / "results/smoke/summary.csv" if same else REFERENCES / f"smoke-{here}.csv"
    assert ref_path.is_file(), (f"no smoke reference for this CPU model ({here}): results/smoke was made on "
                                f"{sorted({cpu_model(r['hardware']) for r in published.values()})}; after checking "
                                f"this run, keep its numbers as {ref_path.relative_to(ROOT)} (summary.csv's columns "
                                f"{KEY + CLOSE + EQUAL + ('hardware',)})")
    wrong = []
    for path, cols in ((ref_path, CLOSE + EQUAL), (ROOT / "results/smoke/summary.csv", EQUAL)):
        committed = _rows(path)
        missing = sorted(set(committed) - set(ran))
        assert not missing, f"{path.name}: committed rows this run does not produce: {missing}"
        for key, want in committed.items():
            got = ran[key]
            for col in cols:
                if want.get(col) in (None, ""):
                    continue                    # a column the committed table does not fill (rounds: chains only)
                if col not in got:
                    wrong.append(f"{key}: {col} not in this run's summary")
                elif col in CLOSE and abs(float(got[col]) - float(want[col])) > TOLERANCE:
                    wrong.append(f"{key[-1]} s{key[3]}: {col} {got[col]} ({path.name}: {want[col]})")
                elif col in EQUAL and float(got[col]) != float(want[col]):
                    wrong.append(f"{key[-1]} s{key[3]}: {col} {got[col]} ({path.name}: {want[col]})")
    assert not wrong, f"{len(wrong)} values differ from the committed smoke results beyond {TOLERANCE}:\n" + \
        "\n".join(wrong)


def test_mlflow_has_one_finished_run_per_job(smoke):
    repo = smoke.repo
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
    r = sh("snakemake -n --cores 2 --configfile configs/smoke.yaml", smoke.repo, smoke.env)
    assert "Nothing to be done" in r.stdout + r.stderr


def test_dvc_adopts_the_run_and_reruns_only_what_changed(smoke, tmp_path):
    mine = smoke.clone(tmp_path / "repo")
    repo, env = mine.repo, mine.env
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


def test_snakemake_html_report(smoke, tmp_path):
    report = tmp_path / "report.html"                 # outside the shared run: it only reads there
    sh(f"snakemake --report {report} --configfile configs/smoke.yaml", smoke.repo, smoke.env)
    html = report.read_text(errors="ignore")
    for text in ("accuracy_vs_sparsity", "Fourier-MBP", "summary.csv", "Claims", "one colour per method"):
        assert text in html, text


def test_publish_then_clean(smoke, tmp_path):
    mine = smoke.clone(tmp_path / "repo")
    repo, env = mine.repo, mine.env
    sh(make("publish EXPERIMENT=smoke", repo), repo, env)
    out = repo / "results" / "smoke"
    assert sorted(p.name for p in out.iterdir()) == [".fourier-mbp-report.json", "README.md", "curves.csv",
                                                      "figures", "metrics.json", "spectral.csv", "summary.csv"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        p.name for p in (repo / "runs/smoke/report/figures").glob("*.png"))
    sh(make("clean-smoke", repo), repo, env)
    assert not (repo / "runs" / "smoke").exists()
    assert "Nothing to be done" not in sh("snakemake -n --cores 2 --configfile configs/smoke.yaml", repo, env).stdout


def test_prune_exclude_end_to_end(smoke, tmp_path):
    """prune.exclude through the DAG (one method): the excluded classifier is never pruned and every later
    stage accepts the mask without it. On a clone of the smoke run with its experiment changed: the data and
    the dense model are reused (prune.exclude is not among their parameters), the rest reruns."""
    mine = smoke.clone(tmp_path / "repo")
    repo, env = mine.repo, mine.env
    from pipeline.config.loading import merge, read_yaml
    raw = merge(read_yaml(repo / "configs" / "smoke.yaml"), {"prune": {"exclude": ["fc"]},
                                                             "grid": {"methods": ["finetune"]}})
    (repo / "configs" / "smoke.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    reused = [repo / "runs/smoke/data/synthetic.pt", repo / "runs/smoke/dense/synthetic/resnet20/seed0/model.pt"]
    before = [p.stat().st_mtime_ns for p in reused]
    sh("snakemake --cores 2 --configfile configs/smoke.yaml", repo, env)
    assert [p.stat().st_mtime_ns for p in reused] == before, "the data or the dense model was made again"
    import torch
    cell = "synthetic/resnet20/seed0/s0.9"
    mask = json.loads((repo / f"runs/smoke/prune/{cell}/mask.json").read_text())
    assert "fc.weight" not in mask["layers"] and "conv.weight" in mask["layers"]
    assert mask["sparsity"] == pytest.approx(0.9, abs=1e-3)      # 0.9 of the pruned weights, fc not among them
    model = torch.load(repo / f"runs/smoke/retrain/{cell}/finetune/model.pt", weights_only=True)
    assert "fc.weight" not in model["masks"] and bool((model["state"]["fc.weight"] != 0).all())
    spectral = json.loads((repo / f"runs/smoke/spectral/{cell}/pruned.json").read_text())
    assert set(spectral["variants"]) == VARIANTS
    rows = list(csv.DictReader((repo / "runs" / "smoke" / "report" / "summary.csv").open()))
    assert {r["method"] for r in rows} == {"dense", "finetune"}
