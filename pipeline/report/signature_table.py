"""The pruning signature's table and paired values, read from spectral.csv (pandas only: the measurements are
pipeline/signature.py's): per sparsity, seed and evaluation, the low-pass minus high-pass agreement with the
teacher of the MBP topology and of each random control, paired by seed.

The measure is Cohen's kappa (chance-corrected) where the report's spectral.csv holds it, raw agreement in
reports written before it did (said wherever it is used). Two controls: the same-count random mask (MBP's
per-layer counts: far more damage than MBP at equal counts) and the damage-matched one (its full-band accuracy
within spectral.match_tolerance of MBP's); a seed whose search ended outside the tolerance is shown but left out
of the damage-matched pairs.
"""
from __future__ import annotations

import pandas as pd

from pipeline.evaluate.spectral import FULL

# evaluation -> (MBP variant, same-count control variant, damage-matched control variant)
SIGNATURE = {"as pruned": ("pruned", "random_mask", "matched_mask"),
             "after batch-norm recalibration": ("pruned_bn", "random_mask_bn", "matched_mask_bn")}
CONTROLS = {"same-count": "random mask with MBP's per-layer counts",
            "damage-matched": "random mask whose full-band validation accuracy matches MBP's within its tolerance"}
MEASURES = {"kappa": "Cohen's kappa", "agree": "raw agreement"}


def measure(spec: pd.DataFrame) -> str:
    """The column the signature reads: kappa where the report holds it, else raw agreement (older reports)."""
    return "kappa" if "kappa" in spec.columns and spec.kappa.notna().any() else "agree"


def signature_radii(spec: pd.DataFrame, ds, arch, classes: int, margin_pp: float) -> list[float]:
    """The radii where the dense teacher's own low-pass AND high-pass accuracy (mean over seeds) lie more
    than margin_pp percentage points above chance (1 / classes): elsewhere agreement measures a shared bias."""
    df = spec[(spec.dataset == ds) & (spec.arch == arch) & (spec.method == "dense") & (spec.radius != FULL)]
    acc = df.assign(radius=df.radius.astype(float)).groupby(["radius", "band"]).acc.mean().unstack()
    floor = 1 / classes + margin_pp / 100
    return [float(r) for r, row in acc.iterrows() if row["low"] > floor and row["high"] > floor]


def _matched_at(g: pd.DataFrame, variant: str) -> tuple[str, bool]:
    """'sparsity s, gap +x pp' of a damage-matched control, and whether it is within its tolerance."""
    row = g[g.method == variant].iloc[0]
    ok = bool(row.matched) if isinstance(row.matched, (bool, int)) else str(row.matched) == "True"
    return f"s={float(row.match_sparsity):.3f}, {100 * float(row.match_gap):+.1f} pp" + ("" if ok else
                                                                                           ", NOT matched"), ok


def signature(spec: pd.DataFrame, ds, arch, radii: list[float]) -> tuple[str, dict]:
    """Per sparsity, seed and evaluation: (low - high) agreement with the teacher over `radii`, for MBP and its
    controls; returns the table and {(evaluation, control, measure): {sparsity: ([MBP], [control]) paired by
    seed}}. Damage-matched keys appear only where the report holds that control."""
    col = measure(spec)
    df = spec[(spec.dataset == ds) & (spec.arch == arch) & (spec.radius != FULL)]
    df = df[df.radius.astype(float).isin(radii)]
    has_matched = bool(df.method.isin([v[2] for v in SIGNATURE.values()]).any())
    lines = ["| sparsity | seed | evaluation | MBP low-pass | MBP high-pass | MBP low - high | same-count low - high "
             "| MBP - same-count | damage-matched at | damage-matched low - high | MBP - damage-matched |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    controls = ["same-count"] + (["damage-matched"] if has_matched else [])
    pairs: dict = {(e, c, MEASURES[col]): {} for e in SIGNATURE for c in controls}
    variants = [v for p in SIGNATURE.values() for v in p]
    for (s, seed), g in df[df.method.isin(variants)].groupby(["sparsity", "seed"]):
        for evaluation, (mbp, same, matched) in SIGNATURE.items():
            def low_minus_high(m):
                band = [g[(g.method == m) & (g.band == b)][col].astype(float).mean() for b in ("low", "high")]
                return None if any(pd.isna(v) for v in band) else (band[0], band[1], band[0] - band[1])
            ours, theirs, dm = low_minus_high(mbp), low_minus_high(same), low_minus_high(matched)
            if ours is None or theirs is None:
                continue
            at, ok = _matched_at(g, matched) if dm is not None else ("-", False)
            d = {"same-count": theirs[2], "damage-matched": dm[2] if dm is not None and ok else None}
            lines.append(f"| {s} | {seed} | {evaluation} | {100 * ours[0]:.1f} | {100 * ours[1]:.1f} | "
                         f"{100 * ours[2]:+.1f} | {100 * theirs[2]:+.1f} | {100 * (ours[2] - theirs[2]):+.1f} | {at} | "
                         + (f"{100 * dm[2]:+.1f} | " if dm is not None else "- | ")
                         + (f"{100 * (ours[2] - d['damage-matched']):+.1f} |" if d["damage-matched"] is not None
                            else "- |"))
            for c in controls:
                if d[c] is not None:
                    a, b = pairs[evaluation, c, MEASURES[col]].setdefault(s, ([], []))
                    a.append(ours[2])
                    b.append(d[c])
    return "\n".join(lines), pairs
