"""Distillation methods: the one-shot MBP mask, retrained against the dense teacher (stage 2 of the paper).

kd distils on the full band; fourier_kd (the paper) on low-passed inputs whose radius grows from
distill.radius_start to the full band; the controls change the frequency curriculum or drop the teacher.
All share the one retraining budget (retrain.*).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import frequency as fq
from .base import Context, one_shot


def kd_loss(teacher, T: float, alpha: float, radius_fn=None, band: str = "low", shape: str = "circle"):
    """alpha * T^2 * KL(teacher || student) on the (filtered) batch + (1 - alpha) * CE(student on the
    unfiltered batch). With radius_fn None (or at the full band) it is plain KD with ONE student pass."""
    def loss(student, x, y, epoch, norm):
        r = radius_fn(epoch) if radius_fn else fq.FULL_BAND
        full = math.isinf(r)
        xf = x if full else (fq.lowpass(x, r, shape) if band == "low" else fq.highpass(x, r, shape))
        nxf = norm(xf)                        # normalised once, shared by teacher and student
        with torch.no_grad():
            t = teacher(nxf)
        s_f = student(nxf)
        s = s_f if full else student(norm(x))
        kl = F.kl_div(F.log_softmax(s_f.float() / T, 1), F.log_softmax(t.float() / T, 1), log_target=True,
                      reduction="batchmean")
        return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y), s, r
    return loss


def filtered_ce(radius_fn, shape: str = "circle"):
    """freq_ce: the low-to-high curriculum without a teacher (cross-entropy on the low-passed batch)."""
    def loss(student, x, y, epoch, norm):
        r = radius_fn(epoch)
        logits = student(norm(fq.lowpass(x, r, shape)))
        return F.cross_entropy(logits, y), logits, r
    return loss


def radius_schedule(cfg, reverse=False):
    """The low-pass radius at each retraining epoch (distill.*)."""
    d, epochs = cfg.distill, cfg.retrain.epochs
    f = fq.reverse_radius_at if reverse else fq.radius_at
    return lambda e: f(e, epochs, d.radius_start, d.full_band_at, d.schedule, d.steps)


def _kd(ctx: Context, **kw):
    d = ctx.cfg.distill
    return one_shot(ctx, lambda m: ctx.mask, kd_loss(ctx.teacher, d.T, d.alpha, shape=d.filter, **kw))


def kd(ctx: Context):
    return _kd(ctx)


def fourier_kd(ctx: Context):
    return _kd(ctx, radius_fn=radius_schedule(ctx.cfg))


def fourier_kd_reverse(ctx: Context):
    return _kd(ctx, radius_fn=radius_schedule(ctx.cfg, reverse=True), band="high")


def freq_ce(ctx: Context):
    return one_shot(ctx, lambda m: ctx.mask, filtered_ce(radius_schedule(ctx.cfg), ctx.cfg.distill.filter))
