"""The configuration: params.yaml, overridden by an experiment, parsed into typed dataclasses and checked.

One schema for everything (schema.py). Every error names the key, the value and what is allowed, and is raised
before any compute starts (the CLI calls `load` first thing, for every stage)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

from pipeline.config.checks import _added_claims, _added_methods, _check, _check_options
from pipeline.config.schema import NAME_CHARS, Config, _build
from pipeline.errors import ConfigError
from pipeline.config.layout import ROOT


# ----------------------------------------------------------------------------------------------------------
# Loading: YAML (safe loader) -> merged dict -> typed dataclasses -> semantic checks.

def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def merge(base: dict, over: dict) -> dict:
    """Dicts merge key by key (like Snakemake's --configfile); lists and scalars are replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def configs_dir() -> Path:
    """Where an experiment's name is looked up: configs/ (PIPELINE_CONFIGS moves it: tests)."""
    return Path(os.environ.get("PIPELINE_CONFIGS") or ROOT / "configs")


def experiment_path(experiment: str | Path | None) -> Path | None:
    """configs/<name>.yaml for an experiment's name (None: params.yaml alone, the paper). A name only: the
    command line's `--experiment` never loads a file from elsewhere. A Path object names a file directly
    (code, never the command line)."""
    if experiment in (None, "", "paper"):
        return None
    if isinstance(experiment, Path):
        return experiment
    folder = configs_dir()
    known = lambda: ", ".join(sorted(f.stem for f in folder.glob("*.yaml")) + ["paper"])  # noqa: E731
    if not NAME_CHARS.fullmatch(experiment):
        raise ConfigError(f"--experiment = {experiment!r}: must be an experiment's name (letters, digits, - and _), "
                          f"not a path: the jobs load {folder}/<name>.yaml only ({known()})")
    if not (p := folder / f"{experiment}.yaml").is_file():
        raise ConfigError(f"--experiment = {experiment!r}: no config file {p} (experiments: {known()})")
    return p


def merged_raw(experiment: str | None = None, params: str | Path = ROOT / "params.yaml") -> dict:
    """params.yaml with the experiment's file merged over it, unchecked (what `load` validates; what dvc.yaml's
    params read)."""
    raw = read_yaml(params)
    p = experiment_path(experiment)
    return raw if p is None else merge(raw, read_yaml(p))


def load(experiment: str | None = None, params: str | Path = ROOT / "params.yaml") -> Config:
    cfg = validate(merged_raw(experiment, params))
    if (p := experiment_path(experiment)) is not None:
        _check_name(cfg, p)
    return cfg


def check_snakemake(config: dict, configfiles) -> Config:
    """The Snakefile's check: `config` as Snakemake merged it (params.yaml, every --configfile, --config),
    with the same checks as `load`, the experiment's name included; and it must be exactly what the stages
    will load with `--experiment <name>` (a second --configfile or a --config override that the stages would
    not see is refused, naming the keys: Snakemake would record parameters the jobs never used)."""
    cfg = validate(config)
    files = [Path(f) for f in configfiles if Path(f).resolve() != (ROOT / "params.yaml").resolve()]
    if files:
        _check_name(cfg, files[-1])
    stages = load(None if cfg.name == "paper" else cfg.name)
    if stages != cfg:
        ours, theirs = _flat(dataclasses.asdict(cfg)), _flat(dataclasses.asdict(stages))
        keys = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        where = experiment_path(None if cfg.name == "paper" else cfg.name) or ROOT / "params.yaml"
        raise ConfigError(f"{', '.join(keys)}: Snakemake's config ({' + '.join(map(str, configfiles))} and any "
                          f"--config) differs from what the jobs load with --experiment {cfg.name} ({where}): "
                          f"{', '.join(f'{k} = {ours.get(k)!r} vs {theirs.get(k)!r}' for k in keys[:5])}. "
                          f"Put every setting in the experiment file")
    return cfg


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def _check_name(cfg: Config, p: Path) -> None:
    if cfg.name != p.stem:
        raise ConfigError(f"name = {cfg.name!r} in {p}: must equal the experiment's file name {p.stem!r} "
                          f"(outputs, MLflow experiment and the Snakefile all use it)")


def validate(raw: dict) -> Config:
    _added_methods(raw)
    cfg = _build(Config, raw, "")
    _check(cfg)
    _check_options(cfg)
    _added_claims(cfg)
    if cfg.report.dir is None:
        cfg.report.dir = f"runs/{cfg.name}/report"
    return cfg
