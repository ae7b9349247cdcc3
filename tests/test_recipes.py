"""What every training recipe starts from and the learning rate it trains at, checked against expectations
written by hand from the papers, through the real training loop (pipeline/core/train.py), on a quarter-width
resnet20 and 32 synthetic images (2 optimizer steps per epoch).

- The weights a method's first step trains are the TRAINED dense weights with the mask applied, for every
  one-shot method (Han et al. 2015; Renda et al. 2020 for lr_rewind) and imp's first round; lth's survivors
  are the epoch-k weights of the dense run (Frankle et al. 2020), k = 1 here; gmp starts from the
  initialisation (Zhu & Gupta 2017). The dense weights, the epoch-1 weights and the initialisation all differ
  in every tensor, so each expectation can tell them apart.
- The lr the OPTIMIZER holds (its param_groups, read at every step) equals a hand-written list per method.
- The epoch-k snapshot equals the weights of a run stopped after k epochs; resuming that run ends where the
  uninterrupted run ends (data order and augmentation restored), bit for bit on the CPU.
- Per-epoch validation accuracy, and the final val_acc / test_acc, are computed on their own splits.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.infra import io
from pipeline.stages import common as jobs
from pipeline.core import masks as M, train as T
from pipeline.core.models import prunable

from .test_methods import _NoRun, net, replace, tiny_data
from pipeline.config import loading
from pipeline.methods import base
from pipeline.methods import iterative
from pipeline.methods import registry

S = 0.8
BATCH, N_TRAIN = 16, 32
RT = T.Runtime(torch.device("cpu"), amp=False, channels_last=False, compile=False)
K = 1                                     # lth's rewind epoch: late rewinding, k > 0


# The schedules spelled out: 4 dense epochs at 0.1, x0.1 from epoch 2 (0.5 x 4) and again from epoch 3 (0.75 x 4);
# 4 retraining epochs at 0.01 with the same drops; imp: 2 rounds of 2 epochs, each with the retraining drops
# (0.5 x 2 = epoch 1; 0.75 x 2 = 1.5, rounded half up to 2 = after the round); lth: 2 rounds from dense epoch k;
# lrr: 2 rounds of the whole dense schedule. Rate 0.6 to S = 0.8: two rounds, to 0.6 and 0.8.
CFG = replace(loading.load("smoke"),
              train={"epochs": 4, "lr": 0.1, "lr_drops": [0.5, 0.75], "gamma": 0.1, "batch_size": BATCH,
                     "save_epochs": [0, K]},
              retrain={"epochs": 4, "lr": 0.01, "lr_drops": [0.5, 0.75], "gamma": 0.1},
              imp={"rate": 0.6, "epochs_per_round": 2}, lth={"rate": 0.6, "rewind_epoch": K}, lrr={"rate": 0.6},
              gmp={"start": 0.25, "end": 0.75})

DENSE_LR = [0.1, 0.1, 0.01, 0.001]        # per epoch
RETRAIN_LR = [0.01, 0.01, 0.001, 0.0001]
EXPECTED_LR = {                            # per epoch; every epoch is 2 optimizer steps
    "dense": DENSE_LR, "lr_rewind": DENSE_LR, "gmp": DENSE_LR, "reinit": DENSE_LR,
    **{m: RETRAIN_LR for m in ("finetune", "finetune_layerwise", "random", "kd", "fourier_kd", "fourier_kd_anti",
                                "fourier_kd_shuffled", "fourier_kd_reverse", "freq_ce")},
    "imp": [0.01, 0.001] * 2,
    "lth": [0.1, 0.01, 0.001] * 2,         # dense epochs 1, 2, 3, in each of the 2 rounds
    "lth_init": DENSE_LR * 2,
    "lrr": DENSE_LR * 2,
}


@pytest.fixture(scope="module")
def data() -> T.Data:
    return tiny_data(N_TRAIN, 32, 32)


def differ_everywhere(a: dict, b: dict) -> bool:
    """Every float tensor of two state dicts differs (so equality with one of them identifies it)."""
    return all(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


class Watch:
    """Records, while a recipe runs: the student's whole state at the first loss call of each round (before
    that round's first optimizer step), the masks the begin hooks returned, and the lr in the optimizer's
    param_groups at every optimizer step (torch.optim.SGD.step patched; the loop's own logging not used)."""

    def __init__(self, recipe: T.Recipe, monkeypatch):
        self.starts, self.masks, self.lrs = [], [], []
        self._fresh = True
        for r in recipe.rounds:
            if r.begin is not None:
                r.begin = self._begin(r.begin)
            r.begin = self._round_start(r.begin)
        loss = recipe.loss

        def watched(student, x, y, epoch, norm):
            if self._fresh:
                self.starts.append({k: v.detach().clone() for k, v in student.state_dict().items()})
                self._fresh = False
            return loss(student, x, y, epoch, norm)
        recipe.loss = watched
        step = torch.optim.SGD.step
        lrs = self.lrs

        def recording(opt, *a, **kw):
            lrs.append([g["lr"] for g in opt.param_groups])
            return step(opt, *a, **kw)
        monkeypatch.setattr(torch.optim.SGD, "step", recording)

    def _begin(self, hook):
        def wrapped(model, masks):
            out = hook(model, masks)
            self.masks.append({n: m.clone() for n, m in out.items()})
            return out
        return wrapped

    def _round_start(self, hook):
        def wrapped(model, masks):
            self._fresh = True
            return hook(model, masks) if hook is not None else masks
        return wrapped


_CACHE: dict = {}


@pytest.fixture(scope="module")
def dense(data, tmp_path_factory):
    """The dense stage's recipe, trained: its result, the per-step lrs, and the run stopped after K epochs
    (a log hook raises after the checkpoint of epoch K is written), then resumed."""
    if "dense" in _CACHE:
        return _CACHE["dense"]
    folder = tmp_path_factory.mktemp("dense")
    with pytest.MonkeyPatch.context() as mp:
        recipe = base.dense_recipe(CFG)
        watch = Watch(recipe, mp)
        res = T.run(recipe, net(0), data, RT, seed=0, ckpt=folder / "whole.pt", key="d")

    class Stop(Exception):
        pass

    def stop(step, _):
        if step == K + 1:                 # epoch K+1 trained in memory, not checkpointed: the file holds epoch K
            raise Stop
    with pytest.raises(Stop):
        T.run(base.dense_recipe(CFG), net(0), data, RT, seed=0, ckpt=folder / "stopped.pt", key="d", log=stop)
    stopped = io.load(folder / "stopped.pt", "checkpoint", keys=("epoch", "model"))
    resumed = T.run(base.dense_recipe(CFG), net(0), data, RT, seed=0, ckpt=folder / "stopped.pt", key="d")
    _CACHE["dense"] = {"res": res, "lrs": watch.lrs, "stopped": stopped, "resumed": resumed}
    return _CACHE["dense"]


def context(dense, cfg=CFG) -> base.Context:
    """The trained dense network of the fixture, its global MBP mask at S, its snapshots, itself as teacher."""
    trained = {k: v.clone() for k, v in dense["res"].model.state_dict().items()}
    teacher = net(0)
    teacher.load_state_dict(trained)
    mask = M.global_magnitude({n: trained[n] for n in prunable(net(0))}, S)
    return base.Context(cfg, S, 0, trained, mask, dense["res"].snapshots, teacher, arch="resnet20")


@pytest.fixture(scope="module")
def trained(data, dense, tmp_path_factory):
    folder = tmp_path_factory.mktemp("methods")

    def get(method):
        if method not in _CACHE:
            ctx = context(dense)
            with pytest.MonkeyPatch.context() as mp:
                recipe = registry.METHODS[method](ctx)
                watch = Watch(recipe, mp)
                res = T.run(recipe, net(0), data, RT, seed=0, ckpt=folder / f"{method}.pt", key=method)
            _CACHE[method] = (res, watch, ctx)
        return _CACHE[method]
    return get


def test_the_three_weight_sets_differ_everywhere(dense):
    init, trained = net(0).state_dict(), dense["res"].model.state_dict()
    snap = dense["res"].snapshots[K]
    assert differ_everywhere(init, trained) and differ_everywhere(init, snap) and differ_everywhere(snap, trained)
    assert all(torch.equal(v, init[k]) for k, v in dense["res"].snapshots[0].items())   # epoch 0: the init


# --------------------------------------------------------------------------- where the first step starts

ONE_SHOT = ("finetune", "finetune_layerwise", "random", "kd", "fourier_kd", "fourier_kd_anti", "fourier_kd_shuffled",
            "fourier_kd_reverse", "freq_ce", "lr_rewind")


def masked(state: dict, masks: dict) -> dict:
    """`state` with the pruned weights set to 0 (biases, batch norm and its statistics unchanged)."""
    return {k: v * masks[k] if k in masks else v for k, v in state.items()}


@pytest.mark.parametrize("method", ONE_SHOT + ("imp", "lrr"))
def test_first_step_trains_the_trained_dense_weights_masked(trained, method):
    res, watch, ctx = trained(method)
    first = watch.starts[0]
    assert len(watch.masks) >= 1
    expected = masked(ctx.dense, watch.masks[0])
    assert set(first) == set(expected)
    for k, v in expected.items():
        assert torch.equal(first[k], v), k
    if method not in ("finetune_layerwise", "random", "imp", "lrr"):
        assert all(torch.equal(watch.masks[0][n], ctx.mask[n]) for n in ctx.mask)   # the MBP mask itself


@pytest.mark.parametrize("method,k", [("lth", K), ("lth_init", 0)])
def test_lottery_rounds_start_from_the_epoch_k_weights(trained, dense, method, k):
    res, watch, ctx = trained(method)
    rewind = dense["res"].snapshots[k]
    assert len(watch.starts) == 2 == len(watch.masks)
    for start, masks in zip(watch.starts, watch.masks):        # every round rewinds the survivors to epoch k
        expected = masked(rewind, masks)
        assert all(torch.equal(start[n], v) for n, v in expected.items())
    # the first round's mask: global magnitude of the TRAINED weights, to the first round's target
    first = M.global_magnitude({n: ctx.dense[n] for n in ctx.mask}, 0.6)
    assert all(torch.equal(watch.masks[0][n], m) for n, m in first.items())


def test_gmp_starts_from_the_initialisation(trained):
    res, watch, _ = trained("gmp")
    init = net(0).state_dict()
    assert iterative.gmp_epochs(4, 0.25, 0.75) == (1, 3)              # epoch 0 trains dense: nothing pruned yet
    assert all(torch.equal(watch.starts[0][k], v) for k, v in init.items())


def test_the_epoch_k_snapshot_is_a_run_stopped_after_k_epochs(dense):
    stopped = dense["stopped"]
    assert stopped["epoch"] == K
    snap = dense["res"].snapshots[K]
    assert set(snap) == set(stopped["model"]) and all(torch.equal(snap[k], v) for k, v in stopped["model"].items())


def test_a_stopped_run_resumes_to_the_uninterrupted_result(dense):
    a, b = dense["res"], dense["resumed"]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.history == b.history


def test_load_snapshots_refuses_a_file_without_the_rewind_epoch(dense, tmp_path):
    path = tmp_path / "snapshots.pt"
    io.save({"kind": "snapshots", "job": "j", "snapshots": {0: dense["res"].snapshots[0]}}, path)
    assert jobs.load_snapshots(CFG, path, "lth_init", {"job": "j"}).keys() == {0}
    with pytest.raises(io.CorruptFile, match=f"no weights saved at epoch {K}"):
        jobs.load_snapshots(CFG, path, "lth", {"job": "j"})


# ---------------------------------------------------------------------------- the optimizer's lr, per step


def check_lrs(recorded, lrs_per_epoch):
    """One lr per step, the same in every param group, equal to the hand-written epoch's lr."""
    assert all(len(set(groups)) == 1 for groups in recorded)
    expected = [lr for lr in lrs_per_epoch for _ in range(N_TRAIN // BATCH)]
    assert [groups[0] for groups in recorded] == pytest.approx(expected, rel=1e-12)


def test_dense_stage_optimizer_lr_at_every_step(dense):
    check_lrs(dense["lrs"], EXPECTED_LR["dense"])


@pytest.mark.parametrize("method", sorted(registry.METHODS))
def test_optimizer_lr_at_every_step(trained, method):
    check_lrs(trained(method)[1].lrs, EXPECTED_LR[method])


# ------------------------------------------------------------------------- validation vs test accuracy


def by_hand(model, data, split) -> float:
    x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
    model.eval()
    with torch.no_grad():
        pred = model(data.normalize(x.float() / 255)).argmax(1)
    return (pred == y).float().mean().item()


def test_val_acc_is_measured_on_the_validation_split_and_test_acc_once_on_the_test_split(dense, data, tmp_path):
    res = dense["res"]
    val, test = by_hand(res.model, data, "val"), by_hand(res.model, data, "test")
    assert val != test, "the two splits must score differently for this test to tell them apart"
    assert res.history[-1]["val_acc"] == val
    out = tmp_path / "dense" / "model.pt"
    jobs.finish(CFG, _NoRun(), res, data, RT, str(out), "resnet20", "k")
    m = io.read_json(out.with_name("metrics.json"))
    assert (m["val_acc"], m["test_acc"]) == (val, test)
