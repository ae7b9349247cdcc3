"""The configuration: params.yaml, overridden by an experiment, parsed into typed dataclasses and checked.

One schema for everything. Every error names the key, the value and what is allowed, and is raised before
any compute starts (the CLI calls `load` first thing, for every stage).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# The methods, the config sections each reads and which ones chain: pipeline/catalog.py (torch-free, as here).
from . import catalog
from .catalog import CATALOG, CHAIN_METHODS, METHOD_PARAMS, METHODS  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
NAME_CHARS = re.compile(r"[A-Za-z0-9_-]+")      # an experiment's name: its file's stem in configs/
ARCHS = ("resnet20", "resnet56", "vgg16_bn")
SOURCES = ("torchvision", "imagefolder", "synthetic")
TORCHVISION_DATASETS = ("cifar10", "cifar100")
SCHEDULES = ("linear", "step", "cosine")
FILTERS = ("circle", "square")
FILTERED = ("both", "student", "teacher")   # distill.filtered: who sees the filtered batch in the teacher's term
GMP_SCOPES = ("layer", "global")
LR_SCHEDULES = ("step", "cosine", "onecycle")


class ConfigError(ValueError):
    """A bad parameter: the message names the key, the value and what is allowed."""


@dataclass
class DatasetCfg:
    source: str
    classes: int
    val_size: int = 5000
    path: str | None = None          # imagefolder: folder holding train/<class>/ and test/<class>/
    train_size: int | None = None    # synthetic: images generated; torchvision/imagefolder: optional subset
    test_size: int | None = None


@dataclass
class GridCfg:
    datasets: list[str]
    archs: list[str]
    sparsities: list[float]
    seeds: list[int]
    methods: list[str]


@dataclass
class DataCfg:
    root: str = "data/raw"
    split_seed: int = 0


@dataclass
class ModelCfg:
    width: float = 1.0


@dataclass
class TrainCfg:
    epochs: int = 160
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_drops: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    save_epochs: list[int] = field(default_factory=lambda: [0, 3])
    schedule: str = "step"     # the lr's shape: step (lr_drops, gamma) | cosine | onecycle (train.lr_at)


@dataclass
class PruneCfg:
    exclude: list[str] = field(default_factory=list)


@dataclass
class RetrainCfg:
    epochs: int = 40
    lr: float = 0.01
    lr_drops: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    schedule: str = "step"


@dataclass
class DistillCfg:
    T: float = 4.0
    alpha: float = 0.9
    radius_start: float = 4.0
    full_band_at: float = 0.7
    schedule: str = "linear"
    steps: int = 4
    filter: str = "circle"
    filtered: str = "both"


@dataclass
class ImpCfg:
    rate: float = 0.2          # fraction of the remaining weights pruned per round (open_lth; Renda et al. 2020)
    epochs_per_round: int = 40


@dataclass
class LthCfg:
    rate: float = 0.2
    rewind_epoch: int = 3     # late rewinding (Frankle et al. 2020); lth_init rewinds to epoch 0


@dataclass
class LrrCfg:
    rate: float = 0.2          # iterative lr rewinding (Renda et al. 2020): 20% per round


@dataclass
class GmpCfg:
    start: float = 0.1
    end: float = 0.6
    scope: str = "layer"       # layer: every layer pruned to s_t (Zhu & Gupta 2017) | global: one threshold


@dataclass
class SpectralCfg:
    radii: list[float] = field(default_factory=lambda: [1, 2, 4, 6, 8, 12, 16])
    filter: str = "circle"
    batch_size: int = 500
    heatmap_images: int = 1000
    heatmap_eps: float = 4.0
    bn_batches: int = 20      # pruning signature: batch-norm recalibration batches (of batch_size images)
    match_tolerance: float = 1.0   # pruning signature: the damage-matched control's accuracy gap (pp)
    match_steps: int = 12          # ... and its bisection steps at most


@dataclass
class RuntimeCfg:
    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    threads: int = 0
    deterministic: bool | str = "auto"
    cuda_graphs: bool | str = "auto"


@dataclass
class ResourcesCfg:
    """What a job asks of the scheduler (pipeline/resources.py; params.yaml documents each key)."""
    threads: int = 4
    mem_mb: int = 8000
    gpu: int = 1
    light_mem_mb: int = 4000
    minutes_per_epoch: dict[str, float] = field(
        default_factory=lambda: {"resnet20": 0.5, "resnet56": 1.5, "vgg16_bn": 1.0})
    runtime_margin: float = 1.5
    runtime_min: int = 10


TRACKING_SCHEMES = ("sqlite:///", "http://", "https://")


@dataclass
class TrackingCfg:
    uri: str = "sqlite:///mlruns.db"


@dataclass
class ClaimCfg:
    """One pre-declared claim (report.claims): `method` is `direction` than `baseline` at every claimed
    sparsity, judged by the rule of pipeline/verdicts.py."""
    method: str
    baseline: str
    direction: str = "better"                # better | worse
    sparsities: list[float] | None = None    # the claimed sparsities (each in grid.sparsities) ...
    min_sparsity: float | None = None        # ... or the grid's sparsities >= this (default report.min_sparsity)
    question: str = ""                       # a control's question in words: it is reported with the controls


@dataclass
class ReportCfg:
    dir: str | None = None           # None: runs/<name>/report (a run's output, never a tracked file)
    equivalence_margin: float = 0.5   # percentage points (TOST margin of "no relevant difference")
    chance_margin: float = 5.0        # percentage points above chance (pruning signature: radii kept)
    alpha: float = 0.05               # every test of every verdict (one-sided; TOST: each side)
    min_sparsity: float = 0.8         # a claim without sparsities covers the grid's sparsities >= this
    claims: list[ClaimCfg] = field(default_factory=list)


@dataclass
class MethodsCfg:
    """Methods added from outside pipeline/ (README: Adding a method)."""
    extra: list[str] = field(default_factory=list)    # modules (importable, or from the project root) to add
    roles: dict[str, str] = field(default_factory=dict)     # an added method's role here (proposed | baseline)
    options: dict[str, dict] = field(default_factory=dict)  # an added method's own parameters, by method


@dataclass
class Config:
    name: str
    datasets: dict[str, DatasetCfg]
    grid: GridCfg
    data: DataCfg
    model: ModelCfg
    train: TrainCfg
    prune: PruneCfg
    retrain: RetrainCfg
    distill: DistillCfg
    imp: ImpCfg
    lth: LthCfg
    lrr: LrrCfg
    gmp: GmpCfg
    spectral: SpectralCfg
    runtime: RuntimeCfg
    resources: ResourcesCfg
    tracking: TrackingCfg
    report: ReportCfg
    methods: MethodsCfg = field(default_factory=MethodsCfg)

    def section(self, *keys: str) -> dict:
        """The named sections ("train", or dotted: "datasets.cifar10") as plain dicts: what a job depends on,
        for checkpoint keys, MLflow params and the rules' params (Snakemake and DVC rerun when they change)."""
        d = dataclasses.asdict(self)
        return {k: lookup(d, k) for k in keys}


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


def _added_methods(raw: dict) -> None:
    """methods.extra's modules imported and their methods added to the catalogue, before anything reads it
    (the project root is importable, as for `python -m pipeline` run there: examples/)."""
    m = raw.get("methods") or {}
    if not isinstance(m, dict):
        return                                  # _build names the bad section
    methods = _coerce(MethodsCfg, m, "methods")
    if str(ROOT) not in map(str, sys.path):
        sys.path.append(str(ROOT))
    try:
        added = catalog.extend(methods.extra, methods.roles)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for name, role in methods.roles.items():
        _need(name in added, f"methods.roles.{name}", role, f"the role of a method methods.extra adds ({added})")


def _check_options(c: Config) -> None:
    """Each added method's options: known names, the default's type; filled in with the defaults."""
    for name, given in c.methods.options.items():
        m = CATALOG.get(name)
        _need(m is not None and bool(m.options), f"methods.options.{name}", given,
              f"the options of an added method that has some ({[k for k, v in CATALOG.items() if v.options]})")
        for k, v in given.items():
            _need(k in m.options, f"methods.options.{name}.{k}", v, f"one of {name}'s options {sorted(m.options)}")
            tp = type(m.options[k])
            c.methods.options[name][k] = _coerce(tp, v, f"methods.options.{name}.{k}")
    for name, m in CATALOG.items():
        if m.options:
            c.methods.options[name] = {**m.options, **c.methods.options.get(name, {})}


def _added_claims(c: Config) -> None:
    """An added method in the grid is judged as the paper's method is, by the same rule, unless the experiment
    declares its claims: a proposed one against every baseline of the grid, and the paper's method against an
    added baseline. The paper's own claim (its intersection over the built-in baselines) stays as it is."""
    declared = {(cl.method, cl.baseline) for cl in c.report.claims}
    named = {cl.method for cl in c.report.claims} | {cl.baseline for cl in c.report.claims}
    for m in c.grid.methods:
        rec = CATALOG[m]
        if rec.source == "built-in" or m in named:
            continue
        pairs = ([(m, b) for b in c.grid.methods if CATALOG[b].role == "baseline"] if rec.role == "proposed"
                 else [("fourier_kd", m)] if rec.role == "baseline" and "fourier_kd" in c.grid.methods else [])
        c.report.claims += [ClaimCfg(method=a, baseline=b) for a, b in pairs if (a, b) not in declared]


def validate(raw: dict) -> Config:
    _added_methods(raw)
    cfg = _build(Config, raw, "")
    _check(cfg)
    _check_options(cfg)
    _added_claims(cfg)
    if cfg.report.dir is None:
        cfg.report.dir = f"runs/{cfg.name}/report"
    return cfg


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp, value, key: str):
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for a in inner[:-1]:                      # e.g. bool | str: the first type that fits
            try:
                return _coerce(a, value, key)
            except ConfigError:
                pass
        return _coerce(inner[-1], value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} = {value!r}: must be a list of {_type_name(args[0])}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r}: must be a mapping")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} = {value!r}: must be a finite number")
    if tp is bool and not isinstance(value, bool) or tp is not bool and isinstance(value, bool) \
            or not isinstance(value, tp):
        raise ConfigError(f"{key} = {value!r}: wrong type {type(value).__name__}, expected {_type_name(tp)}")
    return value


def _build(cls, raw, prefix: str):
    where = prefix or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} = {raw!r}: must be a mapping with keys {[f.name for f in dataclasses.fields(cls)]}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in raw:
        if k not in names:
            raise ConfigError(f"{prefix + '.' if prefix else ''}{k}: unknown key (allowed here: {', '.join(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in raw:
            kwargs[f.name] = _coerce(hints[f.name], raw[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: missing required key")
    return cls(**kwargs)


def _need(ok: bool, key: str, value, allowed: str):
    if not ok:
        raise ConfigError(f"{key} = {value!r}: must be {allowed}")


def _check(c: Config) -> None:
    _need(bool(NAME_CHARS.fullmatch(c.name)), "name", c.name,
          "a non-empty name of letters, digits, - and _")
    for name, d in c.datasets.items():
        k = f"datasets.{name}"
        _need(d.source in SOURCES, f"{k}.source", d.source, f"one of {SOURCES}")
        _need(d.classes >= 2, f"{k}.classes", d.classes, "an integer >= 2")
        _need(d.val_size > 0, f"{k}.val_size", d.val_size, "a positive integer")
        for s in ("train_size", "test_size"):
            v = getattr(d, s)
            _need(v is None or v > 0, f"{k}.{s}", v, "a positive integer or null")
        if d.source == "torchvision":
            _need(name in TORCHVISION_DATASETS, f"{k}.source", d.source,
                  f"used only for datasets named {TORCHVISION_DATASETS}")
            _need(d.classes == {"cifar10": 10, "cifar100": 100}[name], f"{k}.classes", d.classes,
                  f"{ {'cifar10': 10, 'cifar100': 100}[name]} for {name}")
        if d.source == "synthetic":
            _need(d.train_size is not None and d.test_size is not None, f"{k}.train_size", d.train_size,
                  "set (with test_size) for a synthetic dataset")
        if d.train_size is not None:   # the validation images are held out of the train_size images
            _need(d.val_size < d.train_size, f"{k}.val_size", d.val_size, f"smaller than train_size={d.train_size}")
        if d.source == "imagefolder":
            _need(d.path is not None, f"{k}.path", d.path, "the folder holding train/<class>/ and test/<class>/")
            folder = resolve_path(d.path)
            for split in ("train", "test"):
                _need((folder / split).is_dir(), f"{k}.path", d.path,
                      f"an existing folder with a {split}/ subfolder (looked in {folder / split})")
            found = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
            _need(len(found) == d.classes, f"{k}.classes", d.classes,
                  f"the number of class folders in {folder / 'train'} ({len(found)})")
            in_test = sorted(p.name for p in (folder / "test").iterdir() if p.is_dir())
            _need(in_test == found, f"{k}.path", d.path,
                  f"a folder whose test/ holds the same class folders as train/ (only in train/: "
                  f"{sorted(set(found) - set(in_test))[:5]}, only in test/: {sorted(set(in_test) - set(found))[:5]})")
    g = c.grid
    for ds in g.datasets:
        _need(ds in c.datasets, "grid.datasets", ds, f"a dataset defined under datasets: {list(c.datasets)}")
    for a in g.archs:
        _need(a in ARCHS, "grid.archs", a, f"one of {ARCHS}")
    for s in g.sparsities:
        _need(0 < s < 1, "grid.sparsities", s, "in the open interval (0, 1)")
    for m in g.methods:
        _need(m in METHODS, "grid.methods", m, f"one of {METHODS}")
    for s in g.seeds:
        _need(s >= 0, "grid.seeds", s, "a non-negative integer")
    for key in ("datasets", "archs", "sparsities", "seeds", "methods"):
        v = getattr(g, key)
        _need(len(v) > 0 and len(set(v)) == len(v), f"grid.{key}", v, "a non-empty list without repeats")
    _need(c.model.width > 0, "model.width", c.model.width, "positive")
    for sec in ("train", "retrain"):
        t = getattr(c, sec)
        _need(t.epochs > 0, f"{sec}.epochs", t.epochs, "a positive integer")
        _need(t.lr > 0, f"{sec}.lr", t.lr, "positive")
        _need(0 < t.gamma <= 1, f"{sec}.gamma", t.gamma, "in (0, 1]")
        _need(t.schedule in LR_SCHEDULES, f"{sec}.schedule", t.schedule, f"one of {LR_SCHEDULES}")
        _need(all(0 < x < 1 for x in t.lr_drops) and t.lr_drops == sorted(t.lr_drops), f"{sec}.lr_drops",
              t.lr_drops, "increasing fractions in (0, 1)")
    t = c.train
    _need(t.batch_size > 0, "train.batch_size", t.batch_size, "a positive integer")
    _need(0 <= t.momentum < 1, "train.momentum", t.momentum, "in [0, 1)")
    _need(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "non-negative")
    _need(all(0 <= e <= t.epochs for e in t.save_epochs), "train.save_epochs", t.save_epochs,
          f"epochs in [0, train.epochs={t.epochs}]")
    d = c.distill
    _need(d.T > 0, "distill.T", d.T, "positive (a softmax temperature)")
    _need(0 <= d.alpha <= 1, "distill.alpha", d.alpha, "in [0, 1]")
    _need(0 <= d.radius_start < full_band_radius(32), "distill.radius_start", d.radius_start,
          f"in [0, {full_band_radius(32):.2f}) so that the schedule rises to the full band")
    _need(0 < d.full_band_at <= 1, "distill.full_band_at", d.full_band_at, "in (0, 1]")
    # The curriculum must end on the full band within the budget (epoch ceil(full_band_at * epochs) exists).
    reached = math.ceil(round(d.full_band_at * c.retrain.epochs, 9))
    _need(reached < c.retrain.epochs, "distill.full_band_at", d.full_band_at,
          f"small enough that the radius reaches the full band within retrain.epochs={c.retrain.epochs} "
          f"(it would at epoch {reached}, the last is {c.retrain.epochs - 1})")
    _need(d.schedule in SCHEDULES, "distill.schedule", d.schedule, f"one of {SCHEDULES}")
    _need(d.steps >= 1, "distill.steps", d.steps, "a positive integer")
    _need(d.filter in FILTERS, "distill.filter", d.filter, f"one of {FILTERS}")
    _need(d.filtered in FILTERED, "distill.filtered", d.filtered, f"one of {FILTERED}")
    for sec in ("imp", "lth", "lrr"):
        _need(0 < getattr(c, sec).rate < 1, f"{sec}.rate", getattr(c, sec).rate,
              "a fraction in (0, 1) of the remaining weights pruned per round")
    _need(c.imp.epochs_per_round > 0, "imp.epochs_per_round", c.imp.epochs_per_round, "a positive integer")
    _need(c.lth.rewind_epoch in t.save_epochs, "lth.rewind_epoch", c.lth.rewind_epoch,
          f"one of train.save_epochs={t.save_epochs} (the dense stage must save those weights)")
    _need(c.lth.rewind_epoch < t.epochs, "lth.rewind_epoch", c.lth.rewind_epoch,
          f"smaller than train.epochs={t.epochs} (each round trains from epoch k to the end)")
    if "lth_init" in g.methods:
        _need(0 in t.save_epochs, "train.save_epochs", t.save_epochs,
              "a list holding 0 when grid.methods has lth_init (it rewinds to the initialisation)")
    _need(c.gmp.scope in GMP_SCOPES, "gmp.scope", c.gmp.scope, f"one of {GMP_SCOPES}")
    _need(0 <= c.gmp.start < c.gmp.end <= 1, "gmp.start/gmp.end", (c.gmp.start, c.gmp.end),
          "fractions with 0 <= start < end <= 1")
    s = c.spectral
    _need(len(s.radii) > 0 and all(r >= 0 for r in s.radii), "spectral.radii", s.radii,
          "a non-empty list of non-negative radii")
    _need(s.filter in FILTERS, "spectral.filter", s.filter, f"one of {FILTERS}")
    for k in ("batch_size", "heatmap_images"):
        _need(getattr(s, k) > 0, f"spectral.{k}", getattr(s, k), "a positive integer")
    _need(s.heatmap_eps > 0, "spectral.heatmap_eps", s.heatmap_eps, "positive")
    _need(s.bn_batches > 0, "spectral.bn_batches", s.bn_batches, "a positive integer")
    _need(0 < s.match_tolerance < 100, "spectral.match_tolerance", s.match_tolerance,
          "in (0, 100) (percentage points of full-band validation accuracy)")
    _need(s.match_steps >= 0, "spectral.match_steps", s.match_steps, "a non-negative integer")
    _need(c.report.equivalence_margin > 0, "report.equivalence_margin", c.report.equivalence_margin,
          "positive (percentage points)")
    _need(0 <= c.report.chance_margin < 100, "report.chance_margin", c.report.chance_margin,
          "in [0, 100) (percentage points above chance)")
    _check_claims(c)
    if c.report.dir is not None:            # publish.check_target also refuses folders of tracked files (preflight)
        d, build = resolve_path(c.report.dir).resolve(), (ROOT / report_build(c.name)).resolve()
        _need(not ROOT.resolve().is_relative_to(d) and d != (ROOT / "runs").resolve()
              and not d.is_relative_to(build) and not build.is_relative_to(d), "report.dir", c.report.dir,
              "a folder of its own for the report (not the project root, a folder above it, runs/ itself, or "
              f"{report_build(c.name)}/, the orchestrator's copy, or a folder holding it)")
    r = c.runtime
    _need(r.device in ("auto", "cpu", "cuda"), "runtime.device", r.device, "auto, cpu or cuda")
    _need(r.amp in ("auto", "bf16", "off"), "runtime.amp", r.amp, "auto, bf16 or off")
    _need(r.channels_last in ("auto", "on", "off"), "runtime.channels_last", r.channels_last, "auto, on or off")
    _need(r.threads >= 0, "runtime.threads", r.threads, "a non-negative integer (0 = every core)")
    _need(isinstance(r.deterministic, bool) or r.deterministic == "auto", "runtime.deterministic",
          r.deterministic, "auto, true or false")
    _need(isinstance(r.cuda_graphs, bool) or r.cuda_graphs == "auto", "runtime.cuda_graphs", r.cuda_graphs,
          "auto, true or false")
    _need(not (r.cuda_graphs is True and r.compile), "runtime.cuda_graphs", r.cuda_graphs,
          "false (or auto) while runtime.compile is true: a compiled model is not captured as well")
    res = c.resources
    for k in ("threads", "mem_mb", "light_mem_mb", "runtime_min"):
        _need(getattr(res, k) > 0, f"resources.{k}", getattr(res, k), "a positive integer")
    _need(res.gpu >= 0, "resources.gpu", res.gpu, "a non-negative integer (0 = CPU only)")
    _need(res.runtime_margin >= 1, "resources.runtime_margin", res.runtime_margin, ">= 1")
    for a in g.archs:
        _need(a in res.minutes_per_epoch, "resources.minutes_per_epoch", res.minutes_per_epoch,
              f"a mapping with a cost for every arch of the grid (missing: {a})")
    for a, m in res.minutes_per_epoch.items():
        _need(m > 0, f"resources.minutes_per_epoch.{a}", m, "positive (minutes)")
    _need(c.tracking.uri.startswith(TRACKING_SCHEMES), "tracking.uri", c.tracking.uri,
          f"an MLflow store starting with one of {TRACKING_SCHEMES} (a SQLite file, or a tracking server "
          f"http://host:port)")


DIRECTIONS = ("better", "worse")


def _check_claims(c: Config) -> None:
    rep = c.report
    _need(0 < rep.alpha < 0.5, "report.alpha", rep.alpha, "in (0, 0.5) (the level of each one-sided test)")
    _need(0 <= rep.min_sparsity < 1, "report.min_sparsity", rep.min_sparsity, "in [0, 1)")
    seen = set()
    for i, cl in enumerate(rep.claims):
        key = f"report.claims[{i}]"
        _need(cl.method in METHODS, f"{key}.method", cl.method, f"one of {METHODS}")
        _need(cl.baseline in METHODS, f"{key}.baseline", cl.baseline, f"one of {METHODS} other than the method")
        _need(cl.baseline != cl.method, f"{key}.baseline", cl.baseline, "a method other than the claim's method")
        _need(cl.direction in DIRECTIONS, f"{key}.direction", cl.direction, f"one of {DIRECTIONS}")
        _need(cl.sparsities is None or cl.min_sparsity is None, f"{key}.sparsities", cl.sparsities,
              "left out when min_sparsity is given (one or the other)")
        if cl.sparsities is not None:
            _need(len(cl.sparsities) > 0 and all(s in c.grid.sparsities for s in cl.sparsities),
                  f"{key}.sparsities", cl.sparsities, f"a non-empty list of the grid's sparsities {c.grid.sparsities}")
        if cl.min_sparsity is not None:
            _need(0 <= cl.min_sparsity < 1, f"{key}.min_sparsity", cl.min_sparsity, "in [0, 1)")
        _need((cl.method, cl.baseline) not in seen, key, f"{cl.method} vs {cl.baseline}",
              "declared once (each pair of methods is one claim)")
        seen.add((cl.method, cl.baseline))


def lookup(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def full_band_radius(size: int) -> float:
    """The radius (in frequency bins from the centre) that covers the whole centred spectrum, corners included."""
    return math.hypot(size // 2, size // 2)


REPORT_BUILD = "report_build"


def report_build(name: str) -> str:
    """runs/<name>/report_build/: the report job's declared outputs, the only report files Snakemake and DVC own
    (they delete them before the job runs and after it fails). The job then places a copy into report.dir by
    our manifest (publish.place), so report.dir, which a user may own, is never an orchestrator's output."""
    return f"runs/{name}/{REPORT_BUILD}"


def resolve_path(p: str) -> Path:
    """Paths in the config are relative to the project root; ${VAR} and ~ are expanded."""
    path = Path(os.path.expanduser(os.path.expandvars(p)))
    return path if path.is_absolute() else ROOT / path


def digest(obj, drop=()) -> str:
    """A short stable hash of JSON-able parameters (addresses checkpoints, like open_lth's output hashes);
    top-level keys in `drop` are left out."""
    if drop:
        obj = {k: v for k, v in obj.items() if k not in drop}
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]
