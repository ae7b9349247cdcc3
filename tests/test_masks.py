"""Masks (pipeline/core/masks.py): exact counts, the right weights kept, schedules, compatibility checks."""
from __future__ import annotations

import pytest
import torch

from pipeline.core import masks as M, models


def layers(seed=0) -> dict:
    """A few 'layers' of different shapes and scales, so that global and layer-wise pruning differ."""
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(8, 3, 3, 3, generator=g) * 0.1,
            "b.weight": torch.randn(16, 8, 3, 3, generator=g),
            "c.weight": torch.randn(10, 16, generator=g) * 3.0}


def zeros(mask: dict) -> dict:
    return {n: int((~m).sum()) for n, m in mask.items()}


SPARSITIES = [0.0, 0.333, 0.5, 0.9, 0.98]


# ------------------------------------------------------------------------------------------ global MBP


@pytest.mark.parametrize("s", SPARSITIES)
def test_global_magnitude_prunes_exactly_round_s_n(s):
    w = layers()
    n = sum(t.numel() for t in w.values())
    mask = M.global_magnitude(w, s)
    assert sum(zeros(mask).values()) == round(s * n)
    assert all(mask[k].shape == w[k].shape and mask[k].dtype == torch.bool for k in w)


@pytest.mark.parametrize("s", [0.333, 0.5, 0.9])
def test_global_magnitude_keeps_the_largest_magnitudes(s):
    w = layers()
    flat = torch.cat([t.abs().flatten() for t in w.values()])
    kept = torch.cat([m.flatten() for m in M.global_magnitude(w, s).values()])
    expected = torch.zeros_like(kept)
    expected[flat.topk(len(flat) - round(s * len(flat))).indices] = True
    assert torch.equal(kept, expected)


def test_global_magnitude_is_global_not_per_layer():
    # Layer a is 10x smaller than b: one global threshold prunes it far more than the target.
    mask = M.global_magnitude(layers(), 0.5)
    z = zeros(mask)
    assert z["a.weight"] / mask["a.weight"].numel() > 0.9      # small-scale layer: far above the target
    assert z["c.weight"] / mask["c.weight"].numel() < 0.5      # large-scale layer: below it


def test_ties_are_broken_by_position():
    # All magnitudes equal: the earliest positions go first, so the mask is deterministic.
    w = {"x": torch.ones(10), "y": -torch.ones(10)}
    mask = M.global_magnitude(w, 0.25)
    assert torch.equal(~mask["x"], torch.arange(10) < 5) and mask["y"].all()


# --------------------------------------------------------------------------------------- layer-wise MBP


@pytest.mark.parametrize("s", SPARSITIES)
def test_layerwise_magnitude_prunes_every_layer_exactly(s):
    w = layers()
    mask = M.layerwise_magnitude(w, s)
    assert zeros(mask) == {n: round(s * t.numel()) for n, t in w.items()}


def test_layerwise_magnitude_keeps_the_largest_in_each_layer():
    w = layers()
    for n, m in M.layerwise_magnitude(w, 0.7).items():
        a = w[n].abs()
        assert a[m].min() > a[~m].max()


# --------------------------------------------------------------------------------------------- random


def test_random_like_matches_per_layer_counts_with_another_pattern():
    mask = M.global_magnitude(layers(), 0.7)
    rnd = M.random_like(mask, seed=0)
    assert zeros(rnd) == zeros(mask)
    assert all(rnd[n].shape == mask[n].shape for n in mask)
    assert any(not torch.equal(rnd[n], mask[n]) for n in mask)


def test_random_like_is_deterministic_per_seed():
    mask = M.global_magnitude(layers(), 0.7)
    a, b, c = M.random_like(mask, 3), M.random_like(mask, 3), M.random_like(mask, 4)
    assert all(torch.equal(a[n], b[n]) for n in mask)
    assert any(not torch.equal(a[n], c[n]) for n in mask)


def test_random_like_counts_and_seeds_against_hand_made_masks():
    # Zeros per layer written here: a 3 of 10, b 10 of 16, c none of 3, d all 4.
    mask = {"a.weight": torch.tensor([[1, 0, 1, 1, 0], [1, 1, 0, 1, 1]], dtype=torch.bool),
            "b.weight": torch.tensor([1, 1, 1, 1, 1, 1] + [0] * 10, dtype=torch.bool).view(4, 4),
            "c.weight": torch.ones(3, dtype=torch.bool), "d.weight": torch.zeros(2, 2, dtype=torch.bool)}
    expected = {"a.weight": 3, "b.weight": 10, "c.weight": 0, "d.weight": 4}
    masks = [M.random_like(mask, seed) for seed in range(20)]
    for rnd in masks:
        assert zeros(rnd) == expected
        assert {n: tuple(m.shape) for n, m in rnd.items()} == {n: tuple(m.shape) for n, m in mask.items()}
        assert all(m.dtype == torch.bool for m in rnd.values())
    # the same seed gives the same mask; 20 seeds give many patterns (C(16, 10) = 8008 for b)
    assert all(torch.equal(masks[3][n], M.random_like(mask, 3)[n]) for n in mask)
    assert len({tuple(m["b.weight"].flatten().tolist()) for m in masks}) >= 15
    # the pattern depends on the counts and the seed only, not on where the given mask's zeros are
    moved = {n: m.flatten().flip(0).view(m.shape) for n, m in mask.items()}
    assert all(torch.equal(M.random_like(moved, 5)[n], masks[5][n]) for n in mask)


# ---------------------------------------------------------------------------------- iterative pruning


def test_iterative_pruning_never_revives_pruned_weights():
    w = layers()
    first = M.global_magnitude(w, 0.5)
    # Make every pruned weight the largest of all: without `current` they would all come back.
    grown = {n: torch.where(first[n], t, torch.full_like(t, 100.0)) for n, t in w.items()}
    second = M.global_magnitude(grown, 0.8, current=first)
    n = sum(t.numel() for t in w.values())
    assert sum(zeros(second).values()) == round(0.8 * n)
    assert all(not (second[k] & ~first[k]).any() for k in w)     # kept now => kept before


def test_iterative_layerwise_pruning_never_revives_pruned_weights():
    w = layers()
    first = M.layerwise_magnitude(w, 0.5)
    grown = {n: torch.where(first[n], t, torch.full_like(t, 100.0)) for n, t in w.items()}
    second = M.layerwise_magnitude(grown, 0.8, current=first)
    assert zeros(second) == {n: round(0.8 * t.numel()) for n, t in w.items()}
    assert all(not (second[k] & ~first[k]).any() for k in w)


# ------------------------------------------------------------------------------------------ GMP schedule


def test_cubic_sparsity_start_middle_end():
    # Zhu & Gupta: s_t = s_f (1 - (1 - (t - t0) / (t1 - t0))^3); t0 = 10, t1 = 30, s_f = 0.9
    assert M.cubic_sparsity(0, 10, 30, 0.9) == 0.0
    assert M.cubic_sparsity(10, 10, 30, 0.9) == 0.0
    assert M.cubic_sparsity(15, 10, 30, 0.9) == pytest.approx(0.9 * (1 - 0.75 ** 3))    # = 0.5203125
    assert M.cubic_sparsity(20, 10, 30, 0.9) == pytest.approx(0.7875)                   # 0.9 * (1 - 1/8)
    assert M.cubic_sparsity(30, 10, 30, 0.9) == 0.9
    assert M.cubic_sparsity(99, 10, 30, 0.9) == 0.9


def test_cubic_sparsity_never_decreases():
    s = [M.cubic_sparsity(t, 10, 30, 0.9) for t in range(40)]
    assert all(a <= b for a, b in zip(s, s[1:]))


# ------------------------------------------------------------------------------------ apply and checks


def test_apply_zeros_exactly_the_masked_weights():
    w = layers()
    before = {n: t.clone() for n, t in w.items()}
    mask = M.global_magnitude(w, 0.6)
    M.apply(w, mask)
    for n in w:
        assert (w[n][~mask[n]] == 0).all()
        assert torch.equal(w[n][mask[n]], before[n][mask[n]])    # kept weights untouched, bit for bit


def test_apply_works_on_model_parameters_in_place():
    net = models.build("resnet20", classes=4, width=0.25)
    w = models.prunable(net)
    mask = M.global_magnitude(w, 0.9)
    M.apply(w, mask)
    params = dict(net.named_parameters())
    assert sum(int((params[n] == 0).sum()) for n in mask) == sum(zeros(mask).values())


def test_stats_counts():
    mask = {"a": torch.tensor([True, False, False, False]), "b": torch.tensor([True, True, True, False])}
    st = M.stats(mask)
    assert (st["kept"], st["total"], st["sparsity"]) == (4, 8, 0.5)
    assert st["layers"] == {"a": 0.75, "b": 0.25}


def test_check_compatible_accepts_the_same_architecture():
    mask = M.global_magnitude(models.prunable(models.build("resnet20", 4, 0.25, seed=0)), 0.9)
    M.check_compatible(mask, models.prunable(models.build("resnet20", 4, 0.25, seed=1)), "m.pt")


@pytest.mark.parametrize("other", [("vgg16_bn", 4, 0.25), ("resnet56", 4, 0.25), ("resnet20", 4, 0.5),
                                   ("resnet20", 10, 0.25)])
def test_check_compatible_refuses_another_model(other):
    # other layer names (vgg, resnet56) or other shapes (width, classes): refused, with the file named
    mask = M.global_magnitude(models.prunable(models.build("resnet20", 4, 0.25)), 0.9)
    with pytest.raises(ValueError, match="m.pt"):
        M.check_compatible(mask, models.prunable(models.build(*other)), "m.pt")
