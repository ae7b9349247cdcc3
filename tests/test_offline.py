"""Offline tracking, `sync`, and the DAG driven without Snakemake (issue 28), on a tiny DAG (8 jobs).

One copy of the project drives the DAG where MLflow, Snakemake and DVC cannot be imported (tests/absent/: the
lent GPU machine's image has none of them), so every job records its run offline; another copy runs the same
DAG under Snakemake, online. The synced store must equal the online one: the same runs (names, params, status)
and every metric series (step by step), the timings aside.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.infra.offline import OfflineRun
from pipeline.infra.tracking import MlflowRun

from .conftest import copy_env, project_copy

ABSENT = Path(__file__).parent / "absent"
TINY = """\
name: t
datasets:
  synthetic: {source: synthetic, classes: 4, train_size: 192, val_size: 64, test_size: 64}
grid: {datasets: [synthetic], archs: [resnet20], sparsities: [0.9], seeds: [0], methods: [finetune]}
model: {width: 0.25}
train: {epochs: 2, batch_size: 32, save_epochs: [0, 1]}
retrain: {epochs: 2, lr: 0.01}
distill: {full_band_at: 0.5}
lth: {rewind_epoch: 1}
spectral: {batch_size: 512, heatmap_images: 4}
"""
TIMINGS = ("train_seconds", "heatmap_seconds")     # the only values two runs of one job may not share


def _run(cmd, repo, env, ok=True, timeout=900):
    p = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert p.returncode == 0, f"{' '.join(map(str, cmd))}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def _copy(folder: Path) -> tuple[Path, dict]:
    repo = project_copy(folder)
    (repo / "configs" / "t.yaml").write_text(TINY)
    env = {**copy_env(repo), "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlruns.db'}"}
    return repo, env


def _store(uri: str) -> dict:
    """run name -> (status, params, {metric: [(step, value), ...]}) of every run of experiment t."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t")
    out = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        series = {k: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, k))
                  for k in r.data.metrics if k not in TIMINGS}
        assert r.info.run_name not in out, f"two runs named {r.info.run_name}"
        out[r.info.run_name] = (r.info.status, r.data.params, series)
    return out


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """The tiny DAG exported (full installation), then driven where mlflow/snakemake/dvc are absent."""
    repo, env = _copy(tmp_path_factory.mktemp("offline") / "repo")
    _run([sys.executable, "-m", "pipeline", "export_jobs", "--experiment", "t"], repo, env)
    bare = {**env, "PYTHONPATH": f"{ABSENT}:{repo}"}
    for module in ("mlflow", "snakemake", "dvc"):
        assert _run([sys.executable, "-c", f"import {module}"], repo, bare, ok=False).returncode != 0
    first = _run([sys.executable, "-m", "pipeline", "drive", "--experiment", "t"], repo, bare)
    again = _run([sys.executable, "-m", "pipeline", "drive", "--experiment", "t"], repo, bare)
    return repo, env, first.stdout, again.stdout


@pytest.fixture(scope="module")
def online(tmp_path_factory):
    repo, env = _copy(tmp_path_factory.mktemp("online") / "repo")
    _run(["snakemake", "--cores", "2", "--configfile", "configs/t.yaml"], repo, env)
    return repo, env


def test_the_driver_runs_the_dag_without_the_stack_and_snakemake_takes_its_outputs(offline, online):
    repo, env, first, again = offline
    assert "0 of 8 jobs done, 8 to run" in first and "8 of 8 jobs done, 0 to run" in again
    assert not (repo / "mlruns.db").exists()                       # nothing tried to reach a store
    records = sorted(records_dir_of(repo).glob("*.json"))
    assert len(records) == 8
    # the same outputs as under Snakemake, the timings aside
    import pandas as pd
    a = pd.read_csv(repo / "runs/t/report/summary.csv").drop(columns=["train_seconds"])
    b = pd.read_csv(online[0] / "runs/t/report/summary.csv").drop(columns=["train_seconds"])
    pd.testing.assert_frame_equal(a, b)
    # back on the full installation, Snakemake takes them as done
    p = _run(["snakemake", "-n", "--cores", "1", "--configfile", "configs/t.yaml"], repo, env)
    assert "Nothing to be done" in p.stdout + p.stderr, p.stdout[-2000:]


def records_dir_of(repo: Path) -> Path:
    return repo / "runs" / "t" / "tracking"


def test_synced_runs_equal_the_online_runs_and_a_second_sync_adds_nothing(offline, online, tmp_path):
    repo, env, _, _ = offline
    uri = f"sqlite:///{tmp_path / 'synced.db'}"
    p = _run([sys.executable, "-m", "pipeline", "sync", "--experiment", "t"], repo, {**env, "MLFLOW_TRACKING_URI": uri})
    assert "synced 8 offline run(s) of t" in p.stdout
    synced, live = _store(uri), _store(f"sqlite:///{online[0] / 'mlruns.db'}")
    assert sorted(synced) == sorted(live)
    for name in live:
        assert synced[name] == live[name], name
    p = _run([sys.executable, "-m", "pipeline", "sync", "--experiment", "t"], repo, {**env, "MLFLOW_TRACKING_URI": uri})
    assert p.stdout.count(": 0 item(s) added") == 8, p.stdout
    assert _store(uri) == synced


def _in_process(monkeypatch, repo: Path, uri: str):
    from pipeline.config.loading import load
    monkeypatch.setenv("PIPELINE_RUNS", str(repo / "runs"))
    monkeypatch.setenv("PIPELINE_CONFIGS", str(repo / "configs"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return load("t")


def test_an_interrupted_sync_run_again_completes_without_duplicates(offline, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from pipeline.infra import tracking
    repo = offline[0]
    cfg = _in_process(monkeypatch, repo, f"sqlite:///{tmp_path / 'cut.db'}")
    real, calls = MlflowClient.log_artifact, []

    def cut(self, *a, **k):               # the sync dies in the middle of a record (after its metrics)
        calls.append(a)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(self, *a, **k)
    monkeypatch.setattr(MlflowClient, "log_artifact", cut)
    with pytest.raises(KeyboardInterrupt):
        tracking.sync(cfg)
    monkeypatch.setattr(MlflowClient, "log_artifact", real)
    tracking.sync(cfg)
    whole = tmp_path / "whole.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{whole}")
    tracking.sync(cfg)
    assert _store(f"sqlite:///{tmp_path / 'cut.db'}") == _store(f"sqlite:///{whole}")


def test_a_record_with_a_bad_digest_is_refused_before_anything_is_synced(offline, tmp_path):
    repo, env, _, _ = offline
    bad = project_copy(tmp_path / "bad")
    (bad / "configs" / "t.yaml").write_text(TINY)
    shutil.copytree(records_dir_of(repo), bad / "runs" / "t" / "tracking")
    victim = next(p for p in sorted((bad / "runs" / "t" / "tracking").glob("*.json")) if json.loads(p.read_text())["metrics"])
    rec = json.loads(victim.read_text())
    rec["metrics"][0][1] += 0.25                       # an edited metric: the digest no longer matches
    victim.write_text(json.dumps(rec))
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    p = _run([sys.executable, "-m", "pipeline", "sync", "--experiment", "t"], bad,
             {**copy_env(bad), "MLFLOW_TRACKING_URI": uri}, ok=False)
    assert p.returncode == 3 and str(victim) in p.stderr, p.stderr
    from mlflow.tracking import MlflowClient
    exp = MlflowClient(uri).get_experiment_by_name("t")
    assert exp is None or not MlflowClient(uri).search_runs([exp.experiment_id])


JOB = {"dataset": "synthetic", "arch": "resnet20", "seed": 0, "method": "dense", "sparsity": 0.0}


def test_a_job_resumed_online_from_an_offline_checkpoint_is_one_run(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "t.yaml").write_text(TINY)
    cfg = _in_process(monkeypatch, tmp_path, f"sqlite:///{tmp_path / 'one.db'}")
    first = OfflineRun(cfg, "train_dense", JOB, {"x": 1})          # killed after two epochs: never closed
    first.log_metrics({"train_loss": 2.0}, 1)
    first.log_metrics({"train_loss": 1.5}, 2)
    with MlflowRun(cfg, "train_dense", JOB, {"x": 1}, run_id=first.run_id) as run:   # the checkpoint's run id
        run.log_metrics({"train_loss": 1.0}, 3)
    from pipeline.infra import tracking
    [(_, synced_into, added)] = tracking.sync(cfg)                  # the record again: nothing twice
    assert (synced_into, added) == (run.run_id, 0)
    store = _store(f"sqlite:///{tmp_path / 'one.db'}")
    assert list(store) == ["dense seed0 | train_dense synthetic/resnet20"]
    status, params, series = store["dense seed0 | train_dense synthetic/resnet20"]
    assert status == "FINISHED" and params == {"x": "1"} and series == {"train_loss": [(1, 2.0), (2, 1.5), (3, 1.0)]}


def test_a_job_resumed_offline_from_an_online_checkpoint_syncs_into_that_run(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "t.yaml").write_text(TINY)
    cfg = _in_process(monkeypatch, tmp_path, f"sqlite:///{tmp_path / 'two.db'}")
    first = MlflowRun(cfg, "train_dense", JOB, {"x": 1})            # killed after one epoch: RUNNING
    first.log_metrics({"train_loss": 2.0}, 1)
    with OfflineRun(cfg, "train_dense", JOB, {"x": 1}, run_id=first.run_id) as run:
        run.log_metrics({"train_loss": 1.5}, 2)
    from pipeline.infra import tracking
    tracking.sync(cfg)
    tracking.sync(cfg)
    store = _store(f"sqlite:///{tmp_path / 'two.db'}")
    assert list(store) == ["dense seed0 | train_dense synthetic/resnet20"]
    assert store["dense seed0 | train_dense synthetic/resnet20"][0] == "FINISHED"
    assert store["dense seed0 | train_dense synthetic/resnet20"][2] == {"train_loss": [(1, 2.0), (2, 1.5)]}
