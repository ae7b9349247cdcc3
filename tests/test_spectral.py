"""Spectral evaluation (pipeline/evaluate/spectral.py): band-limited predictions, Fourier basis and heat map."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pipeline.core import data as D, frequency as fq, train as T
from pipeline.evaluate import spectral as S
from pipeline.config.schema import SpectralCfg

RT = T.Runtime(torch.device("cpu"), amp=False, channels_last=False, compile=False)


@pytest.fixture(scope="module")
def data() -> T.Data:
    tx, ty = D.synthetic(4, 48, seed=1)
    ex, ey = D.synthetic(4, 32, seed=2)
    return T.Data({"train_x": tx[:32], "train_y": ty[:32], "val_x": tx[32:], "val_y": ty[32:],
                   "test_x": ex, "test_y": ey, "classes": ["a", "b", "c", "d"]}, "cpu")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """A random linear classifier: cheap, and its predictions change with the band (a fair test subject)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))


class Constant(nn.Module):
    """Ignores its input: the same logits for every image (one dummy parameter, like a real model)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


class Detector(nn.Module):
    """Class 1 iff the input has energy at frequency (i, j) of the 32x32 FFT, else class 0."""

    def __init__(self, i, j):
        super().__init__()
        self.i, self.j, self.dummy = i % 32, j % 32, nn.Parameter(torch.zeros(1))

    def forward(self, x):
        hit = (torch.fft.fft2(x.float())[:, :, self.i, self.j].abs().sum(1) > 1.0).float()
        return torch.stack([1 - hit, hit], 1)


RADII = [0, 1, 4, 8, 16]


# ------------------------------------------------------------------------------- band-limited predictions


def test_full_band_accuracy_is_plain_test_accuracy(data, model):
    bp = S.band_predictions(model, data, RT, RADII, "circle", batch=20)
    assert torch.equal(bp["low"][-1], T.predict(model, data, data.test_x, RT))
    assert (bp["low"][-1] == data.test_y).float().mean().item() == T.accuracy(model, data, "test", RT)
    # high-pass at the full band is the empty image
    assert torch.equal(bp["high"][-1], T.predict(model, data, torch.zeros(data.test_x.shape), RT))


@pytest.mark.parametrize("shape", ["circle", "square"])
def test_batched_band_predictions_equal_one_radius_at_a_time(data, model, shape):
    # batch=20 over 6 radii: 3 images per FFT batch, so the test set is cut into many chunks with a remainder
    bp = S.band_predictions(model, data, RT, RADII, shape, batch=20)
    x = data.test_x.float() / 255
    assert bp["low"].shape == bp["high"].shape == (len(RADII) + 1, len(data.test_y))
    for k, r in enumerate(RADII):
        assert torch.equal(bp["low"][k], T.predict(model, data, fq.lowpass(x, r, shape), RT)), r
        assert torch.equal(bp["high"][k], T.predict(model, data, fq.highpass(x, r, shape), RT)), r
    assert not torch.equal(bp["low"][0], bp["low"][-1])      # the band matters: the check above is not vacuous


def test_evaluate_reports_plain_test_accuracy_at_the_full_band(data, model):
    spec = SpectralCfg(radii=[1, 4], filter="circle", batch_size=64, heatmap_images=2, heatmap_eps=4.0)
    out = S.evaluate(model, data, RT, spec, teacher=model)
    assert out["radii"] == [1.0, 4.0, S.FULL]
    assert out["test_acc"] == out["low_acc"][-1] == T.accuracy(model, data, "test", RT)
    assert out["low_agree"] == out["high_agree"] == [1.0, 1.0, 1.0]       # agreement with itself
    assert out["heatmap"].shape == (32, 32) and out["heatmap_images"] == 2


def cosine_data() -> T.Data:
    """4 test images: 2 grey, 2 grey plus a cosine at frequency (3, -5) (distance sqrt(34) = 5.83 bins)."""
    u = S.basis(3, -5) * 32 * 40                           # amplitude ~ 40 grey levels
    grey = torch.full((4, 3, 32, 32), 128.0)
    grey[2:] += u
    x = grey.round().clamp(0, 255).to(torch.uint8)
    g = torch.Generator().manual_seed(0)
    return T.Data({"train_x": torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8),
                   "train_y": torch.zeros(8, dtype=torch.long), "val_x": x, "val_y": torch.zeros(4, dtype=torch.long),
                   "test_x": x, "test_y": torch.tensor([0, 0, 1, 1]), "classes": ["a", "b"]}, "cpu")


def test_agreement_of_two_different_models_by_hand():
    # The model detects energy at (3, -5) (class 1); the teacher always says class 1. Counted by hand:
    # low-pass keeps (3, -5) from radius 5.83 on, high-pass below it; only images 2 and 3 have it, so the
    # model says 1 on 2 of 4 images exactly where the band holds the cosine, else 0 on all 4.
    spec = SpectralCfg(radii=[1, 4, 8, 16], filter="circle", batch_size=64, heatmap_images=1, heatmap_eps=4.0)
    out = S.evaluate(Detector(3, -5), cosine_data(), RT, spec, teacher=Constant([0.0, 1.0]))
    assert out["low_agree"] == [0.0, 0.0, 0.5, 0.5, 0.5]
    assert out["high_agree"] == [0.5, 0.5, 0.0, 0.0, 0.0]
    assert out["low_acc"] == [0.5, 0.5, 1.0, 1.0, 1.0]      # labels 0, 0, 1, 1
    assert out["high_acc"] == [1.0, 1.0, 0.5, 0.5, 0.5]


class AutocastSpy(nn.Module):
    """Records whether autocast was on, and the input dtype, at every call."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 4)
        self.seen = set()

    def forward(self, x):
        self.seen.add((torch.is_autocast_enabled("cpu"), x.dtype))
        return self.fc(x.flatten(1))


def test_spectral_evaluation_runs_in_fp32_even_where_training_uses_bf16(data):
    bf16 = T.Runtime(torch.device("cpu"), amp=True, channels_last=False, compile=False)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16.amp):     # what training would do
        assert torch.is_autocast_enabled("cpu")
    model, teacher = AutocastSpy(), AutocastSpy()
    spec = SpectralCfg(radii=[1, 4], filter="circle", batch_size=64, heatmap_images=2, heatmap_eps=4.0)
    S.evaluate(model, data, bf16, spec, teacher=teacher)
    assert model.seen == teacher.seen == {(False, torch.float32)}
    assert S.fp32(bf16).amp is False and bf16.amp is True                   # the caller's runtime is untouched


# ------------------------------------------------------------------------------------ the Fourier basis


@pytest.mark.parametrize("i,j", [(0, 0), (1, 0), (0, 1), (3, -5), (-7, -2), (16, 0), (16, 16), (-16, 5)])
def test_basis_has_unit_norm_and_one_conjugate_pair(i, j):
    u = S.basis(i, j)
    assert u.shape == (32, 32) and u.dtype == torch.float32
    assert u.norm().item() == pytest.approx(1.0, abs=1e-6)
    support = torch.fft.fft2(u).abs() > 1e-4
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[i % 32, j % 32] = expected[-i % 32, -j % 32] = True
    assert torch.equal(support, expected)


# ---------------------------------------------------------------------------------------- the heat map


def test_heatmap_of_a_model_ignoring_its_input_is_flat(data):
    const = Constant([0.0, 2.0, 1.0, 0.0])                # always predicts class 1
    n = 8
    h = S.heatmap(const, data, RT, images=n, eps=4.0, batch=256)
    assert h.shape == (32, 32)
    error = (data.test_y[:n] != 1).float().mean().item()
    assert torch.equal(h, torch.full((32, 32), error))


def flat_data(n=4) -> T.Data:
    """Grey test images of class 0 (no energy off frequency 0); noisy training images (for the std)."""
    g = torch.Generator().manual_seed(0)
    grey = torch.full((n, 3, 32, 32), 128, dtype=torch.uint8)
    return T.Data({"train_x": torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8),
                   "train_y": torch.zeros(8, dtype=torch.long), "val_x": grey, "val_y": torch.zeros(n, dtype=torch.long),
                   "test_x": grey, "test_y": torch.zeros(n, dtype=torch.long), "classes": ["a", "b"]}, "cpu")


@pytest.mark.parametrize("i,j", [(3, -5), (0, 1), (-16, 0), (15, -16)])
def test_heatmap_puts_the_error_at_the_frequency_and_its_conjugate(i, j):
    # Only the basis vector U_ij (= U_-i-j) flips the detector: error 1 there, 0 everywhere else, at
    # out[i + 16, j + 16] (centred layout, frequency 0 at [16, 16]).
    h = S.heatmap(Detector(i, j), flat_data(), RT, images=4, eps=4.0, batch=512)
    expected = torch.zeros(32, 32)
    for a in range(32):
        for b in range(32):
            if ((a - 16) % 32, (b - 16) % 32) in {(i % 32, j % 32), (-i % 32, -j % 32)}:
                expected[a, b] = 1.0
    assert expected.sum() in (1, 2)                        # self-conjugate frequencies appear once
    assert torch.equal(h, expected)
