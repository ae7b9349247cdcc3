"""The report's figures, one function each. Every method has ONE colour, the same in every figure and in the
MLflow UI: catalog.color(method).
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.config.catalog import CATALOG, METHODS, color  # noqa: E402
from pipeline.evaluate.spectral import FULL  # noqa: E402


FOCUS = ("dense", "pruned", "finetune", "kd")     # drawn in full in the band figure, with every proposed method


def proposed(m: str) -> bool:
    return m in CATALOG and CATALOG[m].role == "proposed"


def heatmap_methods(grid_methods) -> tuple[str, ...]:
    """The heat-map figure's methods: the teacher, the MBP topology, the nearest baselines, fourier_kd, and an
    added proposed method of the grid (the one its reader compares)."""
    drawn = ("dense", "pruned") + tuple(m for m, rec in CATALOG.items() if rec.heatmap)
    return drawn + tuple(m for m in grid_methods if proposed(m) and m not in drawn)


def _save(fig, path, dpi=110):
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def ordered(df, groups) -> list[tuple[str, list[str]]]:
    """[(group, its methods)] as the report's tables order them: the groups in `groups`' order (the summary's
    `group` column), each group's methods in the catalog's order (config.METHODS); groups with no method left
    out. Readers compare within a group and against dense, not alphabetically."""
    rank = {m: i for i, m in enumerate(METHODS)}
    out = []
    for g in groups:
        ms = sorted(df[df.group == g].method.unique(), key=lambda m: (rank.get(m, len(rank)), m))
        if ms:
            out.append((g, ms))
    return out


def sparsity(summary, ds, arch, path, groups):
    """Test accuracy per method, grouped as the tables are (`groups`: the group names after dense, in order),
    dense marked. Several sparsities: lines over sparsity (solid for the first group, dashed for the others),
    the legend in group order with the group names as headings. One sparsity: one point per method with its
    spread over seeds as an error bar, so no method hides behind another; each group under its own heading."""
    df = summary[(summary.dataset == ds) & (summary.arch == arch)]
    order = ordered(df, groups)
    levels = sorted(df[df.method != "dense"].sparsity.unique())
    dense = df[df.method == "dense"].test_acc
    if len(levels) == 1:
        rows = [("dense", "dense")] + [r for g, ms in order for r in [(g, None)] + [(g, m) for m in ms]]
        fig, ax = plt.subplots(figsize=(7, 0.42 * len(rows) + 1.6), layout="constrained")
        for i, (g, m) in enumerate(rows):
            if m is None:
                continue
            a = dense if m == "dense" else df[df.method == m].test_acc
            ax.errorbar(100 * a.mean(), i, xerr=100 * (a.std() if len(a) > 1 else 0), capsize=3, color=color(m),
                        fmt="D" if m == "dense" else "o")
        ax.set_yticks(range(len(rows)), [m or g for g, m in rows])
        for tick, (g, m) in zip(ax.get_yticklabels(), rows):
            if m is None:                                   # a group's heading
                tick.set_fontweight("bold")
        ax.invert_yaxis()
        ax.axvline(100 * dense.mean(), color=color("dense"), lw=1, ls=":", label="dense (mean)")
        n = df.groupby("method").seed.nunique().max()
        ax.set(xlabel=f"test accuracy (%), mean ± std over {n} seed(s)",
               title=f"{ds} / {arch}, sparsity {levels[0]}")
        ax.legend(loc="lower right", fontsize=8)
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
        handles = [ax.axhline(100 * dense.mean(), color=color("dense"), lw=1.5, ls=":", label="dense")]
        for k, (g, ms) in enumerate(order):
            handles += ax.plot([], [], " ", label=f"{g}:")       # the group's heading in the legend
            for m in ms:
                d = df[df.method == m].groupby("sparsity").test_acc
                handles.append(ax.errorbar(d.mean().index, 100 * d.mean(), yerr=100 * d.std().fillna(0), marker="o",
                                           capsize=3, label=m, color=color(m), linestyle="-" if k == 0 else "--"))
        ax.set(xlabel="sparsity", ylabel="test accuracy (%)", title=f"{ds} / {arch}: accuracy vs sparsity")
        ax.legend(handles=handles, fontsize=7, ncol=2)            # in group order (matplotlib puts lines first)
    _save(fig, path)


def bands(spec, ds, arch, s, path, filt):
    df = spec[(spec.dataset == ds) & (spec.arch == arch) & ((spec.sparsity == s) | (spec.method == "dense"))]
    df = df[df.radius != FULL]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True, layout="constrained")
    # 16 methods and the signature's controls in one panel: the reader compares the proposed method with its
    # nearest baselines and the teacher, so those are drawn in full (first in the legend), the rest faded
    methods = sorted(df.method.unique(), key=lambda m: (m not in FOCUS and not proposed(m), m))
    for ax, band in zip(axes, ("low", "high")):
        for m in methods:
            g = df[(df.method == m) & (df.band == band)].groupby("radius").acc.mean()
            focus = m in FOCUS or proposed(m)
            ax.plot(g.index.astype(float), 100 * g.values, marker="." if focus else None, label=m, color=color(m),
                    lw=2.5 if m == "dense" or proposed(m) else 1.5 if focus else 0.8, alpha=1 if focus else 0.3,
                    zorder=3 if focus else 1)
        ax.set(xlabel="radius (frequency bins)", title=f"{band}-pass test accuracy",
               ylabel="accuracy (%)" if band == "low" else None)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", fontsize=7)
    fig.suptitle(f"{ds} / {arch}, sparsity {s}, {filt} filter (mean over seeds)")
    _save(fig, path)


def heatmaps(maps: dict, title: str, path):
    """maps: method -> (H, W) error-rate tensor, centred. Panels far enough apart that labels never meet."""
    fig, axes = plt.subplots(1, len(maps), figsize=(3.0 * len(maps) + 1.2, 3.6), layout="constrained",
                             squeeze=False)
    axes = axes[0]
    half = next(iter(maps.values())).shape[0] // 2
    for ax, (m, hm) in zip(axes, maps.items()):
        im = ax.imshow(100 * hm.numpy(), vmin=0, vmax=100, cmap="viridis", extent=(-half, half, half, -half))
        ax.set_title(m, color=color(m))
        ax.set_xticks([-half, 0, half])
        ax.set_yticks([-half, 0, half] if ax is axes[0] else [])
        ax.set_xlabel("j")
    axes[0].set_ylabel("i")
    fig.colorbar(im, ax=list(axes), label="error rate (%)", shrink=0.8)
    fig.suptitle(title, fontsize=9)
    _save(fig, path, dpi=100)


def model_spectrum(res: dict, heat, title: str, path):
    """One model (an MLflow run's image): low-/high-pass accuracy per radius, and its Fourier heat map."""
    radii = [r for r in res["radii"] if r != FULL]
    fig, (ax, hx) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained", width_ratios=(1.4, 1))
    for band, ls in (("low", "-"), ("high", "--")):
        ax.plot(radii, [100 * a for a in res[f"{band}_acc"][:len(radii)]], ls, marker=".", label=f"{band}-pass")
    ax.set(xlabel="radius (frequency bins)", ylabel="test accuracy (%)", ylim=(0, 100))
    ax.legend(fontsize=8)
    half = heat.shape[0] // 2
    im = hx.imshow(100 * heat.numpy(), vmin=0, vmax=100, cmap="viridis", extent=(-half, half, half, -half))
    hx.set(title="Fourier heat map", xlabel="j", ylabel="i")
    fig.colorbar(im, ax=hx, label="error rate (%)")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def learning_curves(curves, ds, arch, s, path, groups):
    """Validation accuracy per epoch: one panel per group of the tables, the dense teachers in each; one thin
    line per seed, one colour per method (a chain's epochs run through its rounds)."""
    df = curves[(curves.dataset == ds) & (curves.arch == arch) & ((curves.sparsity == s) | (curves.method == "dense"))]
    order = ordered(df, groups)
    fig, axes = plt.subplots(1, max(1, len(order)), figsize=(5.5 * max(1, len(order)), 4), sharey=True,
                             layout="constrained", squeeze=False)
    for ax, (g, ms) in zip(axes[0], order or [("dense", [])]):
        for m in ("dense", *ms):
            for k, (_, run) in enumerate(df[df.method == m].groupby("seed")):
                ax.plot(run.epoch, 100 * run.val_acc, color=color(m), lw=2 if m == "dense" else 1, alpha=0.8,
                        label=m if k == 0 else None)
        ax.set(xlabel="epoch", title=g, ylabel="validation accuracy (%)" if ax is axes[0][0] else None)
        ax.legend(fontsize=7)
    fig.suptitle(f"{ds} / {arch}, sparsity {s}: validation accuracy after each epoch (every seed)")
    _save(fig, path)
