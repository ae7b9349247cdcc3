"""One-shot methods: prune the trained dense network once (the MBP topology, or a control mask), then train.

finetune, finetune_layerwise and random share ONE retraining budget (retrain.*); lr_rewind and reinit train
with the dense schedule (their budget is train.epochs, reported beside their results).
"""
from __future__ import annotations

import hashlib

from pipeline.core import masks as M, models
from pipeline.core.models import prunable
from pipeline.methods.base import Context, dense_round, load, one_shot, recipe


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
    return recipe(c, [dense_round(c, begin=begin)])


def reinit_seed(seed: int) -> int:
    """The seed of reinit's fresh weights: drawn from the model's seed (the same seed, the same weights), never
    the seed of its dense initialisation."""
    return int.from_bytes(hashlib.sha256(f"reinit {seed}".encode()).digest()[:4], "big")


def reinit(ctx: Context):
    """The lottery ticket's random-reinitialisation control (Frankle & Carbin 2019): the MBP mask, with weights
    drawn afresh (the architecture's initialisation from reinit_seed, not the dense run's), trained with the
    dense schedule. What the mask alone gives, without the trained or the original initial weights."""
    c = ctx.cfg
    if ctx.arch is None:
        raise ValueError("reinit needs the architecture (Context.arch) to draw fresh weights")

    def begin(model, _):
        classes = model.fc.out_features                # both CIFAR families end in `fc`
        load(model, models.build(ctx.arch, classes, c.model.width, reinit_seed(ctx.seed)).state_dict())
        return ctx.mask
    return recipe(c, [dense_round(c, begin=begin)])
