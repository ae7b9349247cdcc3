"""LAMP, a pruning method added from outside the suite (README: Adding a method): nothing under pipeline/ names it.

Lee, Park, Mo, Ahn & Shin, "Layer-adaptive sparsity for the magnitude-based pruning", ICLR 2021. Within each
layer, sort the weights by magnitude (ascending); the score of weight u is

    score(u) = w_u^2 / sum_{v >= u} w_v^2        (v >= u: the weights of that layer at least as large as u)

and the weights with the lowest scores are pruned globally, across layers. The largest weight of every layer
scores 1, so no layer is emptied; the per-layer sparsities follow from the scores (no hand-set schedule). It is
a traditional magnitude-based pruning method, exactly in the family the paper claims to beat.

Use it in an experiment:

    methods:
      extra: [examples.lamp]      # this module (importable from the project root)
      roles: {lamp: proposed}     # judged against every baseline, as fourier_kd is (default: baseline)
    grid:
      methods: [finetune, ..., lamp]

Its retraining is the shared one-shot budget (retrain.*), as finetune's: only the mask differs. The top level
of this module stays torch-free (the Snakefile reads its record); the recipe imports what it uses.
"""
from __future__ import annotations

from pipeline.config.catalog import Method


def lamp_scores(weight, power: float = 2.0):
    """LAMP scores of one layer's weights, same shape: |w_u|^p / sum over v >= u of |w_v|^p, in the
    ascending order of magnitude (ties: by position, as the suite's masks break them)."""
    import torch
    a = weight.detach().abs().float().flatten() ** power
    order = torch.argsort(a, stable=True)
    ranked = a[order]
    tail = ranked.flip(0).cumsum(0).flip(0)          # sum of the weights at least as large, each position
    scores = torch.empty_like(a)
    scores[order] = ranked / tail.clamp_min(torch.finfo(tail.dtype).tiny)
    return scores.view_as(weight)


def lamp_mask(weights: dict, sparsity: float, power: float = 2.0) -> dict:
    """The LAMP mask at `sparsity`: exactly round(sparsity * n) of the n weights pruned, the lowest scores
    first, across layers (pipeline.core.masks.global_magnitude on the scores, which are non-negative)."""
    from pipeline.core import masks
    return masks.global_magnitude({n: lamp_scores(w, power) for n, w in weights.items()}, sparsity)


def lamp(ctx):
    """The recipe: the trained dense weights, the LAMP mask at the target sparsity, then the shared retraining
    budget (the one-shot builder every equal-budget method uses)."""
    from pipeline.methods.base import one_shot
    from pipeline.core.models import prunable
    power = ctx.cfg.methods.options["lamp"]["power"]
    return one_shot(ctx, lambda model: lamp_mask(prunable(model, ctx.cfg.prune.exclude), ctx.sparsity, power))


METHODS = (
    Method("lamp", family="one-shot", role="baseline", budget="retrain",
           params=("retrain", "train", "model", "prune", "runtime"),
           paper="Lee et al. 2021 (ICLR), LAMP: layer-adaptive scores w^2 / (sum of the larger weights' w^2), "
                 "pruned globally",
           step="masked", color="#8c6d31", recipe=lamp,
           options={"power": 2.0}),     # the score's exponent: 2 in Lee et al. (squared magnitudes)
)
