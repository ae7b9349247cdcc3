"""Verdicts the numbers can carry, by one rule held to equal standards in both directions.

A claim compares a method with a baseline over the sparsities it is declared for (config: report.claims).
At each sparsity the evidence is the paired difference method - baseline, one value per seed (in the units
given: fractions of accuracy in this project). With alpha = report.alpha:

- **held** (better): a one-sided paired t-test rejects "difference <= 0" at alpha at EVERY claimed sparsity.
  Better everywhere is an intersection of hypotheses (an intersection-union test, Berger 1982): its p-value
  is the largest of the per-sparsity p-values, and it needs no multiplicity adjustment.
- **worse**: the same test in the other direction ("difference >= 0" rejected at alpha at every sparsity).
- **no relevant difference**: two one-sided tests (TOST, each at alpha) put the difference within
  +-margin at every sparsity (again an intersection: no adjustment).
- **not enough evidence**: anything else, and always with fewer than MIN_SEEDS seeds at some sparsity (no
  seed-to-seed spread can be estimated from one seed).

"held" and "worse" come before "no relevant difference" (a difference shown to exist but smaller than the
margin is reported as held or worse and marked *within the margin*). Each test at alpha is read off the
per-sparsity two-sided (1 - 2 alpha) t-interval: above 0 (held), below 0 (worse), inside (-margin, +margin)
(equivalent). Those intervals cover their own sparsity's true difference with probability 1 - 2 alpha each;
they are not simultaneous intervals.

Statements over several cells or claims that say "in at least one" (a union) are corrected: `holm` gives
Holm-adjusted p-values across them (family-wise error alpha).

Power (`power`, `detectable`, `seeds_needed`): the probability that "held" is reached when the true
difference is delta at each of m sparsities, with seed-to-seed sd sigma and n seeds. Each sparsity's test
rejects with the noncentral-t probability p1; the claim needs all m, and when the sparsities' differences are
independent that is p1 ** m (a lower bound when they are positively correlated, as paired seeds make them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import optimize, special

RULE_VERSION = 2          # printed with the rule in every report: tests recompute reports that declare it
ALPHA = 0.05
MIN_SEEDS = 2             # a sample sd needs two seeds
POWER = 0.8
HELD, WORSE, EQUIVALENT, UNDECIDED, NOT_RUN = "held", "worse", "no relevant difference", "not enough evidence", \
    "not run"


@dataclass
class Difference:
    """The paired difference of one comparison at one sparsity: n seeds, mean and sample sd."""
    key: object
    n: int
    mean: float
    sd: float

    def _t(self, null: float = 0.0) -> float:
        """t statistic of (mean - null); +-inf when every seed gives the same difference."""
        if self.sd == 0:
            return math.copysign(math.inf, self.mean - null) if self.mean != null else 0.0
        return (self.mean - null) / (self.sd / math.sqrt(self.n))

    def p_greater(self, null: float = 0.0) -> float:
        """One-sided p-value of H0: true difference <= null."""
        return float(special.stdtr(self.n - 1, -self._t(null))) if self.n >= 2 else math.nan

    def p_less(self, null: float = 0.0) -> float:
        """One-sided p-value of H0: true difference >= null."""
        return float(special.stdtr(self.n - 1, self._t(null))) if self.n >= 2 else math.nan

    def p_equivalent(self, margin: float) -> float:
        """TOST p-value of H0: |true difference| >= margin."""
        return max(self.p_greater(-margin), self.p_less(margin))

    def interval(self, level: float) -> tuple[float, float]:
        """Two-sided t-interval at `level`."""
        if self.n < 2:
            return math.nan, math.nan
        half = float(special.stdtrit(self.n - 1, 0.5 + level / 2)) * self.sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half


def difference(key, a, b) -> Difference:
    """a - b, paired element by element (same seed)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = sum(d) / n if n else math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1)) if n >= 2 else math.nan
    return Difference(key, n, mean, sd)


@dataclass
class Judgement:
    verdict: str
    level: float                           # two-sided level of `intervals` (1 - 2 alpha)
    intervals: list[tuple[float, float]]   # per sparsity, same order as the differences
    p_better: float                        # intersection-union p-value of "better at every sparsity"
    p_worse: float                         # ... of "worse at every sparsity"
    p_equivalent: float                    # ... of "within +-margin at every sparsity" (TOST)
    alpha: float = ALPHA

    @property
    def within_margin(self) -> bool:
        return self.p_equivalent <= self.alpha


def judge(diffs: list[Difference], margin: float, alpha: float = ALPHA, min_seeds: int = MIN_SEEDS) -> Judgement:
    """The verdict of one claim from its differences at every claimed sparsity (module docstring)."""
    if not diffs:
        return Judgement(NOT_RUN, 1 - 2 * alpha, [], math.nan, math.nan, math.nan, alpha)
    intervals = [d.interval(1 - 2 * alpha) for d in diffs]
    if any(d.n < min_seeds for d in diffs):
        return Judgement(UNDECIDED, 1 - 2 * alpha, intervals, math.nan, math.nan, math.nan, alpha)
    p_better = max(d.p_greater() for d in diffs)
    p_worse = max(d.p_less() for d in diffs)
    p_eq = max(d.p_equivalent(margin) for d in diffs)
    verdict = HELD if p_better <= alpha else WORSE if p_worse <= alpha else EQUIVALENT if p_eq <= alpha \
        else UNDECIDED
    return Judgement(verdict, 1 - 2 * alpha, intervals, p_better, p_worse, p_eq, alpha)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (same order; nan stays nan and counts as one of the m tests): the union
    "some hypothesis is false" is rejected at alpha for each adjusted p-value <= alpha, family-wise."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: math.inf if math.isnan(pvalues[i]) else pvalues[i])
    out, running = [math.nan] * m, 0.0
    for k, i in enumerate(order):
        if math.isnan(pvalues[i]):
            continue
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        out[i] = running
    return out


# ------------------------------------------------------------------------------------------------ power


def power(delta: float, sd: float, n: int, m: int = 1, alpha: float = ALPHA) -> float:
    """P(held) with true difference delta at each of m independent sparsities, seed sd `sd`, n seeds."""
    if n < MIN_SEEDS:
        return 0.0
    crit = special.stdtrit(n - 1, 1 - alpha)
    return (1 - float(special.nctdtr(n - 1, delta * math.sqrt(n) / sd, crit))) ** m


def detectable(sd: float, n: int, m: int = 1, alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest difference (at every sparsity) that reaches "held" with probability `target`."""
    if n < MIN_SEEDS or not sd > 0:
        return math.nan
    hi = sd
    while power(hi, sd, n, m, alpha) < target:
        hi *= 2
    return float(optimize.brentq(lambda d: power(d, sd, n, m, alpha) - target, 0.0, hi, xtol=1e-12 * hi))


def seeds_needed(delta: float, sd: float, m: int = 1, alpha: float = ALPHA, target: float = POWER,
                 most: int = 10_000) -> int | None:
    """The fewest seeds that reach "held" with probability `target` at true difference delta; None if more
    than `most`."""
    if not sd > 0:
        return None
    for n in range(MIN_SEEDS, most + 1):
        if power(delta, sd, n, m, alpha) >= target:
            return n
    return None


@dataclass
class Power:
    sd: float                  # pooled seed-to-seed sd of the paired differences
    n: int                     # seeds (the fewest at any claimed sparsity)
    m: int                     # claimed sparsities
    detectable: float          # smallest difference detected with POWER at alpha (nan: cannot say)
    seeds: dict                # difference -> seeds needed (None: more than 10,000)


def claim_power(diffs: list[Difference], alpha: float = ALPHA, targets=(0.005, 0.01)) -> Power | None:
    """Power of a claim as run: the sd pooled over its sparsities (mean of the variances), its seeds."""
    if not diffs or any(d.n < MIN_SEEDS for d in diffs):
        return None
    n, m = min(d.n for d in diffs), len(diffs)
    sd = math.sqrt(sum(d.sd ** 2 for d in diffs) / m)
    return Power(sd, n, m, detectable(sd, n, m, alpha), {t: seeds_needed(t, sd, m, alpha) for t in targets})


def power_text(p: Power | None, alpha: float = ALPHA) -> str:
    """The power line of a claim, in percentage points."""
    if p is None:
        return f"no power estimate (fewer than {MIN_SEEDS} seeds: no seed-to-seed spread)"
    if not p.sd > 0:
        return f"seed sd 0.00 pp over {p.n} seeds: every seed gave the same difference (no power estimate)"
    need = "; ".join(f"{100 * t:g} pp needs {'over 10,000' if k is None else k} seeds" for t, k in p.seeds.items())
    return (f"seed sd {100 * p.sd:.2f} pp ({p.n} seeds, {p.m} sparsit{'y' if p.m == 1 else 'ies'}): "
            f"{100 * POWER:.0f}% power at alpha {alpha:g} for a difference of {100 * p.detectable:.2f} pp at every "
            f"sparsity; {need}")


def rule(margin_pp: float, alpha: float = ALPHA, min_seeds: int = MIN_SEEDS) -> str:
    """The rule, as every report states it (the module's docstring, in short)."""
    lv = 100 * (1 - 2 * alpha)
    return (f"Verdict rule v{RULE_VERSION} (`pipeline/verdicts.py`), for a claim over its declared sparsities, on "
            f"the paired per-seed differences method - baseline: **held** if a one-sided paired t-test at alpha = "
            f"{alpha:g} shows the method better at EVERY claimed sparsity (an intersection-union test: its "
            f"p-value is the largest per-sparsity p-value, with no adjustment); **worse** if the same test in "
            f"the other direction shows it worse at every sparsity; **no relevant difference** if two one-sided "
            f"tests (TOST, alpha = {alpha:g} each) put the difference within ±{margin_pp:g} percentage points at "
            f"every sparsity; otherwise **not enough evidence**, and always so with fewer than {min_seeds} "
            f"seeds. held and worse come first (a difference shown but smaller than the margin is marked "
            f"*within the margin*). Intervals are per-sparsity two-sided {lv:g}% t-intervals (each covers its "
            f"own sparsity's difference {lv:g}% of the time; not simultaneous): held = every interval above 0, "
            f"worse = every interval below 0, no relevant difference = every interval inside ±{margin_pp:g}. "
            f"Counts over cells (\"held in k of K\") are unions and are Holm-corrected across the cells "
            f"(family-wise alpha = {alpha:g}); \"held in every cell\" is again an intersection. Power: "
            f"the seed sd pooled over the claimed sparsities, the smallest difference found held with "
            f"{100 * POWER:.0f}% power at these seeds (noncentral t, sparsities taken as independent: a lower "
            f"bound on power), and the seeds needed for 0.5 and 1 point.")
