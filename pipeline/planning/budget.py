"""What a job costs, counted before it runs, torch-free (the Snakefile's resources and `plan` both use it):
the rounds of the iterative methods (their pruning targets), the epochs and the kind of training step of
every method, and the forward passes of a spectral job."""
from __future__ import annotations

import functools
import math
import os

from pipeline.config.catalog import CATALOG
from pipeline.config.schema import Config
from pipeline.config.layout import resolve_path

CIFAR_SIZES = (50_000, 10_000)      # torchvision's CIFAR-10 and CIFAR-100: training, test images


@functools.lru_cache(maxsize=None)
def _count_images(folder: str) -> int:
    # Cached: the Snakefile asks once per job while it is parsed (config.check has checked the folder exists).
    return sum(len(os.listdir(d)) for d in os.scandir(folder) if d.is_dir())


def split_sizes(cfg: Config, dataset: str) -> tuple[int, int]:
    """(training images per epoch, test images) of a dataset as `prepare` will split it: the optional subset
    of the source's images, less the validation images held out of training."""
    d = cfg.datasets[dataset]
    if d.source == "synthetic":
        full = (d.train_size, d.test_size)
    elif d.source == "torchvision":
        full = CIFAR_SIZES
    else:
        root = resolve_path(d.path)
        full = (_count_images(str(root / "train")), _count_images(str(root / "test")))
    train = min(d.train_size or full[0], full[0])
    test = min(d.test_size or full[1], full[1])
    return train - d.val_size, test


def chain_targets(levels: list[float], rate: float) -> list[tuple[float, float | None]]:
    """ONE iterative chain through every level (the grid's sparsities): [(sparsity after the round, the level
    it completes or None)]. Every round prunes `rate` of the weights still remaining (open_lth's 20%), except
    the round that reaches a level: it lands exactly on that level (pruning `rate` or less); the next round
    prunes `rate` of what the level kept. So each level is passed exactly, and one chain serves them all.
    A single level gives the per-target schedule (the same rounds a chain to that sparsity alone runs)."""
    if not 0 < rate < 1:
        raise ValueError(f"rate = {rate!r}: must be in (0, 1)")
    out, keep = [], 1.0
    for s in sorted(levels):
        goal = 1.0 - s
        # a round whose `rate` would prune to (or past) the level lands on it; the relative 1e-9 absorbs the
        # float error of keep x (1 - rate)^n where n rounds reach the level exactly (rate 0.5 to 0.75)
        while keep * (1.0 - rate) > goal * (1.0 + 1e-9):
            keep *= 1.0 - rate
            out.append((1.0 - keep, None))
        out.append((s, s))
        keep = goal
    return out


def chain_rounds(levels: list[float], rate: float) -> dict[float, int]:
    """{level: rounds the chain has run when it reaches that level} (what each level's metrics record)."""
    t = chain_targets(levels, rate)
    return {lv: i + 1 for i, (_, lv) in enumerate(t) if lv is not None}


# The kind of training step each method runs is its catalogue record's `step`; its measured img/s prices the
# method's epochs. The methods of the fourier_kd step (fourier_kd and its curriculum controls anti, shuffled,
# reverse: the same number of filtered epochs; freq_ce) run the two-student-pass step (filter + teacher + 2
# student passes) until the full band and the plain kd step after (with distill.filtered = teacher the student
# runs once: the kd step plus an FFT, 0.2% of a step, benchmarks/README.md). freq_ce makes the same two student
# passes without the teacher's forward pass: priced as the fourier_kd step, an upper bound (no step of its own
# is measured). gmp trains with a mask from its first pruning epoch on.


def method_epochs(cfg: Config, method: str, levels: list[float] | None = None) -> list[tuple[str, int]]:
    """[(step kind, epochs)] that one retraining job of `method` runs (what pipeline/methods/' recipes run); for
    the iterative methods, the chain through `levels` (default: a chain to the grid's highest sparsity alone,
    what `retrain --method imp` at that sparsity runs)."""
    c = cfg
    one_shot = c.retrain.epochs
    m = CATALOG.get(method)
    if m is None:
        raise KeyError(f"method {method!r} is not in the catalogue (pipeline/config/catalog.py, or methods.extra)")
    if m.step == "fourier_kd":
        filtered = min(one_shot, math.ceil(round(c.distill.full_band_at * one_shot, 9)))
        full = "masked" if method == "freq_ce" else "kd"          # freq_ce at the full band: one CE pass
        if method != "freq_ce" and c.distill.filtered == "teacher":
            return [("kd", one_shot)]
        return [("fourier_kd", filtered), (full, one_shot - filtered)]

    def rounds(rate):
        return len(chain_targets(levels or [max(c.grid.sparsities)], rate))
    chains = {"imp": lambda: rounds(c.imp.rate) * c.imp.epochs_per_round,      # rounds x each round's epochs
              "lth": lambda: rounds(c.lth.rate) * (c.train.epochs - c.lth.rewind_epoch),
              "lth_init": lambda: rounds(c.lth.rate) * c.train.epochs,
              "lrr": lambda: rounds(c.lrr.rate) * c.train.epochs}
    epochs = {"retrain": lambda: one_shot, "dense": lambda: c.train.epochs}
    return [(m.step, chains[method]() if m.budget == "chain" else epochs[m.budget]())]


def total_epochs(cfg: Config, method: str, levels: list[float] | None = None) -> int:
    return sum(e for _, e in method_epochs(cfg, method, levels))


def heatmap_pairs(size: int = 32) -> int:
    """Conjugate pairs of centred frequencies the heat map evaluates (spectral.heatmap evaluates each once)."""
    return len({min((i % size, j % size), (-i % size, -j % size))
                for i in range(-size // 2, size // 2) for j in range(-size // 2, size // 2)})


def spectral_images(cfg: Config, test: int, teacher: bool) -> int:
    """Forward passes (in images) of one spectral job: low- and high-pass test sets at every radius and the
    full band, again for the teacher when agreement is measured, and the heat map."""
    s = cfg.spectral
    bands = 2 * (len(s.radii) + 1) * test * (2 if teacher else 1)
    return bands + min(s.heatmap_images, test) * heatmap_pairs()


def signature_images(cfg: Config, train: int, test: int) -> int:
    """Forward passes (in images, an upper bound) of one pruning-signature job (signature.py): the teacher's
    bands once; the bands of six variants (MBP as is, with the heat map; MBP recalibrated; the same-count and
    the damage-matched control, each as is and recalibrated); and the damage-matched searches: per evaluation,
    MBP's full-band accuracy, at most match_steps + 1 candidates and one re-application, each a pass over the
    test set, the recalibrated search also recalibrating batch norm each time (as pruned_bn and random_mask_bn
    do once)."""
    s = cfg.spectral
    bands = 2 * (len(s.radii) + 1) * test
    recal = min(s.bn_batches * s.batch_size, train)
    search = s.match_steps + 3
    return 7 * bands + min(s.heatmap_images, test) * heatmap_pairs() + (2 + search) * recal + 2 * search * test
