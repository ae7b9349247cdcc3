"""The DAG is defined once: dvc.yaml is the export of the Snakefile's jobs, and the paper's grid plans every
stage for both datasets, all three models, every sparsity, seed and method."""
from __future__ import annotations

from collections import Counter

import yaml

from pipeline.config.catalog import CHAIN_METHODS
from pipeline.config.layout import ROOT
from pipeline.config.loading import load
from pipeline.planning.dag import PARAMS_FILE, export_dvc, resolved_params, snakemake_jobs

STALE = "stale: python -m pipeline export_dvc --experiment smoke > dvc.yaml"


def test_committed_dvc_yaml_is_the_snakefile_export():
    assert (ROOT / "dvc.yaml").read_text() == export_dvc("smoke"), f"dvc.yaml is {STALE}"
    assert (ROOT / PARAMS_FILE).read_text() == resolved_params("smoke"), f"{PARAMS_FILE} is {STALE}"


def test_dvc_stages_match_snakemake_jobs_one_to_one():
    jobs = snakemake_jobs("smoke")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert len(stages) == len(jobs)
    for job in jobs:
        match = [s for s in stages.values() if s["cmd"] == job["cmd"]]
        assert len(match) == 1, job["cmd"]
        s = match[0]
        outs = [o if isinstance(o, str) else next(iter(o)) for o in s.get("outs", []) + s.get("metrics", [])]
        assert sorted(outs) == sorted(job["outs"])
        assert sorted(s.get("deps", [])) == job["deps"]


def test_paper_grid_plans_every_stage_and_cell():
    cfg = load()
    g = cfg.grid
    cells = len(g.datasets) * len(g.archs) * len(g.seeds)
    jobs = snakemake_jobs(None)
    counts = Counter(j["rule"] for j in jobs)
    n_s, n_m = len(g.sparsities), len(g.methods)
    chained = [m for m in g.methods if m in CHAIN_METHODS]      # one chain per dense network serves every sparsity
    assert chained == ["imp", "lth", "lth_init", "lrr"]
    assert counts == {"prepare": len(g.datasets), "train_dense": cells, "prune": cells * n_s,
                      "retrain": cells * n_s * (n_m - len(chained)), "chain": cells * len(chained),
                      "spectral_dense": cells, "spectral_pruned": cells * n_s, "spectral": cells * n_s * n_m,
                      "report": 1}
    planned = {(j["wildcards"]["dataset"], j["wildcards"]["arch"], j["wildcards"]["seed"], j["wildcards"]["sparsity"],
                j["wildcards"]["method"]) for j in jobs if j["rule"] == "retrain"}
    assert planned == {(d, a, str(s), str(sp), m) for d in g.datasets for a in g.archs for s in g.seeds
                       for sp in g.sparsities for m in g.methods if m not in chained}
    # every chain writes the retrained model of each sparsity, where the spectral jobs and the report read it
    chain_outs = {o for j in jobs if j["rule"] == "chain" for o in j["outs"]}
    assert {d for j in jobs if j["rule"] == "spectral" and j["wildcards"]["method"] in chained
            for d in j["deps"] if d.endswith("model.pt") and "/retrain/" in d} <= chain_outs
    assert len(chain_outs) == 2 * cells * n_s * len(chained)
    assert set(g.datasets) == {"cifar10", "cifar100"} and set(g.archs) == {"resnet20", "resnet56", "vgg16_bn"}


def test_rules_pass_only_the_sections_a_method_reads():
    """Each method's exact keys: all of distill.* for the Fourier curricula, T and alpha for kd, the radius
    schedule and alpha without T for freq_ce (so changing T reruns exactly the teacher-using methods)."""
    jobs = [j for j in snakemake_jobs("smoke") if j["rule"] == "retrain"]
    with_distill = {j["wildcards"]["method"] for j in jobs if "distill" in j["params"]}
    assert with_distill == {"fourier_kd", "fourier_kd_anti", "fourier_kd_shuffled", "fourier_kd_reverse"}
    params = {j["wildcards"]["method"]: j["params"] for j in jobs}
    assert [p for p in params["kd"] if p.startswith("distill")] == ["distill.T", "distill.alpha"]
    assert [p for p in params["freq_ce"] if p.startswith("distill")] == [
        "distill.alpha", "distill.filter", "distill.full_band_at", "distill.radius_start", "distill.schedule",
        "distill.steps"]


def test_dvc_params_read_the_merged_config():
    """A value the experiment sets (distill.full_band_at in configs/smoke.yaml) and one it inherits (distill.T
    from params.yaml) are both read from dvc.params.yaml, the merged config, never from params.yaml alone."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    files = {f for s in stages.values() for p in s.get("params", []) for f in p}
    assert files == {PARAMS_FILE}
    merged = yaml.safe_load((ROOT / PARAMS_FILE).read_text())
    assert merged["distill"]["full_band_at"] == 0.5 and merged["distill"]["T"] == 4.0 and merged["name"] == "smoke"
