"""Shared test helpers: tiny experiments written to a temp folder, stages run as subprocesses (as the DAG
tools run them), MLflow and checkpoints redirected into the temp folder."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config.layout import ROOT
from pipeline.config.loading import merge, read_yaml

SMOKE = ROOT / "configs" / "smoke.yaml"


# ------------------------------------------------------------------------------------ random test order

def pytest_addoption(parser):
    parser.addoption("--random-order", metavar="SEED", default=None,
                     help="run the test files, and the tests in each, in an order shuffled by SEED (an integer, "
                          "or 'random': a new one, printed). A module's or class's tests stay together, so "
                          "their fixtures are set up once. CI runs the suite once this way (.ci/run)")


def _order_seed(config) -> int | None:
    value = config.getoption("random_order")
    if value in (None, ""):
        return None
    if value == "random":
        if not hasattr(config, "_random_order_seed"):
            config._random_order_seed = int.from_bytes(os.urandom(4), "big") % 10**6
        return config._random_order_seed
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"--random-order={value!r}: an integer seed or 'random'") from None


def pytest_collection_modifyitems(session, config, items):
    seed = _order_seed(config)
    if seed is None:
        return
    rng = random.Random(seed)
    groups: dict[str, dict[str, list]] = {}          # module -> parent (module or class) -> its tests
    for item in items:
        parent = item.nodeid.rsplit("::", 1)[0]
        groups.setdefault(item.nodeid.split("::", 1)[0], {}).setdefault(parent, []).append(item)
    modules = list(groups.values())
    rng.shuffle(modules)
    items[:] = []
    for parents in modules:
        tests = list(parents.values())
        rng.shuffle(tests)
        for group in tests:
            rng.shuffle(group)
            items.extend(group)


def pytest_report_header(config):
    seed = _order_seed(config)
    return None if seed is None else f"random order: --random-order={seed} repeats it"


def pytest_terminal_summary(terminalreporter, config):
    seed = _order_seed(config)
    if seed is not None:                               # also under -q, which hides the header
        terminalreporter.write_line(f"tests ran in random order: --random-order={seed} repeats it")


# ---------------------------------------------------------------------------------------------- helpers


def unavailable(reason: str):
    """A prerequisite of a test is missing: skip with the reason locally; fail under CI (CI=true, .ci/run),
    where every test must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but the test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def cifar10_jpeg_dir() -> Path:
    """The CIFAR-10 JPEG copy: $CIFAR10_JPEG_DIR, else ../shared/data/cifar10-jpeg beside the repository;
    unavailable() when it is not there."""
    folder = Path(os.environ.get("CIFAR10_JPEG_DIR") or ROOT.parent / "shared" / "data" / "cifar10-jpeg")
    if not (folder / "train").is_dir() or not (folder / "test").is_dir():
        unavailable(f"the CIFAR-10 JPEG copy is not at {folder} (set CIFAR10_JPEG_DIR to the folder holding "
                    f"train/<class>/ and test/<class>/)")
    return folder


def wait_for(condition, what: str, timeout: float = 600, alive=None, interval: float = 0.05):
    """Poll condition() until it returns something true, and return that; fail naming `what` after
    `timeout` seconds, or at once when alive() (e.g. the process that should bring it about) says False.
    A condition, not a time: a slow machine only waits longer."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert alive is None or alive(), f"gave up waiting for {what}: the process it needs has ended"
        assert time.monotonic() < deadline, f"gave up waiting for {what} after {timeout:.0f} s"
        time.sleep(interval)


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


@pytest.fixture(autouse=True)
def builtin_catalogue():
    """Every test starts and ends with the built-in catalogue: loading an experiment with methods.extra in this
    process (configs/lamp.yaml) adds its methods to pipeline.config.catalog, which a later test must not see."""
    from pipeline.config import catalog
    before = dict(catalog.CATALOG)
    yield
    if catalog.CATALOG != before:
        catalog.CATALOG.clear()
        catalog.CATALOG.update(before)
        catalog._refresh()


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
    for d in ("pipeline", "configs", "docs", "benchmarks", "examples", ".dvc"):
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


def run_jobs(jobs, check: bool = True, timeout: float = 1800) -> list[int]:
    """Jobs (each with .args, the arguments of `python -m pipeline`, and .env) one after another in ONE new
    Python process, each through the CLI's main() in its own environment: the entry point of `python -m
    pipeline`, with the ~8 s of CPU of its imports paid once. Returns their exit statuses (check: all 0)."""
    script = ("import json, os, sys\nfrom pipeline.__main__ import main\ncodes = []\n"
              "for env, args in json.load(sys.stdin):\n"
              "    os.environ.clear()\n    os.environ.update(env)\n    codes.append(main(args))\n"
              "print(json.dumps(codes))\n")
    first = jobs[0].env if jobs else os.environ
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=first, capture_output=True, text=True,
                       timeout=timeout, input=json.dumps([[dict(j.env), [str(a) for a in j.args]] for j in jobs]))
    assert p.returncode == 0, f"exit {p.returncode}:\n{p.stderr[-4000:]}"
    codes = json.loads(p.stdout.strip().splitlines()[-1])
    if check:
        assert codes == [0] * len(jobs), f"exit statuses {codes}:\n{p.stderr[-4000:]}"
    return codes


def interrupt(p: subprocess.Popen) -> None:
    """Stop a command started with start_new_session=True, its whole process group: SIGINT (Snakemake stops
    its jobs, cancels its SLURM jobs), SIGKILL a minute later."""
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGINT)
        try:
            p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()


def shell(cmd: str, cwd: Path, env: dict, timeout: float = 1800) -> subprocess.CompletedProcess:
    """`cmd` through the shell in its own process group, output captured; past `timeout` the whole group is
    interrupted, not only the shell (a timed-out `make smoke` must not leave Snakemake and its jobs running)."""
    p = subprocess.Popen(cmd, shell=True, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        interrupt(p)
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


class Smoke:
    """A finished `make smoke` in a project copy: `repo`, the environment to run commands there (`env`) and
    what make printed (`out`)."""

    def __init__(self, repo: Path, env: dict, out: str):
        self.repo, self.env, self.out = repo, env, out

    def clone(self, dest: Path) -> "Smoke":
        """An independent copy at `dest`, for a test that edits or deletes files: the project, its runs/ and
        Snakemake's records with their times (Snakemake sees the same up-to-date DAG), and its MLflow store
        moved into the copy: artifact locations (new runs there write nothing into the original) and the
        runs' `project` tag (a job rerun in the copy supersedes the copied runs, as in the original)."""
        shutil.copytree(self.repo, dest, symlinks=True)
        old, new = self.repo.resolve(), dest.resolve()
        with sqlite3.connect(dest / "mlruns.db") as con:
            con.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
                        (old.as_uri(), new.as_uri()))
            con.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old.as_uri(), new.as_uri()))
            con.execute("UPDATE tags SET value = ? WHERE key = 'project' AND value = ?", (str(new), str(old)))
        con.close()
        return Smoke(dest, copy_env(dest), self.out)


@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> Smoke:
    """`make smoke` once per test session, in a project copy: shared by every test that only reads it
    (test_e2e, test_slurm's comparison); a test that changes files works on smoke.clone(its tmp_path)."""
    repo = project_copy(tmp_path_factory.mktemp("smoke") / "repo")
    env = copy_env(repo)
    r = shell(make("smoke", repo), repo, env, timeout=3600)
    assert r.returncode == 0, f"make smoke\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return Smoke(repo, env, r.stdout + r.stderr)
