"""The CPU's numeric paths, side by side: the suite's dense training step (train._epoch, as train.run calls it)
in fp32 NCHW (the path before `runtime.amp/channels_last: auto` chose by hardware), fp32 channels_last, bf16
autocast NCHW and bf16 + channels_last, at one thread (a DAG job's share on 2 cores), for resnet20 at the widths
the CPU regimes use. Prints img/s and each path's speed over fp32 NCHW, with the CPU's model name and whether
it computes bf16 natively (train.cpu_bf16_native: where `auto` picks bf16 and channels_last).

    .venv/bin/python -m benchmarks.cpu_paths [--widths 0.5 1.0] [--batch 128] [--steps 6] [--reps 3]

Wall clock, sides interleaved within each repetition (benchmarks/common.interleaved), median reported:
measure on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import platform
from dataclasses import replace

import torch

from pipeline.core import train as T

from .common import FULL
from .steps import Bench, run_pair

PATHS = {"fp32 NCHW": (False, False), "fp32 channels_last": (False, True), "bf16 NCHW": (True, False),
         "bf16 channels_last": (True, True)}


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def measure(width: float, batch: int, steps: int, reps: int) -> dict:
    sz = replace(FULL, width=width, batch=batch, steps=steps, reps=reps, path_steps=steps)
    rt = T.Runtime(torch.device("cpu"), amp=False, channels_last=False, compile=False)
    bench = Bench(sz, rt)
    fns = {name: bench.suite(rt=replace(rt, amp=amp, channels_last=cl), data=bench.path_data)
           for name, (amp, cl) in PATHS.items()}
    return run_pair(fns, bench, steps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_paths", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)            # as every CPU job runs (runtime.deterministic: auto)
    native = T.cpu_bf16_native()
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"cpu: {cpu_name()}, native bf16: {'yes' if native else 'no'} (runtime auto: "
          f"{'bf16 + channels_last' if native else 'fp32 NCHW'}); torch {torch.__version__}; {a.threads} thread(s); "
          f"resnet20, batch {a.batch}, {a.steps} steps x {a.reps} repetitions (median); load at start {load}")
    print("| width | " + " | ".join(PATHS) + " |")
    print("|---|" + "---|" * len(PATHS))
    for w in a.widths:
        t = measure(w, a.batch, a.steps, a.reps)
        base = t["fp32 NCHW"]
        cells = [f"{a.batch / t[k]:.0f} img/s ({base / t[k]:.2f}x)" for k in PATHS]
        print(f"| {w:g} | " + " | ".join(cells) + " |")
    print(f"load at end {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
