"""Figures: one fixed colour per method everywhere; a single-sparsity grid gives one point per method with an
error bar; heat-map panels' labels never overlap."""
from __future__ import annotations

import matplotlib
import pandas as pd
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.config import catalog as colors
from pipeline.report import figures  # noqa: E402
from pipeline.config.catalog import METHODS  # noqa: E402


def test_every_method_has_its_own_colour_and_unknown_ones_a_fallback():
    named = ["dense", "pruned", *METHODS]
    assert len({colors.color(m) for m in named}) == len(named)
    assert colors.color("a_new_method") == colors.FALLBACK not in {colors.color(m) for m in named}


# Two groups as the report names them; the extra-cost group deliberately holds methods that sort first
# alphabetically, so an alphabetical figure fails the order checks below.
GROUPS = ("equal", "extra")
EXTRA = tuple(m for m in METHODS if m in ("gmp", "imp", "lr_rewind", "lth", "lth_init"))    # catalog order
EQUAL = tuple(m for m in METHODS if m not in EXTRA)


def _summary(sparsities, seeds=(0, 1)):
    rows = [dict(dataset="d", arch="a", seed=s, sparsity=0.0, method="dense", group="dense", test_acc=0.9)
            for s in seeds]
    rows += [dict(dataset="d", arch="a", seed=s, sparsity=sp, method=m, group="extra" if m in EXTRA else "equal",
                  test_acc=0.5 + 0.01 * i + 0.02 * s)
             for sp in sparsities for i, m in enumerate(METHODS) for s in seeds]
    return pd.DataFrame(rows).sort_values(["method", "seed"])      # the report hands it over sorted by name


@pytest.fixture
def captured(monkeypatch):
    """The figure a function saves, kept open for inspection."""
    saved = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, dpi=110: saved.append(fig))
    yield saved
    plt.close("all")


def test_one_sparsity_gives_one_point_per_method_with_error_bars(captured, tmp_path):
    figures.sparsity(_summary([0.9]), "d", "a", tmp_path / "x.png", GROUPS)
    ax = captured[0].axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["dense", "equal", *EQUAL, "extra", *EXTRA]    # grouped as the tables, dense first
    bold = [t.get_text() for t in ax.get_yticklabels() if t.get_fontweight() == "bold"]
    assert bold == ["equal", "extra"]                                 # the group headings stand out
    assert len(ax.containers) == 1 + len(METHODS)                     # dense, then one errorbar per method
    assert ax.containers[0].lines[0].get_marker() == "D"             # dense marked
    for m, c in zip(EQUAL + EXTRA, ax.containers[1:]):
        assert matplotlib.colors.to_hex(c.lines[0].get_color()) == colors.color(m)
        (seg,) = c.lines[2][0].get_segments()                       # the x error bar: mean -/+ std over 2 seeds
        assert seg[1][0] - seg[0][0] == pytest.approx(2 * 100 * pd.Series([0.0, 0.02]).std())


def test_several_sparsities_give_one_line_per_method(captured, tmp_path):
    figures.sparsity(_summary([0.5, 0.9]), "d", "a", tmp_path / "x.png", GROUPS)
    ax = captured[0].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["dense", "equal:", *EQUAL, "extra:", *EXTRA]
    styles = {c.get_label(): c.lines[0].get_linestyle() for c in ax.containers}
    assert {styles[m] for m in EQUAL} == {"-"} and {styles[m] for m in EXTRA} == {"--"}


def test_heatmap_labels_do_not_overlap(captured, tmp_path):
    maps = {m: torch.rand(32, 32) for m in ("dense", "pruned", "finetune", "kd", "fourier_kd")}
    figures.heatmaps(maps, "title", tmp_path / "x.png")
    fig = captured[0]
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][:5]
    boxes = [[t.get_window_extent(r) for t in ax.get_xticklabels() + ax.get_yticklabels() + [ax.title]
              if t.get_text()] for ax in panels]
    for left, right in zip(boxes, boxes[1:]):
        for a in left:
            for b in right:
                assert not a.overlaps(b), (a, b)


def test_the_band_figure_draws_the_proposed_method_its_baselines_and_the_teacher_in_full(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    import pandas as pd
    from pipeline.report import figures
    rows = [dict(dataset="d", arch="a", sparsity=0.0 if m == "dense" else 0.9, method=m, band=b, radius=r, acc=0.5)
            for m in ("dense", "finetune", "kd", "fourier_kd", "imp", "random_mask") for b in ("low", "high")
            for r in (4.0, 8.0)]
    saved = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: saved.setdefault("fig", fig))
    figures.bands(pd.DataFrame(rows), "d", "a", 0.9, tmp_path / "b.png", "circle")
    lines = {ln.get_label(): ln for ln in saved["fig"].axes[0].get_lines()}
    assert [ln.get_label() for ln in saved["fig"].axes[0].get_lines()][:4] == ["dense", "finetune", "fourier_kd", "kd"]
    assert {m: lines[m].get_alpha() for m in lines} == {"dense": 1, "finetune": 1, "fourier_kd": 1, "kd": 1,
                                                         "imp": 0.3, "random_mask": 0.3}
    assert lines["fourier_kd"].get_linewidth() == 2.5 and lines["imp"].get_linewidth() == 0.8
    plt.close(saved["fig"])
