"""The controlled pruning signature (pipeline/evaluate/signature.py): batch-norm recalibration changes only the
running statistics (to the values computed by hand here), and every topology variant is what it says."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pipeline.core import masks as M, models, train as T
from pipeline.evaluate import signature as SG, spectral as S
from pipeline.config.schema import SpectralCfg

from .test_spectral import data  # noqa: F401  (the fixture: 32 training images, 32 test images)
from pipeline.config import loading
from pipeline import errors
from pipeline.stages import evaluation

RT = T.Runtime(torch.device("cpu"), amp=False, channels_last=False, compile=False)


def tiny():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.BatchNorm2d(2))
    net[1].running_mean.fill_(5.0)
    net[1].running_var.fill_(7.0)
    return net.eval()


def test_recalibration_sets_running_stats_to_the_batches_mean_and_variance(data):
    net = tiny()
    params = {k: v.clone() for k, v in net.named_parameters()}
    used = SG.recalibrate_bn(net, data, RT, batches=2, batch_size=12)
    assert used == 24 and not net.training
    assert all(torch.equal(p, params[k]) for k, p in net.named_parameters())       # no weight changes
    assert net[1].momentum == 0.1                                                    # restored
    # by hand: the first 24 images of a fixed permutation, in 2 batches of 12; running mean / var =
    # the average of the batch means / unbiased batch variances
    order = torch.randperm(32, generator=torch.Generator().manual_seed(0))[:24]
    with torch.no_grad():
        z = net[0](data.normalize(data.train_x[order].float() / 255))             # (24, 2, 32, 32)
    batches = z.split(12)
    mean = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    var = torch.stack([b.transpose(0, 1).flatten(1).var(1, unbiased=True) for b in batches]).mean(0)
    assert torch.allclose(net[1].running_mean, mean, atol=1e-6)
    assert torch.allclose(net[1].running_var, var, rtol=1e-5)
    assert int(net[1].num_batches_tracked) == 2


def test_recalibration_uses_at_most_the_training_set(data):
    assert SG.recalibrate_bn(tiny(), data, RT, batches=10, batch_size=16) == 32


def test_every_topology_variant(data):
    dense = models.build("resnet20", 4, 0.25, seed=1).eval()
    teacher = models.build("resnet20", 4, 0.25, seed=1).eval()
    masks = M.global_magnitude(models.prunable(dense), 0.9)
    spec = SpectralCfg(radii=[2, 8], filter="circle", batch_size=32, heatmap_images=2, heatmap_eps=4.0,
                       bn_batches=1)
    out = SG.evaluate_topologies(dense, masks, 7, data, RT, spec, teacher)
    assert set(out["variants"]) == {"pruned_bn", "random_mask", "random_mask_bn", "matched_mask",
                                    "matched_mask_bn"} and out["control_seed"] == 7
    assert out["variants"]["pruned_bn"]["bn_images"] == 32 and out["variants"]["random_mask"]["bn_images"] == 0

    def expected(mask, bn):
        net = models.build("resnet20", 4, 0.25, seed=1).eval()
        M.apply(dict(net.named_parameters()), mask)
        if bn:
            SG.recalibrate_bn(net, data, RT, 1, 32)
        return S.band_scores(net, data, RT, spec, S.teacher_bands(teacher, data, RT, spec))
    control = M.random_like(masks, 7)
    assert {n: int((~m).sum()) for n, m in control.items()} == {n: int((~m).sum()) for n, m in masks.items()}
    as_is = expected(masks, False)
    assert {k: out[k] for k in as_is} == as_is and out["heatmap"].shape == (32, 32)
    for name, mask, bn in (("pruned_bn", masks, True), ("random_mask", control, False),
                           ("random_mask_bn", control, True)):
        assert {k: out["variants"][name][k] for k in as_is} == expected(mask, bn), name
    # the damage-matched controls: the seeded random order at the fraction found, scored like the others, its
    # accuracy matched against MBP's own (as pruned; after recalibration), within the tolerance or said not to be
    for name, bn in (("matched_mask", False), ("matched_mask_bn", True)):
        v = out["variants"][name]
        match = v["match"]
        mask = M.random_fraction(masks, 7, match["fraction"])
        assert {k: v[k] for k in as_is} == expected(mask, bn), name
        mbp = models.build("resnet20", 4, 0.25, seed=1).eval()
        M.apply(dict(mbp.named_parameters()), masks)
        if bn:
            SG.recalibrate_bn(mbp, data, RT, 1, 32)
        assert match["target"] == SG.full_accuracy(mbp, data, RT, 32)
        assert match["matched"] == (abs(match["acc"] - match["target"]) <= match["tolerance"] == 0.01)
        assert match["sparsity"] == M.stats(mask)["sparsity"] and match["steps"] == len(match["trace"])
        assert v["bn_images"] == (32 if bn else 0)
    # the network handed in was changed in place: it ends as the last variant, its matched mask applied
    w = models.prunable(dense)
    last = M.random_fraction(masks, 7, out["variants"]["matched_mask_bn"]["match"]["fraction"])
    assert all(torch.equal(w[n] == 0, ~last[n]) for n in last)


def test_the_pruned_signature_needs_its_control_seed_and_teacher_before_any_compute(tmp_path):
    cfg = loading.load("smoke")
    for kw in ({"teacher": "t.pt"}, {"control_seed": 0}):
        with pytest.raises(errors.ConfigError, match="--control-seed .* and --teacher"):
            evaluation.spectral(cfg, data=str(tmp_path / "missing.pt"), model="m.pt", out=str(tmp_path / "o.json"),
                            mask="mask.pt", **kw)
    assert list(tmp_path.iterdir()) == []


def test_kappa_against_a_hand_count():
    model = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2, 2], [0] * 10, [0] * 10, [2, 2, 0, 0, 0, 1, 1, 1, 2, 2]])
    teach = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 2, 0], [0, 0, 0, 1, 1, 1, 2, 2, 2, 0], [0] * 10,
                          [2, 2, 0, 0, 0, 1, 1, 1, 2, 2]])
    # row 0: 7 of 10 agree; both predict 0, 1, 2 in 4, 3, 3 images: p_e = (16 + 9 + 9) / 100 = 0.34;
    # kappa = (0.7 - 0.34) / 0.66 = 6 / 11. Row 1: one constant class agrees 40% of the time, all of it
    # chance (p_e = 1 x 0.4): 0. Row 2: both constant, the same class: p_e = 1, kappa 0 by convention.
    # Row 3: perfect agreement, 1.
    assert S.kappa(model, teach, 3) == pytest.approx([6 / 11, 0.0, 0.0, 1.0], abs=1e-12)
    assert S.kappa(torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 1, 0]), 2) == [-1.0]   # always opposite


def test_random_fraction_scales_mbps_per_layer_counts_and_nests():
    mask = {"a": torch.tensor([True, False, False, False, True, False, True, False]),        # 5 pruned
            "b": torch.tensor([[False, True], [True, True]])}                                 # 1 pruned
    assert all(torch.equal(M.random_fraction(mask, 3, 1.0)[n], M.random_like(mask, 3)[n]) for n in mask)
    # round(0.5 * 5) = 2 (half to even), round(0.5 * 1) = 0; round(0.7 * 5) = 4, round(0.7 * 1) = 1
    half, more = M.random_fraction(mask, 3, 0.5), M.random_fraction(mask, 3, 0.7)
    assert [int((~half[n]).sum()) for n in mask] == [2, 0] and [int((~more[n]).sum()) for n in mask] == [4, 1]
    assert all(not (~half[n] & more[n]).any() for n in mask)                 # nested: more prunes a superset
    assert all(m.all() for m in M.random_fraction(mask, 3, 0.0).values())


class _Counted:
    """full_accuracy stand-in: the kept fraction of the prunable weights (so accuracy falls as the fraction of
    MBP's counts rises, like a network's, and every step of the bisection is known in advance)."""

    def __call__(self, net, data, rt, batch):
        w = models.prunable(net)
        return sum(int((p != 0).sum()) for p in w.values()) / sum(p.numel() for p in w.values())


@pytest.mark.parametrize("target,tol,steps,fractions,matched", [
    # kept = 1 - 0.9 f (up to rounding of counts): f = 1 -> 0.10 (too much damage), 0.5 -> 0.55, 0.75 -> 0.325,
    # 0.875 -> 0.2125, 0.8125 -> 0.269, 0.78125 -> 0.297 (within 1 pp of 0.30)
    (0.30, 1.0, 12, [1, 0.5, 0.75, 0.875, 0.8125, 0.78125], True),
    (0.30, 1.0, 3, [1, 0.5, 0.75, 0.875], False),           # the step limit: the closest found (0.75) is kept
    (0.05, 1.0, 12, [1], False),                            # even MBP's counts at random do less damage
])
def test_damage_matched_bisects_the_fraction_until_within_its_tolerance(monkeypatch, data, target, tol, steps,
                                                                       fractions, matched):
    monkeypatch.setattr(SG, "full_accuracy", _Counted())
    net = models.build("resnet20", 4, 0.25, seed=1).eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    masks = M.global_magnitude(models.prunable(net), 0.9)
    spec = SpectralCfg(match_tolerance=tol, match_steps=steps)
    found = SG.damage_matched(net, state, masks, 7, target, data, RT, spec, bn=False)
    match = found["match"]
    assert [f for f, _ in match["trace"]] == fractions and match["steps"] == len(fractions)
    assert match["matched"] is matched and match["tolerance"] == tol / 100
    best = min(match["trace"], key=lambda t: abs(t[1] - target))
    assert (match["fraction"], match["acc"]) == tuple(best) and match["gap"] == match["acc"] - target
    if matched:
        assert abs(match["acc"] - target) <= tol / 100
    # the network is left with the reported mask, and the reported accuracy is its own
    assert all(torch.equal(found["mask"][n], m) for n, m in M.random_fraction(masks, 7, match["fraction"]).items())
    assert match["acc"] == _Counted()(net, data, RT, 0)
    assert match["sparsity"] == pytest.approx(1 - match["acc"])


def test_the_damage_match_reads_the_validation_split_never_the_test_set(data):
    """The match picks the control's sparsity (a selection), so it must not see the test labels it reports on:
    full_accuracy equals the hand-counted validation accuracy, and scrambling the test labels changes nothing."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4)).eval()
    with torch.no_grad():
        hand = (net(data.normalize(data.val_x.float() / 255)).argmax(1) == data.val_y).float().mean().item()
    test_y = data.test_y.clone()
    try:
        data.test_y = (test_y + 1) % 4
        assert SG.full_accuracy(net, data, RT, 8) == pytest.approx(hand, abs=1e-7)
    finally:
        data.test_y = test_y
