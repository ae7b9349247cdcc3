"""Every command of the README and of docs/running.md works as written: this test runs it (in a copy of the
project), or names the test that does, or says why it cannot run here. A command added to either without an
entry here fails the test. Also: the manual's methods table is the catalogue's."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from pipeline.config.layout import ROOT

from .conftest import copy_env, make, project_copy

E2E = "tests/test_e2e.py (the smoke DAG in a copy of the project)"
# command -> ("run", how to run it here, what its output must contain) | ("test", where) | ("why", reason)
CHECKS = {
    "make smoke": ("test", E2E),
    "make ui": ("test", "tests/test_browser.py serves the same `mlflow ui` on 127.0.0.1 and drives Chromium"),
    "make test-fast": ("run", "make -n test-fast", "pytest -q tests/test_config.py"),
    "make test": ("why", "the whole suite; .ci/run runs it in CI (running it from a test would recurse)"),
    "make reproduce": ("run", "make -n reproduce", "snakemake --cores all\n"),
    "snakemake --cores all --configfile configs/smoke.yaml": ("test", E2E + ", via make smoke"),
    "snakemake --cores 4 runs/paper/retrain/cifar10/resnet20/seed0/s0.9/fourier_kd/model.pt":
        ("run", "snakemake -n --cores 4 runs/paper/retrain/cifar10/resnet20/seed0/s0.9/fourier_kd/model.pt",
         "retrain "),          # planned, not run: it would download CIFAR-10 and train for hours
    "snakemake -n --cores all": ("run", "snakemake -n --cores all", "spectral_pruned"),
    "snakemake --cores all": ("run", "snakemake -n --cores all", "spectral_pruned"),   # planned: it would train for days
    "python -m pipeline retrain --help": ("run", "python -m pipeline retrain --help", "--method"),
    "python -m pipeline plan": ("run", "python -m pipeline plan", "total:"),
    "make bench": ("test", "tests/test_benchmarks.py (benchmarks.run in its quick mode)"),
    "make dvc-adopt": ("test", E2E),
    "make dvc-smoke": ("test", E2E),
    "dvc metrics show": ("test", E2E),
    "python -m pipeline export_dvc --experiment paper > dvc.yaml":
        ("run", "python -m pipeline export_dvc --experiment paper > dvc.yaml && grep -c cifar100 dvc.yaml",
         ""),
    "snakemake --report report.html --configfile configs/smoke.yaml": ("test", E2E),
    **{cmd: ("test", "tests/test_offline.py (an 8-job DAG offline, driven without the stack, synced)") for cmd in (
        "FOURIER_MBP_TRACKING=offline snakemake --cores all --configfile configs/smoke.yaml",
        "python -m pipeline sync --experiment smoke", "python -m pipeline export_jobs --experiment smoke",
        "python -m pipeline drive --experiment smoke")},
    **{cmd: ("test", "tests/test_gpu_turn.py (the turn rehearsed on the CPU: pack, run twice, land)") for cmd in (
        "python -m benchmarks.gpu_turn pack", "python -m benchmarks.gpu_turn run --until 480",
        "python -m benchmarks.gpu_turn land --parts /path/to/returned/files")},
    "make dag": ("run", "make dag && grep -c '<svg' docs/dag.svg", "1"),
    **{cmd: ("test", "tests/test_share.py (three clones and a folder remote; the same commands)") for cmd in (
        "dvc remote add -d --local shared /shared/fourier-mbp-dvc", "make push EXPERIMENT=smoke",
        'git add dvc.lock && git commit -m "share the smoke run"', "make pull EXPERIMENT=smoke",
        "make pull-teachers EXPERIMENT=smoke")},
}


RUNNING = ("README.md", "docs/running.md")     # the documents whose ```bash blocks are commands to run as written


def readme_commands() -> list[str]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", "\n".join((ROOT / f).read_text() for f in RUNNING), re.S):
        for line in block.splitlines():
            cmd = re.sub(r"\s+#\s.*$", "", line).strip()
            if cmd:
                out.append(cmd)
    return out


def test_every_running_command_is_checked():
    cmds = readme_commands()
    assert len(cmds) >= 10, cmds
    assert set(cmds) <= set(CHECKS), f"README commands with no check here: {sorted(set(cmds) - set(CHECKS))}"
    for cmd, check in CHECKS.items():
        if check[0] == "test":
            assert (ROOT / check[1].split()[0]).is_file(), check


RUNNABLE = [c for c, check in CHECKS.items() if check[0] == "run"]


@pytest.mark.parametrize("cmd", RUNNABLE)
def test_running_command_works(cmd, tmp_path):
    if cmd in ("make dag",) and not shutil.which("dot"):
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but graphviz's dot is missing: .ci/run must install graphviz")
        pytest.skip("graphviz's `dot` is not installed (apt-get install graphviz)")
    assert cmd in readme_commands(), f"{cmd!r} is no longer in the README: drop it from CHECKS"
    _, run, expect = CHECKS[cmd]
    repo = project_copy(tmp_path / "repo")
    if run.startswith("make "):
        target, rest = run[len("make "):].split(" ", 1) if " " in run[5:] else (run[5:], "")
        run = make(target, repo) + (" " + rest if rest else "")
    r = subprocess.run(run, shell=True, cwd=repo, env=copy_env(repo), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{run}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert expect in r.stdout + r.stderr, f"{run}: {expect!r} not in output\n{r.stdout[-2000:]}"


def test_the_methods_table_is_the_catalogue():
    """docs/method.md's table names every built-in method once, with its budget kind (catalogue: the one table)."""
    from pipeline.config.catalog import CATALOG
    text = (ROOT / "docs" / "method.md").read_text()
    table = text[text.index("| method | what | budget |"):]
    rows = re.findall(r"^\| `([a-z_]+)` \|.*\| ([^|]+) \|$", table[:table.index("\n\n")], re.M)
    assert [m for m, _ in rows] == [m for m, r in CATALOG.items() if r.source == "built-in"], rows
    words = {"retrain": "retrain budget", "dense": "dense epochs", "chain": "rounds x"}
    for m, budget in rows:
        assert budget.startswith(words[CATALOG[m].budget]), (m, budget, CATALOG[m].budget)
