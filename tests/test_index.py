"""results/README.md: the index of committed experiments, generated from the published reports by publish."""
from __future__ import annotations

import pytest

from pipeline.report import index, publish
from pipeline.config.layout import ROOT
from pipeline.config import loading

REPORT = """# Report: experiment `x`

- Experiment: `x` (params.yaml + configs/x.yaml)
- Data: d: synthetic, 10 train / 5 test images
- Hardware: cpu:Test, 2 cores
- Seeds: [0, 1, 2]; sparsities: [0.9]; methods: finetune, kd
- Written 2026-12-01 10:00 UTC from commit abcdef123456 by `python -m pipeline report`; every number below.

## d / a

| group | method | s=0.9 |
|---|---|---|
| dense | dense | **95.00** |

## Claims

| claim | test | data | verdict | evidence |
|---|---|---|---|---|
| A beats B | a - b | d/a | **held** | s=0.9: +1.00 [+0.50, +1.50] |
| A beats C | a - c | d/a | **not enough evidence** | s=0.9: +0.10 |
| A beats D | a - d | d/a | **held** | s=0.9: +2.00 |

## Cost
"""


def test_index_lists_each_experiment_with_its_data_hardware_seeds_and_verdicts(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "README.md").write_text(REPORT)
    d = index.describe(tmp_path / "x" / "README.md")
    # the bold accuracy in the test-accuracy table is no verdict: only the Claims section is read
    assert d["claims"] == [("A beats B — a - b", "d/a", "held"), ("A beats C — a - c", "d/a", "not enough evidence"),
                           ("A beats D — a - d", "d/a", "held")]
    text = index.index(tmp_path)
    assert ("| [x](x/README.md) | d: synthetic, 10 train / 5 test images | cpu:Test, 2 cores | [0, 1, 2] | "
            "2026-12-01 10:00 UTC from commit abcdef123456 | 2 held, 1 not enough evidence |") in text
    assert "- A beats C — a - c (d/a): **not enough evidence**" in text


CLAIMS_BY_CELL = """## Claims

Every claim, judged in each cell.

### d / a

Against every baseline:

| claim | baseline's budget | verdict | difference | p | images | s | power |
|---|---|---|---|---|---|---|---|
| a vs b | retrain budget | **held** | +1.0 | 0.01 / 0.9 | 1.00 | 1.00 | - |

Controls (what each part contributes), worded from the numbers:

| question | comparison | verdict | finding |
|---|---|---|---|
| does order matter? | a vs a_anti | **worse** | a is worse |

### Across cells

- a vs b: held in 1 of 1 (after Holm across cells: 1); held in every cell: yes
"""


def test_claims_judged_per_cell_take_the_cell_from_their_heading(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "README.md").write_text(REPORT.split("## Claims")[0] + CLAIMS_BY_CELL)
    assert index.describe(tmp_path / "x" / "README.md")["claims"] == [
        ("a vs b — retrain budget", "d/a", "held"), ("does order matter? — a vs a_anti", "d/a", "worse")]


def test_the_index_carries_the_reports_caveat_and_its_regime_notes(tmp_path):
    # A visitor who reads only the index must not take "worse than lrr" for a finding about recovery when the
    # report says its dense model is under-trained: the caveat and each regime note's title go with the verdicts.
    head, claims = REPORT.split("## Claims")[0], CLAIMS_BY_CELL.split("### Across cells")[0]
    regime = ("Regime notes:\n\n- **Dense model under-trained**: lrr at s=0.9 (+8.33 pp) beats the dense teacher.\n"
              "- **Equal epochs, not equal compute**: kd 1.37x.\n\n### Across cells\n\n"
              "- a vs b: held in 1 of 1 (after Holm across cells: 1); held in every cell: yes\n")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "README.md").write_text(head.replace("\n## d / a", "\n> Tiny budget: not the paper.\n\n## d / a")
                                              + claims + regime)
    d = index.describe(tmp_path / "x" / "README.md")
    assert d["caveats"] == ["Tiny budget: not the paper."]
    assert d["regimes"] == [("Dense model under-trained", "d/a"), ("Equal epochs, not equal compute", "d/a")]
    assert len(d["claims"]) == 2            # the notes and the across-cells lines are no verdicts
    text = index.index(tmp_path)
    assert "> Tiny budget: not the paper.\n" in text
    assert ("Regime notes (the report says what each means for its verdicts): Dense model under-trained (d/a); "
            "Equal epochs, not equal compute (d/a).") in text


def test_a_folder_without_a_report_header_is_refused_naming_it(tmp_path):
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "README.md").write_text("# notes\n- Data: mine\n")
    with pytest.raises(ValueError, match=r"y/README.md: not a report of this suite \(no '- Experiment:'"):
        index.index(tmp_path)


def test_the_committed_index_is_what_publish_generates():
    assert (ROOT / "results" / "README.md").read_text() == index.index(ROOT / "results"), \
        "results/README.md is stale: python -m pipeline publish regenerates it"


def test_publish_regenerates_the_index(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "ROOT", tmp_path)
    src = tmp_path / "report"
    src.mkdir()
    for f in publish.FILES:
        (src / f).write_text(REPORT if f == "README.md" else "{}")
    cfg = loading.load("smoke")
    monkeypatch.setattr(publish, "resolve_path", lambda p: src)
    publish.publish(cfg)
    assert (tmp_path / "results" / "README.md").read_text() == index.index(tmp_path / "results")
    assert "[smoke](smoke/README.md)" in (tmp_path / "results" / "README.md").read_text()
