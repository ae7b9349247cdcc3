"""Iterative methods: the mask changes during training.

imp, lth, lth_init and lrr prune a fixed fraction of the remaining weights per round (imp.rate, lth.rate,
lrr.rate: 20% in open_lth, Frankle & Carbin 2019, Renda et al. 2020) along one chain that lands exactly on
every grid sparsity (masks.chain_targets; pipeline/chains.py runs one chain per dense network). They differ
in what each round trains from and with which lr schedule. gmp prunes gradually while it trains from the
initialisation. Their budgets differ from the one-shot retraining budget and are reported beside their
results.
"""
from __future__ import annotations

import math

from pipeline.planning.budget import chain_targets
from pipeline.config import catalog
from pipeline.core import masks as M
from pipeline.core.models import prunable
from pipeline.methods.base import Context, dense_round, load, recipe, retrain_round


def _chain(ctx: Context, rate: float, make_round, rewind: dict | None = None):
    """The rounds of an iterative chain: round i prunes the current weights (round 0: the trained dense ones)
    globally to its target (masks.chain_targets at `rate`), never reviving a pruned weight; with `rewind`, the
    network is then set to those weights (the ticket's rewinding). make_round(begin, level) -> the Round."""
    c = ctx.cfg
    rounds = []
    for i, (s, level) in enumerate(chain_targets(ctx.levels or [ctx.sparsity], rate)):
        def begin(model, masks, s=s, first=i == 0):
            if first:
                load(model, ctx.dense)
            new = M.global_magnitude(prunable(model, c.prune.exclude), s, masks)
            if rewind is not None:
                load(model, rewind)
            return new
        rounds.append(make_round(begin, level))
    return recipe(c, rounds)


def imp(ctx: Context):
    """Iterative MBP (Han et al. 2015): each round prunes imp.rate of the remaining weights (globally) and
    fine-tunes with the retraining schedule; one chain passes every level (masks.chain_targets), each exactly."""
    c = ctx.cfg
    return _chain(ctx, c.imp.rate, lambda b, lv: retrain_round(c, c.imp.epochs_per_round, begin=b, level=lv))


def _lottery(ctx: Context, k: int):
    """Lottery ticket with rewinding to epoch k: prune the trained weights, rewind the survivors to their
    epoch-k values, train with the dense schedule from epoch k; repeat, the last round landing on the target."""
    c = ctx.cfg
    return _chain(ctx, c.lth.rate, lambda b, lv: dense_round(c, rewind=k, begin=b, level=lv), ctx.snapshots[k])


def lth(ctx: Context):
    """The ticket as its papers run it: late rewinding to epoch lth.rewind_epoch (Frankle et al. 2020;
    Renda et al. 2020)."""
    return _lottery(ctx, catalog.rewind_epoch(ctx.cfg, "lth"))


def lth_init(ctx: Context):
    """The original lottery ticket (Frankle & Carbin 2019): survivors rewound to the initialisation."""
    return _lottery(ctx, catalog.rewind_epoch(ctx.cfg, "lth_init"))


def lrr(ctx: Context):
    """Iterative learning-rate rewinding (Renda et al. 2020, their main algorithm): each round prunes
    lrr.rate of the remaining weights (globally) and retrains the TRAINED survivors (no weight rewinding) with
    the whole dense lr schedule (train.*) from its first epoch; one chain passes every level, each exactly."""
    c = ctx.cfg
    return _chain(ctx, c.lrr.rate, lambda b, lv: dense_round(c, begin=b, level=lv))


def gmp_epochs(epochs: int, start: float, end: float) -> tuple[int, int]:
    """The epochs where gradual pruning starts and reaches the target (end <= the last epoch, so the final
    epochs always train the fixed target mask)."""
    # round(.., 9): the decimal product, not its float error (0.29 * 100 = 28.999999999999996 would give 28)
    e0 = min(math.floor(round(start * epochs, 9)), epochs - 1)
    e1 = min(epochs - 1, max(e0 + 1, round(end * epochs)))
    return e0, max(e0, e1)


def gmp(ctx: Context):
    """Zhu & Gupta 2017: from the initialisation, sparsity rises on the cubic schedule from 0 to the target
    between two epochs (masks updated at each epoch start), then the mask stays fixed. gmp.scope "layer" (their
    algorithm) prunes every layer to s_t; "global" ranks every prunable weight against one threshold."""
    c = ctx.cfg
    e0, e1 = gmp_epochs(c.train.epochs, c.gmp.start, c.gmp.end)
    prune = M.layerwise_magnitude if c.gmp.scope == "layer" else M.global_magnitude

    def hook(model, masks, epoch):
        s = M.cubic_sparsity(epoch, e0, e1, ctx.sparsity) if e1 > e0 else ctx.sparsity
        return prune(prunable(model, c.prune.exclude), s, masks)
    # No begin hook: the retrain stage builds the network from the seed, i.e. the dense run's initialisation.
    return recipe(c, [dense_round(c)], epoch_hook=hook)
