"""The GPU turn rehearsed on the CPU (benchmarks/gpu_turn.py, configs/cifar10_gpu.yaml at a tiny size), so
that the first minute on a lent GPU is not the turn's first try; and the driver's parallel jobs and deadline.

The rehearsal: `pack` here (a full installation) -> a second copy holding only what travels (the tracked
sources and turn/), where MLflow, Snakemake and DVC cannot be imported and the images are not on disk ->
`run` twice there (the first stopped by its deadline before any job, the second resuming: the two commands a
lent machine gets), the device check under the CUDA-graph emulation -> the returned parts obey the device
tool's limits -> `land` here: the data prepared again and checked, the runs synced into MLflow, Snakemake
taking every output as done, the report published.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config.layout import ROOT

from .conftest import copy_env, project_copy

ABSENT = Path(__file__).parent / "absent"
NAME = "turn_rehearsal"


def _rehearsal_config() -> str:
    """configs/cifar10_gpu.yaml, every method and rule of it, at a size the CPU runs in a minute or two."""
    cfg = yaml.safe_load((ROOT / "configs" / "cifar10_gpu.yaml").read_text())
    cfg["name"] = NAME
    cfg["datasets"]["cifar10_jpeg"].update(train_size=100, val_size=20, test_size=40)
    cfg["grid"]["seeds"] = [0]
    cfg["model"]["width"] = 0.25
    cfg["train"].update(epochs=2, batch_size=32)
    cfg["retrain"]["epochs"] = 2
    cfg["distill"]["full_band_at"] = 0.5          # with 2 epochs (as configs/smoke.yaml)
    cfg["spectral"].update(batch_size=512, heatmap_images=4)
    cfg["runtime"] = {"threads": 1}
    cfg["resources"] = {"threads": 1, "gpu": 0, "mem_mb": 2000, "light_mem_mb": 2000}
    return yaml.safe_dump(cfg, sort_keys=False)


def _images(folder: Path, per_class: dict[str, int]) -> Path:
    """A tiny ImageFolder tree of JPEGs (10 classes, each a colour plus noise)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c in range(10):
            d = folder / split / f"class{c}"
            d.mkdir(parents=True)
            for k in range(n):
                x = np.clip(rng.normal(25 * c, 40, (32, 32, 3)), 0, 255).astype("uint8")
                Image.fromarray(x).save(d / f"{k}.jpg", quality=75)
    return folder


def _run(cmd, cwd, env, ok=True, timeout=900):
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if ok is True:
        assert p.returncode == 0, f"{' '.join(map(str, cmd))}: {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def _copy(dest: Path) -> Path:
    repo = project_copy(dest)
    (repo / "configs" / f"{NAME}.yaml").write_text(_rehearsal_config())
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)       # pack counts what would travel with git
    return repo


def test_the_gpu_turn_rehearsed_on_the_cpu(tmp_path):
    images = _images(tmp_path / "images", {"train": 12, "test": 4})
    here = _copy(tmp_path / "here")
    env = {**copy_env(here), "CIFAR10_JPEG_DIR": str(images), "MLFLOW_TRACKING_URI": f"sqlite:///{here / 'mlruns.db'}"}
    p = _run([sys.executable, "-m", "benchmarks.gpu_turn", "pack", "--experiment", NAME], here, env)
    assert "packed 160 images" in p.stdout and "MiB would travel" in p.stdout, p.stdout

    # the GPU machine: the tracked sources and the carried turn/ only; no stack, no images on disk
    device = _copy(tmp_path / "device")
    shutil.copytree(here / "turn", device / "turn")
    bare = {**copy_env(device), "PYTHONPATH": f"{ABSENT}:{device}"}
    bare.pop("CIFAR10_JPEG_DIR", None)
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    turn = [sys.executable, "-m", "benchmarks.gpu_turn", "run", "--experiment", NAME, "--quick", "--emulate",
            "--jobs", "2"]
    first = _run(turn + ["--out", out1, "--until", "0"], device, bare, ok=False)
    assert first.returncode == 75, first.stdout[-3000:] + first.stderr[-3000:]
    assert "device check: exit status 0" in first.stdout and "stopped at the deadline" in first.stdout
    second = _run(turn + ["--out", out2], device, bare)
    assert "device check" not in second.stdout                     # passed on this machine already
    assert "drive: exit status 0" in second.stdout, second.stdout
    assert not (device / "mlruns.db").exists()                     # nothing tried to reach a store

    # what comes back: at most 8 files of 16 MiB, plain names, no prepared data
    back = sorted(out2.iterdir())
    assert 0 < len(back) <= 8 and all(f.stat().st_size <= 16 * 2 ** 20 for f in back)
    assert all(f.name.replace(".", "").replace("_", "").replace("-", "").isalnum() for f in back)

    # here: images that are not the GPU machine's are refused before anything is synced
    other = _images(tmp_path / "other", {"train": 13, "test": 4})
    p = _run([sys.executable, "-m", "benchmarks.gpu_turn", "land", "--experiment", NAME, "--parts", out2], here,
             {**env, "CIFAR10_JPEG_DIR": str(other)}, ok=False)
    assert p.returncode != 0 and "the images or their decoding differ" in p.stderr, p.stderr[-2000:]
    assert not (here / "mlruns.db").exists()
    p = _run([sys.executable, "-m", "benchmarks.gpu_turn", "land", "--experiment", NAME, "--parts", out2], here, env)
    jobs = json.loads((here / "runs" / NAME / "jobs.json").read_text())["jobs"]
    runs = len(jobs) + sum(j["rule"] == "chain" for j in jobs)      # one run a job, and one a chain's level
    assert f"synced {runs} offline run(s) of {NAME}" in p.stdout, p.stdout[-3000:]
    published = here / "results" / NAME
    summary = (published / "summary.csv").read_text()
    for method in ("dense", "finetune", "kd", "fourier_kd", "random", "lr_rewind", "lrr"):
        assert f",{method}," in summary, method
    readme = (published / "README.md").read_text()
    assert "### Learning curves and convergence" in readme and "Dense models: **" in readme
    assert (published / "figures" / "learning_curves_cifar10_jpeg_resnet20_s0.9.png").is_file()
    assert len((published / "curves.csv").read_text().splitlines()) > 1 + 7      # every model, every epoch
    p = _run(["snakemake", "-n", "--cores", "1", "--configfile", f"configs/{NAME}.yaml"], here, env)
    assert "Nothing to be done" in p.stdout + p.stderr, (p.stdout + p.stderr)[-2000:]


# ------------------------------------------------------------------------- the driver, without torch


def _jobs(repo: Path, jobs: list[dict]) -> None:
    from pipeline.infra import io
    io.write_json(repo / "runs" / "t" / "jobs.json", {"experiment": "t", "jobs": jobs})   # checksummed, as export


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A minimal project (the package, params.yaml, an experiment t) whose runs/t/jobs.json the tests write:
    shell commands, no torch. Not project_copy: the mutation check's copies hold no Snakefile."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    (repo / "configs").mkdir()
    (repo / "configs" / "t.yaml").write_text("name: t\n")
    monkeypatch.chdir(repo)
    return repo


def _drive(repo, *args, ok=None):
    return _run([sys.executable, "-m", "pipeline", "drive", "--experiment", "t", *args], repo, copy_env(repo),
                ok=ok if ok is not None else True, timeout=120)


def test_the_driver_runs_independent_jobs_at_once_and_each_after_its_inputs(tiny):
    # a (1 s) and b (2 s) are independent; c needs both. Each job stamps its start and its end.
    stamp = "python -c \"import time, sys; open(sys.argv[1], 'w').write(repr(time.time()))\""

    def job(name, secs, deps=()):
        return {"rule": name, "cmd": f"{stamp} runs/t/{name}.start && sleep {secs} && {stamp} runs/t/{name}",
                "deps": [f"runs/t/{d}" for d in deps], "outs": [f"runs/t/{name}"]}
    _jobs(tiny, [job("a", 1), job("b", 2), job("c", 0, deps=("a", "b"))])
    p = _drive(tiny, "--jobs", "2")
    assert "0 of 3 jobs done, 3 to run" in p.stdout
    t = {k: float((tiny / "runs" / "t" / k).read_text()) for k in ("a", "b", "c", "a.start", "b.start", "c.start")}
    assert t["b.start"] < t["a"] and t["a.start"] < t["b"]   # at once: each started before the other ended
    assert t["c.start"] >= t["b"]                            # after its slower input, not when a slot freed
    assert "3 of 3 jobs done, 0 to run" in _drive(tiny, "--jobs", "2").stdout


def test_the_driver_stops_at_its_deadline_and_resumes(tiny):
    _jobs(tiny, [
        {"rule": "a", "cmd": "touch runs/t/a", "deps": [], "outs": ["runs/t/a"]},
        {"rule": "slow", "cmd": "sleep 30 && touch runs/t/slow", "deps": ["runs/t/a"], "outs": ["runs/t/slow"]},
    ])
    p = _drive(tiny, "--until", "2", ok=False)
    assert p.returncode == 75 and "stopped at the deadline" in p.stdout, p.stdout + p.stderr
    assert (tiny / "runs" / "t" / "a").exists() and not (tiny / "runs" / "t" / "slow").exists()
    _jobs(tiny, [
        {"rule": "a", "cmd": "touch runs/t/a", "deps": [], "outs": ["runs/t/a"]},
        {"rule": "slow", "cmd": "touch runs/t/slow", "deps": ["runs/t/a"], "outs": ["runs/t/slow"]},
    ])
    p = _drive(tiny)
    assert "1 of 2 jobs done, 1 to run" in p.stdout and (tiny / "runs" / "t" / "slow").exists()


def test_a_failed_job_stops_new_starts_and_the_drive_reports_its_status(tiny):
    _jobs(tiny, [
        {"rule": "bad", "cmd": "exit 7", "deps": [], "outs": ["runs/t/bad"]},
        {"rule": "next", "cmd": "touch runs/t/next", "deps": [], "outs": ["runs/t/next"]},
    ])
    p = _drive(tiny, ok=False)
    assert p.returncode == 7 and "bad failed (exit status 7)" in p.stdout
    assert not (tiny / "runs" / "t" / "next").exists()
