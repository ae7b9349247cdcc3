"""MLflow runs read well without instructions: names start with method and cell; tags carry the params
digest, commit and invocation; a rerun of a job supersedes its older runs; the experiment says how to compare."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from pipeline import colors
from pipeline.config import load
from pipeline.tracking import COMPARE_FILTER, Run, run_name

CELL = {"dataset": "synthetic", "arch": "resnet20", "seed": 0, "sparsity": 0.9}


def test_run_names_start_with_method_and_cell():
    assert run_name({"stage": "retrain", **{k: str(v) for k, v in CELL.items()}, "method": "fourier_kd"}) == \
        "fourier_kd s0.9 seed0 | retrain synthetic/resnet20"
    assert run_name({"stage": "train_dense", "dataset": "c", "arch": "a", "seed": "1", "sparsity": "0.0",
                     "method": "dense"}) == "dense seed1 | train_dense c/a"
    assert run_name({"stage": "report"}) == "report"


def test_tags_digest_and_superseded_reruns(env):
    cfg = load("smoke")
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    ids = []
    for params in ({"T": 4.0}, {"T": 4.0}, {"T": 3.0}):
        with Run(cfg, "retrain", {**CELL, "method": "kd"}, params) as r:
            ids.append(r.run_id)
    with Run(cfg, "retrain", {**CELL, "method": "finetune"}, {}) as other:
        pass
    runs = {i: client.get_run(i).data.tags for i in ids}
    digests = [runs[i]["params_digest"] for i in ids]
    assert digests[0] == digests[1] != digests[2]                 # same job and params: same digest
    assert [runs[i]["superseded"] for i in ids] == ["true", "true", "false"]
    assert [runs[i].get("superseded_by") for i in ids] == [ids[1], ids[2], None]
    assert runs[ids[2]]["invocation"] == "manual" and runs[ids[2]]["mlflow.runColor"] == colors.color("kd")
    assert client.get_run(other.run_id).data.tags["superseded"] == "false"   # another job is left alone
    exp = client.get_experiment_by_name("smoke")
    assert COMPARE_FILTER in exp.tags["mlflow.note.content"]
    current = client.search_runs([exp.experiment_id], COMPARE_FILTER)
    assert sorted(r.info.run_id for r in current) == sorted([ids[2], other.run_id])
