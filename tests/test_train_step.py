"""The training step's data path: randomness drawn once per epoch (no host-device copy per step) gives the
very batches that drawing per step gave, so the CPU path, its checkpoints and its resume stay bit-identical."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline import masks as M, train as T


def _per_step_reference(x_all: torch.Tensor, batch: int, steps: int, g: torch.Generator) -> list:
    """The data path as it was before: the order, then per step a flip and crop draw and an
    element-by-element crop (written out here independently of train.augment)."""
    n = len(x_all)
    order = torch.randperm(n, generator=g)
    out = []
    for i in range(steps):
        x = x_all[order[i * batch:(i + 1) * batch]].float() / 255
        b = len(x)
        flip = torch.rand(b, generator=g) < 0.5
        off = torch.randint(0, 9, (2, b), generator=g)
        padded = F.pad(torch.where(flip[:, None, None, None], x.flip(3), x), (4, 4, 4, 4))
        out.append(torch.stack([padded[j, :, off[0, j]:off[0, j] + 32, off[1, j]:off[1, j] + 32]
                                for j in range(b)]))
    return out


def test_epoch_draws_give_the_per_step_batches():
    x_all = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    batch, steps = 16, 3
    ref = _per_step_reference(x_all, batch, steps, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    order, flips, offs = T.draw_epoch(len(x_all), batch, steps, g, "cpu")
    assert flips.shape == (steps, batch) and offs.shape == (steps, 2, batch)
    for i in range(steps):
        x = T.augment(x_all[order[i * batch:(i + 1) * batch]].float() / 255, flips[i], offs[i])
        assert torch.equal(x, ref[i]), f"step {i}: batch differs from the per-step path"
    # ... and the generator ends in the same state, so the next epoch (and a checkpoint) is unchanged too
    g_ref = torch.Generator().manual_seed(7)
    _per_step_reference(x_all, batch, steps, g_ref)
    assert torch.equal(g.get_state(), g_ref.get_state())


def test_epoch_draws_with_fewer_images_than_a_batch():
    g = torch.Generator().manual_seed(0)
    order, flips, offs = T.draw_epoch(5, 16, 1, g, "cpu")
    assert sorted(order.tolist()) == [0, 1, 2, 3, 4] and flips.shape == (1, 5) and offs.shape == (1, 2, 5)
    assert int(offs.min()) >= 0 and int(offs.max()) <= 8


def test_fused_mask_application_equals_one_multiply_per_layer():
    g = torch.Generator().manual_seed(1)
    weights = {"a": torch.randn(4, 3, generator=g), "b": torch.randn(7, generator=g)}
    masks = {"a": torch.rand(4, 3, generator=g) < 0.5, "b": torch.rand(7, generator=g) < 0.5}
    expected = {n: w * masks[n].float() for n, w in weights.items()}
    M.apply(weights, masks)
    for n in weights:
        assert torch.equal(weights[n], expected[n])
        assert int((weights[n] == 0).sum()) >= int((~masks[n]).sum())


def _resolve_runtime(monkeypatch, deterministic, cuda: bool) -> bool:
    from pipeline import config as C
    cfg = C.load("smoke")
    cfg.runtime.deterministic = deterministic
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    torch.use_deterministic_algorithms(not (deterministic is True or (deterministic == "auto" and not cuda)))
    T.runtime(cfg)
    return torch.are_deterministic_algorithms_enabled()


def test_deterministic_auto_is_on_for_the_cpu_and_off_for_cuda(monkeypatch):
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        assert _resolve_runtime(monkeypatch, "auto", cuda=False) is True
        assert _resolve_runtime(monkeypatch, "auto", cuda=True) is False
        assert _resolve_runtime(monkeypatch, True, cuda=True) is True
        assert _resolve_runtime(monkeypatch, False, cuda=False) is False
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
