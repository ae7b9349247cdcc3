"""The configuration's schema: one typed dataclass per section of params.yaml, and the coercion of a merged
YAML mapping into them (every type error names its dotted key). The checks of values: checks.py; loading the
files: loading.py."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field


from pipeline.errors import ConfigError


NAME_CHARS = re.compile(r"[A-Za-z0-9_-]+")      # an experiment's name: its file's stem in configs/
ARCHS = ("resnet20", "resnet56", "vgg16_bn")
SOURCES = ("torchvision", "imagefolder", "synthetic")
TORCHVISION_DATASETS = ("cifar10", "cifar100")
SCHEDULES = ("linear", "step", "cosine")
FILTERS = ("circle", "square")
FILTERED = ("both", "student", "teacher")   # distill.filtered: who sees the filtered batch in the teacher's term
GMP_SCOPES = ("layer", "global")
LR_SCHEDULES = ("step", "cosine", "onecycle")


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
TRACKING_MODES = ("auto", "online", "offline")


@dataclass
class TrackingCfg:
    uri: str = "sqlite:///mlruns.db"
    mode: str = "auto"        # online (MLflow) | offline (a record per run, `sync` later) | auto: offline without mlflow


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
    converged_gain: float = 1.0       # percentage points of validation accuracy the last epochs may add ...
    converged_tail: float = 0.25      # ... over this fraction of the dense epochs, for "converged"
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


def lookup(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def full_band_radius(size: int) -> float:
    """The radius (in frequency bins from the centre) that covers the whole centred spectrum, corners included."""
    return math.hypot(size // 2, size // 2)
