"""The report's main table and paired comparisons (pipeline/report/build.py) on a hand-made 3-seed table with one
seed missing, against values computed by hand: mean ± sample sd (n - 1), and two-sided 95% t-intervals
mean ± t * sd / sqrt(n), with t from closed forms (df = 1: tan(pi (p - 1/2)), the Cauchy quantile;
df = 2: (2p - 1) / sqrt(2 p (1 - p))), not from scipy."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from pipeline.report import build as R

T1 = math.tan(math.pi * (0.975 - 0.5))                 # 12.7062: 95% two-sided, df = 1 (2 seeds)
T2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)               # 4.3027: df = 2 (3 seeds)

# test accuracy per (method, sparsity): {seed: acc}; fourier_kd lost seed 1 at s = 0.9 and ran only seed 1
# at s = 0.5; kd ran only s = 0.9; imp's chain spends 1 epoch to reach 0.5 and 3 to reach 0.9
ACC = {("dense", 0.0): {0: 0.90, 1: 0.92, 2: 0.94},
       ("finetune", 0.5): {0: 0.88, 1: 0.88, 2: 0.91}, ("finetune", 0.9): {0: 0.80, 1: 0.83, 2: 0.89},
       ("kd", 0.9): {0: 0.82, 1: 0.86, 2: 0.88},
       ("fourier_kd", 0.5): {1: 0.90}, ("fourier_kd", 0.9): {0: 0.85, 2: 0.93},
       ("imp", 0.5): {0: 0.87, 1: 0.90, 2: 0.91}, ("imp", 0.9): {0: 0.85, 1: 0.84, 2: 0.86}}
EPOCHS = {"dense": {0.0: 2}, "imp": {0.5: 1, 0.9: 3}}
SECONDS = {"dense": [10, 12, 14], "finetune": [5], "kd": [7], "fourier_kd": [8], "imp": [4, 8]}


def summary() -> pd.DataFrame:
    rows = []
    for (m, s), accs in ACC.items():
        for seed, a in accs.items():
            secs = SECONDS[m]
            rows.append({"dataset": "d", "arch": "a", "seed": seed, "sparsity": s, "method": m,
                         "group": R._group(m), "test_acc": a, "epochs": EPOCHS.get(m, {}).get(s, 2),
                         "train_seconds": secs[seed] if m == "dense" else secs[[0.5, 0.9].index(s) % len(secs)],
                         "hardware": "cpu:test"})
    return pd.DataFrame(rows)


def test_main_table_by_hand():
    lines = R.main_table(summary(), "d", "a").splitlines()
    assert lines[:7] == [
        "| group | method | epochs | train s | s=0.5 | s=0.9 |",
        "|---|---|---|---|---|---|",
        # dense: mean 92, deviations -2, 0, +2 pp: sd sqrt(8 / 2) = 2
        "| dense | dense | 2 | 12 | 92.00 ± 2.00 | 92.00 ± 2.00 |",
        # 88, 88, 91: mean 89, sd sqrt((1 + 1 + 4) / 2) = 1.73; 80, 83, 89: mean 84, sd sqrt((16 + 1 + 25) / 2)
        "| one-shot (equal budget) | finetune | 2 | 5 | 89.00 ± 1.73 | 84.00 ± 4.58 |",
        # 82, 86, 88: mean 85.33, sd sqrt((3.33^2 + 0.67^2 + 2.67^2) / 2) = sqrt(9.33 / 2) = 3.06
        "| one-shot (equal budget) | kd | 2 | 7 | - | 85.33 ± 3.06 |",
        # one seed: no spread; 85, 93: mean 89, sd sqrt(2 * 16 / 1) = 5.66
        "| one-shot (equal budget) | fourier_kd | 2 | 8 | 90.00 | 89.00 ± 5.66 |",
        # 87, 90, 91: mean 89.33, sd sqrt((2.33^2 + 0.67^2 + 1.67^2) / 2) = 2.08; 85, 84, 86: 85 ± 1
        "| extra cost | imp | 1-3 | 6 | 89.33 ± 2.08 | 85.00 ± 1.00 |",
    ]
    assert lines[7] == "" and lines[8].startswith("Test accuracy (%), mean ± sample std over 3 seed(s). ")


def interval(diffs):
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = {2: T1, 3: T2}[n] * sd / math.sqrt(n)
    return mean, mean - half, mean + half


# (baseline, method, sparsity): the paired differences by hand (seeds run by both), in accuracy units
PAIRS = {("finetune", "kd", 0.9): [0.02, 0.03, -0.01],
         ("finetune", "fourier_kd", 0.5): [0.02],                  # seed 1 only: no interval
         ("finetune", "fourier_kd", 0.9): [0.05, 0.04],            # seeds 0 and 2
         ("finetune", "imp", 0.5): [-0.01, 0.02, 0.00], ("finetune", "imp", 0.9): [0.05, 0.01, -0.03],
         ("kd", "finetune", 0.9): [-0.02, -0.03, 0.01], ("kd", "fourier_kd", 0.9): [0.03, 0.05],
         ("kd", "imp", 0.9): [0.03, -0.02, -0.02]}
TEXT = {("finetune", "kd", 0.9): "+1.33 [-3.84, +6.50]",
        ("finetune", "fourier_kd", 0.5): "+2.00 (one seed: no interval can be given)",
        ("finetune", "fourier_kd", 0.9): "+4.50 [-1.85, +10.85]",
        ("finetune", "imp", 0.5): "+0.33 [-3.46, +4.13]", ("finetune", "imp", 0.9): "+1.00 [-8.94, +10.94]",
        ("kd", "finetune", 0.9): "-1.33 [-6.50, +3.84]", ("kd", "fourier_kd", 0.9): "+4.00 [-8.71, +16.71]",
        ("kd", "imp", 0.9): "-0.33 [-7.50, +6.84]"}


def test_paired_comparisons_and_their_95_percent_t_intervals_by_hand():
    comp = R.comparisons(summary(), "d", "a")
    got = {(r.baseline, r.method, r.sparsity): r for _, r in comp.iterrows()}
    assert set(got) == set(PAIRS)                 # kd has no s = 0.5: nothing paired there
    for key, diffs in PAIRS.items():
        r = got[key]
        assert r["n"] == len(diffs), key
        if len(diffs) == 1:
            assert r["mean"] == pytest.approx(diffs[0], abs=1e-12) and math.isnan(r["low"]), key
        else:
            assert (r["mean"], r["low"], r["high"]) == pytest.approx(interval(diffs), abs=1e-12), key
        assert R._ci_text(r) == TEXT[key], key
    # the widths: 2 seeds give t = 12.71, 3 seeds t = 4.30 (an 80% interval would use 3.08 and 1.89)
    r = got["finetune", "fourier_kd", 0.9]
    assert r["high"] - r["low"] == pytest.approx(2 * 12.706204736 * 0.005, rel=1e-9)
