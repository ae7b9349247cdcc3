"""Sharing what was computed through a DVC remote, end to end, as the README's commands run it (slow).

A folder is the remote (any DVC remote works the same way). Clone A runs a tiny DAG (8 jobs), adopts it into
DVC, pushes and commits dvc.lock; clone B (a git clone of A) pulls everything and neither Snakemake nor DVC
finds anything to run; clone C pulls only the data and the dense teachers, and Snakemake runs pruning and
everything after it, reading the pulled teacher (its embedded checksum verified) to the same bits as A.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.infra import io

from .conftest import copy_env, make, project_copy, write_experiment
from .test_e2e import sh

pytestmark = pytest.mark.slow

GIT = "git -c user.name=t -c user.email=t@localhost"
EXP = "share"
RUNS = f"runs/{EXP}"
CELL = "synthetic/resnet20/seed0"


def _planned(repo: Path, env: dict) -> dict:
    out = sh(f"snakemake -n --cores 1 --configfile configs/{EXP}.yaml", repo, env)
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    return dict(re.findall(r"^(\w+)\s+(\d+)$", text.split("Job stats:")[1], re.M))


def _clone(src: Path, dst: Path, remote: Path) -> tuple[Path, dict]:
    env = copy_env(dst)
    sh(f"git clone -q {src} {dst}", dst.parent, env)
    sh(f"dvc remote add -d --local shared {remote}", dst, env)     # each clone's own setting; none committed
    return dst, env


def test_a_shared_run_is_pulled_whole_or_teachers_only(tmp_path):
    remote = tmp_path / "remote"
    a = project_copy(tmp_path / "A")
    env = copy_env(a)
    write_experiment(a / "configs", name=EXP, grid={"methods": ["finetune"]}, spectral={"heatmap_images": 2},
                     datasets={"synthetic": {"source": "synthetic", "classes": 10, "train_size": 160,
                                             "val_size": 32, "test_size": 32}})
    sh(f"python -m pipeline export_dvc --experiment {EXP} > dvc.yaml", a, env)
    sh(f"git init -q && git add -A && {GIT} commit -qm project", a, env)
    sh(f"snakemake --cores 2 --configfile configs/{EXP}.yaml", a, env)
    sh(make(f"dvc-adopt EXPERIMENT={EXP}", a), a, env)
    sh(f"dvc remote add -d --local shared {remote}", a, env)
    sh(make("push", a), a, env)
    assert not sh("git status --porcelain .dvc", a, env).stdout.strip(), "a remote was written to the committed config"
    sh(f"git add dvc.lock && {GIT} commit -qm 'share the run'", a, env)
    # MLflow: the retrained model's run names its file in DVC's cache (dvc.lock's md5) and its embedded sha256
    from mlflow.tracking import MlflowClient
    lock = yaml.safe_load((a / "dvc.lock").read_text())
    model = f"{RUNS}/retrain/{CELL}/s0.9/finetune/model.pt"
    md5 = next(o["md5"] for s in lock["stages"].values() for o in s.get("outs", []) if o["path"] == model)
    client = MlflowClient(f"sqlite:///{a / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(EXP).experiment_id], "tags.stage = 'retrain'")
    assert run.data.tags["model_md5"] == md5 and (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()
    assert run.data.tags["model_sha256"] == io.content_sha256(io.load(a / model, "model"))

    # B: everything pulled, nothing to run in either tool
    b, env_b = _clone(a, tmp_path / "B", remote)
    assert not (b / RUNS).exists()
    sh(make(f"pull EXPERIMENT={EXP}", b), b, env_b)
    assert _planned(b, env_b) == {}
    assert "Running stage" not in sh("dvc repro", b, env_b).stdout
    for f in (model, f"{RUNS}/dense/{CELL}/model.pt", f"{RUNS}/report/summary.csv"):
        assert (b / f).read_bytes() == (a / f).read_bytes(), f
    # the pulled report carries its manifest (a DVC output with it): a hand-run report may rewrite it
    sh(f"python -m pipeline report --experiment {EXP}", b, env_b)

    # C: the data and the teachers only; Snakemake runs pruning and everything after it
    c, env_c = _clone(a, tmp_path / "C", remote)
    sh(make(f"pull-teachers EXPERIMENT={EXP}", c), c, env_c)
    assert (c / f"{RUNS}/dense/{CELL}/snapshots.pt").is_file() and not (c / f"{RUNS}/retrain").exists()
    assert _planned(c, env_c) == {"prune": "1", "retrain": "1", "spectral_dense": "1", "spectral_pruned": "1",
                                  "spectral": "1", "report": "1", "all": "1", "total": "7"}
    sh(f"snakemake --cores 2 --configfile configs/{EXP}.yaml", c, env_c)
    assert io.content_sha256(io.load(c / model, "model")) == io.content_sha256(io.load(a / model, "model"))   # the same bits
