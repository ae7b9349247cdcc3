"""The end-to-end tests' clone of the shared smoke run (tests/conftest.py: Smoke.clone) is independent of the
original: its MLflow store's artifact locations and runs' `project` tag point into the copy, so a job rerun
in the clone supersedes the copied run of that job (as the same rerun would in the original) and writes
nothing into the original's folder; the original's runs are untouched."""
from __future__ import annotations

import pytest

from pipeline.infra import tracking
from pipeline.config.loading import load

from .conftest import Smoke

CELL = {"dataset": "synthetic", "arch": "resnet20", "seed": 0, "sparsity": 0.9, "method": "kd"}


def _runs(repo):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{repo / 'mlruns.db'}")
    exp = client.get_experiment_by_name("smoke")
    return exp, {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=100)}


def _job(repo, monkeypatch) -> str:
    """One retrain run of CELL in `repo`'s store, as a job of the project at `repo` records it."""
    monkeypatch.setattr(tracking, "ROOT", repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlruns.db'}")
    with tracking.Run(load("smoke"), "retrain", CELL, {"x": 1}) as run:
        run.log_metrics({"test_acc": 0.5}, 1)
    return run.run_id


def test_a_rerun_in_the_clone_supersedes_the_copied_run_only_there(tmp_path, monkeypatch):
    original = tmp_path / "original"
    original.mkdir()
    first = _job(original, monkeypatch)
    clone = Smoke(original, {}, "").clone(tmp_path / "clone").repo
    exp, runs = _runs(clone)
    assert exp.artifact_location == (clone / "mlartifacts" / "smoke").as_uri()
    assert runs[first].info.artifact_uri.startswith(clone.as_uri() + "/")
    assert runs[first].data.tags["project"] == str(clone)
    second = _job(clone, monkeypatch)
    _, runs = _runs(clone)
    assert runs[first].data.tags["superseded"] == "true" and runs[first].data.tags["superseded_by"] == second
    assert runs[second].data.tags["superseded"] == "false"
    exp, runs = _runs(original)                   # the original: its one run, current, its own locations
    assert list(runs) == [first] and runs[first].data.tags["superseded"] == "false"
    assert runs[first].data.tags["project"] == str(original)
    assert exp.artifact_location == (original / "mlartifacts" / "smoke").as_uri()
    assert not (original / "mlartifacts" / "smoke" / exp.experiment_id / second).exists()
    assert not list((original / "mlartifacts").rglob(second))


@pytest.fixture(autouse=True)
def _restore_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
