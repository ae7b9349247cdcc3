"""`python -m pipeline publish --experiment NAME`: copy a finished report from runs/<name>/report/ (a run's
output, git-ignored) to results/<name>/ (the committed example a reader opens on the repository's page).

A run never writes into results/, so no run satisfies its own target with a committed file and no run
dirties git; refreshing the committed example is this one explicit step (`make publish EXPERIMENT=NAME`).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .config import ROOT, Config, ConfigError, resolve_path

FILES = ("README.md", "summary.csv", "spectral.csv", "metrics.json")


def published_dir(cfg: Config) -> Path:
    return ROOT / "results" / cfg.name


def publish(cfg: Config) -> Path:
    src, dst = resolve_path(cfg.report.dir), published_dir(cfg)
    missing = [f for f in FILES if not (src / f).is_file()]
    if missing:
        raise ConfigError(f"report.dir = {cfg.report.dir!r}: no finished report to publish (missing {missing}); "
                          f"run the experiment first (snakemake --cores all --configfile configs/{cfg.name}.yaml)")
    figures = sorted((src / "figures").glob("*.png"))
    if (dst / "figures").is_dir():
        shutil.rmtree(dst / "figures")           # figures of an older grid must not linger
    (dst / "figures").mkdir(parents=True)
    for f in FILES:
        shutil.copyfile(src / f, dst / f)
    for f in figures:
        shutil.copyfile(f, dst / "figures" / f.name)
    return dst
