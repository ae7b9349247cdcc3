"""A/B: this checkout's training step against the same step of another git revision, in one process.

    python -m benchmarks.ab --base REV            # e.g. the commit before a change to the training loop

Why: a "no row may get more than 5% slower" rule cannot be read off two `make bench` tables taken minutes
apart on a shared machine (their noise is larger than 5%). Here both sides run in the same process, on the
same model, data, mask and teacher, alternately and in rotating order (common.interleaved), so a slow phase
of the machine hits both. REV's `pipeline/` is extracted with `git archive` and imported as the package
`pipeline_base` (its imports are relative, so it runs exactly as it did at REV).

Rows: one `train._epoch` (as `train.run` calls it) of the dense, masked (90% global MBP mask), kd and
fourier_kd (`distill.kd_loss` at radius 8) steps; each side builds its recipe, loss and data with its own
classes. Ratio = this checkout / REV, per step; the target is <= 1.05.
"""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import torch

from pipeline.core import masks as M, models
from pipeline.config.layout import ROOT

from .common import (FULL, KD_ALPHA, KD_T, QUICK, RADIUS, SPARSITY, Row, fake_blob, interleaved, log, machine,
                     suite_epoch, table)
from pipeline.methods import distill

KINDS = ("dense", "masked", "kd", "fourier_kd")


def import_revision(rev: str, dest: Path):
    """REV's training loop (its train module), imported from REV's own pipeline/ package: this checkout's
    pipeline modules are set aside while it imports, so that REV's code runs with REV's modules."""
    p = subprocess.run(["git", "archive", rev, "pipeline"], cwd=ROOT, capture_output=True)
    if p.returncode:
        raise SystemExit(f"--base {rev}: git archive failed: {p.stderr.decode().strip()[:300]}")
    with tarfile.open(fileobj=BytesIO(p.stdout)) as t:
        t.extractall(dest, filter="data")
    ours = lambda: [k for k in sys.modules if k == "pipeline" or k.startswith("pipeline.")]  # noqa: E731
    saved = {k: sys.modules.pop(k) for k in ours()}
    sys.path.insert(0, str(dest))
    try:
        layout = "pipeline.core.train" if (dest / "pipeline" / "core" / "train.py").exists() else "pipeline.train"
        return importlib.import_module(layout)
    finally:
        sys.path.remove(str(dest))
        for k in ours():
            del sys.modules[k]
        sys.modules.update(saved)


def side(T, kind: str, net, mask, teacher, blob, batch: int):
    """One version's epoch of `kind` as a callable (its own Data, Runtime, Recipe, loss and training loop)."""
    rt = T.Runtime(torch.device("cpu"), False, False, False)
    loss = {"dense": T.cross_entropy, "masked": T.cross_entropy,
            "kd": distill.kd_loss(teacher, KD_T, KD_ALPHA),
            "fourier_kd": distill.kd_loss(teacher, KD_T, KD_ALPHA, radius_fn=lambda e: RADIUS)}[kind]
    _, run = suite_epoch(T, net, None if kind == "dense" else mask, loss, batch, rt)
    data, g = T.Data(blob, rt.device), torch.Generator().manual_seed(0)
    return lambda: run(data, g)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the git revision to compare with (e.g. a commit id)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (the test); ratios then mean nothing")
    p.add_argument("--reps", type=int, default=5, help="repetitions (the median is reported)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"which steps, comma-separated (default: {','.join(KINDS)})")
    a = p.parse_args(argv)
    if bad := [k for k in a.kinds.split(",") if k not in KINDS]:
        p.error(f"--kinds: unknown step {bad} (choose from {', '.join(KINDS)})")
    sz = QUICK if a.quick else FULL
    torch.manual_seed(0)
    from pipeline.core import train
    with tempfile.TemporaryDirectory() as tmp:
        base_train = import_revision(a.base, Path(tmp))
        print("\n".join(machine()))
        log(f"base {a.base}: resnet20 x{sz.width}, batch {sz.batch}, {sz.steps} steps per epoch x {a.reps} "
            f"repetitions (median), one warm-up epoch per side")
        net = models.build("resnet20", 10, sz.width, seed=0)
        mask = M.global_magnitude(models.prunable(net), SPARSITY)
        teacher = models.build("resnet20", 10, sz.width, seed=1).eval()
        for q in teacher.parameters():
            q.requires_grad_(False)
        blob = fake_blob(sz.steps * sz.batch, sz.batch, sz.batch)
        rows = []
        for kind in a.kinds.split(","):
            log(f"{kind}: this checkout vs {a.base}")
            fns = {"new": side(train, kind, net, mask, teacher, blob, sz.batch),
                   "base": side(base_train, kind, net, mask, teacher, blob, sz.batch)}
            for f in fns.values():
                f()                                          # warm-up
            med = {k: v / sz.steps for k, v in interleaved(fns, a.reps, torch.device("cpu")).items()}
            ratio = med["new"] / med["base"]
            rows.append(Row(f"{kind} step: this checkout / {a.base}", ratio, "<= 1.05", ratio <= 1.05,
                            f"new {1000 * med['new']:.0f} ms/step, base {1000 * med['base']:.0f} ms/step"))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
