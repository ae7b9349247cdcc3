"""Low-pass / high-pass filters on the centred 2-D spectrum, and the radius curriculum of the paper.

The filter is the hard mask of Wang et al. 2020 ("High-frequency component helps explain the generalization
of CNNs"): FFT each channel, keep the frequencies within `radius` of the centre of the centred spectrum,
inverse FFT. We never shift the data: the mask is built directly in FFT order from integer frequencies,
which is the same mask as on the fftshift-ed spectrum (centre bin = frequency 0). rfft2 halves the work;
the mask is Hermitian-symmetric, so the result is the same as the full complex FFT's real part.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

FULL_BAND = math.inf   # radius meaning "no filtering": low-pass is the identity


@lru_cache(maxsize=64)
def _distance(h: int, w: int, shape: str, device: torch.device) -> torch.Tensor:
    """Distance of every rfft2 bin from frequency 0, in bins (h x (w//2+1))."""
    fy = torch.fft.fftfreq(h, d=1.0 / h, device=device).abs()[:, None]
    fx = torch.fft.rfftfreq(w, d=1.0 / w, device=device)[None, :]
    if shape == "circle":
        return torch.sqrt(fy**2 + fx**2)
    if shape == "square":
        return torch.maximum(fy.expand(h, fx.shape[1]), fx.expand(h, fx.shape[1]))
    raise ValueError(f"filter shape {shape!r}: must be circle or square")


def band_masks(radii, h: int, w: int, shape: str = "circle", device=None) -> torch.Tensor:
    """(R, h, w//2+1) float masks: 1 where the frequency lies within each radius (inclusive)."""
    dist = _distance(h, w, shape, torch.device(device or "cpu"))
    r = torch.tensor([float(x) for x in radii], device=dist.device)
    return (dist[None] <= r[:, None, None]).float()


@lru_cache(maxsize=256)
def _band_mask(radius: float, h: int, w: int, shape: str, device: torch.device) -> torch.Tensor:
    """One radius's mask, built once per (radius, size, shape, device): the training losses filter every
    batch at the epoch's radius, and building the mask anew would copy a radius tensor to the device (a
    host-device synchronisation) at every step."""
    return band_masks([radius], h, w, shape, device)[0]


def spectrum(x: torch.Tensor) -> torch.Tensor:
    """rfft2 over the last two dims, in float32 (FFTs in bf16 are not supported and would lose precision)."""
    return torch.fft.rfft2(x.float())


def lowpass(x: torch.Tensor, radius: float, shape: str = "circle") -> torch.Tensor:
    """Keep frequencies with distance <= radius from the centre. radius=FULL_BAND returns x itself."""
    if math.isinf(radius):
        return x
    h, w = x.shape[-2:]
    m = _band_mask(float(radius), h, w, shape, x.device)
    return torch.fft.irfft2(spectrum(x) * m, s=(h, w)).to(x.dtype)


def highpass(x: torch.Tensor, radius: float, shape: str = "circle") -> torch.Tensor:
    """The complement: image - low-pass (so low + high gives the image back exactly in exact arithmetic)."""
    if math.isinf(radius):
        return torch.zeros_like(x)
    return x - lowpass(x, radius, shape)


def lowpass_many(x: torch.Tensor, radii, shape: str = "circle") -> torch.Tensor:
    """Low-pass of x at every radius from ONE forward FFT: (R, *x.shape). Used by the spectral evaluation."""
    h, w = x.shape[-2:]
    finite = [r for r in radii if not math.isinf(r)]
    out = torch.empty((len(radii),) + tuple(x.shape), dtype=torch.float32, device=x.device)
    if finite:
        f = spectrum(x)
        m = band_masks(finite, h, w, shape, x.device)
        m = m.view(len(finite), *([1] * (x.dim() - 2)), *m.shape[-2:])
        low = torch.fft.irfft2(f[None] * m, s=(h, w))
    j = 0
    for i, r in enumerate(radii):
        if math.isinf(r):
            out[i] = x
        else:
            out[i] = low[j]
            j += 1
    return out


def radius_at(epoch: int, epochs: int, start: float, full_band_at: float, schedule: str = "linear",
              steps: int = 4, size: int = 32) -> float:
    """Low-pass radius for `epoch` (0-based) of `epochs`: rises from `start` to the full band, reached at
    epoch ceil(full_band_at * epochs) and kept after. Never decreases."""
    top = math.hypot(size // 2, size // 2)          # radius covering the corners
    # round(.., 9): the decimal product, not its float error (0.55 * 100 = 55.00000000000001 would give 56)
    if epoch >= math.ceil(round(full_band_at * epochs, 9)):
        return FULL_BAND
    p = epoch / (full_band_at * epochs)
    if schedule == "linear":
        f = p
    elif schedule == "step":
        f = math.floor(p * steps) / steps
    elif schedule == "cosine":
        f = (1 - math.cos(math.pi * p)) / 2
    else:
        raise ValueError(f"distill.schedule = {schedule!r}: must be linear, step or cosine")
    return start + (top - start) * f


def reverse_radius_at(epoch: int, epochs: int, start: float, full_band_at: float, schedule: str = "linear",
                      steps: int = 4, size: int = 32) -> float:
    """The control curriculum (fourier_kd_reverse): a HIGH-pass radius that shrinks from top - start to 0
    on the mirror of the low-pass schedule, then the full band (no filtering)."""
    r = radius_at(epoch, epochs, start, full_band_at, schedule, steps, size)
    return FULL_BAND if math.isinf(r) else math.hypot(size // 2, size // 2) - r


def radii(epochs: int, start: float, full_band_at: float, schedule: str = "linear", steps: int = 4,
          size: int = 32) -> list[float]:
    """The paper's low-pass curriculum, one radius per epoch (radius_at at epochs 0 .. epochs - 1)."""
    return [radius_at(e, epochs, start, full_band_at, schedule, steps, size) for e in range(epochs)]


def anti_radii(epochs: int, start: float, full_band_at: float, schedule: str = "linear", steps: int = 4,
               size: int = 32) -> list[float]:
    """fourier_kd_anti: the same low-pass radii in reverse order (the full band first, ending at `start`).
    Unlike the high-pass reverse curriculum, every epoch keeps as much of the image as some epoch of the paper's:
    only the order changes."""
    return radii(epochs, start, full_band_at, schedule, steps, size)[::-1]


def shuffled_radii(epochs: int, start: float, full_band_at: float, schedule: str = "linear", steps: int = 4,
                   seed: int = 0, size: int = 32) -> list[float]:
    """fourier_kd_shuffled: the same low-pass radii, one per epoch, in a random order drawn from `seed`
    (a permutation: the same radii, as often each, only the order is random)."""
    r = radii(epochs, start, full_band_at, schedule, steps, size)
    order = torch.randperm(len(r), generator=torch.Generator().manual_seed(seed)).tolist()
    return [r[i] for i in order]
