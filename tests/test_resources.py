"""Every rule declares threads, memory, run time and GPUs from the config's resources section; run times
follow the epochs a job trains; the schema rejects bad resources and tracking URIs; a stage takes its thread
count from --threads (what Snakemake and SLURM gave it)."""
from __future__ import annotations

import dataclasses

import pytest

from pipeline.planning import resources as R
from pipeline.errors import ConfigError
from pipeline.config.loading import load, merge, read_yaml, validate
from pipeline.config.layout import ROOT
from pipeline.planning.dag import snakemake_jobs
from tests.conftest import run_stage


def paper(**over):
    return validate(merge(read_yaml(ROOT / "params.yaml"), over))


def test_run_time_is_epochs_times_arch_cost():
    cfg = paper()   # cifar10: 45,000 training images (5,000 held out); margin 1.5; floor 10 min
    wc = {"dataset": "cifar10", "arch": "resnet20"}
    assert R.minutes(cfg, "train_dense", wc) == 10 + 108          # 160 epochs x 0.5 min x 0.9 x 1.5
    assert R.minutes(cfg, "train_dense", wc, attempt=2) == 2 * 118
    assert R.minutes(cfg, "retrain", {**wc, "method": "fourier_kd"}) == 10 + 27   # 40 epochs
    # lth by hand to 0.98 alone: 18 rounds of 20% x (160 - 3) epochs x 1.5 min x 0.9 x 1.5 = 5722.65
    assert R.minutes(cfg, "retrain", {**wc, "arch": "resnet56", "method": "lth"}) == 10 + 5723
    assert R.minutes(cfg, "chain", {**wc, "method": "imp"}) == 10 + 594   # one chain: 22 rounds x 40 epochs
    assert R.minutes(cfg, "retrain", {**wc, "method": "imp"}) == 10 + 486           # 18 rounds x 40 epochs
    assert R.minutes(cfg, "chain", {**wc, "method": "lrr"}) == 10 + 2376  # 22 rounds x 160 epochs x 0.675
    assert R.minutes(cfg, "retrain", {**wc, "method": "reinit"}) == 10 + 108        # the dense 160 epochs
    assert R.minutes(cfg, "prepare", {}) == R.minutes(cfg, "report", {}) == 10
    half = paper(model={"width": 0.5})
    assert R.minutes(half, "train_dense", wc) == 10 + 27                          # width^2 = 1/4


def test_compute_jobs_get_the_configured_share_light_jobs_one_thread():
    cfg = paper(resources={"threads": 6, "mem_mb": 12000, "gpu": 2, "light_mem_mb": 3000})
    for rule in R.COMPUTE:
        assert (R.threads(cfg, rule), R.mem_mb(cfg, rule), R.gpu(cfg, rule)) == (6, 12000, 2)
    for rule in R.LIGHT:
        assert (R.threads(cfg, rule), R.mem_mb(cfg, rule), R.gpu(cfg, rule)) == (1, 3000, 0)


def test_every_rule_of_the_dag_declares_its_resources_and_passes_threads():
    jobs = snakemake_jobs("smoke")
    assert {j["rule"] for j in jobs} == set(R.COMPUTE) | set(R.LIGHT)
    for j in jobs:
        assert (j["rule"] == "report") != ("--threads 1 " in j["cmd"]), j["cmd"]


@pytest.mark.parametrize("over, key", [
    ({"resources": {"threads": 0}}, "resources.threads"),
    ({"resources": {"gpu": -1}}, "resources.gpu"),
    ({"resources": {"runtime_margin": 0.5}}, "resources.runtime_margin"),
    ({"resources": {"minutes_per_epoch": {"resnet20": 1.0}}}, "resources.minutes_per_epoch"),
    ({"resources": {"minutes_per_epoch": {"resnet20": 0.0, "resnet56": 1.0, "vgg16_bn": 1.0}}},
     "resources.minutes_per_epoch.resnet20"),
    ({"resources": {"mem_gb": 8}}, "resources.mem_gb"),
    ({"tracking": {"uri": "mlruns"}}, "tracking.uri"),
])
def test_bad_resources_and_tracking_uris_are_named(over, key):
    raw = read_yaml(ROOT / "params.yaml")
    if "minutes_per_epoch" in over.get("resources", {}):
        raw["resources"].pop("minutes_per_epoch")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(merge(raw, over))


def test_tracking_server_urls_are_accepted():
    for uri in ("http://login1:5000", "https://mlflow.lab.example:443", "sqlite:////shared/mlruns.db"):
        assert paper(tracking={"uri": uri}).tracking.uri == uri


def test_smoke_defaults_are_cpu_only():
    r = load("smoke").resources
    assert (r.threads, r.gpu) == (1, 0)
    assert dataclasses.asdict(load().resources)["gpu"] == 1


def test_a_bad_thread_count_is_a_config_error(env):
    r = run_stage("prepare", "--experiment", "smoke", "--threads", "0", "--dataset", "synthetic", "--out",
                  "/nonexistent/x.pt", env=env)
    assert r.returncode == 2 and "--threads = 0" in r.stderr
