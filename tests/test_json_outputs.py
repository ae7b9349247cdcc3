"""Every JSON output we read is checked: it carries the digest of its content (like the binary outputs'
checksums), every number in it is finite, and each value is what it stands for (accuracies and sparsities in
[0, 1], counts non-negative integers, seconds non-negative). Anything else: exit 3 naming the file and the
key, never a traceback."""
from __future__ import annotations

import json
import re

import pytest

from pipeline.infra import io
from pipeline.core import masks as M
from pipeline.errors import CorruptFile

from .test_integrity import _main, reported  # noqa: F401 - the fixture: a report of a fake grid

GOOD = {"val_acc": 0.5, "test_acc": 0.652, "nonzero_weights": 10, "weights": 100, "epochs": 2,
        "train_seconds": 1.0, "hardware": "cpu:test"}


def test_a_json_output_carries_its_digest_and_reads_back_without_it(tmp_path):
    path = tmp_path / "metrics.json"
    io.write_json(path, GOOD)
    raw = json.loads(path.read_text())
    assert raw.pop(io.DIGEST) == io.json_sha256(GOOD) and raw == GOOD
    assert io.read_json(path, schema=io.METRICS) == GOOD
    io.write_json(path, {**GOOD, io.DIGEST: "stale"})              # a digest passed in is recomputed
    assert io.read_json(path) == GOOD


def test_a_plausible_hand_edit_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "metrics.json"
    io.write_json(path, GOOD)
    path.write_text(path.read_text().replace("0.652", "0.912"))
    with pytest.raises(CorruptFile, match=f"^{path}: content_sha256 [0-9a-f]{{12}} does not match the "
                                          f"{io.json_sha256(GOOD)[:12]} it was written with"):
        io.read_json(path)
    path.write_text(json.dumps(GOOD))                             # written before digests, or by hand
    with pytest.raises(CorruptFile, match=f"^{path}: carries no content_sha256"):
        io.read_json(path)


CASES = [("test_acc", "high", "must be a number in [0, 1]"),            # the three the issue reproduced
         ("test_acc", 7.5, "must be a number in [0, 1]"),
         ("val_acc", float("nan"), "must be a finite number"),
         ("train_seconds", float("inf"), "must be a finite number"),
         ("train_seconds", -1.0, "must be a non-negative number"),
         ("epochs", 2.5, "must be a non-negative integer"),
         ("weights", -100, "must be a non-negative integer"),
         ("nonzero_weights", True, "must be a non-negative integer"),
         ("hardware", 3, "must be a string"),
         ("macs", 1.5e6, "must be a non-negative integer"),              # cost.py's columns
         ("speedup", 0.5, "must be a number >= 1 (dense MACs / nonzero MACs)")]


@pytest.mark.parametrize("key,value,says", CASES)
def test_metrics_values_out_of_their_range_are_refused_naming_file_and_key(key, value, says, tmp_path):
    path = tmp_path / "metrics.json"
    io.write_json(path, {**GOOD, key: value})                      # digest intact: the value itself is checked
    with pytest.raises(CorruptFile, match="^" + re.escape(f"{path}: {key} = {value!r}: {says}")):
        io.read_json(path, schema=io.METRICS)


def test_report_exits_3_on_a_bad_metrics_value_never_a_traceback(reported):
    experiment, runs, before = reported
    bad = runs / "retrain/synthetic/resnet20/seed0/s0.9/finetune/metrics.json"
    for key, value, says in CASES[:3]:
        io.write_json(bad, {**GOOD, key: value})
        code, err = _main(["report", "--experiment", experiment])
        assert code == 3, err
        (line,) = [x for x in err.splitlines() if x.startswith("input error: ")]
        assert line.startswith(f"input error: {bad}: {key} = {value!r}: {says}"), err
        assert "Traceback" not in err


@pytest.mark.parametrize("change,where,says", [
    ({"low_acc": [0.5, 1.5]}, "low_acc[1] = 1.5", "must be a number in [0, 1]"),
    ({"radii": [1.0, -2.0]}, "radii[1] = -2.0", 'must be a non-negative number or "full"'),
    ({"high_acc": [0.5]}, "high_acc = [0.5]", "must be a list of 2 values (one per radius)"),
    ({"variants": {"random_mask": {"radii": [1.0, "full"], "low_acc": [0.1, "x"]}}},
     "variants.random_mask.low_acc[1] = 'x'", "must be a number in [0, 1]"),
    ({"heatmap_seconds": None}, "heatmap_seconds = None", "must be a non-negative number"),
    ({"low_kappa": [0.5, -1.5]}, "low_kappa[1] = -1.5", "must be a number in [-1, 1] (Cohen's kappa)"),
    ({"variants": {"matched_mask": {"match": {"sparsity": 1.2}}}}, "variants.matched_mask.match.sparsity = 1.2",
     "must be a number in [0, 1]"),
])
def test_spectral_json_values_are_checked(change, where, says, tmp_path):
    path = tmp_path / "pruned.json"
    io.write_json(path, {"radii": [1.0, "full"], "filter": "circle", "low_acc": [0.5, 0.9],
                         "high_acc": [0.4, 0.9], "heatmap_seconds": 0.1, **change})
    with pytest.raises(CorruptFile, match="^" + re.escape(f"{path}: {where}: {says}; rerun the stage")):
        io.read_json(path, schema=io.SPECTRAL)


def test_mask_stats_and_dataset_description_are_checked(tmp_path):
    import torch
    path = tmp_path / "mask.json"
    st = M.stats({"a": torch.tensor([1, 0, 0, 0]), "b": torch.tensor([1, 1])})
    io.write_json(path, st)
    assert io.read_json(path, schema=io.MASK_STATS) == {"sparsity": 0.5, "kept": 3, "total": 6,
                                                         "layers": {"a": 0.75, "b": 0.0}}
    io.write_json(path, {**st, "layers": {"a": 0.75, "b": -0.5}})
    with pytest.raises(CorruptFile, match=r"layers.b = -0.5: must be a number in \[0, 1\]"):
        io.read_json(path, schema=io.MASK_STATS)
    desc = tmp_path / "data.pt.json"
    io.write_json(desc, {"sha256": "0" * 64, "sizes": {"train": 10, "test": -1}})
    with pytest.raises(CorruptFile, match="sizes.test = -1: must be a non-negative integer"):
        io.read_json(desc, schema=io.DATASET)
