"""What every training stage shares (stages/training.py): the identity its files record and check, loading a
model or mask with checks, running the training loop with progress and MLflow logging, and finishing (final
metrics, outputs written atomically). Paths and job keys: config/layout.py.
"""
from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

import torch

from pipeline.config import catalog, layout
from pipeline.config.catalog import CATALOG
from pipeline.config.schema import ARCHS, Config
from pipeline.core import cost, masks, models, train
from pipeline.errors import ConfigError, TrackingDown
from pipeline.infra import io
from pipeline.infra.progress import Progress, note
from pipeline.infra.tracking import Run


def sibling(path, name: str) -> Path:
    return Path(path).with_name(name)


def hardware(rt=None) -> str:
    """The device a job ran on, its numeric path when it trained (`rt`: bf16 or fp32, memory format), and the
    torch and CUDA versions it ran with (metrics.json, the report's Hardware line): pyproject allows a range
    of torch versions, so a result says which one made it."""
    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}"
    if rt is not None:
        versions = f"{rt.describe()}; {versions}"
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name()}; {versions}"
    name = platform.machine()
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu:{name}, {os.cpu_count()} cores, {torch.get_num_threads()} thread(s) per job; {versions}"


def check_job(cfg: Config, dataset=None, arch=None, seed=None, sparsity=None, method=None) -> None:
    """Wildcards must name things the config defines (a typo in a direct call fails here, before compute)."""
    if dataset is not None and dataset not in cfg.datasets:
        raise ConfigError(f"dataset = {dataset!r}: not defined under datasets: {sorted(cfg.datasets)}")
    if arch is not None and arch not in ARCHS:
        raise ConfigError(f"arch = {arch!r}: must be one of {sorted(ARCHS)}")
    if seed is not None and seed < 0:
        raise ConfigError(f"seed = {seed}: must be a non-negative integer")
    if sparsity is not None and not 0 < sparsity < 1:
        raise ConfigError(f"sparsity = {sparsity}: must be in the open interval (0, 1)")
    if method is not None and method not in CATALOG:
        raise ConfigError(f"method = {method!r}: must be one of {sorted(CATALOG)}")


def model_file(model, arch, classes, cfg: Config, mask=None, **extra) -> dict:
    return {"kind": "model", **identity(arch, classes, cfg), "state": train.cpu_state(model),
            "masks": None if mask is None else {n: m.cpu() for n, m in mask.items()}, **extra}


def identity(arch, classes, cfg: Config) -> dict:
    """What every model, mask and snapshot file records about its network, checked by the reading job."""
    return {"arch": arch, "classes": classes, "width": cfg.model.width}


def load_model(path, rt: train.Runtime | None = None, expect: dict | None = None, exclude=()):
    """A saved model (dense or pruned), rebuilt; its masks checked against the architecture's prunable
    weights (less the `exclude`d layers, prune.exclude); `expect`: fields (arch, classes, width, job) that
    must match what the reading job expects."""
    blob = io.load(path, "model", keys=("arch", "classes", "width", "state"), expect=expect)
    net = models.build(blob["arch"], blob["classes"], blob["width"])
    try:
        net.load_state_dict(blob["state"])
    except RuntimeError as e:
        raise io.CorruptFile(f"{path}: weights do not fit {blob['arch']}: {str(e).splitlines()[0]}") from None
    if blob.get("masks") is not None:
        check_mask(blob["masks"], net, path, exclude)
    return (train.to_device(net, rt) if rt else net), blob


def load_mask(path, net, expect: dict | None = None, exclude=()) -> dict:
    blob = io.load(path, "mask", keys=("masks",), expect=expect)
    check_mask(blob["masks"], net, path, exclude)
    return blob["masks"]


def check_mask(mask: dict, net, path, exclude=()) -> None:
    """A mask made for another model is an input error naming the file (exit 3), not a stack trace. The
    layers prune.exclude exempts have no mask."""
    try:
        masks.check_compatible(mask, models.prunable(net, exclude), path)
    except ValueError as e:
        raise io.CorruptFile(str(e)) from None


def run_training(cfg, stage, recipe, net, data, rt, seed, key, run: Run, cell: str) -> train.Trained:
    """The training loop of one job (core/train.py) with its progress lines, its MLflow metrics and tags, and
    its checkpoint under runs/<experiment>/checkpoints/."""
    ckpt = layout.checkpoint(cfg.name, stage, key)
    progress = Progress(stage, cell, sum(r.epochs for r in recipe.rounds))

    def log(step, metrics):
        progress(step, metrics)
        try:
            run.log_metrics(metrics, step)
        except TrackingDown as e:     # train.run raises it once this epoch is checkpointed: nothing is lost
            return e
    if ckpt.exists():                 # epochs checkpointed while the tracking server was down: logged now
        run.log_missing(train.load_checkpoint(ckpt, keys=("history",))["history"])

    def on_resume(epochs, rnd, epoch):   # one line in the job's log and in MLflow: a resubmitted job says so
        note(stage, cell, f"resumed from epoch {epochs} of {progress.total} (round {rnd}, epoch {epoch} of it), "
                          f"checkpoint {ckpt}")
        run.set_tags({"resumed_from_epoch": epochs, "resumed_from_checkpoint": str(ckpt)})

    def fell_back(reason):            # the captured step failed: the job went on eagerly (captured.py)
        run.set_tags({"cuda_graphs": "fallback", "cuda_graphs_reason": reason[:500]})
    run.set_tags({"precision": "bf16" if rt.amp else "fp32", "memory_format": "channels_last" if rt.channels_last
                  else "nchw"})
    if rt.graphs:
        run.set_tags({"cuda_graphs": "on"})
    return train.run(recipe, net, data, rt, seed, ckpt, key, log=log, run_id=run.run_id, on_fallback=fell_back,
                     on_resume=on_resume)


def resumed_run_id(cfg, stage, key):
    return train.checkpoint_run_id(layout.checkpoint(cfg.name, stage, key), key)


def finish(cfg, run, res: train.Trained, dd, rt, out, arch, key, ckpt=None, extra_files=None, extra_metrics=None,
           agreement_with=None) -> None:
    """Final metrics (the test set is read exactly once per model, here), outputs written atomically, then
    the checkpoint removed (its job is done; the outputs are what Snakemake and DVC cache). `ckpt` None: more
    outputs of this job follow (a chain's lower levels)."""
    net = res.model
    weights = models.weights(net)
    total = sum(p.numel() for p in weights.values())
    nonzero = sum(int((p != 0).sum()) for p in weights.values())
    metrics = {"val_acc": train.accuracy(net, dd, "val", rt), "test_acc": train.accuracy(net, dd, "test", rt),
               "epochs": res.epochs, "train_seconds": res.seconds, "nonzero_weights": nonzero,
               "weights": total, **(extra_metrics or {}),
               # validation accuracy after each epoch (a chain's: every round's): the report's learning curves
               "val_history": [h["val_acc"] for h in res.history if "val_acc" in h]}
    if agreement_with is not None:
        metrics["test_agreement"] = (train.predict(net, dd, dd.test_x, rt) ==
                                     train.predict(agreement_with, dd, dd.test_x, rt)).float().mean().item()
    macs = cost.count(net, res.masks, tuple(dd.test_x.shape[1:]))    # MACs for one image (cost.py)
    metrics.update(cost.metrics(macs))
    metrics["hardware"] = hardware(rt)
    metrics["experiment"] = cfg.name
    for name, obj in (extra_files or {}).items():
        io.save(obj, sibling(out, name))
    io.write_json(sibling(out, "metrics.json"), metrics)
    sha = io.save(model_file(net, arch, dd.classes, cfg, res.masks, data_sha256=dd.sha256, job=key), out)
    # The run leads to its file: the embedded checksum, and DVC's hash (its cache path files/md5/xx/...).
    run.set_tags({"model_sha256": sha, "model_md5": io.sha256(out, algorithm="md5")})
    last = res.history[-1] if res.history else {}      # val_acc, sparsity: logged by the last epoch
    run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in last},
                    res.epochs)
    run.log_artifact(sibling(out, "metrics.json"))
    with tempfile.TemporaryDirectory() as tmp:       # the per-layer breakdown: an artifact, not 20 metrics
        io.write_json(Path(tmp) / "cost.json", {"note": cost.NOTE, **macs})
        run.log_artifact(Path(tmp) / "cost.json")
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)


def load_snapshots(cfg: Config, path, method: str, made: dict) -> dict:
    """The dense job's weight snapshots, checked to hold the epoch `method` rewinds to."""
    snaps = io.load(path, "snapshots", keys=("snapshots",), expect=made)["snapshots"]
    k = catalog.rewind_epoch(cfg, method)
    if k is not None and k not in snaps:
        raise io.CorruptFile(f"{path}: no weights saved at epoch {k} (the rewind epoch of {method}); "
                             f"add it to train.save_epochs and rerun train_dense")
    return snaps
