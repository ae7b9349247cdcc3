"""The report's Calibration section: before a reader trusts a verdict on the paper, the instrument should
reproduce what the pruning literature already agrees on. Each row is an ordering with its source, judged in
every (dataset, arch) cell by the same rule as the claims (pipeline/verdicts.py) at the claimed sparsities
(report.min_sparsity and above), and says plainly when it does not reproduce.

- "A >= B" reproduces when the rule finds A better than B or no relevant difference; it is contradicted when
  the rule finds A worse; otherwise there is not enough evidence.
- "A > B" reproduces only when the rule finds A better; "no relevant difference" or worse contradicts it.

It reads summary.csv's and spectral.csv's rows only (as claims.py), so a test can recompute it.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pipeline.report import verdicts as V
from pipeline.report.claims import _pp, paired

REPRODUCED, CONTRADICTED = "reproduced", "contradicted"


@dataclass(frozen=True)
class Ordering:
    better: str          # the method expected at or above...
    worse: str           # ... this one
    strict: bool         # ">" (strictly better) or ">="
    source: str


ORDERINGS = (
    Ordering("finetune", "random", True, "every pruning paper: MBP's mask beats a random mask with its per-layer "
             "counts at equal retraining (Frankle & Carbin 2019's random-pruning control)"),
    Ordering("lrr", "finetune", False, "Renda et al. 2020: iterative lr rewinding at least matches fine-tuning"),
    Ordering("lth", "reinit", False, "Frankle et al. 2020: late rewinding at least matches the same mask with "
             "fresh weights (the mask alone is not the ticket)"),
)
RECOVERY_SOURCE = ("recovery, not training: a model pruned from the dense network and retrained recovers at most "
                   "its accuracy; one above it says the dense network is under-trained")


def outcome(verdict: str, strict: bool) -> str:
    if verdict == V.HELD or (verdict == V.EQUIVALENT and not strict):
        return REPRODUCED
    if verdict == V.WORSE or (verdict == V.EQUIVALENT and strict):
        return CONTRADICTED
    return verdict                                   # not enough evidence, or not run


def _judge(summary, cfg, ds, arch, better: str, worse: str, sparsities):
    diffs = paired(summary, ds, arch, better, worse, sparsities)
    return diffs, V.judge(diffs, cfg.report.equivalence_margin / 100, cfg.report.alpha)


def _evidence(diffs, j) -> str:
    parts = []
    for d, (low, high) in zip(diffs, j.intervals):
        parts.append(f"s={d.key}: {_pp(d.mean)}" + (f" [{_pp(low)}, {_pp(high)}]" if d.n >= 2 else
                                                     f" ({d.n} seed)"))
    return "; ".join(parts) or "no seed run by both"


def _recovery(summary, cfg, ds, arch, sparsities, methods) -> str:
    """One row: dense >= each retrained method, the methods grouped by outcome."""
    groups: dict[str, list[str]] = {}
    for m in methods:
        diffs, j = _judge(summary, cfg, ds, arch, "dense", m, sparsities)
        groups.setdefault(outcome(j.verdict, strict=False), []).append(
            m if outcome(j.verdict, False) == REPRODUCED else f"{m} (dense - {m}: {_evidence(diffs, j)})")
    verdict = (REPRODUCED if set(groups) == {REPRODUCED} else CONTRADICTED if CONTRADICTED in groups
               else V.UNDECIDED)
    found = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(groups.items()))
    return f"| dense >= every retrained model ({len(methods)}) | {RECOVERY_SOURCE} | **{verdict}** | {found} |"


def _matched(spec: pd.DataFrame, ds, arch, sparsities) -> str | None:
    """The damage-matched control (signature.py) matches what it claims: MBP's full-band accuracy within its
    tolerance, in every seed and evaluation."""
    if spec is None or "matched" not in spec.columns:
        return None
    rows = spec[(spec.dataset == ds) & (spec.arch == arch) & spec.sparsity.isin(sparsities)
                & spec.method.isin(("matched_mask", "matched_mask_bn"))]
    rows = rows.drop_duplicates(["seed", "sparsity", "method"])
    if rows.empty:
        return None
    ok = rows.matched.map(lambda v: v is True or str(v) == "True")
    gaps = ", ".join(f"{100 * float(g):+.1f}" for g in rows.match_gap)
    verdict = REPRODUCED if ok.all() else CONTRADICTED
    return (f"| damage-matched control within its tolerance of MBP | the control is what it claims to be "
            f"(signature.py: a random mask whose full-band validation accuracy matches MBP's) | **{verdict}** | "
            f"matched in {int(ok.sum())} of {len(ok)} (seed, sparsity, evaluation); gaps {gaps} pp |")


def section(summary: pd.DataFrame, spec: pd.DataFrame | None, cfg) -> list[str]:
    """The Calibration section, as lines of Markdown."""
    lines = ["## Calibration: what the literature agrees on", "",
             "Orderings every pruning paper (or the cited one) finds, judged in each cell by the rule of the "
             "Claims below, at the sparsities >= report.min_sparsity. `A >= B` reproduces when A is better or "
             "there is no relevant difference; `A > B` only when A is better. A row that does not reproduce "
             "says so: then the regime, not the paper, is what the verdicts below are about.", ""]
    for ds in cfg.grid.datasets:
        for arch in cfg.grid.archs:
            df = summary[(summary.dataset == ds) & (summary.arch == arch)]
            sparsities = [s for s in cfg.grid.sparsities if s >= cfg.report.min_sparsity]
            methods = [m for m in cfg.grid.methods if m in set(df.method)]
            lines += [f"### {ds} / {arch}", "", "| ordering | source | verdict | found (pp, mean "
                      f"[{100 * (1 - 2 * cfg.report.alpha):g}% t-interval] per sparsity) |", "|---|---|---|---|"]
            if methods and sparsities:
                lines.append(_recovery(summary, cfg, ds, arch, sparsities, methods))
            for o in ORDERINGS:
                if not {o.better, o.worse} <= set(methods) or not sparsities:
                    lines.append(f"| {o.better} {'>' if o.strict else '>='} {o.worse} | {o.source} | "
                                 f"**{V.NOT_RUN}** | not both in this grid |")
                    continue
                diffs, j = _judge(summary, cfg, ds, arch, o.better, o.worse, sparsities)
                lines.append(f"| {o.better} {'>' if o.strict else '>='} {o.worse} | {o.source} | "
                             f"**{outcome(j.verdict, o.strict)}** | {_evidence(diffs, j)} |")
            if (row := _matched(spec, ds, arch, sparsities)) is not None:
                lines.append(row)
            lines.append("")
    return lines
