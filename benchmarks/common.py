"""What every benchmark shares: sizes, rows and their table, timing, the machine, fake datasets.

Torch and the pipeline's core only (no MLflow, Snakemake or DVC), so that benchmarks/gpu_check.py runs on a
bare GPU image.
"""
from __future__ import annotations

import copy
import datetime
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.infra import io
from pipeline.core import masks as M
from pipeline.config.layout import ROOT

CIFAR_TRAIN, CIFAR_VAL, CIFAR_TEST = 45_000, 5_000, 10_000   # the suite's CIFAR-10 split (val_size 5000)
SPARSITY = 0.9
KD_T, KD_ALPHA, RADIUS = 4.0, 0.9, 8.0                       # params.yaml distill defaults; a mid radius


@dataclass(frozen=True)
class Sizes:
    width: float          # resnet20 channel multiplier
    batch: int
    steps: int            # timed steps per repetition (throughput rows)
    reps: int             # repetitions (median)
    warmup: int           # untimed steps first
    path_steps: int       # timed steps per repetition (device/precision rows)
    test_images: int      # band-limited evaluation
    log_calls: int        # MLflow calls timed
    smoke: tuple          # (train, val, test, width, batch, steps or 0 = one epoch) of the smoke-sized job
    cifar: tuple          # (train, val, test, width, batch, steps) of the CIFAR-sized memory job
    compile_timeout: float
    dag: bool             # time the no-op reruns of Snakemake and DVC


FULL = Sizes(width=1.0, batch=128, steps=10, reps=3, warmup=2, path_steps=6, test_images=500, log_calls=10,
             smoke=(1024, 128, 256, 0.25, 64, 0), cifar=(CIFAR_TRAIN, CIFAR_VAL, CIFAR_TEST, 1.0, 128, 4),
             compile_timeout=240, dag=True)
QUICK = Sizes(width=0.125, batch=16, steps=2, reps=3, warmup=1, path_steps=2, test_images=32, log_calls=3,
              smoke=(1024, 128, 256, 0.25, 64, 2), cifar=(4_500, 500, 1_000, 0.125, 16, 2),
              compile_timeout=0, dag=False)


@dataclass
class Row:
    name: str
    ratio: float | None          # None: not measured (see detail)
    target: str
    ok: bool | None
    detail: str

    def cells(self) -> list[str]:
        r = "n/a" if self.ratio is None or not math.isfinite(self.ratio) else f"{self.ratio:.3f}"
        ok = {True: "ok", False: "MISS", None: "-"}[self.ok]
        return [self.name, r, self.target, ok, self.detail]


def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


T0 = time.perf_counter()

# ------------------------------------------------------------------------------------------- helpers


def machine() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    load = "/".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return [f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
            f"machine: {cpu}, {cores} cores available ({os.cpu_count()} online), {platform.system()} "
            f"{platform.release()}",
            f"python {platform.python_version()}, torch {torch.__version__}, CUDA device: {gpu}",
            f"load average (1/5/15 min) at start: {load}"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCK = time.perf_counter          # --clock cpu: time.process_time (this process's CPU time)


def interleaved(fns: dict, reps: int, device: torch.device) -> dict:
    """Median seconds of each callable over `reps` rounds; within a round all run, in rotating order."""
    names, times = list(fns), {k: [] for k in fns}
    for r in range(reps):
        for k in names[r % len(names):] + names[:r % len(names)]:
            sync(device)
            t0 = CLOCK()
            fns[k]()
            sync(device)
            times[k].append(CLOCK() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def suite_epoch(T, net, masks: dict | None, loss, batch: int, rt):
    """A copy of `net` on the device with its SGD (and `masks` applied), trained by the suite's own loop,
    `T.train_epoch`, as `train.run` calls it. Returns (model, run(data, g) -> one epoch's metrics). `T` is the train
    module: benchmarks/ab.py passes another revision's (before the packages: `_weights`, `_epoch`)."""
    masked_weights = getattr(T, "masked_weights", None) or T._weights
    train_epoch = getattr(T, "train_epoch", None) or T._epoch
    model = T.to_device(copy.deepcopy(net), rt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    weights = None if masks is None else masked_weights(model, masks)
    if weights is not None:
        M.apply(weights, masks)
    recipe = T.Recipe([], loss=loss, batch_size=batch)

    def run(data, g: torch.Generator, epoch: int = 0, lr: float | None = None, **hooks):
        """`lr`: this epoch's; `hooks` (graphs, observe): passed to a `T.train_epoch` that has them (gpu_check)."""
        if lr is not None:
            for pg in opt.param_groups:
                pg["lr"] = lr
        return train_epoch(model, model, opt, recipe, data, rt, g, epoch, weights, masks, **hooks)
    return model, run


def fake_blob(n: int, val: int, test: int, classes: int = 10, seed: int = 0) -> dict:
    """A prepared-dataset dict like data.prepare writes (uint8 images, int64 labels), random content."""
    g = torch.Generator().manual_seed(seed)
    total = n + val + test
    x = torch.randint(0, 256, (total, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (total,), generator=g)
    return {"kind": "dataset", "name": "bench", "classes": [f"class{i}" for i in range(classes)],
            "train_x": x[:n], "train_y": y[:n], "val_x": x[n:n + val], "val_y": y[n:n + val],
            "test_x": x[n + val:], "test_y": y[n + val:]}


def blob_bytes(blob: dict) -> int:
    return sum(v.numel() * v.element_size() for v in blob.values() if isinstance(v, torch.Tensor))


def verdict(ratio: float | None, limit: float, below: bool = True) -> bool | None:
    if ratio is None or not math.isfinite(ratio):
        return None
    return ratio <= limit if below else ratio >= limit


def _child(args: list[str], timeout: float) -> dict:
    """Run `python -m benchmarks.run --child ...` and return its JSON (last stdout line)."""
    # Its own session, so that a timeout ends it with every process it started (compiler workers).
    p = subprocess.Popen([sys.executable, "-m", "benchmarks.run", "--child", *args], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    if p.returncode != 0:
        msg = (err or out).strip().splitlines()
        raise RuntimeError(msg[-1] if msg else f"exit status {p.returncode}")
    return json.loads(out.strip().splitlines()[-1])

# ----------------------------------------------------------------------------------------------- output


def table(rows: list[Row]) -> str:
    head = ["measure", "ratio", "target", "ok", "measured"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in r.cells()) + " |")
    return "\n".join(lines)


def write_results(path: Path, text: str) -> None:
    """Into the '## Results' section of `path` if it has one (up to the next '## ' heading), else the file."""
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    lines = old.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.strip() == "## Results"), None)
    if start is None:
        io.write_text(path, text.rstrip("\n") + "\n")
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    new = "".join(lines[:start]) + "## Results\n\n" + text.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
    io.write_text(path, new)


