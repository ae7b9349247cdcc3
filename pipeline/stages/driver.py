"""The DAG without Snakemake: the same jobs, in the Snakefile's order, on a machine with torch and the
pipeline's core only (a lent GPU machine without MLflow, Snakemake or DVC).

`python -m pipeline export_jobs --experiment NAME` (on a full installation: it asks Snakemake) writes
runs/<NAME>/jobs.json: every job's command, inputs and outputs, in an order where each job follows those
that make its inputs. `python -m pipeline drive --experiment NAME` runs them there: a job whose outputs all
exist and are newer than its inputs is done and skipped, so a stopped drive resumes (a training job also
resumes from its checkpoint); the first failure stops it with that job's exit status. Without MLflow the jobs
track offline (tracking.mode auto), and `python -m pipeline sync` replays their runs later. Back on a full
installation, `snakemake --touch` takes the outputs as done, computing nothing (as `make dvc-adopt` does).
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config import layout
from pipeline.config.layout import ROOT
from pipeline.errors import ConfigError, CorruptFile

JOBS_FILE = "jobs.json"
UNCAPPED = 1024          # cores to plan with: no rule's threads are capped at export


def jobs_path(name: str) -> Path:
    return layout.run_dir(name) / JOBS_FILE


def ordered(jobs: list[dict]) -> list[dict]:
    """Jobs so that each follows the jobs that make its inputs (stable: Snakemake's listing order otherwise)."""
    maker = {o: i for i, j in enumerate(jobs) for o in j["outs"]}
    done, out = set(), []

    def visit(i, path=()):
        if i in done:
            return
        if i in path:
            raise ConfigError(f"jobs.json: a cycle through {jobs[i]['rule']}")
        for d in jobs[i]["deps"]:
            if d in maker:
                visit(maker[d], path + (i,))
        done.add(i)
        out.append(jobs[i])
    for i in range(len(jobs)):
        visit(i)
    return out


def export(experiment: str | None, name: str) -> Path:
    """runs/<name>/jobs.json from Snakemake's plan of the experiment (every job, forced)."""
    from pipeline.infra import io
    from pipeline.planning.dag import snakemake_jobs
    # every rule's own threads (resources.threads); `drive` caps them at the cores of the machine it runs on
    jobs = [{k: j[k] for k in ("rule", "cmd", "deps", "outs")} for j in snakemake_jobs(experiment, cores=UNCAPPED)]
    path = jobs_path(name)
    io.write_json(path, {"experiment": name, "jobs": ordered(jobs)})
    return path


def _fresh(job: dict, root: Path) -> bool:
    outs = [root / o for o in job["outs"]]
    if not all(o.exists() for o in outs):
        return False
    newest_in = max(((root / d).stat().st_mtime for d in job["deps"] if (root / d).exists()), default=0.0)
    return min(o.stat().st_mtime for o in outs) >= newest_in


STOPPED = 75       # EX_TEMPFAIL: the deadline came first; what finished is kept, `drive` again resumes


def _command(job: dict, threads: int) -> str:
    # `python` as the Snakefile's commands name it: this interpreter (a machine may have none on PATH)
    cmd = re.sub(r"^python ", f"{sys.executable} ", job["cmd"])
    # a rule's threads, capped at this job's share of the machine's cores (as `snakemake --cores N` caps them)
    return re.sub(r"--threads (\d+)", lambda m: f"--threads {min(int(m[1]), threads)}", cmd)


def _start(job: dict, threads: int) -> subprocess.Popen:
    for o in job["outs"]:
        (ROOT / o).parent.mkdir(parents=True, exist_ok=True)
    if m := re.search(r"--log (\S+)", job["cmd"]):
        (ROOT / m.group(1)).parent.mkdir(parents=True, exist_ok=True)
    # its own process group: at the deadline the job and its children are stopped together
    return subprocess.Popen(_command(job, threads), shell=True, cwd=ROOT, env=os.environ, start_new_session=True)


def _stop(p: subprocess.Popen) -> None:
    """SIGTERM to the job's group; a training job loses at most the epoch since its last checkpoint."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def drive(name: str, dry_run: bool = False, echo=print, jobs: int = 1, until: float | None = None) -> int:
    """Run what is not done yet, up to `jobs` at once (each when the jobs making its inputs are done, in the
    listed order). `until`: seconds from now after which no job starts and the running ones are stopped (they
    resume from their checkpoints next time). 0 when every job is done; STOPPED at the deadline; else the exit
    status of the first job that failed (the jobs already running are let finish)."""
    from pipeline.infra import io
    path = jobs_path(name)
    if not path.is_file():
        raise CorruptFile(f"{path}: missing; write it on a full installation with `python -m pipeline export_jobs "
                          f"--experiment {name}` and bring it with runs/{name}/")
    spec = io.read_json(path, keys=("experiment", "jobs"))
    if spec["experiment"] != name:
        raise CorruptFile(f"{path}: made for experiment {spec['experiment']!r}, not {name!r}")
    if jobs < 1:
        raise ConfigError(f"--jobs = {jobs}: must be a positive integer")
    listed = spec["jobs"]
    maker = {o: i for i, j in enumerate(listed) for o in j["outs"]}
    todo = [i for i, j in enumerate(listed) if not _fresh(j, ROOT)]
    echo(f"drive {name}: {len(listed) - len(todo)} of {len(listed)} jobs done, {len(todo)} to run")
    if dry_run:
        for i in todo:
            echo(f"[{i + 1}/{len(listed)}] {listed[i]['rule']}: {listed[i]['outs'][0]}")
        return 0
    deadline = None if until is None else time.monotonic() + until
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # every job is pending, not only `todo`, and _fresh is asked again at each job's turn on purpose: a job
    # rerun makes the jobs after it stale
    pending, running, failed = set(range(len(listed))), {}, 0

    def ready(i):
        return all(maker.get(d) not in pending and maker.get(d) not in running for d in listed[i]["deps"])

    try:
        while pending or running:
            late = deadline is not None and time.monotonic() >= deadline
            if late:                                  # the running jobs are stopped below
                echo(f"drive {name}: stopped at the deadline, {len(pending) + len(running)} job(s) left; "
                     "run drive again to resume")
                return STOPPED
            if not failed:
                for i in sorted(pending):
                    if len(running) >= jobs:
                        break
                    if ready(i):
                        pending.discard(i)
                        if _fresh(listed[i], ROOT):
                            continue
                        echo(f"[{i + 1}/{len(listed)}] {listed[i]['rule']}: {listed[i]['outs'][0]}")
                        running[i] = _start(listed[i], threads)
                if pending and not running:
                    raise CorruptFile(f"{path}: job {min(pending) + 1} waits on inputs no job before it makes")
            elif not running:
                break
            for i, p in list(running.items()):
                if p.poll() is not None:
                    del running[i]
                    if p.returncode != 0 and not failed:
                        failed = p.returncode
                        echo(f"drive {name}: {listed[i]['rule']} failed (exit status {failed}); run drive again "
                             "to resume")
            time.sleep(0.05 if running else 0)
    finally:                  # an interrupted drive (Ctrl-C: the jobs have their own process groups) stops them
        for p in running.values():
            if p.poll() is None:
                _stop(p)
    return failed
