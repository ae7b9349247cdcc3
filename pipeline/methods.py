"""The retraining methods, one registry: each turns (the trained dense network, its MBP mask) into a Recipe.

One-shot methods share ONE budget (retrain.epochs, retrain.lr, retrain.lr_drops); the iterative and
from-scratch methods (imp, lth, lr_rewind, gmp) cost more by nature and report the epochs they spend.
config.METHOD_PARAMS says which config sections each method reads: the Snakefile passes exactly those to its
rule, so Snakemake and DVC rerun a method only when what it depends on changed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import frequency as fq, masks as M
from .models import prunable
from .train import Recipe, Round, cross_entropy

ONE_SHOT = ("finetune", "finetune_layerwise", "random", "kd", "fourier_kd", "fourier_kd_reverse", "freq_ce")


@dataclass
class Context:
    """What a method may use: the config, the sparsity, the seed, the trained dense weights, the global MBP
    mask at the target sparsity, the dense stage's weight snapshots (for rewinding), and the teacher."""
    cfg: object
    sparsity: float
    seed: int
    dense: dict
    mask: dict
    snapshots: dict
    teacher: torch.nn.Module | None = None
    levels: list[float] | None = None    # iterative methods: every sparsity one shared chain passes (None: one)


# --------------------------------------------------------------------------------------------- losses


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


def _schedule(cfg, reverse=False):
    d, epochs = cfg.distill, cfg.retrain.epochs
    f = fq.reverse_radius_at if reverse else fq.radius_at
    return lambda e: f(e, epochs, d.radius_start, d.full_band_at, d.schedule, d.steps)


# -------------------------------------------------------------------------------------------- recipes


def _load(model, state):
    """Set the model to `state` (keeping the device)."""
    model.load_state_dict(state)


def _one_shot(ctx: Context, mask_fn, loss=cross_entropy) -> Recipe:
    c = ctx.cfg

    def begin(model, _):
        _load(model, ctx.dense)
        return mask_fn(model)
    r = Round(c.retrain.epochs, c.retrain.lr, c.retrain.lr_drops, c.retrain.gamma, begin=begin)
    return Recipe([r], loss=loss, momentum=c.train.momentum, weight_decay=c.train.weight_decay,
                  batch_size=c.train.batch_size)


def _kd(ctx, **kw):
    d = ctx.cfg.distill
    return _one_shot(ctx, lambda m: ctx.mask, kd_loss(ctx.teacher, d.T, d.alpha, shape=d.filter, **kw))


def finetune(ctx):
    return _one_shot(ctx, lambda m: ctx.mask)


def finetune_layerwise(ctx):
    return _one_shot(ctx, lambda m: M.layerwise_magnitude(prunable(m, ctx.cfg.prune.exclude), ctx.sparsity))


def random(ctx):
    return _one_shot(ctx, lambda m: M.random_like(ctx.mask, seed=ctx.seed))


def kd(ctx):
    return _kd(ctx)


def fourier_kd(ctx):
    return _kd(ctx, radius_fn=_schedule(ctx.cfg))


def fourier_kd_reverse(ctx):
    return _kd(ctx, radius_fn=_schedule(ctx.cfg, reverse=True), band="high")


def freq_ce(ctx):
    return _one_shot(ctx, lambda m: ctx.mask, filtered_ce(_schedule(ctx.cfg), ctx.cfg.distill.filter))


def imp(ctx):
    """Iterative MBP: each round prunes the same fraction of the remaining weights (globally) and fine-tunes
    with the retraining schedule; one chain passes every level (masks.chain_targets), each exactly."""
    c = ctx.cfg
    rounds = []
    for i, (s, level) in enumerate(M.chain_targets(ctx.levels or [ctx.sparsity], c.imp.rounds)):
        def begin(model, masks, s=s, first=i == 0):
            if first:
                _load(model, ctx.dense)
            return M.global_magnitude(prunable(model, c.prune.exclude), s, masks)
        rounds.append(Round(c.imp.epochs_per_round, c.retrain.lr, c.retrain.lr_drops, c.retrain.gamma, begin=begin,
                            level=level))
    return Recipe(rounds, momentum=c.train.momentum, weight_decay=c.train.weight_decay, batch_size=c.train.batch_size)


def _lottery(ctx, k: int) -> Recipe:
    """Lottery ticket with rewinding to epoch k: prune the trained weights, rewind the survivors to their
    epoch-k values, train with the dense schedule from epoch k; repeat, the last round landing on the target."""
    c = ctx.cfg
    rewind = ctx.snapshots[k]
    rounds = []
    for i, (s, level) in enumerate(M.chain_targets(ctx.levels or [ctx.sparsity], c.lth.rounds)):
        def begin(model, masks, s=s, first=i == 0):
            if first:
                _load(model, ctx.dense)
            new = M.global_magnitude(prunable(model, c.prune.exclude), s, masks)
            _load(model, rewind)
            return new
        rounds.append(Round(c.train.epochs - k, c.train.lr, c.train.lr_drops, c.train.gamma,
                            schedule_offset=k, schedule_epochs=c.train.epochs, begin=begin, level=level))
    return Recipe(rounds, momentum=c.train.momentum, weight_decay=c.train.weight_decay, batch_size=c.train.batch_size)


def lth(ctx):
    """The ticket as its papers run it: late rewinding to epoch lth.rewind_epoch (Frankle et al. 2020;
    Renda et al. 2020)."""
    return _lottery(ctx, ctx.cfg.lth.rewind_epoch)


def lth_init(ctx):
    """The original lottery ticket (Frankle & Carbin 2019): survivors rewound to the initialisation."""
    return _lottery(ctx, 0)


def rewind_epoch(cfg, method: str) -> int | None:
    """The dense epoch whose weights a method rewinds to (None: it does not rewind)."""
    return {"lth": cfg.lth.rewind_epoch, "lth_init": 0}.get(method)


def lr_rewind(ctx):
    """Renda et al. 2020: prune once, keep the trained weights, retrain with the dense lr schedule rewound."""
    c = ctx.cfg

    def begin(model, _):
        _load(model, ctx.dense)
        return ctx.mask
    r = Round(c.train.epochs, c.train.lr, c.train.lr_drops, c.train.gamma, begin=begin)
    return Recipe([r], momentum=c.train.momentum, weight_decay=c.train.weight_decay, batch_size=c.train.batch_size)


def gmp_epochs(epochs: int, start: float, end: float) -> tuple[int, int]:
    """The epochs where gradual pruning starts and reaches the target (end <= the last epoch, so the final
    epochs always train the fixed target mask)."""
    # round(.., 9): the decimal product, not its float error (0.29 * 100 = 28.999999999999996 would give 28)
    e0 = min(math.floor(round(start * epochs, 9)), epochs - 1)
    e1 = min(epochs - 1, max(e0 + 1, round(end * epochs)))
    return e0, max(e0, e1)


def gmp(ctx):
    """Zhu & Gupta 2017: from the initialisation, sparsity rises on the cubic schedule from 0 to the target
    between two epochs (masks updated at each epoch start, magnitudes global), then the mask stays fixed."""
    c = ctx.cfg
    e0, e1 = gmp_epochs(c.train.epochs, c.gmp.start, c.gmp.end)

    def hook(model, masks, epoch):
        s = M.cubic_sparsity(epoch, e0, e1, ctx.sparsity) if e1 > e0 else ctx.sparsity
        return M.global_magnitude(prunable(model, c.prune.exclude), s, masks)
    # No begin hook: the retrain stage builds the network from the seed, i.e. the dense run's initialisation.
    r = Round(c.train.epochs, c.train.lr, c.train.lr_drops, c.train.gamma)
    return Recipe([r], epoch_hook=hook, momentum=c.train.momentum, weight_decay=c.train.weight_decay,
                  batch_size=c.train.batch_size)


METHODS = {f.__name__: f for f in (finetune, finetune_layerwise, random, kd, fourier_kd, fourier_kd_reverse,
                                    freq_ce, imp, lth, lth_init, lr_rewind, gmp)}
NEEDS_TEACHER = ("kd", "fourier_kd", "fourier_kd_reverse")
