"""reinit, the lottery ticket's random-reinitialisation control (Frankle & Carbin 2019): the MBP mask kept,
weights drawn afresh from a seed of their own (never the dense run's initialisation; the same seed, the same
weights), trained with the dense schedule."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from pipeline.core import models, train as T
from pipeline.methods.oneshot import reinit, reinit_seed
from pipeline.core.models import prunable

from .test_methods import CFG, RT, context, data, net  # noqa: F401 - data: a fixture


def test_reinit_seed_is_fixed_and_never_the_models_own():
    seeds = [reinit_seed(s) for s in range(1000)]
    assert seeds == [reinit_seed(s) for s in range(1000)]
    assert all(r != s for s, r in enumerate(seeds)) and len(set(seeds)) == 1000
    assert reinit_seed(0) == int.from_bytes(hashlib.sha256(b"reinit 0").digest()[:4], "big")


def test_begin_keeps_the_mask_and_draws_the_architectures_weights_from_the_reinit_seed():
    ctx = context()
    model = net(seed=0)                          # what the retrain stage builds: the dense run's initialisation
    init = {k: v.clone() for k, v in model.state_dict().items()}
    mask = reinit(ctx).rounds[0].begin(model, None)
    assert mask is ctx.mask
    state = model.state_dict()
    fresh = models.build("resnet20", 4, CFG.model.width, reinit_seed(0)).state_dict()
    assert all(torch.equal(state[k], fresh[k]) for k in fresh)                   # exactly build()'s draw
    for k in prunable(model):                   # every weight differs from the dense init and the trained dense
        assert not torch.equal(state[k], init[k]) and not torch.equal(state[k], ctx.dense[k]), k
    again = net(seed=0)
    reinit(ctx).rounds[0].begin(again, None)
    assert all(torch.equal(again.state_dict()[k], state[k]) for k in state)      # same seed, same weights
    other = net(seed=0)
    reinit(dataclasses.replace(ctx, seed=1)).rounds[0].begin(other, None)
    assert all(not torch.equal(other.state_dict()[k], state[k]) for k in prunable(model))


def test_reinit_trains_the_mask_with_the_dense_schedule(data, tmp_path):  # noqa: F811
    ctx = context()
    recipe = reinit(ctx)
    t = CFG.train
    assert [(r.epochs, r.lr, r.lr_drops, r.gamma, r.schedule) for r in recipe.rounds] == [
        (t.epochs, t.lr, t.lr_drops, t.gamma, t.schedule)]
    res = T.run(recipe, net(seed=0), data, RT, seed=0, ckpt=tmp_path / "r.pt", key="r")
    assert all(torch.equal(res.masks[k], ctx.mask[k]) for k in ctx.mask)
    w = prunable(res.model)
    assert all(torch.equal(w[k].detach() == 0, ~ctx.mask[k]) for k in ctx.mask)
    assert res.epochs == t.epochs


def test_reinit_without_the_architecture_is_refused():
    with pytest.raises(ValueError, match="arch"):
        reinit(dataclasses.replace(context(), arch=None))
