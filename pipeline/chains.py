"""The `chain` stage: ONE iterative chain per dense network (imp, lth, lth_init, lrr) serves every sparsity.

Iterative pruning passes every lower sparsity on its way to a high one, so the chain runs once per
(dataset, arch, seed, method): every round prunes the method's rate (20%) of the remaining weights, and the
round that reaches a grid sparsity lands exactly on it (masks.chain_targets; the levels of open_lth work this
way). Each level's model is written where a
retrained model of that (sparsity, method) lives, with its own metrics.json (the rounds and epochs the
chain had spent when it reached the level) and its own MLflow run (stage retrain), so the spectral jobs,
the report and the MLflow comparison read it like any other method's model.

The alternative, one chain per target sparsity (`retrain --method imp` by hand still runs it), repeats the
lower levels for every target: with the paper's 5 sparsities at 20% a round, 4 + 8 + 11 + 14 + 18 = 55 rounds
instead of the shared chain's 22. With one sparsity in the grid the two are the same.
"""
from __future__ import annotations

from pathlib import Path

from . import data as D, io, masks as M, methods as MT, models, train as T
from .config import CHAIN_METHODS, METHOD_PARAMS, Config, ConfigError, digest
from .jobs import (check_job, checkpoint, dense_key, finish, identity, load_model, load_snapshots, resumed_run_id,
                   run_training)
from .tracking import Run


def level_dir(out_dir, sparsity: float, method: str) -> Path:
    """Where a level's model goes: the retrained model's folder of that (sparsity, method)."""
    return Path(out_dir) / f"s{sparsity}" / method


def chain(cfg: Config, dataset: str, arch: str, seed: int, method: str, data: str, dense: str, snapshots: str,
          out_dir: str) -> None:
    check_job(cfg, dataset=dataset, arch=arch, seed=seed, method=method)
    if method not in CHAIN_METHODS:
        raise ConfigError(f"method = {method!r}: the chain stage runs {', '.join(CHAIN_METHODS)}")
    levels = sorted(cfg.grid.sparsities)
    rt = T.runtime(cfg)
    blob = D.load(Path(data))
    made = {**identity(arch, len(blob["classes"]), cfg), "job": dense_key(cfg, dataset, arch, seed, blob["sha256"])}
    teacher, _ = load_model(dense, expect=made)
    snaps = load_snapshots(cfg, snapshots, method, made)
    params = {**cfg.section(*METHOD_PARAMS[method]), "levels": levels}
    key = digest({"stage": "chain", "dataset": dataset, "arch": arch, "seed": seed, "method": method,
                  "data": blob["sha256"], "dense": io.sha256(dense), **params})
    tags = {"dataset": dataset, "arch": arch, "seed": seed, "method": method, "data_sha256": blob["sha256"]}
    with io.exclusive(checkpoint(cfg, "chain", key)), \
            Run(cfg, "chain", tags, params, resumed_run_id(cfg, "chain", key)) as run:
        io.clear_stale(*(level_dir(out_dir, s, method) / f for s in levels for f in ("model.pt", "metrics.json")))
        dd = T.Data(blob, rt.device)
        ctx = MT.Context(cfg, levels[-1], seed, dict(teacher.state_dict()), {}, snaps, levels=levels)
        net = models.build(arch, dd.classes, cfg.model.width, seed)
        res, ckpt, _ = run_training(cfg, "chain", MT.recipe_for(method)(ctx), net, dd, rt, seed, key, run,
                              f"{dataset}/{arch} seed{seed} {method}")
        teacher = T.to_device(teacher, rt).eval()
        for s in levels:                       # each level: a model, its metrics and its MLflow run
            lv = res["levels"][s]
            net.load_state_dict(lv["model"])
            st = M.stats(lv["masks"])
            level = {"model": net, "masks": lv["masks"], "epochs": lv["epochs"], "history": []}
            with Run(cfg, "retrain", {**tags, "sparsity": s}, {**params, "chain_run": run.run_id}) as lrun:
                finish(cfg, lrun, level, dd, rt, level_dir(out_dir, s, method) / "model.pt", arch,
                        ckpt if s == levels[-1] else None, lv["seconds"], key, agreement_with=teacher,
                        extra_metrics={"sparsity": st["sparsity"], "nonzero": st["kept"], "prunable": st["total"],
                                       "rounds": lv["rounds"], "chain_levels": len(levels)})
