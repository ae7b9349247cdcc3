"""The report stage: summary.csv, spectral.csv, metrics.json (for `dvc metrics`), figures, and README.md with
the tables (mean and spread over seeds), the paired comparisons, and a "Claims" section whose verdicts are
worded from the numbers. Built in runs/<name>/report_build/ (the DAG's output), then copied into report.dir
(runs/<name>/report/ by default); results/<name>/ is written by `publish` alone.

It reads only the jobs the current grid defines (stale outputs from an older grid are ignored).
"""
from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pandas as pd
import torch

from pipeline.report import calibration, claims, cost_table, curves as learning, figures, publish
from pipeline.core import cost
from pipeline.infra import io
from pipeline.config import layout
from pipeline.config.layout import REPORT_BUILD, resolve_path
from pipeline.config.schema import Config
from pipeline.config.catalog import CHAIN_METHODS, EQUAL_BUDGET
from pipeline.report.signature_table import CONTROLS, MEASURES, measure, signature, signature_radii
from pipeline.infra.run_record import git_commit
from pipeline.infra.tracking import Run


def _jobs(cfg: Config):
    g = cfg.grid
    for ds in g.datasets:
        for arch in g.archs:
            for seed in g.seeds:
                yield ds, arch, seed


def collect(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One row per model (summary), one per (model, band, radius) (spectral), one per (model, epoch) (curves)."""
    runs, rows, spec, curves = layout.run_dir(cfg.name), [], [], []
    for ds, arch, seed in _jobs(cfg):
        base = dict(dataset=ds, arch=arch, seed=seed)
        models = [(dict(base, sparsity=0.0, method="dense"), runs / layout.DENSE.format(dataset=ds, arch=arch, seed=seed) / "metrics.json",
                   runs / layout.SPECTRAL.format(dataset=ds, arch=arch, seed=seed) / "dense.json")]
        for s in cfg.grid.sparsities:
            sp = runs / layout.SPECTRAL.format(dataset=ds, arch=arch, seed=seed) / f"s{s}"
            models.append((dict(base, sparsity=s, method="pruned"), None, sp / "pruned.json"))
            for m in cfg.grid.methods:
                models.append((dict(base, sparsity=s, method=m),
                               runs / layout.RETRAINED.format(dataset=ds, arch=arch, seed=seed, sparsity=s, method=m) / "metrics.json", sp / f"{m}.json"))
        for key, metrics, spectral in models:
            if metrics is not None:
                m = io.read_json(metrics, keys=("val_acc", "test_acc", "nonzero_weights", "weights", "epochs",
                                                "train_seconds", "hardware"), schema=io.METRICS)
                if missing := [k for k in cost.COLUMNS if k not in m]:
                    raise io.CorruptFile(f"{metrics}: no {', '.join(missing)}: written before cost accounting "
                                         "(pipeline/core/cost.py); rerun its job (snakemake --forcerun train_dense "
                                         "retrain chain)")
                rows.append({**key, "group": _group(key["method"]), "val_acc": m["val_acc"],
                             "test_acc": m["test_acc"], "test_agreement": m.get("test_agreement", 1.0),
                             "nonzero_weights": m["nonzero_weights"], "weights": m["weights"],
                             **{k: m[k] for k in cost.COLUMNS},
                             "epochs": m["epochs"], "rounds": m.get("rounds"), "train_seconds": m["train_seconds"],
                             "hardware": m["hardware"]})
                curves += learning.rows({**key, "group": _group(key["method"])}, m.get("val_history", []))
            sj = io.read_json(spectral, keys=("radii", "filter", "low_acc", "high_acc", "heatmap_seconds"),
                              schema=io.SPECTRAL)
            # the pruned topology's json also holds its controlled variants (signature.py): one row set each
            for k, v in [(key, sj)] + [(dict(key, method=n), v) for n, v in sj.get("variants", {}).items()]:
                for band in ("low", "high"):
                    for i, r in enumerate(v["radii"]):
                        spec.append({**k, "band": band, "radius": r, "filter": v["filter"],
                                     "acc": v[f"{band}_acc"][i], "agree": v.get(f"{band}_agree", [None] * 99)[i],
                                     "kappa": v.get(f"{band}_kappa", [None] * 99)[i],
                                     "heatmap_seconds": v.get("heatmap_seconds"),    # variants: no heat map
                                     **_match(v.get("match"))})
    return pd.DataFrame(rows), pd.DataFrame(spec), pd.DataFrame(curves)


GROUPS = ("one-shot (equal budget)", "extra cost")     # the tables' groups after dense, in order


def _match(m: dict | None) -> dict:
    """A damage-matched control's search result (signature.damage_matched), as spectral.csv columns."""
    m = m or {}
    return {"match_sparsity": m.get("sparsity"), "match_gap": m.get("gap"), "matched": m.get("matched")}


def _group(method: str) -> str:
    if method == "dense":
        return "dense"
    return "one-shot (equal budget)" if method in EQUAL_BUDGET else "extra cost"


def _fmt(mean, std, n) -> str:
    return f"{100 * mean:.2f}" if n < 2 else f"{100 * mean:.2f} ± {100 * std:.2f}"


def main_table(summary: pd.DataFrame, ds: str, arch: str) -> str:
    """Method x sparsity, test accuracy (%) mean ± std over seeds, with epochs and train seconds spent."""
    df = summary[(summary.dataset == ds) & (summary.arch == arch)]
    sparsities = sorted(df[df.method != "dense"].sparsity.unique())
    head = "| group | method | epochs | train s | " + " | ".join(f"s={s}" for s in sparsities) + " |"
    lines = [head, "|" + "---|" * (4 + len(sparsities))]
    dense = df[df.method == "dense"]
    lines.append(f"| dense | dense | {int(dense.epochs.mean())} | {dense.train_seconds.mean():.0f} | "
                 + " | ".join(_fmt(dense.test_acc.mean(), dense.test_acc.std(), len(dense)) for _ in sparsities)
                 + " |")
    for group in GROUPS:
        for m in df[df.group == group].method.unique():
            sub = df[df.method == m]
            cells = []
            for s in sparsities:
                a = sub[sub.sparsity == s].test_acc
                cells.append(_fmt(a.mean(), a.std(), len(a)) if len(a) else "-")
            lo, hi = int(sub.epochs.min()), int(sub.epochs.max())     # a chain's levels spend different epochs
            lines.append(f"| {group} | {m} | {lo if lo == hi else f'{lo}-{hi}'} | {sub.train_seconds.mean():.0f} | "
                         + " | ".join(cells) + " |")
    n = df.groupby(["method", "sparsity"]).seed.nunique().max()
    lines.append("")
    lines.append(f"Test accuracy (%), mean ± sample std over {n} seed(s)" + (" (one seed: no spread)" if n < 2 else "")
                 + ". Epochs: retraining epochs spent per model (dense: training epochs). Train s: wall-clock "
                 f"training seconds per model (mean over seeds and sparsities) on {', '.join(sorted(df.hardware.unique()))}"
                 f". {', '.join(CHAIN_METHODS)} run ONE chain per dense network through every sparsity: a level's "
                 "epochs (and rounds, in summary.csv) are what the chain had spent when it reached that sparsity"
                 ". Equal budget means equal epochs and schedule, not equal compute: fourier_kd, its "
                 "curriculum controls and freq_ce make two student passes per step (the filtered batch for the "
                 "teacher's term or freq_ce's filtered cross-entropy, the unfiltered batch for the cross-entropy) "
                 "until the radius reaches the full band, then one.")
    return "\n".join(lines)


def comparisons(summary: pd.DataFrame, ds: str, arch: str, baselines=("finetune", "kd")) -> pd.DataFrame:
    """Every method vs each baseline at the same sparsity (paired by seed)."""
    methods = summary[(summary.dataset == ds) & (summary.arch == arch) & (summary.method != "dense")].method.unique()
    return pd.DataFrame([{"baseline": b, "method": m, "sparsity": d.key, "n": d.n, "mean": d.mean,
                          **dict(zip(("low", "high"), d.interval(0.95)))}
                         for b in baselines for m in methods if m != b
                         for d in claims.paired(summary, ds, arch, m, b)])


def _ci_text(r) -> str:
    if r["n"] < 2:
        return f"{100 * r['mean']:+.2f} (one seed: no interval can be given)"
    return f"{100 * r['mean']:+.2f} [{100 * r['low']:+.2f}, {100 * r['high']:+.2f}]"


# ----------------------------------------------------------------------------------------------- figures


def _heatmaps(cfg, ds, arch, s) -> dict:
    """method -> its Fourier heat map at sparsity s, mean over seeds (the methods the figure shows)."""
    runs, maps = layout.run_dir(cfg.name), {}
    for m in figures.heatmap_methods(cfg.grid.methods):
        if m not in ("dense", "pruned") and m not in cfg.grid.methods:
            continue
        arrays = []
        for seed in cfg.grid.seeds:
            base = runs / layout.SPECTRAL.format(dataset=ds, arch=arch, seed=seed)
            f = base / "dense_heatmap.pt" if m == "dense" else base / f"s{s}/{m}_heatmap.pt"
            arrays.append(io.load(f, "heatmap", keys=("heatmap",))["heatmap"])
        maps[m] = torch.stack(arrays).mean(0)
    return maps


# ------------------------------------------------------------------------------------------------ report


def _short(commit: str) -> str:
    """abc123...-dirty -> abc123456789-dirty (a report from uncommitted code says so)."""
    sha, _, dirty = commit.partition("-")
    return sha[:12] + (f"-{dirty}" if dirty else "")


def _describe_data(cfg: Config) -> str:
    out = []
    for ds in cfg.grid.datasets:
        d = cfg.datasets[ds]
        if d.source == "synthetic":
            out.append(f"{ds}: synthetic (generated; class cues in a low and a high frequency band), "
                       f"{d.train_size} train / {d.test_size} test images")
        elif d.source == "imagefolder":
            jpeg = "cifar10-jpeg" in str(resolve_path(d.path))
            name = "CIFAR-10 (JPEG q75) — not the official CIFAR-10 archive" if jpeg else f"ImageFolder {d.path}"
            out.append(f"{ds}: {name}" + (f", subset of {d.train_size} train" if d.train_size else "")
                       + (f" / {d.test_size} test images" if d.test_size else ""))
        else:
            out.append(f"{ds}: official {ds.upper()} (torchvision)")
    return "; ".join(out)


def build_dir(cfg: Config) -> Path:
    return layout.run_dir(cfg.name) / REPORT_BUILD


def place_build(cfg: Config) -> Path:
    """The finished build into report.dir (after `make pull`, which fetches the build, not report.dir)."""
    return publish.place(build_dir(cfg), resolve_path(cfg.report.dir))


def report(cfg: Config) -> None:
    """Built in a temporary folder beside runs/<name>/report_build/, which it replaces once every file is
    written (the job's declared outputs, with their manifest), then copied into report.dir (publish.place:
    checked before any compute, only our own files replaced or removed): a report that fails part-way leaves
    the previous one as it was, never a mix of old and new files. The MLflow run is FINISHED only after the
    files are in place."""
    target = publish.check_target(resolve_path(cfg.report.dir))
    build = build_dir(cfg)
    out = build.with_name(build.name + ".tmp")
    shutil.rmtree(out, ignore_errors=True)          # ours alone: a build a kill interrupted
    figs = out / "figures"
    figs.mkdir(parents=True)
    with Run(cfg, "report", {}, cfg.section("report", "grid")) as run:
        summary, spec, curves = collect(cfg)
        summary = summary.sort_values(["dataset", "arch", "sparsity", "method", "seed"])
        io.write_text(out / "summary.csv", summary.to_csv(index=False))
        io.write_text(out / "spectral.csv", spec.to_csv(index=False))
        io.write_text(out / "curves.csv", curves.to_csv(index=False))
        hardware = ", ".join(sorted(summary.hardware.unique()))
        lines = [f"# Report: experiment `{cfg.name}`", "",
                 f"- Experiment: `{cfg.name}` (params.yaml" + ("" if cfg.name == "paper" else f" + configs/{cfg.name}.yaml")
                 + ")", f"- Data: {_describe_data(cfg)}", f"- Hardware: {hardware}",
                 f"- Seeds: {cfg.grid.seeds}; sparsities: {cfg.grid.sparsities}; methods: {', '.join(cfg.grid.methods)}",
                 f"- Written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC from commit {_short(git_commit())} "
                 "by `python -m pipeline report`; every number below comes from runs/" + cfg.name + "/.",
                 "- Model selection: the last epoch of each schedule (no test-set selection); validation accuracy "
                 "is in summary.csv. Test set read once per model.", ""]
        if cfg.name == "smoke":
            lines += ["> Smoke experiment: tiny models, synthetic data, 2 epochs. These numbers test the plumbing, "
                      "not the paper.", ""]
        elif cfg.name != "paper":
            lines += [f"> Not the paper's recipe (configs/{cfg.name}.yaml): {cfg.train.epochs} dense epochs, "
                      f"{cfg.retrain.epochs} retraining epochs, model width x{cfg.model.width}. The verdicts "
                      "below hold for this reduced regime only.", ""]
        metrics, signatures = {}, {}
        for ds in cfg.grid.datasets:
            for arch in cfg.grid.archs:
                tag = f"{ds}_{arch}"
                lines += [f"## {ds} / {arch}", "", "### Test accuracy", "", main_table(summary, ds, arch), ""]
                lines += ["### Cost: nonzero MACs and parameters", "",
                          cost_table.table(summary, ds, arch, ("dense",) + GROUPS), ""]
                figures.sparsity(summary, ds, arch, figs / f"accuracy_vs_sparsity_{tag}.png", GROUPS)
                lines += [f"![accuracy vs sparsity](figures/accuracy_vs_sparsity_{tag}.png)", ""]
                comp = comparisons(summary, ds, arch)
                drawn = None
                if not curves.empty:
                    top = max(cfg.grid.sparsities)
                    drawn = f"figures/learning_curves_{tag}_s{top}.png"
                    figures.learning_curves(curves, ds, arch, top, out / drawn, GROUPS)
                lines += learning.section(curves, ds, arch, cfg, drawn)
                lines += ["### Paired differences (test accuracy, percentage points; 95% t-interval over seeds)", "",
                          "Per comparison, not adjusted for testing many: the Claims below state their own rule.", "",
                          "| vs | sparsity | method | difference |", "|---|---|---|---|"]
                for _, r in comp.iterrows():
                    lines.append(f"| {r.baseline} | {r.sparsity} | {r.method} | {_ci_text(r)} |")
                lines += ["", "### Band-limited accuracy and Fourier heat maps", ""]
                for s in cfg.grid.sparsities:
                    figures.bands(spec, ds, arch, s, figs / f"bands_{tag}_s{s}.png", cfg.spectral.filter)
                    figures.heatmaps(_heatmaps(cfg, ds, arch, s),
                                     f"Fourier heat maps (Yin et al. 2019), {ds} / {arch}, sparsity {s}, "
                                     f"eps={cfg.spectral.heatmap_eps}, {cfg.spectral.heatmap_images} images, "
                                     "mean over seeds", figs / f"heatmaps_{tag}_s{s}.png")
                    lines += [f"![bands](figures/bands_{tag}_s{s}.png)", "",
                              f"![heat maps](figures/heatmaps_{tag}_s{s}.png)", ""]
                radii = signature_radii(spec, ds, arch, cfg.datasets[ds].classes, cfg.report.chance_margin)
                sig_table, sig = signature(spec, ds, arch, radii)
                col = measure(spec)
                lines += ["### Spectral signature of pruning (MBP topology, before retraining, against controls)", "",
                          f"Agreement ({MEASURES[col]}"
                          + (", chance-corrected, × 100" if col == "kappa" else ", %; this report predates the "
                             "chance-corrected measure") + ") of the pruned network with its dense teacher on "
                          "low-pass images minus that on high-pass images, for the MBP topology and two controls, "
                          "paired by seed: the same-count control, a " + CONTROLS["same-count"] + " (the same "
                          "seed's mask as the `random` method; at equal counts a random mask does far more damage, "
                          "and can sit at chance predicting one class), and the damage-matched control, a "
                          + CONTROLS["damage-matched"] + f" (±{cfg.spectral.match_tolerance:g} percentage points): "
                          "the same seeded random order, pruning the fraction of MBP's per-layer counts found by "
                          f"bisection (at most {cfg.spectral.match_steps} steps; its sparsity and accuracy gap are "
                          "shown; a seed outside the tolerance is shown but not paired). All are evaluated as "
                          "pruned (the dense network's batch-norm statistics) and after recalibrating "
                          f"batch-norm statistics on {cfg.spectral.bn_batches} batches of {cfg.spectral.batch_size} "
                          "training images, at most the whole training set (forward passes only: no labels, no "
                          "weight change). Averaged over the "
                          f"radii {radii}: those of {[float(r) for r in cfg.spectral.radii]} where the teacher's own "
                          f"low-pass and high-pass accuracy are both more than {cfg.report.chance_margin:g} "
                          "percentage points above chance (elsewhere agreement measures a shared bias, not "
                          "preserved behaviour).", "",
                          sig_table if radii else "No radius qualifies: the teacher is near chance on a band at "
                          "every radius, so this signature cannot be measured here.", ""]
                signatures[ds, arch] = sig
                for _, r in summary[(summary.dataset == ds) & (summary.arch == arch)].groupby(
                        ["method", "sparsity"]).agg(mean=("test_acc", "mean"), count=("test_acc", "count"),
                                                    macs=("macs", "mean"), speedup=("speedup", "mean")
                                                    ).reset_index().iterrows():
                    metrics.setdefault(tag, {})[f"{r.method}_s{r.sparsity}"] = {
                        "test_acc_mean": round(float(r["mean"]), 6), "seeds": int(r["count"]),
                        "macs": round(float(r["macs"])), "speedup": round(float(r["speedup"]), 4)}
        heat = spec.groupby(["dataset", "arch", "seed", "sparsity", "method"]).heatmap_seconds.first()
        lines += calibration.section(summary, spec, cfg)
        lines += claims.section(summary, cfg, signatures)
        lines += ["## Cost", "", f"Fourier heat map: {heat.mean():.2f} s per model on average "
                  f"({cfg.spectral.heatmap_images} images, {hardware}).", "",
                  "Files: summary.csv (one row per model), spectral.csv (one row per model, band and radius), "
                  "curves.csv (one row per model and epoch: validation accuracy), "
                  "metrics.json (for `dvc metrics show`), figures/."]
        io.write_text(out / "README.md", "\n".join(lines) + "\n")
        io.write_json(out / "metrics.json", metrics)
        for f in (out / "summary.csv", out / "spectral.csv", out / "curves.csv", out / "README.md"):
            run.log_artifact(f)
        for f in sorted(figs.glob("*.png")):
            run.log_artifact(f, "figures")
        io.write_json(out / publish.OURS, {"files": sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                                                           if p.is_file())})
        shutil.rmtree(build, ignore_errors=True)
        out.rename(build)
        publish.place(build, target)
