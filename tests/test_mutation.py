"""The mutation check: the tests must catch the bugs that would invalidate the benchmark.

Each mutant of tests/mutants.yaml (a search/replace edit to one file of pipeline/, with its reason) is applied
to a temporary copy of the project and the fast tests it names run there (pytest -x, a subprocess per mutant,
MUTATION_WORKERS of them at once, 2 by default: the CI machine's cores). A mutant survives when its tests
pass; the check fails naming every survivor. First the same tests run on the unmutated copy: they must pass
there, or a "kill" would mean nothing. A mutant whose search text is not found exactly once fails at once as
stale (the code moved: update the mutant with it).

    .venv/bin/python -m pytest -q tests/test_mutation.py              # the whole check (make mutation)
    MUTANTS=kl-direction-swapped,report-sd-halved .venv/bin/python -m pytest -q tests/test_mutation.py -s
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = yaml.safe_load((ROOT / "tests" / "mutants.yaml").read_text())
KEYS = {"id", "why", "file", "search", "replace", "tests"}
COPIED = ("pipeline", "tests", "configs", "examples", "params.yaml", "pyproject.toml")
TIMEOUT = 300             # seconds for one mutant's tests (they take 5-40 s on 2 cores)


def apply(m: dict, root: Path = ROOT) -> str:
    """The mutated text of m's file, or AssertionError naming the stale mutant."""
    text = (root / m["file"]).read_text()
    n = text.count(m["search"])
    assert n == 1, (f"stale mutant {m['id']}: its search text occurs {n} times in {m['file']} (must be once); "
                    f"update tests/mutants.yaml with the code:\n{m['search']}")
    return text.replace(m["search"], m["replace"])


def test_mutants_are_well_formed_and_current():
    ids = [m.get("id") for m in MUTANTS]
    assert len(ids) == len(set(ids)), "mutant ids must be unique"
    for m in MUTANTS:
        assert set(m) == KEYS, (m.get("id"), set(m) ^ KEYS)
        assert m["file"].startswith("pipeline/") and m["search"] != m["replace"] and m["why"].strip(), m["id"]
        apply(m)
        assert m["tests"] and not any("test_mutation" in t for t in m["tests"]), m["id"]
        for t in m["tests"]:                          # every named test exists (a typo would select nothing)
            path, _, name = t.partition("::")
            assert re.search(rf"^def {re.escape(name.split('[')[0])}\(", (ROOT / path).read_text(), re.M), (m["id"], t)


def copy_project(dest: Path) -> Path:
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
        else:
            shutil.copy(src, dest / name)
    return dest


def run_tests(repo: Path, tests: list[str]) -> tuple[int, float, str]:
    """pytest -x on `tests` in `repo` (its own pipeline/ imported, its own MLflow store and checkpoints)."""
    env = {**os.environ, "PYTHONPATH": str(repo), "PIPELINE_RUNS": str(repo / "runs"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlruns.db'}", "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                            *tests], cwd=repo, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired:
        rc, out = -1, f"timed out after {TIMEOUT} s"
    return rc, time.perf_counter() - t0, out


def selected() -> list[dict]:
    only = {s for s in os.environ.get("MUTANTS", "").split(",") if s}
    unknown = only - {m["id"] for m in MUTANTS}
    assert not unknown, f"MUTANTS names unknown mutants: {sorted(unknown)}"
    return [m for m in MUTANTS if not only or m["id"] in only]


@pytest.mark.mutation
def test_every_mutant_is_killed(tmp_path):
    mutants = selected()
    for m in mutants:
        apply(m)                                          # stale mutants fail before anything runs

    def job(m):
        repo = copy_project(tmp_path / (m["id"] if m else "unmutated"))
        tests = m["tests"] if m else sorted({t for x in mutants for t in x["tests"]})
        if m:
            (repo / m["file"]).write_text(apply(m, repo))
        return m, run_tests(repo, tests)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(int(os.environ.get("MUTATION_WORKERS", "2"))) as pool:
        results = list(pool.map(job, [None] + mutants))
    wall = time.perf_counter() - t0
    (_, (rc, secs, out)), results = results[0], results[1:]
    assert rc == 0, f"the mutants' tests fail on the unmutated code (exit {rc}); fix them first:\n{out[-3000:]}"
    lines = [f"unmutated: passed in {secs:.0f} s"]
    survivors, broken = [], []
    for m, (rc, secs, out) in results:
        # exit 1: tests failed (killed); 0: survived; anything else (no test collected, usage error, timeout)
        # says the selection is broken, not that the bug was caught
        state = {0: "SURVIVED", 1: "killed"}.get(rc, f"broken (exit {rc})")
        failed = re.findall(r"^FAILED (\S+)", out, re.M)
        lines.append(f"{m['id']}: {state} in {secs:.0f} s" + (f" by {failed[0]}" if failed else ""))
        if rc == 0:
            survivors.append(f"{m['id']} ({m['why']})")
        elif rc != 1:
            broken.append(f"{m['id']}: exit {rc}\n{out[-1500:]}")
    lines.append(f"{len(results)} mutants, {sum(r[1][0] == 1 for r in results)} killed, {wall:.0f} s wall")
    print("\n".join(lines))
    assert not survivors and not broken, ("survivors: " + "; ".join(survivors) if survivors else "") + \
        "\n".join(broken) + "\n" + "\n".join(lines)
