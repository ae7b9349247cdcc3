"""Integrity end to end (issue 11): the Snakefile checks what `python -m pipeline` checks; non-finite numbers
are refused; a diverging job stops without writing a model; the tracking store's folder is never created
silently; two copies of one job never share a checkpoint; training time adds up across resumes; outputs
honour the umask; the report is published whole or not at all. (Tampered and malformed input files, exit 3:
tests/test_corrupt.py.)"""
from __future__ import annotations

import contextlib
import csv
import io as io_
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import layout
from pipeline.infra import io
from pipeline.stages import common as jobs
from pipeline.core import models, train as T
from pipeline.report import publish, build as R
from pipeline.__main__ import main
from pipeline.config.layout import ROOT
from pipeline.config.loading import read_yaml
from pipeline.errors import Busy, CorruptFile, Diverged

from .conftest import cli, run_stage, write_experiment
from pipeline.config import loading
from pipeline import errors
from pipeline.infra import progress

TINY = {"synthetic": {"source": "synthetic", "classes": 10, "train_size": 160, "val_size": 32, "test_size": 32}}


def _main(argv) -> tuple[int, str]:
    """The CLI in this process: (exit status, stderr). Restores what the training stages set process-wide."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    err = io_.StringIO()
    argv, env = cli(argv, {})
    before = os.environ.get("PIPELINE_CONFIGS")
    try:
        os.environ.update(env)
        with contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
        if before is None:
            os.environ.pop("PIPELINE_CONFIGS", None)
        else:
            os.environ["PIPELINE_CONFIGS"] = before
    return code, err.getvalue()


def _client(uri):
    from mlflow.tracking import MlflowClient
    return MlflowClient(uri)


# ----------------------------------------------------------------------------- the Snakefile's checks


def _snakemake_dry_run(*args) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("snakemake")
    return subprocess.run([str(exe), "-n", "--cores", "1", *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)     # its log goes to either


def _smoke_copy(path: Path, **changes) -> Path:
    raw = loading.merge(read_yaml(ROOT / "configs" / "smoke.yaml"), changes)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_snakefile_refuses_a_name_that_differs_from_the_file_name(tmp_path):
    """Defect 1: foo.yaml saying `name: smoke` (3 epochs) would plan into runs/smoke/ and overwrite it."""
    foo = _smoke_copy(tmp_path / "foo.yaml", train={"epochs": 3})
    r = _snakemake_dry_run("--configfile", foo)
    assert r.returncode != 0
    assert f"name = 'smoke' in {foo}: must equal the experiment's file name 'foo'" in r.stdout
    assert "Job stats" not in r.stdout, "jobs were planned"


def test_snakefile_refuses_settings_the_jobs_would_not_see(tmp_path):
    """A file named like the experiment but elsewhere, or a --config override: the jobs load
    configs/<name>.yaml, so Snakemake would record parameters they never used."""
    elsewhere = _smoke_copy(tmp_path / "smoke.yaml", train={"epochs": 3})
    r = _snakemake_dry_run("--configfile", elsewhere)
    assert r.returncode != 0 and "train.epochs: Snakemake's config" in r.stdout and "3 vs 2" in r.stdout, r.stdout
    r = _snakemake_dry_run("--configfile", ROOT / "configs" / "smoke.yaml", "--config", "name=other")
    assert r.returncode != 0 and "name = 'other'" in r.stdout, r.stdout


def test_snakefile_plans_the_shipped_experiment():
    r = _snakemake_dry_run("--configfile", "configs/smoke.yaml", "--forceall")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "Job stats" in r.stdout and "train_dense" in r.stdout


def test_check_snakemake_in_process(tmp_path):
    """Snakemake lists the CLI's config files first, then the Snakefile's params.yaml."""
    smoke = ROOT / "configs" / "smoke.yaml"
    merged = loading.merge(read_yaml(ROOT / "params.yaml"), read_yaml(smoke))
    assert loading.check_snakemake(merged, [str(smoke), "params.yaml"]) == loading.load("smoke")
    assert loading.check_snakemake(read_yaml(ROOT / "params.yaml"), ["params.yaml"]) == loading.load(None)
    with pytest.raises(errors.ConfigError, match="name = 'other' in .*smoke.yaml: must equal the experiment's file name 'smoke'"):
        loading.check_snakemake({**merged, "name": "other"}, [str(smoke), "params.yaml"])
    with pytest.raises(errors.ConfigError, match=r"^retrain.epochs: .* retrain.epochs = 5 vs 2"):
        loading.check_snakemake(loading.merge(merged, {"retrain": {"epochs": 5}}), [str(smoke), "params.yaml"])


# ------------------------------------------------------------------------------------ non-finite numbers


@pytest.mark.parametrize("key,section,value", [
    ("train.lr", {"train": {"lr": float("inf")}}, "inf"),
    ("distill.T", {"distill": {"T": float("inf")}}, "inf"),
    ("spectral.radii[1]", {"spectral": {"radii": [1.0, float("inf")]}}, "inf"),
    ("retrain.lr", {"retrain": {"lr": float("nan")}}, "nan"),
    ("spectral.heatmap_eps", {"spectral": {"heatmap_eps": float("-inf")}}, "-inf"),
])
def test_schema_refuses_non_finite_floats(key, section, value, tmp_path):
    path = write_experiment(tmp_path, name="t", **section)
    assert value in path.read_text().lower().replace(".", "")      # YAML's .inf / .nan reached the file
    with pytest.raises(errors.ConfigError) as e:
        loading.load(path)
    assert str(e.value) == f"{key} = {float(value)!r}: must be a finite number"


# ------------------------------------------------------------------------------------- diverging loss


def _tiny_data():
    from pipeline.core import data as D
    x, y = D.synthetic(10, 96, 1)
    blob = {"classes": [str(i) for i in range(10)], "train_x": x[:64], "train_y": y[:64], "val_x": x[64:80],
            "val_y": y[64:80], "test_x": x[80:], "test_y": y[80:]}
    return T.Data(blob, "cpu")


CPU = T.Runtime(device=torch.device("cpu"), amp=False, channels_last=False, compile=False)


def test_a_non_finite_loss_stops_training_naming_epoch_and_step(tmp_path):
    """Epoch 1's third step returns NaN: Diverged names epoch 1 and step 2; the checkpoint stays at epoch 1."""
    calls = []

    def loss(student, x, y, epoch, norm):
        calls.append(epoch)
        out, logits, r = T.cross_entropy(student, x, y, epoch, norm)
        bad = epoch == 1 and calls.count(1) == 3
        return (out * float("nan") if bad else out), logits, r

    ckpt = tmp_path / "ck.pt"
    recipe = T.Recipe([T.Round(3, 0.01, [], 0.1)], loss=loss, batch_size=16)     # 4 steps an epoch
    with pytest.raises(Diverged) as e:
        T.run(recipe, models.build("resnet20", 10, 0.25), _tiny_data(), CPU, 0, ckpt, "k")
    assert "round 0, epoch 1 (counting from 0), first at step 2 of 4" in str(e.value)
    assert calls == [0, 0, 0, 0, 1, 1, 1, 1]
    assert io.load(ckpt, "checkpoint")["epoch"] == 1          # the diverged epoch was not checkpointed


def test_train_dense_with_a_huge_lr_exits_1_and_writes_no_model(tmp_path, env):
    experiment = write_experiment(tmp_path, name="t", datasets=TINY, train={"epochs": 2, "lr": 1e30})
    data = tmp_path / "data.pt"
    assert _main(["prepare", "--experiment", experiment, "--dataset", "synthetic", "--out", data])[0] == 0
    out = tmp_path / "out" / "model.pt"
    code, err = _main(["train_dense", "--experiment", experiment, "--dataset", "synthetic", "--arch", "resnet20",
                       "--seed", 0, "--data", data, "--out", out])
    assert code == 1, err
    assert "training diverged: the training loss is not finite in round 0, epoch 0" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
    client = _client(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id], "tags.stage = 'train_dense'")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "Diverged" in runs[0].data.tags["error"]


def test_a_resumed_job_says_from_which_epoch_and_checkpoint_in_its_log_and_mlflow(tmp_path, env, monkeypatch):
    """Stopped in the second of 2 epochs (epoch 1's checkpoint kept), then run again: one line names the epoch and
    the checkpoint it resumed from, and the MLflow run (the same one) carries them as tags."""
    experiment = write_experiment(tmp_path, name="t", datasets=TINY, train={"epochs": 2})
    data = tmp_path / "data.pt"
    assert _main(["prepare", "--experiment", experiment, "--dataset", "synthetic", "--out", data])[0] == 0
    argv = ["train_dense", "--experiment", experiment, "--dataset", "synthetic", "--arch", "resnet20", "--seed", 0,
            "--data", data, "--out", tmp_path / "out" / "model.pt", "--log", tmp_path / "job.log"]
    real = progress.Progress.__call__

    def stop_in_two(self, done, m):                   # epoch 1 is checkpointed after this call; epoch 2 is not
        real(self, done, m)
        if done == 2:
            raise Diverged("stopped by the test in epoch 2")
    monkeypatch.setattr(progress.Progress, "__call__", stop_in_two)
    assert _main(argv)[0] == 1
    (ckpt,) = (tmp_path / "runs" / "t" / "checkpoints").glob("dense-*.pt")
    monkeypatch.setattr(progress.Progress, "__call__", real)
    code, err = _main(argv)
    assert code == 0, err
    line = f"resumed from epoch 1 of 2 (round 0, epoch 1 of it), checkpoint {ckpt}"
    assert [x for x in err.splitlines() if "resumed from" in x] == [f"[dense synthetic/resnet20 seed0] {line}"]
    assert line in (tmp_path / "job.log").read_text()
    client = _client(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id], "tags.stage = 'train_dense'")
    assert run.data.tags["resumed_from_epoch"] == "1" and run.data.tags["resumed_from_checkpoint"] == str(ckpt)


# ------------------------------------------------------------------------------------ the tracking store


@pytest.mark.parametrize("folder", ["missing/deeper", "/proc/no-such-folder"])
def test_a_sqlite_store_in_a_missing_folder_is_refused_before_compute(folder, tmp_path, env, monkeypatch):
    store = (tmp_path / folder if not folder.startswith("/") else Path(folder)) / "x.db"
    uri = f"sqlite:///{store}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    experiment = write_experiment(tmp_path, name="t", datasets=TINY)
    code, err = _main(["prepare", "--experiment", experiment, "--dataset", "synthetic", "--out", tmp_path / "d.pt"])
    assert code == 2, err
    assert f"config error: MLFLOW_TRACKING_URI = {uri!r}: the folder of this SQLite store, {store.parent}, " \
           f"does not exist" in err
    assert not store.parent.exists() and not (tmp_path / "d.pt").exists()


# ---------------------------------------------------------------------------------- one job, one process


def test_exclusive_names_the_holder_and_is_released(tmp_path):
    ckpt = tmp_path / "ck" / "job.pt"
    with io.exclusive(ckpt):
        with pytest.raises(Busy, match=f"another copy of this job is running \\(pid {os.getpid()} on "):
            with io.exclusive(ckpt):
                pass
        probe = subprocess.run([sys.executable, "-c", "import sys; from pipeline.infra import io\n"
                                "try:\n with io.exclusive(sys.argv[1]): pass\nexcept io.Busy as e: print(e)",
                                str(ckpt)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert f"pid {os.getpid()} on" in probe.stdout, probe.stderr
    with io.exclusive(ckpt):                                 # released: the next copy gets it
        pass


def test_a_second_copy_of_a_training_job_exits_4_naming_the_first(tmp_path, env):
    experiment = write_experiment(tmp_path, name="t", datasets=TINY)
    data = tmp_path / "data.pt"
    assert _main(["prepare", "--experiment", experiment, "--dataset", "synthetic", "--out", data])[0] == 0
    cfg = loading.load(experiment)
    sha = io.read_json(f"{data}.json")["sha256"]
    ckpt = layout.checkpoint(cfg.name, "dense", layout.dense_key(cfg, "synthetic", "resnet20", 0, sha))
    log = tmp_path / "logs" / "dense.log"
    log.parent.mkdir()
    log.write_text("[train_dense t] epoch 1/2 ...\n")        # the running copy's log so far
    with io.exclusive(ckpt):                                 # the "first copy": this test process
        code, err = _main(["train_dense", "--experiment", experiment, "--dataset", "synthetic", "--arch",
                           "resnet20", "--seed", 0, "--data", data, "--out", tmp_path / "out" / "model.pt",
                           "--log", log])
    assert code == 4, err
    assert f"busy: {ckpt}: another copy of this job is running (pid {os.getpid()} on" in err
    assert log.read_text() == "[train_dense t] epoch 1/2 ...\n"   # the refused copy wrote nothing to it
    with io.exclusive(tmp_path / "other.pt"):                # a later lock in this process opens no stale log
        pass
    assert log.read_text() == "[train_dense t] epoch 1/2 ...\n"
    assert not (tmp_path / "out").exists() and not ckpt.exists()
    client = _client(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("t")
    assert exp is None or not client.search_runs([exp.experiment_id], "tags.stage = 'train_dense'")


# ------------------------------------------------------------------------------- training time, resumed


def test_train_seconds_add_up_across_processes(tmp_path, monkeypatch):
    """A fake clock: each epoch takes 5 s. Killed in epoch 2 after 1 checkpointed epoch (5 s), resumed:
    10 s in all, as uninterrupted (the interrupted epoch is trained, and counted, again)."""
    now = [100.0]
    monkeypatch.setattr(T, "_clock", lambda: now[0])

    class Kill(Exception):
        pass

    def log(step, metrics):
        now[0] += 5.0
        if kill and step == 2:
            raise Kill

    def recipe():
        return T.Recipe([T.Round(2, 0.01, [], 0.1)], batch_size=32)
    ckpt = tmp_path / "ck.pt"
    kill = True
    with pytest.raises(Kill):
        T.run(recipe(), models.build("resnet20", 10, 0.25), _tiny_data(), CPU, 0, ckpt, "k", log=log)
    assert io.load(ckpt, "checkpoint")["train_seconds"] == 5.0
    kill = False
    resumed = []
    out = T.run(recipe(), models.build("resnet20", 10, 0.25), _tiny_data(), CPU, 0, ckpt, "k", log=log,
                on_resume=lambda *where: resumed.append(where))
    assert out.seconds == 10.0 and out.epochs == 2
    assert resumed == [(1, 0, 1)]            # said once: 1 epoch done, round 0, its epoch 1
    once = T.run(recipe(), models.build("resnet20", 10, 0.25), _tiny_data(), CPU, 0, tmp_path / "u.pt", "k", log=log,
                 on_resume=lambda *where: resumed.append(where))
    assert once.seconds == 10.0 and resumed == [(1, 0, 1)]     # a fresh start says nothing


# ----------------------------------------------------------------------------------------------- umask


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_honour_the_umask(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        io.write_json(tmp_path / "a.json", {"x": 1})
        io.save({"kind": "mask", "masks": {}}, tmp_path / "b.pt")
        with publish.Staged(tmp_path / "report") as folder:
            (folder / "figures").mkdir()
            io.write_text(folder / "figures" / "c.txt", "c")
    finally:
        os.umask(old)
    for f in (tmp_path / "a.json", tmp_path / "b.pt", tmp_path / "report" / "figures" / "c.txt"):
        assert f.stat().st_mode & 0o777 == mode, f"{f}: {oct(f.stat().st_mode & 0o777)}"


# ------------------------------------------------------------------------------------------ checksums


def test_a_prepared_dataset_is_compared_with_the_checksum_of_its_description(tmp_path):
    """data.load checks the file against the sha256 that prepare wrote beside it: another dataset saved at the
    same path by the pipeline (its own content checksum valid) is refused."""
    from pipeline.core import data as D
    cfg = loading.load("smoke")
    path = tmp_path / "data.pt"
    D.prepare(cfg, "synthetic", path)
    assert D.load(path)["sha256"] == io.sha256(path)
    blob = io.load(path, "dataset")
    io.save({**blob, "test_y": (blob["test_y"] + 1) % 10}, path)       # valid file, not the one described
    with pytest.raises(CorruptFile, match=f"^{path}: checksum .* does not match .* in {path}.json"):
        D.load(path)


def test_every_saved_file_verifies_its_checksum(tmp_path):
    net = models.build("resnet20", 10, 0.25)
    path = tmp_path / "m.pt"
    io.save({"kind": "model", "arch": "resnet20", "state": net.state_dict(), "masks": None}, path)
    blob = io.load(path, "model", expect={"arch": "resnet20"})
    assert torch.equal(blob["state"]["conv.weight"], net.state_dict()["conv.weight"]) and "sha256" not in blob
    raw = torch.load(path, weights_only=True)
    raw["state"]["fc.bias"][3] += 1e-6                       # a change torch.load cannot notice
    torch.save(raw, path)
    with pytest.raises(CorruptFile, match=f"^{path}: checksum .* does not match"):
        io.load(path, "model")
    io.save(raw, path)                                       # rewritten by the pipeline: a new checksum
    assert io.load(path, "model")["state"]["fc.bias"][3] == raw["state"]["fc.bias"][3]
    with pytest.raises(CorruptFile, match="has arch = 'resnet20', this job expects 'vgg16_bn'"):
        io.load(path, "model", expect={"arch": "vgg16_bn"})


def test_content_checksum_sees_dtype_shape_keys_and_values():
    base = {"a": torch.zeros(4), "b": [1, 2.0, "x"], 3: None}
    h = io.content_sha256(base)
    assert io.content_sha256({**base}) == h
    for other in ({**base, "a": torch.zeros(4, dtype=torch.float64)}, {**base, "a": torch.zeros(2, 2)},
                  {**base, "a": torch.tensor([0.0, 0, 0, 1e-30])}, {**base, "b": [1, 2, "x"]},
                  {**base, "3": None}, {**base, 3: 0}):
        assert io.content_sha256(other) != h, other


# ------------------------------------------------------------------------------------------- the report


DENSE_COST = {"nonzero_params": 130, "macs": 4000, "dense_macs": 4000, "speedup": 1.0, "macs_input": "3x32x32"}
PRUNED_COST = {"nonzero_params": 40, "macs": 500, "dense_macs": 4000, "speedup": 8.0, "macs_input": "3x32x32"}


def _fake_runs(runs: Path, cfg) -> None:
    """Every file the report reads for a 1-dataset, 1-arch, 1-seed, 1-sparsity, 1-method grid."""
    radii = [float(r) for r in cfg.spectral.radii] + ["full"]
    base = runs / "spectral" / "synthetic" / "resnet20" / "seed0"
    for method, metrics in (("dense", runs / "dense/synthetic/resnet20/seed0/metrics.json"),
                            ("finetune", runs / "retrain/synthetic/resnet20/seed0/s0.9/finetune/metrics.json"),
                            ("pruned", None)):
        if metrics is not None:
            io.write_json(metrics, {"val_acc": 0.5, "test_acc": 0.5, "nonzero_weights": 10, "weights": 100,
                                    "epochs": 2, "train_seconds": 1.0, "hardware": "cpu:test",
                                    **(DENSE_COST if method == "dense" else PRUNED_COST)})
        spec = base / "dense.json" if method == "dense" else base / "s0.9" / f"{method}.json"
        io.write_json(spec, {"radii": radii, "filter": "circle", "low_acc": [0.5] * len(radii),
                             "high_acc": [0.4] * len(radii), "low_agree": [0.9] * len(radii),
                             "high_agree": [0.8] * len(radii), "heatmap_seconds": 0.1})
        io.save({"kind": "heatmap", "heatmap": torch.rand(32, 32)}, spec.with_name(spec.stem + "_heatmap.pt"))


@pytest.fixture
def reported(tmp_path, env, monkeypatch):
    """A report of a fake grid in tmp_path/results; returns (experiment, runs folder, {file: bytes})."""
    experiment = write_experiment(tmp_path, name="t", datasets=TINY, report={"dir": str(tmp_path / "results")},
                                  grid={"methods": ["finetune"]})
    runs = tmp_path / "runs" / "t"
    monkeypatch.setenv("PIPELINE_RUNS", str(runs.parent))       # the report reads runs/<name>/ there
    _fake_runs(runs, loading.load(experiment))
    code, err = _main(["report", "--experiment", experiment])
    assert code == 0, err
    out = tmp_path / "results"
    return experiment, runs, {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_report_that_fails_part_way_leaves_the_previous_one_whole(reported, tmp_path):
    experiment, runs, before = reported
    names = {p.relative_to(tmp_path / "results").as_posix() for p in before}
    assert {"summary.csv", "spectral.csv", "README.md", "metrics.json"} <= names
    assert sum(n.startswith("figures/") for n in names) == 3
    # The heat maps are read after summary.csv, spectral.csv and the first figure are written.
    heat = runs / "spectral/synthetic/resnet20/seed0/s0.9/finetune_heatmap.pt"
    heat.write_bytes(heat.read_bytes()[:100])
    io.write_json(runs / "dense/synthetic/resnet20/seed0/metrics.json",
                  {"val_acc": 0.9, "test_acc": 0.9, "nonzero_weights": 10, "weights": 100, "epochs": 2,
                   "train_seconds": 1.0, "hardware": "cpu:test", **DENSE_COST})   # a new number the failed report read
    code, err = _main(["report", "--experiment", experiment])
    assert code == 3 and f"input error: {heat}: not a readable heatmap file" in err, err
    after = {p: p.read_bytes() for p in sorted((tmp_path / "results").rglob("*")) if p.is_file()}
    assert after == before, "the failed report changed the published one"
    assert not list((tmp_path / "results").glob(".staged-*"))


@pytest.mark.parametrize("content,expect", [
    (os.urandom(64) + b"\xff\xfe", "not valid JSON"),
    (b"{}", "missing keys ['val_acc', 'test_acc'"),
    (b"[1, 2]", "expected a JSON object, found list"),
])
def test_report_refuses_a_malformed_metrics_file_naming_it(content, expect, reported, tmp_path):
    experiment, runs, before = reported
    bad = runs / "retrain/synthetic/resnet20/seed0/s0.9/finetune/metrics.json"
    bad.write_bytes(content)
    code, err = _main(["report", "--experiment", experiment])
    assert code == 3, err
    (line,) = [x for x in err.splitlines() if x.startswith("input error: ")]
    assert line.startswith(f"input error: {bad}: ") and expect in line, err
    assert {p: p.read_bytes() for p in sorted((tmp_path / "results").rglob("*")) if p.is_file()} == before


def test_the_report_states_each_models_cost(reported, tmp_path):
    """summary.csv carries the cost columns, the README a cost table with the MACs note, metrics.json (dvc
    metrics) the MACs and speed-up; a metrics.json written before cost accounting is refused, naming it."""
    experiment, runs, before = reported
    out = tmp_path / "results"
    rows = {r["method"]: r for r in csv.DictReader(io_.StringIO((out / "summary.csv").read_text()))}
    assert {k: rows["finetune"][k] for k in PRUNED_COST} == {k: str(v) for k, v in PRUNED_COST.items()}
    readme = (out / "README.md").read_text()
    assert "| dense | dense | 4.0 k MACs (1.0x), 130 params |" in readme
    assert "| one-shot (equal budget) | finetune | 500 MACs (8.0x), 40 params |" in readme
    assert "no wall-clock speed-up on dense kernels" in readme
    m = json.loads((out / "metrics.json").read_text())["synthetic_resnet20"]
    assert m["finetune_s0.9"]["macs"] == 500 and m["finetune_s0.9"]["speedup"] == 8.0
    bad = runs / "retrain/synthetic/resnet20/seed0/s0.9/finetune/metrics.json"
    io.write_json(bad, {k: v for k, v in json.loads(bad.read_text()).items() if k not in ("macs", "speedup")})
    code, err = _main(["report", "--experiment", experiment])
    assert code == 3 and f"input error: {bad}: no macs, speedup: written before cost accounting" in err, err
