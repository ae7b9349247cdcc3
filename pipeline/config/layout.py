"""Where a run's files live and what each job is: the one home of every path under runs/<experiment>/, of the
config sections each kind of job depends on, and of every job key. Torch-free: the Snakefile reads it.

    runs/<experiment>/                    (PIPELINE_RUNS moves runs/: tests, a scratch disk)
      data/<dataset>.pt                   prepare
      dense/<dataset>/<arch>/seed<seed>/  train_dense: model.pt, snapshots.pt, metrics.json
      prune/.../s<sparsity>/              prune: mask.pt, mask.json
      retrain/.../s<sparsity>/<method>/   retrain, or one level of a chain: model.pt, metrics.json
      spectral/<dataset>/<arch>/seed<seed>/[s<sparsity>/]<model>.json (+ _heatmap.pt)
      checkpoints/<stage>-<key>.pt        a training job's resume point (never a declared output)
      logs/                               one log per job
      report_build/                       the report job's outputs; copied into report.dir
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pipeline.config.catalog import METHOD_PARAMS

ROOT = Path(__file__).resolve().parent.parent.parent

# Path patterns relative to runs/<experiment>/; the Snakefile fills the {wildcards}, the jobs and the report
# format them.
DATA = "data/{dataset}.pt"
DENSE = "dense/{dataset}/{arch}/seed{seed}"
PRUNED = "prune/{dataset}/{arch}/seed{seed}/s{sparsity}"
CHAIN = "retrain/{dataset}/{arch}/seed{seed}"              # a chain's --out-dir; each level is a RETRAINED
RETRAINED = CHAIN + "/s{sparsity}/{method}"
SPECTRAL = "spectral/{dataset}/{arch}/seed{seed}"
LOGS = "logs"
REPORT_BUILD = "report_build"

# The config sections each kind of job depends on: its parameters digest (checkpoint name, the `job` field of
# what it writes), its MLflow params, and the Snakemake rule's params (a change reruns the job).
FIXED_SECTIONS = {"dense": ("model", "train", "runtime"), "prune": ("prune",), "spectral": ("spectral",),
                  "report": ("report", "grid")}


def sections(kind: str, dataset: str | None = None, method: str | None = None) -> tuple[str, ...]:
    """prepare: its dataset's section and data; retrain: its method's (catalogue); chain: those and the levels."""
    if kind == "prepare":
        return (f"datasets.{dataset}", "data")
    if kind == "retrain":
        return tuple(METHOD_PARAMS[method])
    if kind == "chain":
        return tuple(METHOD_PARAMS[method]) + ("grid.sparsities",)
    return FIXED_SECTIONS[kind]


def runs() -> Path:
    """The folder of every experiment's runs: <project>/runs, or PIPELINE_RUNS."""
    return Path(os.environ.get("PIPELINE_RUNS") or ROOT / "runs")


def run_dir(name: str) -> Path:
    return runs() / name


def for_snakemake(name: str) -> str:
    """runs/<name> as the Snakefile writes it: relative to the project (its workdir) when inside it."""
    d = run_dir(name)
    return str(d.relative_to(ROOT)) if d.is_relative_to(ROOT) else str(d)


def path(name: str, pattern: str, **wildcards) -> Path:
    return run_dir(name) / pattern.format(**wildcards)


def level_dir(out_dir, sparsity: float, method: str) -> Path:
    """Where a chain's level goes: the retrained model's folder of that (sparsity, method)."""
    return Path(out_dir) / f"s{sparsity}" / method


def checkpoint(name: str, stage: str, key: str) -> Path:
    """Where a training job checkpoints: never one of its declared outputs."""
    return run_dir(name) / "checkpoints" / f"{stage}-{key}.pt"


def report_build(name: str) -> str:
    """runs/<name>/report_build/: the report job's declared outputs, the only report files Snakemake and DVC own
    (they delete them before the job runs and after it fails). The job then places a copy into report.dir by
    our manifest (publish.place), so report.dir, which a user may own, is never an orchestrator's output."""
    return f"{for_snakemake(name)}/{REPORT_BUILD}"


def resolve_path(p: str) -> Path:
    """Paths in the config are relative to the project root; ${VAR} and ~ are expanded."""
    path = Path(os.path.expanduser(os.path.expandvars(p)))
    return path if path.is_absolute() else ROOT / path


# ------------------------------------------------------------------------------------------- job keys


def digest(obj, drop=()) -> str:
    """A short stable hash of JSON-able parameters (addresses checkpoints, like open_lth's output hashes);
    top-level keys in `drop` are left out."""
    if drop:
        obj = {k: v for k, v in obj.items() if k not in drop}
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def dense_key(cfg, dataset, arch, seed, data_sha256) -> str:
    """The dense job's parameters digest: its checkpoint's name, and the `job` field of what it writes."""
    return digest({"stage": "dense", "dataset": dataset, "arch": arch, "seed": seed, "data": data_sha256,
                   **cfg.section(*sections("dense"))})


def prune_key(cfg, dense_sha256, sparsity) -> str:
    """The prune job's parameters digest (the `job` field of its mask): the dense model it cut, and how."""
    return digest({"stage": "prune", "dense": dense_sha256, "sparsity": sparsity, **cfg.section(*sections("prune"))})


def retrain_key(cfg, dataset, arch, seed, sparsity, method, data_sha256, dense_sha256) -> str:
    return digest({"stage": "retrain", "dataset": dataset, "arch": arch, "seed": seed, "sparsity": sparsity,
                   "method": method, "data": data_sha256, "dense": dense_sha256,
                   **cfg.section(*sections("retrain", method=method))})


def chain_params(cfg, method) -> dict:
    """A chain's parameters: its method's sections and the levels it stops at (the grid's sparsities)."""
    return {**cfg.section(*sections("retrain", method=method)), "levels": sorted(cfg.grid.sparsities)}


def chain_key(cfg, dataset, arch, seed, method, data_sha256, dense_sha256) -> str:
    return digest({"stage": "chain", "dataset": dataset, "arch": arch, "seed": seed, "method": method,
                   "data": data_sha256, "dense": dense_sha256, **chain_params(cfg, method)})
