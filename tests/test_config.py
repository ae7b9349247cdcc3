"""Bad configurations fail fast, each as its own `python -m pipeline` subprocess exactly as Snakemake / DVC
run a stage: exit status 2, the offending key named on stderr, no traceback, nothing computed or written
(no checkpoint folder, no output, not even an MLflow store). Also bad wildcards on a direct call, and the
positive side: params.yaml and every shipped experiment validate.

Cost: a config error exits before torch is imported (~0.2 s); the cases still run two at a time.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.config.layout import ROOT

from .conftest import cifar10_jpeg_dir, run_stage, write_experiment
from pipeline.config import loading
from pipeline import errors

FAST = 60.0     # seconds: generous on a shared 2-core machine; even one training epoch would show up


def image_tree(root: Path, train_classes, test_classes=None, per_class: int = 2) -> Path:
    """A minimal ImageFolder tree: root/{train,test}/<class>/<i>.png, 8x8 solid colour images."""
    from PIL import Image
    for split, classes in (("train", train_classes),
                           ("test", train_classes if test_classes is None else test_classes)):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (40 * c % 256, 10 * i, 0)).save(d / f"{i}.png")
    return root


# ------------------------------------------------------------------------------------------ bad cases

def _const(overrides):
    return lambda tmp: overrides


def _folder(classes, train=("a", "b", "c"), test=None, **extra):
    """An imagefolder dataset on a real tiny tree (3 class folders unless told otherwise)."""
    def make(tmp):
        tree = image_tree(tmp / "tree", train, test)
        return {"datasets": {"folder": {"source": "imagefolder", "classes": classes, "path": str(tree),
                                        "val_size": 2, **extra}}}
    return make


# id -> (tmp -> overrides merged into the smoke experiment, the key stderr must name)
CASES = {
    "grid-unknown-dataset": (_const({"grid": {"datasets": ["cifar11"]}}), "grid.datasets"),
    "grid-unknown-arch": (_const({"grid": {"archs": ["resnet18"]}}), "grid.archs"),
    "grid-unknown-method": (_const({"grid": {"methods": ["finetune", "magic"]}}), "grid.methods"),
    "unknown-source": (_const({"datasets": {"synthetic": {"source": "hdf5"}}}), "datasets.synthetic.source"),
    "sparsity-0": (_const({"grid": {"sparsities": [0]}}), "grid.sparsities"),
    "sparsity-1.0": (_const({"grid": {"sparsities": [0.5, 1.0]}}), "grid.sparsities"),
    "sparsity-negative": (_const({"grid": {"sparsities": [-0.1]}}), "grid.sparsities"),
    "train-epochs-0": (_const({"train": {"epochs": 0}}), "train.epochs"),
    "train-batch-size-0": (_const({"train": {"batch_size": 0}}), "train.batch_size"),
    "train-lr-negative": (_const({"train": {"lr": -0.1}}), "train.lr"),
    "distill-T-0": (_const({"distill": {"T": 0}}), "distill.T"),
    "distill-alpha-1.5": (_const({"distill": {"alpha": 1.5}}), "distill.alpha"),
    "full-band-at-0": (_const({"distill": {"full_band_at": 0}}), "distill.full_band_at"),
    "full-band-at-1.5": (_const({"distill": {"full_band_at": 1.5}}), "distill.full_band_at"),
    # the full band of a 32x32 centred spectrum is hypot(16, 16) = 22.6 bins: the schedule never rises to
    # it from a start beyond it
    "radius-start-beyond-full-band": (_const({"distill": {"radius_start": 23.0}}), "distill.radius_start"),
    # 2 retraining epochs with full_band_at 0.7: the full band would come at epoch ceil(1.4) = 2, after the end
    "full-band-never-reached": (_const({"retrain": {"epochs": 2}, "distill": {"full_band_at": 0.7}}),
                                "distill.full_band_at"),
    "imagefolder-missing-path": (lambda tmp: {"datasets": {"folder": {
        "source": "imagefolder", "classes": 3, "path": str(tmp / "no" / "such" / "folder")}}},
        "datasets.folder.path"),
    "imagefolder-class-count": (_folder(classes=4), "datasets.folder.classes"),
    "imagefolder-test-classes-differ": (_folder(classes=3, test=("a", "b")), "datasets.folder.path"),
    "imagefolder-val-not-below-train-size": (_folder(classes=3, train_size=4, val_size=4),
                                             "datasets.folder.val_size"),
    "typo-distill-temperature": (_const({"distill": {"temperature": 4.0}}), "distill.temperature"),
    "typo-top-level-trian": (_const({"trian": {"epochs": 1}}), "trian"),
    "wrong-type-epochs": (_const({"train": {"epochs": "ten"}}), "train.epochs"),
    "wrong-type-compile": (_const({"runtime": {"compile": "yes"}}), "runtime.compile"),
    "deterministic-maybe": (_const({"runtime": {"deterministic": "maybe"}}), "runtime.deterministic"),
    # lth trains from epoch k to the end of the 2 smoke epochs: k = 2 leaves nothing to train
    "lth-rewind-at-the-end": (_const({"train": {"save_epochs": [0, 2]}, "lth": {"rewind_epoch": 2}}),
                              "lth.rewind_epoch"),
    "lth-rewind-not-saved": (_const({"train": {"save_epochs": [0]}}), "lth.rewind_epoch"),
    "lth-init-without-epoch-0": (_const({"train": {"save_epochs": [1]}}), "train.save_epochs"),
    "bn-batches-0": (_const({"spectral": {"bn_batches": 0}}), "spectral.bn_batches"),
    "equivalence-margin-0": (_const({"report": {"equivalence_margin": 0}}), "report.equivalence_margin"),
    "chance-margin-negative": (_const({"report": {"chance_margin": -1}}), "report.chance_margin"),
    "alpha-one-half": (_const({"report": {"alpha": 0.5}}), "report.alpha"),
    "claim-unknown-method": (_const({"report": {"claims": [{"method": "fourier", "baseline": "kd"}]}}),
                             "report.claims[0].method"),
    "claim-against-itself": (_const({"report": {"claims": [{"method": "kd", "baseline": "finetune"},
                                                           {"method": "kd", "baseline": "kd"}]}}),
                             "report.claims[1].baseline"),
    "claim-direction": (_const({"report": {"claims": [{"method": "kd", "baseline": "finetune",
                                                       "direction": "higher"}]}}), "report.claims[0].direction"),
    # the smoke grid has sparsity 0.9 only
    "claim-sparsity-not-in-grid": (_const({"report": {"claims": [{"method": "kd", "baseline": "finetune",
                                                                  "sparsities": [0.5]}]}}),
                                   "report.claims[0].sparsities"),
    "claim-sparsities-and-min": (_const({"report": {"claims": [{"method": "kd", "baseline": "finetune",
                                                                "sparsities": [0.9], "min_sparsity": 0.8}]}}),
                                 "report.claims[0].sparsities"),
    "claim-declared-twice": (_const({"report": {"claims": [{"method": "kd", "baseline": "finetune"},
                                                           {"method": "kd", "baseline": "finetune",
                                                            "direction": "worse"}]}}), "report.claims[1]"),
    "claim-typo-key": (_const({"report": {"claims": [{"method": "kd", "baseline": "finetune", "sparsity": 0.9}]}}),
                       "report.claims[0].sparsity"),
}
# As subprocesses: 16 distinct cases, 3 of them through a real training stage with plausible arguments.
# The CLI maps a ConfigError to exit 2 the same way whatever the key, so every case is ALSO checked
# in-process (test_bad_config_in_process) and only these pay ~3 s of CPU for a subprocess.
AS_VALIDATE = ("grid-unknown-dataset", "grid-unknown-method", "unknown-source", "sparsity-0", "sparsity-1.0",
               "train-epochs-0", "distill-T-0", "full-band-at-0", "radius-start-beyond-full-band",
               "imagefolder-missing-path", "imagefolder-class-count", "wrong-type-epochs",
               "wrong-type-compile")
THROUGH_TRAIN = ("grid-unknown-arch", "distill-alpha-1.5", "typo-top-level-trian")


def _experiment_args(case):
    make, _ = CASES[case]
    return lambda tmp: ["--experiment", write_experiment(tmp, name="t", **make(tmp))]


def _dense_args(tmp: Path) -> list:
    return ["--dataset", "synthetic", "--arch", "resnet20", "--seed", 0, "--data", tmp / "data.pt",
            "--out", tmp / "out" / "model.pt"]


def _name_mismatch(tmp: Path) -> list:
    other = write_experiment(tmp, name="t").rename(tmp / "other.yaml")     # name: t, in other.yaml
    return ["--experiment", other, *_dense_args(tmp)]


def _direct_call(stage, **given):
    """A direct call (no Snakemake wildcard constraint in between) with one bad wildcard, a valid experiment."""
    def build(tmp: Path) -> list:
        defaults = {"dataset": "synthetic", "arch": "resnet20", "seed": 0, "sparsity": 0.9, "method": "finetune",
                    "data": tmp / "data.pt", "dense": tmp / "dense.pt", "snapshots": tmp / "snapshots.pt",
                    "mask": tmp / "mask.pt", "out": tmp / "out" / "x.pt"}
        wanted = {"prepare": ["dataset", "out"],
                  "prune": ["dataset", "arch", "seed", "sparsity", "dense", "out"],
                  "retrain": ["dataset", "arch", "seed", "sparsity", "method", "data", "dense", "snapshots",
                              "mask", "out"]}[stage]
        return ["--experiment", write_experiment(tmp, name="t"),
                *[x for a in wanted for x in (f"--{a}", given.get(a, defaults[a]))]]
    return build


# (test id, stage, tmp -> the arguments after the stage, text stderr must hold: the offending key)
BAD = [(f"{c}-validate", "validate", _experiment_args(c), CASES[c][1]) for c in AS_VALIDATE] + [
    (f"{c}-train_dense", "train_dense", lambda tmp, c=c: _experiment_args(c)(tmp) + _dense_args(tmp), CASES[c][1])
    for c in THROUGH_TRAIN] + [
    ("experiment-name-differs-from-file-name", "train_dense", _name_mismatch, "name = 't'"),
    # --experiment takes a name matched against configs/ only: a path (even to a valid file) is refused
    ("experiment-given-as-a-path", "train_dense", lambda tmp: ["--experiment", str(write_experiment(tmp, "evil")),
                                                               *_dense_args(tmp)], "must be an experiment's name"),
    ("experiment-climbing-out-of-configs", "validate", lambda tmp: ["--experiment", "../configs/smoke"],
     "--experiment = '../configs/smoke': must be an experiment's name (letters, digits, - and _), not a path"),
    ("direct-prune-sparsity-1.5", "prune", _direct_call("prune", sparsity=1.5), "sparsity = 1.5"),
    ("direct-retrain-unknown-method", "retrain", _direct_call("retrain", method="magic"), "method = 'magic'"),
]


def _launch(stage, build, tmp: Path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlruns.db'}",
           "PIPELINE_RUNS": str(tmp / "runs"), "PYTHONHASHSEED": "0"}
    argv = build(tmp)
    t0 = time.time()
    proc = run_stage(stage, *argv, env=env, timeout=300)
    return proc, time.time() - t0


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """Every bad case as its own subprocess, two at a time; {test id: (its folder, future of (proc, s))}."""
    pool = ThreadPoolExecutor(max_workers=2)
    out = {}
    for tid, stage, build, _ in BAD:
        tmp = tmp_path_factory.mktemp(tid)
        out[tid] = (tmp, pool.submit(_launch, stage, build, tmp))
    yield out
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("tid,key", [(b[0], b[3]) for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_is_refused(tid, key, refusals):
    tmp, future = refusals[tid]
    proc, elapsed = future.result()
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert "config error" in proc.stderr and key in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert elapsed < FAST, f"took {elapsed:.1f} s to refuse a bad config"
    # nothing computed: no checkpoint folder, no declared output, no MLflow store
    assert not (tmp / "runs").exists(), sorted((tmp / "runs").rglob("*"))
    assert not (tmp / "out").exists(), sorted((tmp / "out").rglob("*"))
    assert not (tmp / "mlruns.db").exists()
    if tid == "experiment-name-differs-from-file-name":
        assert "'other'" in proc.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_in_process(case, tmp_path):
    """Every case through config.load: a ConfigError naming the key; and the same experiment without the bad
    override loads (so the refusal is for that key and nothing else)."""
    make, key = CASES[case]
    with pytest.raises(errors.ConfigError) as e:
        loading.load(write_experiment(tmp_path, name="t", **make(tmp_path)))
    assert key in str(e.value)
    good = _folder(classes=3)(tmp_path / "ok") if case.startswith("imagefolder") else {}
    loading.load(write_experiment(tmp_path, name="t", **good))


# ------------------------------------------------------------------------------------------- positive

EXPERIMENTS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", [None, *EXPERIMENTS], ids=["params.yaml", *(p.stem for p in EXPERIMENTS)])
def test_shipped_configs_validate(path, monkeypatch):
    if path is not None and path.stem in ("cifar10_jpeg", "cifar10_gpu"):
        # the validator checks that imagefolder paths exist: skipped without the copy, a failure on CI
        monkeypatch.setenv("CIFAR10_JPEG_DIR", str(cifar10_jpeg_dir()))
    cfg = loading.load(None if path is None else path.stem)
    assert cfg.name == ("paper" if path is None else path.stem)
    assert all(ds in cfg.datasets for ds in cfg.grid.datasets)
