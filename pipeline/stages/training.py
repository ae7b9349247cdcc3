"""The training stages: `train_dense` (the teacher), `retrain` (the pruned network, by one method: the paper's
fourier_kd or a baseline), and `chain` (ONE iterative chain per dense network: imp, lth, lth_init, lrr).

A chain serves every sparsity: iterative pruning passes every lower sparsity on its way to a high one, so it
runs once per (dataset, arch, seed, method); every round prunes the method's rate (20%) of the remaining
weights, and the round that reaches a grid sparsity lands exactly on it (planning/budget.py:chain_targets; the
levels of open_lth work this way). Each level's model is written where a retrained model of that (sparsity,
method) lives, with its own metrics.json (the rounds and epochs the chain had spent when it reached the level)
and its own MLflow run (stage retrain), so the spectral jobs, the report and the MLflow comparison read it like
any other method's model. One chain per target sparsity (`retrain --method imp` by hand still runs it) would
repeat the lower levels: with the paper's 5 sparsities at 20% a round, 55 rounds instead of the shared 22.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from pipeline.config import layout
from pipeline.config.catalog import CHAIN_METHODS, NEEDS_TEACHER
from pipeline.config.schema import Config
from pipeline.core import data as data_file, masks, models, train
from pipeline.errors import ConfigError
from pipeline.infra import io
from pipeline.infra.tracking import Run
from pipeline.methods import base, registry
from pipeline.stages.common import (check_job, finish, identity, load_mask, load_model, load_snapshots,
                                    resumed_run_id, run_training, sibling)


@contextlib.contextmanager
def opened(cfg: Config, stage: str, run_stage: str, key: str, tags: dict, params: dict, outputs):
    """The preamble every training stage shares, once its inputs are checked: the job's lock (its checkpoint
    file, so that two copies never train into one), its MLflow run (the same run again when the checkpoint
    names one), and what a killed copy left of the outputs cleared."""
    with io.exclusive(layout.checkpoint(cfg.name, stage, key)), \
            Run(cfg, run_stage, tags, params, resumed_run_id(cfg, stage, key)) as run:
        io.clear_stale(*outputs)
        yield run


def teacher_inputs(cfg: Config, dataset, arch, seed, method, data, dense, snapshots):
    """The prepared data, the dense teacher and its snapshots, each checked to come from this experiment's
    dense job (its key) and, for the snapshots, to hold the epoch `method` rewinds to."""
    blob = data_file.load(Path(data))
    made = {**identity(arch, len(blob["classes"]), cfg),
            "job": layout.dense_key(cfg, dataset, arch, seed, blob["sha256"])}
    teacher, _ = load_model(dense, expect=made)
    return blob, teacher, load_snapshots(cfg, snapshots, method, made)


def train_dense(cfg: Config, dataset: str, arch: str, seed: int, data: str, out: str) -> None:
    check_job(cfg, dataset=dataset, arch=arch, seed=seed)
    rt = train.runtime(cfg)
    blob = data_file.load(Path(data))
    key = layout.dense_key(cfg, dataset, arch, seed, blob["sha256"])
    tags = {"dataset": dataset, "arch": arch, "seed": seed, "method": "dense", "sparsity": 0.0,
            "data_sha256": blob["sha256"]}
    params = cfg.section(*layout.sections("dense"))
    outputs = (out, sibling(out, "metrics.json"), sibling(out, "snapshots.pt"))
    with opened(cfg, "dense", "train_dense", key, tags, params, outputs) as run:
        dd = train.Data(blob, rt.device)
        net = models.build(arch, dd.classes, cfg.model.width, seed)
        res = run_training(cfg, "dense", base.dense_recipe(cfg), net, dd, rt, seed, key, run,
                           f"{dataset}/{arch} seed{seed}")
        finish(cfg, run, res, dd, rt, out, arch, key, layout.checkpoint(cfg.name, "dense", key), extra_files={
            "snapshots.pt": {"kind": "snapshots", **identity(arch, dd.classes, cfg), "job": key,
                             "snapshots": res.snapshots}})


def retrain(cfg: Config, dataset: str, arch: str, seed: int, sparsity: float, method: str, data: str,
            dense: str, snapshots: str, mask: str, out: str) -> None:
    """Stage 2: retrain the pruned network with `method` (finetune, fourier_kd, ... see pipeline/methods/)."""
    check_job(cfg, dataset=dataset, arch=arch, seed=seed, sparsity=sparsity, method=method)
    rt = train.runtime(cfg)
    blob, teacher, snaps = teacher_inputs(cfg, dataset, arch, seed, method, data, dense, snapshots)
    dense_sha = io.sha256(dense)
    base_mask = load_mask(mask, teacher, expect={**identity(arch, len(blob["classes"]), cfg),
                                                 "sparsity": sparsity, "dense_sha256": dense_sha,
                                                 "job": layout.prune_key(cfg, dense_sha, sparsity)},
                          exclude=cfg.prune.exclude)
    key = layout.retrain_key(cfg, dataset, arch, seed, sparsity, method, blob["sha256"], dense_sha)
    tags = {"dataset": dataset, "arch": arch, "seed": seed, "sparsity": sparsity, "method": method,
            "data_sha256": blob["sha256"]}
    params = cfg.section(*layout.sections("retrain", method=method))
    with opened(cfg, "retrain", "retrain", key, tags, params, (out, sibling(out, "metrics.json"))) as run:
        dd = train.Data(blob, rt.device)
        teacher = train.to_device(teacher, rt)          # frozen by the Context (methods/base.py) for distillation
        ctx = base.Context(cfg, sparsity, seed, {k: v for k, v in teacher.state_dict().items()},
                           base_mask, snaps, teacher if method in NEEDS_TEACHER else None, arch=arch)
        recipe = registry.recipe_for(method)(ctx)
        net = models.build(arch, dd.classes, cfg.model.width, seed)
        res = run_training(cfg, "retrain", recipe, net, dd, rt, seed, key, run,
                           f"{dataset}/{arch} seed{seed} s{sparsity} {method}")
        st = masks.stats(res.masks)
        with tempfile.TemporaryDirectory() as tmp:   # an artifact, not 20 metric charts that bury test_acc
            io.write_json(Path(tmp) / "layer_sparsity.json", st["layers"])
            run.log_artifact(Path(tmp) / "layer_sparsity.json")
        finish(cfg, run, res, dd, rt, out, arch, key, layout.checkpoint(cfg.name, "retrain", key),
               agreement_with=teacher,
               extra_metrics={"sparsity": st["sparsity"], "nonzero": st["kept"], "prunable": st["total"]})


def chain(cfg: Config, dataset: str, arch: str, seed: int, method: str, data: str, dense: str, snapshots: str,
          out_dir: str) -> None:
    check_job(cfg, dataset=dataset, arch=arch, seed=seed, method=method)
    if method not in CHAIN_METHODS:
        raise ConfigError(f"method = {method!r}: the chain stage runs {', '.join(CHAIN_METHODS)}")
    levels = sorted(cfg.grid.sparsities)
    rt = train.runtime(cfg)
    blob, teacher, snaps = teacher_inputs(cfg, dataset, arch, seed, method, data, dense, snapshots)
    params = layout.chain_params(cfg, method)
    key = layout.chain_key(cfg, dataset, arch, seed, method, blob["sha256"], io.sha256(dense))
    tags = {"dataset": dataset, "arch": arch, "seed": seed, "method": method, "data_sha256": blob["sha256"]}
    outputs = [layout.level_dir(out_dir, s, method) / f for s in levels for f in ("model.pt", "metrics.json")]
    with opened(cfg, "chain", "chain", key, tags, params, outputs) as run:
        dd = train.Data(blob, rt.device)
        ctx = base.Context(cfg, levels[-1], seed, dict(teacher.state_dict()), {}, snaps, levels=levels)
        net = models.build(arch, dd.classes, cfg.model.width, seed)
        res = run_training(cfg, "chain", registry.recipe_for(method)(ctx), net, dd, rt, seed, key, run,
                           f"{dataset}/{arch} seed{seed} {method}")
        teacher = train.to_device(teacher, rt).eval()
        for s in levels:                       # each level: a model, its metrics and its MLflow run
            lv = res.levels[s]
            net.load_state_dict(lv["model"])
            st = masks.stats(lv["masks"])
            level = train.Trained(model=net, masks=lv["masks"], epochs=lv["epochs"], seconds=lv["seconds"],
                                  history=res.history[:lv["epochs"]])       # the chain's epochs up to this level
            with Run(cfg, "retrain", {**tags, "sparsity": s}, {**params, "chain_run": run.run_id}) as lrun:
                finish(cfg, lrun, level, dd, rt, layout.level_dir(out_dir, s, method) / "model.pt", arch, key,
                       layout.checkpoint(cfg.name, "chain", key) if s == levels[-1] else None,
                       agreement_with=teacher,
                       extra_metrics={"sparsity": st["sparsity"], "nonzero": st["kept"], "prunable": st["total"],
                                      "rounds": lv["rounds"], "chain_levels": len(levels)})
