"""What every method's recipe is built from: the Context a method may read (its teacher frozen), the dense
schedule (the dense stage, lr_rewind and gmp train with it), and the one-shot recipe (load the trained dense
weights, apply a mask, retrain with the shared retraining budget)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.core.train import Recipe, Round, cross_entropy


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
    arch: str | None = None              # the network's architecture (reinit draws it afresh)

    def __post_init__(self):
        # Frozen here, where every path (the retrain stage, benchmarks, tests) hands a method its teacher.
        if self.teacher is not None:
            freeze(self.teacher)


def freeze(teacher: torch.nn.Module) -> torch.nn.Module:
    """The dense teacher as distillation needs it (Hinton et al. 2015: a fixed network): eval mode, so its
    batch norm uses its own running statistics and never updates them on distillation batches, and no
    gradients. Returns it."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def load(model, state):
    """Set the model to `state` (keeping the device)."""
    model.load_state_dict(state)


def recipe(cfg, rounds, **kw) -> Recipe:
    """A recipe with the dense run's optimiser settings (momentum, weight decay, batch size)."""
    t = cfg.train
    return Recipe(rounds, momentum=t.momentum, weight_decay=t.weight_decay, batch_size=t.batch_size, **kw)


def retrain_round(cfg, epochs: int, **kw) -> Round:
    """`epochs` at the retraining lr and its schedule (retrain.*): the one-shot budget, and each imp round."""
    r = cfg.retrain
    return Round(epochs, r.lr, r.lr_drops, r.gamma, schedule=r.schedule, **kw)


def dense_round(cfg, rewind: int = 0, **kw) -> Round:
    """The dense schedule (train.*), from epoch `rewind` of it to its end: the dense run (0), lth's rounds
    (the rewind epoch), lrr's rounds, lr_rewind, reinit and gmp (0)."""
    t = cfg.train
    return Round(t.epochs - rewind, t.lr, t.lr_drops, t.gamma, schedule=t.schedule, schedule_offset=rewind,
                 schedule_epochs=t.epochs, **kw)


def dense_recipe(cfg) -> Recipe:
    """The dense stage: the dense schedule from the initialisation, the weights of train.save_epochs kept."""
    return recipe(cfg, [dense_round(cfg)], snapshots=cfg.train.save_epochs)


def one_shot(ctx: Context, mask_fn, loss=cross_entropy) -> Recipe:
    """Prune once and retrain with THE shared retraining budget (retrain.epochs, retrain.lr, its schedule):
    every method built here is compared at equal budget."""
    c = ctx.cfg

    def begin(model, _):
        load(model, ctx.dense)
        return mask_fn(model)
    return recipe(c, [retrain_round(c, c.retrain.epochs, begin=begin)], loss=loss)
