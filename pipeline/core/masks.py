"""Masks (the pruned topology): magnitude pruning, global and layer-wise, random controls, schedules.

A mask is a dict {weight name: bool tensor}, True = kept. Counts are exact: pruning n weights to sparsity s
zeroes exactly round(s * n) of them (ties broken by position, so the mask is deterministic).
"""
from __future__ import annotations

import torch


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool tensor, True at the k lowest scores (stable: ties go to the earlier position)."""
    out = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        out[torch.argsort(scores.flatten(), stable=True)[:k]] = True
    return out.view_as(scores)


def _scores(weights: dict, current: dict | None) -> dict:
    # Weights already pruned score -1, so iterative pruning never revives them and counts stay exact.
    return {n: torch.where(current[n], w.detach().abs().float(), torch.full_like(w, -1.0, dtype=torch.float))
            if current else w.detach().abs().float() for n, w in weights.items()}


def global_magnitude(weights: dict, sparsity: float, current: dict | None = None) -> dict:
    """Global MBP: one threshold over every prunable weight; exactly round(sparsity * n) zeros."""
    scores = _scores(weights, current)
    flat = torch.cat([s.flatten() for s in scores.values()])
    pruned = _lowest(flat, round(sparsity * flat.numel()))
    masks, i = {}, 0
    for n, s in scores.items():
        masks[n] = ~pruned[i:i + s.numel()].view_as(s)
        i += s.numel()
    return masks


def layerwise_magnitude(weights: dict, sparsity: float, current: dict | None = None) -> dict:
    """Per-layer MBP: every layer pruned to the target, exactly round(sparsity * n_layer) zeros each."""
    return {n: ~_lowest(s, round(sparsity * s.numel())) for n, s in _scores(weights, current).items()}


def random_like(mask: dict, seed: int) -> dict:
    """A random mask with exactly the same number of zeros in every layer as `mask` (the sanity floor)."""
    return random_fraction(mask, seed, 1.0)


def random_fraction(mask: dict, seed: int, fraction: float) -> dict:
    """A random mask pruning round(fraction * z) weights of every layer where `mask` prunes z: `mask`'s
    per-layer shape of damage, scaled. One seeded order per layer, the same for every fraction, so the masks
    are nested (a larger fraction prunes a superset); fraction 1 is random_like(mask, seed) exactly."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, m in mask.items():
        pruned = torch.zeros(m.numel(), dtype=torch.bool)
        pruned[torch.randperm(m.numel(), generator=g)[: round(fraction * int((~m).sum()))]] = True
        out[n] = ~pruned.view(m.shape).to(m.device)
    return out


@torch.no_grad()
def apply(weights: dict, masks: dict) -> None:
    """Zero the pruned weights in place (called after every optimizer step, so they stay exactly zero)."""
    names = list(masks)
    # One fused call for every layer (one kernel launch per layer per step adds up on a GPU); the same
    # products as a loop of mul_, so the CPU path is unchanged bit for bit.
    torch._foreach_mul_([weights[n] for n in names], [masks[n].to(weights[n].dtype) for n in names])


def stats(masks: dict) -> dict:
    """Per-layer and global sparsity, and nonzero counts, as a JSON-able dict."""
    layers = {n: 1.0 - m.float().mean().item() for n, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return {"sparsity": 1.0 - kept / total, "kept": kept, "total": total, "layers": layers}


def cubic_sparsity(t: float, start: float, end: float, final: float) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3 with s_i = 0."""
    if t <= start:
        return 0.0
    if t >= end:
        return final
    return final * (1.0 - (1.0 - (t - start) / (end - start)) ** 3)


def check_compatible(masks: dict, weights: dict, path) -> None:
    """A mask made for another model is refused with the file named (never silently misapplied)."""
    if set(masks) != set(weights):
        missing, extra = sorted(set(weights) - set(masks)), sorted(set(masks) - set(weights))
        raise ValueError(f"{path}: mask does not fit this model (layers missing: {missing[:3]}, "
                         f"unknown: {extra[:3]})")
    for n, m in masks.items():
        if tuple(m.shape) != tuple(weights[n].shape):
            raise ValueError(f"{path}: mask for {n} has shape {tuple(m.shape)}, the model's weight has "
                             f"{tuple(weights[n].shape)}")

