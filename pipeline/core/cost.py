"""What a model costs: nonzero parameters and multiply-accumulates (MACs) for one image, dense and pruned.

MACs, not FLOPs (one MAC = one multiply and one add; FLOPs are usually quoted as 2 x MACs, and tools differ
on it). Counted for every convolution and linear layer, the layers pruning acts on: a kept weight of a
convolution is used once per output position, so its layer costs (kept weights) x (output height x width)
MACs, and a linear layer (kept weights) MACs. Padding positions are counted as the dense convention counts
them. Batch norm, ReLU, the residual additions, pooling and biases are not counted (they are O(activations),
not O(weights), and pruning does not change them): ResNet-20 comes to 40,551,040 dense MACs for a 32x32
image (the published "about 41 M"), ResNet-56 to 125,485,696.

Kept weights come from the mask where a layer has one, otherwise from the weights that are not zero (a dense
model, a layer that prune.exclude exempts). The speed-up dense MACs / nonzero MACs is THEORETICAL: unstructured
sparsity gives no wall-clock speed-up on dense kernels (cuDNN, MKL-DNN multiply the zeros too); it needs
sparse kernels or hardware that skips zeros.
"""
from __future__ import annotations

import torch
import torch.nn as nn

# What a model's metrics.json holds and summary.csv shows (macs_input: the image shape the MACs are for)
COLUMNS = ("nonzero_params", "macs", "dense_macs", "speedup", "macs_input")
NOTE = ("MACs = multiply-accumulates for one image (FLOPs are about 2 x MACs), counted over convolution and "
        "linear weights; the speed-up is dense MACs / nonzero MACs, theoretical: unstructured sparsity gives no "
        "wall-clock speed-up on dense kernels")


def _output_positions(net: nn.Module, image: tuple[int, int, int]) -> dict[str, int]:
    """{layer name: output positions per output channel} (H_out x W_out for a convolution, 1 for a linear
    layer), from one forward pass of a zero image (forward hooks: the shapes the network really produces)."""
    positions, hooks = {}, []
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(mod, inp, out, name=name):
                positions[name] = out[0, 0].numel() if isinstance(mod, nn.Conv2d) else 1
            hooks.append(m.register_forward_hook(hook))
    was_training = net.training
    dev = next(net.parameters()).device
    try:
        net.eval()                     # batch norm in eval mode: the counting pass changes no running statistic
        with torch.no_grad():
            net(torch.zeros((1, *image), device=dev))
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    return positions


def count(net: nn.Module, masks: dict | None = None, image: tuple[int, int, int] = (3, 32, 32)) -> dict:
    """The cost of `net` under `masks` ({weight name: bool, True = kept}) for one image of shape `image`.

    Returns nonzero_params (every parameter that is not zero, biases and batch norm included), params,
    macs (nonzero MACs), dense_macs, speedup (dense / nonzero MACs) and layers: per layer its weights, kept
    weights, output positions, MACs and dense MACs."""
    masks = masks or {}
    positions = _output_positions(net, image)
    layers = {}
    for name, m in net.named_modules():
        if name not in positions:
            continue
        w, key = m.weight, f"{name}.weight"
        kept = int(masks[key].sum()) if key in masks else int((w != 0).sum())
        layers[name] = {"weights": w.numel(), "kept": kept, "positions": positions[name],
                        "macs": kept * positions[name], "dense_macs": w.numel() * positions[name]}
    macs = sum(v["macs"] for v in layers.values())
    dense = sum(v["dense_macs"] for v in layers.values())
    with torch.no_grad():
        nonzero = sum(int((p != 0).sum()) for p in net.parameters())
    return {"nonzero_params": nonzero, "params": sum(p.numel() for p in net.parameters()), "macs": macs,
            "dense_macs": dense, "speedup": dense / macs if macs else float("inf"),
            "macs_input": "x".join(map(str, image)), "layers": layers}


def metrics(cost: dict) -> dict:
    """The totals a model's metrics.json, MLflow and summary.csv carry (the layers go to an artifact)."""
    return {k: cost[k] for k in COLUMNS}
