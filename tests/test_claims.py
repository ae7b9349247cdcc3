"""The report's claims on hand-made tables: the controlled pruning signature (pipeline/report/build.py: radii near
chance left out, MBP paired with its random control by seed) and the Claims section (pipeline/report/claims.py):
every declared claim judged by the rule of verdicts.py, cost ratios, power, controls, regime notes, cells."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.report import claims as CL
from pipeline.report import build as R, signature_table
from pipeline.report import verdicts as V
from pipeline.evaluate.spectral import FULL
from pipeline.config import loading
from pipeline.config import schema

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
    # (a report without kappa or the damage-matched control: raw agreement, the same-count control only)
    assert set(pairs) == {(e, "same-count", "raw agreement") for e in signature_table.SIGNATURE}
    mbp, control = pairs["as pruned", "same-count", "raw agreement"][0.9]
    assert mbp == pytest.approx([0.5, 0.505, 0.51]) and control == pytest.approx([0.3, 0.3, 0.3])
    # after recalibration: MBP 0.8 - 0.5 + 0.005 seed = 0.3 + ...; control 0.7 - 0.5 = 0.2
    mbp, control = pairs["after batch-norm recalibration", "same-count", "raw agreement"][0.9]
    assert mbp == pytest.approx([0.3, 0.305, 0.31]) and control == pytest.approx([0.2, 0.2, 0.2])
    assert len(table.splitlines()) == 2 + 3 * 2
    assert "| 0.9 | 0 | as pruned | 80.0 | 30.0 | +50.0 | +30.0 | +20.0 | - | - | - |" in table


def test_signature_reads_kappa_and_pairs_the_damage_matched_control_only_within_its_tolerance():
    spec = signature_spec()
    spec = spec.assign(kappa=spec.agree - 0.1)         # kappa = agreement - 0.1: every low - high is unchanged
    spec.loc[spec.radius == 2.0, "kappa"] = 0.9        # left out (radius 2 is not kept): would change everything
    extra = []
    for seed in SEEDS:                                 # matched: low - high 0.1 (as pruned), 0.0 (recalibrated)
        for m, low, high in (("matched_mask", 0.5, 0.4), ("matched_mask_bn", 0.45, 0.45)):
            for radius in (4.0, 8.0):
                extra += [{**r, "match_sparsity": 0.6, "match_gap": -0.004,
                           "matched": seed != 2 or m.endswith("bn")} for r in rows(m, seed, 0.9, radius, low, high,
                                                                               "kappa")]
    table, pairs = R.signature(pd.concat([spec, pd.DataFrame(extra)]), "d", "a", [4.0, 8.0])
    assert set(pairs) == {(e, c, "Cohen's kappa") for e in signature_table.SIGNATURE for c in ("same-count", "damage-matched")}
    mbp, control = pairs["as pruned", "same-count", "Cohen's kappa"][0.9]
    assert mbp == pytest.approx([0.5, 0.505, 0.51]) and control == pytest.approx([0.3, 0.3, 0.3])
    # seed 2's as-pruned search ended outside its tolerance: shown, not paired
    mbp, control = pairs["as pruned", "damage-matched", "Cohen's kappa"][0.9]
    assert mbp == pytest.approx([0.5, 0.505]) and control == pytest.approx([0.1, 0.1])
    mbp, control = pairs["after batch-norm recalibration", "damage-matched", "Cohen's kappa"][0.9]
    assert mbp == pytest.approx([0.3, 0.305, 0.31]) and control == pytest.approx([0.0, 0.0, 0.0])
    # kappa 0.8 = agreement 0.9 - 0.1 on the low-pass side at radius 4, 0.6 at radius 8: 70.0 (seed 2: 71.0)
    assert "| 0.9 | 0 | as pruned | 70.0 | 20.0 | +50.0 | +30.0 | +20.0 | s=0.600, -0.4 pp | +10.0 | +40.0 |" \
        in table
    assert "| 0.9 | 2 | as pruned | 71.0 | 20.0 | +51.0 | +30.0 | +21.0 | s=0.600, -0.4 pp, NOT matched | +10.0 | - |" \
        in table


# ------------------------------------------------------------------------------------------ claims section

SEEDS = (0, 1, 2)
# test accuracy (%) per seed at sparsity 0.9 in one cell; at 0.5 every method scores its seed's dense accuracy
# (outside the claims).
# fourier_kd - each baseline, seed by seed (pp): finetune +2, +2.5, +3 (held); kd -2, -2.5, -3 (worse);
# freq_ce +0.05, -0.05, 0 (no relevant difference); lth -1, +3, -2 (not enough evidence); fourier_kd_reverse
# +10, +11, +12 and fourier_kd_reverse - random -6, -7, -8 (below the floor); lth_init beats the dense teacher.
ACC = {"dense": [70.0, 72.0, 71.0], "fourier_kd": [60.0, 60.5, 61.0], "finetune": [58.0, 58.0, 58.0],
       "kd": [62.0, 63.0, 64.0], "freq_ce": [59.95, 60.55, 61.0], "lth": [61.0, 57.5, 63.0],
       "fourier_kd_reverse": [50.0, 49.5, 49.0], "random": [56.0, 56.5, 57.0], "lth_init": [80.0, 82.5, 81.5]}
SECONDS = {"fourier_kd": 120.0, "finetune": 60.0, "kd": 80.0, "lth_init": 240.0}
EPOCHS = {"lth_init": 6}


def cell_rows(ds="synthetic", arch="resnet20", acc=ACC, seeds=SEEDS):
    out, dense = [], acc.get("dense", [99.0] * len(seeds))
    for m, values in acc.items():
        for i, (seed, a) in enumerate(zip(seeds, values)):
            for s in ([0.0] if m == "dense" else [0.5, 0.9]):
                out.append(dict(dataset=ds, arch=arch, seed=seed, sparsity=s, method=m,
                                test_acc=(a if s != 0.5 else dense[i]) / 100, epochs=EPOCHS.get(m, 3),
                                train_seconds=SECONDS.get(m, 60.0), hardware="cpu:test"))
    return out


def config(archs=("resnet20",), **report):
    raw = loading.merge(loading.merged_raw("smoke"), {"grid": {"sparsities": [0.5, 0.9], "seeds": list(SEEDS),
                                                   "archs": list(archs)}, "report": report})
    return loading.validate(raw)


def rows_of(lines, start):
    return [ln for ln in lines if ln.startswith(start)]


def test_a_claim_covers_the_grid_sparsities_from_min_sparsity_unless_it_names_its_own():
    cfg = config()
    assert CL.claimed_sparsities(cfg, schema.ClaimCfg("fourier_kd", "finetune")) == [0.9]
    assert CL.claimed_sparsities(cfg, schema.ClaimCfg("fourier_kd", "finetune", min_sparsity=0.5)) == [0.5, 0.9]
    assert CL.claimed_sparsities(cfg, schema.ClaimCfg("fourier_kd", "finetune", sparsities=[0.5])) == [0.5]
    assert CL.claimed_sparsities(config(min_sparsity=0.95), schema.ClaimCfg("fourier_kd", "finetune")) == []


def test_the_default_claims_are_fourier_kd_against_every_baseline_and_the_controls():
    cfg = config()
    assert cfg.report.alpha == 0.05 and cfg.report.min_sparsity == 0.8
    pairs = [(c.method, c.baseline, c.direction) for c in cfg.report.claims]
    baselines = [m for m, x in CL.CATALOG.items() if x.role == "baseline" and x.source == "built-in"]
    controls = [m for m, x in CL.CATALOG.items() if x.role == "control" and x.source == "built-in"]
    assert sorted(pairs) == sorted(("fourier_kd", b, "better") for b in baselines + controls)
    assert len(baselines) == 10 and {c.baseline for c in cfg.report.claims if c.question} == {"kd", *controls}


def test_every_baseline_row_follows_the_rule_with_its_cost_and_power():
    cfg = config()
    lines = CL.section(pd.DataFrame(cell_rows()), cfg, {})
    text = "\n".join(lines)
    assert "rule v2" in text and "### synthetic / resnet20" in text
    rows = {r.split(" | ")[0][2:]: r for r in rows_of(lines, "| fourier_kd vs ")}
    # finetune: d = 2, 2.5, 3 pp: mean 2.5, sd 0.5, 90% interval 2.5 +- 2.92 * 0.5 / sqrt 3 = [+1.66, +3.34];
    # t = 8.66, one-sided p = 0.5 - t / (2 sqrt(2 + t^2)) = 0.00654; same epochs, twice the seconds
    ft = rows["fourier_kd vs finetune"]
    assert ("| fourier_kd vs finetune | same retraining budget | **held** | s=0.9: +2.50 [+1.66, +3.34] (3 seeds) "
            "| 0.00654 / 0.993 | 1.00 | 2.00 |") in ft
    assert V.power_text(V.claim_power([V.Difference(0.9, 3, 0.025, 0.005)])) in ft
    assert "seed sd 0.50 pp (3 seeds, 1 sparsity)" in ft
    assert "| **worse** | s=0.9: -2.50 [-3.34, -1.66] (3 seeds) | 0.993 / 0.00654 | 1.00 | 1.50 |" \
        in rows["fourier_kd vs kd"]
    assert "| chain of prune-retrain rounds | **not enough evidence** | s=0.9: +0.00 " in rows["fourier_kd vs lth"]
    # lth_init: 6 epochs against 3, 240 s against 120 s
    assert "| 0.50 | 0.50 |" in rows["fourier_kd vs lth_init"]
    for absent in ("finetune_layerwise", "imp", "lr_rewind", "gmp"):     # not in this summary
        assert f"| fourier_kd vs {absent} | " in rows.get(f"fourier_kd vs {absent}", "") and \
            "**not run** | not run in this grid" in rows[f"fourier_kd vs {absent}"]
    # sparsity 0.5 (below min_sparsity) is in no claim
    assert "s=0.5" not in "\n".join(rows.values())


def test_controls_are_worded_from_the_numbers_and_the_floor():
    lines = CL.section(pd.DataFrame(cell_rows()), config(), {})
    controls = {r.split(" | ")[1]: r for r in rows_of(lines, "| Does ")}
    eq = controls["fourier_kd vs freq_ce"]
    assert "**no relevant difference**" in eq and "differ by less than ±0.5 pp at every claimed sparsity" in eq
    rev = controls["fourier_kd vs fourier_kd_reverse"]
    assert "**held**" in rev and "fourier_kd is above fourier_kd_reverse at every claimed sparsity (+11.00 pp)" in rev
    # reverse - random = -6, -7, -8: worse by the rule: the control is destructive
    assert "fourier_kd_reverse is below the random-mask floor (fourier_kd_reverse - random: s=0.9: -7.00" in rev
    assert "the control is destructive" in rev
    kd = controls["fourier_kd vs kd"]
    assert "**worse**" in kd and "fourier_kd is below kd at every claimed sparsity (-2.50 pp)" in kd
    assert "random-mask floor" not in kd        # kd - random = +6, +6.5, +7


def test_regime_notes_name_a_beaten_teacher_and_unequal_compute():
    lines = CL.section(pd.DataFrame(cell_rows()), config(), {})
    teacher = next(ln for ln in lines if "Dense model under-trained" in ln)
    # lth_init - dense = +10, +10.5, +10.5 at 0.9 (0 at 0.5, as every method there)
    assert "**Dense model under-trained**: lth_init at s=0.9 (+10.33 pp [+9.85, +10.82], 6 epochs) beats the dense " \
        "teacher (3 epochs) beyond its 90% t-interval (paired by seed; 1 of the cell's 16 method-sparsity comparisons, 1 after Holm" \
        in teacher and "verdicts are about training, not recovery" in teacher
    compute = next(ln for ln in lines if "Equal epochs, not equal compute" in ln)
    assert "spend 3 epochs each" in compute and "fourier_kd 2.00x" in compute and "kd 1.33x" in compute
    assert "lth_init" not in compute            # a chain, not the retraining budget
    assert not any("Dense model" in ln for ln in CL.section(
        pd.DataFrame(cell_rows(acc={k: v for k, v in ACC.items() if k != "lth_init"})), config(), {}))


def test_one_seed_gives_no_verdict_no_interval_and_no_power():
    acc = {k: v[:1] for k, v in ACC.items()}
    lines = CL.section(pd.DataFrame(cell_rows(acc=acc, seeds=(0,))), config(), {})
    ft = rows_of(lines, "| fourier_kd vs finetune |")[0]
    assert "**not enough evidence** | s=0.9: +2.00 (1 seed: no interval) | - / - |" in ft
    assert "no power estimate" in ft


def test_across_cells_counts_are_holm_corrected_and_every_cell_is_an_intersection():
    # fourier_kd - finetune = +1.5, +3, +4.5 in both cells: t = 3.46, p = 0.0371 each: held in each cell at
    # 0.05, neither survives Holm across 2 cells (2 x 0.0371 = 0.074), held in every cell (max p 0.037)
    acc = {"fourier_kd": [61.5, 63.0, 64.5], "finetune": [60.0, 60.0, 60.0]}
    rows = cell_rows(arch="resnet20", acc=acc) + cell_rows(arch="resnet56", acc=acc)
    lines = CL.section(pd.DataFrame(rows), config(archs=("resnet20", "resnet56")), {})
    t = 3 / (1.5 / 3 ** 0.5)
    p = 0.5 - t / (2 * (2 + t * t) ** 0.5)
    assert f"| {p:.3g} / " in rows_of(lines, "| fourier_kd vs finetune |")[0] and p == pytest.approx(0.0371, abs=1e-4)
    line = next(ln for ln in lines if ln.startswith("- fourier_kd vs finetune:"))
    assert line == ("- fourier_kd vs finetune: held in 2 of 2 (after Holm across cells: 0); worse in 0; "
                    "no relevant difference in 0; held in every cell: yes")
    paper = next(ln for ln in lines if ln.startswith("- the paper's claim"))
    assert "held in 0 of 2" in paper                  # the other baselines were not run


def test_the_signature_claim_comes_from_the_paired_difference_with_the_control():
    _, sig = R.signature(signature_spec(), "d", "a", [4.0, 8.0])
    lines = CL.section(pd.DataFrame(cell_rows(ds="d", arch="a")),
                       loading.validate(loading.merge(loading.merged_raw("smoke"), {"grid": {"datasets": ["synthetic"]}})), {})
    assert not rows_of(lines, f"| {CL.SIGNATURE_CLAIM}")       # cell d/a is not in the grid: nothing
    cfg = config()
    lines = CL.section(pd.DataFrame(cell_rows()), cfg, {("synthetic", "resnet20"): sig})
    as_pruned, recalibrated = rows_of(lines, f"| {CL.SIGNATURE_CLAIM}")
    # the claim says which control it is judged against, the test which measure and evaluation
    assert as_pruned.startswith(f"| {CL.SIGNATURE_CLAIM}, judged against the same-count control | raw agreement "
                                "with the teacher, low-pass - high-pass, MBP topology - random mask with MBP's "
                                "per-layer counts, as pruned, before retraining |")
    # MBP - control = 0.2 + 0.005 seed: mean +20.50, sd 0.5 pp: held
    assert "as pruned" in as_pruned and "**held**" in as_pruned and "s=0.9: +20.50" in as_pruned
    assert "after batch-norm recalibration" in recalibrated and "s=0.9: +10.50" in recalibrated


def test_a_claimed_sparsity_without_a_paired_seed_leaves_the_claim_undecided():
    rows = [r for r in cell_rows() if not (r["method"] == "finetune" and r["sparsity"] == 0.9)]
    lines = CL.section(pd.DataFrame(rows), config(min_sparsity=0.5), {})
    ft = rows_of(lines, "| fourier_kd vs finetune |")[0]
    # at 0.5 both score the dense accuracy (difference 0, sd 0); 0.9 has no finetune row: no verdict
    assert "**not enough evidence** | s=0.5: +0.00 [+0.00, +0.00] (3 seeds); s=0.9: no seed run by both |" in ft


def test_a_claim_of_worse_is_held_by_the_mirror_test():
    cfg = config(claims=[{"method": "fourier_kd", "baseline": "kd", "direction": "worse"},
                         {"method": "fourier_kd", "baseline": "finetune", "direction": "worse"}])
    lines = CL.section(pd.DataFrame(cell_rows()), cfg, {})
    kd, ft = rows_of(lines, "| fourier_kd vs ")
    # fourier_kd - kd = -2, -2.5, -3: worse shown, so the claim "worse" is held; against finetune the
    # opposite (better) is shown
    assert kd.startswith("| fourier_kd vs kd (claimed worse) | same retraining budget | **held** |")
    assert ft.startswith("| fourier_kd vs finetune (claimed worse) | same retraining budget | **better** |")
    across = [ln for ln in lines if ln.startswith("- fourier_kd vs ")]
    assert across == ["- fourier_kd vs kd (claimed worse): held in 1 of 1 (after Holm across cells: 1); better in 0; "
                      "no relevant difference in 0; held in every cell: yes",
                      "- fourier_kd vs finetune (claimed worse): held in 0 of 1 (after Holm across cells: 0); better "
                      "in 1; no relevant difference in 0; held in every cell: no"]
