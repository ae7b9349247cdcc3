"""One colour per method, the same in every figure, in the report and in the MLflow UI (tag mlflow.runColor).
Hex strings (matplotlib's tab20 palette, tab20b where it ran out), so that tracking can use them without importing matplotlib. A method
added from outside the suite brings its own colour in its catalogue record (or gets FALLBACK)."""
from __future__ import annotations

from .catalog import CATALOG

COLORS = {  # the paper's method (red) and its controls in related shades; the teacher black
    "dense": "#000000", "pruned": "#7f7f7f",
    "finetune": "#1f77b4", "finetune_layerwise": "#aec7e8", "random": "#e377c2",
    "kd": "#ff7f0e", "fourier_kd": "#d62728", "fourier_kd_reverse": "#ff9896", "freq_ce": "#ffbb78",
    "fourier_kd_anti": "#ad494a", "fourier_kd_shuffled": "#e7969c",     # tab20b's reds: more controls
    "imp": "#2ca02c", "lth": "#9467bd", "lth_init": "#c5b0d5", "lr_rewind": "#8c564b", "gmp": "#17becf",
    "lrr": "#c49c94",                 # iterative lr rewinding: a lighter shade of one-shot lr_rewind's brown
    "reinit": "#393b79",              # the random-reinitialisation control (tab20b's indigo)
    # the pruning signature's variants (spectral only)
    "pruned_bn": "#c7c7c7", "random_mask": "#f7b6d2", "random_mask_bn": "#dbdb8d",
    "matched_mask": "#5254a3", "matched_mask_bn": "#9c9ede",
}
FALLBACK = "#bcbd22"


def color(method: str) -> str:
    """A built-in method's colour here; an added method's from its catalogue record (else FALLBACK)."""
    m = CATALOG.get(method)
    return COLORS.get(method) or (m.color if m is not None and m.color else FALLBACK)
