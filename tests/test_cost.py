"""pipeline/core/cost.py: MACs and nonzero parameters against hand counts."""
import pytest
import torch
import torch.nn as nn

from pipeline.core import cost, models
from pipeline.stages import common as jobs


class Tiny(nn.Module):
    """conv 3->4 (3x3, pad 1) on 8x8 -> conv 4->2 (3x3, stride 2, pad 1) -> 4x4 -> linear 32->5."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.b = nn.Conv2d(4, 2, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.b(torch.relu(self.a(x))), 1))


def _keep(shape, k):
    m = torch.zeros(shape, dtype=torch.bool).flatten()
    m[torch.randperm(m.numel(), generator=torch.Generator().manual_seed(k))[:k]] = True
    return m.view(shape)


def test_tiny_network_with_a_known_mask_matches_the_hand_count():
    net = Tiny()
    masks = {"a.weight": _keep((4, 3, 3, 3), 10), "b.weight": _keep((2, 4, 3, 3), 7)}
    with torch.no_grad():
        net.fc.weight[:, :12] = 0          # no mask on fc: its zeros are counted from the weights (5 x 20 kept)
        for n, p in net.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    c = cost.count(net, masks, image=(3, 8, 8))
    # by hand: a: 108 weights x 64 positions; b: 72 x 16 (8x8 -> 4x4); fc: 160 x 1
    assert c["dense_macs"] == 108 * 64 + 72 * 16 + 160 == 8224
    assert c["macs"] == 10 * 64 + 7 * 16 + 100 == 852
    assert c["speedup"] == pytest.approx(8224 / 852)
    assert c["layers"]["b"] == {"weights": 72, "kept": 7, "positions": 16, "macs": 112, "dense_macs": 1152}
    # parameters: 108 + 72 + 160 weights + 5 biases; nonzero: 10 + 7 + 100 + the 5 biases (nonzero at init)
    assert c["params"] == 345 and c["nonzero_params"] == 122
    assert cost.metrics(c) == {"nonzero_params": 122, "macs": 852, "dense_macs": 8224, "speedup": c["speedup"],
                               "macs_input": "3x8x8"}


def test_the_mask_not_the_weights_decides_a_masked_layer():
    """A kept weight that happens to be 0 still costs its MACs on the pruned topology (the mask says so)."""
    net = Tiny()
    masks = {"a.weight": torch.ones(4, 3, 3, 3, dtype=torch.bool)}
    with torch.no_grad():
        net.a.weight.zero_()
    assert cost.count(net, masks, image=(3, 8, 8))["layers"]["a"]["macs"] == 108 * 64
    assert cost.count(net, None, image=(3, 8, 8))["layers"]["a"]["macs"] == 0


def test_counting_leaves_the_network_as_it_was():
    net = models.build("resnet20", 10, 0.25)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cost.count(net)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_resnet20_dense_macs_are_the_published_41_million():
    """Hand count, 32x32 input (He et al. 2016, option A): the first conv 3*16*9*32*32 = 442,368; stage 1,
    6 convs 16->16 at 32x32: 6 * 2,359,296; stages 2 and 3: one stride-2 conv (1,179,648) + 5 convs
    (2,359,296 each) at 16x16 and 8x8; fc 64*10 = 640. Total 40,551,040 (published: about 41 M, 0.27 M params)."""
    c = cost.count(models.build("resnet20", 10))
    assert c["dense_macs"] == 442_368 + 6 * 2_359_296 + 2 * (1_179_648 + 5 * 2_359_296) + 640 == 40_551_040
    assert c["macs"] == c["dense_macs"] and c["speedup"] == 1.0
    assert c["params"] == 268_336 + 10 + 1_376 == 269_722   # conv and fc weights + fc bias + batch norm (19 x 2 x C)


def test_resnet56_dense_macs_are_the_published_125_million():
    """The same count with 9 blocks per stage: 442,368 + 18 * 2,359,296 + 2 * (1,179,648 + 17 * 2,359,296) + 640."""
    c = cost.count(models.build("resnet56", 10))
    assert c["dense_macs"] == 442_368 + 18 * 2_359_296 + 2 * (1_179_648 + 17 * 2_359_296) + 640 == 125_485_696


def test_a_global_mask_at_90_percent_costs_a_tenth_of_the_weights_macs_per_layer():
    from pipeline.core import masks as M
    net = models.build("resnet20", 10, 0.25)
    mask = M.global_magnitude(models.prunable(net), 0.9)
    c = cost.count(net, mask)
    assert sum(v["kept"] for v in c["layers"].values()) == sum(int(m.sum()) for m in mask.values())
    assert c["macs"] == sum(int(mask[f"{n}.weight"].sum()) * v["positions"] for n, v in c["layers"].items())
    assert c["speedup"] > 1.0


def test_a_retrained_model_states_its_cost_and_its_file_in_metrics_and_mlflow(tmp_path, env):
    """The real stages: metrics.json holds the cost of the model file (recounted here from its mask), MLflow
    the same metrics, the per-layer breakdown as cost.json, and the model's embedded sha256 and DVC md5."""
    import hashlib
    import json

    from mlflow.tracking import MlflowClient

    from pipeline.infra import io

    from .conftest import run_stage, write_experiment
    exp = write_experiment(tmp_path, name="t", train={"epochs": 1}, lth={"rewind_epoch": 0}, datasets={"synthetic": {
        "source": "synthetic", "classes": 10, "train_size": 64, "val_size": 16, "test_size": 16}})
    d = {k: tmp_path / f"{k}.pt" for k in ("data", "mask")} | {"dense": tmp_path / "dense" / "model.pt",
                                                              "model": tmp_path / "ft" / "model.pt"}
    common = ("--experiment", exp, "--dataset", "synthetic", "--arch", "resnet20", "--seed", 0)
    for args in (("prepare", "--experiment", exp, "--dataset", "synthetic", "--out", d["data"]),
                 ("train_dense", *common, "--data", d["data"], "--out", d["dense"]),
                 ("prune", *common, "--sparsity", 0.9, "--dense", d["dense"], "--out", d["mask"]),
                 ("retrain", *common, "--sparsity", 0.9, "--method", "finetune", "--data", d["data"], "--dense",
                  d["dense"], "--snapshots", d["dense"].with_name("snapshots.pt"), "--mask", d["mask"],
                  "--out", d["model"])):
        p = run_stage(*args, env=env)
        assert p.returncode == 0, p.stderr[-2000:]
    net, blob = jobs.load_model(d["model"])
    want = cost.count(net, blob["masks"])
    got = json.loads(d["model"].with_name("metrics.json").read_text())
    assert {k: got[k] for k in cost.COLUMNS} == cost.metrics(want)
    assert got["macs"] < got["dense_macs"] == cost.count(net)["dense_macs"]
    dense = json.loads(d["dense"].with_name("metrics.json").read_text())
    assert dense["macs"] == dense["dense_macs"] == got["dense_macs"] and dense["speedup"] == 1.0
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id], "tags.stage = 'retrain'")
    assert run.data.metrics["macs"] == got["macs"] and run.data.metrics["speedup"] == pytest.approx(got["speedup"])
    assert run.data.tags["model_sha256"] == io.content_sha256(blob)      # the checksum load verified
    assert run.data.tags["model_md5"] == hashlib.md5(d["model"].read_bytes()).hexdigest()
    layers = json.loads(open(client.download_artifacts(run.info.run_id, "cost.json", str(tmp_path))).read())
    assert layers["layers"] == json.loads(json.dumps(want["layers"])) and "MACs" in layers["note"]
