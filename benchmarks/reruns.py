"""No-op reruns: Snakemake and DVC on a finished smoke run, against their time budgets."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config.layout import ROOT

from .common import Row, Sizes, log

# ------------------------------------------------------------------------------------------ DAG reruns


def _venv_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(ROOT / ".venv" / "bin"),
                                   env.get("PATH", "")])
    return env


def _timed_cmd(cmd: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=_venv_env(), capture_output=True, text=True, timeout=timeout)
    return time.perf_counter() - t0, p


def dag_rows(sz: Sizes) -> list[Row]:
    smoke_done = (ROOT / "runs" / "smoke").is_dir() and (ROOT / "results" / "smoke" / "summary.csv").is_file()
    todo = "skipped: run make smoke first"
    rows = []
    sm = ["snakemake", "--cores", "all", "--configfile", "configs/smoke.yaml"]
    name = "no-op rerun: snakemake"
    if not sz.dag:
        rows.append(Row(name, None, "< 1 (5 s)", None, "skipped: --quick"))
    elif not smoke_done:
        rows.append(Row(name, None, "< 1 (5 s)", None, todo))
    else:
        log(name)
        try:
            t_dry, p = _timed_cmd(sm + ["-n"], 300)
            out = p.stdout + p.stderr
            if p.returncode != 0 or "Nothing to be done" not in out:
                jobs = next((ln.split()[-1] for ln in out.splitlines() if ln.split()[:1] == ["total"]), "?")
                why = f"{jobs} jobs to run" if p.returncode == 0 else f"exit status {p.returncode}"
                rows.append(Row(name, None, "< 1 (5 s)", None, f"skipped: run make smoke first (the smoke DAG "
                                f"is not up to date: snakemake -n: {why})"))
            else:
                ts = []
                for _ in range(3):
                    t, p = _timed_cmd(sm, 300)
                    if p.returncode != 0:
                        raise RuntimeError(f"exit status {p.returncode}: {(p.stderr or p.stdout)[-300:]}")
                    ts.append(t)
                t = statistics.median(ts)
                rows.append(Row(name, t / 5.0, "< 1 (5 s)", t < 5.0,
                                f"{t:.2f} s (median of 3; dry run {t_dry:.2f} s); ratio = time / 5 s"))
        except Exception as e:  # noqa: BLE001
            rows.append(Row(name, None, "< 1 (5 s)", None, f"failed: {type(e).__name__}: {e}"))

    name = "no-op rerun: dvc repro"
    dvc_ready = (ROOT / ".dvc").is_dir() and (ROOT / "dvc.lock").is_file()
    if not sz.dag:
        rows.append(Row(name, None, "< 1 (20 s)", None, "skipped: --quick"))
    elif not (smoke_done and dvc_ready):
        rows.append(Row(name, None, "< 1 (20 s)", None, todo + " and make dvc-smoke"))
    else:
        log(name)
        try:
            t_st, p = _timed_cmd(["dvc", "status"], 600)
            if p.returncode != 0 or "up to date" not in (p.stdout + p.stderr):
                rows.append(Row(name, None, "< 1 (20 s)", None, "skipped: dvc status shows changed stages; "
                                "run make smoke first and make dvc-smoke"))
            else:
                t, p = _timed_cmd(["dvc", "repro"], 600)
                if p.returncode != 0:
                    raise RuntimeError(f"exit status {p.returncode}: {(p.stderr or p.stdout)[-300:]}")
                rows.append(Row(name, t / 20.0, "< 1 (20 s)", t < 20.0,
                                f"{t:.2f} s (dvc status {t_st:.2f} s); ratio = time / 20 s"))
        except Exception as e:  # noqa: BLE001
            rows.append(Row(name, None, "< 1 (20 s)", None, f"failed: {type(e).__name__}: {e}"))
    return rows


