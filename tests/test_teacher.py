"""The dense teacher of a distillation job (Hinton et al. 2015: a fixed network) stays fixed through a whole
retrain job: eval mode in every module at every training step, no parameter that requires or holds a
gradient, and its weights and batch-norm running statistics exactly those of the dense model file. The stages
run in this process (their MLflow run replaced by a stub: tracking is tested elsewhere) on a tiny synthetic
experiment."""
from __future__ import annotations

import pytest
import torch

from pipeline.stages import common as jobs

from .conftest import write_experiment
from pipeline.config import loading
from pipeline.methods import registry
from pipeline.stages import prepare as prepare_stage
from pipeline.stages import prune as prune_stage
from pipeline.stages import training


class _Run:
    """Stands in for tracking.Run in the stages."""
    run_id = None

    def __init__(self, *a, **k): pass
    def __enter__(self): return self
    def __exit__(self, *a): return False
    def log_metrics(self, *a, **k): pass
    def log_artifact(self, *a, **k): pass
    def set_tags(self, *a, **k): pass


@pytest.mark.parametrize("method", ["kd", "fourier_kd"])
def test_the_teacher_is_frozen_through_a_retrain_job(method, tmp_path, env, monkeypatch):
    exp = write_experiment(tmp_path, name="teacher", datasets={"synthetic": {
        "source": "synthetic", "classes": 4, "train_size": 96, "val_size": 32, "test_size": 32}},
        train={"epochs": 1, "save_epochs": [0]}, retrain={"epochs": 2}, lth={"rewind_epoch": 0})
    cfg = loading.load(exp)
    for module in (prepare_stage, prune_stage, training, jobs):
        monkeypatch.setattr(module, "Run", _Run, raising=False)
    f = {k: tmp_path / v for k, v in (("data", "data.pt"), ("dense", "dense/model.pt"), ("mask", "prune/mask.pt"),
                                      ("out", f"retrain/{method}/model.pt"))}
    prepare_stage.prepare(cfg, "synthetic", f["data"])
    training.train_dense(cfg, "synthetic", "resnet20", 0, f["data"], f["dense"])
    prune_stage.prune(cfg, "synthetic", "resnet20", 0, 0.9, f["dense"], f["mask"])
    seen = {"calls": []}
    build = registry.METHODS[method]

    def capture(ctx):
        seen["teacher"] = t = ctx.teacher
        # at every teacher forward during training: is any module in training mode, does any weight want grads
        t.register_forward_pre_hook(lambda mod, args: seen["calls"].append(
            (any(m.training for m in mod.modules()), any(p.requires_grad for p in mod.parameters()))))
        return build(ctx)
    monkeypatch.setitem(registry.METHODS, method, capture)
    training.retrain(cfg, "synthetic", "resnet20", 0, 0.9, method, f["data"], f["dense"],
                   f["dense"].with_name("snapshots.pt"), f["mask"], f["out"])
    assert f["out"].exists()
    teacher = seen["teacher"]
    steps = cfg.retrain.epochs * (96 - 32) // cfg.train.batch_size
    assert seen["calls"][:steps] == [(False, False)] * steps     # during training (later calls: agreement)
    assert not any(m.training for m in teacher.modules())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    saved, _ = jobs.load_model(f["dense"])
    after = teacher.state_dict()
    bn_stats = [k for k in after if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(bn_stats) == 3 * 19                    # resnet20: 19 batch-norm layers
    for k, v in saved.state_dict().items():           # weights and batch-norm statistics: exactly the file's
        assert torch.equal(after[k].cpu(), v), k
