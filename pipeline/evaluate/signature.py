"""The controlled spectral signature of pruning: the MBP topology before any retraining, against a control.

A pruned network evaluated with the dense network's batch-norm statistics is often near chance, and low-pass
images carry most of an image's energy, so almost any damaged network agrees with its teacher more on
low-pass than on high-pass images. So the MBP topology is evaluated twice (as is, and after recalibrating
batch-norm statistics on training images: forward passes, no labels, no weight change), and beside it a
control. Two controls, each a random mask seeded by the model's seed:
- same-count: MBP's per-layer counts (masks.random_like, the mask the `random` method retrains). At equal
  counts a random mask does far more damage than MBP and can sit at chance (predicting one class), so a
  difference from it may only say that MBP damages less;
- damage-matched: the same seeded random order, pruning a fraction of MBP's per-layer counts found by
  bisection (masks.random_fraction) so that its full-band VALIDATION accuracy matches MBP's within
  spectral.match_tolerance percentage points, as pruned and after recalibration each against MBP's own
  (matched separately). A difference from it is a difference in WHICH frequencies survive, at equal damage.
Agreement with the teacher is reported raw and chance-corrected (Cohen's kappa, spectral.kappa). The report
pairs MBP and each control by seed.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from pipeline.core import masks as M
from pipeline.evaluate import spectral as S
from pipeline.core.train import Data, Runtime, predict

# name -> (control mask?, batch-norm recalibrated?); "pruned" is the MBP topology as is (with the heat map)
VARIANTS = {"pruned": (False, False), "pruned_bn": (False, True),
            "random_mask": (True, False), "random_mask_bn": (True, True)}
# the damage-matched control of each evaluation: name -> (the MBP variant whose accuracy it matches, recalibrated?)
MATCHED = {"matched_mask": ("pruned", False), "matched_mask_bn": ("pruned_bn", True)}


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


def full_accuracy(model: nn.Module, data: Data, rt: Runtime, batch: int) -> float:
    """Validation accuracy on the full band (unfiltered held-out training images), in fp32: what the
    damage-matched control matches, measured the same way for MBP and for every candidate mask. The match
    chooses the control's sparsity, so it reads the validation split, never the test set the signature reports."""
    return (predict(model, data, data.val_x, S.fp32(rt), batch) == data.val_y).float().mean().item()


def damage_matched(net: nn.Module, state: dict, masks: dict, seed: int, target: float, data: Data, rt: Runtime,
                   spec, bn: bool) -> dict:
    """The random mask (masks.random_fraction of MBP's per-layer counts, seeded) whose full-band validation
    accuracy is within spectral.match_tolerance percentage points of `target` (MBP's), found by bisection on
    the fraction in [0, 1]: more pruning while the candidate is more accurate than MBP, less while it is less.
    Starts at fraction 1 (the same-count control); stops when within tolerance, after spectral.match_steps
    halvings, or at once if even fraction 1 is more accurate than MBP beyond the tolerance (no random mask in
    this family does as much damage). Leaves `net` at `state` with the closest mask found applied (and
    batch-norm recalibrated when bn). Returns what was found and how."""
    tol = spec.match_tolerance / 100

    def candidate(f: float):
        net.load_state_dict(state)
        mask = M.random_fraction(masks, seed, f)
        M.apply(dict(net.named_parameters()), {n: m.to(rt.device) for n, m in mask.items()})
        images = recalibrate_bn(net, data, rt, spec.bn_batches, spec.batch_size) if bn else 0
        return mask, images, full_accuracy(net, data, rt, spec.batch_size)

    lo, hi, f, trace, best = 0.0, 1.0, 1.0, [], None
    for _ in range(spec.match_steps + 1):
        mask, images, acc = candidate(f)
        trace.append([f, acc])
        if best is None or abs(acc - target) < abs(best[1] - target):
            best = (f, acc)
        if abs(acc - target) <= tol or (f == 1.0 and acc > target):
            break
        lo, hi = (f, hi) if acc > target else (lo, f)
        f = (lo + hi) / 2
    if trace[-1][0] != best[0]:                  # leave the network with the closest mask, as reported
        mask, images, acc = candidate(best[0])
    st = M.stats(mask)
    return {"mask": mask, "bn_images": images,
            "match": {"fraction": best[0], "sparsity": st["sparsity"], "target": target, "acc": acc,
                      "gap": acc - target, "tolerance": tol, "matched": abs(acc - target) <= tol,
                      "steps": len(trace), "trace": trace}}


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
    for name, (_, bn) in MATCHED.items():     # after the others: `dense` ends as the last matched control
        dense.load_state_dict(state)
        M.apply(dict(dense.named_parameters()), {n: m.to(rt.device) for n, m in masks.items()})
        if bn:
            recalibrate_bn(dense, data, rt, spec.bn_batches, spec.batch_size)
        target = full_accuracy(dense, data, rt, spec.batch_size)      # MBP's, measured as the candidates' are
        found = damage_matched(dense, state, masks, seed, target, data, rt, spec, bn)
        variants[name] = {**S.band_scores(dense, data, rt, spec, teacher_bp), "bn_images": found["bn_images"],
                          "match": found["match"]}
    out["variants"] = variants
    out["control_seed"] = seed
    return out
