"""What a job's tracking run is, online (MLflow) or offline (a record file): its name, its tags and its params.
One home, so that a run synced from a record is the run the job would have logged online."""
from __future__ import annotations

import os
import socket
import subprocess

from pipeline.config.catalog import color
from pipeline.config.layout import ROOT, digest
from pipeline.infra.provenance import invocation

JOB_TAGS = ("dataset", "arch", "seed", "sparsity", "method")    # with `stage`: which job a run belongs to


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def run_name(tags: dict) -> str:
    """Method and cell first (what a reader compares), then stage and data: `kd s0.9 seed0 | retrain c10/r20`."""
    cell = " ".join(x for x in (tags.get("method"), f"s{tags['sparsity']}" if tags.get("sparsity") not in
                                (None, "0.0") else None, f"seed{tags['seed']}" if "seed" in tags else None) if x)
    where = "/".join(tags[k] for k in ("dataset", "arch") if k in tags)
    return " | ".join(x for x in (cell, " ".join(x for x in (tags["stage"], where) if x)) if x)


def job(stage: str, tags: dict) -> dict:
    """The tags that say which job a run belongs to (its older runs are superseded by it)."""
    return {"stage": stage, **{k: str(v) for k, v in tags.items() if k in JOB_TAGS}}


def alive(project=ROOT) -> dict:
    """Where the run's process lives (`project`: the checkout it runs in): a RUNNING run whose process is gone
    was left by a killed job, and a clone sharing the store supersedes only its own runs."""
    return {"project": str(project), "host": socket.gethostname(), "pid": str(os.getpid())}


def new_tags(experiment: str, stage: str, tags: dict, params: dict, project=ROOT) -> dict:
    """Every tag a new run starts with: its job, the commit, the digest of its job and parameters, what
    invoked it, superseded = "false", its process, and its method's colour in the UI."""
    tool, tool_id = invocation()
    out = {"stage": stage, "git_commit": git_commit(), "experiment": experiment, **{k: str(v) for k, v in tags.items()}}
    out.update(params_digest=digest({"stage": stage, **out, "params": params}, drop=("git_commit",)),
               invocation=tool, invocation_id=tool_id, superseded="false", **alive(project))
    if "method" in out:
        out["mlflow.runColor"] = color(out["method"])      # the figures' colour in the UI too
    return out


def param_items(params: dict) -> dict:
    """The params as MLflow stores them: flattened dotted keys, string values (at most 6,000 characters)."""
    return {k: str(v)[:6000] for k, v in sorted(flatten(params).items())}
