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

import os
import re
import subprocess
import sys
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


def drive(name: str, dry_run: bool = False, echo=print) -> int:
    """Run what is not done yet; 0 when every job is done, else the exit status of the job that failed."""
    from pipeline.infra import io
    path = jobs_path(name)
    if not path.is_file():
        raise CorruptFile(f"{path}: missing; write it on a full installation with `python -m pipeline export_jobs "
                          f"--experiment {name}` and bring it with runs/{name}/")
    spec = io.read_json(path, keys=("experiment", "jobs"))
    if spec["experiment"] != name:
        raise CorruptFile(f"{path}: made for experiment {spec['experiment']!r}, not {name!r}")
    jobs = spec["jobs"]
    todo = [j for j in jobs if not _fresh(j, ROOT)]
    echo(f"drive {name}: {len(jobs) - len(todo)} of {len(jobs)} jobs done, {len(todo)} to run")
    for k, job in enumerate(jobs, 1):
        if _fresh(job, ROOT):
            continue
        echo(f"[{k}/{len(jobs)}] {job['rule']}: {job['outs'][0]}")
        if dry_run:
            continue
        for o in job["outs"]:
            (ROOT / o).parent.mkdir(parents=True, exist_ok=True)
        if m := re.search(r"--log (\S+)", job["cmd"]):
            (ROOT / m.group(1)).parent.mkdir(parents=True, exist_ok=True)
        # `python` as the Snakefile's commands name it: this interpreter (a machine may have none on PATH)
        cmd = re.sub(r"^python ", f"{sys.executable} ", job["cmd"])
        # a rule's threads, capped at this machine's cores (as `snakemake --cores all` caps them)
        cmd = re.sub(r"--threads (\d+)", lambda m: f"--threads {min(int(m[1]), os.cpu_count() or 1)}", cmd)
        code = subprocess.run(cmd, shell=True, cwd=ROOT, env=os.environ).returncode
        if code != 0:
            echo(f"drive {name}: {job['rule']} failed (exit status {code}); run drive again to resume")
            return code
    return 0
