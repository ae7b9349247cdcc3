"""One-shot methods: prune the trained dense network once (the MBP topology, or a control mask), then train.

finetune, finetune_layerwise and random share ONE retraining budget (retrain.*); lr_rewind retrains with the
dense schedule (its budget is train.epochs, reported beside its result).
"""
from __future__ import annotations

from .. import masks as M
from ..models import prunable
from .base import Context, dense_schedule, load, one_shot, recipe


def finetune(ctx: Context):
    return one_shot(ctx, lambda m: ctx.mask)


def finetune_layerwise(ctx: Context):
    return one_shot(ctx, lambda m: M.layerwise_magnitude(prunable(m, ctx.cfg.prune.exclude), ctx.sparsity))


def random(ctx: Context):
    return one_shot(ctx, lambda m: M.random_like(ctx.mask, seed=ctx.seed))


def lr_rewind(ctx: Context):
    """Renda et al. 2020, one-shot: prune once, keep the trained weights, retrain with the dense lr schedule
    rewound."""
    c = ctx.cfg

    def begin(model, _):
        load(model, ctx.dense)
        return ctx.mask
    return recipe(c, [dense_schedule(c, begin=begin)])
