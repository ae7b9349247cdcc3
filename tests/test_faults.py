"""The tests' stop points (pipeline/infra/faults.py): a job killed or paused at an exact (round, epoch, step),
counted here by hand on a tiny training run; the pause happens once; a malformed value is refused. Also the
suite's random order (tests/conftest.py: --random-order): reproducible, module and class tests kept together."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from pipeline.infra import faults
from pipeline.core import train as T
from pipeline.config.layout import ROOT

from . import conftest
from .conftest import wait_for


@pytest.fixture
def no_hooks(monkeypatch):
    for var in (faults.KILL, faults.PAUSE, faults.PAUSE_FILE):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.parametrize("value", ["1,2", "1,2,3,4", "a,b,c", "0,-1,0", " "])
def test_a_malformed_stop_point_is_refused_naming_the_variable(no_hooks, value):
    no_hooks.setenv(faults.KILL, value)
    with pytest.raises(ValueError, match=f"{faults.KILL} = .*'round,epoch,step'"):
        faults.at(0, 0)


def test_a_pause_needs_its_file(no_hooks):
    no_hooks.setenv(faults.PAUSE, "0,0,0")
    with pytest.raises(ValueError, match=faults.PAUSE_FILE):
        faults.at(0, 0)


def test_only_the_named_epoch_stops(no_hooks):
    assert faults.at(0, 0) is None
    no_hooks.setenv(faults.KILL, "")                         # empty: unset
    assert faults.at(0, 0) is None
    no_hooks.setenv(faults.KILL, "1,2,3")
    assert [faults.at(r, e) for r, e in ((0, 0), (1, 1), (2, 2), (0, 2))] == [None] * 4
    assert faults.at(1, 2) == (3, faults._sigkill)


def test_the_kill_is_a_sigkill(no_hooks, tmp_path):
    code = "from pipeline.infra import faults\nstep, act = faults.at(0, 1)\nact()\nprint('survived')"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", faults.KILL: "0,1,7"})
    assert p.returncode == -signal.SIGKILL and "survived" not in p.stdout, (p.returncode, p.stderr)


def test_a_pause_waits_for_go_and_happens_once(no_hooks, tmp_path):
    flag = tmp_path / "paused"
    no_hooks.setenv(faults.PAUSE, "2,0,1")
    no_hooks.setenv(faults.PAUSE_FILE, str(flag))
    step, act = faults.at(2, 0)
    assert step == 1
    job = threading.Thread(target=act, daemon=True)
    job.start()
    assert wait_for(lambda: flag.exists() and flag.read_text().endswith("\n") and flag.read_text(),
                    "the pause", 60).split()[0] == "paused"
    assert job.is_alive(), "did not wait"
    flag.write_text("go")
    job.join(60)
    assert not job.is_alive(), "still paused after go"
    flag.write_text("paused 1\n")                # the file is there: a resubmitted job runs through
    faults.at(2, 0)[1]()


# A tiny training run: 12 images, batch 4 (3 steps an epoch), two rounds of two epochs.
def _data():
    g = torch.Generator().manual_seed(0)
    blob = {f"{s}_x": torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=g)
            for s in ("train", "val", "test")}
    blob.update({f"{s}_y": torch.arange(12) % 3 for s in ("train", "val", "test")})
    return T.Data({**blob, "classes": ["a", "b", "c"]}, "cpu")


class Killed(Exception):
    pass


def test_the_training_loop_stops_just_before_the_named_step(no_hooks, tmp_path):
    """Killed at (round 1, epoch 1, step 2): 2 x 3 steps of round 0, 3 of round 1's epoch 0 and steps 0 and 1
    of its epoch 1 ran: 11 steps; the checkpoint on disk is the end of round 1's epoch 0."""
    steps = []

    def loss(student, x, y, epoch, norm):
        steps.append(epoch)
        logits = student(norm(x))
        return nn.functional.cross_entropy(logits, y), logits, None

    def killed():
        raise Killed
    no_hooks.setenv(faults.KILL, "1,1,2")
    no_hooks.setattr(faults, "_sigkill", killed)
    recipe = T.Recipe([T.Round(2, 0.01, [], 0.1), T.Round(2, 0.01, [], 0.1)], loss=loss, batch_size=4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3))
    rt = T.Runtime(device=torch.device("cpu"), amp=False, channels_last=False, compile=False)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Killed):
        T.run(recipe, model, _data(), rt, 0, ckpt, "k")
    assert steps == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1]
    state = torch.load(ckpt, weights_only=True)
    assert (state["round"], state["epoch"]) == (1, 1)


def test_random_order_is_reproducible_and_keeps_modules_and_classes_together():
    names = [f"tests/{m}.py::{c}test_{i}" for m in "abcd" for c in ("", "K::") for i in range(4)]
    config = SimpleNamespace(getoption=lambda name: "7")

    def order(seed):
        config.getoption = lambda name: seed
        items = [SimpleNamespace(nodeid=n) for n in names]
        conftest.pytest_collection_modifyitems(None, config, items)
        return [i.nodeid for i in items]
    first = order("7")
    assert first == order("7") and first != order("8") and sorted(first) == sorted(names)
    assert order(None) == names                             # without the option: collection order
    runs = [n.rsplit("::", 1)[0] for n in first]
    # each module, and each class within it, is one contiguous run
    assert len([k for i, k in enumerate(runs) if i == 0 or runs[i - 1] != k]) == len(set(runs)) == 8
    modules = [n.split("::")[0] for n in first]
    assert len([k for i, k in enumerate(modules) if i == 0 or modules[i - 1] != k]) == 4
