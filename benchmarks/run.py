"""`python -m benchmarks.run [--quick] [--out FILE]`: speed and memory of the suite, as RATIOS with targets.

Everything is measured in this one process (peak memory and torch.compile in child processes of it, so that
one job's peak or a compiler hang cannot spoil the others), with the suite's own code path (train._epoch,
methods.kd_loss, spectral.band_predictions, tracking.Run) against a bare PyTorch loop or the sum of its parts
on the same model, batch, device and precision. Suite and reference alternate within every repetition (the
order rotates), and each number is the median of the repetitions, so a slow phase of a shared machine hits
both sides alike. Absolute times are shown beside the ratios, never alone. See benchmarks/README.md.

  --quick   tiny widths and step counts (the test runs this; the ratios then mean nothing)
  --out F   also write the table to F (into its '## Results' section if it has one, e.g. benchmarks/README.md)
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.core import models, train as T
from pipeline.evaluate import spectral as SP

from . import common
from .common import (CIFAR_TRAIN, FULL, KD_ALPHA, KD_T, QUICK, RADIUS, T0, Row, Sizes, _child, fake_blob,
                     interleaved, log, machine, table, verdict, write_results)
from .memory import child_memory, memory_rows
from .reruns import dag_rows
from .steps import Bench, run_pair
from pipeline.config import loading
from pipeline.methods import distill

# The rows, in the order printed (the test checks that each one is printed).
ROWS = (
    "dense training: suite / bare loop",
    "masked retraining: suite / bare loop",
    "kd retraining: suite / bare loop",
    "fourier_kd: suite / sum of parts",
    "FFT low-pass / fourier_kd step",
    "band-limited eval: per filtered set / plain pass",
    "MLflow log_metrics / epoch",
    "peak memory: smoke-sized job",
    "peak memory: CIFAR-10-sized job",
    "no-op rerun: snakemake",
    "no-op rerun: dvc repro",
    "speedup: all cores / 1 thread",
    "speedup: channels_last on / off",
    "speedup: torch.compile on / off",
    "speedup: bf16 autocast on / off",
)


def throughput_rows(bench: Bench) -> tuple[list[Row], dict]:
    B, S = bench.B, bench.sz.steps
    rows, per = [], {}

    def ips(s):
        return f"{B / s:,.0f} img/s"

    for name, masked in (("dense training", False), ("masked retraining", True)):
        log(f"{name}: suite vs bare")
        t = run_pair({"suite": bench.suite(masked=masked), "bare": bench.bare("ce", masked)}, bench, S)
        per[name] = t
        r = t["suite"] / t["bare"]
        rows.append(Row(f"{name}: suite / bare loop", r, "<= 1.05", verdict(r, 1.05),
                        f"suite {ips(t['suite'])} ({t['suite'] * 1e3:.0f} ms/step), bare {ips(t['bare'])}"))

    log("kd: suite vs bare")
    kd = distill.kd_loss(bench.teacher, KD_T, KD_ALPHA)
    t = run_pair({"suite": bench.suite(kd, masked=True), "bare": bench.bare("kd", masked=True)}, bench, S)
    per["kd"] = t
    r = t["suite"] / t["bare"]
    rows.append(Row("kd retraining: suite / bare loop", r, "<= 1.05", verdict(r, 1.05),
                    f"suite {ips(t['suite'])} ({t['suite'] * 1e3:.0f} ms/step), bare {ips(t['bare'])}"))

    log("fourier_kd: suite vs parts")
    fkd = distill.kd_loss(bench.teacher, KD_T, KD_ALPHA, radius_fn=lambda e: RADIUS)
    fw, ft, rep = bench.fft()
    t = run_pair({"suite": bench.suite(fkd, masked=True), "student": bench.bare("student2", masked=True),
                  "teacher": bench.teacher_forward(), "fft": (fw, ft)}, bench, S)
    t["fft"] /= rep
    per["fourier_kd"] = t
    parts = t["student"] + t["teacher"] + t["fft"]
    r = t["suite"] / parts
    rows.append(Row("fourier_kd: suite / sum of parts", r, "<= 1.10", verdict(r, 1.10),
                    f"suite {t['suite'] * 1e3:.0f} ms/step; parts: student passes {t['student'] * 1e3:.0f} + "
                    f"teacher fwd {t['teacher'] * 1e3:.0f} + FFT {t['fft'] * 1e3:.2f} ms"))
    r = t["fft"] / t["suite"]
    rows.append(Row("FFT low-pass / fourier_kd step", r, "< 0.05", verdict(r, 0.05) and r < 0.05,
                    f"{t['fft'] * 1e3:.2f} ms per batch of {B} (rfft2 + mask + irfft2); "
                    f"{t['fft'] / per['dense training']['suite']:.4f} of a dense step"))
    return rows, per


# ------------------------------------------------------------------------------------------- spectral


def band_row(sz: Sizes, rt: T.Runtime, cfg) -> Row:
    log("band-limited evaluation")
    spec = cfg.spectral
    data = T.Data(fake_blob(sz.batch, 1, sz.test_images), rt.device)
    model = T.to_device(models.build("resnet20", 10, sz.width, seed=0), rt).eval()
    R = len(spec.radii) + 1                        # + the full band
    fns = {"band": lambda: SP.band_predictions(model, data, rt, spec.radii, spec.filter, spec.batch_size),
           "plain": lambda: T.predict(model, data, data.test_x, rt, spec.batch_size)}
    for f in fns.values():
        f()
    t = interleaved(fns, sz.reps, rt.device)
    r = t["band"] / (2 * R * t["plain"])
    return Row("band-limited eval: per filtered set / plain pass", r, "< 1.5", verdict(r, 1.5),
               f"{R} radii x (low + high) = {2 * R} filtered test sets of {sz.test_images} images in "
               f"{t['band']:.2f} s; one plain pass {t['plain'] * 1e3:.0f} ms; = {t['band'] / (R * t['plain']):.2f} "
               f"plain passes per radius (low + high)")


# -------------------------------------------------------------------------------------------- tracking


def mlflow_row(sz: Sizes, cfg, dense_step: float) -> Row:
    log("MLflow logging")
    from pipeline.infra.tracking import Run
    old = os.environ.get("MLFLOW_TRACKING_URI")
    metrics = {"train_loss": 1.234, "train_acc": 0.5, "lr": 0.01, "val_acc": 0.5, "round": 0, "sparsity": 0.9,
               "radius": 8.0, "epoch": 1}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlruns.db'}"
            with Run(cfg, "bench", {"dataset": "synthetic", "arch": "resnet20", "method": "bench", "seed": 0},
                     cfg.section("train")) as run:
                run.log_metrics(metrics, 0)           # the first call pays one-off costs; one per job
                ts = []
                for i in range(sz.log_calls):
                    t0 = time.perf_counter()
                    run.log_metrics(metrics, i + 1)
                    ts.append(time.perf_counter() - t0)
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    call = statistics.median(ts)
    steps = CIFAR_TRAIN // sz.batch
    epoch = steps * dense_step
    r = call / epoch
    return Row("MLflow log_metrics / epoch", r, "< 0.01", verdict(r, 0.01) and r < 0.01,
               f"{call * 1e3:.1f} ms per call ({len(metrics)} metrics, SQLite, file lock; max "
               f"{max(ts) * 1e3:.1f} ms) vs a CIFAR-10 epoch = {steps} measured dense steps = {epoch:.1f} s")


# -------------------------------------------------------------------------------- device / precision


def path_rows(bench: Bench, sz: Sizes, deadline: float, quick: bool) -> list[Row]:
    rt, S = bench.rt, sz.path_steps
    info = "informs params.yaml runtime"
    rows = []

    def speed(fns):
        return run_pair(fns, bench, S)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    name = "speedup: all cores / 1 thread"
    if rt.device.type != "cpu" or cores < 2:
        rows.append(Row(name, None, info, None, "skipped: " + ("CUDA run" if rt.device.type != "cpu"
                                                                else "one core")))
    else:
        log(name)
        warm, go = bench.suite(data=bench.path_data)

        def with_threads(n, f):
            def g():
                prev = torch.get_num_threads()
                torch.set_num_threads(n)
                try:
                    f()
                finally:
                    torch.set_num_threads(prev)
            return g
        clock, common.CLOCK = common.CLOCK, time.perf_counter   # wall clock: CPU time adds up over threads
        try:
            t = speed({"one": (with_threads(1, warm), with_threads(1, go)),
                       "all": (with_threads(cores, warm), with_threads(cores, go))})
        finally:
            common.CLOCK = clock
        r = t["one"] / t["all"]
        rows.append(Row(name, r, f"> 1 ({info}.threads)", None,
                        f"1 thread {t['one'] * 1e3:.0f} ms/step, {cores} threads {t['all'] * 1e3:.0f} ms/step"))

    def toggle(name, field, target, on="on", off="off"):
        """Dense steps of the suite with one runtime switch on vs off: the speedup of turning it on."""
        log(name)
        t = speed({"on": bench.suite(rt=replace(rt, **{field: True}), data=bench.path_data),
                   "off": bench.suite(rt=replace(rt, **{field: False}), data=bench.path_data)})
        return Row(name, t["off"] / t["on"], target, None,
                   f"{on} {t['on'] * 1e3:.0f} ms/step, {off} {t['off'] * 1e3:.0f} ms/step ({rt.device.type})")

    rows.append(toggle("speedup: channels_last on / off", "channels_last", f"> 1 to enable ({info}.channels_last)"))

    name = "speedup: torch.compile on / off"
    left = deadline - time.perf_counter()
    if quick or sz.compile_timeout <= 0:
        rows.append(Row(name, None, f"> 1 to enable ({info}.compile)", None, "skipped: --quick"))
    elif left < 60:
        rows.append(Row(name, None, f"> 1 to enable ({info}.compile)", None,
                        f"skipped: the time budget (--budget {deadline - T0:.0f} s) is used up"))
    else:
        log(name + f" (child process, up to {min(sz.compile_timeout, left):.0f} s)")
        try:
            m = _child(["compile", str(sz.width), str(sz.batch), str(S), str(sz.reps), str(torch.get_num_threads()),
                        "cpu" if common.CLOCK is time.process_time else "wall"],
                       timeout=min(sz.compile_timeout, left))
            if "error" in m:
                rows.append(Row(name, None, f"> 1 to enable ({info}.compile)", None,
                                f"compile failed: {m['error']}"))
            else:
                r = m["eager"] / m["compiled"]
                rows.append(Row(name, r, f"> 1 to enable ({info}.compile)", None,
                                f"compiled {m['compiled'] * 1e3:.0f} ms/step, eager {m['eager'] * 1e3:.0f} ms/step "
                                f"(steady state); warm-up incl. compilation {m['warmup']:.0f} s"))
        except subprocess.TimeoutExpired:
            rows.append(Row(name, None, f"> 1 to enable ({info}.compile)", None,
                            f"skipped: compilation did not finish within {min(sz.compile_timeout, left):.0f} s"))
        except Exception as e:  # noqa: BLE001
            rows.append(Row(name, None, f"> 1 to enable ({info}.compile)", None,
                            f"failed: {type(e).__name__}: {e}"))

    # On the CPU: bf16 is native (AVX512-BF16/AMX) or emulated; `auto` picks it only where native, and this
    # row shows what either choice costs here. channels_last as `auto` resolves it on this machine.
    native = rt.device.type == "cuda" or T.cpu_bf16_native()
    row = toggle("speedup: bf16 autocast on / off", "amp",
                 f"> 1 where native ({info}.amp: auto = {'bf16' if native else 'fp32'})", on="bf16", off="fp32")
    rows.append(replace(row, detail=f"{row.detail}; native bf16: {'yes' if native else 'no'}"))
    return rows


def child_compile(width: float, batch: int, steps: int, reps: int, threads: int) -> dict:
    """Eager vs torch.compile'd resnet20 dense steps through train._epoch (steady state after warm-up)."""
    cfg = loading.load()
    rt = replace(T.runtime(cfg), compile=False)
    torch.set_num_threads(threads)
    data = T.Data(fake_blob(steps * batch, batch, batch), rt.device)
    warm = T.Data(fake_blob(2 * batch, batch, batch, seed=1), rt.device)
    base = models.build("resnet20", 10, width, seed=0)
    recipe = T.Recipe([], batch_size=batch)
    fns = {}
    out = {}
    for kind in ("eager", "compiled"):
        model = T.to_device(copy.deepcopy(base), rt)
        step_model = torch.compile(model) if kind == "compiled" else model
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        try:
            T.train_epoch(step_model, model, opt, recipe, warm, rt, g, 0, None, None)
            T.train_epoch(step_model, model, opt, recipe, warm, rt, g, 0, None, None)
        except Exception as e:  # noqa: BLE001
            return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"}
        if kind == "compiled":
            out["warmup"] = time.perf_counter() - t0
        fns[kind] = (lambda sm=step_model, m=model, o=opt, gg=g:
                     T.train_epoch(sm, m, o, recipe, data, rt, gg, 0, None, None))
    t = interleaved(fns, reps, rt.device)
    out.update({k: v / steps for k, v in t.items()})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (the test); ratios then mean nothing")
    p.add_argument("--out", default=None, help="also write the table here (its '## Results' section if any)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repetition (throughput rows)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (the median is reported)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: params.yaml runtime.threads, 0 = all cores; 1 with --quick)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: time the in-process comparisons by this process's CPU time (steadier on a shared "
                        "machine, with --threads 1; CPU devices only)")
    p.add_argument("--budget", type=float, default=570, help="seconds; torch.compile is skipped past it")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.child:                                         # a measurement in its own process
        kind, *rest = a.child
        if kind == "memory":
            path, width, batch, steps, threads, device = rest
            out = child_memory(path, float(width), int(batch), int(steps) or None, int(threads), device)
        else:
            width, batch, steps, reps, threads, clock = rest
            if clock == "cpu":
                common.CLOCK = time.process_time
            out = child_compile(float(width), int(batch), int(steps), int(reps), int(threads))
        print(json.dumps(out))
        return 0

    if a.clock == "cpu" and not torch.cuda.is_available():
        common.CLOCK = time.process_time
    sz = QUICK if a.quick else FULL
    sz = replace(sz, steps=a.steps or sz.steps, reps=a.reps or sz.reps)
    deadline = T0 + a.budget
    cfg = loading.load()                                     # params.yaml: the runtime every stage resolves
    rt = replace(T.runtime(cfg), compile=False)        # compile is its own row
    threads = a.threads if a.threads is not None else (1 if a.quick else cfg.runtime.threads)
    torch.set_num_threads(threads or os.cpu_count() or 1)
    head = machine() + [f"runtime: device {rt.device}, bf16 {rt.amp}, channels_last {rt.channels_last}, "
                        f"{torch.get_num_threads()} threads, deterministic {cfg.runtime.deterministic}",
                        f"sizes: resnet20 x{sz.width}, batch {sz.batch}, {sz.steps} timed steps x {sz.reps} "
                        f"repetitions (median) after {sz.warmup} warm-up steps, {a.clock} clock" +
                        (" [--quick]" if a.quick else "")]
    for ln in head:
        log(ln)
    rows: list[Row] = []
    bench = Bench(sz, rt)
    tp, per = throughput_rows(bench)
    rows += tp
    rows.append(band_row(sz, rt, cfg))
    rows.append(mlflow_row(sz, cfg, per["dense training"]["suite"]))
    rows += memory_rows(sz, rt)
    rows += dag_rows(sz)
    rows += path_rows(bench, sz, deadline, a.quick)
    assert [r.name for r in rows] == list(ROWS), [r.name for r in rows]
    total = time.perf_counter() - T0
    load = "/".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    foot = [f"load average at end: {load}; total time {total:.0f} s"]
    text = "\n".join(["```"] + head + foot + ["```", "", table(rows), ""])
    print(text)
    if a.out:
        write_results(Path(a.out), text)
        log(f"written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
