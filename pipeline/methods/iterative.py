"""Iterative methods: the mask changes during training.

imp, lth and lth_init prune in rounds along one chain that lands exactly on every grid sparsity
(masks.chain_targets; pipeline/chains.py runs one chain per dense network). gmp prunes gradually while it
trains from the initialisation. Their budgets differ from the one-shot retraining budget and are reported
beside their results.
"""
from __future__ import annotations

import math

from .. import masks as M
from ..models import prunable
from ..train import Round
from .base import Context, dense_schedule, load, recipe


def imp(ctx: Context):
    """Iterative MBP: each round prunes the same fraction of the remaining weights (globally) and fine-tunes
    with the retraining schedule; one chain passes every level (masks.chain_targets), each exactly."""
    c = ctx.cfg
    rounds = []
    for i, (s, level) in enumerate(M.chain_targets(ctx.levels or [ctx.sparsity], c.imp.rounds)):
        def begin(model, masks, s=s, first=i == 0):
            if first:
                load(model, ctx.dense)
            return M.global_magnitude(prunable(model, c.prune.exclude), s, masks)
        rounds.append(Round(c.imp.epochs_per_round, c.retrain.lr, c.retrain.lr_drops, c.retrain.gamma, begin=begin,
                            level=level))
    return recipe(c, rounds)


def _lottery(ctx: Context, k: int):
    """Lottery ticket with rewinding to epoch k: prune the trained weights, rewind the survivors to their
    epoch-k values, train with the dense schedule from epoch k; repeat, the last round landing on the target."""
    c = ctx.cfg
    rewind = ctx.snapshots[k]
    rounds = []
    for i, (s, level) in enumerate(M.chain_targets(ctx.levels or [ctx.sparsity], c.lth.rounds)):
        def begin(model, masks, s=s, first=i == 0):
            if first:
                load(model, ctx.dense)
            new = M.global_magnitude(prunable(model, c.prune.exclude), s, masks)
            load(model, rewind)
            return new
        rounds.append(Round(c.train.epochs - k, c.train.lr, c.train.lr_drops, c.train.gamma,
                            schedule_offset=k, schedule_epochs=c.train.epochs, begin=begin, level=level))
    return recipe(c, rounds)


def lth(ctx: Context):
    """The ticket as its papers run it: late rewinding to epoch lth.rewind_epoch (Frankle et al. 2020;
    Renda et al. 2020)."""
    return _lottery(ctx, ctx.cfg.lth.rewind_epoch)


def lth_init(ctx: Context):
    """The original lottery ticket (Frankle & Carbin 2019): survivors rewound to the initialisation."""
    return _lottery(ctx, 0)


def rewind_epoch(cfg, method: str) -> int | None:
    """The dense epoch whose weights a method rewinds to (None: it does not rewind)."""
    return {"lth": cfg.lth.rewind_epoch, "lth_init": 0}.get(method)


def gmp_epochs(epochs: int, start: float, end: float) -> tuple[int, int]:
    """The epochs where gradual pruning starts and reaches the target (end <= the last epoch, so the final
    epochs always train the fixed target mask)."""
    # round(.., 9): the decimal product, not its float error (0.29 * 100 = 28.999999999999996 would give 28)
    e0 = min(math.floor(round(start * epochs, 9)), epochs - 1)
    e1 = min(epochs - 1, max(e0 + 1, round(end * epochs)))
    return e0, max(e0, e1)


def gmp(ctx: Context):
    """Zhu & Gupta 2017: from the initialisation, sparsity rises on the cubic schedule from 0 to the target
    between two epochs (masks updated at each epoch start, magnitudes global), then the mask stays fixed."""
    c = ctx.cfg
    e0, e1 = gmp_epochs(c.train.epochs, c.gmp.start, c.gmp.end)

    def hook(model, masks, epoch):
        s = M.cubic_sparsity(epoch, e0, e1, ctx.sparsity) if e1 > e0 else ctx.sparsity
        return M.global_magnitude(prunable(model, c.prune.exclude), s, masks)
    # No begin hook: the retrain stage builds the network from the seed, i.e. the dense run's initialisation.
    return recipe(c, [dense_schedule(c)], epoch_hook=hook)
