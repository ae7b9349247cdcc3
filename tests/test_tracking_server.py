"""Tracking that many nodes can share: jobs log to an MLflow tracking server (tracking.uri = http://host:port)
without the SQLite file lock, several at once, and nothing is lost."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.config.layout import ROOT
from pipeline.infra.tracking import _lock_path
from tests.mlflow_server import mlflow_server

JOBS, EPOCHS = 4, 25
JOB = """
import sys
from pipeline.config.loading import load
from pipeline.infra.tracking import Run
i = int(sys.argv[1])
cfg = load("smoke")
with Run(cfg, "retrain", {"dataset": "synthetic", "arch": "resnet20", "seed": i, "sparsity": 0.9,
                          "method": "finetune"}, cfg.section("retrain")) as run:
    for e in range(%d):
        run.log_metrics({"train_loss": 1.0 / (e + 1), "val_acc": e / 100}, e)
    run.log_artifact(sys.argv[2])
""" % EPOCHS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def test_parallel_jobs_log_to_a_tracking_server_nothing_lost(server, tmp_path):
    from mlflow.tracking import MlflowClient
    art = tmp_path / "metrics.json"
    art.write_text('{"test_acc": 0.5}')
    env = {**os.environ, "MLFLOW_TRACKING_URI": server}
    procs = [subprocess.Popen([sys.executable, "-c", JOB, str(i), str(art)], cwd=ROOT, env=env,
                              stderr=subprocess.PIPE, text=True) for i in range(JOBS)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    client = MlflowClient(server)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert sorted(int(r.data.tags["seed"]) for r in runs) == list(range(JOBS))
    for r in runs:
        assert r.info.status == "FINISHED"
        hist = client.get_metric_history(r.info.run_id, "train_loss")
        assert sorted(m.step for m in hist) == list(range(EPOCHS))
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["metrics.json"]
    assert _lock_path(server) is None                     # a server serialises writes: no file lock
