"""The report's Claims section: every claim pre-declared in report.claims, judged in every (dataset, arch)
cell by the one rule of pipeline/verdicts.py, beside what each side cost; the controls worded from their
numbers; notes on the regime the numbers come from; and each claim across cells.

It reads only summary.csv's rows (and the pruning signature's paired values), so a test can recompute the
Claims section of a committed report from that report's own summary.csv.
"""
from __future__ import annotations

import math

import pandas as pd

from pipeline.config import catalog
from pipeline.report import verdicts as V
from pipeline.config.catalog import CATALOG
from pipeline.config.schema import ClaimCfg, Config
from pipeline.report.signature_table import CONTROLS

BUDGET = {"retrain": "same retraining budget", "dense": "dense schedule", "chain": "chain of prune-retrain rounds"}
SIGNATURE_CLAIM = "MBP keeps the network's low-frequency behaviour better than its high-frequency one"


def claimed_sparsities(cfg: Config, claim: ClaimCfg) -> list[float]:
    """The grid's sparsities a claim covers, in the grid's order."""
    if claim.sparsities is not None:
        return [s for s in cfg.grid.sparsities if s in claim.sparsities]
    low = cfg.report.min_sparsity if claim.min_sparsity is None else claim.min_sparsity
    return [s for s in cfg.grid.sparsities if s >= low]


def _cell(summary: pd.DataFrame, ds: str, arch: str) -> pd.DataFrame:
    return summary[(summary.dataset == ds) & (summary.arch == arch)]


def paired(summary: pd.DataFrame, ds: str, arch: str, method: str, base: str,
           sparsities=None) -> list[V.Difference]:
    """method - base at each sparsity (those of `sparsities`, or every sparsity base was run at): test-accuracy
    differences paired by the seeds run by both. The dense network (sparsity 0) pairs with every sparsity."""
    df = _cell(summary, ds, arch)
    out = []
    for s in sorted(df[df.method == base].sparsity.unique()) if sparsities is None else sparsities:
        pick = (lambda m: (df.method == m) & ((df.sparsity == s) if m != "dense" else True))
        a = df[pick(method)].set_index("seed").test_acc
        b = df[pick(base)].set_index("seed").test_acc
        seeds = sorted(set(a.index) & set(b.index))
        if seeds or sparsities is not None:     # a claimed sparsity without a pair stays: no verdict without it
            out.append(V.difference(s, [a[k] for k in seeds], [b[k] for k in seeds]))
    return out


def _mean_at(df: pd.DataFrame, method: str, sparsities, column: str) -> float:
    rows = df[(df.method == method) & df.sparsity.isin(sparsities)]
    return float(rows[column].mean()) if len(rows) else math.nan


def cost_ratio(summary: pd.DataFrame, ds: str, arch: str, method: str, base: str, sparsities) -> tuple[float, float]:
    """(training images, train seconds) of method over base, means over seeds at the claimed sparsities.
    Training images are epochs x the images of one epoch (summary.csv's train_images where present; else
    epochs, the same dataset on both sides); a chain level's epochs are those its chain had spent."""
    df = _cell(summary, ds, arch)
    col = "train_images" if "train_images" in df.columns else "epochs"
    ratio = [_mean_at(df, method, sparsities, c) / _mean_at(df, base, sparsities, c) for c in (col, "train_seconds")]
    return ratio[0], ratio[1]


def _pp(x: float) -> str:
    return f"{100 * x:+.2f}"


def evidence(diffs: list[V.Difference], j: V.Judgement) -> str:
    """Per sparsity: mean paired difference and its (1 - 2 alpha) t-interval, in percentage points."""
    parts = []
    for d, (low, high) in zip(diffs, j.intervals):
        if d.n == 0:
            parts.append(f"s={d.key}: no seed run by both")
        elif d.n < 2:
            parts.append(f"s={d.key}: {_pp(d.mean)} ({d.n} seed: no interval)")
        else:
            parts.append(f"s={d.key}: {_pp(d.mean)} [{_pp(low)}, {_pp(high)}] ({d.n} seeds)")
    margin = "; *within the margin*" if j.verdict in (V.HELD, V.WORSE) and j.within_margin else ""
    return "; ".join(parts) + margin


def _p(p: float) -> str:
    return "-" if math.isnan(p) else f"{p:.3g}"


def outcome(j: V.Judgement, direction: str) -> str:
    """The verdict on the claim: the rule judges method - baseline; a claim of "worse" is held when the rule
    finds worse, and its opposite is "better"."""
    if direction == "better":
        return j.verdict
    return {V.HELD: "better", V.WORSE: V.HELD}.get(j.verdict, j.verdict)


def claim_p(j: V.Judgement, direction: str) -> float:
    """The intersection-union p-value of the claim as declared."""
    return j.p_better if direction == "better" else j.p_worse


class Judged:
    """One claim in one cell: differences, judgement, cost and power."""

    def __init__(self, summary, cfg: Config, ds: str, arch: str, claim: ClaimCfg):
        self.claim, self.sparsities = claim, claimed_sparsities(cfg, claim)
        methods = set(_cell(summary, ds, arch).method)
        self.run = claim.method in methods and claim.baseline in methods and bool(self.sparsities)
        self.diffs = paired(summary, ds, arch, claim.method, claim.baseline, self.sparsities) if self.run else []
        self.j = V.judge(self.diffs, cfg.report.equivalence_margin / 100, cfg.report.alpha)
        self.verdict = outcome(self.j, claim.direction)
        self.p = claim_p(self.j, claim.direction)
        self.power = V.claim_power(self.diffs, cfg.report.alpha)
        self.cost = cost_ratio(summary, ds, arch, claim.method, claim.baseline, self.sparsities) if self.run \
            else (math.nan, math.nan)

    @property
    def name(self) -> str:
        c = self.claim
        return f"{c.method} vs {c.baseline}" + ("" if c.direction == "better" else " (claimed worse)")

    def why_not_run(self) -> str:
        return "no claimed sparsity in this grid" if not self.sparsities else "not run in this grid"

    def row(self, alpha: float) -> str:
        c = self.claim
        budget = BUDGET[CATALOG[c.baseline].budget]
        if not self.run:
            return f"| {self.name} | {budget} | **{V.NOT_RUN}** | {self.why_not_run()} | - | - | - | - |"
        images, seconds = self.cost
        return (f"| {self.name} | {budget} | **{self.verdict}** | {evidence(self.diffs, self.j)} | "
                f"{_p(self.j.p_better)} / {_p(self.j.p_worse)} | "
                f"{images:.2f} | {seconds:.2f} | {V.power_text(self.power, alpha)} |")


def _table(alpha: float) -> list[str]:
    return [f"| claim | baseline's budget | verdict | difference, pp: mean [{100 * (1 - 2 * alpha):g}% t-interval] "
            "per sparsity | p better / p worse | training images × | train s × | power |",
            "|---|---|---|---|---|---|---|---|"]


def _finding(c: ClaimCfg, j: Judged, floor: Judged | None, margin_pp: float) -> str:
    """A control's result worded from its numbers."""
    if not j.run:
        return j.why_not_run()
    means = [d.mean for d in j.diffs if d.n]
    if not means:
        return "no seed run by both at a claimed sparsity"
    lo, hi = min(means), max(means)
    span = f"{_pp(lo)} pp" if lo == hi else f"{_pp(lo)} to {_pp(hi)} pp"
    text = {V.HELD: f"{c.method} is above {c.baseline} at every claimed sparsity ({span})",
            V.WORSE: f"{c.method} is below {c.baseline} at every claimed sparsity ({span})",
            "better": f"{c.method} is above {c.baseline} at every claimed sparsity ({span})",
            V.EQUIVALENT: f"{c.method} and {c.baseline} differ by less than ±{margin_pp:g} pp at every claimed "
                          f"sparsity",
            V.UNDECIDED: f"neither direction is shown (mean difference {span})"}[j.verdict]
    if floor is not None and floor.run:
        below_mean = all(d.mean < 0 for d in floor.diffs)
        if floor.verdict == V.WORSE:
            text += (f". {c.baseline} is below the random-mask floor ({c.baseline} - {catalog.floor()}: "
                     f"{evidence(floor.diffs, floor.j)}): the control is destructive, so a lead over it shows that "
                     f"{c.baseline} harms, not that what it changes helps")
        elif below_mean:
            text += (f". {c.baseline}'s mean is below the random-mask floor at every claimed sparsity "
                     f"({c.baseline} - {catalog.floor()}: {evidence(floor.diffs, floor.j)}), not shown by the rule")
    return text


def _teacher_note(summary, ds, arch, alpha) -> str | None:
    """Retrained models above their own dense teacher beyond their interval (paired by seed: the one-sided test
    at alpha), with how many survive Holm across the cell's method-sparsity comparisons, and the epochs each
    spent beside the dense model's (the usual reason: a chain or a dense schedule trains longer than it did)."""
    df = _cell(summary, ds, arch)
    found = [(m, d) for m in sorted(set(df.method) - {"dense"}) if "dense" in set(df.method)
             for d in paired(summary, ds, arch, m, "dense", sorted(df[df.method == m].sparsity.unique()))]
    above = [(m, d) for m, d in found if d.p_greater() <= alpha]
    if not above:
        return None
    kept = sum(p <= alpha for p in V.holm([d.p_greater() for _, d in found]) if not math.isnan(p))

    def epochs(rows):            # the epochs column: retraining epochs (dense: training epochs), as in the table
        return f"{rows.epochs.mean():g} epochs"
    parts = []
    for m, d in above:
        low, high = d.interval(1 - 2 * alpha)
        spent = epochs(df[(df.method == m) & (df.sparsity == d.key)])
        parts.append(f"{m} at s={d.key} ({_pp(d.mean)} pp [{_pp(low)}, {_pp(high)}], {spent})")
    one = len(above) == 1
    return (f"**Dense model under-trained**: {', '.join(parts)} beat{'s' if one else ''} the dense teacher "
            f"({epochs(df[df.method == 'dense'])}) beyond {'its' if one else 'their'} {100 * (1 - 2 * alpha):g}% "
            f"t-interval (paired by seed; {len(above)} of the cell's {len(found)} method-sparsity comparisons, "
            f"{kept} after Holm across them). Retraining is still training here: the verdicts are about training, "
            "not recovery.")


def _compute_note(summary, ds, arch) -> str | None:
    """Equal epochs are not equal compute: wall time of the retraining budget's methods over finetune's."""
    df = _cell(summary, ds, arch)
    same = [m for m in sorted(set(df.method)) if m in CATALOG and CATALOG[m].budget == "retrain"]
    if catalog.reference() not in same or len(same) < 2:
        return None
    ref = df[df.method == catalog.reference()].train_seconds.mean()
    epochs = sorted({int(e) for e in df[df.method.isin(same)].epochs})
    ratios = ", ".join(f"{m} {df[df.method == m].train_seconds.mean() / ref:.2f}x" for m in same if m != catalog.reference())
    return (f"**Equal epochs, not equal compute**: the methods of the retraining budget spend "
            f"{' or '.join(map(str, epochs))} epochs each, but their train seconds (mean over seeds and "
            f"sparsities) are {ratios} those of {catalog.reference()}.")


def signature_claim(key: tuple) -> str:
    """The signature's claim, worded with the control it is judged against. key: (evaluation, control,
    measure), as signature_table.signature gives it."""
    return f"{SIGNATURE_CLAIM}, judged against the {key[1]} control"


def signature_test(key: tuple) -> str:
    evaluation, control, measure = key
    return (f"{measure} with the teacher, low-pass - high-pass, MBP topology - {CONTROLS[control]}, {evaluation}, "
            "before retraining")


def _signature_rows(sig: dict, cfg: Config) -> list[str]:
    rows = []
    for key, by_s in sig.items():
        diffs = [V.difference(s, mbp, control) for s, (mbp, control) in sorted(by_s.items())]
        j = V.judge(diffs, cfg.report.equivalence_margin / 100, cfg.report.alpha)
        rows.append(f"| {signature_claim(key)} | {signature_test(key)} | **{j.verdict}** | "
                    + (evidence(diffs, j) if diffs else "no paired value (no radius qualifies, or no control within "
                       "its tolerance)") + " |")
    return rows


def _across(judged: dict, cells: list, cfg: Config) -> list[str]:
    """Each claim over the K cells: counts per cell at alpha, Holm across cells for "in k of K" (a union),
    and "in every cell" (an intersection, no adjustment); then the paper's claim, better than every baseline."""
    alpha, k = cfg.report.alpha, len(cells)
    lines = ["### Across cells", "",
             f"Per claim over the {k} cell(s): the count of cells at alpha {alpha:g} each, the count that survives "
             f"Holm's correction across the {k} cells (family-wise alpha {alpha:g}: \"held in at least one cell\" "
             "is a union), and whether the claim holds in every cell (an intersection: no adjustment).", ""]

    def line(name, ps, verdicts_, opposite=""):
        adj = V.holm(ps)
        held = sum(v == V.HELD for v in verdicts_)
        worse = sum(v in (V.WORSE, "better") for v in verdicts_)
        eq = sum(v == V.EQUIVALENT for v in verdicts_)
        kept = sum(p <= alpha for p in adj if not math.isnan(p))
        return (f"- {name}: held in {held} of {k} (after Holm across cells: {kept}); "
                + (f"{opposite} in {worse}; no relevant difference in {eq}; " if opposite else "")
                + f"held in every cell: {'yes' if held == k else 'no'}")

    for i, c in enumerate(cfg.report.claims):
        js = [judged[cell][i] for cell in cells]
        lines.append(line(js[0].name, [j.p for j in js], [j.verdict for j in js],
                          V.WORSE if c.direction == "better" else "better"))
    # One intersection per proposed method: the paper's (fourier_kd, over the built-in baselines, as the
    # paper claims it), and that of each added proposed method over every baseline it is judged against.
    proposed = dict.fromkeys(c.method for c in cfg.report.claims if CATALOG[c.method].role == "proposed")
    for method in proposed:
        paper = CATALOG[method].source == "built-in"
        base = [i for i, c in enumerate(cfg.report.claims) if c.method == method and c.direction == "better"
                and CATALOG[c.baseline].role == "baseline" and (not paper or CATALOG[c.baseline].source == "built-in")]
        if not base:
            continue
        ps, vs = [], []
        for cell in cells:
            js = [judged[cell][i] for i in base]
            ps.append(max(j.p for j in js) if all(j.run and not math.isnan(j.p) for j in js) else math.nan)
            vs.append(V.HELD if all(j.verdict == V.HELD for j in js) else "not held")
        whose = "the paper's claim" if paper else f"the claim of the added method {method}"
        lines.append(line(f"{whose}, {method} better than every one of its {len(base)} baselines "
                          "(held in a cell only if held against each: an intersection, p = the largest)", ps, vs))
    return lines


def section(summary: pd.DataFrame, cfg: Config, signatures: dict) -> list[str]:
    """The Claims section, as lines of Markdown. signatures: (dataset, arch) -> the pruning signature's
    {(evaluation, control, measure): {sparsity: ([MBP], [control])}} (signature_table.signature)."""
    rep, alpha = cfg.report, cfg.report.alpha
    hardware = ", ".join(sorted(summary.hardware.unique())) if "hardware" in summary else "the report's hardware"
    lines = ["## Claims", "", "Every claim declared in `report.claims` (params.yaml), judged in each cell. "
             + V.rule(rep.equivalence_margin, alpha), "",
             "Columns: the mean paired difference method - baseline per claimed sparsity with its "
             f"{100 * (1 - 2 * alpha):g}% t-interval; the intersection-union p-values of better and of worse at "
             "every claimed sparsity (each the largest per-sparsity one-sided p); training images × and train s ×: "
             "the method's over the baseline's (training images: epochs × images per epoch; train seconds on "
             + hardware + "), means over seeds at the claimed "
             "sparsities; power: the seed sd and what these seeds can detect. A claim covers the grid's sparsities "
             f">= {rep.min_sparsity:g} unless it names its own.", ""]
    cells = [(ds, arch) for ds in cfg.grid.datasets for arch in cfg.grid.archs]
    judged = {}
    for ds, arch in cells:
        js = [Judged(summary, cfg, ds, arch, c) for c in rep.claims]
        judged[ds, arch] = js
        lines += [f"### {ds} / {arch}", ""]
        base = [j for j in js if CATALOG[j.claim.baseline].role != "control"]
        lines += ["Against every baseline:", ""] + _table(alpha) + [j.row(alpha) for j in base] + [""]
        controls = [j for j in js if j.claim.question or CATALOG[j.claim.baseline].role == "control"]
        if controls:
            lines += ["Controls (what each part contributes), worded from the numbers:", "",
                      "| question | comparison | verdict | finding |", "|---|---|---|---|"]
            for j in controls:
                c = j.claim
                floor = None
                if c.baseline != catalog.floor():
                    floor = Judged(summary, cfg, ds, arch, ClaimCfg(c.baseline, catalog.floor(), sparsities=j.sparsities or None))
                lines.append(f"| {c.question or '-'} | {j.name} | **{j.verdict}** | "
                             f"{_finding(c, j, floor, rep.equivalence_margin)} |")
            lines.append("")
        sig = _signature_rows(signatures.get((ds, arch), {}), cfg)
        if sig:
            lines += ["Pruning signature (the paired values of this cell's signature table, above; the same rule):",
                      "",
                      "| claim | test | verdict | evidence |", "|---|---|---|---|"] + sig + [""]
        notes = [n for n in (_teacher_note(summary, ds, arch, alpha), _compute_note(summary, ds, arch)) if n]
        if notes:
            lines += ["Regime notes:", ""] + [f"- {n}" for n in notes] + [""]
    return lines + _across(judged, cells, cfg) + [""]
