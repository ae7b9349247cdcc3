"""Distillation methods: the one-shot MBP mask, retrained against the dense teacher (stage 2 of the paper).

kd distils on the full band; fourier_kd (the paper) on low-passed inputs whose radius grows from
distill.radius_start to the full band. Its controls each change ONE thing:
- fourier_kd_anti: the same low-pass radii in reverse order (the full band first, ending at radius_start);
- fourier_kd_shuffled: the same radii, one per epoch, in a seeded random order;
- freq_ce: the same two-term loss with the teacher's term replaced by cross-entropy on the filtered batch;
- distill.filtered (a parameter of every curriculum): which network sees the filtered batch in the teacher's
  term (both, as we read the paper; only the student; only the teacher).
fourier_kd_reverse (a HIGH-pass curriculum from high to low frequencies) is kept as a control that changes two
things: the order, and how much information the input carries (its first radius leaves the teacher near chance).
All share the one retraining budget (retrain.*).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.core import frequency as fq
from pipeline.methods.base import Context, one_shot


def two_term_loss(term, weight: float, alpha: float, radius_fn=None, band: str = "low", shape: str = "circle",
                  student_filtered: bool = True):
    """weight * term(student logits, y, normalised batch, normalised filtered batch) + (1 - alpha) *
    CE(student on the unfiltered batch) (weight: alpha T^2 for the teacher's KL term, alpha for freq_ce's).
    The student's logits handed to `term` are on the filtered batch (student_filtered) or on the unfiltered
    one; when that is the unfiltered batch (or the radius is the full band) the student runs ONCE and both
    terms share its logits. Returns (loss, logits on the unfiltered batch,
    radius)."""
    def loss(student, x, y, epoch, norm):
        r = radius_fn(epoch) if radius_fn else fq.FULL_BAND
        full = math.isinf(r)
        xf = x if full else (fq.lowpass(x, r, shape) if band == "low" else fq.highpass(x, r, shape))
        nxf = norm(xf)                        # normalised once, shared by teacher and student
        nx = nxf if full else norm(x)
        s_t = student(nxf if student_filtered else nx)
        s = s_t if full or not student_filtered else student(nx)
        return weight * term(s_t, y, nx, nxf) + (1 - alpha) * F.cross_entropy(s, y), s, r
    return loss


def kd_loss(teacher, T: float, alpha: float, radius_fn=None, band: str = "low", shape: str = "circle",
            filtered: str = "both"):
    """alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(student on the unfiltered batch). In the KL term
    the teacher and the student see the filtered batch (filtered="both", our reading of the paper), or only
    the student, or only the teacher does (the other network sees the unfiltered batch). With radius_fn None
    (or at the full band) it is plain KD with ONE student pass."""
    def kl(s_t, y, nx, nxf):
        with torch.no_grad():
            t = teacher(nxf if filtered in ("both", "teacher") else nx)
        return F.kl_div(F.log_softmax(s_t.float() / T, 1), F.log_softmax(t.float() / T, 1), log_target=True,
                        reduction="batchmean")
    return two_term_loss(kl, alpha * T * T, alpha, radius_fn, band, shape,
                         student_filtered=filtered in ("both", "student"))


def filtered_ce(radius_fn, alpha: float, shape: str = "circle"):
    """freq_ce: fourier_kd's loss with the teacher's term replaced by cross-entropy on the filtered batch:
    alpha * CE(student on the low-passed batch) + (1 - alpha) * CE(student on the unfiltered batch). The same
    alpha, the same radii; no T (hard labels are not softened)."""
    return two_term_loss(lambda s_t, y, nx, nxf: F.cross_entropy(s_t, y), alpha, alpha, radius_fn, "low", shape)


ORDERS = ("low_to_high", "high_pass", "anti", "shuffled")


def radius_schedule(cfg, order: str = "low_to_high", seed: int = 0):
    """The radius at each retraining epoch (distill.*): the paper's low-pass curriculum, the high-pass one of
    fourier_kd_reverse, or the paper's radii reversed (anti) or in a random order drawn from `seed`."""
    d, epochs = cfg.distill, cfg.retrain.epochs
    args = (epochs, d.radius_start, d.full_band_at, d.schedule, d.steps)
    if order == "high_pass":
        return lambda e: fq.reverse_radius_at(e, *args)
    table = {"low_to_high": fq.radii, "anti": fq.anti_radii,
             "shuffled": lambda *a: fq.shuffled_radii(*a, seed=seed)}[order](*args)
    return lambda e: table[e]


def _kd(ctx: Context, **kw):
    d = ctx.cfg.distill
    return one_shot(ctx, lambda m: ctx.mask, kd_loss(ctx.teacher, d.T, d.alpha, shape=d.filter, **kw))


def _curriculum(ctx: Context, order: str, band: str = "low"):
    return _kd(ctx, radius_fn=radius_schedule(ctx.cfg, order, ctx.seed), band=band,
               filtered=ctx.cfg.distill.filtered)


def kd(ctx: Context):
    return _kd(ctx)


def fourier_kd(ctx: Context):
    return _curriculum(ctx, "low_to_high")


def fourier_kd_anti(ctx: Context):
    return _curriculum(ctx, "anti")


def fourier_kd_shuffled(ctx: Context):
    """The radii drawn in an order seeded by the model's seed: each seed its own order, reproducibly."""
    return _curriculum(ctx, "shuffled")


def fourier_kd_reverse(ctx: Context):
    return _curriculum(ctx, "high_pass", band="high")


def freq_ce(ctx: Context):
    d = ctx.cfg.distill
    return one_shot(ctx, lambda m: ctx.mask, filtered_ce(radius_schedule(ctx.cfg), d.alpha, d.filter))
