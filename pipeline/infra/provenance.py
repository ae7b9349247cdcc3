"""Which invocation started this job: `snakemake` or `dvc` (with an id shared by every job of that one run of
the tool), or `manual` for a stage called by hand. MLflow tags carry it, so runs from different invocations
of the same job can be told apart.

Neither tool hands its jobs an invocation id, so the id is the tool's own process (pid and start time, which
together name one process on one machine) found by walking up the process tree.
"""
from __future__ import annotations

import os
from pathlib import Path

TOOLS = ("snakemake", "dvc")


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat fields after the command name (which may hold spaces): [state, ppid, ...]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def invocation(pid: int | None = None) -> tuple[str, str]:
    """(tool, id) of the nearest ancestor process that is snakemake or dvc; ("manual", "") if none."""
    pid = os.getppid() if pid is None else pid
    while pid > 1:
        argv = _argv(pid)
        stat = _stat(pid)
        names = {Path(a).name for a in argv[:2]}
        for tool in TOOLS:
            if tool in names:
                start = stat[19] if len(stat) > 19 else "0"     # field 22 of /proc/<pid>/stat: start time
                return tool, f"{pid}-{start}"
        if len(stat) < 2:
            break
        pid = int(stat[1])
    return "manual", ""
