"""The networks (pipeline/core/models.py) against the published ones, counted by hand.

ResNet-20 / ResNet-56 for CIFAR (He et al. 2016, section 4.2: 6n + 2 layers, 16/32/64 filters, option A
shortcuts: identity, stride-2 subsampling and zero-padded channels, no parameters): published as 0.27M and
0.85M parameters. By hand (3x3 convs without bias, 2 parameters per batch-norm channel, a 64 x 10 linear):
  stem           3*16*9 + 2*16                                   =     464
  stage 1        n blocks of 2 * (16*16*9 + 2*16)                = 4,672 each
  stage 2        first 16*32*9 + 32*32*9 + 4*32 = 13,952; others 2 * (32*32*9 + 2*32) = 18,560
  stage 3        first 32*64*9 + 64*64*9 + 4*64 = 55,552; others 2 * (64*64*9 + 2*64) = 73,984
  head           64*10 + 10                                      =     650
  ResNet-20 (n = 3): 464 + 3*4,672 + 13,952 + 2*18,560 + 55,552 + 2*73,984 + 650 = 269,722 (0.27M)
  ResNet-56 (n = 9): 464 + 9*4,672 + 13,952 + 8*18,560 + 55,552 + 8*73,984 + 650 = 853,018 (0.85M)
VGG-16 with batch norm as this suite builds it for CIFAR (13 3x3 convs without bias, each followed by batch
norm, 5 max-pools, one 512 x 10 linear; the CIFAR variant of Simonyan & Zisserman 2015 used by pruning
papers, whose classifier heads differ, hence published counts of 14.7M-15M):
  convs 3*64*9 + 64*64*9 + 64*128*9 + 128*128*9 + 128*256*9 + 2*256*256*9 + 256*512*9 + 5*512*512*9
        = 14,710,464;  batch norm 2 * (2*64 + 2*128 + 3*256 + 6*512) = 8,448;  head 512*10 + 10 = 5,130
  total 14,724,042 (14.7M)
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pipeline.core import models

PARAMS = {"resnet20": 269_722, "resnet56": 853_018, "vgg16_bn": 14_724_042}
# prunable: every conv and linear weight, no bias, no batch norm
PRUNABLE = {"resnet20": 269_722 - 650 + 640 - 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64),
            "resnet56": 853_018 - 650 + 640 - 2 * (16 + 18 * 16 + 18 * 32 + 18 * 64),
            "vgg16_bn": 14_710_464 + 5_120}
LAYERS = {"resnet20": 20, "resnet56": 56, "vgg16_bn": 14}   # weight layers: convs + the linear head


@pytest.mark.parametrize("arch", sorted(PARAMS))
def test_parameter_counts_are_the_published_ones(arch):
    net = models.build(arch, 10)
    assert sum(p.numel() for p in net.parameters()) == PARAMS[arch]


@pytest.mark.parametrize("arch", sorted(PARAMS))
def test_prunable_weights_are_every_conv_and_linear_weight(arch):
    net = models.build(arch, 10)
    w = models.prunable(net)
    assert len(w) == LAYERS[arch] and sum(t.numel() for t in w.values()) == PRUNABLE[arch]
    assert all(n.endswith(".weight") and t.dim() in (2, 4) for n, t in w.items())
    params = dict(net.named_parameters())
    assert all(params[n] is t for n, t in w.items())         # the parameters themselves, not copies
    bn = {f"{name}.{p}" for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d) for p in ("weight", "bias")}
    assert set(params) - set(w) == bn | {"fc.bias"}          # never pruned: batch norm and the head's bias


def test_prunable_leaves_out_excluded_layers():
    net = models.build("resnet20", 10)
    assert set(models.prunable(net)) - set(models.prunable(net, ("conv.weight", "fc"))) == {"conv.weight", "fc.weight"}


@pytest.mark.parametrize("arch", sorted(PARAMS))
def test_forward_pass_at_full_width(arch):
    torch.manual_seed(0)
    net = models.build(arch, 10).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert not torch.equal(out[0], out[1])                    # the output depends on the input


def test_option_a_shortcut_subsamples_and_zero_pads_without_parameters():
    block = models.BasicBlock(16, 32, stride=2)
    assert sum(p.numel() for p in block.parameters()) == 16 * 32 * 9 + 32 * 32 * 9 + 4 * 32   # no projection
    nn.init.zeros_(block.conv2.weight)                        # residual branch 0: the output is relu(shortcut)
    block.eval()
    x = torch.rand(2, 16, 8, 8)                               # non-negative, as after a ReLU
    out = block(x)
    assert out.shape == (2, 32, 4, 4)
    expected = torch.zeros(2, 32, 4, 4)
    expected[:, 8:24] = x[:, :, ::2, ::2]                     # 16 input channels in the middle, 8 zeros each side
    assert torch.equal(out, expected)


def test_identity_shortcut_inside_a_stage():
    block = models.BasicBlock(16, 16, stride=1)
    nn.init.zeros_(block.conv2.weight)
    block.eval()
    x = torch.rand(2, 16, 8, 8)
    assert torch.equal(block(x), x)


def test_width_scales_every_channel_count():
    net = models.build("resnet20", 10, width=0.25)
    convs = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert sorted(set(convs)) == [4, 8, 16] and net.fc.in_features == 16


def test_same_seed_same_initialisation():
    a, b, c = (models.build("resnet20", 10, 0.25, seed=s).state_dict() for s in (3, 3, 4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv.weight"], c["conv.weight"])
