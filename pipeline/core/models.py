"""The model registry: CIFAR ResNets (He et al. 2016, option-A shortcuts) and VGG-16 with batch norm.

`width` scales every channel count (1.0 = the published networks); the smoke experiment uses tiny widths.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.config.schema import ARCHS


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin   # option A: parameter-free shortcut

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x
        if self.stride != 1 or self.pad:
            sc = x[:, :, :: self.stride, :: self.stride]
            sc = F.pad(sc, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + sc)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, classes: int, width: float = 1.0):
        super().__init__()
        assert (depth - 2) % 6 == 0, "CIFAR ResNet depth must be 6n+2"
        n = (depth - 2) // 6
        widths = [max(1, round(c * width)) for c in (16, 32, 64)]
        self.conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, classes: int, width: float = 1.0, cfg=VGG16):
        super().__init__()
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                c = max(1, round(v * width))
                layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                cin = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


MODELS = {
    "resnet20": lambda classes, width: CifarResNet(20, classes, width),
    "resnet56": lambda classes, width: CifarResNet(56, classes, width),
    "vgg16_bn": lambda classes, width: VGG(classes, width),
}
assert tuple(MODELS) == ARCHS, "config/schema.py's ARCHS names the architectures this registry builds"


def build(arch: str, classes: int, width: float = 1.0, seed: int = 0) -> nn.Module:
    """The network, initialised from `seed` alone (same seed, same initial weights)."""
    if arch not in MODELS:
        raise ValueError(f"arch {arch!r}: must be one of {sorted(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[arch](classes, width)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A network's weights, as every count of the suite means them: each convolution's and linear layer's weight
    (biases and batch-norm parameters are parameters, not weights; cost.py counts every parameter as `params`)."""
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def prunable(model: nn.Module, exclude=()) -> dict[str, torch.Tensor]:
    """The weights MBP acts on: every weight but those of the layers prune.exclude names."""
    return {n: w for n, w in weights(model).items() if n not in exclude and n[:-len(".weight")] not in exclude}
