"""Stop a training job at an exact point, for the tests: a kill or a pause at a given (round, epoch, step),
so that the resume, SLURM and kill tests need no timing window (a loaded machine only makes them slower).

Two environment variables, read when the job starts; each is "round,epoch,step", counted from 0, and acts
just before that step runs (after the epoch's learning rate, mask update and draws, before its batch):

- PIPELINE_TEST_KILL_AT: the job sends itself SIGKILL there, as `kill -9` would (no handler, no cleanup).
  (r, e, s) with e >= 1 lands after epoch e-1's checkpoint, mid-epoch when s >= 1.
- PIPELINE_TEST_PAUSE_AT (with PIPELINE_TEST_PAUSE_FILE): the job writes its pid to that file and waits
  there until the file says "go" (or the job is killed, e.g. by SLURM's scancel). Once only: if the file is
  there already, the job goes on without pausing, so that a job resubmitted after the kill runs through.

Neither is a parameter of any job (nothing else reads them, no output depends on them); unset, they cost two
environment look-ups per epoch.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable

KILL, PAUSE, PAUSE_FILE = "PIPELINE_TEST_KILL_AT", "PIPELINE_TEST_PAUSE_AT", "PIPELINE_TEST_PAUSE_FILE"


def _point(var: str) -> tuple[int, int, int] | None:
    value = os.environ.get(var)
    if not value:
        return None
    try:
        point = tuple(int(x) for x in value.split(","))
    except ValueError:
        point = ()
    if len(point) != 3 or min(point) < 0:
        raise ValueError(f"{var} = {value!r}: must be 'round,epoch,step', three integers >= 0")
    if var == PAUSE and not os.environ.get(PAUSE_FILE):
        raise ValueError(f"{PAUSE} is set but {PAUSE_FILE} is not: the file the paused job writes its pid to")
    return point


def at(round_: int, epoch: int) -> tuple[int, Callable[[], None]] | None:
    """(step, action) if a variable names this epoch: the training loop calls action() just before that step."""
    kill, pause = _point(KILL), _point(PAUSE)
    if kill is not None and kill[:2] == (round_, epoch):
        return kill[2], _sigkill
    if pause is not None and pause[:2] == (round_, epoch):
        return pause[2], lambda: _pause(Path(os.environ[PAUSE_FILE]))
    return None


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _pause(path: Path) -> None:
    try:
        with open(path, "x") as f:        # exclusive: a second job (or a resubmission) does not pause
            f.write(f"paused {os.getpid()}\n")
    except FileExistsError:
        return
    while path.read_text().strip() != "go":
        time.sleep(0.05)                  # the job waits on a condition set by the test
