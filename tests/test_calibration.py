"""The report's Calibration section (pipeline/report/calibration.py): the literature's orderings, judged by the claims'
rule, each verdict checked against differences computed by hand."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.report import calibration as K
from pipeline.config import loading

SEEDS = (0, 1, 2)


def _summary(acc: dict) -> pd.DataFrame:
    """Test accuracies (%) per method and seed at sparsity 0.9 (dense: sparsity 0)."""
    rows = [dict(dataset="synthetic", arch="resnet20", seed=seed, sparsity=0.0 if m == "dense" else 0.9, method=m,
                 test_acc=a / 100) for m, values in acc.items() for seed, a in zip(SEEDS, values)]
    return pd.DataFrame(rows)


def _cfg(methods):
    raw = loading.merge(loading.merged_raw("smoke"), {"grid": {"sparsities": [0.9], "seeds": list(SEEDS), "methods": methods}})
    return loading.validate(raw)


def _rows(lines):
    return {ln.split(" | ")[0][2:]: ln for ln in lines if ln.startswith("| ") and not ln.startswith("| ordering")}


ACC = {"dense": [90, 91, 92], "finetune": [85, 86, 87.5], "random": [70, 72, 71], "lrr": [84, 84, 86],
       "lth": [80, 82, 81], "reinit": [80.1, 81.9, 81.05]}


def test_each_ordering_is_judged_by_the_rule_with_its_numbers():
    cfg = _cfg(list(ACC)[1:])
    rows = _rows(K.section(_summary(ACC), None, cfg))
    # finetune - random: 15, 14, 16.5: mean 15.17, sd 1.258; 90% interval 15.17 +- 2.920 * 1.258 / sqrt 3
    assert rows["finetune > random"].endswith("| **reproduced** | s=0.9: +15.17 [+13.05, +17.29] |")
    # lrr - finetune: -1, -2, -1.5: mean -1.5, sd 0.5: worse beyond the 0.5 pp margin -> contradicted
    assert rows["lrr >= finetune"].endswith("| **contradicted** | s=0.9: -1.50 [-2.34, -0.66] |")
    # lth - reinit: -0.1, +0.1, -0.05: mean -0.0167, sd 0.104: within +-0.5 pp (TOST) -> reproduces ">="
    assert rows["lth >= reinit"].endswith("| **reproduced** | s=0.9: -0.02 [-0.19, +0.16] |")
    # dense - every method is positive and large: reproduced for all five
    assert "| **reproduced** | reproduced: finetune, random, lrr, lth, reinit |" in rows[
        "dense >= every retrained model (5)"]


def test_a_model_above_the_dense_one_contradicts_recovery_and_is_named_with_its_numbers():
    acc = {**ACC, "lrr": [95, 96, 97.5]}                 # dense - lrr: -5, -5, -5.5
    rows = _rows(K.section(_summary(acc), None, _cfg(list(acc)[1:])))
    row = rows["dense >= every retrained model (5)"]
    assert "| **contradicted** |" in row and "contradicted: lrr (dense - lrr: s=0.9: -5.17 [-5.65, -4.68])" in row


def test_an_ordering_of_methods_not_in_the_grid_says_so():
    rows = _rows(K.section(_summary({k: ACC[k] for k in ("dense", "finetune", "random")}), None,
                           _cfg(["finetune", "random"])))
    assert rows["lrr >= finetune"].endswith("| **not run** | not both in this grid |")


@pytest.mark.parametrize("verdict,strict,expected", [("held", True, "reproduced"), ("held", False, "reproduced"),
                                                     ("no relevant difference", False, "reproduced"),
                                                     ("no relevant difference", True, "contradicted"),
                                                     ("worse", False, "contradicted"),
                                                     ("not enough evidence", True, "not enough evidence")])
def test_outcome_of_each_verdict(verdict, strict, expected):
    assert K.outcome(verdict, strict) == expected


def test_the_damage_matched_control_row_counts_the_matches():
    spec = pd.DataFrame([dict(dataset="synthetic", arch="resnet20", seed=s, sparsity=0.9, method=m, band=b,
                              radius=r, matched=(s != 2 or m == "matched_mask"), match_gap=0.004 if s != 2 else 0.021)
                         for s in SEEDS for m in ("matched_mask", "matched_mask_bn", "pruned")
                         for b in ("low", "high") for r in (4, 8)])
    rows = _rows(K.section(_summary(ACC), spec, _cfg(list(ACC)[1:])))
    row = rows["damage-matched control within its tolerance of MBP"]
    assert "| **contradicted** | matched in 5 of 6 (seed, sparsity, evaluation); gaps +0.4, +0.4, +0.4, +0.4, +2.1, " \
           "+2.1 pp |" in row, row
