"""The supported torch range, the lock the results were made with, and the versions each job records."""
from __future__ import annotations

import re
import subprocess
import tomllib

import torch
from packaging.requirements import Requirement

from pipeline.stages import common as jobs
from pipeline.config.layout import ROOT


def _lock() -> dict:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_pyproject_states_a_range_and_the_lock_pins_a_version_inside_it():
    deps = {Requirement(d).name: Requirement(d) for d in
            tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert str(deps["torch"].specifier) == "<3,>=2.4" and str(deps["torchvision"].specifier) == "<1,>=0.19"
    lock = _lock()
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.1"
    for name, req in deps.items():             # every direct dependency is locked, within its range
        assert req.specifier.contains(lock[re.sub(r"[-_.]+", "-", name).lower()]), name


def test_make_install_takes_the_lock_unless_told_not_to():
    def dry(*args):
        return subprocess.run(["make", "-n", "-B", "install", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
    assert "pip install -q -e '.[test]' -c constraints.txt" in dry()
    plain = dry("LOCK=", "VENV_ARGS=--system-site-packages")
    assert "-c " not in plain and "pip install -q -e '.[test]'" in plain
    assert "python3 -m venv --system-site-packages .venv" in plain


def test_each_job_records_its_torch_and_cuda_versions():
    assert jobs.hardware().endswith(f"; torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}")
