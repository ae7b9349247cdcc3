"""Every verdict of the committed reports (results/*/README.md) follows from that report's own summary.csv
(and spectral.csv, for the pruning signature) under the stated rule of pipeline/report/verdicts.py.

The Claims section is regenerated from the committed CSVs with the experiment's configuration; each verdict
row of it is parsed and recomputed straight from the paired differences. A report that declares the current
rule version must carry exactly that section. A report written under an older rule (before v2) is not
compared word for word (its rule is not this one); its CSVs are still regenerated and checked, so nothing is
skipped.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from pipeline.report import claims as CL
from pipeline.report import build as R
from pipeline.report import verdicts as V
from pipeline.config.layout import ROOT
from pipeline.config import loading
from pipeline.config import schema

REPORTS = sorted(p.parent for p in (ROOT / "results").glob("*/README.md") if (p.parent / "summary.csv").is_file())
CLAIM = re.compile(r"^(\w+) vs (\w+)( \(claimed worse\))?$")
VERDICT = re.compile(r"\*\*([a-z ]+)\*\*")


def experiment_config(name: str) -> schema.Config:
    """The experiment's configuration, its datasets replaced by synthetic stand-ins with the same classes:
    the claims read only grid.*, report.* and the classes, and the real data need not be on this machine."""
    raw = loading.merged_raw(None if name == "paper" else name)
    raw["datasets"] = {ds: {"source": "synthetic", "classes": d["classes"], "train_size": 2, "val_size": 1,
                            "test_size": 1} for ds, d in raw["datasets"].items()}
    return loading.validate(raw)


def regenerate(folder: Path) -> tuple[schema.Config, pd.DataFrame, dict, list[str]]:
    cfg = experiment_config(folder.name)
    summary = pd.read_csv(folder / "summary.csv")
    spec = pd.read_csv(folder / "spectral.csv")
    sigs = {}
    for ds in cfg.grid.datasets:
        for arch in cfg.grid.archs:
            radii = R.signature_radii(spec, ds, arch, cfg.datasets[ds].classes, cfg.report.chance_margin)
            sigs[ds, arch] = R.signature(spec, ds, arch, radii)[1]
    return cfg, summary, sigs, CL.section(summary, cfg, sigs)


def claims_section(readme: str) -> list[str]:
    """The lines from '## Claims' up to the next second-level heading."""
    lines = readme.splitlines()
    start = lines.index("## Claims")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def verdict_rows(lines: list[str]):
    """(cell, cells of the row, verdict) for every table row carrying a verdict, under its '### ds / arch'."""
    cell = None
    for ln in lines:
        if ln.startswith("### ") and " / " in ln:
            cell = tuple(ln[4:].split(" / "))
        elif ln.startswith("| ") and (m := VERDICT.search(ln)):
            yield cell, [c.strip() for c in ln.strip("|").split(" | ")], m.group(1)


def check_verdicts(cfg, summary, sigs, lines) -> int:
    """Recompute every verdict in `lines` from the paired differences; returns how many were checked."""
    margin, alpha = cfg.report.equivalence_margin / 100, cfg.report.alpha
    declared = {(c.method, c.baseline): c for c in cfg.report.claims}
    n = 0
    for cell, cells, verdict in verdict_rows(lines):
        if cells[0].startswith(CL.SIGNATURE_CLAIM):
            key = next(k for k in sigs[cell] if (cells[0], cells[1]) == (CL.signature_claim(k), CL.signature_test(k)))
            by_s = sigs[cell][key]
            diffs = [V.difference(s, a, b) for s, (a, b) in sorted(by_s.items())]
            assert verdict == V.judge(diffs, margin, alpha).verdict, (cell, cells[:2])
        else:
            name = next(c for c in cells if CLAIM.match(c))
            method, base, worse = CLAIM.match(name).groups()
            claim = declared[method, base]
            assert (claim.direction == "worse") == bool(worse)
            sparsities = CL.claimed_sparsities(cfg, claim)
            diffs = CL.paired(summary, *cell, method, base, sparsities)
            ran = set(summary[(summary.dataset == cell[0]) & (summary.arch == cell[1])].method)
            # a method the report did not run (added to the suite since) is "not run", as claims.Judged says
            expected = CL.outcome(V.judge(diffs, margin, alpha), claim.direction) \
                if diffs and {method, base} <= ran else V.NOT_RUN
            assert verdict == expected, (cell, name, verdict, expected)
        n += 1
    return n


def test_there_are_committed_reports():
    assert {p.name for p in REPORTS} >= {"smoke", "cifar10_jpeg"}


@pytest.mark.parametrize("folder", REPORTS, ids=[p.name for p in REPORTS])
def test_every_committed_verdict_follows_from_its_own_summary(folder):
    cfg, summary, sigs, regenerated = regenerate(folder)
    cells = len(cfg.grid.datasets) * len(cfg.grid.archs)
    # every claim in every cell, once in the baselines' table or the controls' (kd in both), plus signatures
    assert check_verdicts(cfg, summary, sigs, regenerated) >= cells * len(cfg.report.claims)
    committed = claims_section((folder / "README.md").read_text())
    if f"Verdict rule v{V.RULE_VERSION} " in "\n".join(committed):
        assert check_verdicts(cfg, summary, sigs, committed) >= cells * len(cfg.report.claims)
        assert committed == regenerated, \
            "the committed Claims section differs from the one its own summary.csv gives: regenerate the report"
    else:
        # written under the rule before v2 (Holm-adjusted intervals): its words are not this rule's
        assert "Verdict rule v" not in "\n".join(committed) and "Holm-adjusted" in "\n".join(committed)
