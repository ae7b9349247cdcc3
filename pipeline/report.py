"""The report stage: results/summary.csv, results/spectral.csv, results/metrics.json (for `dvc metrics`),
figures, and results/README.md with the tables (mean and spread over seeds), the paired comparisons, and a
"Claims" section whose verdicts are worded from the numbers.

It reads only the jobs the current grid defines (stale outputs from an older grid are ignored).
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import torch

from . import figures, io
from .config import ROOT, Config, resolve_path
from .methods import ONE_SHOT
from .spectral import FULL, paired_interval
from .tracking import Run, git_commit


def _runs(cfg: Config) -> Path:
    return ROOT / "runs" / cfg.name


def _jobs(cfg: Config):
    g = cfg.grid
    for ds in g.datasets:
        for arch in g.archs:
            for seed in g.seeds:
                yield ds, arch, seed


def collect(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per model (summary) and one row per (model, band, radius) (spectral)."""
    runs, rows, spec = _runs(cfg), [], []
    for ds, arch, seed in _jobs(cfg):
        base = dict(dataset=ds, arch=arch, seed=seed)
        models = [(dict(base, sparsity=0.0, method="dense"), runs / f"dense/{ds}/{arch}/seed{seed}/metrics.json",
                   runs / f"spectral/{ds}/{arch}/seed{seed}/dense.json")]
        for s in cfg.grid.sparsities:
            sp = runs / f"spectral/{ds}/{arch}/seed{seed}/s{s}"
            models.append((dict(base, sparsity=s, method="pruned"), None, sp / "pruned.json"))
            for m in cfg.grid.methods:
                models.append((dict(base, sparsity=s, method=m),
                               runs / f"retrain/{ds}/{arch}/seed{seed}/s{s}/{m}/metrics.json", sp / f"{m}.json"))
        for key, metrics, spectral in models:
            if metrics is not None:
                m = io.read_json(metrics)
                rows.append({**key, "group": _group(key["method"]), "val_acc": m["val_acc"],
                             "test_acc": m["test_acc"], "test_agreement": m.get("test_agreement", 1.0),
                             "nonzero_weights": m["nonzero_weights"], "weights": m["weights"],
                             "epochs": m["epochs"], "train_seconds": m["train_seconds"], "hardware": m["hardware"]})
            sj = io.read_json(spectral)
            for band in ("low", "high"):
                for i, r in enumerate(sj["radii"]):
                    spec.append({**key, "band": band, "radius": r, "filter": sj["filter"],
                                 "acc": sj[f"{band}_acc"][i], "agree": sj.get(f"{band}_agree", [None] * 99)[i],
                                 "heatmap_seconds": sj["heatmap_seconds"]})
    return pd.DataFrame(rows), pd.DataFrame(spec)


def _group(method: str) -> str:
    if method == "dense":
        return "dense"
    return "one-shot (equal budget)" if method in ONE_SHOT else "extra cost"


def _fmt(mean, std, n) -> str:
    return f"{100 * mean:.2f}" if n < 2 else f"{100 * mean:.2f} ± {100 * std:.2f}"


def main_table(summary: pd.DataFrame, ds: str, arch: str) -> str:
    """Method x sparsity, test accuracy (%) mean ± std over seeds, with epochs spent."""
    df = summary[(summary.dataset == ds) & (summary.arch == arch)]
    sparsities = sorted(df[df.method != "dense"].sparsity.unique())
    head = "| group | method | epochs | " + " | ".join(f"s={s}" for s in sparsities) + " |"
    lines = [head, "|" + "---|" * (3 + len(sparsities))]
    dense = df[df.method == "dense"].test_acc
    lines.append(f"| dense | dense | {int(df[df.method == 'dense'].epochs.mean())} | "
                 + " | ".join(_fmt(dense.mean(), dense.std(), len(dense)) for _ in sparsities) + " |")
    for group in ("one-shot (equal budget)", "extra cost"):
        for m in df[df.group == group].method.unique():
            sub = df[df.method == m]
            cells = []
            for s in sparsities:
                a = sub[sub.sparsity == s].test_acc
                cells.append(_fmt(a.mean(), a.std(), len(a)) if len(a) else "-")
            lines.append(f"| {group} | {m} | {int(sub.epochs.mean())} | " + " | ".join(cells) + " |")
    n = df.groupby(["method", "sparsity"]).seed.nunique().max()
    lines.append("")
    lines.append(f"Test accuracy (%), mean ± sample std over {n} seed(s)" + (" (one seed: no spread)" if n < 2 else "")
                 + ". Epochs: retraining epochs spent per model (dense: training epochs).")
    return "\n".join(lines)


def paired(summary: pd.DataFrame, ds: str, arch: str, method: str, base: str) -> list[dict]:
    """method - base at each sparsity: mean test-accuracy difference over seeds run by both, 95% interval."""
    df = summary[(summary.dataset == ds) & (summary.arch == arch)]
    out = []
    for s in sorted(df[df.method == base].sparsity.unique()):
        a = df[(df.method == method) & (df.sparsity == s)].set_index("seed").test_acc
        b = df[(df.method == base) & (df.sparsity == s)].set_index("seed").test_acc
        seeds = sorted(set(a.index) & set(b.index))
        if seeds:
            out.append({"sparsity": s, **paired_interval([a[k] for k in seeds], [b[k] for k in seeds])})
    return out


def comparisons(summary: pd.DataFrame, ds: str, arch: str, baselines=("finetune", "kd")) -> pd.DataFrame:
    """Every method vs each baseline at the same sparsity (paired by seed)."""
    methods = summary[(summary.dataset == ds) & (summary.arch == arch) & (summary.method != "dense")].method.unique()
    return pd.DataFrame([{"baseline": b, "method": m, **r} for b in baselines for m in methods if m != b
                         for r in paired(summary, ds, arch, m, b)])


def _ci_text(r) -> str:
    if r["n"] < 2:
        return f"{100 * r['mean']:+.2f} (one seed: no interval can be given)"
    return f"{100 * r['mean']:+.2f} [{100 * r['low']:+.2f}, {100 * r['high']:+.2f}]"


def _verdict(rows: list[dict]) -> str:
    """held: the 95% interval is above 0 at every sparsity; not held: the mean difference is <= 0 at every
    sparsity or some interval lies wholly below 0; otherwise (or with one seed) not enough evidence."""
    if not rows:
        return "not run"
    if any(r["n"] >= 2 and r["high"] < 0 for r in rows) or (all(r["n"] >= 2 for r in rows)
                                                              and all(r["mean"] <= 0 for r in rows)):
        return "not held"
    if all(r["n"] >= 2 and r["low"] > 0 for r in rows):
        return "held"
    return "not enough evidence"


# ----------------------------------------------------------------------------------------------- figures


def _heatmaps(cfg, ds, arch, s) -> dict:
    """method -> its Fourier heat map at sparsity s, mean over seeds (the methods the figure shows)."""
    runs, maps = _runs(cfg), {}
    for m in figures.HEATMAP_METHODS:
        if m not in ("dense", "pruned") and m not in cfg.grid.methods:
            continue
        arrays = []
        for seed in cfg.grid.seeds:
            base = runs / f"spectral/{ds}/{arch}/seed{seed}"
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


def _signature(spec: pd.DataFrame, ds, arch) -> tuple[str, list]:
    """Pruning before retraining: agreement with the teacher on low-pass vs high-pass images."""
    df = spec[(spec.dataset == ds) & (spec.arch == arch) & (spec.method == "pruned") & (spec.radius != FULL)]
    lines = ["| sparsity | seed | low-pass agreement (mean over radii) | high-pass agreement | low - high |",
             "|---|---|---|---|---|"]
    diffs = []
    for (s, seed), g in df.groupby(["sparsity", "seed"]):
        lo = g[g.band == "low"].agree.astype(float).mean()
        hi = g[g.band == "high"].agree.astype(float).mean()
        lines.append(f"| {s} | {seed} | {100 * lo:.1f} | {100 * hi:.1f} | {100 * (lo - hi):+.1f} |")
        diffs.append((s, seed, lo, hi))
    return "\n".join(lines), diffs


def report(cfg: Config) -> None:
    out = resolve_path(cfg.report.dir)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    with Run(cfg, "report", {}, cfg.section("report", "grid")) as run:
        summary, spec = collect(cfg)
        summary = summary.sort_values(["dataset", "arch", "sparsity", "method", "seed"])
        io.write_text(out / "summary.csv", summary.to_csv(index=False))
        io.write_text(out / "spectral.csv", spec.to_csv(index=False))
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
        metrics, claims = {}, []
        for ds in cfg.grid.datasets:
            for arch in cfg.grid.archs:
                tag = f"{ds}_{arch}"
                lines += [f"## {ds} / {arch}", "", "### Test accuracy", "", main_table(summary, ds, arch), ""]
                figures.sparsity(summary, ds, arch, figs / f"accuracy_vs_sparsity_{tag}.png")
                lines += [f"![accuracy vs sparsity](figures/accuracy_vs_sparsity_{tag}.png)", ""]
                comp = comparisons(summary, ds, arch)
                lines += ["### Paired differences (test accuracy, percentage points; 95% t-interval over seeds)", "",
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
                sig_table, sig = _signature(spec, ds, arch)
                lines += ["### Spectral signature of pruning (MBP topology, before retraining)", "",
                          "Agreement of the pruned network with its dense teacher, on low-pass images and on "
                          "high-pass images, averaged over the radii " + str(cfg.spectral.radii) + ". "
                          "Caveat: where both networks are near chance on a band (often the high-pass band), "
                          "agreement measures a shared bias (both predicting the same class), not preserved "
                          "behaviour; read it with the band accuracies above.", "",
                          sig_table, ""]
                claims += _claims(summary, sig, ds, arch)
                for _, r in summary[(summary.dataset == ds) & (summary.arch == arch)].groupby(
                        ["method", "sparsity"]).test_acc.agg(["mean", "std", "count"]).reset_index().iterrows():
                    metrics.setdefault(tag, {})[f"{r.method}_s{r.sparsity}"] = {
                        "test_acc_mean": round(float(r["mean"]), 6), "seeds": int(r["count"])}
        heat = spec.groupby(["dataset", "arch", "seed", "sparsity", "method"]).heatmap_seconds.first()
        lines += ["## Claims", "",
                  "Each claim of the paper (abstract), the comparison that tests it, and the verdict on the runs "
                  "above. Rule: **held** if the 95% interval of the paired difference lies above 0 at every "
                  "sparsity; **not held** if some interval lies wholly below 0 or the mean difference is <= 0 "
                  "everywhere; otherwise **not enough evidence** (always so with one seed).", "",
                  "| claim | test | data | verdict | evidence |", "|---|---|---|---|---|"] + claims
        lines += ["", "## Cost", "", f"Fourier heat map: {heat.mean():.2f} s per model on average "
                  f"({cfg.spectral.heatmap_images} images, {hardware}).", "",
                  "Files: summary.csv (one row per model), spectral.csv (one row per model, band and radius), "
                  "metrics.json (for `dvc metrics show`), figures/."]
        io.write_text(out / "README.md", "\n".join(lines) + "\n")
        io.write_json(out / "metrics.json", metrics)
        for f in (out / "summary.csv", out / "spectral.csv", out / "README.md"):
            run.log_artifact(f)
        for f in sorted(figs.glob("*.png")):
            run.log_artifact(f, "figures")


CLAIMS = (  # (claim from the paper's abstract, method, baseline)
    ("Fourier-guided MBP beats traditional MBP (one-shot fine-tuning) at the same budget", "fourier_kd", "finetune"),
    ("The low-to-high frequency curriculum adds to plain distillation", "fourier_kd", "kd"),
    ("The ordering matters: low-to-high beats high-to-low", "fourier_kd", "fourier_kd_reverse"),
    ("Distillation from the dense teacher matters, not only the frequency curriculum", "fourier_kd", "freq_ce"),
)


def _claims(summary: pd.DataFrame, sig: list, ds: str, arch: str) -> list[str]:
    rows = []
    for claim, method, base in CLAIMS:
        recs = paired(summary, ds, arch, method, base)
        ev = "; ".join(f"s={r['sparsity']}: {_ci_text(r)}" for r in recs) or "not run in this grid"
        rows.append(f"| {claim} | {method} - {base} | {ds}/{arch} | **{_verdict(recs)}** | {ev} |")
    if sig:
        by_s = {}
        for s, seed, lo, hi in sig:
            by_s.setdefault(s, []).append(lo - hi)
        recs = [{"sparsity": s, **paired_interval(d, [0.0] * len(d))} for s, d in by_s.items()]
        ev = "; ".join(f"s={r['sparsity']}: {_ci_text(r)}" for r in recs)
        rows.append(f"| MBP keeps the network's low-frequency behaviour better than its high-frequency one | "
                    f"agreement with the teacher, low-pass - high-pass, pruned network before retraining | "
                    f"{ds}/{arch} | **{_verdict(recs)}** | {ev} |")
    return rows
