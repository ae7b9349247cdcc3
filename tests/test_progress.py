"""Progress lines (one per epoch, exact format), the --log copy of stderr, and the invocation tag."""
from __future__ import annotations

import io
import subprocess
import sys

from pipeline.infra import progress
from pipeline.config.layout import ROOT
from pipeline.infra.provenance import invocation


def test_one_line_per_epoch_with_time_left(monkeypatch):
    clock = iter([100.0, 110.0, 130.0])
    monkeypatch.setattr(progress.time, "time", lambda: next(clock))
    out = io.StringIO()
    p = progress.Progress("retrain", "synthetic/resnet20 seed0 s0.9 fourier_kd", 4, stream=out)
    p(1, {"train_loss": 1.23456, "train_acc": 0.5, "val_acc": 0.25, "lr": 0.01, "radius": 4.0})
    p(2, {"train_loss": 1.0, "train_acc": 0.75, "val_acc": 0.5, "lr": 0.001, "radius": 22.627417})
    assert out.getvalue().splitlines() == [
        "[retrain synthetic/resnet20 seed0 s0.9 fourier_kd] epoch 1/4  loss 1.2346  acc 0.500  val 0.250  "
        "lr 0.01  radius 4.00  elapsed 0:00:10 left 0:00:30",
        "[retrain synthetic/resnet20 seed0 s0.9 fourier_kd] epoch 2/4  loss 1.0000  acc 0.750  val 0.500  "
        "lr 0.001  radius 22.63  elapsed 0:00:30 left 0:00:30"]


def test_a_resumed_job_extrapolates_from_the_epochs_it_ran(monkeypatch):
    clock = iter([0.0, 60.0])
    monkeypatch.setattr(progress.time, "time", lambda: next(clock))
    out = io.StringIO()
    progress.Progress("train_dense", "c", 10, stream=out)(6, {})     # resumed after epoch 5: 1 epoch in 60 s
    assert out.getvalue() == "[train_dense c] epoch 6/10  elapsed 0:01:00 left 0:04:00\n"


def test_log_option_copies_stderr_to_the_file(tmp_path):
    log = tmp_path / "sub" / "validate.log"
    r = subprocess.run([sys.executable, "-m", "pipeline", "validate", "--experiment", "nope", "--log", str(log)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    assert "config file" in r.stderr and log.read_text() == r.stderr


def test_invocation_names_the_tool_that_started_the_job(tmp_path):
    assert invocation() == ("manual", "")                             # pytest is neither tool
    tool = tmp_path / "snakemake"                                     # a parent process named snakemake
    tool.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'from pipeline.infra.provenance import invocation; "
                    "print(*invocation())' & wait\n")
    tool.chmod(0o755)
    r = subprocess.run([str(tool)], cwd=ROOT, capture_output=True, text=True, check=True)
    name, pid = r.stdout.split()
    assert name == "snakemake" and pid.split("-")[0].isdigit()


def test_a_deferred_log_opens_only_when_asked_with_what_was_held_back(tmp_path, monkeypatch):
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    log = tmp_path / "job.log"
    log.write_text("the running copy's lines\n")
    progress.log_to(str(log), defer=True)
    print("before the lock", file=sys.stderr)
    assert log.read_text() == "the running copy's lines\n"          # untouched until the lock is held
    progress.open_log()
    print("after the lock", file=sys.stderr)
    sys.stderr.flush()
    assert log.read_text() == "before the lock\nafter the lock\n"
    assert terminal.getvalue() == "before the lock\nafter the lock\n"
    progress.log_to(str(tmp_path / "refused.log"), defer=True)
    print("busy", file=sys.stderr)
    progress.drop_log()
    progress.open_log()                                             # nothing held any more: no file
    assert not (tmp_path / "refused.log").exists()
