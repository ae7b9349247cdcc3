"""Bring your own method (issue 30): a method from the user's own module, named in the experiment's
`methods.extra`, goes wherever a built-in goes; LAMP (examples/lamp.py) is the shipped example. Bad plugins are
refused before any compute with exit status 2 and one line naming the module and the key.

The configs with added methods are loaded in subprocesses (`python -m pipeline validate`): adding a method
changes the catalogue of the process that loads it, and this test session's must stay the built-in one."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from pipeline.config.layout import ROOT

from .conftest import run_stage, write_experiment

sys.path.insert(0, str(ROOT))                   # examples/ is imported from the project root, as the jobs do
from examples.lamp import lamp_mask, lamp_scores  # noqa: E402

LAMP = {"methods": {"extra": ["examples.lamp"], "roles": {"lamp": "proposed"}},
        "grid": {"methods": ["finetune", "random", "kd", "fourier_kd", "lr_rewind", "lamp"]}}


# ------------------------------------------------------------------------------------------ LAMP by hand


def test_lamp_scores_by_hand():
    # layer [1, 2, 3] (any order): squares 1, 4, 9; the sums of the weights at least as large: 14, 13, 9
    w = torch.tensor([[3.0, -1.0], [2.0, 0.0]])
    expected = torch.tensor([[9 / 9, 1 / 14], [4 / 13, 0 / 14]])
    # with the zero: squares 0, 1, 4, 9 -> tails 14, 14, 13, 9
    assert torch.allclose(lamp_scores(w), expected)
    # power 1: |w| / sum of the larger |w|: 0/6, 1/6, 2/5, 3/3
    assert torch.allclose(lamp_scores(w, 1.0), torch.tensor([[1.0, 1 / 6], [2 / 5, 0.0]]))


def test_lamp_prunes_across_layers_by_score_not_by_magnitude():
    """Layers [1, 2, 3] and [10, 20]: scores [1/14, 4/13, 1] and [100/500, 1]. Two of five pruned: 1 (1/14)
    and 10 (0.2), where global magnitude pruning would prune 1 and 2. Each layer keeps its largest weight."""
    weights = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([10.0, 20.0])}
    mask = lamp_mask(weights, 0.4)
    assert mask["a"].tolist() == [False, True, True] and mask["b"].tolist() == [False, True]
    full = lamp_mask(weights, 0.6)                   # three pruned: 1, 10 (0.2), then 2 (4/13 = 0.31)
    assert full["a"].tolist() == [False, False, True] and full["b"].tolist() == [False, True]


def test_no_file_under_pipeline_names_lamp():
    hits = [p for p in (ROOT / "pipeline").rglob("*.py") if re.search(r"\blamp\b", p.read_text(), re.I)]
    assert hits == [], hits


# ------------------------------------------------------------------------- the experiment that adds it


def _env(env, *paths):
    return {**env, "PYTHONPATH": os.pathsep.join([*map(str, paths), env.get("PYTHONPATH", "")])}


def test_lamp_is_in_the_catalogue_listing(tmp_path, env):
    exp = write_experiment(tmp_path, name="t", **LAMP)
    r = run_stage("methods", "--experiment", exp, env=env)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("| lamp "))
    assert row.startswith("| lamp | * | one-shot | proposed | retrain | masked | examples.lamp | Lee et al. 2021"), row


def test_lamp_is_planned_as_one_job_per_cell_and_sparsity(tmp_path, env):
    exp = write_experiment(tmp_path, name="t", **LAMP)
    r = run_stage("plan", "--experiment", exp, env=env)
    assert r.returncode == 0 and any(line.split()[:3] == ["lamp", "1", "2"] for line in r.stdout.splitlines()), \
        r.stdout                                             # one job, retrain.epochs = 2, priced as finetune's


def test_lamp_is_judged_against_every_baseline_with_its_own_parameters(tmp_path, env):
    write_experiment(tmp_path, name="t", **LAMP)
    script = textwrap.dedent("""
        from pipeline.config import catalog
        from pipeline.config.loading import load
        cfg = load("t")
        print(sorted((c.method, c.baseline) for c in cfg.report.claims if "lamp" in (c.method, c.baseline)))
        print(catalog.METHOD_PARAMS["lamp"], cfg.section("methods.options.lamp"), catalog.color("lamp"))
        print(cfg.section(*catalog.METHOD_PARAMS["lamp"])["methods"]["options"])
    """)
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                       env={**env, "PIPELINE_CONFIGS": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    claims, params, section = p.stdout.splitlines()
    # judged against every baseline of the grid, as fourier_kd is; controls and the paper's method are not baselines
    assert claims == "[('lamp', 'finetune'), ('lamp', 'kd'), ('lamp', 'lr_rewind'), ('lamp', 'random')]"
    assert params == ("('retrain', 'train', 'model', 'prune', 'runtime', 'methods') "
                      "{'methods.options.lamp': {'power': 2.0}} #8c6d31")
    assert section == "{'lamp': {'power': 2.0}}"      # its rule's params: the defaults filled in


def test_lamp_as_a_baseline_is_judged_by_the_papers_method(tmp_path, env):
    exp = write_experiment(tmp_path, name="t", methods={"extra": ["examples.lamp"]},
                           grid={"methods": ["finetune", "fourier_kd", "lamp"]})
    script = ("from pipeline.config.loading import load\ncfg = load('t')\n"
              "print([(c.method, c.baseline) for c in cfg.report.claims if 'lamp' in (c.method, c.baseline)])")
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                       env={**env, "PIPELINE_CONFIGS": str(tmp_path)})
    assert p.returncode == 0 and p.stdout.strip() == "[('fourier_kd', 'lamp')]", p.stderr + p.stdout


# ------------------------------------------------------------------------------------------ bad plugins

GOOD = '''
from pipeline.config.catalog import Method
def recipe(ctx):
    raise NotImplementedError
METHODS = (Method("mine", family="one-shot", role="baseline", budget="retrain", params=("retrain",),
                  paper="Me et al. 2026", recipe=recipe{extra}),)
'''

BAD = {   # id: (module text or None for a module that does not exist, experiment overrides, what stderr names)
    "import-error": ("import no_such_package_here\n", {}, "methods.extra: module 'mylab_x' failed to import: "
                     "ModuleNotFoundError: No module named 'no_such_package_here'"),
    "missing-module": (None, {}, "methods.extra: module 'mylab_x' failed to import: ModuleNotFoundError"),
    "clash-with-built-in": (GOOD.replace('"mine"', '"finetune"').format(extra=""), {},
                            "methods.extra: module 'mylab_x' declares method 'finetune', which is built in"),
    "unknown-record-key": (GOOD.format(extra=", famly='x'"), {},
                           "module 'mylab_x' failed to import: TypeError: Method.__init__() got an unexpected "
                           "keyword argument 'famly'"),
    "bad-role": (GOOD.replace('role="baseline"', 'role="star"').format(extra=""), {},
                 "mylab_x: method 'mine': role = 'star': must be one of proposed, baseline, control"),
    "no-methods": ("X = 1\n", {}, "methods.extra: module 'mylab_x' must define METHODS"),
    "option-of-wrong-type": (GOOD.format(extra=", options={'power': 2.0}"),
                             {"methods": {"options": {"mine": {"power": "two"}}}},
                             "methods.options.mine.power = 'two': wrong type str, expected float"),
    "unknown-option": (GOOD.format(extra=", options={'power': 2.0}"),
                       {"methods": {"options": {"mine": {"powr": 3.0}}}},
                       "methods.options.mine.powr = 3.0: must be one of mine's options ['power']"),
    "chain-budget": (GOOD.replace('budget="retrain"', 'budget="chain", chain=True').format(extra=""), {},
                     "mylab_x: method 'mine': budget = 'chain': an added method is one-shot or dense-schedule"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_plugin_is_refused_naming_the_module_and_the_key(case, tmp_path, env):
    text, overrides, expect = BAD[case]
    if text is not None:
        (tmp_path / "mylab_x.py").write_text(text)
    methods = {"extra": ["mylab_x"], **overrides.get("methods", {})}
    exp = write_experiment(tmp_path, name="t", methods=methods,
                           grid={"methods": ["finetune", "mine"]})
    r = run_stage("validate", "--experiment", exp, env=_env(env, tmp_path))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.startswith("config error: ") and expect in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr


# --------------------------------------------------------------------- the whole DAG with LAMP added


@pytest.mark.slow
def test_the_lamp_dag_runs_from_its_own_module_and_its_report_judges_it(smoke, tmp_path):
    """LAMP added to the smoke experiment as configs/lamp.yaml adds it (methods.extra, role proposed), through
    the real Snakemake on a clone of the smoke run: only LAMP's jobs and the report run (the data, the dense
    model, the mask and every built-in method are reused), and LAMP is retrained, evaluated band by band,
    tracked, costed, drawn and judged against every baseline of the grid, with no edit under pipeline/.
    (configs/lamp.yaml itself is validated by test_config; its DAG differs only in the grid's methods.)"""
    import json
    import sqlite3

    import yaml

    from pipeline.config.catalog import CATALOG
    from pipeline.config.loading import merge, read_yaml

    from .conftest import shell
    mine = smoke.clone(tmp_path / "repo")
    repo, env = mine.repo, mine.env
    smoke_cfg = read_yaml(repo / "configs" / "smoke.yaml")
    methods = list(read_yaml(repo / "params.yaml")["grid"]["methods"])
    raw = merge(smoke_cfg, {"methods": LAMP["methods"], "grid": {"methods": methods + ["lamp"]}})
    (repo / "configs" / "smoke.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    runs = repo / "runs/smoke"
    cell = "synthetic/resnet20/seed0/s0.9"
    reused = [runs / "dense/synthetic/resnet20/seed0/model.pt", runs / f"prune/{cell}/mask.pt",
              runs / f"retrain/{cell}/finetune/model.pt"]
    before = [p.stat().st_mtime_ns for p in reused]
    r = shell("snakemake --cores 2 --configfile configs/smoke.yaml", repo, env, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in reused] == before, "a built-in job ran again"
    metrics = json.loads((runs / f"retrain/{cell}/lamp/metrics.json").read_text())
    assert abs(metrics["sparsity"] - 0.9) < 1e-3 and metrics["macs"] > 0, metrics
    assert (runs / f"spectral/{cell}/lamp.json").is_file() and (runs / f"spectral/{cell}/lamp_heatmap.pt").is_file()
    readme = (runs / "report/README.md").read_text()
    summary = (runs / "report/summary.csv").read_text()
    assert sum(line.split(",")[3:5] == ["0.9", "lamp"] for line in summary.splitlines()) == 1, summary
    baselines = [m for m in methods if CATALOG[m].role == "baseline"]
    for baseline in baselines:
        assert f"lamp vs {baseline}" in readme, baseline
    assert f"the claim of the added method lamp, lamp better than every one of its {len(baselines)} baselines" \
        in readme
    assert "the paper's claim, fourier_kd better than every one of its" in readme
    assert "| lamp |" in readme                                    # the accuracy and cost tables
    with sqlite3.connect(repo / "mlruns.db") as con:
        colors = con.execute("SELECT t2.value FROM tags t1 JOIN tags t2 ON t1.run_uuid = t2.run_uuid "
                             "WHERE t1.key = 'method' AND t1.value = 'lamp' AND t2.key = 'mlflow.runColor'").fetchall()
    con.close()
    assert colors and {c for (c,) in colors} == {"#8c6d31"}, colors
    dvc = shell("python -m pipeline export_dvc --experiment smoke", repo, env, timeout=300)
    assert dvc.returncode == 0 and "retrain-synthetic-resnet20-seed0-s0p9-lamp:" in dvc.stdout, dvc.stderr[-2000:]
