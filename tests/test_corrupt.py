"""Corrupt, foreign, mismatched and tampered input files: every stage answers exit 3 with a message naming
the file, never a bare traceback, and writes no output. The real inputs (a tiny synthetic dataset, a dense
model trained for one epoch, its mask) are built once per module by the stages themselves; the damaged
copies are derived from them."""
from __future__ import annotations

import contextlib
import hashlib
import io as io_
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from pipeline.core import data as D, masks as M, models, train as T
from pipeline.infra import io
from pipeline.config.layout import digest

from .conftest import cli, run_stage, write_experiment
from pipeline.config import loading

SEED = 0


def _env(folder: Path, store: Path | None = None) -> dict:
    """Checkpoints under `folder`; the MLflow store `store` (default: a fresh one in `folder`)."""
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store or folder / 'mlruns.db'}",
            "PIPELINE_RUNS": str(folder / "runs"), "PYTHONHASHSEED": "0"}


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Real inputs from the stages: data.pt (+ .json), dense/model.pt (+ snapshots.pt), prune/mask.pt."""
    tmp = tmp_path_factory.mktemp("real")
    experiment = write_experiment(tmp, name="t", datasets={"synthetic": {
        "source": "synthetic", "classes": 10, "train_size": 160, "val_size": 32, "test_size": 32}},
        train={"epochs": 1}, lth={"rewind_epoch": 0})     # one dense epoch: lth rewinds to epoch 0
    env = _env(tmp)
    f = {"experiment": experiment, "data": tmp / "data.pt", "dense": tmp / "dense" / "model.pt",
         "snapshots": tmp / "dense" / "snapshots.pt", "mask": tmp / "prune" / "mask.pt"}
    _ok(run_stage("prepare", "--experiment", experiment, "--dataset", "synthetic", "--out", f["data"], env=env))
    _ok(run_stage("train_dense", "--experiment", experiment, "--dataset", "synthetic", "--arch", "resnet20",
                  "--seed", SEED, "--data", f["data"], "--out", f["dense"], env=env))
    _ok(run_stage("prune", "--experiment", experiment, "--dataset", "synthetic", "--arch", "resnet20", "--seed", SEED,
                  "--sparsity", 0.9, "--dense", f["dense"], "--out", f["mask"], env=env))
    f["cfg"] = loading.load(experiment)
    f["store"] = tmp / "mlruns.db"      # cases share it: a fresh store costs ~3 s of CPU to create
    return f


# ------------------------------------------------------------------------------- damaged inputs, built

def _truncate(src: Path, dst: Path, keep: float = 0.5) -> Path:
    b = src.read_bytes()
    dst.write_bytes(b[: int(len(b) * keep)])
    return dst


def _dense_job_checkpoint(real, runs: Path) -> Path:
    """Where train_dense for (synthetic, resnet20, SEED) on real['data'] checkpoints under `runs`
    (stages.train_dense's key: the job's parameters and the data checksum)."""
    cfg = real["cfg"]
    sha = io.read_json(str(real["data"]) + ".json")["sha256"]
    key = digest({"stage": "dense", "dataset": "synthetic", "arch": "resnet20", "seed": SEED, "data": sha,
                  **cfg.section("model", "train", "runtime")})
    return runs / cfg.name / "checkpoints" / f"dense-{key}.pt"


def _edited(src: Path, kind: str, dst: Path, **fields) -> Path:
    """A copy of the pipeline file `src` with `fields` replaced, written by the pipeline (a valid checksum)."""
    io.save({**io.load(src, kind), **fields}, dst)
    return dst


def _vgg_mask(path: Path) -> Path:
    net = models.build("vgg16_bn", 10, 0.25)
    io.save({"kind": "mask", "arch": "vgg16_bn", "sparsity": 0.9,
             "masks": M.global_magnitude(models.prunable(net), 0.9)}, path)
    return path


def _dense_args(real, tmp, data=None):
    return ["train_dense", "--experiment", real["experiment"], "--dataset", "synthetic", "--arch", "resnet20",
            "--seed", SEED, "--data", data or real["data"], "--out", tmp / "out" / "model.pt"]


def _prune_args(real, tmp, dense):
    return ["prune", "--experiment", real["experiment"], "--dataset", "synthetic", "--arch", "resnet20", "--seed", SEED,
            "--sparsity", 0.9, "--dense", dense, "--out", tmp / "out" / "mask.pt"]


def _model_args(real, tmp, dense):
    """A stage reading a model file: retrain (it reads every input before opening its MLflow run)."""
    return _retrain_args(real, tmp, dense=dense)


def _retrain_args(real, tmp, mask=None, dense=None):
    return ["retrain", "--experiment", real["experiment"], "--dataset", "synthetic", "--arch", "resnet20",
            "--seed", SEED, "--sparsity", 0.9, "--method", "finetune", "--data", real["data"],
            "--dense", dense or real["dense"], "--snapshots", real["snapshots"], "--mask", mask or real["mask"],
            "--out", tmp / "out" / "model.pt"]


def case_truncated_model(real, tmp):
    bad = _truncate(real["dense"], tmp / "truncated.pt")
    return _prune_args(real, tmp, bad), bad, "not a readable model file"


def case_truncated_checkpoint(real, tmp):
    ckpt = _dense_job_checkpoint(real, tmp / "runs")
    ckpt.parent.mkdir(parents=True)
    _truncate(real["dense"], ckpt)
    return _dense_args(real, tmp), ckpt, "not a readable checkpoint file"


def case_checkpoint_of_other_parameters(real, tmp):
    ckpt = _dense_job_checkpoint(real, tmp / "runs")
    io.save({"kind": "checkpoint", "key": "0123456789ab", "round": 0, "epoch": 1, "model": {}, "optimizer": {},
             "rng": {}, "history": [], "masks": None, "snapshots": {}, "run_id": "f" * 32}, ckpt)
    return _dense_args(real, tmp), ckpt, "checkpoint belongs to other parameters"


def case_foreign_list(real, tmp):
    bad = tmp / "list.pt"
    torch.save([1, 2, 3], bad)
    return _model_args(real, tmp, bad), bad, "expected a model file, found 'list'"


def case_mask_given_as_model(real, tmp):
    return _model_args(real, tmp, real["mask"]), real["mask"], "expected a model file, found 'mask'"


def case_model_given_as_mask(real, tmp):
    return _retrain_args(real, tmp, mask=real["dense"]), real["dense"], "expected a mask file, found 'model'"


def case_mask_of_another_model(real, tmp):
    bad = _vgg_mask(tmp / "vgg_mask.pt")
    return _retrain_args(real, tmp, mask=bad), bad, "mask file has arch = 'vgg16_bn', this job expects 'resnet20'"


def case_mask_labelled_resnet20_holding_another_models_masks(real, tmp):
    vgg = io.load(_vgg_mask(tmp / "vgg_mask.pt"), "mask")["masks"]
    bad = _edited(real["mask"], "mask", tmp / "mask_bad.pt", masks=vgg)
    return _retrain_args(real, tmp, mask=bad), bad, "mask does not fit this model"


def case_model_with_masks_of_another_model(real, tmp):
    vgg = io.load(_vgg_mask(tmp / "vgg_mask.pt"), "mask")["masks"]
    bad = _edited(real["dense"], "model", tmp / "model_bad_masks.pt", masks=vgg)
    return _model_args(real, tmp, bad), bad, "mask does not fit this model"


def case_model_of_another_width(real, tmp):
    bad = _edited(real["dense"], "model", tmp / "model_width.pt", width=0.5)
    return _model_args(real, tmp, bad), bad, "model file has width = 0.5, this job expects 0.25"


def case_weights_of_another_width(real, tmp):
    x05 = models.build("resnet20", 10, 0.5).state_dict()        # labelled 0.25, holding x0.5 weights
    bad = _edited(real["dense"], "model", tmp / "model_weights.pt", state=x05)
    return _model_args(real, tmp, bad), bad, "weights do not fit resnet20"


def case_dataset_checksum_mismatch(real, tmp):
    bad = tmp / "data.pt"
    b = bytearray(real["data"].read_bytes())
    b[len(b) // 2] ^= 0xFF                             # one flipped byte inside the image tensors
    bad.write_bytes(bytes(b))
    shutil.copy(str(real["data"]) + ".json", str(bad) + ".json")
    return _dense_args(real, tmp, data=bad), bad, "does not match"


def case_unreadable_image(real, tmp):
    from PIL import Image
    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp / "tree" / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (32, 32), (100 * (c == "a"), 7 * i, 50)).save(d / f"{i}.png")
    bad = tmp / "tree" / "train" / "b" / "1.png"
    _truncate(bad, bad, keep=0.3)
    experiment = write_experiment(tmp, name="t", datasets={"folder": {
        "source": "imagefolder", "classes": 2, "path": str(tmp / "tree"), "val_size": 1}})
    return ["prepare", "--experiment", experiment, "--dataset", "folder", "--out", tmp / "out" / "folder.pt"], bad, \
        "not a readable image"


def _flip_inside(src: Path, dst: Path, tensor: torch.Tensor) -> Path:
    """A copy of `src` with one bit flipped inside the stored bytes of `tensor` (the file stays readable)."""
    b = bytearray(src.read_bytes())
    at = bytes(b).find(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    assert at >= 0, "tensor bytes not found in the file"
    b[at + 3] ^= 0x40                                  # a high exponent bit of a float32: -3e37-like weights
    dst.write_bytes(bytes(b))
    return dst


def case_model_with_one_bit_flipped(real, tmp):
    bad = _flip_inside(real["dense"], tmp / "flipped.pt", io.load(real["dense"], "model")["state"]["conv.weight"])
    return _prune_args(real, tmp, bad), bad, "checksum"


def case_snapshots_with_one_bit_flipped(real, tmp):
    src = real["snapshots"]
    bad = _flip_inside(src, tmp / "snapshots.pt", io.load(src, "snapshots")["snapshots"][0]["conv.weight"])
    args = _retrain_args(real, tmp)
    args[args.index("--snapshots") + 1] = bad
    return args, bad, "checksum"


def case_mask_with_one_bit_flipped(real, tmp):
    blob = io.load(real["mask"], "mask")
    name = max(blob["masks"], key=lambda n: blob["masks"][n].numel())
    b = bytearray(real["mask"].read_bytes())
    raw = blob["masks"][name].view(torch.uint8).numpy().tobytes()
    at = bytes(b).find(raw)
    b[at + len(raw) // 2] ^= 0x01                    # one kept weight dropped, or one pruned weight revived
    bad = tmp / "mask.pt"
    bad.write_bytes(bytes(b))
    return _retrain_args(real, tmp, mask=bad), bad, "checksum"


def case_checkpoint_with_one_bit_flipped(real, tmp):
    ckpt = _dense_job_checkpoint(real, tmp / "runs")
    ckpt.parent.mkdir(parents=True)
    blob = io.load(real["dense"], "model")
    io.save({"kind": "checkpoint", "key": ckpt.stem.split("-", 1)[1], "round": 0, "epoch": 1, "model": blob["state"],
             "optimizer": {}, "rng": {}, "history": [], "masks": None, "snapshots": {}, "run_id": None}, ckpt)
    _flip_inside(ckpt, ckpt, blob["state"]["conv.weight"])
    return _dense_args(real, tmp), ckpt, "checksum"


def case_model_without_checksum(real, tmp):
    blob = io.load(real["dense"], "model")            # a model file as written before checksums
    bad = tmp / "old.pt"
    torch.save(blob, bad)
    return _prune_args(real, tmp, bad), bad, "carries no checksum"


def case_prune_arch_differs_from_the_model(real, tmp):
    args = _prune_args(real, tmp, real["dense"])
    args[args.index("--arch") + 1] = "resnet56"
    return args, real["dense"], "model file has arch = 'resnet20', this job expects 'resnet56'"


def case_retrain_arch_differs_from_the_model(real, tmp):
    args = _retrain_args(real, tmp)
    args[args.index("--arch") + 1] = "resnet56"
    return args, real["dense"], "model file has arch = 'resnet20', this job expects 'resnet56'"


def case_dense_model_of_other_parameters(real, tmp):
    # written by a dense job with other train/model/runtime parameters
    bad = _edited(real["dense"], "model", tmp / "other.pt", job="0123456789ab")
    return _model_args(real, tmp, bad), bad, "model file has job = '0123456789ab'"


def case_mask_of_another_dense_model(real, tmp):
    bad = _edited(real["mask"], "mask", tmp / "mask_other.pt", dense_sha256="0" * 64)
    return _retrain_args(real, tmp, mask=bad), bad, "mask file has dense_sha256 = '000"


def case_mask_of_other_prune_parameters(real, tmp):
    bad = _edited(real["mask"], "mask", tmp / "mask_exclude.pt", job="0123456789ab")   # e.g. another prune.exclude
    return _retrain_args(real, tmp, mask=bad), bad, "mask file has job = '0123456789ab'"


def case_snapshots_of_another_dense_job(real, tmp):
    bad = _edited(real["snapshots"], "snapshots", tmp / "snapshots.pt", job="0123456789ab")
    args = _retrain_args(real, tmp)
    args[args.index("--snapshots") + 1] = bad
    return args, bad, "snapshots file has job = '0123456789ab'"


def _dataset_with_description(real, tmp, text: bytes):
    data = tmp / "data.pt"
    shutil.copy(real["data"], data)
    desc = Path(f"{data}.json")
    desc.write_bytes(text)
    return _dense_args(real, tmp, data=data), desc


def case_dataset_description_random_bytes(real, tmp):
    args, desc = _dataset_with_description(real, tmp, bytes(range(256)) * 4)
    return args, desc, "not valid JSON"


def case_dataset_description_a_list(real, tmp):
    args, desc = _dataset_with_description(real, tmp, b"[]")
    return args, desc, "expected a JSON object, found list"


def case_dataset_description_sha256_not_a_string(real, tmp):
    io.write_json(tmp / "five.json", {"sha256": 5})          # with its digest: the value itself is refused
    args, desc = _dataset_with_description(real, tmp, (tmp / "five.json").read_bytes())
    return args, desc, "sha256 = 5: must be a sha256 checksum"


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}
# Each stage family as a real subprocess; the other cases call the same CLI entry point (`main`) in this
# process, which returns the exit status a subprocess would (any other exception fails the test as a
# traceback would): a subprocess costs ~5 s of CPU, mostly importing torch.
SUBPROCESS = ("truncated_model", "truncated_checkpoint", "checkpoint_of_other_parameters",
              "mask_of_another_model", "dataset_checksum_mismatch", "unreadable_image", "model_with_one_bit_flipped")


def _launch(real, fn, tmp: Path):
    argv, named, expect = fn(real, tmp)
    before = named.read_bytes()
    # own checkpoint folder; the shared MLflow store, except where the test checks no store is touched
    store = None if fn is case_checkpoint_of_other_parameters else real["store"]
    proc = run_stage(*argv, env=_env(tmp, store), timeout=300)
    return proc.returncode, proc.stderr, named, expect, before


def _in_process(real, fn, tmp: Path, monkeypatch):
    from pipeline.__main__ import main
    argv, named, expect = fn(real, tmp)
    before = named.read_bytes()
    argv, env = cli(argv, _env(tmp, real["store"]))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    err = io_.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
    finally:                                  # the training stages set these process-wide (pipeline.train)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
    return code, err.getvalue(), named, expect, before


@pytest.fixture(scope="module")
def answers(real, tmp_path_factory):
    """The SUBPROCESS cases, each a stage subprocess, two at a time; {case: (folder, future)}."""
    pool = ThreadPoolExecutor(max_workers=2)
    out = {}
    for name in SUBPROCESS:
        tmp = tmp_path_factory.mktemp(name)
        out[name] = (tmp, pool.submit(_launch, real, CASES[name], tmp))
    yield out
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_file_exits_3_naming_it(case, real, answers, tmp_path, monkeypatch):
    if case in SUBPROCESS:
        tmp, future = answers[case]
        code, stderr, named, expect, before = future.result()
    else:
        tmp = tmp_path
        code, stderr, named, expect, before = _in_process(real, CASES[case], tmp, monkeypatch)
    assert code == 3, f"exit {code}\nstderr: {stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith("input error: ")]   # MLflow may log above it
    assert str(named) in line and expect in line, stderr
    assert not (tmp / "out").exists(), sorted((tmp / "out").rglob("*"))     # no output, not even a partial one
    assert named.read_bytes() == before                                      # the bad file is left as it was
    if case == "checkpoint_of_other_parameters":
        # refused before the job opens (and marks FAILED) the MLflow run the foreign checkpoint names
        assert not (tmp / "mlruns.db").exists()


# ------------------------------------------------------------------------------------------ in process


def test_checkpoint_of_other_parameters_is_refused_not_overwritten(real, tmp_path):
    """train.run: a checkpoint whose key differs is refused (io.CorruptFile), its bytes untouched; the same
    key resumes from it."""
    blob = D.load(real["data"])
    rt = T.Runtime(device=torch.device("cpu"), amp=False, channels_last=False, compile=False)
    data = T.Data(blob, rt.device)

    def recipe():
        return T.Recipe([T.Round(1, 0.01, [], 0.1)], batch_size=64)

    ckpt = tmp_path / "ck.pt"
    T.run(recipe(), models.build("resnet20", 10, 0.25), data, rt, 0, ckpt, "key-a")
    written = ckpt.read_bytes()
    assert torch.load(ckpt, weights_only=True)["key"] == "key-a"
    with pytest.raises(io.CorruptFile, match="other parameters") as e:
        T.run(recipe(), models.build("resnet20", 10, 0.25), data, rt, 0, ckpt, "key-b")
    assert str(ckpt) in str(e.value)
    with pytest.raises(io.CorruptFile, match="other parameters"):
        T.checkpoint_run_id(ckpt, "key-b")
    assert ckpt.read_bytes() == written
    out = T.run(recipe(), models.build("resnet20", 10, 0.25), data, rt, 0, ckpt, "key-a")   # same key: resumes
    assert out.epochs == 1 and len(out.history) == 1


def test_dataset_description_missing_or_not_json(real, tmp_path):
    data = tmp_path / "data.pt"
    shutil.copy(real["data"], data)
    with pytest.raises(io.CorruptFile, match="file is missing") as e:
        D.load(data)
    assert f"{data}.json" in str(e.value)
    Path(f"{data}.json").write_text("{not json")
    with pytest.raises(io.CorruptFile, match="not valid JSON"):
        D.load(data)
    shutil.copy(str(real["data"]) + ".json", f"{data}.json")
    assert D.load(data)["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()


def test_io_load_names_the_file_for_every_kind_of_damage(real, tmp_path):
    for keep in (0.0, 0.01, 0.5, 0.99):
        bad = _truncate(real["dense"], tmp_path / f"cut{keep}.pt", keep)
        with pytest.raises(io.CorruptFile, match="not a readable model file") as e:
            io.load(bad, "model")
        assert str(bad) in str(e.value)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(io.CorruptFile, match=str(text)):
        io.load(text, "model")
    with pytest.raises(io.CorruptFile, match="file is missing"):
        io.load(tmp_path / "absent.pt", "model")
    with pytest.raises(io.CorruptFile, match="found 'dataset'"):
        io.load(real["data"], "model")
