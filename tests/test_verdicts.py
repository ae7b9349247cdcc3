"""The claims' verdict rule (pipeline/verdicts.py) on hand-made numbers, including the cases that the old
rule ("not held" when every mean difference is <= 0) got wrong."""
from __future__ import annotations

import math

import pytest

from pipeline import verdicts as V

T975_2 = 4.302652729911275      # t quantiles, df = 2 (3 seeds)
T95_2 = 2.919985580355516
T9875_2 = 6.205346816179900
T975_1 = 12.706204736174707     # df = 1 (2 seeds)


def from_interval(mean, low, high, n, t):
    """The Difference whose 95% interval over n seeds is [low, high] (values in percentage points)."""
    assert mean == pytest.approx((low + high) / 2, abs=0.006)
    return V.Difference("s", n, mean / 100, (high - low) / 2 / 100 * math.sqrt(n) / t)


def test_difference_by_hand():
    d = V.difference(0.9, [0.90, 0.80, 0.85], [0.88, 0.79, 0.80])    # d = [0.02, 0.01, 0.05]
    assert (d.key, d.n) == (0.9, 3)
    assert d.mean == pytest.approx(0.08 / 3, rel=1e-12)
    assert d.sd == pytest.approx(math.sqrt(78 / 2) / 300, rel=1e-12)
    low, high = d.interval(0.95)
    assert low == pytest.approx(0.08 / 3 - T975_2 * math.sqrt(13) / 300, rel=1e-9)
    assert high == pytest.approx(0.08 / 3 + T975_2 * math.sqrt(13) / 300, rel=1e-9)


def test_fourier_kd_vs_finetune_on_cifar10_jpeg_is_not_enough_evidence():
    # results/cifar10_jpeg said "not held" for -1.27 [-3.63, +1.09] (3 seeds): the interval covers 0 and
    # is far wider than the margin, so neither direction is shown.
    d = from_interval(-1.27, -3.63, 1.09, 3, T975_2)
    assert d.interval(0.95) == pytest.approx((-0.0363, 0.0109), abs=1e-9)
    j = V.judge([d], margin=0.005)
    assert j.verdict == V.UNDECIDED and not j.equivalence
    assert j.intervals[0][0] == pytest.approx(0.95)


def test_two_seeds_never_decide():
    # the H100 run, 2 seeds: -1.58 [-6.79, +3.63]
    wide = from_interval(-1.58, -6.79, 3.63, 2, T975_1)
    assert V.judge([wide], margin=0.005).verdict == V.UNDECIDED
    # ... and not even an interval wholly above (or below) 0, or a tight equivalence, decides with 2 seeds
    for d in (V.Difference("s", 2, 0.05, 0.001), V.Difference("s", 2, -0.05, 0.001),
              V.Difference("s", 2, 0.0, 1e-6)):
        assert V.judge([d], margin=0.005).verdict == V.UNDECIDED


def test_one_seed_is_not_enough_evidence_and_has_no_interval():
    d = V.difference(0.9, [0.9], [0.8])
    j = V.judge([d], margin=0.005)
    assert j.verdict == V.UNDECIDED and math.isnan(j.intervals[0][1])


def test_held_needs_every_adjusted_interval_above_zero():
    a = V.difference(0.5, [0.92, 0.93, 0.925], [0.90, 0.90, 0.90])
    b = V.difference(0.9, [0.85, 0.86, 0.87], [0.80, 0.80, 0.80])
    assert V.judge([a, b], margin=0.005).verdict == V.HELD
    worse = V.difference(0.95, [0.80, 0.70, 0.85], [0.79, 0.71, 0.80])     # mixed signs
    assert V.judge([a, b, worse], margin=0.005).verdict == V.UNDECIDED


def test_holm_makes_held_harder_with_more_sparsities():
    # t = 5 with 3 seeds: p = 2 * (0.5 - 5 / (2 sqrt(27))) = 0.0377, between 0.05 / 2 and 0.05.
    d = V.Difference("s", 3, 5 * 0.01 / math.sqrt(3), 0.01)
    assert d.p_value() == pytest.approx(1 - 5 / math.sqrt(27), rel=1e-9)
    alone = V.judge([d], margin=0.005)
    assert alone.verdict == V.HELD and alone.intervals[0][1] > 0
    twice = V.judge([d, V.Difference("t", 3, d.mean, d.sd)], margin=0.005)
    assert twice.verdict == V.UNDECIDED
    assert [lv for lv, _, _ in twice.intervals] == pytest.approx([0.975, 0.975])
    assert twice.intervals[0][1] == pytest.approx(d.mean - T9875_2 * 0.01 / math.sqrt(3), rel=1e-9)


def test_holm_levels_step_down_and_stop_at_the_first_non_rejection():
    sd = 0.01
    strong = V.Difference("a", 3, 100 * sd, sd)       # p ~ 1e-4: rejected at 0.05 / 3
    medium = V.Difference("b", 3, 8 * sd, sd)         # t = 8 sqrt(3) = 13.9: p = 0.0051, rejected at 0.05 / 2
    weak = V.Difference("c", 3, 0.5 * sd, sd)         # p ~ 0.5: not rejected at 0.05
    assert medium.p_value() == pytest.approx(1 - 13.856406 / math.sqrt(13.856406 ** 2 + 2), rel=1e-5)
    assert V.holm_levels([weak, strong, medium]) == pytest.approx([0.95, 1 - 0.05 / 3, 0.975])
    # b not rejected at 0.05 / 2 (p = 0.0377): Holm stops there, c keeps b's level
    borderline = V.Difference("b", 3, 5 * sd / math.sqrt(3), sd)
    assert V.holm_levels([weak, strong, borderline]) == pytest.approx([0.975, 1 - 0.05 / 3, 0.975])


def test_not_held_when_an_adjusted_interval_is_below_zero():
    below = V.difference(0.9, [0.80, 0.81, 0.79], [0.85, 0.85, 0.85])
    above = V.difference(0.5, [0.92, 0.93, 0.925], [0.90, 0.90, 0.90])
    assert V.judge([below, above], margin=0.005).verdict == V.NOT_HELD


def test_not_held_by_equivalence_within_the_margin_at_every_sparsity():
    # mean 0.1 pp, sd 0.1 pp, 3 seeds: 90% interval 0.1 +- 2.92 * 0.1 / sqrt(3) = [-0.069, +0.269] pp
    tight = V.Difference("s", 3, 0.001, 0.001)
    low, high = tight.interval(0.90)
    assert (low, high) == pytest.approx((0.001 - T95_2 * 0.001 / math.sqrt(3), 0.001 + T95_2 * 0.001 / math.sqrt(3)))
    assert V.equivalent(tight, 0.005) and not V.equivalent(tight, 0.002)
    j = V.judge([tight, V.Difference("t", 3, -0.001, 0.001)], margin=0.005)
    assert j.verdict == V.NOT_HELD and j.equivalence
    # with a margin the 90% interval does not fit in, nothing is shown
    assert V.judge([tight], margin=0.002).verdict == V.UNDECIDED
    # equivalence must hold at EVERY sparsity
    wide = V.Difference("u", 3, 0.0, 0.02)
    assert V.judge([tight, wide], margin=0.005).verdict == V.UNDECIDED


def test_no_comparison_is_not_run():
    assert V.judge([], margin=0.005).verdict == "not run"


def test_rule_text_names_the_margin_and_the_seed_minimum():
    text = V.rule(0.5)
    assert "±0.5 percentage points" in text and "fewer than 3 seeds" in text and "Holm" in text
