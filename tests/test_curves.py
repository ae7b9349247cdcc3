"""The learning curves' convergence criterion (pipeline/report/curves.py), by hand, and the chain level's
history: exact values, no training."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from pipeline.report import curves


def test_the_gain_is_the_last_epoch_minus_the_one_before_the_tail():
    h = [0.10, 0.30, 0.50, 0.60, 0.62, 0.63, 0.635, 0.64]     # 8 epochs: the last quarter is epochs 7 and 8
    assert curves.gain(h, 0.25) == pytest.approx(0.64 - 0.63)
    assert curves.gain(h, 0.5) == pytest.approx(0.64 - 0.60)   # the last 4 epochs
    assert curves.gain([0.2, 0.5, 0.4], 0.25) == pytest.approx(0.4 - 0.5)   # ceil(0.75) = 1 epoch: may fall
    assert math.isnan(curves.gain([0.5], 0.25))                 # one epoch has nothing before its tail


def _cfg(gain=1.0, tail=0.25):
    return SimpleNamespace(report=SimpleNamespace(converged_gain=gain, converged_tail=tail))


def _curves(histories: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    return pd.DataFrame([r for (m, seed), h in histories.items() for r in curves.rows(
        {"dataset": "d", "arch": "a", "seed": seed, "sparsity": 0.0 if m == "dense" else 0.9, "method": m}, h)])


def test_converged_when_the_mean_gain_over_seeds_is_below_the_stated_margin():
    flat = {("dense", 0): [0.5, 0.80, 0.805, 0.81], ("dense", 1): [0.5, 0.79, 0.80, 0.805]}   # +0.5, +0.5 pp
    rising = {("dense", 0): [0.3, 0.5, 0.6, 0.7], ("dense", 1): [0.3, 0.5, 0.6, 0.605]}      # +10, +0.5 pp
    assert curves.converged(_curves(flat), "d", "a", _cfg()) is True
    assert curves.converged(_curves(rising), "d", "a", _cfg()) is False          # mean +5.25 pp
    assert curves.converged(_curves(rising), "d", "a", _cfg(gain=6.0)) is True
    # a retrained model's curve does not enter the criterion
    assert curves.converged(_curves({**flat, ("finetune", 0): [0.1, 0.9, 0.1, 0.9]}), "d", "a", _cfg()) is True
    assert curves.converged(_curves({("finetune", 0): [0.1, 0.2]}), "d", "a", _cfg()) is None


def test_the_section_states_the_rule_each_seed_and_the_verdict():
    text = "\n".join(curves.section(_curves({("dense", 0): [0.5, 0.6, 0.7, 0.75]}), "d", "a", _cfg(), "f.png"))
    assert "last 25% of its epochs add less than 1 percentage points" in text
    assert "seed 0: +5.00" in text and "**not converged**" in text and "![learning curves](f.png)" in text
    assert "No validation history" in "\n".join(curves.section(pd.DataFrame(), "d", "a", _cfg(), None))
