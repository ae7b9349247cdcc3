"""MLflow runs read well without instructions: names start with method and cell; tags carry the params
digest, commit and invocation; a rerun of a job supersedes its older runs; the experiment says how to compare."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from pipeline.config import catalog as colors
from pipeline.config.loading import load
from pipeline.infra.run_record import run_name
from pipeline.infra.tracking import COMPARE_FILTER, Run

CELL = {"dataset": "synthetic", "arch": "resnet20", "seed": 0, "sparsity": 0.9}


def test_run_names_start_with_method_and_cell():
    assert run_name({"stage": "retrain", **{k: str(v) for k, v in CELL.items()}, "method": "fourier_kd"}) == \
        "fourier_kd s0.9 seed0 | retrain synthetic/resnet20"
    assert run_name({"stage": "train_dense", "dataset": "c", "arch": "a", "seed": "1", "sparsity": "0.0",
                     "method": "dense"}) == "dense seed1 | train_dense c/a"
    assert run_name({"stage": "report"}) == "report"


def test_tags_digest_and_superseded_reruns(env):
    cfg = load("smoke")
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    ids = []
    for params in ({"T": 4.0}, {"T": 4.0}, {"T": 3.0}):
        with Run(cfg, "retrain", {**CELL, "method": "kd"}, params) as r:
            ids.append(r.run_id)
    with Run(cfg, "retrain", {**CELL, "method": "finetune"}, {}) as other:
        pass
    runs = {i: client.get_run(i).data.tags for i in ids}
    digests = [runs[i]["params_digest"] for i in ids]
    assert digests[0] == digests[1] != digests[2]                 # same job and params: same digest
    assert [runs[i]["superseded"] for i in ids] == ["true", "true", "false"]
    assert [runs[i].get("superseded_by") for i in ids] == [ids[1], ids[2], None]
    assert runs[ids[2]]["invocation"] == "manual" and runs[ids[2]]["mlflow.runColor"] == colors.color("kd")
    assert client.get_run(other.run_id).data.tags["superseded"] == "false"   # another job is left alone
    exp = client.get_experiment_by_name("smoke")
    assert COMPARE_FILTER in exp.tags["mlflow.note.content"]
    current = client.search_runs([exp.experiment_id], COMPARE_FILTER)
    assert sorted(r.info.run_id for r in current) == sorted([ids[2], other.run_id])


def test_a_run_left_running_by_a_killed_job_is_marked_killed_when_the_job_starts_again(env, tmp_path):
    import socket
    import subprocess
    import sys
    cfg = load("smoke")
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    # A job killed while running: its process exits without closing its run (os._exit: no cleanup).
    killed = subprocess.run([sys.executable, "-c", (
        "import os\nfrom pipeline.config.loading import load\nfrom pipeline.infra.tracking import Run\n"
        f"r = Run(load('smoke'), 'prune', {CELL!r}, {{}})\nprint(r.run_id, os.getpid())\nos._exit(9)")],
        env=env, capture_output=True, text=True, timeout=300)
    dead, pid = killed.stdout.split()
    assert killed.returncode == 9 and client.get_run(dead).info.status == "RUNNING", killed.stderr
    live = Run(cfg, "prune", {**CELL, "seed": 1}, {})            # another cell, still running (this process)
    with Run(cfg, "prune", {**CELL, "seed": 1}, {}) as again:     # ... and the same job again in this process
        pass
    assert client.get_run(live.run_id).info.status == "RUNNING"  # a live process: left alone
    with Run(cfg, "prune", CELL, {}) as rerun:
        pass
    old = client.get_run(dead)
    assert old.info.status == "KILLED" and old.data.tags["superseded_by"] == rerun.run_id
    assert old.data.tags["killed_reason"].startswith(f"its process (pid {pid} on {socket.gethostname()}) ended "
                                                     "without closing the run (killed)")
    assert old.data.tags["killed_reason"].endswith(f"found when the same job started again as run {rerun.run_id}")
    assert client.get_run(rerun.run_id).info.status == "FINISHED" and again.run_id != live.run_id


def test_two_clones_sharing_a_store_do_not_supersede_each_other(env, monkeypatch):
    from pipeline.infra import tracking
    cfg = load("smoke")
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    here = tracking.ROOT
    with Run(cfg, "retrain", {**CELL, "method": "kd"}, {}) as ours:
        pass
    monkeypatch.setattr(tracking, "ROOT", here.parent / "clone")              # the same job from another folder
    with Run(cfg, "retrain", {**CELL, "method": "kd"}, {}) as theirs:
        pass
    assert client.get_run(ours.run_id).data.tags["project"] == str(here)
    assert client.get_run(ours.run_id).data.tags["superseded"] == "false"
    assert client.get_run(theirs.run_id).data.tags["project"] == str(here.parent / "clone")
    with Run(cfg, "retrain", {**CELL, "method": "kd"}, {}) as theirs2:        # a rerun in the clone
        pass
    assert client.get_run(theirs.run_id).data.tags["superseded_by"] == theirs2.run_id
    assert client.get_run(ours.run_id).data.tags["superseded"] == "false"
