"""The controlled pruning signature (pipeline/signature.py): batch-norm recalibration changes only the
running statistics (to the values computed by hand here), and every topology variant is what it says."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pipeline import masks as M, models, signature as SG, spectral as S, train as T
from pipeline.config import SpectralCfg

from .test_spectral import data  # noqa: F401  (the fixture: 32 training images, 32 test images)

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
    assert set(out["variants"]) == {"pruned_bn", "random_mask", "random_mask_bn"} and out["control_seed"] == 7
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
    # the network handed in was changed in place: it ends as the last variant, the control mask applied
    w = models.prunable(dense)
    assert all(torch.equal(w[n] == 0, ~control[n]) for n in control)


def test_the_pruned_signature_needs_its_control_seed_and_teacher_before_any_compute(tmp_path):
    from pipeline import config, stages
    cfg = config.load("smoke")
    for kw in ({"teacher": "t.pt"}, {"control_seed": 0}):
        with pytest.raises(config.ConfigError, match="--control-seed .* and --teacher"):
            stages.spectral(cfg, data=str(tmp_path / "missing.pt"), model="m.pt", out=str(tmp_path / "o.json"),
                            mask="mask.pt", **kw)
    assert list(tmp_path.iterdir()) == []
