"""One iterative chain serves every sparsity of the grid (imp, lth, lth_init, lrr): every round prunes the rate
of the remaining weights except the one that reaches a level, which lands exactly on it; a level's model is
exactly what a run stopped at that level gives (CPU)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.planning import budget
from pipeline.core import masks as M, train as T
from pipeline.core.models import prunable

from .test_methods import CFG, RT, context, data, exact_sparsity, net, replace, total  # noqa: F401 - data: a fixture
from pipeline.config import loading
from pipeline.methods import base
from pipeline.methods import registry

LEVELS = [0.5, 0.9]
PAPER = [0.5, 0.8, 0.9, 0.95, 0.98]


def fractions(targets) -> list[float]:
    """The fraction of the remaining weights each round prunes."""
    kept = [1.0] + [1 - s for s, _ in targets]
    return [1 - b / a for a, b in zip(kept, kept[1:])]


@pytest.mark.parametrize("s,rate,rounds", [(0.9, 0.2, 11), (0.98, 0.2, 18), (0.5, 0.2, 4), (0.75, 0.5, 2),
                                           (0.8, 0.9, 1)])
def test_every_round_prunes_the_rate_and_the_last_lands_on_the_level(s, rate, rounds):
    # 0.8^10 = 0.107 > 0.1 >= 0.8^11: 11 rounds to 0.9; 0.8^17 = 0.0225 > 0.02 >= 0.8^18: 18 to 0.98;
    # 0.8^3 = 0.512 > 0.5: 4 to 0.5; 0.5^2 = 0.25 exactly: 2 rounds of 50% to 0.75, no third one
    t = budget.chain_targets([s], rate)
    assert len(t) == rounds and t[-1] == (s, s) and [lv for _, lv in t[:-1]] == [None] * (rounds - 1)
    f = fractions(t)
    assert f[:-1] == pytest.approx([rate] * (rounds - 1), abs=1e-12)
    assert 0 < f[-1] <= rate + 1e-12                           # the landing round prunes the rate or less


def test_the_paper_grid_at_20_percent_lands_on_every_level():
    t = budget.chain_targets([0.98, 0.5, 0.9, 0.8, 0.95], 0.2)
    # to 0.5: 0.8^3 = 0.512 > 0.5, 3 rounds of 20% and a 4th lands, pruning 1 - 0.5 / 0.512 = 3/128; from
    # each level the ratio of what the next keeps is 0.4 (0.5 -> 0.2, 0.05 -> 0.02) or 0.5 (0.2 -> 0.1,
    # 0.1 -> 0.05): 0.8^4 = 0.4096 > 0.4, 4 rounds and a landing one of 1 - 0.4 / 0.4096 = 3/128;
    # 0.8^3 = 0.512 > 0.5, 3 rounds and a landing one of 3/128. 4 + 5 + 4 + 4 + 5 = 22 rounds.
    assert len(t) == 22 and budget.chain_rounds(PAPER, 0.2) == {0.5: 4, 0.8: 9, 0.9: 13, 0.95: 17, 0.98: 22}
    assert [s for s, lv in t if lv is not None] == PAPER and all(s == lv for s, lv in t if lv is not None)
    land = 3 / 128
    assert fractions(t) == pytest.approx([.2] * 3 + [land] + ([.2] * 4 + [land]) + ([.2] * 3 + [land]) * 2
                                         + [.2] * 4 + [land], abs=1e-12)


def test_a_bad_rate_is_refused():
    for rate in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="rate"):
            budget.chain_targets(LEVELS, rate)


# rate 0.6 through 0.5 and 0.9: 0.4 kept <= 0.5, so round 1 lands on 0.5; 0.5 x 0.4 = 0.2 > 0.1 kept, round 2
# prunes to 0.8; 0.2 x 0.4 = 0.08 <= 0.1, round 3 lands on 0.9
RATE = 0.6


@pytest.mark.parametrize("method", ["imp", "lth", "lrr"])
def test_a_chain_level_equals_a_run_stopped_at_that_level(data, tmp_path, method):  # noqa: F811
    cfg = replace(CFG, imp={"rate": RATE}, lth={"rate": RATE}, lrr={"rate": RATE})
    ctx = dataclasses.replace(context(cfg), levels=LEVELS)
    chain = registry.METHODS[method](ctx)
    assert [r.level for r in chain.rounds] == [0.5, None, 0.9]
    res = T.run(chain, net(seed=0), data, RT, seed=0, ckpt=tmp_path / "chain.pt", key="chain")
    assert sorted(res.levels) == LEVELS
    n = total(res.masks)
    for s, lv in res.levels.items():
        zeros = sum(int((~m).sum()) for m in lv["masks"].values())
        assert zeros == round(s * n), f"level {s}: {zeros} zeros of {n}"
    assert [h["sparsity"] for h in res.history] == [
        exact_sparsity(s, n) for s in (0.5, 0.8, 0.9) for _ in range(res.epochs // 3)]
    assert res.levels[0.5]["rounds"] == 1 and res.levels[0.9]["rounds"] == 3
    per_round = res.epochs // 3
    assert res.levels[0.5]["epochs"] == per_round and res.levels[0.9]["epochs"] == 3 * per_round
    # The level-0.9 model is the end of the chain; the level-0.5 model is the run stopped after round 1.
    assert all(torch.equal(res.levels[0.9]["model"][k], v.cpu()) for k, v in res.model.state_dict().items())
    stopped = registry.METHODS[method](ctx)
    stopped.rounds = stopped.rounds[:1]
    alone = T.run(stopped, net(seed=0), data, RT, seed=0, ckpt=tmp_path / "stopped.pt", key="stopped")
    level = res.levels[0.5]["model"]
    assert all(torch.equal(level[k], v.cpu()) for k, v in alone.model.state_dict().items())
    assert all(torch.equal(res.levels[0.5]["masks"][k], v.cpu()) for k, v in alone.masks.items())
    assert exact_sparsity(0.5, n) == alone.history[-1]["sparsity"]
    # ... and a per-target run to 0.5 (no chain) is that same model
    target = registry.METHODS[method](dataclasses.replace(context(cfg), sparsity=0.5))
    assert [r.level for r in target.rounds] == [0.5]
    one = T.run(target, net(seed=0), data, RT, seed=0, ckpt=tmp_path / "target.pt", key="target")
    assert all(torch.equal(level[k], v.cpu()) for k, v in one.model.state_dict().items())


def test_lrr_rounds_prune_the_trained_weights_and_replay_the_dense_schedule():
    """Renda et al.'s iterative lr rewinding: no weight rewinding (each round starts from the weights the
    previous one trained), and every round runs the whole dense lr schedule from its first epoch."""
    cfg = loading.load()                       # the paper: 160 dense epochs, lr 0.1, x0.1 at 80 and 120
    ctx = base.Context(cfg, 0.9, 0, net(seed=1).state_dict(), {}, {})
    rounds = registry.METHODS["lrr"](dataclasses.replace(ctx, levels=PAPER)).rounds
    assert len(rounds) == 22 and [r.level for r in rounds if r.level] == PAPER
    dense = [0.1] * 80 + [0.1 * 0.1] * 40 + [0.1 * 0.1 ** 2] * 40
    for r in rounds:
        assert r.epochs == 160 and [T.lr_at(r, e) for e in range(160)] == dense
    model, masks = net(seed=5), None
    for i, rnd in enumerate(rounds[:3]):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        new = rnd.begin(model, masks)
        M.apply(prunable(model), new)
        source = ctx.dense if i == 0 else before          # round 0 starts from the trained dense weights
        target = [0.2, 0.36, 0.488][i]
        expect = M.global_magnitude({k: source[k] for k in new}, target, masks)
        assert all(torch.equal(new[k], expect[k]) for k in new)
        state = model.state_dict()
        assert all(torch.equal(state[k][new[k]], source[k][new[k]]) for k in new)     # survivors keep their values
        assert all(torch.equal(state[k], source[k]) for k in state if k not in new)   # batch norm, biases too
        masks = new
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))


def test_a_killed_chain_resumes_with_its_levels(data, tmp_path):  # noqa: F811
    """Killed in round 2 (after level 0.5 was checkpointed): the resumed chain gives the same levels."""
    ctx = dataclasses.replace(context(replace(CFG, imp={"rate": RATE})), levels=LEVELS)
    whole = T.run(registry.METHODS["imp"](ctx), net(seed=0), data, RT, seed=0, ckpt=tmp_path / "whole.pt", key="k")

    class Killed(Exception):
        pass

    def kill(epoch, metrics):
        if metrics["round"] == 1:              # the first epoch of round 2: its checkpoint is never written
            raise Killed
    with pytest.raises(Killed):
        T.run(registry.METHODS["imp"](ctx), net(seed=0), data, RT, seed=0, ckpt=tmp_path / "part.pt", key="k", log=kill)
    resumed = T.run(registry.METHODS["imp"](ctx), net(seed=0), data, RT, seed=0, ckpt=tmp_path / "part.pt", key="k")
    for s in LEVELS:
        a, b = whole.levels[s], resumed.levels[s]
        assert (a["rounds"], a["epochs"]) == (b["rounds"], b["epochs"])
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_chain_stage_writes_every_level_with_its_own_metrics_and_run(tmp_path, env):
    """`python -m pipeline chain`: one job, a model + metrics.json per grid sparsity (exact sparsity, the rounds
    and epochs spent up to the level), one MLflow run for the chain and one per level (stage retrain)."""
    import mlflow

    from pipeline.infra import io
    from .conftest import run_stage, write_experiment
    exp = write_experiment(tmp_path, name="chain", grid={"sparsities": [0.9, 0.5]},
                           datasets={"synthetic": {"source": "synthetic", "classes": 10, "train_size": 160,
                                                   "val_size": 32, "test_size": 32}},
                           train={"epochs": 1, "save_epochs": [0]}, lth={"rewind_epoch": 0},
                           imp={"rate": RATE, "epochs_per_round": 1}, lrr={"rate": RATE})
    data, dense = tmp_path / "data.pt", tmp_path / "dense" / "model.pt"
    for args in (("prepare", "--dataset", "synthetic", "--out", data),
                 ("train_dense", "--dataset", "synthetic", "--arch", "resnet20", "--seed", 0, "--data", data,
                  "--out", dense),
                 ("chain", "--dataset", "synthetic", "--arch", "resnet20", "--seed", 0, "--method", "imp",
                  "--data", data, "--dense", dense, "--snapshots", dense.with_name("snapshots.pt"),
                  "--out-dir", tmp_path / "retrain")):
        p = run_stage(*args, "--experiment", exp, env=env)
        assert p.returncode == 0, p.stderr[-2000:]
    for s, rounds in ((0.5, 1), (0.9, 3)):       # rate 0.6: lands on 0.5 in round 1, prunes to 0.8, lands on 0.9
        m = io.read_json(tmp_path / "retrain" / f"s{s}" / "imp" / "metrics.json")
        assert (m["rounds"], m["epochs"], m["chain_levels"]) == (rounds, rounds, 2)
        assert len(m["val_history"]) == m["epochs"]         # its learning curve: the chain's epochs up to it
        assert m["nonzero"] == m["prunable"] - round(s * m["prunable"])
    assert not list((tmp_path / "runs").rglob("chain-*.pt")), "the chain's checkpoint outlived the job"
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp_id = client.get_experiment_by_name(loading.load(exp).name).experiment_id
    runs = client.search_runs([exp_id])
    stages = sorted((r.data.tags["stage"], r.data.tags.get("sparsity", "-")) for r in runs)
    assert stages == [("chain", "-"), ("prepare", "-"), ("retrain", "0.5"), ("retrain", "0.9"), ("train_dense", "0.0")]
