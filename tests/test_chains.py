"""One iterative chain serves every sparsity of the grid (imp, lth, lth_init): its levels land exactly on the
grid's sparsities, in order, and a level's model is exactly what a run stopped at that level gives (CPU)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pipeline import masks as M, methods as MT, train as T

from .test_methods import CFG, RT, context, data, exact_sparsity, net, total  # noqa: F401 - data: a fixture

LEVELS = [0.5, 0.9]


@pytest.mark.parametrize("s,rounds", [(0.9, 2), (0.98, 5), (0.5, 3), (0.8, 1)])
def test_one_level_is_the_per_target_schedule(s, rounds):
    assert [t for t, _ in M.chain_targets([s], rounds)] == M.iterative_targets(s, rounds)   # exactly equal
    assert [lv for _, lv in M.chain_targets([s], rounds)] == [None] * (rounds - 1) + [s]


def test_the_paper_grid_costs_one_round_per_level():
    # 5 rounds to 0.98 keep (0.02)^(1/5) = 0.457 a round; each step between the paper's sparsities is 0.886 to
    # 1.17 such rounds, so one each: 5 rounds in all, against 5 x 5 = 25 rounds for five separate chains.
    assert M.chain_targets([0.98, 0.5, 0.9, 0.8, 0.95], 5) == [(s, s) for s in (0.5, 0.8, 0.9, 0.95, 0.98)]


def test_levels_split_rounds_by_how_much_they_prune():
    # keep 0.1^(1/5) = 0.631 a round: 0 -> 0.5 is log(0.5)/log(0.631) = 1.51 rounds -> 2; 0.5 -> 0.9 is
    # log(0.2)/log(0.631) = 3.49 rounds -> 3; within a level every round keeps the same fraction
    t = M.chain_targets(LEVELS, 5)
    assert [lv for _, lv in t] == [None, 0.5, None, None, 0.9]
    kept = [1 - s for s, _ in t]
    assert kept[1] == 0.5 and t[4][0] == 0.9
    assert math.isclose(kept[0] ** 2, 0.5) and math.isclose(kept[0], 0.5 / kept[0])
    r = [kept[i + 1] / kept[i] for i in range(1, 4)]
    assert all(math.isclose(x, 0.2 ** (1 / 3)) for x in r)


@pytest.mark.parametrize("method", ["imp", "lth"])
def test_a_chain_level_equals_a_run_stopped_at_that_level(data, tmp_path, method):  # noqa: F811
    cfg = dataclasses.replace(CFG, imp=dataclasses.replace(CFG.imp, rounds=3),
                              lth=dataclasses.replace(CFG.lth, rounds=3))
    ctx = dataclasses.replace(context(cfg), levels=LEVELS)
    chain = MT.METHODS[method](ctx)
    # 3 rounds to 0.9 keep 0.1^(1/3) = 0.464: 0 -> 0.5 is 0.9 rounds -> 1; 0.5 -> 0.9 is 2.1 -> 2
    assert [r.level for r in chain.rounds] == [0.5, None, 0.9]
    res = T.run(chain, net(seed=0), data, RT, seed=0, ckpt=tmp_path / "chain.pt", key="chain")
    assert sorted(res["levels"]) == LEVELS
    n = total(res["masks"])
    for s, lv in res["levels"].items():
        zeros = sum(int((~m).sum()) for m in lv["masks"].values())
        assert zeros == round(s * n), f"level {s}: {zeros} zeros of {n}"
    assert res["levels"][0.5]["rounds"] == 1 and res["levels"][0.9]["rounds"] == 3
    per_round = res["epochs"] // 3
    assert res["levels"][0.5]["epochs"] == per_round and res["levels"][0.9]["epochs"] == 3 * per_round
    # The level-0.9 model is the end of the chain; the level-0.5 model is the run stopped after round 1.
    assert all(torch.equal(res["levels"][0.9]["model"][k], v.cpu()) for k, v in res["model"].state_dict().items())
    stopped = MT.METHODS[method](ctx)
    stopped.rounds = stopped.rounds[:1]
    alone = T.run(stopped, net(seed=0), data, RT, seed=0, ckpt=tmp_path / "stopped.pt", key="stopped")
    level = res["levels"][0.5]["model"]
    assert all(torch.equal(level[k], v.cpu()) for k, v in alone["model"].state_dict().items())
    assert all(torch.equal(res["levels"][0.5]["masks"][k], v.cpu()) for k, v in alone["masks"].items())
    assert exact_sparsity(0.5, n) == alone["history"][-1]["sparsity"]


def test_a_killed_chain_resumes_with_its_levels(data, tmp_path):  # noqa: F811
    """Killed in round 2 (after level 0.5 was checkpointed): the resumed chain gives the same levels."""
    ctx = dataclasses.replace(context(dataclasses.replace(CFG, imp=dataclasses.replace(CFG.imp, rounds=3))),
                              levels=LEVELS)
    whole = T.run(MT.METHODS["imp"](ctx), net(seed=0), data, RT, seed=0, ckpt=tmp_path / "whole.pt", key="k")

    class Killed(Exception):
        pass

    def kill(epoch, metrics):
        if metrics["round"] == 1:              # the first epoch of round 2: its checkpoint is never written
            raise Killed
    with pytest.raises(Killed):
        T.run(MT.METHODS["imp"](ctx), net(seed=0), data, RT, seed=0, ckpt=tmp_path / "part.pt", key="k", log=kill)
    resumed = T.run(MT.METHODS["imp"](ctx), net(seed=0), data, RT, seed=0, ckpt=tmp_path / "part.pt", key="k")
    for s in LEVELS:
        a, b = whole["levels"][s], resumed["levels"][s]
        assert (a["rounds"], a["epochs"]) == (b["rounds"], b["epochs"])
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_chain_stage_writes_every_level_with_its_own_metrics_and_run(tmp_path, env):
    """`python -m pipeline chain`: one job, a model + metrics.json per grid sparsity (exact sparsity, the rounds
    and epochs spent up to the level), one MLflow run for the chain and one per level (stage retrain)."""
    import mlflow

    from pipeline import config as C, io
    from .conftest import run_stage, write_experiment
    exp = write_experiment(tmp_path, name="chain", grid={"sparsities": [0.9, 0.5]},
                           datasets={"synthetic": {"source": "synthetic", "classes": 10, "train_size": 160,
                                                   "val_size": 32, "test_size": 32}},
                           train={"epochs": 1, "save_epochs": [0]}, lth={"rewind_epoch": 0},
                           imp={"rounds": 3, "epochs_per_round": 1})
    data, dense = tmp_path / "data.pt", tmp_path / "dense" / "model.pt"
    for args in (("prepare", "--dataset", "synthetic", "--out", data),
                 ("train_dense", "--dataset", "synthetic", "--arch", "resnet20", "--seed", 0, "--data", data,
                  "--out", dense),
                 ("chain", "--dataset", "synthetic", "--arch", "resnet20", "--seed", 0, "--method", "imp",
                  "--data", data, "--dense", dense, "--snapshots", dense.with_name("snapshots.pt"),
                  "--out-dir", tmp_path / "retrain")):
        p = run_stage(*args, "--experiment", exp, env=env)
        assert p.returncode == 0, p.stderr[-2000:]
    for s, rounds in ((0.5, 1), (0.9, 3)):       # 3 rounds to 0.9: 0 -> 0.5 is 0.9 of a round -> 1, then 2
        m = io.read_json(tmp_path / "retrain" / f"s{s}" / "imp" / "metrics.json")
        assert (m["rounds"], m["epochs"], m["chain_levels"]) == (rounds, rounds, 2)
        assert m["nonzero"] == m["prunable"] - round(s * m["prunable"])
    assert not list((tmp_path / "runs").rglob("chain-*.pt")), "the chain's checkpoint outlived the job"
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp_id = client.get_experiment_by_name(C.load(exp).name).experiment_id
    runs = client.search_runs([exp_id])
    stages = sorted((r.data.tags["stage"], r.data.tags.get("sparsity", "-")) for r in runs)
    assert stages == [("chain", "-"), ("prepare", "-"), ("retrain", "0.5"), ("retrain", "0.9"), ("train_dense", "0.0")]
