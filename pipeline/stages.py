"""The stages of the DAG, one function each; `python -m pipeline <stage>` calls them (see __main__.py).

Every stage: validate the whole config and its own arguments BEFORE any compute, check its input files,
open one MLflow run, compute, write its declared outputs atomically, close the run. Training stages
checkpoint every epoch under runs/<experiment>/checkpoints/ (never a declared output) and resume from there.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from . import data as D, io, masks as M, methods as MT, models, signature as SG, spectral as S, train as T
from .config import METHOD_PARAMS, Config, ConfigError, digest
from .jobs import (check_job, checkpoint, dense_key, finish, hardware, identity, load_mask, load_model,
                   load_snapshots, prune_key,
                   resumed_run_id, run_training, sibling)
from .progress import Progress, note
from .tracking import Run


# ------------------------------------------------------------------------------------------- the stages


def prepare(cfg: Config, dataset: str, out: str) -> None:
    check_job(cfg, dataset=dataset)
    io.clear_stale(out, f"{out}.json")
    with Run(cfg, "prepare", {"dataset": dataset}, cfg.section(f"datasets.{dataset}", "data")) as run:
        info = D.prepare(cfg, dataset, Path(out))
        run.set_tags({"data_sha256": info["sha256"]})
        run.log_metrics({f"{k}_images": v for k, v in info["sizes"].items()})


def train_dense(cfg: Config, dataset: str, arch: str, seed: int, data: str, out: str) -> None:
    check_job(cfg, dataset=dataset, arch=arch, seed=seed)
    rt = T.runtime(cfg)
    blob = D.load(Path(data))
    params = cfg.section("model", "train", "runtime")
    key = dense_key(cfg, dataset, arch, seed, blob["sha256"])
    tags = {"dataset": dataset, "arch": arch, "seed": seed, "method": "dense", "sparsity": 0.0,
            "data_sha256": blob["sha256"]}
    with io.exclusive(checkpoint(cfg, "dense", key)), \
            Run(cfg, "train_dense", tags, params, resumed_run_id(cfg, "dense", key)) as run:
        io.clear_stale(out, sibling(out, "metrics.json"), sibling(out, "snapshots.pt"))   # a killed copy's
        dd = T.Data(blob, rt.device)
        net = models.build(arch, dd.classes, cfg.model.width, seed)
        res, ckpt, secs = run_training(cfg, "dense", MT.dense_recipe(cfg), net, dd, rt, seed, key, run,
                                       f"{dataset}/{arch} seed{seed}")
        finish(cfg, run, res, dd, rt, out, arch, ckpt, secs, key, extra_files={
            "snapshots.pt": {"kind": "snapshots", **identity(arch, dd.classes, cfg), "job": key,
                             "snapshots": res["snapshots"]}})


def prune(cfg: Config, dataset: str, arch: str, seed: int, sparsity: float, dense: str, out: str) -> None:
    """Stage 1 of the paper: the topology, by global magnitude pruning of the trained dense network."""
    check_job(cfg, dataset=dataset, arch=arch, seed=seed, sparsity=sparsity)
    tags = {"dataset": dataset, "arch": arch, "seed": seed, "sparsity": sparsity, "method": "mbp"}
    # inputs are checked before the MLflow run opens
    net, blob = load_model(dense, expect={"arch": arch, "width": cfg.model.width})
    dense_sha = io.sha256(dense)
    io.clear_stale(out, sibling(out, "mask.json"))
    with Run(cfg, "prune", tags, cfg.section("prune")) as run:
        masks = M.global_magnitude(models.prunable(net, cfg.prune.exclude), sparsity)
        st = M.stats(masks)
        io.save({"kind": "mask", **identity(arch, blob["classes"], cfg), "sparsity": sparsity,
                 "dense_sha256": dense_sha, "job": prune_key(cfg, dense_sha, sparsity), "masks": masks}, out)
        io.write_json(sibling(out, "mask.json"), st)
        run.log_metrics({"sparsity": st["sparsity"], "kept": st["kept"]})
        run.log_artifact(sibling(out, "mask.json"))


def retrain(cfg: Config, dataset: str, arch: str, seed: int, sparsity: float, method: str, data: str,
            dense: str, snapshots: str, mask: str, out: str) -> None:
    """Stage 2: retrain the pruned network with `method` (finetune, fourier_kd, ... see pipeline/methods/)."""
    check_job(cfg, dataset=dataset, arch=arch, seed=seed, sparsity=sparsity, method=method)
    rt = T.runtime(cfg)
    blob = D.load(Path(data))
    dkey = dense_key(cfg, dataset, arch, seed, blob["sha256"])
    made = {**identity(arch, len(blob["classes"]), cfg), "job": dkey}   # by this experiment's dense job
    teacher, _ = load_model(dense, expect=made)
    dense_sha = io.sha256(dense)
    base_mask = load_mask(mask, teacher, expect={**identity(arch, len(blob["classes"]), cfg),
                                                 "sparsity": sparsity, "dense_sha256": dense_sha,
                                                 "job": prune_key(cfg, dense_sha, sparsity)},
                          exclude=cfg.prune.exclude)
    snaps = load_snapshots(cfg, snapshots, method, made)
    params = cfg.section(*METHOD_PARAMS[method])
    key = digest({"stage": "retrain", "dataset": dataset, "arch": arch, "seed": seed, "sparsity": sparsity,
                  "method": method, "data": blob["sha256"], "dense": dense_sha, **params})
    tags = {"dataset": dataset, "arch": arch, "seed": seed, "sparsity": sparsity, "method": method,
            "data_sha256": blob["sha256"]}
    with io.exclusive(checkpoint(cfg, "retrain", key)), \
            Run(cfg, "retrain", tags, params, resumed_run_id(cfg, "retrain", key)) as run:
        io.clear_stale(out, sibling(out, "metrics.json"))
        dd = T.Data(blob, rt.device)
        teacher = T.to_device(teacher, rt)          # frozen by the Context (methods/base.py) for distillation
        ctx = MT.Context(cfg, sparsity, seed, {k: v for k, v in teacher.state_dict().items()},
                         base_mask, snaps, teacher if method in MT.NEEDS_TEACHER else None, arch=arch)
        recipe = MT.recipe_for(method)(ctx)
        net = models.build(arch, dd.classes, cfg.model.width, seed)
        res, ckpt, secs = run_training(cfg, "retrain", recipe, net, dd, rt, seed, key, run,
                                 f"{dataset}/{arch} seed{seed} s{sparsity} {method}")
        st = M.stats(res["masks"])
        with tempfile.TemporaryDirectory() as tmp:   # an artifact, not 20 metric charts that bury test_acc
            io.write_json(Path(tmp) / "layer_sparsity.json", st["layers"])
            run.log_artifact(Path(tmp) / "layer_sparsity.json")
        finish(cfg, run, res, dd, rt, out, arch, ckpt, secs, key, agreement_with=teacher,
                extra_metrics={"sparsity": st["sparsity"], "nonzero": st["kept"], "prunable": st["total"]})


def spectral(cfg: Config, data: str, model: str, out: str, teacher: str | None = None, mask: str | None = None,
             control_seed: int | None = None, tags: dict | None = None) -> None:
    """Band-limited accuracy, agreement with the teacher, Fourier heat map, for one model. With a mask: the
    pruned topology before any retraining, as is, after batch-norm recalibration, and against random masks
    with its per-layer counts and damage-matched to it (signature.py; the controls' seed is `control_seed`)."""
    if mask is not None and (control_seed is None or teacher is None):
        raise ConfigError("spectral --mask needs --control-seed (the random control mask's seed) and --teacher")
    rt = T.runtime(cfg)
    blob = D.load(Path(data))
    t = {k: "?" for k in ("dataset", "arch", "seed", "sparsity", "method")} | (tags or {})
    cell = f"{t['dataset']}/{t['arch']} seed{t['seed']} s{t['sparsity']} {t['method']}"
    io.clear_stale(out, sibling(out, Path(out).stem + "_heatmap.pt"))
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
        io.save({"kind": "heatmap", "heatmap": heat}, sibling(out, Path(out).stem + "_heatmap.pt"))
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
