"""What every method's recipe is built from: the Context a method may read, and the one-shot recipe
(load the trained dense weights, apply a mask, retrain with the shared retraining budget)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..train import Recipe, Round, cross_entropy


@dataclass
class Context:
    """What a method may use: the config, the sparsity, the seed, the trained dense weights, the global MBP
    mask at the target sparsity, the dense stage's weight snapshots (for rewinding), and the teacher."""
    cfg: object
    sparsity: float
    seed: int
    dense: dict
    mask: dict
    snapshots: dict
    teacher: torch.nn.Module | None = None
    levels: list[float] | None = None    # iterative methods: every sparsity one shared chain passes (None: one)


def load(model, state):
    """Set the model to `state` (keeping the device)."""
    model.load_state_dict(state)


def recipe(cfg, rounds, **kw) -> Recipe:
    """A recipe with the dense run's optimiser settings (momentum, weight decay, batch size)."""
    t = cfg.train
    return Recipe(rounds, momentum=t.momentum, weight_decay=t.weight_decay, batch_size=t.batch_size, **kw)


def one_shot(ctx: Context, mask_fn, loss=cross_entropy) -> Recipe:
    """Prune once and retrain with THE shared retraining budget (retrain.epochs, retrain.lr, its drops):
    every method built here is compared at equal budget."""
    c = ctx.cfg

    def begin(model, _):
        load(model, ctx.dense)
        return mask_fn(model)
    return recipe(c, [Round(c.retrain.epochs, c.retrain.lr, c.retrain.lr_drops, c.retrain.gamma, begin=begin)],
                  loss=loss)
