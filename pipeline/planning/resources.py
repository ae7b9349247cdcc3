"""What each job asks of a scheduler: threads, memory, run time and GPUs (Snakemake's `threads:` and
`resources:`, which the SLURM executor turns into sbatch's --cpus-per-task, --mem, -t and --gpus).

Torch-free: the Snakefile calls it while it is parsed. The numbers come from the `resources:` section of the
config (params.yaml documents the defaults). Two kinds of job:

- compute jobs (train_dense, retrain, chain, spectral*): `resources.threads`, `resources.mem_mb`, `resources.gpu`,
  and a run time estimated from the epochs they train (or the forward passes they make) x a per-arch cost;
- light jobs (prepare, prune, report): one thread, `resources.light_mem_mb`, no GPU, `resources.runtime_min`.

A job that runs past its time is killed by SLURM; Snakemake's retry asks for `attempt` times the time and
resumes the job from its last checkpoint, so an estimate that is too low costs time, not results.
"""
from __future__ import annotations

import math

from pipeline.planning.budget import signature_images, spectral_images, split_sizes, total_epochs
from pipeline.config.schema import Config

COMPUTE = ("train_dense", "retrain", "chain", "spectral_dense", "spectral_pruned", "spectral")
LIGHT = ("prepare", "prune", "report")
REFERENCE_IMAGES = 50_000      # resources.minutes_per_epoch is the cost of one epoch over this many images
FORWARD_PER_STEP = 3           # a forward pass costs about a third of a training step (forward + backward)


def _spectral_epochs(cfg: Config, dataset: str, rule: str) -> float:
    """Forward passes of a spectral job (budget.spectral_images, with the teacher; the pruning signature's:
    budget.signature_images), in training epochs."""
    train, test = split_sizes(cfg, dataset)
    images = signature_images(cfg, train, test) if rule == "spectral_pruned" else spectral_images(cfg, test, True)
    return images / FORWARD_PER_STEP / train


def minutes(cfg: Config, rule: str, wildcards: dict, attempt: int = 1) -> int:
    """The run time a job asks for: runtime_min + runtime_margin x epochs x the arch's cost per epoch, scaled
    to the dataset's size and the width (cost ~ width^2); `attempt` times that on a retry."""
    r = cfg.resources
    if rule in LIGHT:
        return r.runtime_min * attempt
    if rule not in COMPUTE:
        raise ValueError(f"no resources defined for rule {rule!r}")
    dataset, arch = wildcards["dataset"], wildcards["arch"]
    train, _ = split_sizes(cfg, dataset)
    if rule == "train_dense":
        epochs = float(cfg.train.epochs)
    elif rule in ("retrain", "chain"):
        levels = cfg.grid.sparsities if rule == "chain" else None
        epochs = float(total_epochs(cfg, wildcards["method"], levels))
    else:
        epochs = _spectral_epochs(cfg, dataset, rule)
    cost = r.minutes_per_epoch[arch] * train / REFERENCE_IMAGES * cfg.model.width ** 2
    return math.ceil(r.runtime_min + r.runtime_margin * epochs * cost) * attempt


def threads(cfg: Config, rule: str) -> int:
    return cfg.resources.threads if rule in COMPUTE else 1


def mem_mb(cfg: Config, rule: str) -> int:
    return cfg.resources.mem_mb if rule in COMPUTE else cfg.resources.light_mem_mb


def gpu(cfg: Config, rule: str) -> int:
    return cfg.resources.gpu if rule in COMPUTE else 0


def rule_resources(cfg: Config, rule: str) -> dict:
    """A rule's `resources:` (the run time is a function of the job's wildcards and attempt)."""
    return {"mem_mb": mem_mb(cfg, rule), "gpu": gpu(cfg, rule),
            "runtime": lambda wildcards, attempt: minutes(cfg, rule, dict(wildcards), attempt)}
