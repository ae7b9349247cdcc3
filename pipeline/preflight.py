"""The checks every entry point runs before any compute, in one place: `python -m pipeline validate`, every
stage, and the Snakefile when Snakemake parses it, so that what a run would refuse is refused by all three.

- the config (config.load / config.check_snakemake): every key, its type and range;
- report.dir, symlinks followed and `..` collapsed (publish.check_target): never a folder of someone else's;
- the tracking store (tracking.check_uri): its folder exists, the store and its lock file can be written.

Torch-free (the Snakefile imports it). Under Snakemake a refusal is one line on stderr and exit status 2,
as by hand: no stack frames (2: a bad config; 3: a corrupt manifest in report.dir).
"""
from __future__ import annotations

import sys

from pipeline.config.schema import Config
from pipeline.errors import ConfigError
from pipeline.config.loading import check_snakemake
from pipeline.config.layout import resolve_path
from pipeline.errors import CorruptFile


def check(cfg: Config, probe: bool = False) -> Config:
    """report.dir and the tracking store (`probe`: a tracking server must answer, which the stages ask)."""
    from pipeline.report.publish import check_target
    from pipeline.infra.tracking import check_uri
    check_target(resolve_path(cfg.report.dir))
    check_uri(cfg, probe=probe)
    return cfg


def snakefile(config: dict, configfiles) -> Config:
    """The Snakefile's config: check_snakemake and `check`, or one line naming the key and exit 2."""
    try:
        return check(check_snakemake(config, configfiles))
    except (ConfigError, CorruptFile) as e:      # the CLI's words and exit status (pipeline/__main__.py)
        label, code = ("config error", 2) if isinstance(e, ConfigError) else ("input error", 3)
        print(f"{label}: {e}", file=sys.stderr)
        raise SystemExit(code) from None
