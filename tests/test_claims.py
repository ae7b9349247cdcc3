"""The report's claims (pipeline/report.py) on hand-made tables: the controlled pruning signature (radii
near chance left out, MBP paired with its random control by seed) and verdicts by the rule of verdicts.py."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline import report as R
from pipeline.spectral import FULL

KEY = dict(dataset="d", arch="a", filter="circle", heatmap_seconds=0.0)


def rows(method, seed, sparsity, radius, low, high, field):
    return [{**KEY, "method": method, "seed": seed, "sparsity": sparsity, "radius": radius, "band": b, field: v}
            for b, v in (("low", low), ("high", high))]


def teacher(seeds=(0, 1, 2)):
    # 10 classes, margin 5 pp: a radius counts when both bands are above 0.15 (mean over seeds).
    # radius 2: high-pass at chance (0.10, 0.12, 0.14 -> 0.12): left out; 4 and 8 kept; 16: low-pass mean
    # exactly 0.15 (not above): left out. The full band is never a radius of the signature.
    acc = {2.0: [(0.9, 0.10), (0.9, 0.12), (0.9, 0.14)], 4.0: [(0.8, 0.5)] * 3, 8.0: [(0.5, 0.3)] * 3,
           16.0: [(0.1, 0.9), (0.15, 0.9), (0.2, 0.9)], FULL: [(0.95, 0.1)] * 3}
    return [r for radius, v in acc.items() for seed in seeds
            for r in rows("dense", seed, 0.0, radius, *v[seed], "acc")]


def test_signature_leaves_out_radii_where_the_teacher_is_near_chance():
    spec = pd.DataFrame(teacher())
    assert R.signature_radii(spec, "d", "a", classes=10, margin_pp=5.0) == [4.0, 8.0]
    assert R.signature_radii(spec, "d", "a", classes=10, margin_pp=0.0) == [2.0, 4.0, 8.0, 16.0]
    assert R.signature_radii(spec, "d", "a", classes=4, margin_pp=10.0) == [4.0]      # above 0.35


# agreement (low, high) per variant at radii 4 and 8, seed by seed; radius 2 holds values that would change
# every number below if it were not left out
AGREE = {"pruned": [(0.9, 0.3), (0.7, 0.3)], "random_mask": [(0.6, 0.4), (0.6, 0.2)],
         "pruned_bn": [(0.8, 0.6), (0.8, 0.4)], "random_mask_bn": [(0.7, 0.5), (0.7, 0.5)]}


def signature_spec(seeds=(0, 1, 2)):
    out = []
    for seed in seeds:
        for m, ((l4, h4), (l8, h8)) in AGREE.items():
            shift = 0.01 * seed if m.startswith("pruned") else 0.0       # paired differences vary by seed
            out += rows(m, seed, 0.9, 4.0, l4 + shift, h4, "agree") + rows(m, seed, 0.9, 8.0, l8, h8, "agree")
            out += rows(m, seed, 0.9, 2.0, 0.0, 1.0, "agree") + rows(m, seed, 0.9, FULL, 1.0, 0.0, "agree")
    return pd.DataFrame(out)


def test_signature_pairs_mbp_with_its_control_by_seed_over_the_kept_radii():
    table, pairs = R.signature(signature_spec(), "d", "a", [4.0, 8.0])
    # as pruned: MBP low - high = mean(0.9 + 0.01 seed, 0.7) - mean(0.3, 0.3) = 0.5 + 0.005 seed; control 0.3
    mbp, control = pairs["as pruned"][0.9]
    assert mbp == pytest.approx([0.5, 0.505, 0.51]) and control == pytest.approx([0.3, 0.3, 0.3])
    # after recalibration: MBP 0.8 - 0.5 + 0.005 seed = 0.3 + ...; control 0.7 - 0.5 = 0.2
    mbp, control = pairs["after batch-norm recalibration"][0.9]
    assert mbp == pytest.approx([0.3, 0.305, 0.31]) and control == pytest.approx([0.2, 0.2, 0.2])
    assert len(table.splitlines()) == 2 + 3 * 2
    assert "| 0.9 | 0 | as pruned | 80.0 | 30.0 | +50.0 | +30.0 | +20.0 |" in table


def summary(diffs_pp, seeds=(0, 1, 2)):
    """fourier_kd - finetune = diffs_pp (percentage points) seed by seed at sparsity 0.9; the other
    claims' baselines are absent from this grid."""
    out = []
    for seed, d in zip(seeds, diffs_pp):
        out.append(dict(dataset="d", arch="a", seed=seed, sparsity=0.9, method="finetune", test_acc=0.80))
        out.append(dict(dataset="d", arch="a", seed=seed, sparsity=0.9, method="fourier_kd", test_acc=0.80 + d / 100))
    return pd.DataFrame(out)


def claim_rows(diffs_pp, sig=None, seeds=(0, 1, 2)):
    return R._claims(summary(diffs_pp, seeds), sig or {}, "d", "a", margin_pp=0.5)


def test_a_difference_whose_interval_covers_zero_is_not_enough_evidence():
    # mean -1.27, sd 0.95, 3 seeds: 90% interval -1.27 +- 2.92 * 0.95 / sqrt(3) = [-2.87, +0.33] pp
    row = claim_rows([-1.27 - 0.95, -1.27, -1.27 + 0.95])[0]
    assert "**not enough evidence**" in row
    assert "s=0.9: -1.27 [-2.87, +0.33] (3 seeds)" in row
    assert "fourier_kd - finetune" in row
    assert all("**not run**" in r for r in claim_rows([1, 1, 1])[1:4])   # kd, reverse, freq_ce absent


def test_verdicts_follow_the_rule():
    assert "**held**" in claim_rows([2.0, 2.5, 3.0])[0]
    assert "**worse**" in claim_rows([-2.0, -2.5, -3.0])[0]
    assert "**no relevant difference**" in claim_rows([0.05, -0.05, 0.0])[0]
    assert "**not enough evidence**" in claim_rows([2.0, 3.0], seeds=(0, 1))[0]   # t = 5 < 6.31 (df 1)
    assert "**held**" in claim_rows([2.0, 2.1], seeds=(0, 1))[0]                  # t = 41
    one = claim_rows([2.0], seeds=(0,))[0]
    assert "**not enough evidence**" in one and "1 seed: no interval" in one


def test_the_signature_claim_comes_from_the_paired_difference_with_the_control():
    _, sig = R.signature(signature_spec(), "d", "a", [4.0, 8.0])
    rows_ = claim_rows([2.0, 2.5, 3.0], sig)
    assert len(rows_) == 4 + 2
    as_pruned, recalibrated = rows_[4], rows_[5]
    assert "as pruned" in as_pruned and "**held**" in as_pruned and "s=0.9: +20.50" in as_pruned
    assert "after batch-norm recalibration" in recalibrated and "s=0.9: +10.50" in recalibrated
