"""Kill -9 and resume: a training job killed mid-epoch leaves no declared output behind, and when rerun it
resumes from its checkpoint and ends bit for bit where an uninterrupted run ends (weights, weight snapshots,
masks, metrics), continuing the SAME MLflow run. For dense training and for every kind of retraining state:
imp (killed in round 1, after its pruning), kd and fourier_kd (the teacher, the radius schedule), gmp
(killed while its mask grows), lth (killed after rewinding). Also: two uninterrupted runs are bit-identical.

No timing window: each job kills itself at an exact (round, epoch, step) (PIPELINE_TEST_KILL_AT,
pipeline/infra/faults.py), as `kill -9` would. Each `python -m pipeline` start costs ~8 s of CPU (torch, mlflow,
the store's schema check), so the dataset and the mask are made in this process, the killed jobs start
together, and the uninterrupted references and the resumes run through the same CLI entry point one after
another in one process each (tests.conftest.run_jobs).

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
from pathlib import Path

import pytest
import torch

from pipeline.core import data as D, masks as M, models
from pipeline.infra import faults, io
from pipeline.config.layout import ROOT
from pipeline.config.loading import load
from pipeline.config.layout import prune_key
from pipeline.stages.common import identity, load_model

from .conftest import cli, run_jobs, write_experiment

NAME = "resume"
DENSE_EPOCHS = 5
IMP_ROUNDS, IMP_EPOCHS = 2, 2       # rate 0.6 (EXPERIMENT): rounds to 0.6, then 0.8
# 4 steps an epoch at width 0.25: long enough to be killed mid-epoch, cheap (the kill is exact).
EXPERIMENT = dict(
    datasets={"synthetic": {"source": "synthetic", "classes": 10, "train_size": 256, "val_size": 64,
                            "test_size": 64}},
    model={"width": 0.25},
    train={"epochs": DENSE_EPOCHS, "batch_size": 64, "lr": 0.05, "lr_drops": [0.5, 0.75], "gamma": 0.1,
           "save_epochs": [0, 2]},                  # epoch 2: a snapshot taken after a resume too
    retrain={"epochs": 2, "lr": 0.01},
    # rate 0.6 per round: 2 rounds to SPARSITY 0.8 (0.6, then 0.8)
    imp={"rate": 0.6, "epochs_per_round": IMP_EPOCHS},
    lth={"rate": 0.6, "rewind_epoch": 2},           # rounds of 3 epochs (5 - 2), rewound to the epoch-2 snapshot
    runtime={"threads": 1, "device": "cpu", "deterministic": True},
)
SPARSITY = 0.8
DENSE_KILL_AT = ((0, 1, 2), (0, 1))    # mid-epoch 1: the epoch-2 snapshot is taken after the resume
# Where each retraining method kills itself (round, epoch, step), why there, and the checkpoint that leaves
# (round, epochs done in it): the last epoch finished before the kill.
KILL_AT = {
    "imp": ((1, 0, 2), (0, IMP_EPOCHS)),   # round 1 pruned at its start (begin hook): the resume prunes again
    "kd": ((0, 1, 2), (0, 1)),             # mid-epoch 1: the teacher and the loss rebuilt from the files
    "fourier_kd": ((0, 1, 2), (0, 1)),     # epoch 1 has another radius than epoch 0
    "gmp": ((0, 2, 2), (0, 2)),            # the mask grows at the start of epochs 0..3: after epoch 2's growth
    "lth": ((1, 1, 2), (1, 1)),            # round 1, after its rewind to the epoch-2 snapshot
}
EPOCHS = {"imp": IMP_ROUNDS * IMP_EPOCHS, "kd": 2, "fourier_kd": 2, "gmp": DENSE_EPOCHS,
          "lth": 2 * (DENSE_EPOCHS - 2)}


def _env(folder: Path, empty_store: Path) -> dict:
    """A separate MLflow store and checkpoint folder. The store starts as a copy of an empty one (creating
    an MLflow schema costs seconds of CPU; once is enough)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_store, folder / "mlruns.db")
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlruns.db'}",
            "PIPELINE_RUNS": str(folder / "runs"), "PYTHONHASHSEED": "0"}


class Job:
    """One training job's command line, where its outputs go and the environment it runs in."""

    def __init__(self, stage: str, out: Path, env: dict, **args):
        self.stage, self.out = stage, out
        self.args, self.env = cli([stage, *[x for k, v in args.items() for x in (f"--{k}", v)], "--out", out], env)

    def killed_at(self, point: tuple[int, int, int]) -> subprocess.Popen:
        """Started in the background with the kill hook set, its output to a log beside its store."""
        log = open(Path(self.env["PIPELINE_RUNS"]).with_name("killed-job.log"), "w")
        env = {**self.env, faults.KILL: ",".join(map(str, point))}
        p = subprocess.Popen([sys.executable, "-m", "pipeline", *self.args], cwd=ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
        p.log = log
        return p

    def outputs(self) -> list[Path]:
        names = ["model.pt", "metrics.json"] + (["snapshots.pt"] if self.stage == "train_dense" else [])
        return [self.out.with_name(n) for n in names]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The experiment, the prepared dataset, the MBP mask and the uninterrupted dense job (store A)."""
    root = tmp_path_factory.mktemp("resume")
    experiment = write_experiment(root, name=NAME, **EXPERIMENT)
    empty = root / "empty" / "mlruns.db"
    empty.parent.mkdir()
    _client(f"sqlite:///{empty}")                              # creates the schema
    data = root / "data" / "synthetic.pt"
    D.prepare(load(experiment), "synthetic", data)         # what the prepare stage writes

    def dense(folder: Path) -> Job:
        return Job("train_dense", folder / "dense" / "model.pt", _env(folder, empty), experiment=experiment,
                   dataset="synthetic", arch="resnet20", seed=0, data=data)
    ref = dense(root / "A")
    run_jobs([ref])
    mask = root / "A" / "prune" / "mask.pt"
    net, blob = load_model(ref.out)                            # what the prune stage writes
    cfg, dense_sha = load(experiment), io.sha256(ref.out)
    io.save({"kind": "mask", **identity("resnet20", blob["classes"], cfg), "sparsity": SPARSITY,
             "dense_sha256": dense_sha, "job": prune_key(cfg, dense_sha, SPARSITY),
             "masks": M.global_magnitude(models.prunable(net), SPARSITY)}, mask)

    def retrain(method: str, folder: Path) -> Job:
        return Job("retrain", folder / method / "model.pt", _env(folder, empty), experiment=experiment,
                   dataset="synthetic", arch="resnet20", seed=0, sparsity=SPARSITY, method=method, data=data,
                   dense=ref.out, snapshots=ref.out.with_name("snapshots.pt"), mask=mask)
    return {"root": root, "dense": dense, "ref": ref, "retrain": retrain, "empty": empty}


@pytest.fixture(scope="module")
def resumed(base):
    """Dense training and every method of KILL_AT, each killed at its point and resumed (one store per job,
    C/<name>), and their uninterrupted references (the retraining ones in one store, B: distinct parameters,
    distinct checkpoints). The killed jobs run at once; what each left behind is recorded before the resumes."""
    root = base["root"]
    refs = {m: base["retrain"](m, root / "B") for m in KILL_AT}
    run_jobs(list(refs.values()))
    refs["dense"] = base["ref"]
    jobs = {"dense": base["dense"](root / "C" / "dense"),
            **{m: base["retrain"](m, root / "C" / m) for m in KILL_AT}}
    points = {"dense": DENSE_KILL_AT, **KILL_AT}
    procs = {m: jobs[m].killed_at(points[m][0]) for m in jobs}
    left = {}
    for m, p in procs.items():
        p.wait(timeout=900)
        p.log.close()
        left[m] = _left_behind(jobs[m], p.returncode)
    codes = run_jobs(list(jobs.values()), check=False)          # the same commands again: they resume
    return {m: {"job": jobs[m], "ref": refs[m], "killed": left[m], "code": code}
            for m, code in zip(jobs, codes)}


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


def _left_behind(job: Job, returncode: int) -> dict:
    """What a killed job left: its exit, outputs, half-written files, checkpoint and MLflow runs."""
    log = Path(job.env["PIPELINE_RUNS"]).with_name("killed-job.log").read_text()
    checkpoints = _checkpoints(job.env)
    state = _load(checkpoints[0]) if len(checkpoints) == 1 else {}
    return {"returncode": returncode, "log": log[-3000:], "outputs": [o.name for o in job.outputs() if o.exists()],
            "tmp": [p.name for p in job.out.parent.glob(".*.tmp")], "checkpoints": checkpoints,
            "round": state.get("round"), "epoch": state.get("epoch"), "run_id": state.get("run_id"),
            "train_seconds": state.get("train_seconds"),
            "runs": [(r.info.run_id, r.info.status) for r in _runs(job)]}


@functools.lru_cache(maxsize=None)
def _client(uri: str):
    from mlflow.tracking import MlflowClient
    return MlflowClient(uri)


def _runs(job: Job):
    """The job's MLflow runs in its store (its stage, and its method: store B holds several)."""
    client = _client(job.env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(NAME)
    assert exp is not None, "no experiment named after the experiment"
    stage = "retrain" if job.stage == "retrain" else "train_dense"
    method = job.args[job.args.index("--method") + 1] if "--method" in job.args else "dense"
    return client.search_runs([exp.experiment_id], f"tags.stage = '{stage}' and tags.method = '{method}'",
                              max_results=100)


def _history(job: Job, metric) -> dict[int, set[float]]:
    runs = _runs(job)
    assert len(runs) == 1
    out: dict[int, set[float]] = {}
    for m in _client(job.env["MLFLOW_TRACKING_URI"]).get_metric_history(runs[0].info.run_id, metric):
        out.setdefault(m.step, set()).add(m.value)
    return out


def _check_resumed(r: dict, kill: tuple, total_epochs: int) -> None:
    """A job killed at kill[0] left what it should (its checkpoint at kill[1]), and its resume equals the
    uninterrupted reference."""
    job, ref, killed = r["job"], r["ref"], r["killed"]
    assert killed["returncode"] == -signal.SIGKILL, f"exit {killed['returncode']}, not killed:\n{killed['log']}"
    # Atomic outputs: nothing declared exists after the kill (Snakemake/DVC would take it for done).
    assert killed["outputs"] == [], f"{killed['outputs']} exist after the job was killed mid-training"
    assert killed["tmp"] == [], "a half-written output was left behind"
    assert len(killed["checkpoints"]) == 1, killed["checkpoints"]
    assert (killed["round"], killed["epoch"]) == kill[1], "not the checkpoint of the last epoch before the kill"
    assert killed["runs"] == [(killed["run_id"], "RUNNING")]          # killed: never closed
    assert r["code"] == 0, f"the resumed job exited {r['code']}"
    _assert_same_outputs(ref, job)
    # the training time of both processes: more than the killed one's checkpointed epochs
    seconds = json.loads(job.out.with_name("metrics.json").read_text())["train_seconds"]
    assert seconds > killed["train_seconds"] > 0
    assert not _checkpoints(job.env), "the checkpoint outlived its job"
    runs = _runs(job)
    assert [(x.info.run_id, x.info.status) for x in runs] == [(killed["run_id"], "FINISHED")], \
        "not one MLflow run, continued and finished, for the killed-and-resumed job"
    # Every epoch's metrics are in the run, with the values of the uninterrupted job (the epoch the kill
    # interrupted is trained and logged again, with the same value).
    got, want = _history(job, "val_acc"), _history(ref, "val_acc")
    assert sorted(got) == sorted(want) == list(range(1, total_epochs + 1)), sorted(got)
    assert got == want, f"val_acc by epoch: {got} != {want}"


# ---------------------------------------------------------------------------------------------- tests


def test_dense_training_is_deterministic(base, tmp_path):
    """A fresh `python -m pipeline` process ends where the reference (run through run_jobs) ended."""
    job = base["dense"](tmp_path)
    p = subprocess.run([sys.executable, "-m", "pipeline", *job.args], cwd=ROOT, env=job.env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    _assert_same_outputs(base["ref"], job)


def test_train_dense_killed_resumes_bit_exact(resumed):
    _check_resumed(resumed["dense"], DENSE_KILL_AT, DENSE_EPOCHS)


@pytest.mark.parametrize("method", sorted(KILL_AT))
def test_retraining_killed_resumes_bit_exact(resumed, method):
    _check_resumed(resumed[method], KILL_AT[method], EPOCHS[method])
