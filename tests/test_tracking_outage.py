"""The tracking server is checked before compute, and an outage during a job is bounded: a real `mlflow
server` killed mid-job ends the job at an epoch boundary, within MLflow's bounded retries, with its
checkpoint kept and one line naming the URI and how to resume; restarted, the same command resumes in the
same MLflow run, every epoch logged exactly once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pipeline.config import layout
from pipeline.core import data as D
from pipeline.infra import io, tracking
from pipeline.stages import common as jobs
from pipeline.config.layout import ROOT

from .conftest import cli, write_experiment
from .mlflow_server import crash, free_port, mlflow_server
from .test_integrity import TINY, _main
from pipeline.config import loading

EPOCHS = 8


def test_a_server_that_does_not_answer_is_refused_before_compute(tmp_path, env, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"                  # nobody listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    experiment = write_experiment(tmp_path, name="t", datasets=TINY)
    code, err = _main(["prepare", "--experiment", experiment, "--dataset", "synthetic", "--out", tmp_path / "d.pt"])
    assert code == 2, err
    assert err.startswith(f"config error: MLFLOW_TRACKING_URI = {url!r}: the tracking server does not answer ("), err
    assert not (tmp_path / "d.pt").exists()


def test_the_default_bound_is_under_a_minute(monkeypatch):
    for k in tracking.SERVER_BOUNDS:
        monkeypatch.delenv(k, raising=False)
    assert tracking.outage_bound() == 4 * 10 + (0 + 2 + 4) + 3 * 0.5     # 4 attempts, sleeps 0, 2, 4, jitter


def test_a_server_killed_mid_job_stops_it_with_its_checkpoint_and_the_rerun_resumes(tmp_path, env):
    from mlflow.tracking import MlflowClient
    experiment = write_experiment(tmp_path, name="t", datasets=TINY, train={"epochs": EPOCHS},
                                  lth={"rewind_epoch": 0})
    data, out, log = tmp_path / "data.pt", tmp_path / "dense" / "model.pt", tmp_path / "dense.log"
    cfg = loading.load(experiment)
    D.prepare(cfg, "synthetic", data)
    ckpt = layout.checkpoint(cfg.name, "dense", layout.dense_key(cfg, "synthetic", "resnet20", 0,
                                                       io.read_json(f"{data}.json")["sha256"]))
    args = ["train_dense", "--experiment", experiment, "--dataset", "synthetic", "--arch", "resnet20", "--seed", 0,
            "--data", data, "--out", out, "--log", log]
    store = tmp_path / "server"
    with mlflow_server(store) as url:
        argv, job_env = cli(args, {**env, "MLFLOW_TRACKING_URI": url})
        job = subprocess.Popen([sys.executable, "-m", "pipeline", *argv], cwd=ROOT, env=job_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while f"epoch 2/{EPOCHS}" not in (log.read_text() if log.exists() else ""):
            assert job.poll() is None, job.communicate()
            time.sleep(0.05)
        job.send_signal(signal.SIGSTOP)                    # held mid-job while its server dies
        crash(url)
        stopped = time.time()
        job.send_signal(signal.SIGCONT)
        _, err = job.communicate(timeout=120)
        waited = time.time() - stopped
    assert job.returncode == 7, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"tracking server down: {url}: the tracking server did not answer (MLflow gave up "
                           f"after its retries, at most 48 s: API request to "), err
    assert last.endswith("the job stopped, its checkpoint kept: start the server again and rerun the same "
                         "command to resume (same MLflow run)")
    assert "Traceback" not in err and waited < tracking.outage_bound() + 30
    printed = [int(x.split("epoch ")[1].split("/")[0]) for x in err.splitlines() if f"/{EPOCHS}  loss" in x]
    state = torch.load(ckpt, weights_only=True)
    assert 2 <= state["epoch"] == printed[-1] < EPOCHS and not out.exists()   # stopped after a checkpointed epoch
    with mlflow_server(store) as url:                      # the server back (same store, another port)
        argv, job_env = cli(args, {**env, "MLFLOW_TRACKING_URI": url})
        again = subprocess.run([sys.executable, "-m", "pipeline", *argv], cwd=ROOT, env=job_env,
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        client = MlflowClient(url)
        run = client.get_run(state["run_id"])
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
    assert run.info.status == "FINISHED" and steps == list(range(1, EPOCHS + 1))   # each epoch once, one run
    assert out.exists() and not ckpt.exists()
