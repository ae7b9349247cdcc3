"""Shared test helpers: tiny experiments written to a temp folder, stages run as subprocesses (as the DAG
tools run them), MLflow and checkpoints redirected into the temp folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import ROOT, merge, read_yaml

SMOKE = ROOT / "configs" / "smoke.yaml"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors on a 2-core machine: torch's thread pool only contends (up to 10x slower); restored after.
    Subprocess stages set their own threads from the experiment."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_experiment(folder: Path, name: str = "t", **overrides) -> Path:
    """An experiment file `folder/<name>.yaml`: the smoke experiment with `overrides` merged in (dicts by key)."""
    raw = merge(read_yaml(SMOKE), {"name": name, **overrides})
    path = Path(folder) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict:
    """Environment for subprocess stages (and this process): MLflow store and checkpoints under tmp_path."""
    values = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}",
              "PIPELINE_RUNS": str(tmp_path / "runs"), "PYTHONHASHSEED": "0"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return {**os.environ, **values}


def run_stage(*args, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m pipeline <args>` in a subprocess, output captured."""
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
