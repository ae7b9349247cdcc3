"""The lr schedules (train.schedule, retrain.schedule: step | cosine | onecycle): hand-written lr lists, the same
values as torch's own schedulers, which methods use which section's schedule, and the optimizer getting the
epoch's lr in a real run."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.core import train as T

from .test_methods import CFG, RT, context, data, net, replace  # noqa: F401 - data: a fixture
from pipeline.config import loading
from pipeline import errors
from pipeline.methods import base
from pipeline.methods import registry

# cos(k pi / 7), k = 1..6, and cos(pi / 4), written out
COS7 = [0.9009688679024191, 0.6234898018587336, 0.2225209339563144, -0.2225209339563144, -0.6234898018587336,
        -0.9009688679024191]
COS4 = 0.7071067811865476


def lrs(r: T.Round) -> list[float]:
    return [T.lr_at(r, e) for e in range(r.epochs)]


def test_cosine_by_hand():
    # lr (1 + cos(pi e / 4)) / 2 at e = 0..3
    assert lrs(T.Round(4, 0.1, [0.5], 0.1, schedule="cosine")) == pytest.approx(
        [0.1, 0.05 * (1 + COS4), 0.05, 0.05 * (1 - COS4)], rel=1e-12)
    # lth's rounds: the dense cosine resumed at the rewind epoch 3 of 160
    r = T.Round(157, 0.1, [], 0.1, schedule="cosine", schedule_offset=3, schedule_epochs=160)
    assert T.lr_at(r, 0) == pytest.approx(0.05 * (1 + math.cos(3 * math.pi / 160)), rel=1e-12)
    assert T.lr_at(r, 77) == pytest.approx(0.05, rel=1e-12)           # dense epoch 80 of 160: half way


def test_onecycle_by_hand():
    # 10 epochs: warm-up from 0.1 / 25 = 0.004 to 0.1 at epoch 0.3 x 10 - 1 = 2 (half a cosine: 0.052 half way),
    # then down to 0.004 / 1e4 = 4e-7 over epochs 2..9 (seven steps), half a cosine
    low = 4e-7
    expected = [0.004, 0.052, 0.1] + [low + (0.1 - low) * (1 + c) / 2 for c in COS7] + [low]
    assert lrs(T.Round(10, 0.1, [0.5], 0.1, schedule="onecycle")) == pytest.approx(expected, rel=1e-9)
    # 5 epochs: the peak is at epoch 0.5; epoch 0 is 0.004, then the fall over 3.5 epochs from the peak
    five = lrs(T.Round(5, 0.1, [], 0.1, schedule="onecycle"))
    fall = [low + (0.1 - low) * (1 + math.cos(math.pi * (e - 0.5) / 3.5)) / 2 for e in range(1, 5)]
    assert five == pytest.approx([0.004] + fall, rel=1e-9) and five[-1] == pytest.approx(low)


@pytest.mark.parametrize("epochs", [3, 5, 10, 15, 40])
def test_cosine_and_onecycle_are_torchs_schedulers_one_step_an_epoch(epochs):
    for kind, make in (("cosine", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs)),
                       ("onecycle", lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=epochs))):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched, ref = make(opt), []
        for e in range(epochs):
            ref.append(opt.param_groups[0]["lr"])
            opt.step()
            if e < epochs - 1:
                sched.step()
        assert lrs(T.Round(epochs, 0.1, [0.5], 0.1, schedule=kind)) == pytest.approx(ref, rel=1e-12, abs=1e-15)


def test_step_is_the_default_and_unchanged():
    r = T.Round(5, 0.1, [0.5, 0.7], 0.1)
    assert r.schedule == "step" and lrs(r) == [0.1, 0.1, 0.1, 0.1 * 0.1, 0.1 * 0.1 ** 2]
    with pytest.raises(ValueError, match="linear"):
        T.lr_at(T.Round(5, 0.1, [], 0.1, schedule="linear"), 0)


def test_each_method_reads_its_sections_schedule():
    cfg = replace(CFG, train={"schedule": "onecycle"}, retrain={"schedule": "cosine"})
    ctx = context(cfg)
    dense = {"lth", "lth_init", "lrr", "lr_rewind", "reinit", "gmp"}      # the dense schedule (train.*)
    for m in registry.METHODS:
        want = "onecycle" if m in dense else "cosine"                   # the rest: retrain.* (imp: each round)
        assert {r.schedule for r in registry.METHODS[m](ctx).rounds} == {want}, m
    assert base.dense_round(cfg).schedule == "onecycle"                   # the dense stage's recipe


def test_the_optimizer_gets_each_epochs_lr(data, tmp_path):  # noqa: F811
    cfg = replace(CFG, retrain={"epochs": 4, "schedule": "cosine"})
    seen = []

    class Spy(torch.optim.SGD):
        def step(self, *a, **k):
            seen.append(self.param_groups[0]["lr"])
            return super().step(*a, **k)
    real, torch.optim.SGD = torch.optim.SGD, Spy
    try:
        res = T.run(registry.METHODS["finetune"](context(cfg)), net(), data, RT, seed=0, ckpt=tmp_path / "c.pt", key="c")
    finally:
        torch.optim.SGD = real
    expected = [0.01, 0.005 * (1 + COS4), 0.005, 0.005 * (1 - COS4)]
    assert [h["lr"] for h in res.history] == pytest.approx(expected, rel=1e-12)
    assert seen == pytest.approx([x for x in expected for _ in range(2)], rel=1e-12)     # 2 steps an epoch


@pytest.mark.parametrize("section", ["train", "retrain"])
def test_an_unknown_schedule_is_named(section):
    raw = loading.merge(loading.merged_raw("smoke"), {section: {"schedule": "linear"}})
    with pytest.raises(errors.ConfigError, match=f"{section}.schedule"):
        loading.validate(raw)
