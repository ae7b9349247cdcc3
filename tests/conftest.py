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


def cli(args, env: dict) -> tuple[list[str], dict]:
    """Command-line arguments and environment for `python -m pipeline`: an experiment file written by
    `write_experiment` (a Path after --experiment) becomes its name, looked up in its folder (PIPELINE_CONFIGS),
    as the jobs look up configs/<name>.yaml: the command line takes names only."""
    args = list(args)
    for i in range(len(args) - 1):
        if args[i] == "--experiment" and isinstance(args[i + 1], Path):
            env = {**env, "PIPELINE_CONFIGS": str(args[i + 1].parent)}
            args[i + 1] = args[i + 1].stem
    return [str(a) for a in args], env


def run_stage(*args, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m pipeline <args>` in a subprocess, output captured."""
    args, env = cli(args, env)
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def project_copy(dest: Path) -> Path:
    """A copy of the project's tracked sources at `dest` (no runs/, no MLflow store, no git): commands that write
    files (make, snakemake, dvc, export_dvc) run there, never in the checkout. Returns `dest`."""
    import shutil
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("Snakefile", "params.yaml", "dvc.yaml", "dvc.params.yaml", "Makefile", "pyproject.toml", "constraints.txt",
              ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / f, dest / f)
    for d in ("pipeline", "configs", "docs", "benchmarks", ".dvc"):
        shutil.copytree(ROOT / d, dest / d, ignore=shutil.ignore_patterns("__pycache__", "cache", "tmp", "config.local"))
    return dest


def make(target: str, repo: Path) -> str:
    """`make TARGET` as the README writes it, in `repo`, using this interpreter's environment (a stamp newer
    than pyproject.toml tells make that the install is done: tests never reinstall the shared venv)."""
    stamp = repo / ".installed"
    stamp.touch()
    return f"make {target} VENV={Path(sys.executable).parent.parent} STAMP={stamp}"


def copy_env(repo: Path) -> dict:
    """Environment for commands in a project copy: the copy's package, not the checkout's; its own MLflow."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PIPELINE_RUNS")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", PYTHONPATH=str(repo))
    return env
