"""Retraining methods (pipeline/methods/) run through the real training loop (pipeline/core/train.py) on a
quarter-width resnet20 and 64 synthetic images: exact sparsity, masks held after every step, rounds, rewinding,
the GMP schedule, the random control, the lr schedule, and what the distillation losses feed where."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pipeline.core import data as D, frequency as fq, masks as M, models, train as T
from pipeline.infra import io
from pipeline.stages import common as jobs
from pipeline.core.models import prunable
from pipeline.config import catalog
from pipeline.config import loading
from pipeline import errors
from pipeline.methods import base
from pipeline.methods import distill
from pipeline.methods import iterative
from pipeline.methods import registry

S = 0.9                                   # target sparsity
BATCH, N_TRAIN = 32, 64                   # 2 optimizer steps per epoch
RT = T.Runtime(torch.device("cpu"), amp=False, channels_last=False, compile=False)


def replace(cfg, **sections):
    """cfg with some fields of some sections replaced: replace(cfg, train={"epochs": 3})."""
    return dataclasses.replace(cfg, **{k: dataclasses.replace(getattr(cfg, k), **v) for k, v in sections.items()})


# Small everything: 1 dense epoch (lth rounds, lr_rewind), 2 retraining epochs, 2 rounds of 1 epoch for imp
# (rate 0.7 to S = 0.9: 0.7, then 0.9).
CFG = replace(loading.load("smoke"), train={"epochs": 1, "batch_size": BATCH}, retrain={"epochs": 2},
              imp={"rate": 0.7, "epochs_per_round": 1}, lth={"rate": 0.7, "rewind_epoch": 0}, lrr={"rate": 0.7},
              gmp={"start": 0.1, "end": 0.6})
GMP_CFG = replace(CFG, train={"epochs": 3})        # gmp_epochs(3, 0.1, 0.6) = (0, 2): start, middle, end


def net(seed=0):
    return models.build("resnet20", classes=4, width=0.25, seed=seed)


def tiny_data(train: int, val: int, test: int) -> T.Data:
    """4 synthetic classes: train and val images from one draw, test images from another."""
    tx, ty = D.synthetic(4, train + val, seed=1)
    ex, ey = D.synthetic(4, test, seed=2)
    return T.Data({"train_x": tx[:train], "train_y": ty[:train], "val_x": tx[train:], "val_y": ty[train:],
                   "test_x": ex, "test_y": ey, "classes": ["a", "b", "c", "d"]}, "cpu")


@pytest.fixture(scope="module")
def data() -> T.Data:
    return tiny_data(N_TRAIN, 16, 16)


def context(cfg=CFG) -> base.Context:
    """The dense network ('trained' = seed 1), its global MBP mask at S, the initialisation (seed 0) saved at
    epoch 0, and the dense network as teacher (frozen, eval mode, as the retrain stage sets it)."""
    dense = {k: v.clone() for k, v in net(seed=1).state_dict().items()}
    teacher = net(seed=1).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    mask = M.global_magnitude(prunable(net(seed=1)), S)
    return base.Context(cfg, S, 0, dense, mask, {0: net(seed=0).state_dict()}, teacher, arch="resnet20")


def instrument(recipe: T.Recipe) -> dict:
    """Watch a recipe while it runs: the masks in force (returned by the begin / epoch hooks), and at every
    loss call (= after the previous optimizer step) the number of pruned weights that are not exactly 0."""
    log = {"masks": None, "steps": 0, "unmasked_steps": 0, "violations": 0, "epoch_masks": []}

    def watch(hook, epoch_hook=False):
        def wrapped(*args):
            log["masks"] = hook(*args)
            if epoch_hook:
                log["epoch_masks"].append({n: m.clone() for n, m in log["masks"].items()})
            return log["masks"]
        return wrapped
    for r in recipe.rounds:
        if r.begin is not None:
            r.begin = watch(r.begin)
    if recipe.epoch_hook is not None:
        recipe.epoch_hook = watch(recipe.epoch_hook, epoch_hook=True)
    loss = recipe.loss

    def checked(student, x, y, epoch, norm):
        log["steps"] += 1
        if log["masks"] is None:
            log["unmasked_steps"] += 1
        else:
            w = prunable(student)
            log["violations"] += sum(int((w[n].detach()[~m] != 0).sum()) for n, m in log["masks"].items())
        return loss(student, x, y, epoch, norm)
    recipe.loss = checked
    return log


_RUNS: dict = {}


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Run a method once (cached for the module): (result of train.run, watch log, context)."""
    folder = tmp_path_factory.mktemp("ckpt")

    def get(method):
        if method not in _RUNS:
            ctx = context(GMP_CFG if method == "gmp" else CFG)
            recipe = registry.METHODS[method](ctx)
            log = instrument(recipe)
            res = T.run(recipe, net(seed=0), data, RT, seed=0, ckpt=folder / f"{method}.pt", key=method)
            _RUNS[method] = (res, log, ctx)
        return _RUNS[method]
    return get


def total(w: dict) -> int:
    return sum(t.numel() for t in w.values())


def exact_sparsity(s: float, n: int) -> float:
    """What masks.stats reports for a mask with exactly round(s * n) zeros among n weights."""
    return 1.0 - (n - round(s * n)) / n


ALL = sorted(registry.METHODS)


def test_registry_covers_the_config_methods():
    assert set(registry.METHODS) == set(catalog.METHODS) == set(catalog.METHOD_PARAMS)


# ------------------------------------------------------------------------------------ every method


@pytest.mark.parametrize("method", ALL)
def test_final_sparsity_is_exact_weight_by_weight(trained, method):
    res, _, _ = trained(method)
    w = {n: p.detach() for n, p in prunable(res.model).items()}
    assert set(res.masks) == set(w)
    for n, p in w.items():
        assert torch.equal(p == 0, ~res.masks[n]), n        # zero exactly where pruned, nowhere else
    if method in ("finetune_layerwise", "gmp"):              # gmp.scope: layer (the default, Zhu & Gupta)
        assert {n: int((p == 0).sum()) for n, p in w.items()} == {n: round(S * p.numel()) for n, p in w.items()}
    else:
        assert sum(int((p == 0).sum()) for p in w.values()) == round(S * total(w))


@pytest.mark.parametrize("method", ALL)
def test_pruned_weights_are_zero_after_every_step(trained, method):
    res, log, _ = trained(method)
    assert log["steps"] == res.epochs * (N_TRAIN // BATCH)   # the check ran at every step
    assert log["unmasked_steps"] == 0
    assert log["violations"] == 0


@pytest.mark.parametrize("method", (*catalog.EQUAL_BUDGET, "lr_rewind", "reinit"))
def test_one_shot_methods_spend_their_budget(trained, method):
    res, _, _ = trained(method)
    expected = CFG.train.epochs if method in ("lr_rewind", "reinit") else CFG.retrain.epochs
    assert res.epochs == expected and [h["round"] for h in res.history] == [0] * expected


@pytest.mark.parametrize("method", ["finetune", "kd", "fourier_kd", "fourier_kd_anti", "fourier_kd_shuffled",
                                    "fourier_kd_reverse", "freq_ce", "lr_rewind", "reinit"])
def test_mbp_methods_keep_the_given_mask(trained, method):
    res, _, ctx = trained(method)
    assert all(torch.equal(res.masks[n], ctx.mask[n]) for n in ctx.mask)


def test_random_matches_mbp_per_layer_counts_not_its_pattern(trained):
    res, _, ctx = trained("random")
    assert {n: int((~m).sum()) for n, m in res.masks.items()} == {n: int((~m).sum()) for n, m in ctx.mask.items()}
    assert any(not torch.equal(res.masks[n], ctx.mask[n]) for n in ctx.mask)
    # the mask comes from the model's seed: the same seed gives the same mask, another seed another one
    again = registry.METHODS["random"](ctx).rounds[0].begin(net(seed=3), None)
    other = registry.METHODS["random"](dataclasses.replace(ctx, seed=ctx.seed + 1)).rounds[0].begin(net(seed=3), None)
    assert all(torch.equal(res.masks[n], again[n]) for n in ctx.mask)
    assert sum(not torch.equal(res.masks[n], other[n]) for n in ctx.mask) >= len(ctx.mask) // 2


def test_fourier_kd_logs_its_radius_schedule(trained):
    res, _, _ = trained("fourier_kd")
    d = CFG.distill
    expected = [fq.radius_at(e, CFG.retrain.epochs, d.radius_start, d.full_band_at, d.schedule, d.steps)
                for e in range(2)]
    assert expected[-1] == math.inf, "the smoke schedule reaches the full band in its last epoch"
    # the history (and MLflow) write the full band as the corner radius of a 32x32 spectrum, hypot(16, 16)
    assert [h["radius"] for h in res.history] == [math.hypot(16, 16) if math.isinf(r) else r for r in expected]


# ---------------------------------------------------------------------------------- iterative methods


@pytest.mark.parametrize("method,epochs_per_round", [("imp", CFG.imp.epochs_per_round),
                                                     ("lth", CFG.train.epochs - CFG.lth.rewind_epoch),
                                                     ("lth_init", CFG.train.epochs),
                                                     ("lrr", CFG.train.epochs)])
def test_iterative_methods_reach_the_target_in_the_planned_rounds(trained, method, epochs_per_round):
    res, _, _ = trained(method)
    assert res.epochs == 2 * epochs_per_round               # rate 0.7 to 0.9: two rounds, to 0.7 and 0.9
    assert [h["round"] for h in res.history] == [r for r in range(2) for _ in range(epochs_per_round)]
    n = total(res.masks)
    assert [h["sparsity"] for h in res.history] == [
        exact_sparsity(t, n) for t in (0.7, 0.9) for _ in range(epochs_per_round)]


def test_lth_begin_rewinds_survivors_to_the_saved_weights():
    ctx = context()
    recipe = registry.METHODS["lth"](ctx)
    rewind = ctx.snapshots[CFG.lth.rewind_epoch]
    model = net(seed=5)
    masks = None
    for i, rnd in enumerate(recipe.rounds):
        before = {n: p.detach().clone() for n, p in prunable(model).items()}
        new = rnd.begin(model, masks)
        M.apply(prunable(model), new)                          # what train.run does right after begin
        # round 0 prunes the dense (trained) weights, later rounds the weights the previous round trained,
        # to this round's target, never reviving a pruned weight
        pruned_from = {n: ctx.dense[n] for n in before} if i == 0 else before
        target = [0.7, 0.9][i]                                 # rate 0.7: keep 0.3, then land on 0.9
        assert all(torch.equal(new[n], e) for n, e in M.global_magnitude(pruned_from, target, masks).items())
        assert i == 0 or all(not (new[n] & ~masks[n]).any() for n in new)
        state = model.state_dict()
        for n, m in new.items():
            assert torch.equal(state[n][m], rewind[n][m])      # survivors: exactly their epoch-k values
            assert (state[n][~m] == 0).all()                   # pruned: exactly 0
        others = [k for k in rewind if k not in new]           # biases, batch norm: rewound too
        assert all(torch.equal(state[k], rewind[k]) for k in others)
        masks = new
        with torch.no_grad():                                  # 'train' the round: move every weight
            for p in model.parameters():
                p.add_(torch.randn_like(p))


# ---------------------------------------------------------------------------------------- lr schedule


def test_lr_drops_round_halves_up():
    assert [T.drop_epoch(f, 160) for f in (0.5, 0.75)] == [80, 120]
    assert [T.drop_epoch(f, 3) for f in (0.5, 0.75)] == [2, 2]    # 1.5 -> 2, 2.25 -> 2
    assert T.drop_epoch(0.5, 5) == 3                              # 2.5 -> 3 (round() gives 2)
    assert T.drop_epoch(0.7, 5) == 4                              # 3.5 (3.4999999999999996 in floats) -> 4
    assert T.drop_epoch(0.5, 2) == 1 and T.drop_epoch(0.75, 2) == 2


def test_lr_at_every_epoch():
    r = T.Round(5, 0.1, [0.5, 0.7], 0.1)                          # drops at epochs 3 and 4
    assert [T.lr_at(r, e) for e in range(5)] == [0.1, 0.1, 0.1, 0.1 * 0.1, 0.1 * 0.1 ** 2]
    one = T.Round(3, 0.01, [0.5], 0.2)                            # cifar10_jpeg: one drop, at epoch 2
    assert [T.lr_at(one, e) for e in range(3)] == [0.01, 0.01, 0.01 * 0.2]


@pytest.mark.parametrize("method,k", [("lth", 3), ("lth_init", 0)])
def test_lth_rounds_resume_the_dense_schedule_at_the_rewind_epoch(method, k):
    cfg = loading.load()                                           # the paper: 160 epochs, drops at 80 and 120
    assert cfg.lth.rewind_epoch == 3 and 3 in cfg.train.save_epochs and 0 in cfg.train.save_epochs
    ctx = base.Context(cfg, S, 0, {}, {}, {0: {}, 3: {}})
    rounds = registry.METHODS[method](ctx).rounds
    # rate 0.2 to 0.9 alone: 0.8^10 = 0.107 keeps more than 0.1, so ten rounds of 20% and an eleventh lands
    assert len(rounds) == 11 and catalog.rewind_epoch(cfg, method) == k
    for r in rounds:
        assert (r.epochs, r.schedule_offset, r.schedule_epochs) == (160 - k, k, 160)
        lrs = [T.lr_at(r, e) for e in range(r.epochs)]
        # round epoch e is dense epoch e + k: lr 0.1 up to dense epoch 79, 0.01 to 119, 0.001 after
        assert lrs[79 - k] == 0.1 and lrs[80 - k] == 0.1 * 0.1 and lrs[119 - k] == 0.1 * 0.1
        assert lrs[120 - k] == 0.1 * 0.1 ** 2 and lrs[-1] == 0.1 * 0.1 ** 2
        assert lrs.count(0.1) == 80 - k and lrs.count(0.1 * 0.1) == 40


# ------------------------------------------------------------------------------------------------ gmp


def test_gmp_epochs():
    assert iterative.gmp_epochs(160, 0.1, 0.6) == (16, 96)
    assert iterative.gmp_epochs(3, 0.1, 0.6) == (0, 2)
    assert iterative.gmp_epochs(10, 0.1, 1.0) == (1, 9)               # the target is reached by the last epoch
    assert iterative.gmp_epochs(1, 0.1, 0.6) == (0, 0)                # one epoch: the target mask from the start
    assert iterative.gmp_epochs(100, 0.29, 0.6) == (29, 60)           # 0.29 * 100 is 28.999999999999996 in floats


def test_gmp_follows_the_cubic_schedule_in_every_layer(trained):
    res, log, _ = trained("gmp")
    e0, e1 = iterative.gmp_epochs(GMP_CFG.train.epochs, GMP_CFG.gmp.start, GMP_CFG.gmp.end)
    assert (e0, e1) == (0, 2) and GMP_CFG.gmp.scope == "layer"
    # start 0, middle 0.9 * (1 - (1/2)^3) = 0.7875, end 0.9; Zhu & Gupta: EVERY layer at s_t, exact counts
    steps = (0.0, 0.9 * (1 - 0.5 ** 3), 0.9)
    assert [M.cubic_sparsity(e, e0, e1, S) for e in range(3)] == pytest.approx([0.0, 0.7875, 0.9])
    masks = log["epoch_masks"]
    assert len(masks) == 3
    for s, m in zip(steps, masks):
        assert {n: int((~k).sum()) for n, k in m.items()} == {n: round(s * k.numel()) for n, k in m.items()}
    n = total(res.masks)
    assert [h["sparsity"] for h in res.history] == [
        1.0 - sum(k.numel() - round(s * k.numel()) for k in m.values()) / n for s, m in zip(steps, masks)]
    for a, b in zip(masks, masks[1:]):                         # gradual pruning never revives a weight
        assert all(not (b[k] & ~a[k]).any() for k in a)


def test_gmp_global_scope_prunes_against_one_threshold(data, tmp_path):
    cfg = replace(GMP_CFG, gmp={"scope": "global"})
    recipe = registry.METHODS["gmp"](context(cfg))
    log = instrument(recipe)
    res = T.run(recipe, net(seed=0), data, RT, seed=0, ckpt=tmp_path / "g.pt", key="g")
    n = total(res.masks)
    assert [h["sparsity"] for h in res.history] == [exact_sparsity(s, n) for s in (0.0, 0.7875, 0.9)]
    last = log["epoch_masks"][-1]
    # one threshold: the layers end at different sparsities (the first conv keeps more than the average)
    layer = {k: 1 - m.float().mean().item() for k, m in last.items()}
    assert max(layer.values()) - min(layer.values()) > 0.1
    with pytest.raises(errors.ConfigError, match="gmp.scope"):
        loading.validate(loading.merge(loading.merged_raw("smoke"), {"gmp": {"scope": "block"}}))


# ------------------------------------------------------------------------------------------------- kd


class Recorder(torch.nn.Module):
    """A linear classifier that records every input it is called on and the logits it returned."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = torch.nn.Linear(3 * 32 * 32, 4)
        self.calls = []

    def forward(self, x):
        out = self.fc(x.flatten(1))
        self.calls.append((x.detach().clone(), out.detach().clone()))
        return out


def _kd_by_hand(t_logits, s_filtered, s_unfiltered, y, T, alpha):
    t, sf, s = t_logits.double(), s_filtered.double(), s_unfiltered.double()
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (torch.log_softmax(t / T, 1) - torch.log_softmax(sf / T, 1))).sum(1).mean()
    return alpha * T * T * kl + (1 - alpha) * torch.nn.functional.cross_entropy(s, y)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 4, (8,), generator=g)


@pytest.mark.parametrize("method,band", [("fourier_kd", "low"), ("fourier_kd_reverse", "high")])
def test_fourier_kd_feeds_the_filtered_batch_to_teacher_and_kl_the_unfiltered_to_cross_entropy(data, method, band):
    teacher, student = Recorder(1), Recorder(2)
    ctx = dataclasses.replace(context(), teacher=teacher)
    d = CFG.distill
    x, y = _batch()
    loss, logits, r = registry.METHODS[method](ctx).loss(student, x, y, 0, data.normalize)
    top = math.hypot(16, 16)
    assert r == (d.radius_start if band == "low" else top - d.radius_start)   # epoch 0 of the schedule
    filtered = data.normalize(fq.lowpass(x, r) if band == "low" else fq.highpass(x, r))
    assert len(teacher.calls) == 1 and torch.equal(teacher.calls[0][0], filtered)
    assert len(student.calls) == 2                           # two student passes per step before the full band
    assert torch.equal(student.calls[0][0], filtered)        # KL: student on the filtered batch
    assert torch.equal(student.calls[1][0], data.normalize(x))   # CE: student on the unfiltered batch
    assert torch.equal(logits, student.calls[1][1])          # accuracy is logged on the unfiltered batch
    expected = _kd_by_hand(teacher.calls[0][1], student.calls[0][1], student.calls[1][1], y, d.T, d.alpha)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the two logits differ: a loss wired the other way round would give another value
    assert not torch.equal(student.calls[0][1], student.calls[1][1])
    swapped = _kd_by_hand(teacher.calls[0][1], student.calls[1][1], student.calls[0][1], y, d.T, d.alpha)
    assert loss.item() != pytest.approx(swapped.item(), rel=1e-5)


@pytest.mark.parametrize("method,epoch", [("kd", 0), ("fourier_kd", 1)])
def test_kd_and_fourier_kd_at_the_full_band_make_one_student_pass_on_the_unfiltered_batch(data, method, epoch):
    teacher, student = Recorder(1), Recorder(2)
    ctx = dataclasses.replace(context(), teacher=teacher)
    x, y = _batch()
    loss, logits, r = registry.METHODS[method](ctx).loss(student, x, y, epoch, data.normalize)
    assert math.isinf(r)                                     # kd: no schedule; fourier_kd: epoch 1 is the full band
    assert [torch.equal(c[0], data.normalize(x)) for c in teacher.calls + student.calls] == [True, True]
    expected = _kd_by_hand(teacher.calls[0][1], logits, logits, y, CFG.distill.T, CFG.distill.alpha)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_freq_ce_differs_from_fourier_kd_only_in_the_teachers_term(data):
    """The same student, batch and epoch through both losses: the student sees the same inputs in the same
    order and gives the same logits; the teacher is never called by freq_ce; and the two losses differ by
    exactly alpha (T^2 KL(teacher || student on the filtered batch) - CE(student on the filtered batch))."""
    d = CFG.distill
    x, y = _batch()
    runs = {}
    for method in ("fourier_kd", "freq_ce"):
        teacher, student = Recorder(1), Recorder(2)
        ctx = dataclasses.replace(context(), teacher=teacher)
        runs[method] = (registry.METHODS[method](ctx).loss(student, x, y, 0, data.normalize), teacher, student)
    (l_kd, logits_kd, r_kd), teacher, s_kd = runs["fourier_kd"]
    (l_ce, logits_ce, r_ce), unused, s_ce = runs["freq_ce"]
    assert r_kd == r_ce == d.radius_start and unused.calls == [] and len(teacher.calls) == 1
    filtered = data.normalize(fq.lowpass(x, r_kd))
    assert len(s_ce.calls) == len(s_kd.calls) == 2
    for (a, la), (b, lb), want in zip(s_kd.calls, s_ce.calls, (filtered, data.normalize(x))):
        assert torch.equal(a, want) and torch.equal(b, want) and torch.equal(la, lb)
    assert torch.equal(logits_kd, logits_ce)                    # logged accuracy on the same unfiltered logits
    sf, s = s_ce.calls[0][1].double(), s_ce.calls[1][1].double()
    ce_f, ce = torch.nn.functional.cross_entropy(sf, y), torch.nn.functional.cross_entropy(s, y)
    assert l_ce.item() == pytest.approx((d.alpha * ce_f + (1 - d.alpha) * ce).item(), rel=1e-6)
    by_hand = _kd_by_hand(teacher.calls[0][1], sf, s, y, d.T, d.alpha)
    assert l_kd.item() == pytest.approx(by_hand.item(), rel=1e-5)
    kl_term = by_hand - (1 - d.alpha) * ce                      # alpha T^2 KL, the teacher's term
    assert (l_kd - l_ce).item() == pytest.approx((kl_term - d.alpha * ce_f).item(), rel=1e-4, abs=1e-6)
    assert (l_kd - l_ce).abs().item() > 1e-3                    # the terms differ: the check is not vacuous


def test_freq_ce_at_the_full_band_is_plain_cross_entropy_in_one_pass(data):
    student = Recorder(2)
    x, y = _batch()
    loss, logits, r = registry.METHODS["freq_ce"](context()).loss(student, x, y, 1, data.normalize)
    assert math.isinf(r) and len(student.calls) == 1 and torch.equal(student.calls[0][0], data.normalize(x))
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits.double(), y).item(), rel=1e-6)


@pytest.mark.parametrize("filtered,teacher_sees,student_sees", [
    ("both", "filtered", ["filtered", "unfiltered"]),
    ("student", "unfiltered", ["filtered", "unfiltered"]),
    ("teacher", "filtered", ["unfiltered"])])
def test_distill_filtered_says_which_network_sees_the_filtered_batch(data, filtered, teacher_sees, student_sees):
    teacher, student = Recorder(1), Recorder(2)
    cfg = replace(CFG, distill={"filtered": filtered})
    ctx = dataclasses.replace(context(cfg), teacher=teacher)
    x, y = _batch()
    loss, logits, r = registry.METHODS["fourier_kd"](ctx).loss(student, x, y, 0, data.normalize)
    batch = {"filtered": data.normalize(fq.lowpass(x, r)), "unfiltered": data.normalize(x)}
    assert r == CFG.distill.radius_start and len(teacher.calls) == 1
    assert torch.equal(teacher.calls[0][0], batch[teacher_sees])
    assert len(student.calls) == len(student_sees)
    assert all(torch.equal(c[0], batch[k]) for c, k in zip(student.calls, student_sees))
    assert torch.equal(logits, student.calls[-1][1])             # cross-entropy: the unfiltered batch
    d = CFG.distill
    expected = _kd_by_hand(teacher.calls[0][1], student.calls[0][1], student.calls[-1][1], y, d.T, d.alpha)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_distill_filtered_is_checked():
    raw = loading.merged_raw("smoke")
    raw["distill"]["filtered"] = "neither"
    with pytest.raises(errors.ConfigError, match="distill.filtered = 'neither'"):
        loading.validate(raw)


def _radii(method, cfg, seed=0):
    """The radius each epoch of `method`'s recipe filters with (what its loss reports, epoch by epoch)."""
    ctx = dataclasses.replace(context(cfg), teacher=Recorder(1), seed=seed)
    loss = registry.METHODS[method](ctx).loss
    x, y = _batch()
    return [loss(Recorder(2), x, y, e, lambda v: v)[2] for e in range(cfg.retrain.epochs)]


def test_fourier_kd_anti_runs_fourier_kds_radii_in_reverse_order():
    cfg = replace(CFG, retrain={"epochs": 4}, distill={"full_band_at": 0.5, "schedule": "linear"})
    mid = 4 + (math.hypot(16, 16) - 4) / 2                      # epoch 1 of 2 rising epochs, by hand
    assert _radii("fourier_kd", cfg) == pytest.approx([4, mid, math.inf, math.inf])
    assert _radii("fourier_kd_anti", cfg) == pytest.approx([math.inf, math.inf, mid, 4])
    long = replace(CFG, retrain={"epochs": 11}, distill={"full_band_at": 0.7, "schedule": "cosine"})
    assert _radii("fourier_kd_anti", long) == _radii("fourier_kd", long)[::-1]


def test_fourier_kd_shuffled_runs_a_seeded_permutation_of_fourier_kds_radii():
    cfg = replace(CFG, retrain={"epochs": 10}, distill={"full_band_at": 0.7})
    paper = _radii("fourier_kd", cfg)
    orders = {seed: _radii("fourier_kd_shuffled", cfg, seed) for seed in range(3)}
    for seed, r in orders.items():
        assert sorted(r) == sorted(paper)                        # the same radii, as often each
        assert r == _radii("fourier_kd_shuffled", cfg, seed)     # the same seed, the same order
        assert r == fq.shuffled_radii(10, 4.0, 0.7, seed=seed)
    assert len({tuple(r) for r in orders.values()} | {tuple(paper)}) == 4   # orders differ by seed


def test_kd_recipe_equals_fourier_kd_recipe_once_the_schedule_is_full(data):
    ctx = context()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 4, (8,), generator=g)
    student = net(seed=0).eval()
    kd, fkd = registry.METHODS["kd"](ctx).loss, registry.METHODS["fourier_kd"](ctx).loss
    full = math.ceil(CFG.distill.full_band_at * CFG.retrain.epochs)
    assert torch.equal(kd(student, x, y, full, data.normalize)[0], fkd(student, x, y, full, data.normalize)[0])
    # ... and not before: at epoch 0 the teacher sees a low-passed batch (so the check above is not vacuous)
    assert not torch.equal(kd(student, x, y, 0, data.normalize)[0], fkd(student, x, y, 0, data.normalize)[0])


def test_kd_loss_is_the_paper_formula(data):
    # alpha T^2 KL(teacher || student) + (1 - alpha) CE, computed by hand on the same logits
    ctx = context()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 4, (8,), generator=g)
    student = net(seed=0).eval()
    loss, logits, _ = distill.kd_loss(ctx.teacher, 4.0, 0.9)(student, x, y, 0, data.normalize)
    s, t = logits.double(), ctx.teacher(data.normalize(x)).double()
    p_t = torch.softmax(t / 4, 1)
    kl = (p_t * (torch.log_softmax(t / 4, 1) - torch.log_softmax(s / 4, 1))).sum(1).mean()
    ce = torch.nn.functional.cross_entropy(s, y)
    assert loss.item() == pytest.approx((0.9 * 16 * kl + 0.1 * ce).item(), rel=1e-5)


# ------------------------------------------------------------------------------------------ checkpoints


class _NoRun:
    """Stands in for the MLflow run in jobs.finish (tracking is tested elsewhere)."""
    def log_metrics(self, *a, **k): pass
    def log_artifact(self, *a, **k): pass
    def set_tags(self, *a, **k): pass


def test_checkpointed_run_deletes_nothing_and_resumes_without_training(data, tmp_path):
    ctx = context()
    keep = {tmp_path / "data.pt": b"prepared", tmp_path / "out" / "mask.pt": b"mask"}
    for p, b in keep.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b)
    ckpt = tmp_path / "runs" / "ck.pt"
    res = T.run(registry.METHODS["finetune"](ctx), net(), data, RT, seed=0, ckpt=ckpt, key="k")
    assert all(p.read_bytes() == b for p, b in keep.items())                # nothing else touched
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ck.pt"]       # no temp files left behind
    state = io.load(ckpt, "checkpoint", keys=("key", "round", "epoch"))
    assert (state["key"], state["round"], state["epoch"]) == ("k", 0, CFG.retrain.epochs)

    # Resuming a finished checkpoint trains nothing and gives back the same model, masks and history.
    recipe = registry.METHODS["finetune"](ctx)
    log = instrument(recipe)
    again = T.run(recipe, net(), data, RT, seed=0, ckpt=ckpt, key="k")
    assert log["steps"] == 0 and again.history == res.history and again.epochs == res.epochs
    a, b = res.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(res.masks[n], again.masks[n]) for n in res.masks)


def test_checkpoint_of_other_parameters_is_refused_not_overwritten(data, tmp_path):
    ckpt = tmp_path / "ck.pt"
    T.run(registry.METHODS["finetune"](context()), net(), data, RT, seed=0, ckpt=ckpt, key="k")
    before = ckpt.read_bytes()
    with pytest.raises(io.CorruptFile, match="other parameters"):
        T.run(registry.METHODS["finetune"](context()), net(), data, RT, seed=0, ckpt=ckpt, key="other")
    assert ckpt.read_bytes() == before


def test_finishing_a_stage_removes_only_its_checkpoint(trained, data, tmp_path):
    res, _, ctx = trained("finetune")
    ckpt = tmp_path / "runs" / "ck.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"checkpoint")
    inputs = {tmp_path / "data.pt": b"prepared", tmp_path / "dense.pt": b"dense", tmp_path / "mask.pt": b"mask"}
    for p, b in inputs.items():
        p.write_bytes(b)
    out = tmp_path / "finetune" / "model.pt"
    jobs.finish(CFG, _NoRun(), res, data, RT, str(out), "resnet20", "k", ckpt)
    assert not ckpt.exists()
    assert all(p.read_bytes() == b for p, b in inputs.items())
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.json", "model.pt"]
    # the output holds the pruned model and its masks, exactly
    loaded, blob = jobs.load_model(out, expect={"arch": "resnet20", "job": "k"})
    for n, m in blob["masks"].items():
        assert torch.equal(m, res.masks[n])
        assert torch.equal(loaded.state_dict()[n] == 0, ~m)
