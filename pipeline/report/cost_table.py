"""The report's cost table: nonzero MACs, the theoretical speed-up and nonzero parameters per method and
sparsity (what pipeline/core/cost.py counted for each model, read from summary.csv)."""
from __future__ import annotations

from pipeline.core.cost import NOTE


def _si(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else f"{n:.0f}"


def table(summary, ds: str, arch: str, groups) -> str:
    """Method x sparsity: nonzero MACs for one image, the theoretical speed-up and nonzero parameters (mean over
    seeds), in the report's groups (`groups`: the group names in order; dense first)."""
    df = summary[(summary.dataset == ds) & (summary.arch == arch)]
    sparsities = sorted(df[df.method != "dense"].sparsity.unique())
    lines = ["| group | method | " + " | ".join(f"s={s}" for s in sparsities) + " |",
             "|" + "---|" * (2 + len(sparsities))]
    for group in groups:
        for m in df[df.group == group].method.unique():
            sub = df[df.method == m]
            cells = []
            for s in sparsities:
                c = sub if m == "dense" else sub[sub.sparsity == s]
                cells.append("-" if c.empty else f"{_si(c.macs.mean())} MACs ({c.speedup.mean():.1f}x), "
                             f"{_si(c.nonzero_params.mean())} params")
            lines.append(f"| {group} | {m} | " + " | ".join(cells) + " |")
    dense = df[df.method == "dense"]
    lines += ["", f"Nonzero multiply-accumulates for one {'/'.join(sorted(df.macs_input.unique()))} image and "
              "nonzero parameters, mean over seeds; dense MACs "
              + (f"{_si(dense.dense_macs.iloc[0])}" if len(dense) else "-") + ". " + NOTE
              + " (pipeline/core/cost.py)."]
    return "\n".join(lines)

