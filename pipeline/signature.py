"""The controlled spectral signature of pruning: the MBP topology before any retraining, against a control.

A pruned network evaluated with the dense network's batch-norm statistics is often near chance, and low-pass
images carry most of an image's energy, so almost any damaged network agrees with its teacher more on
low-pass than on high-pass images. So the MBP topology is evaluated twice (as is, and after recalibrating
batch-norm statistics on training images: forward passes, no labels, no weight change), and beside it a
control: a random mask with MBP's per-layer counts (masks.random_like, seeded by the model's seed, the same
mask the `random` method retrains). The report pairs MBP and control by seed.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import masks as M, spectral as S
from .train import Data, Runtime

# name -> (control mask?, batch-norm recalibrated?); "pruned" is the MBP topology as is (with the heat map)
VARIANTS = {"pruned": (False, False), "pruned_bn": (False, True),
            "random_mask": (True, False), "random_mask_bn": (True, True)}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Data, rt: Runtime, batches: int, batch_size: int, seed: int = 0) -> int:
    """Reset every batch-norm layer's running statistics and re-estimate them (cumulative average over the
    batches) from forward passes on `batches` batches of training images in a fixed random order, without
    augmentation, in fp32. No labels, no gradient, no weight changes. Returns the number of images used."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                      # None: a cumulative average, every batch weighs the same
    order = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed))
    order = order[:batches * batch_size].to(data.device)
    model.train()
    for i in range(0, len(order), batch_size):
        x = data.normalize(data.train_x[order[i:i + batch_size]].float() / 255)
        model(x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.eval()
    return len(order)


def evaluate_topologies(dense: nn.Module, masks: dict, seed: int, data: Data, rt: Runtime, spec,
                        teacher: nn.Module) -> dict:
    """The spectral numbers of the MBP topology as is (S.evaluate, heat map included) plus, under
    "variants", band accuracy and agreement of every other entry of VARIANTS. `dense` is changed in place."""
    state = {k: v.clone() for k, v in dense.state_dict().items()}
    topologies = {False: masks, True: M.random_like(masks, seed)}
    teacher_bp = S.teacher_bands(teacher, data, rt, spec)
    out, variants = None, {}
    for name, (control, bn) in VARIANTS.items():
        dense.load_state_dict(state)
        M.apply(dict(dense.named_parameters()), {n: m.to(rt.device) for n, m in topologies[control].items()})
        images = recalibrate_bn(dense, data, rt, spec.bn_batches, spec.batch_size) if bn else 0
        if name == "pruned":
            out = S.evaluate(dense, data, rt, spec, teacher_bp=teacher_bp)
        else:
            variants[name] = {**S.band_scores(dense, data, rt, spec, teacher_bp), "bn_images": images}
    out["variants"] = variants
    out["control_seed"] = seed
    return out
