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
"""
from __future__ import annotations

from dataclasses import dataclass


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


FAMILIES = ("one-shot", "iterative", "distillation")
ROLES = ("proposed", "baseline", "control")
BUDGETS = ("retrain", "dense", "chain")

_COMMON = ("retrain", "train", "model", "prune", "runtime")
_CURRICULUM = ("distill.radius_start", "distill.full_band_at", "distill.schedule", "distill.steps", "distill.filter")

CATALOG = {m.name: m for m in (
    Method("finetune", "one-shot", "baseline", "retrain", _COMMON,
           "Han et al. 2015: global magnitude pruning, then fine-tuning at a small learning rate"),
    Method("finetune_layerwise", "one-shot", "baseline", "retrain", _COMMON,
           "Han et al. 2015, with the same sparsity in every layer"),
    Method("random", "one-shot", "baseline", "retrain", _COMMON,
           "Random mask with MBP's per-layer counts (Liu et al. 2019; Frankle et al. 2021): the floor"),
    Method("kd", "distillation", "baseline", "retrain", _COMMON + ("distill.T", "distill.alpha"),
           "Hinton et al. 2015: distillation from the dense teacher, no frequency curriculum", teacher=True),
    Method("fourier_kd", "distillation", "proposed", "retrain", _COMMON + ("distill",),
           "Shang et al. 2022: distillation on low-passed inputs, radius growing from low to high", teacher=True),
    Method("fourier_kd_anti", "distillation", "control", "retrain", _COMMON + ("distill",),
           "Control: fourier_kd's low-pass radii in reverse order (full band first, ending at radius_start)",
           teacher=True),
    Method("fourier_kd_shuffled", "distillation", "control", "retrain", _COMMON + ("distill",),
           "Control: fourier_kd's low-pass radii, one per epoch, in a random order seeded by the model's seed",
           teacher=True),
    Method("fourier_kd_reverse", "distillation", "control", "retrain", _COMMON + ("distill",),
           "Control: high-pass inputs, from high to low frequencies (changes the order AND removes information: "
           "its first radius leaves the teacher near chance)", teacher=True),
    Method("freq_ce", "distillation", "control", "retrain", _COMMON + _CURRICULUM + ("distill.alpha",),
           "Control: fourier_kd's two-term loss with the teacher's term replaced by cross-entropy on the filtered "
           "batch (no teacher)"),
    Method("imp", "iterative", "baseline", "chain", _COMMON + ("imp",),
           "Han et al. 2015: iterative magnitude pruning with fine-tuning", chain=True),
    Method("lth", "iterative", "baseline", "chain", _COMMON + ("lth",),
           "Frankle et al. 2020: lottery ticket with late rewinding", chain=True),
    Method("lth_init", "iterative", "baseline", "chain", _COMMON + ("lth.rate",),
           "Frankle & Carbin 2019: lottery ticket rewound to the initialisation", chain=True),
    Method("lrr", "iterative", "baseline", "chain", _COMMON + ("lrr",),
           "Renda et al. 2020: iterative lr rewinding, each round retrained with the dense lr schedule", chain=True),
    Method("lr_rewind", "one-shot", "baseline", "dense", _COMMON,
           "Renda et al. 2020, one-shot: pruned once, retrained with the dense lr schedule"),
    Method("reinit", "one-shot", "control", "dense", _COMMON,
           "Control (Frankle & Carbin 2019): the MBP mask, weights drawn afresh, trained with the dense schedule"),
    Method("gmp", "iterative", "baseline", "dense", _COMMON + ("gmp",),
           "Zhu & Gupta 2017: gradual magnitude pruning during training from scratch, each layer to s_t"),
)}

for _m in CATALOG.values():       # a typo here would silently change a group or a claim
    assert _m.family in FAMILIES and _m.role in ROLES and _m.budget in BUDGETS, _m
    assert _m.chain == (_m.budget == "chain"), _m

METHODS = tuple(CATALOG)
METHOD_PARAMS = {m.name: m.params for m in CATALOG.values()}
CHAIN_METHODS = tuple(m.name for m in CATALOG.values() if m.chain)
NEEDS_TEACHER = tuple(m.name for m in CATALOG.values() if m.teacher)
EQUAL_BUDGET = tuple(m.name for m in CATALOG.values() if m.budget == "retrain")
