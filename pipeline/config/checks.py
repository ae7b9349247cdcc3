"""The semantic checks of a configuration, run before any compute: each names the dotted key, its value and
what is allowed. Also adds the methods an experiment brings (methods.extra) and their claims."""

from __future__ import annotations

import math
import sys


from pipeline.config import catalog
from pipeline.config.catalog import CATALOG, METHODS
from pipeline.config.schema import (ARCHS, FILTERED, FILTERS, GMP_SCOPES, LR_SCHEDULES, NAME_CHARS, SCHEDULES, SOURCES,
                                    TORCHVISION_DATASETS, TRACKING_MODES, TRACKING_SCHEMES, ClaimCfg, Config, MethodsCfg, _coerce,
                                    full_band_radius)
from pipeline.errors import ConfigError
from pipeline.config.layout import ROOT, report_build, resolve_path


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
    _need(c.tracking.mode in TRACKING_MODES, "tracking.mode", c.tracking.mode, f"one of {TRACKING_MODES}")
    _need(c.tracking.uri.startswith(TRACKING_SCHEMES), "tracking.uri", c.tracking.uri,
          f"an MLflow store starting with one of {TRACKING_SCHEMES} (a SQLite file, or a tracking server "
          f"http://host:port)")


DIRECTIONS = ("better", "worse")


def _check_claims(c: Config) -> None:
    rep = c.report
    _need(0 < rep.alpha < 0.5, "report.alpha", rep.alpha, "in (0, 0.5) (the level of each one-sided test)")
    _need(0 <= rep.min_sparsity < 1, "report.min_sparsity", rep.min_sparsity, "in [0, 1)")
    _need(0 < rep.converged_gain < 100, "report.converged_gain", rep.converged_gain, "in (0, 100) percentage points")
    _need(0 < rep.converged_tail < 1, "report.converged_tail", rep.converged_tail, "in (0, 1)")
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
