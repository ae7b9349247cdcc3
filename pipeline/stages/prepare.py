"""The `prepare` stage: one dataset into a checksummed train/val/test file (pipeline/core/data.py)."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import layout
from pipeline.config.schema import Config
from pipeline.core import data
from pipeline.infra import io
from pipeline.infra.tracking import Run
from pipeline.stages.common import check_job


def prepare(cfg: Config, dataset: str, out: str) -> None:
    check_job(cfg, dataset=dataset)
    io.clear_stale(out, f"{out}.json")
    with Run(cfg, "prepare", {"dataset": dataset}, cfg.section(*layout.sections("prepare", dataset=dataset))) as run:
        info = data.prepare(cfg, dataset, Path(out))
        run.set_tags({"data_sha256": info["sha256"]})
        run.log_metrics({f"{k}_images": v for k, v in info["sizes"].items()})
