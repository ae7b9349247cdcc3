"""`python -m pipeline plan`: jobs from the Snakefile, epochs per method as the recipes run them, images per
job, and device-hours from a measured img/s file, checked against counts written out by hand."""
from __future__ import annotations

import json

import pytest

from pipeline.planning import budget
from pipeline.planning import plan as P

from .conftest import run_stage
from pipeline.config import loading

# A hand-made measurement (img/s per arch and kind of step), as benchmarks/gpu_check.py writes it.
RATES = {"resnet20": {"dense": 1024, "masked": 2048, "kd": 512, "fourier_kd": 256, "eval": 8192}}


def test_heatmap_pairs_is_the_count_of_conjugate_pairs():
    # 32 x 32 centred frequencies: 4 are their own conjugate ((0,0), (0,16), (16,0), (16,16)), the other
    # 1,020 pair up: 4 + 510 = 514 evaluations.
    assert budget.heatmap_pairs(32) == 514
    assert budget.heatmap_pairs(4) == 4 + (16 - 4) // 2


def test_epochs_per_method_follow_the_recipes():
    cfg = loading.load("smoke")        # retrain 2 epochs, full band at 0.5, imp/lth/lrr 2 rounds (rate 0.7 to 0.9), dense 2
    assert budget.method_epochs(cfg, "finetune") == [("masked", 2)]
    assert budget.method_epochs(cfg, "kd") == [("kd", 2)]
    assert budget.method_epochs(cfg, "fourier_kd") == [("fourier_kd", 1), ("kd", 1)]
    assert budget.method_epochs(cfg, "imp") == [("masked", 2)]
    assert budget.method_epochs(cfg, "lth") == [("masked", 2 * (2 - cfg.lth.rewind_epoch))]
    assert budget.method_epochs(cfg, "gmp") == [("masked", 2)]
    assert budget.method_epochs(cfg, "lrr") == [("masked", 2 * 2)] and budget.method_epochs(cfg, "reinit") == [("masked", 2)]
    paper = loading.load(None)         # 160 dense epochs, 40 retraining, full band at 0.7 -> epoch ceil(28) = 28
    assert budget.method_epochs(paper, "fourier_kd") == [("fourier_kd", 28), ("kd", 12)]
    # rate 0.2: 18 rounds to 0.98 alone; the chain through the 5 sparsities 22 (tests/test_chains.py)
    assert budget.method_epochs(paper, "imp") == [("masked", 18 * 40)]
    assert budget.method_epochs(paper, "imp", paper.grid.sparsities) == [("masked", 22 * 40)]
    assert budget.method_epochs(paper, "lth", paper.grid.sparsities) == [("masked", 22 * 157)]
    assert budget.method_epochs(paper, "lrr", paper.grid.sparsities) == [("masked", 22 * 160)]
    assert budget.method_epochs(paper, "reinit") == [("masked", 160)]
    assert budget.method_epochs(paper, "lr_rewind") == [("masked", 160)]
    for m in paper.grid.methods:             # every method the grid may name has a cost model
        assert sum(e for _, e in budget.method_epochs(paper, m)) > 0
    with pytest.raises(KeyError, match="magic"):
        budget.method_epochs(paper, "magic")


def test_epochs_of_the_curriculum_controls():
    """anti and shuffled filter as many epochs as fourier_kd (the same radii in another order); freq_ce makes
    fourier_kd's two student passes (priced as that step, an upper bound: no teacher) and one CE pass at the
    full band; with distill.filtered = teacher the student runs once: kd steps throughout."""
    import dataclasses
    paper = loading.load(None)
    for m in ("fourier_kd_anti", "fourier_kd_shuffled", "fourier_kd_reverse"):
        assert budget.method_epochs(paper, m) == [("fourier_kd", 28), ("kd", 12)]
    assert budget.method_epochs(paper, "freq_ce") == [("fourier_kd", 28), ("masked", 12)]
    teacher_only = dataclasses.replace(paper, distill=dataclasses.replace(paper.distill, filtered="teacher"))
    assert budget.method_epochs(teacher_only, "fourier_kd_anti") == [("kd", 40)]
    assert budget.method_epochs(teacher_only, "freq_ce") == [("fourier_kd", 28), ("masked", 12)]


def test_split_sizes():
    assert budget.split_sizes(loading.load("smoke"), "synthetic") == (1152 - 128, 256)
    assert budget.split_sizes(loading.load(None), "cifar10") == (45000, 10000)


def test_estimate_counts_images_and_hours_per_job():
    cfg = loading.load("smoke")
    rows = P.estimate(cfg, "smoke", {"img_per_s": RATES})
    per_epoch = 1024                                          # 1152 synthetic images - 128 held out
    assert rows["dense"]["images"] == 2 * per_epoch and rows["dense"]["seconds"] == pytest.approx(2.0)
    assert rows["finetune"]["images"] == 2 * per_epoch and rows["finetune"]["seconds"] == pytest.approx(1.0)
    # one epoch of the two-pass step at radius 4, then one plain kd epoch at the full band
    assert rows["fourier_kd"]["seconds"] == pytest.approx(1024 / 256 + 1024 / 512)
    lth_epochs = 2 * (2 - cfg.lth.rewind_epoch)
    assert rows["lth"]["epochs"] == lth_epochs and rows["lth"]["seconds"] == pytest.approx(lth_epochs * 1024 / 2048)
    # spectral: 8 bands (7 radii + full) x low/high x 256 test images (x2 with the teacher) + 16 x 514 heat map
    spec = rows["spectral"]
    no_teacher, with_teacher = 2 * 8 * 256 + 16 * 514, 2 * 8 * 256 * 2 + 16 * 514
    # the pruning signature (one job): teacher + 6 variants' bands, the heat map, recalibration on
    # min(20 x 512, 1024) = 1024 images 2 + 15 times (12 steps + 3), full-band passes 2 x 15 x 256
    signature = 7 * 2 * 8 * 256 + 16 * 514 + 17 * 1024 + 2 * 15 * 256
    assert budget.signature_images(cfg, 1024, 256) == signature == 61984
    n_with = spec["jobs"] - 2                                  # the dense model's job has no teacher
    assert spec["images"] == no_teacher + n_with * with_teacher + signature
    assert spec["seconds"] == pytest.approx(spec["images"] / 8192)
    assert all(not r["missing"] for r in rows.values())


def test_plan_cli_prints_rows_and_says_what_is_not_measured(tmp_path, env):
    partial = tmp_path / "throughput-test.json"
    partial.write_text(json.dumps({"device": "Test card", "date": "2026-11-27", "batch": 32, "width": 0.25,
                                   "img_per_s": {"resnet20": {"dense": 1024}}}))
    p = run_stage("plan", "--experiment", "smoke", "--throughput", partial, env=env)
    assert p.returncode == 0, p.stderr
    assert "measured on Test card" in p.stdout
    dense = next(line for line in p.stdout.splitlines() if line.startswith("dense "))
    assert dense.split()[1:5] == ["1", "2", "0.002", "0.001"]       # 1 job, 2 epochs, 2,048 images, 2 s
    assert "no measurement for resnet20/masked" in p.stdout
    total = p.stdout.strip().splitlines()[-1]
    assert total.startswith("total: unknown: no measurement for the rows ") and "finetune" in total
    assert "dense," not in total and "(the measured rows alone: 0.001 device-hours)" in total
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    p = run_stage("plan", "--experiment", "smoke", "--throughput", bad, env=env)
    assert p.returncode == 3 and "bad.json" in p.stderr


def test_plan_without_a_measurement_says_unknown_not_zero():
    out = P.plan(loading.load("smoke"), "smoke", None)
    assert "0.000" not in out and "no throughput file" in out
    total = out.strip().splitlines()[-1]
    assert total.startswith("total: unknown: no measurement for the rows ") and "measured rows alone" not in total
    assert all(f" {row}" in total for row in ("dense", "finetune", "spectral")) and "gpu_check" in total


def test_a_measurement_at_another_width_or_batch_prices_nothing_and_says_so():
    cfg = loading.load("smoke")                                        # width 0.25, batch 32
    other = {"device": "Test card", "batch": 128, "width": 1.0, "img_per_s": RATES}
    rows = P.estimate(cfg, "smoke", other)
    assert all(r["missing"] for r in rows.values() if r["images"])
    out = P.plan(cfg, "smoke", other)
    assert "measured at width 1.0, batch 128; this experiment trains width 0.25, batch 32" in out
    assert "gpu_check --experiment smoke" in out and out.strip().splitlines()[-1].startswith("total: unknown")


def test_a_cpu_measurement_prices_the_wall_time_by_jobs_at_once():
    cfg = loading.load("smoke")
    cpu = {"device": "CPU AMD EPYC", "batch": 32, "width": 0.25, "threads": 1, "img_per_s": RATES}
    seconds = sum(r["seconds"] for r in P.estimate(cfg, "smoke", cpu).values())
    out = P.plan(cfg, "smoke", cpu)
    assert f"total: {seconds / 3600:.3f} device-hours" in out
    assert f"runs C/1 jobs at once: about {seconds / 3600:.3f} / C hours of wall time" in out
