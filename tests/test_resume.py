"""Kill -9 and resume: a training job killed after a checkpoint leaves no declared output behind, and when
rerun it resumes from its checkpoint and ends bit for bit where an uninterrupted run ends (weights, weight
snapshots, masks, metrics), continuing the SAME MLflow run. Also: two uninterrupted runs are bit-identical.

Each job that shares parameters with another gets its own PIPELINE_RUNS and MLflow store (the checkpoint
path is keyed by the parameters, so two such jobs in one store would share a checkpoint)."""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline import data as D, io, masks as M, models
from pipeline.config import ROOT, load
from pipeline.jobs import identity as _identity, load_model, prune_key as _prune_key

from .conftest import cli, run_stage, write_experiment

NAME = "resume"
DENSE_EPOCHS = 5
IMP_ROUNDS, IMP_EPOCHS = 2, 2
# ~0.1 s a step at width 0.25 on one thread, 6 steps an epoch: a kill right after a checkpoint lands one
# or more seconds before the end, even on a loaded machine (slower epochs only widen that window). Each
# `python -m pipeline` start costs ~8 s of CPU (torch, mlflow, the store's schema check): the dataset and
# the mask are made in this process, so that only the training jobs are started as subprocesses.
EXPERIMENT = dict(
    datasets={"synthetic": {"source": "synthetic", "classes": 10, "train_size": 448, "val_size": 64,
                            "test_size": 64}},
    model={"width": 0.25},
    train={"epochs": DENSE_EPOCHS, "batch_size": 64, "lr": 0.05, "lr_drops": [0.5, 0.75], "gamma": 0.1,
           "save_epochs": [0, 2]},                  # epoch 2: a snapshot taken after a resume too
    retrain={"epochs": 2, "lr": 0.01},
    imp={"rate": 0.6, "epochs_per_round": IMP_EPOCHS},    # to 0.8 in IMP_ROUNDS = 2 rounds: 0.6, then 0.8
    lth={"rewind_epoch": 2},
    runtime={"threads": 1, "device": "cpu", "deterministic": True},
)
SPARSITY = 0.8


def _env(folder: Path, empty_store: Path) -> dict:
    """A separate MLflow store and checkpoint folder. The store starts as a copy of an empty one (creating
    an MLflow schema costs seconds of CPU; once is enough)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_store, folder / "mlruns.db")
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlruns.db'}",
            "PIPELINE_RUNS": str(folder / "runs"), "PYTHONHASHSEED": "0"}


def _ok(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == 0, f"exit {p.returncode}:\n{p.stderr[-4000:]}"


class Job:
    """One training job's command line and where its outputs go."""

    def __init__(self, stage: str, out: Path, **args):
        self.stage, self.out = stage, out
        self.args = [stage, *[x for k, v in args.items() for x in (f"--{k}", v)], "--out", out]

    def run(self, env):
        _ok(run_stage(*self.args, env=env))

    def popen(self, env, log) -> subprocess.Popen:
        """Started in the background, its output to the file `log` (a pipe nobody reads could block it)."""
        args, env = cli(self.args, env)
        return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)

    def outputs(self) -> list[Path]:
        names = ["model.pt", "metrics.json"] + (["snapshots.pt"] if self.stage == "train_dense" else [])
        return [self.out.with_name(n) for n in names]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The experiment, the prepared dataset and the uninterrupted dense job (store A)."""
    root = tmp_path_factory.mktemp("resume")
    experiment = write_experiment(root, name=NAME, **EXPERIMENT)
    empty = root / "empty" / "mlruns.db"
    empty.parent.mkdir()
    _client(f"sqlite:///{empty}")                              # creates the schema
    env = _env(root / "A", empty)
    data = root / "data" / "synthetic.pt"
    D.prepare(load(experiment), "synthetic", data)         # what the prepare stage writes

    def dense(out):
        return Job("train_dense", out, experiment=experiment, dataset="synthetic", arch="resnet20", seed=0, data=data)
    ref = dense(root / "A" / "dense" / "model.pt")
    ref.run(env)
    return {"root": root, "experiment": experiment, "data": data, "dense": dense, "ref": ref, "env": env,
            "empty": empty}


@pytest.fixture(scope="module")
def imp_base(base):
    """The MBP mask of the dense model and the uninterrupted imp retraining (store A)."""
    b = base
    mask = b["root"] / "A" / "prune" / "mask.pt"
    net, blob = load_model(b["ref"].out)                       # what the prune stage writes
    cfg, dense_sha = load(b["experiment"]), io.sha256(b["ref"].out)
    io.save({"kind": "mask", **_identity("resnet20", blob["classes"], cfg), "sparsity": SPARSITY,
             "dense_sha256": dense_sha, "job": _prune_key(cfg, dense_sha, SPARSITY),
             "masks": M.global_magnitude(models.prunable(net), SPARSITY)}, mask)

    def imp(out):
        return Job("retrain", out, experiment=b["experiment"], dataset="synthetic", arch="resnet20", seed=0,
                   sparsity=SPARSITY, method="imp", data=b["data"], dense=b["ref"].out,
                   snapshots=b["ref"].out.with_name("snapshots.pt"), mask=mask)
    ref = imp(b["root"] / "A" / "imp" / "model.pt")
    ref.run(b["env"])
    return {"imp": imp, "ref": ref}


# -------------------------------------------------------------------------------------------- helpers


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: different keys"
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), f"{what}: {k} differs"


def _assert_same_outputs(a: Job, b: Job) -> None:
    ma, mb = _load(a.out), _load(b.out)
    _assert_same_tensors(ma["state"], mb["state"], "model weights")
    if ma["masks"] is None:
        assert mb["masks"] is None
    else:
        _assert_same_tensors(ma["masks"], mb["masks"], "masks")
    ja, jb = (json.loads(j.out.with_name("metrics.json").read_text()) for j in (a, b))
    for k in ("val_acc", "test_acc", "epochs", "nonzero_weights", "sparsity", "test_agreement"):
        assert ja.get(k) == jb.get(k), f"metrics.json {k}: {ja.get(k)} != {jb.get(k)}"
    if a.stage == "train_dense":
        sa, sb = (_load(j.out.with_name("snapshots.pt"))["snapshots"] for j in (a, b))
        assert sorted(sa) == sorted(sb) == [0, 2], sorted(sb)
        for e in sa:
            _assert_same_tensors(sa[e], sb[e], f"snapshot at epoch {e}")


def _checkpoints(env) -> list[Path]:
    folder = Path(env["PIPELINE_RUNS"]) / NAME / "checkpoints"
    return sorted(p for p in folder.glob("*.pt") if not p.name.startswith(".")) if folder.is_dir() else []


def _kill_after(job: Job, env, ready, timeout: float = 300) -> dict:
    """Start `job`, wait for a checkpoint with ready(state), SIGKILL the job; return that checkpoint."""
    log_path = Path(env["PIPELINE_RUNS"]).with_name("killed-job.log")
    log = open(log_path, "w")
    proc = job.popen(env, log)
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert proc.poll() is None, (f"the job ended (exit {proc.returncode}) before it could be killed; "
                                         f"make its epochs longer:\n{log_path.read_text()[-3000:]}")
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            for ck in _checkpoints(env):
                try:
                    state = _load(ck)
                except Exception:  # noqa: BLE001 - replaced while we read it; read it again next poll
                    continue
                if ready(state):
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=60)
                    assert proc.returncode == -signal.SIGKILL, "the job finished before the kill landed"
                    return {**state, "path": ck}
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@functools.lru_cache(maxsize=None)
def _client(uri: str):
    from mlflow.tracking import MlflowClient
    return MlflowClient(uri)


def _runs(env, stage):
    client = _client(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(NAME)
    assert exp is not None, "no experiment named after the experiment"
    return client, client.search_runs([exp.experiment_id], f"tags.stage = '{stage}'", max_results=100)


def _history(env, stage, metric) -> dict[int, set[float]]:
    client, runs = _runs(env, stage)
    assert len(runs) == 1
    out: dict[int, set[float]] = {}
    for m in client.get_metric_history(runs[0].info.run_id, metric):
        out.setdefault(m.step, set()).add(m.value)
    return out


def _kill_and_resume(job: Job, ref: Job, ref_env: dict, env: dict, ready, total_epochs: int,
                     mlflow_stage: str) -> dict:
    """Kill `job` once a checkpoint satisfies ready(state), check what it left, rerun it, and compare it with
    the uninterrupted `ref` (run in the store of `ref_env`). Returns the checkpoint the kill left."""
    killed = _kill_after(job, env, ready)
    # Atomic outputs: nothing declared exists after the kill (Snakemake/DVC would take it for done).
    for out in job.outputs():
        assert not out.exists(), f"{out.name} exists after the job was killed mid-training"
    assert not list(job.out.parent.glob(".*.tmp")), "a half-written output was left behind"
    assert killed["path"].exists() and 1 <= killed["epoch"]
    _, runs = _runs(env, mlflow_stage)
    assert [r.info.status for r in runs] == ["RUNNING"]          # killed: never closed
    assert runs[0].info.run_id == killed["run_id"]

    job.run(env)                                                  # the same command again: resumes
    _assert_same_outputs(ref, job)
    # the training time of both processes: more than the killed one's checkpointed epochs
    seconds = json.loads(job.out.with_name("metrics.json").read_text())["train_seconds"]
    assert seconds > killed["train_seconds"] > 0
    assert not _checkpoints(env), "the checkpoint outlived its job"
    _, runs = _runs(env, mlflow_stage)
    assert len(runs) == 1, f"{len(runs)} MLflow runs for one killed-and-resumed job"
    assert runs[0].info.run_id == killed["run_id"] and runs[0].info.status == "FINISHED"
    # Every epoch's metrics are in the run, with the values of the uninterrupted job (an epoch logged just
    # before the kill but not yet checkpointed is trained and logged again, with the same value).
    got, want = _history(env, mlflow_stage, "val_acc"), _history(ref_env, mlflow_stage, "val_acc")
    assert sorted(got) == sorted(want) == list(range(1, total_epochs + 1)), sorted(got)
    assert got == want, f"val_acc by epoch: {got} != {want}"
    return killed


# ---------------------------------------------------------------------------------------------- tests


def test_dense_training_is_deterministic(base, tmp_path):
    job = base["dense"](tmp_path / "dense" / "model.pt")
    job.run(_env(tmp_path, base["empty"]))
    _assert_same_outputs(base["ref"], job)


def test_train_dense_killed_resumes_bit_exact(base, tmp_path):
    env = _env(tmp_path, base["empty"])
    job = base["dense"](tmp_path / "dense" / "model.pt")
    killed = _kill_and_resume(job, base["ref"], base["env"], env, lambda s: s["epoch"] >= 1, DENSE_EPOCHS,
                              "train_dense")
    assert killed["round"] == 0 and killed["epoch"] < DENSE_EPOCHS


def test_imp_killed_between_rounds_resumes_bit_exact(base, imp_base, tmp_path):
    env = _env(tmp_path, base["empty"])
    job = imp_base["imp"](tmp_path / "imp" / "model.pt")
    # The first checkpoint at the end of round 0: the kill lands in round 1, whose pruning (begin hook)
    # the resumed job must redo from the checkpointed weights and masks.
    killed = _kill_and_resume(job, imp_base["ref"], base["env"], env,
                              lambda s: (s["round"], s["epoch"]) >= (0, IMP_EPOCHS), IMP_ROUNDS * IMP_EPOCHS, "retrain")
    assert (killed["round"], killed["epoch"]) == (0, IMP_EPOCHS), "not killed between rounds"
