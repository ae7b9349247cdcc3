"""The training step's data path: randomness drawn once per epoch (no host-device copy per step) gives the
very batches that drawing per step gave, so the CPU path, its checkpoints and its resume stay bit-identical."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.core import masks as M, train as T
from pipeline.config import loading


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
    cfg = loading.load("smoke")
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


# ------------------------------------------------------------------- the CPU's numeric path (issue 27)


def _rt(monkeypatch, native: bool, amp="auto", channels_last="auto", cuda=False):
    cfg = loading.load(None)                                   # the paper's runtime section: auto, auto
    cfg.runtime.amp, cfg.runtime.channels_last = amp, channels_last
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(T, "cpu_bf16_native", lambda: native)
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    try:
        return T.runtime(cfg)
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)


def test_auto_precision_is_bf16_channels_last_only_where_the_hardware_has_it(monkeypatch):
    native = _rt(monkeypatch, native=True)
    assert (native.amp, native.channels_last, native.describe()) == (True, True, "bf16 autocast, channels_last")
    emulated = _rt(monkeypatch, native=False)      # bf16 emulated: fp32 NCHW (channels_last: opt-in)
    assert (emulated.amp, emulated.channels_last, emulated.describe()) == (False, False, "fp32, NCHW")
    cuda = _rt(monkeypatch, native=False, cuda=True)
    assert (cuda.amp, cuda.channels_last) == (True, True)
    # the overrides win either way
    assert _rt(monkeypatch, native=True, amp="off", channels_last="off").describe() == "fp32, NCHW"
    assert _rt(monkeypatch, native=False, amp="bf16", channels_last="on").describe() == "bf16 autocast, channels_last"


@pytest.mark.parametrize("avx512_bf16,amx,expected", [(False, False, False), (True, False, True), (False, True, True)])
def test_native_bf16_is_read_from_the_cpus_capabilities(avx512_bf16, amx, expected, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert T.cpu_bf16_native() is expected


@pytest.mark.parametrize("amp", [True, False], ids=["bf16", "fp32"])
def test_cpu_training_in_channels_last_reruns_bit_identical_and_evaluates_in_fp32(amp, tmp_path):
    from pipeline.core import data as D, models
    tx, ty = D.synthetic(4, 96, seed=1)
    data = T.Data({"train_x": tx[:64], "train_y": ty[:64], "val_x": tx[64:], "val_y": ty[64:], "test_x": tx[64:],
                   "test_y": ty[64:], "classes": list("abcd")}, "cpu")
    rt = T.Runtime(torch.device("cpu"), amp=amp, channels_last=True, compile=False)
    det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [T.run(T.Recipe([T.Round(2, 0.05, [], 0.1)], batch_size=16),
                      models.build("resnet20", classes=4, width=0.25, seed=0), data, rt, 0, tmp_path / f"{i}.pt", "k")
                for i in range(2)]
    finally:
        torch.use_deterministic_algorithms(det)
    a, b = (r.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in runs[0].history] == [h["train_loss"] for h in runs[1].history]
    fp32 = T.Runtime(torch.device("cpu"), amp=False, channels_last=True, compile=False)
    model = runs[0].model
    assert torch.equal(T.predict(model, data, data.test_x, rt), T.predict(model, data, data.test_x, fp32))
