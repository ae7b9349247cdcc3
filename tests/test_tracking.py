"""MLflow tracking under concurrency: parallel jobs (as `snakemake --cores N` runs them) share ONE SQLite
store; every run and every metric step must land, none may fail with "database is locked". A job that
raises leaves its run FAILED with the message; `make ui` binds to localhost unless told otherwise."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from pipeline.config.layout import ROOT
from pipeline.config.loading import load

from .conftest import write_experiment

WORKERS = 8
STEPS = 30

# One launcher process imports mlflow once (3 s of CPU each would otherwise be paid 8 times on a small
# machine), then forks WORKERS jobs BEFORE any store connection exists: each job opens its own connection,
# as separate `python -m pipeline` jobs do. A barrier starts them together on a FRESH store, so they also
# race to create its tables. Each job: a tracking.Run, STEPS metric steps (two metrics each), a tag, an
# artifact, FINISHED on exit; its run id is printed, its traceback (if any) goes to stderr.
LAUNCHER = textwrap.dedent("""
    import multiprocessing as mp
    import sys
    import traceback
    from pathlib import Path

    import mlflow.tracking  # noqa: F401
    from pipeline.config.loading import load
    from pipeline.infra.tracking import Run

    experiment, workers, steps, folder = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    cfg = load(Path(experiment))

    def job(i, barrier, ids):
        try:
            barrier.wait(timeout=120)
            with Run(cfg, "stress", {"worker": i, "seed": i}, {"train": {"epochs": steps, "lr": 0.1}, "i": i}) as run:
                for s in range(1, steps + 1):
                    run.log_metrics({"loss": 1.0 / (s + i), "step_id": s * 100 + i}, s)
                run.set_tags({"done": "yes"})
                art = folder / f"art{i}.txt"
                art.write_text(str(i))
                run.log_artifact(art)
            ids[i] = run.run_id
        except BaseException:
            sys.stderr.write(f"worker {i} failed:\\n{traceback.format_exc()}")
            sys.stderr.flush()
            raise SystemExit(1)

    ctx = mp.get_context("fork")
    barrier, ids = ctx.Barrier(workers), ctx.Manager().dict()
    procs = [ctx.Process(target=job, args=(i, barrier, ids)) for i in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    for i, p in enumerate(procs):
        print(f"EXIT {i} {p.exitcode} {ids.get(i)}")
""")


def _client(env):
    from mlflow.tracking import MlflowClient
    return MlflowClient(env["MLFLOW_TRACKING_URI"])


def test_parallel_runs_share_one_sqlite_store(tmp_path, env):
    experiment = write_experiment(tmp_path, name="conc")
    p = subprocess.run([sys.executable, "-c", LAUNCHER, str(experiment), str(WORKERS), str(STEPS), str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert "database is locked" not in p.stderr.lower(), p.stderr[-4000:]
    assert p.returncode == 0, p.stderr[-4000:]
    exits = re.findall(r"^EXIT (\d+) (-?\d+) (\w+)$", p.stdout, re.M)
    assert len(exits) == WORKERS, p.stdout + p.stderr[-4000:]
    failed = [i for i, code, _ in exits if code != "0"]
    assert not failed, f"workers {failed} failed:\n{p.stderr[-4000:]}"
    ids = {int(i): rid for i, _, rid in exits}
    assert len(set(ids.values())) == WORKERS

    client = _client(env)
    exp = client.get_experiment_by_name("conc")
    assert exp is not None, "the experiment named after the experiment is missing"
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'stress'", max_results=1000)
    assert len(runs) == WORKERS, f"expected {WORKERS} runs, found {len(runs)}"
    by_id = {r.info.run_id: r for r in runs}
    for i, rid in ids.items():
        r = by_id[rid]
        assert r.info.status == "FINISHED", (i, r.info.status)
        assert r.data.tags["worker"] == str(i) and r.data.tags["done"] == "yes"
        assert r.data.tags["experiment"] == "conc" and "git_commit" in r.data.tags
        assert r.data.params["train.epochs"] == str(STEPS) and r.data.params["i"] == str(i)
        for name, value in (("loss", lambda s: 1.0 / (s + i)), ("step_id", lambda s: float(s * 100 + i))):
            hist = client.get_metric_history(rid, name)
            got = sorted((m.step, m.value) for m in hist)
            assert got == [(s, value(s)) for s in range(1, STEPS + 1)], f"worker {i}, {name}: {got}"
        assert [a.path for a in client.list_artifacts(rid)] == [f"art{i}.txt"]


def test_exception_marks_run_failed_with_error_tag(tmp_path, env):
    from pipeline.infra.tracking import Run
    cfg = load(write_experiment(tmp_path, name="fails"))
    with pytest.raises(ValueError, match="boom at epoch 3"):
        with Run(cfg, "train_dense", {"dataset": "synthetic", "seed": 0}, {"train": {"epochs": 3}}) as run:
            run.log_metrics({"loss": 1.5}, 1)
            raise ValueError("boom at epoch 3")
    client = _client(env)
    r = client.get_run(run.run_id)
    assert r.info.status == "FAILED"
    assert r.data.tags["error"] == "ValueError: boom at epoch 3"
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [1.5]
    # A job that succeeds in the same store finishes without an error tag.
    with Run(cfg, "train_dense", {"dataset": "synthetic", "seed": 1}, {}) as ok:
        pass
    r = client.get_run(ok.run_id)
    assert r.info.status == "FINISHED" and "error" not in r.data.tags
    exp = client.get_experiment_by_name("fails")
    assert len(client.search_runs([exp.experiment_id])) == 2


def test_resumed_run_continues_the_same_run(tmp_path, env):
    """A resumed job (run id from its checkpoint) reopens its own run: RUNNING again, then FINISHED, one run."""
    from pipeline.infra.tracking import Run
    cfg = load(write_experiment(tmp_path, name="resume"))
    first = Run(cfg, "train_dense", {"seed": 0}, {"x": 1})
    first.log_metrics({"val_acc": 0.25}, 1)            # then the job is killed: the run stays RUNNING
    client = _client(env)
    assert client.get_run(first.run_id).info.status == "RUNNING"
    with Run(cfg, "train_dense", {"seed": 0}, {"x": 1}, run_id=first.run_id) as again:
        assert client.get_run(first.run_id).info.status == "RUNNING"
        again.log_metrics({"val_acc": 0.5}, 2)
    assert again.run_id == first.run_id
    exp = client.get_experiment_by_name("resume")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [first.run_id] and runs[0].info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "val_acc")] == [(1, 0.25), (2, 0.5)]


def _ui_recipe() -> str:
    text = (ROOT / "Makefile").read_text()
    m = re.search(r"^ui:.*\n((?:\t.*\n?)+)", text, re.M)
    assert m, "the Makefile has no ui target"
    return m.group(1)


def test_make_ui_binds_to_localhost_by_default():
    recipe = _ui_recipe()
    assert "mlflow ui" in recipe or "mlflow server" in recipe, recipe
    host = re.search(r"--host[ =](\S+)", recipe)
    assert host, f"`make ui` must pass --host explicitly (mlflow's default may change): {recipe}"
    value = host.group(1)
    # Either a literal 127.0.0.1 or a shell default like ${HOST:-127.0.0.1} / $(HOST) with HOST ?= 127.0.0.1.
    default = re.fullmatch(r"\$+\{(\w+):-([^}]+)\}", value)
    if default:
        value = default.group(2)
    else:
        var = re.fullmatch(r"\$\((\w+)\)", value)
        if var:
            assign = re.search(rf"^{var.group(1)}\s*\??=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
            assert assign, f"{var.group(1)} has no default in the Makefile"
            value = assign.group(1)
    assert value == "127.0.0.1", f"`make ui` binds to {value!r} by default, not 127.0.0.1 only"
    assert "0.0.0.0" not in recipe.replace("HOST=0.0.0.0", "")
