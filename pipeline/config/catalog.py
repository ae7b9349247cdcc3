"""The methods the suite knows, torch-free: what each is, whom it answers, what it costs, what it reads.

One entry per method. The implementations live in pipeline/methods/ (one module per family); this table is
what everything else reads without importing torch: the config's checks, the Snakefile's grid (so that
parsing it stays fast), the report's groups and claims, and the cost model.

- family: how the method makes its topology and weights: "one-shot" (prune once, then train), "iterative"
  (the mask changes during training: prune-retrain rounds or a gradual schedule), "distillation" (one-shot
  mask, retrained against the dense teacher).
- role: "proposed" (the paper's method), "baseline" (what the paper claims to beat), "control" (an ablation
  that changes one thing, to explain where a difference comes from).
- budget: "retrain" (the one retraining budget every one-shot method shares: retrain.epochs at retrain.lr),
  "dense" (the dense schedule, train.epochs), "chain" (rounds of retraining, one chain serves every sparsity).
- params: the config sections (or exact keys) the method reads; the Snakefile passes exactly these to its
  rule, so Snakemake and DVC rerun a method only when what it depends on changed.
- step: the kind of training step it runs (budget.py prices its epochs by that step's measured speed).

A method from outside pipeline/ (README: Adding a method): a module named in the experiment's
`methods.extra` holds `METHODS = (Method(...), ...)`, each with `recipe` (a function ctx -> train.Recipe, as
pipeline/methods/ writes them) and its own typed `options` (name -> default; set in `methods.options`).
`extend` imports it and adds its records here, checked like the built-in ones. The module's top level must
stay torch-free (import torch inside the recipe): the Snakefile reads this table.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field, replace
from typing import Callable


@dataclass(frozen=True)
class Method:
    name: str
    family: str
    role: str
    budget: str
    params: tuple[str, ...]
    paper: str
    chain: bool = False       # one chain per dense network serves every sparsity (pipeline/chains.py)
    teacher: bool = False     # reads the dense network as a teacher
    step: str = "masked"      # dense | masked | kd | fourier_kd: the training step its epochs run
    color: str | None = None  # its colour in every figure and in MLflow (tag mlflow.runColor; else FALLBACK)
    recipe: Callable | None = None   # an added method's recipe, ctx -> Recipe (built-ins: pipeline/methods/)
    options: dict = field(default_factory=dict)   # an added method's own parameters: name -> default (its type)
    source: str = "built-in"  # the module that declared it
    rewind: int | str | None = None   # the dense epoch it rewinds to: a number, or the config key that holds it
    heatmap: bool = False     # its Fourier heat map is drawn in the report (every proposed method's is too)
    floor: bool = False       # the floor any pruning method should beat (claims: "below the random-mask floor")
    reference: bool = False   # the shared retraining budget's reference (the compute ratios of the regime note)


FAMILIES = ("one-shot", "iterative", "distillation")
ROLES = ("proposed", "baseline", "control")
BUDGETS = ("retrain", "dense", "chain")
STEPS = ("dense", "masked", "kd", "fourier_kd")
OPTION_TYPES = (bool, int, float, str)
NAME = re.compile(r"[a-z][a-z0-9_]*")

_COMMON = ("retrain", "train", "model", "prune", "runtime")
_CURRICULUM = ("distill.radius_start", "distill.full_band_at", "distill.schedule", "distill.steps", "distill.filter")

CATALOG = {m.name: m for m in (
    Method("finetune", "one-shot", "baseline", "retrain", _COMMON,
           "Han et al. 2015: global magnitude pruning, then fine-tuning at a small learning rate", color="#1f77b4", heatmap=True, reference=True),
    Method("finetune_layerwise", "one-shot", "baseline", "retrain", _COMMON,
           "Han et al. 2015, with the same sparsity in every layer", color="#aec7e8"),
    Method("random", "one-shot", "baseline", "retrain", _COMMON,
           "Random mask with MBP's per-layer counts (Liu et al. 2019; Frankle et al. 2021): the floor", color="#e377c2", floor=True),
    Method("kd", "distillation", "baseline", "retrain", _COMMON + ("distill.T", "distill.alpha"),
           "Hinton et al. 2015: distillation from the dense teacher, no frequency curriculum", teacher=True,
           step="kd", color="#ff7f0e", heatmap=True),
    Method("fourier_kd", "distillation", "proposed", "retrain", _COMMON + ("distill",),
           "Shang et al. 2022: distillation on low-passed inputs, radius growing from low to high", teacher=True,
           step="fourier_kd", color="#d62728", heatmap=True),
    Method("fourier_kd_anti", "distillation", "control", "retrain", _COMMON + ("distill",),
           "Control: fourier_kd's low-pass radii in reverse order (full band first, ending at radius_start)",
           teacher=True, step="fourier_kd", color="#ad494a"),
    Method("fourier_kd_shuffled", "distillation", "control", "retrain", _COMMON + ("distill",),
           "Control: fourier_kd's low-pass radii, one per epoch, in a random order seeded by the model's seed",
           teacher=True, step="fourier_kd", color="#e7969c"),
    Method("fourier_kd_reverse", "distillation", "control", "retrain", _COMMON + ("distill",),
           "Control: high-pass inputs, from high to low frequencies (changes the order AND removes information: "
           "its first radius leaves the teacher near chance)", teacher=True, step="fourier_kd", color="#ff9896"),
    Method("freq_ce", "distillation", "control", "retrain", _COMMON + _CURRICULUM + ("distill.alpha",),
           "Control: fourier_kd's two-term loss with the teacher's term replaced by cross-entropy on the filtered "
           "batch (no teacher)", step="fourier_kd", color="#ffbb78"),
    Method("imp", "iterative", "baseline", "chain", _COMMON + ("imp",),
           "Han et al. 2015: iterative magnitude pruning with fine-tuning", chain=True, color="#2ca02c"),
    Method("lth", "iterative", "baseline", "chain", _COMMON + ("lth",),
           "Frankle et al. 2020: lottery ticket with late rewinding", chain=True, color="#9467bd", rewind="lth.rewind_epoch"),
    Method("lth_init", "iterative", "baseline", "chain", _COMMON + ("lth.rate",),
           "Frankle & Carbin 2019: lottery ticket rewound to the initialisation", chain=True, color="#c5b0d5", rewind=0),
    Method("lrr", "iterative", "baseline", "chain", _COMMON + ("lrr",),
           "Renda et al. 2020: iterative lr rewinding, each round retrained with the dense lr schedule", chain=True, color="#c49c94"),
    Method("lr_rewind", "one-shot", "baseline", "dense", _COMMON,
           "Renda et al. 2020, one-shot: pruned once, retrained with the dense lr schedule", color="#8c564b"),
    Method("reinit", "one-shot", "control", "dense", _COMMON,
           "Control (Frankle & Carbin 2019): the MBP mask, weights drawn afresh, trained with the dense schedule", color="#393b79"),
    Method("gmp", "iterative", "baseline", "dense", _COMMON + ("gmp",),
           "Zhu & Gupta 2017: gradual magnitude pruning during training from scratch, each layer to s_t", color="#17becf"),
)}


def _check(m: Method) -> None:
    """A record as the rest of the suite needs it (a typo would silently change a group, a claim or a cost)."""
    where = f"{m.source}: method {m.name!r}" if m.source != "built-in" else f"method {m.name!r}"
    for key, value, allowed in (("family", m.family, FAMILIES), ("role", m.role, ROLES),
                                ("budget", m.budget, BUDGETS), ("step", m.step, STEPS)):
        if value not in allowed:
            raise ValueError(f"{where}: {key} = {value!r}: must be one of {', '.join(allowed)}")
    if m.chain != (m.budget == "chain"):
        raise ValueError(f"{where}: chain = {m.chain!r} with budget {m.budget!r}: a chain method has budget chain")
    if m.source == "built-in":
        return
    if not NAME.fullmatch(m.name):
        raise ValueError(f"{where}: name: must be lower-case letters, digits and _, starting with a letter")
    if m.chain:
        raise ValueError(f"{where}: budget = 'chain': an added method is one-shot or dense-schedule (one job per "
                         "sparsity); a chain of levels is the built-in chains' (pipeline/chains.py)")
    if not callable(m.recipe):
        raise ValueError(f"{where}: recipe = {m.recipe!r}: must be a function ctx -> train.Recipe")
    if not isinstance(m.params, tuple) or not all(isinstance(p, str) for p in m.params):
        raise ValueError(f"{where}: params = {m.params!r}: must be a tuple of config sections or keys")
    if not isinstance(m.paper, str) or not m.paper.strip():
        raise ValueError(f"{where}: paper: must name its source (a citation)")
    if m.rewind is not None or m.floor or m.reference:
        raise ValueError(f"{where}: rewind, floor and reference are the built-in methods' (the dense snapshots "
                         "saved, the report's floor and budget reference)")
    if m.color is not None and not re.fullmatch(r"#[0-9a-fA-F]{6}", str(m.color)):
        raise ValueError(f"{where}: color = {m.color!r}: must be a hex colour like '#bcbd22'")
    for k, v in m.options.items():
        if not NAME.fullmatch(str(k)) or type(v) not in OPTION_TYPES:
            raise ValueError(f"{where}: options.{k} = {v!r}: an option is a lower-case name with a default of "
                             "type bool, int, float or str")


# The colours of the models that are not methods: the teacher, and the pruning signature's variants (spectral)
MODEL_COLORS = {"dense": "#000000", "pruned": "#7f7f7f", "pruned_bn": "#c7c7c7", "random_mask": "#f7b6d2",
                "random_mask_bn": "#dbdb8d", "matched_mask": "#5254a3", "matched_mask_bn": "#9c9ede"}
FALLBACK = "#bcbd22"


def color(name: str) -> str:
    """One colour per method or model, the same in every figure, the report and the MLflow UI: hex strings
    (matplotlib's tab20 palette, tab20b where it ran out; the paper's method red, its controls in related
    shades, the teacher black), so that tracking can use them without importing matplotlib."""
    m = CATALOG.get(name)
    return MODEL_COLORS.get(name) or (m.color if m is not None and m.color else FALLBACK)


def rewind_epoch(cfg, method: str) -> int | None:
    """The dense epoch whose weights a method rewinds to (None: it does not rewind)."""
    m = CATALOG.get(method)
    if m is None or m.rewind is None:
        return None
    if isinstance(m.rewind, int):
        return m.rewind
    section, key = m.rewind.split(".")
    return getattr(getattr(cfg, section), key)


def floor() -> str:
    return next(m.name for m in CATALOG.values() if m.floor)


def reference() -> str:
    return next(m.name for m in CATALOG.values() if m.reference)


def _refresh() -> None:
    """The derived views, updated in place: modules that imported them see an added method too."""
    METHODS[:] = list(CATALOG)
    METHOD_PARAMS.clear()
    # an added method also reads the experiment's methods section (its module, role, options): what dvc.yaml's
    # params can name (its options' defaults live in its module, not in the YAML)
    METHOD_PARAMS.update({m.name: m.params + (("methods",) if m.source != "built-in" else ())
                          for m in CATALOG.values()})
    CHAIN_METHODS[:] = [m.name for m in CATALOG.values() if m.chain]
    NEEDS_TEACHER[:] = [m.name for m in CATALOG.values() if m.teacher]
    EQUAL_BUDGET[:] = [m.name for m in CATALOG.values() if m.budget == "retrain"]


def extend(modules, roles: dict | None = None) -> list[str]:
    """Import each module of `methods.extra` and add its METHODS; `roles` (methods.roles) may set an added
    method's role for this experiment. Returns the names added. ValueError names the module and the key."""
    added = []
    for mod in modules:
        try:
            module = importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001 - whatever the module raised, the user needs its name and the error
            raise ValueError(f"methods.extra: module {mod!r} failed to import: {type(e).__name__}: "
                             f"{(str(e).splitlines() or [''])[0][:300]}") from None
        records = getattr(module, "METHODS", None)
        if not isinstance(records, (list, tuple)) or not records or not all(isinstance(r, Method) for r in records):
            raise ValueError(f"methods.extra: module {mod!r} must define METHODS, a non-empty tuple of "
                             "pipeline.config.catalog.Method records")
        for r in records:
            old = CATALOG.get(r.name)
            if old is not None and old.source != mod:
                raise ValueError(f"methods.extra: module {mod!r} declares method {r.name!r}, which "
                                 f"{'is built in' if old.source == 'built-in' else 'module ' + repr(old.source) + ' declares'}"
                                 ": choose another name")
            rec = replace(r, source=mod, role=(roles or {}).get(r.name, r.role))
            _check(rec)
            CATALOG[r.name] = rec
            added.append(r.name)
    _refresh()
    return added


def catalogue_table(grid=()) -> str:
    """`python -m pipeline methods`: one row per method (* = in this experiment's grid), as Markdown."""
    rows = ["| method | in grid | family | role | budget | step | source | paper |", "|---|---|---|---|---|---|---|---|"]
    for m in CATALOG.values():
        rows.append(f"| {m.name} | {'*' if m.name in grid else ''} | {m.family} | {m.role} | {m.budget} | {m.step} | "
                    f"{m.source} | {m.paper} |")
    return "\n".join(rows) + "\n"


for _m in CATALOG.values():
    _check(_m)

METHODS: list[str] = []
METHOD_PARAMS: dict[str, tuple[str, ...]] = {}
CHAIN_METHODS: list[str] = []
NEEDS_TEACHER: list[str] = []
EQUAL_BUDGET: list[str] = []
_refresh()
