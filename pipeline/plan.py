"""`python -m pipeline plan`: what an experiment's grid costs before it runs.

The jobs come from the Snakefile itself (the DAG Snakemake plans, as for dvc.yaml), so the plan never
disagrees with what runs. Each training job's images are its epochs times the training split; each spectral
job's images are the forward passes of its band evaluation and heat map. Device-hours divide those images by
the img/s MEASURED on a device for each (arch, kind of step): `benchmarks/gpu_check.py` writes that file
(`benchmarks/results/throughput-<device>.json`). Nothing here is typed in: without a measurement for an
(arch, step) the plan says so instead of guessing.

What is counted, and what is not: the training steps and the spectral forward passes, one job at a time on
one device (several jobs sharing a GPU raise the total throughput; see benchmarks/README.md). Start-up,
validation passes, checkpoints and data preparation are left out (seconds per job).
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path

from . import masks as M
from .config import Config, ROOT, resolve_path

# The kind of training step each method runs; its measured img/s prices its epochs. fourier_kd and its
# reverse run the two-student-pass step ("fourier_kd": filter + teacher + 2 student passes) until the full
# band and the plain kd step after; freq_ce (one filtered student pass, no teacher) is priced as a masked step
# (its FFT is 0.2% of a step, benchmarks/README.md); gmp trains with a mask from its first pruning epoch on.
STEP = {"dense": "dense", "finetune": "masked", "finetune_layerwise": "masked", "random": "masked",
        "kd": "kd", "fourier_kd": "fourier_kd", "fourier_kd_reverse": "fourier_kd", "freq_ce": "masked",
        "imp": "masked", "lth": "masked", "lth_init": "masked", "lr_rewind": "masked", "gmp": "masked"}
FULL_SIZES = {"cifar10": (50000, 10000), "cifar100": (50000, 10000)}   # torchvision train / test images


def method_epochs(cfg: Config, method: str, levels: list[float] | None = None) -> list[tuple[str, int]]:
    """[(step kind, epochs)] that one retraining job of `method` runs (what methods.py's recipes run); for
    the iterative methods, the chain through `levels` (default: one target, the per-target schedule)."""
    c = cfg
    one_shot = c.retrain.epochs
    if method in ("fourier_kd", "fourier_kd_reverse"):
        filtered = min(one_shot, math.ceil(round(c.distill.full_band_at * one_shot, 9)))
        return [("fourier_kd", filtered), ("kd", one_shot - filtered)]
    imp_rounds = len(M.chain_targets(levels or [0.5], c.imp.rounds))
    lth_rounds = len(M.chain_targets(levels or [0.5], c.lth.rounds))
    per = {"imp": imp_rounds * c.imp.epochs_per_round,
           "lth": lth_rounds * (c.train.epochs - c.lth.rewind_epoch),
           "lth_init": lth_rounds * c.train.epochs,
           "lr_rewind": c.train.epochs, "gmp": c.train.epochs}
    if method not in STEP:
        raise KeyError(f"plan: method {method!r} has no cost model (add it to pipeline/plan.py STEP)")
    return [(STEP[method], per.get(method, one_shot))]


def _count_images(folder: Path) -> int:
    return sum(len(os.listdir(d)) for d in folder.iterdir() if d.is_dir())


def split_sizes(cfg: Config, dataset: str) -> tuple[int, int]:
    """(training images per epoch, test images) of a dataset as `prepare` will split it."""
    d = cfg.datasets[dataset]
    if d.source == "synthetic":
        full = (d.train_size, d.test_size)
    elif d.source == "torchvision":
        full = FULL_SIZES[dataset]
    else:
        root = resolve_path(d.path)
        full = (_count_images(root / "train"), _count_images(root / "test"))
    train = min(d.train_size or full[0], full[0])
    test = min(d.test_size or full[1], full[1])
    return train - d.val_size, test


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


def job_cost(cfg: Config, job: dict, sizes: dict) -> tuple[str, list[tuple[str, int]]]:
    """(row label, [(kind, images)]) of one planned job; kind is a step kind or "eval"."""
    w, rule = job["wildcards"], job["rule"]
    if "dataset" not in w:
        return rule, []
    train, test = sizes[w["dataset"]]
    if rule == "train_dense":
        return "dense", [("dense", cfg.train.epochs * train)]
    if rule in ("retrain", "chain"):
        levels = cfg.grid.sparsities if rule == "chain" else None
        return w["method"], [(k, e * train) for k, e in method_epochs(cfg, w["method"], levels)]
    if rule.startswith("spectral"):
        return "spectral", [("eval", spectral_images(cfg, test, teacher="--teacher" in job["cmd"]))]
    return rule, []


def load_throughput(path: Path) -> dict:
    """The measured img/s file that benchmarks/gpu_check.py writes."""
    t = json.loads(Path(path).read_text())
    if not isinstance(t, dict) or not isinstance(t.get("img_per_s"), dict):
        raise ValueError(f"{path}: not a throughput file (no img_per_s mapping)")
    return t


def estimate(cfg: Config, experiment: str | None, throughput: dict | None) -> dict:
    """{row label: jobs, epochs, images, seconds, missing} over every job the Snakefile plans."""
    from .dag import snakemake_jobs      # imports snakemake: only here
    sizes = {ds: split_sizes(cfg, ds) for ds in cfg.grid.datasets}
    rates = (throughput or {}).get("img_per_s", {})
    rows: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "epochs": 0, "images": 0, "seconds": 0.0,
                                                 "missing": set()})
    for job in snakemake_jobs(experiment):
        label, parts = job_cost(cfg, job, sizes)
        r = rows[label]
        r["jobs"] += 1
        if job["rule"] == "train_dense":
            r["epochs"] += cfg.train.epochs
        elif job["rule"] in ("retrain", "chain"):
            levels = cfg.grid.sparsities if job["rule"] == "chain" else None
            r["epochs"] += sum(e for _, e in method_epochs(cfg, job["wildcards"]["method"], levels))
        for kind, images in parts:
            r["images"] += images
            rate = rates.get(job["wildcards"]["arch"], {}).get(kind)
            if rate:
                r["seconds"] += images / rate
            else:
                r["missing"].add(f"{job['wildcards']['arch']}/{kind}")
    return dict(rows)


def plan(cfg: Config, experiment: str | None, throughput: dict | None) -> str:
    rows = estimate(cfg, experiment, throughput)
    src = (f"measured on {throughput['device']} ({throughput.get('date', '?')}, batch "
           f"{throughput.get('batch', '?')}, width {throughput.get('width', '?')})") if throughput else \
        "no throughput file: run benchmarks/gpu_check.py on the device, then pass --throughput"
    lines = [f"experiment {cfg.name}: {sum(r['jobs'] for r in rows.values())} jobs; device-hours {src}", "",
             f"{'jobs of':<20}{'jobs':>7}{'epochs':>9}{'images (M)':>13}{'device-hours':>14}  note"]
    total, missing = 0.0, set()
    for label, r in sorted(rows.items(), key=lambda kv: -kv[1]["images"]):
        if not r["images"]:
            lines.append(f"{label:<20}{r['jobs']:>7}  (no training or evaluation)")
            continue
        hours = "-" if r["missing"] else f"{r['seconds'] / 3600:.3f}"
        note = ("no measurement for " + ", ".join(sorted(r["missing"]))) if r["missing"] else ""
        lines.append(f"{label:<20}{r['jobs']:>7}{r['epochs'] or '':>9}{r['images'] / 1e6:>13.3f}{hours:>14}  {note}")
        total += r["seconds"]
        missing |= r["missing"]
    lines += ["", f"total: {total / 3600:.3f} device-hours, one job at a time"
              + (" (INCOMPLETE: rows without a measurement are left out)" if missing else "")]
    return "\n".join(lines) + "\n"


def default_throughput() -> Path | None:
    """The newest measurement under benchmarks/results/, if any."""
    files = sorted((ROOT / "benchmarks" / "results").glob("throughput-*.json"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None
