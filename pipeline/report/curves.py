"""Learning curves and the convergence criterion, computed before any verdict is read.

Every model's metrics.json holds its validation accuracy after each epoch (`val_history`; a chain level's:
every round up to that level). A dense teacher has converged when the last `report.converged_tail` of its
epochs added less than `report.converged_gain` percentage points of validation accuracy, mean over seeds
(params.yaml): below that, a retrained model beating it says more about training time than about recovery.
"""
from __future__ import annotations

import math

import pandas as pd


def rows(key: dict, history: list[float]) -> list[dict]:
    """curves.csv's rows of one model: its key, each epoch (from 1) and the validation accuracy after it."""
    return [{**key, "epoch": e, "val_acc": a} for e, a in enumerate(history, 1)]


def gain(history: list[float], tail: float) -> float:
    """What the last `tail` of the epochs added: the last epoch's accuracy minus the one just before them
    (NaN when the history is too short to have both)."""
    n, q = len(history), max(1, math.ceil(tail * len(history)))
    return history[-1] - history[n - q - 1] if n > q else math.nan


def dense_gains(curves: pd.DataFrame, ds: str, arch: str, tail: float) -> dict[int, float]:
    """seed -> the gain of its dense model's last epochs."""
    if curves.empty:
        return {}
    d = curves[(curves.dataset == ds) & (curves.arch == arch) & (curves.method == "dense")]
    return {int(seed): gain(g.sort_values("epoch").val_acc.tolist(), tail) for seed, g in d.groupby("seed")}


def converged(curves: pd.DataFrame, ds: str, arch: str, cfg) -> bool | None:
    """Converged by the stated criterion; None when no dense history can say (reports before val_history)."""
    return _below(dense_gains(curves, ds, arch, cfg.report.converged_tail), cfg.report.converged_gain)


def _below(gains: dict[int, float], margin_pp: float) -> bool | None:
    """The mean gain over the seeds that have one, below the margin; None when no seed has one."""
    have = [g for g in gains.values() if not math.isnan(g)]
    return None if not have else 100 * sum(have) / len(have) < margin_pp


def section(curves: pd.DataFrame, ds: str, arch: str, cfg, figure: str | None) -> list[str]:
    """The report's lines: the criterion, each seed's gain, the verdict, and the figure."""
    rep = cfg.report
    gains = dense_gains(curves, ds, arch, rep.converged_tail)
    head = ["### Learning curves and convergence", ""]
    if not gains:
        return head + ["No validation history in these models' metrics.json (written before it was recorded): "
                       "rerun their jobs for learning curves.", ""]
    ok = _below(gains, rep.converged_gain)
    each = ", ".join(f"seed {s}: {100 * g:+.2f}" if not math.isnan(g) else f"seed {s}: too few epochs"
                     for s, g in sorted(gains.items()))
    said = {True: "**converged**", False: "**not converged**", None: "**not measurable** (too few epochs)"}[ok]
    lines = head + [f"Criterion (params.yaml report.converged_*, stated before the runs): a dense model has "
                    f"converged when the last {rep.converged_tail:.0%} of its epochs add less than "
                    f"{rep.converged_gain:g} percentage points of validation accuracy, mean over seeds. "
                    f"Gain over that tail: {each}. Dense models: {said}.", ""]
    if figure:
        lines += [f"![learning curves]({figure})", ""]
    return lines
