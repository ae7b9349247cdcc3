"""Verdicts the numbers can carry: a claim is judged on paired differences (one per seed) at several
sparsities, with a correction for testing several sparsities at once and an equivalence test for "not held".

The rule (RULE below, printed in every report):
- **held**: every Holm-adjusted interval lies above 0;
- **not held**: some Holm-adjusted interval lies wholly below 0, or two one-sided tests (TOST) show the
  difference within +-margin at every sparsity (an intersection-union test: no adjustment is needed);
- **not enough evidence**: anything else, and always with fewer than MIN_SEEDS seeds at some sparsity.

Holm-adjusted intervals: with m comparisons sorted by their two-sided t-test p-value, the k-th is given the
t-interval at level 1 - alpha / (m - k + 1), the level at which Holm's step-down tests it; after the first
comparison Holm does not reject, every later one keeps that level (so an interval excludes 0 exactly when
Holm rejects). Differences are in the units given (fractions of accuracy in this project).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

ALPHA = 0.05
MIN_SEEDS = 3
HELD, NOT_HELD, UNDECIDED = "held", "not held", "not enough evidence"


@dataclass
class Difference:
    """The paired difference of one comparison at one sparsity: n seeds, mean and sample sd."""
    key: object
    n: int
    mean: float
    sd: float

    def interval(self, level: float) -> tuple[float, float]:
        if self.n < 2:
            return math.nan, math.nan
        half = stats.t.ppf(0.5 + level / 2, self.n - 1) * self.sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    def p_value(self) -> float:
        """Two-sided one-sample t-test of a mean difference of 0."""
        if self.n < 2:
            return math.nan
        if self.sd == 0:
            return 0.0 if self.mean != 0 else 1.0
        return float(2 * stats.t.sf(abs(self.mean) / (self.sd / math.sqrt(self.n)), self.n - 1))


def difference(key, a, b) -> Difference:
    """a - b, paired element by element (same seed)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = sum(d) / n if n else math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1)) if n >= 2 else math.nan
    return Difference(key, n, mean, sd)


def holm_levels(diffs: list[Difference], alpha: float = ALPHA) -> list[float]:
    """The confidence level of each comparison's Holm-adjusted interval (same order as `diffs`)."""
    m = len(diffs)
    order = sorted(range(m), key=lambda i: diffs[i].p_value())
    levels = [math.nan] * m
    rejecting = True
    level = 1 - alpha / m
    for k, i in enumerate(order):
        if rejecting:
            level = 1 - alpha / (m - k)
            rejecting = diffs[i].p_value() <= alpha / (m - k)
        levels[i] = level
    return levels


def equivalent(d: Difference, margin: float, alpha: float = ALPHA) -> bool:
    """TOST at `alpha`: the (1 - 2 alpha) interval lies strictly inside (-margin, +margin)."""
    low, high = d.interval(1 - 2 * alpha)
    return d.n >= 2 and -margin < low and high < margin


@dataclass
class Judgement:
    verdict: str
    intervals: list[tuple[float, float, float]]   # (level, low, high) per difference, Holm-adjusted
    equivalence: bool                               # TOST shows |difference| < margin at every sparsity


def judge(diffs: list[Difference], margin: float, alpha: float = ALPHA, min_seeds: int = MIN_SEEDS) -> Judgement:
    """The verdict of one claim from its differences at every sparsity (see the module's docstring)."""
    if not diffs:
        return Judgement("not run", [], False)
    levels = holm_levels(diffs, alpha)
    intervals = [(lv, *d.interval(lv)) for lv, d in zip(levels, diffs)]
    eq = all(equivalent(d, margin, alpha) for d in diffs)
    if any(d.n < min_seeds for d in diffs):
        verdict = UNDECIDED
    elif all(low > 0 for _, low, _ in intervals):
        verdict = HELD
    elif any(high < 0 for _, _, high in intervals) or eq:
        verdict = NOT_HELD
    else:
        verdict = UNDECIDED
    return Judgement(verdict, intervals, eq)


def rule(margin_pp: float, alpha: float = ALPHA, min_seeds: int = MIN_SEEDS) -> str:
    """The rule, as the report states it."""
    return (f"**held** if every Holm-adjusted {100 * (1 - alpha):.0f}% interval of the paired difference "
            f"(across the sparsities of one claim) lies above 0; **not held** if some adjusted interval lies "
            f"wholly below 0, or if two one-sided tests (TOST, {100 * (1 - 2 * alpha):.0f}% intervals) show the "
            f"difference within ±{margin_pp:g} percentage points at every sparsity (marked *equivalent*); "
            f"otherwise **not enough evidence**, and always so with fewer than {min_seeds} seeds. Holm-adjusted: "
            f"the k-th smallest p-value of m is tested at level {alpha:g}/(m - k + 1) and its interval drawn at "
            "that level (later ones keep the level of the first comparison Holm does not reject).")
