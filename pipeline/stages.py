"""The stages of the DAG, one function each; `python -m pipeline <stage>` calls them (see __main__.py).

Every stage: validate the whole config and its own arguments BEFORE any compute, check its input files,
open one MLflow run, compute, write its declared outputs atomically, close the run. Training stages
checkpoint every epoch under runs/<experiment>/checkpoints/ (never a declared output) and resume from there.
"""
from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

import torch

from . import data as D, io, masks as M, methods as MT, models, signature as SG, spectral as S, train as T
from .config import METHOD_PARAMS, ROOT, Config, ConfigError, digest
from .progress import Progress, note
from .tracking import Run


def _sibling(path, name: str) -> Path:
    return Path(path).with_name(name)


def _checkpoint(cfg: Config, stage: str, key: str) -> Path:
    """Where a training job checkpoints: never one of its declared outputs. PIPELINE_RUNS moves it (tests)."""
    return Path(os.environ.get("PIPELINE_RUNS", ROOT / "runs")) / cfg.name / "checkpoints" / f"{stage}-{key}.pt"


def hardware() -> str:
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name()}"
    name = platform.machine()
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu:{name}, {os.cpu_count()} cores, {torch.get_num_threads()} thread(s) per job"


def check_job(cfg: Config, dataset=None, arch=None, seed=None, sparsity=None, method=None) -> None:
    """Wildcards must name things the config defines (a typo in a direct call fails here, before compute)."""
    if dataset is not None and dataset not in cfg.datasets:
        raise ConfigError(f"dataset = {dataset!r}: not defined under datasets: {sorted(cfg.datasets)}")
    if arch is not None and arch not in models.MODELS:
        raise ConfigError(f"arch = {arch!r}: must be one of {sorted(models.MODELS)}")
    if seed is not None and seed < 0:
        raise ConfigError(f"seed = {seed}: must be a non-negative integer")
    if sparsity is not None and not 0 < sparsity < 1:
        raise ConfigError(f"sparsity = {sparsity}: must be in the open interval (0, 1)")
    if method is not None and method not in MT.METHODS:
        raise ConfigError(f"method = {method!r}: must be one of {sorted(MT.METHODS)}")


def _model_file(model, arch, classes, cfg: Config, masks=None, **extra) -> dict:
    return {"kind": "model", **_identity(arch, classes, cfg), "state": T._state_dict(model),
            "masks": None if masks is None else {n: m.cpu() for n, m in masks.items()}, **extra}


def _identity(arch, classes, cfg: Config) -> dict:
    """What every model, mask and snapshot file records about its network, checked by the reading job."""
    return {"arch": arch, "classes": classes, "width": cfg.model.width}


def _dense_key(cfg: Config, dataset, arch, seed, data_sha256) -> str:
    """The dense job's parameters digest: its checkpoint's name, and the `job` field of what it writes."""
    return digest({"stage": "dense", "dataset": dataset, "arch": arch, "seed": seed, "data": data_sha256,
                   **cfg.section("model", "train", "runtime")})


def _prune_key(cfg: Config, dense_sha256, sparsity) -> str:
    """The prune job's parameters digest (the `job` field of its mask): the dense model it cut, and how."""
    return digest({"stage": "prune", "dense": dense_sha256, "sparsity": sparsity, **cfg.section("prune")})


def load_model(path, rt: T.Runtime | None = None, expect: dict | None = None, exclude=()):
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
        _check_mask(blob["masks"], net, path, exclude)
    return (T.to_device(net, rt) if rt else net), blob


def load_mask(path, net, expect: dict | None = None, exclude=()) -> dict:
    blob = io.load(path, "mask", keys=("masks",), expect=expect)
    _check_mask(blob["masks"], net, path, exclude)
    return blob["masks"]


def _check_mask(masks: dict, net, path, exclude=()) -> None:
    """A mask made for another model is an input error naming the file (exit 3), not a stack trace. The
    layers prune.exclude exempts have no mask."""
    try:
        M.check_compatible(masks, models.prunable(net, exclude), path)
    except ValueError as e:
        raise io.CorruptFile(str(e)) from None


def _train(cfg, stage, recipe, net, data, rt, seed, key, run: Run, cell: str):
    ckpt = _checkpoint(cfg, stage, key)
    progress = Progress(stage, cell, sum(r.epochs for r in recipe.rounds))

    def log(step, metrics):
        run.log_metrics(metrics, step)
        progress(step, metrics)
    out = T.run(recipe, net, data, rt, seed, ckpt, key, log=log, run_id=run.run_id)
    return out, ckpt, out["seconds"]


def _resumed_run_id(cfg, stage, key):
    return T.checkpoint_run_id(_checkpoint(cfg, stage, key), key)


# ------------------------------------------------------------------------------------------- the stages


def prepare(cfg: Config, dataset: str, out: str) -> None:
    check_job(cfg, dataset=dataset)
    with Run(cfg, "prepare", {"dataset": dataset}, cfg.section(f"datasets.{dataset}", "data")) as run:
        info = D.prepare(cfg, dataset, Path(out))
        run.set_tags({"data_sha256": info["sha256"]})
        run.log_metrics({f"{k}_images": v for k, v in info["sizes"].items()})


def train_dense(cfg: Config, dataset: str, arch: str, seed: int, data: str, out: str) -> None:
    check_job(cfg, dataset=dataset, arch=arch, seed=seed)
    rt = T.runtime(cfg)
    blob = D.load(Path(data))
    params = cfg.section("model", "train", "runtime")
    key = _dense_key(cfg, dataset, arch, seed, blob["sha256"])
    tags = {"dataset": dataset, "arch": arch, "seed": seed, "method": "dense", "sparsity": 0.0,
            "data_sha256": blob["sha256"]}
    with io.exclusive(_checkpoint(cfg, "dense", key)), \
            Run(cfg, "train_dense", tags, params, _resumed_run_id(cfg, "dense", key)) as run:
        dd = T.Data(blob, rt.device)
        net = models.build(arch, dd.classes, cfg.model.width, seed)
        t = cfg.train
        recipe = T.Recipe([T.Round(t.epochs, t.lr, t.lr_drops, t.gamma)], momentum=t.momentum,
                          weight_decay=t.weight_decay, batch_size=t.batch_size, snapshots=t.save_epochs)
        res, ckpt, secs = _train(cfg, "dense", recipe, net, dd, rt, seed, key, run, f"{dataset}/{arch} seed{seed}")
        _finish(cfg, run, res, dd, rt, out, arch, ckpt, secs, key, extra_files={
            "snapshots.pt": {"kind": "snapshots", **_identity(arch, dd.classes, cfg), "job": key,
                             "snapshots": res["snapshots"]}})


def prune(cfg: Config, dataset: str, arch: str, seed: int, sparsity: float, dense: str, out: str) -> None:
    """Stage 1 of the paper: the topology, by global magnitude pruning of the trained dense network."""
    check_job(cfg, dataset=dataset, arch=arch, seed=seed, sparsity=sparsity)
    tags = {"dataset": dataset, "arch": arch, "seed": seed, "sparsity": sparsity, "method": "mbp"}
    # inputs are checked before the MLflow run opens
    net, blob = load_model(dense, expect={"arch": arch, "width": cfg.model.width})
    dense_sha = io.sha256(dense)
    with Run(cfg, "prune", tags, cfg.section("prune")) as run:
        masks = M.global_magnitude(models.prunable(net, cfg.prune.exclude), sparsity)
        st = M.stats(masks)
        io.save({"kind": "mask", **_identity(arch, blob["classes"], cfg), "sparsity": sparsity,
                 "dense_sha256": dense_sha, "job": _prune_key(cfg, dense_sha, sparsity), "masks": masks}, out)
        io.write_json(_sibling(out, "mask.json"), st)
        run.log_metrics({"sparsity": st["sparsity"], "kept": st["kept"]})
        run.log_artifact(_sibling(out, "mask.json"))


def retrain(cfg: Config, dataset: str, arch: str, seed: int, sparsity: float, method: str, data: str,
            dense: str, snapshots: str, mask: str, out: str) -> None:
    """Stage 2: retrain the pruned network with `method` (finetune, fourier_kd, ... see methods.py)."""
    check_job(cfg, dataset=dataset, arch=arch, seed=seed, sparsity=sparsity, method=method)
    rt = T.runtime(cfg)
    blob = D.load(Path(data))
    dense_key = _dense_key(cfg, dataset, arch, seed, blob["sha256"])
    made = {**_identity(arch, len(blob["classes"]), cfg), "job": dense_key}   # by this experiment's dense job
    teacher, _ = load_model(dense, expect=made)
    dense_sha = io.sha256(dense)
    base_mask = load_mask(mask, teacher, expect={**_identity(arch, len(blob["classes"]), cfg),
                                                 "sparsity": sparsity, "dense_sha256": dense_sha,
                                                 "job": _prune_key(cfg, dense_sha, sparsity)},
                          exclude=cfg.prune.exclude)
    snaps = io.load(snapshots, "snapshots", keys=("snapshots",), expect=made)["snapshots"]
    k = MT.rewind_epoch(cfg, method)
    if k is not None and k not in snaps:
        raise io.CorruptFile(f"{snapshots}: no weights saved at epoch {k} (the rewind epoch of {method}); "
                             f"add it to train.save_epochs and rerun train_dense")
    params = cfg.section(*METHOD_PARAMS[method])
    key = digest({"stage": "retrain", "dataset": dataset, "arch": arch, "seed": seed, "sparsity": sparsity,
                  "method": method, "data": blob["sha256"], "dense": dense_sha, **params})
    tags = {"dataset": dataset, "arch": arch, "seed": seed, "sparsity": sparsity, "method": method,
            "data_sha256": blob["sha256"]}
    with io.exclusive(_checkpoint(cfg, "retrain", key)), \
            Run(cfg, "retrain", tags, params, _resumed_run_id(cfg, "retrain", key)) as run:
        dd = T.Data(blob, rt.device)
        teacher = T.to_device(teacher, rt).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        ctx = MT.Context(cfg, sparsity, seed, {k: v for k, v in teacher.state_dict().items()},
                         base_mask, snaps, teacher if method in MT.NEEDS_TEACHER else None)
        recipe = MT.METHODS[method](ctx)
        net = models.build(arch, dd.classes, cfg.model.width, seed)
        res, ckpt, secs = _train(cfg, "retrain", recipe, net, dd, rt, seed, key, run,
                                 f"{dataset}/{arch} seed{seed} s{sparsity} {method}")
        st = M.stats(res["masks"])
        with tempfile.TemporaryDirectory() as tmp:   # an artifact, not 20 metric charts that bury test_acc
            io.write_json(Path(tmp) / "layer_sparsity.json", st["layers"])
            run.log_artifact(Path(tmp) / "layer_sparsity.json")
        _finish(cfg, run, res, dd, rt, out, arch, ckpt, secs, key, agreement_with=teacher,
                extra_metrics={"sparsity": st["sparsity"], "nonzero": st["kept"], "prunable": st["total"]})


def _finish(cfg, run, res, dd, rt, out, arch, ckpt, secs, key, extra_files=None, extra_metrics=None,
            agreement_with=None) -> None:
    """Final metrics (the test set is read exactly once per model, here), outputs written atomically, then
    the checkpoint removed (its job is done; the outputs are what Snakemake and DVC cache)."""
    net = res["model"]
    total = sum(p.numel() for n, p in net.named_parameters() if n.endswith("weight") and p.dim() > 1)
    nonzero = sum(int((p != 0).sum()) for n, p in net.named_parameters() if n.endswith("weight") and p.dim() > 1)
    metrics = {"val_acc": T.accuracy(net, dd, "val", rt), "test_acc": T.accuracy(net, dd, "test", rt),
               "epochs": res["epochs"], "train_seconds": secs, "nonzero_weights": nonzero,
               "weights": total, **(extra_metrics or {})}
    if agreement_with is not None:
        metrics["test_agreement"] = (T.predict(net, dd, dd.test_x, rt) ==
                                     T.predict(agreement_with, dd, dd.test_x, rt)).float().mean().item()
    metrics["hardware"] = hardware()
    metrics["experiment"] = cfg.name
    for name, obj in (extra_files or {}).items():
        io.save(obj, _sibling(out, name))
    io.write_json(_sibling(out, "metrics.json"), metrics)
    io.save(_model_file(net, arch, dd.classes, cfg, res["masks"], data_sha256=dd.sha256, job=key), out)
    last = res["history"][-1] if res["history"] else {}      # val_acc, sparsity: logged by the last epoch
    run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in last},
                    res["epochs"])
    run.log_artifact(_sibling(out, "metrics.json"))
    if ckpt is not None:               # None: more outputs of this job follow (a chain's lower levels)
        ckpt.unlink(missing_ok=True)


def spectral(cfg: Config, data: str, model: str, out: str, teacher: str | None = None, mask: str | None = None,
             control_seed: int | None = None, tags: dict | None = None) -> None:
    """Band-limited accuracy, agreement with the teacher, Fourier heat map, for one model. With a mask: the
    pruned topology before any retraining, as is, after batch-norm recalibration, and against a random
    mask with its per-layer counts (signature.py; the control's seed is `control_seed`)."""
    if mask is not None and (control_seed is None or teacher is None):
        raise ConfigError("spectral --mask needs --control-seed (the random control mask's seed) and --teacher")
    rt = T.runtime(cfg)
    blob = D.load(Path(data))
    t = {k: "?" for k in ("dataset", "arch", "seed", "sparsity", "method")} | (tags or {})
    cell = f"{t['dataset']}/{t['arch']} seed{t['seed']} s{t['sparsity']} {t['method']}"
    with Run(cfg, "spectral", {**(tags or {}), "data_sha256": blob["sha256"]}, cfg.section("spectral")) as run:
        dd = T.Data(blob, rt.device)
        same = {"classes": dd.classes, "width": cfg.model.width}
        net, made = load_model(model, rt, expect=same, exclude=cfg.prune.exclude)
        ref = load_model(teacher, rt, expect={**same, "arch": made["arch"]})[0] if teacher else None
        if mask is None:
            res = S.evaluate(net, dd, rt, cfg.spectral, teacher=ref)
        else:                                         # the pruned topology before any retraining
            masks = load_mask(mask, net, expect={"arch": made["arch"], "dense_sha256": io.sha256(model)},
                              exclude=cfg.prune.exclude)
            res = SG.evaluate_topologies(net, masks, control_seed, dd, rt, cfg.spectral, ref)
        res.update({k: str(v) for k, v in (tags or {}).items()}, experiment=cfg.name, hardware=hardware())
        heat = res.pop("heatmap")
        note("spectral", cell, f"bands and heat map done in {res['heatmap_seconds']:.1f} s (heat map)")
        io.save({"kind": "heatmap", "heatmap": heat}, _sibling(out, Path(out).stem + "_heatmap.pt"))
        io.write_json(out, res)
        run.log_metrics({f"{band}_acc_r{r}": a for band in ("low", "high") for r, a in
                         zip(res["radii"], res[f"{band}_acc"])})
        run.log_metrics({"heatmap_seconds": res["heatmap_seconds"]})
        run.log_artifact(out)
        with tempfile.TemporaryDirectory() as tmp:     # the UI shows images, not tensors
            from . import figures
            png = Path(tmp) / f"{Path(out).stem}_spectrum.png"
            figures.model_spectrum(res, heat, f"{cfg.name}: {cell}", png)
            run.log_artifact(png, "figures")
