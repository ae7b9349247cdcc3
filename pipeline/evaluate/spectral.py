"""Spectral evaluation of one model: band-limited accuracy and agreement with the dense teacher, and the
Fourier heat map of Yin et al. 2019 ("A Fourier perspective on model robustness").

Band-limited accuracy takes the FFT of each test batch ONCE and builds every radius from it (one batched
pass over the test set for all radii). The full band is always added: there, low-pass accuracy is the
plain test accuracy, and high-pass is the empty image.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from pipeline.core import frequency as fq
from pipeline.core.train import Data, Runtime, predict

FULL = "full"   # how the full band is written in JSON and tables


def _predict_float(model, data: Data, x: torch.Tensor, rt: Runtime, batch: int) -> torch.Tensor:
    return predict(model, data, x.reshape(-1, *x.shape[-3:]), rt, batch).view(x.shape[:-3])


def band_predictions(model, data: Data, rt: Runtime, radii, shape: str, batch: int) -> dict:
    """{"low": (R, N), "high": (R, N)} predicted classes on low-/high-passed test images, every radius."""
    rs = [float(r) for r in radii] + [fq.FULL_BAND]
    low, high = [], []
    per = max(1, batch // len(rs))            # test images per FFT batch, so R x per images per forward
    for i in range(0, len(data.test_y), per):
        x = data.test_x[i:i + per].float() / 255
        lp = fq.lowpass_many(x, rs, shape)    # ONE forward FFT for every radius
        low.append(_predict_float(model, data, lp, rt, batch))
        high.append(_predict_float(model, data, x[None] - lp, rt, batch))
    return {"low": torch.cat(low, 1), "high": torch.cat(high, 1)}


def basis(i: int, j: int, size: int = 32) -> torch.Tensor:
    """The real 2-D Fourier basis image for frequency (i, j) (and its conjugate (-i, -j)), unit L2 norm."""
    f = torch.zeros(size, size, dtype=torch.complex64)
    f[i % size, j % size] = 1
    f[-i % size, -j % size] = 1
    u = torch.fft.ifft2(f).real
    return u / u.norm()


def heatmap(model, data: Data, rt: Runtime, images: int, eps: float, batch: int, seed: int = 0) -> torch.Tensor:
    """Error rate under x + eps * r * U_ij (r = +-1 per image and channel), for every centred frequency
    (i, j) in [-16, 15]^2, on the first `images` test images. U_ij = U_-i-j, so each conjugate pair is
    evaluated once and mirrored; many basis vectors share a forward pass."""
    size = data.test_x.shape[-1]
    half = size // 2
    x = data.test_x[:images].float() / 255
    y = data.test_y[:images]
    n = len(y)
    g = torch.Generator().manual_seed(seed)
    freqs = [(i, j) for i in range(-half, half) for j in range(-half, half)]
    def pair(i, j):                            # one key for (i, j) and its conjugate (-i, -j)
        return min((i % size, j % size), (-i % size, -j % size))
    canon = {}
    for i, j in freqs:
        canon.setdefault(pair(i, j), (i, j))
    reps = list(canon.values())
    err = {}
    per = max(1, batch // n)                  # basis vectors per forward pass
    for k in range(0, len(reps), per):
        chunk = reps[k:k + per]
        u = torch.stack([basis(i, j, size) for i, j in chunk]).to(x.device)           # (K, H, W)
        sign = (torch.randint(0, 2, (len(chunk), n, 3, 1, 1), generator=g) * 2 - 1).to(x.device)
        xp = (x[None] + eps * sign * u[:, None, None]).clamp(0, 1)                    # (K, n, 3, H, W)
        wrong = (_predict_float(model, data, xp, rt, batch) != y[None]).float().mean(1)
        for (i, j), e in zip(chunk, wrong.tolist()):
            err[pair(i, j)] = e
    out = torch.empty(size, size)
    for a, (i, j) in enumerate(freqs):
        out[(i + half), (j + half)] = err[pair(i, j)]
    return out                                 # out[i + 16, j + 16]: centred, frequency 0 at [16, 16]


def fp32(rt: Runtime) -> Runtime:
    """Spectral evaluation runs in fp32 on every device: a high-pass image is a small signal on an offset
    (about -2 after normalisation) where bf16's step is 2^-7, so bf16 band curves would not compare with
    the CPU's. Training keeps bf16 where configured."""
    return dataclasses.replace(rt, amp=False)


def teacher_bands(teacher, data: Data, rt: Runtime, spec) -> dict | None:
    """The teacher's band predictions, computed once for every model compared with it."""
    if teacher is None:
        return None
    return band_predictions(teacher, data, fp32(rt), spec.radii, spec.filter, spec.batch_size)


def kappa(a: torch.Tensor, b: torch.Tensor, classes: int) -> list[float]:
    """Cohen's kappa between two raters' class predictions along the last dim, one value per leading row:
    (p_o - p_e) / (1 - p_e), p_o the observed agreement, p_e the agreement expected by chance from each
    rater's own class frequencies, sum_k p_a(k) p_b(k). Raw agreement rewards a network that predicts one
    constant class wherever the teacher mostly predicts it; kappa gives it 0. When p_e = 1 (both raters predict
    the same single class throughout) all agreement is expected by chance: kappa is 0 by this convention."""
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    n = a.shape[-1]
    out = []
    for x, y in zip(a, b):
        p_o = (x == y).double().mean()
        p_e = (torch.bincount(x, minlength=classes).double() * torch.bincount(y, minlength=classes)).sum() / n**2
        out.append(0.0 if p_e >= 1 else min(1.0, max(-1.0, float((p_o - p_e) / (1 - p_e)))))   # rounding
    return out


def band_scores(model, data: Data, rt: Runtime, spec, teacher_bp: dict | None = None) -> dict:
    """Accuracy per band and radius and, given the teacher's band predictions, agreement with them, raw and
    chance-corrected (Cohen's kappa)."""
    bp = band_predictions(model, data, fp32(rt), spec.radii, spec.filter, spec.batch_size)
    y = data.test_y
    out = {"radii": [float(r) for r in spec.radii] + [FULL], "filter": spec.filter}
    for band in ("low", "high"):
        out[f"{band}_acc"] = (bp[band] == y[None]).float().mean(1).tolist()
    if teacher_bp is not None:
        for band in ("low", "high"):
            out[f"{band}_agree"] = (bp[band] == teacher_bp[band]).float().mean(1).tolist()
            out[f"{band}_kappa"] = kappa(bp[band], teacher_bp[band], data.classes)
    return out


def evaluate(model, data: Data, rt: Runtime, spec, teacher=None, teacher_bp: dict | None = None) -> dict:
    """All spectral numbers of one model (fp32), as a JSON-able dict plus the heat map tensor."""
    rt = fp32(rt)
    out = band_scores(model, data, rt, spec, teacher_bp if teacher_bp is not None else
                      teacher_bands(teacher, data, rt, spec))
    y = data.test_y
    out["test_acc"] = out["low_acc"][-1]
    t0 = time.time()
    out["heatmap"] = heatmap(model, data, rt, min(spec.heatmap_images, len(y)), spec.heatmap_eps, spec.batch_size)
    out["heatmap_seconds"] = time.time() - t0
    out["heatmap_images"] = min(spec.heatmap_images, len(y))
    out["heatmap_eps"] = spec.heatmap_eps
    return out
