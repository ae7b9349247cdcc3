"""The `prune` stage, the paper's stage 1: the topology (the mask), by global magnitude pruning of the trained
dense network."""
from __future__ import annotations

from pipeline.config import layout
from pipeline.config.schema import Config
from pipeline.core import masks, models
from pipeline.infra import io
from pipeline.infra.tracking import Run
from pipeline.stages.common import check_job, identity, load_model, sibling


def prune(cfg: Config, dataset: str, arch: str, seed: int, sparsity: float, dense: str, out: str) -> None:
    check_job(cfg, dataset=dataset, arch=arch, seed=seed, sparsity=sparsity)
    tags = {"dataset": dataset, "arch": arch, "seed": seed, "sparsity": sparsity, "method": "mbp"}
    # inputs are checked before the MLflow run opens
    net, blob = load_model(dense, expect={"arch": arch, "width": cfg.model.width})
    dense_sha = io.sha256(dense)
    io.clear_stale(out, sibling(out, "mask.json"))
    with Run(cfg, "prune", tags, cfg.section(*layout.sections("prune"))) as run:
        mask = masks.global_magnitude(models.prunable(net, cfg.prune.exclude), sparsity)
        st = masks.stats(mask)
        io.save({"kind": "mask", **identity(arch, blob["classes"], cfg), "sparsity": sparsity,
                 "dense_sha256": dense_sha, "job": layout.prune_key(cfg, dense_sha, sparsity), "masks": mask}, out)
        io.write_json(sibling(out, "mask.json"), st)
        run.log_metrics({"sparsity": st["sparsity"], "kept": st["kept"]})
        run.log_artifact(sibling(out, "mask.json"))
