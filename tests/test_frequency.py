"""Low-/high-pass filters and the radius curriculum (pipeline/core/frequency.py), with exact expectations."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.core import frequency as fq

SIZE = 32


TOP = math.hypot(SIZE // 2, SIZE // 2)        # the radius that covers the corners of the centred spectrum


def images(n=2, seed=0) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def wave(i: int, j: int, phase: float = 0.3) -> torch.Tensor:
    """An image made of ONE real Fourier basis vector: frequency (i, j) and its conjugate (-i, -j)."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    return torch.cos(2 * math.pi * (i * yy + j * xx) / SIZE + phase).float().expand(3, SIZE, SIZE)


# (i, j) frequencies: axes, negative, diagonal, Nyquist rows/columns and the Nyquist corner
FREQS = [(0, 1), (1, 0), (3, 4), (-3, 4), (3, -4), (-5, -12), (7, 7), (16, 0), (0, -16), (16, 16), (-16, 5)]
RADII = [0.5, 1, 4.99, 5, 9.9, 13, 16, 22.6, 23]


# ------------------------------------------------------------------------------------------ the filters


@pytest.mark.parametrize("shape", ["circle", "square"])
@pytest.mark.parametrize("radius", [0, 1, 4, 7.5, 16])
def test_lowpass_plus_highpass_is_the_image(shape, radius):
    x = images()
    assert torch.allclose(fq.lowpass(x, radius, shape) + fq.highpass(x, radius, shape), x, atol=1e-6)


@pytest.mark.parametrize("shape", ["circle", "square"])
def test_radius_zero_keeps_only_the_mean(shape):
    # Only frequency 0 survives: every pixel becomes its image-and-channel mean.
    x = images()
    mean = x.mean((-2, -1), keepdim=True).expand_as(x)
    assert torch.allclose(fq.lowpass(x, 0, shape), mean, atol=1e-6)


@pytest.mark.parametrize("shape", ["circle", "square"])
def test_radius_covering_the_corner_keeps_everything(shape):
    x = images()
    assert torch.allclose(fq.lowpass(x, 23, shape), x, atol=1e-6)
    assert torch.allclose(fq.highpass(x, 23, shape), torch.zeros_like(x), atol=1e-6)


def test_full_band_is_the_identity():
    x = images()
    assert fq.lowpass(x, fq.FULL_BAND) is x
    assert torch.equal(fq.highpass(x, fq.FULL_BAND), torch.zeros_like(x))


@pytest.mark.parametrize("i,j", FREQS)
def test_circle_lowpass_of_one_basis_vector(i, j):
    # Kept whole iff its distance from the centre, hypot(i, j), is within the radius (inclusive); else removed.
    u = wave(i, j)
    for r in RADII:
        expected = u if math.hypot(i, j) <= r else torch.zeros_like(u)
        assert torch.allclose(fq.lowpass(u, r), expected, atol=1e-5), (i, j, r)


@pytest.mark.parametrize("i,j", FREQS)
def test_square_lowpass_of_one_basis_vector(i, j):
    # The square filter measures distance as max(|i|, |j|).
    u = wave(i, j)
    for r in RADII:
        expected = u if max(abs(i), abs(j)) <= r else torch.zeros_like(u)
        assert torch.allclose(fq.lowpass(u, r, "square"), expected, atol=1e-5), (i, j, r)


def test_circle_and_square_differ_off_axis():
    # (3, 4): hypot 5 but max 4, so at radius 4.5 the square keeps it and the circle does not.
    u = wave(3, 4)
    assert torch.allclose(fq.lowpass(u, 4.5, "square"), u, atol=1e-5)
    assert torch.allclose(fq.lowpass(u, 4.5, "circle"), torch.zeros_like(u), atol=1e-5)


@pytest.mark.parametrize("shape", ["circle", "square"])
def test_lowpass_many_equals_one_radius_at_a_time(shape):
    x = images(3)
    radii = [0, 1, 2.5, 4, 8, 16, fq.FULL_BAND, 23]
    many = fq.lowpass_many(x, radii, shape)
    assert many.shape == (len(radii),) + tuple(x.shape)
    for k, r in enumerate(radii):
        assert torch.allclose(many[k], fq.lowpass(x, r, shape), atol=1e-6), r
    assert torch.equal(many[radii.index(fq.FULL_BAND)], x)      # the full band is x itself, not an FFT round trip


def test_unknown_filter_shape_is_refused():
    with pytest.raises(ValueError, match="circle or square"):
        fq.lowpass(images(), 4, "diamond")


# ------------------------------------------------------------------------------------- the radius schedule

SCHEDULES = ["linear", "step", "cosine"]
CASES = [(1, 0.7), (2, 0.7), (7, 0.5), (10, 0.3), (40, 0.7), (100, 0.55), (160, 1.0)]   # (epochs, full_band_at)


def full_epoch(epochs, full_band_at):
    """The first full-band epoch, from the decimal product (0.55 * 100 = 55 exactly, not 55.00000000000001)."""
    return math.ceil(round(full_band_at * epochs, 9))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("epochs,fba", CASES)
def test_radius_schedule_start_end_and_monotone(schedule, epochs, fba):
    rs = [fq.radius_at(e, epochs, 4.0, fba, schedule) for e in range(epochs + 3)]
    assert rs[0] == 4.0                                          # starts at radius_start
    k = full_epoch(epochs, fba)
    assert all(math.isinf(r) for r in rs[k:])                    # full band from epoch k on ...
    assert all(math.isfinite(r) and r <= TOP for r in rs[:k])   # ... and not before
    assert all(a <= b for a, b in zip(rs, rs[1:]))               # never decreases


def test_full_band_epoch_is_exact_for_decimal_fractions():
    # 0.55 * 100 = 55.00000000000001 in floats; the documented epoch is ceil(55) = 55, not 56.
    assert fq.radius_at(54, 100, 4.0, 0.55) < TOP
    assert math.isinf(fq.radius_at(55, 100, 4.0, 0.55))


def test_radius_schedule_values():
    # 10 epochs, full band at 0.5 (epoch 5): p = epoch / 5.
    assert fq.radius_at(2, 10, 4.0, 0.5, "linear") == pytest.approx(4 + (TOP - 4) * 0.4)
    assert fq.radius_at(2, 10, 4.0, 0.5, "step", steps=4) == pytest.approx(4 + (TOP - 4) * 0.25)   # floor(1.6)/4
    assert fq.radius_at(4, 10, 4.0, 0.5, "step", steps=4) == pytest.approx(4 + (TOP - 4) * 0.75)   # floor(3.2)/4
    assert fq.radius_at(2, 8, 4.0, 0.5, "cosine") == pytest.approx(4 + (TOP - 4) * 0.5)            # p = 1/2


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="linear, step or cosine"):
        fq.radius_at(0, 10, 4.0, 0.7, "exponential")


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("epochs,fba", CASES)
def test_reverse_radius_mirrors_the_lowpass_schedule(schedule, epochs, fba):
    fwd = [fq.radius_at(e, epochs, 4.0, fba, schedule) for e in range(epochs + 3)]
    rev = [fq.reverse_radius_at(e, epochs, 4.0, fba, schedule) for e in range(epochs + 3)]
    assert rev[0] == pytest.approx(TOP - 4.0)                    # high-pass starts at top - start
    k = full_epoch(epochs, fba)
    for f, r in zip(fwd[:k], rev[:k]):
        assert r == pytest.approx(TOP - f) and r >= 0            # the mirror: shrinks as the low-pass grows
    assert all(math.isinf(r) for r in rev[k:])                   # then the full band, at the same epoch
    assert all(a >= b for a, b in zip(rev[:k], rev[1:k]))        # never increases before the full band
