"""`python -m benchmarks.device_check [--quick] [--out DIR]`: the first run on a GPU machine, in one command.

Needs torch and the pipeline's core only (no MLflow, Snakemake or DVC: a bare GPU image with the checkout
copied over). From the repository root it runs, in order, each step reporting even if an earlier one failed:

1. gpu_check (benchmarks/gpu_check.py): the capture check a wrong step cannot pass, the img/s rows and the
   peak GPU memory; it writes the JSON that `python -m pipeline plan` reads;
2. a smoke-sized training (configs/smoke.yaml's model, batch and runtime: synthetic data, 2 epochs, the lr
   dropping between them, a 90% mask re-applied) through `train.run`, captured and eager, from the same
   weights: the captured run must stay captured (no fallback) and its test accuracy within ACC_TOL of eager's;
3. the same training killed (SIGKILL) after its first epoch's checkpoint, in a child process, and resumed
   from it under capture: it must finish both epochs captured, with the test accuracy within ACC_TOL of the
   uninterrupted captured run's;
4. `plan` on that JSON (needs Snakemake, which reads the grid from the Snakefile: where it is missing, the
   command to run elsewhere is printed instead).

Output: one table (step, ok, what was measured) and the JSON's path. Exit status 0 when every step passed.
`--emulate` runs it all on the CPU under the emulation of CUDA graphs (benchmarks/emulation.py): the test.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.core import data as D, masks as M, models, train as T
from pipeline.infra import io
from pipeline.config.layout import ROOT

from . import gpu_check
from .emulation import Emulation
from pipeline.config import loading

# Two eager runs of a smoke-sized job on a GPU are not bit-identical (cuDNN, atomics, bf16); a right captured
# step lands within a few test images of eager. 5 points is far below what a wrong step costs a 2-epoch run
# on this task (a captured run without the update stays at chance, 10%).
ACC_TOL = 0.05
EPOCHS = 2


def log(msg: str) -> None:
    print(f"[device_check {time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


T0 = time.perf_counter()


def sizes(quick: bool) -> dict:
    """The smoke experiment's job (configs/smoke.yaml); --quick: a quarter of its images, half its width."""
    cfg = loading.load("smoke")
    d = cfg.datasets["synthetic"]
    n = (d.train_size, d.val_size, d.test_size) if not quick else (256 + 64, 64, 64)
    return {"train": n[0], "val": n[1], "test": n[2], "classes": d.classes, "width": cfg.model.width / (2 if quick
            else 1), "batch": cfg.train.batch_size, "lr": cfg.train.lr, "cfg": cfg}


def blob(s: dict) -> dict:
    """The synthetic task of data.py at these sizes (a pure function of the sizes: the child makes the same)."""
    tx, ty = D.synthetic(s["classes"], s["train"], 1)
    ex, ey = D.synthetic(s["classes"], s["test"], 2)
    v = s["val"]
    return {"classes": [f"class{i}" for i in range(s["classes"])], "train_x": tx[v:], "train_y": ty[v:],
            "val_x": tx[:v], "val_y": ty[:v], "test_x": ex, "test_y": ey}


def runtime(s: dict, graphs: bool, emulate: bool) -> T.Runtime:
    rt = replace(T.runtime(s["cfg"]), compile=False)
    if emulate:                                    # the CPU under the emulation: captured as on CUDA
        rt = replace(rt, amp=False, channels_last=False, graphs=graphs)
    return replace(rt, graphs=rt.graphs and graphs)


def train(s: dict, graphs: bool, emulate: bool, ckpt: Path, kill_at: int | None = None) -> dict:
    """The smoke-sized masked training through train.run; `kill_at`: SIGKILL this process as that epoch
    starts (its previous epoch is checkpointed by then)."""
    rt = runtime(s, graphs, emulate)
    net = models.build("resnet20", s["classes"], s["width"], seed=0)
    mask = M.global_magnitude(models.prunable(net), 0.9)

    def hook(model, masks, epoch):
        if epoch == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return masks
    recipe = T.Recipe([T.Round(epochs=EPOCHS, lr=s["lr"], lr_drops=[0.5], gamma=0.1)], masks=mask,
                      batch_size=s["batch"], epoch_hook=hook)
    data = T.Data(blob(s), rt.device)
    reasons = []
    with Emulation() if emulate and graphs else contextlib.nullcontext():
        out = T.run(recipe, net, data, rt, seed=0, ckpt=ckpt, key="device_check", on_fallback=reasons.append)
    return {"test_acc": T.accuracy(out.model, data, "test", rt), "cuda_graphs": out.cuda_graphs,
            "epochs": out.epochs, "history": len(out.history),
            "state": {k: v.detach().cpu() for k, v in out.model.state_dict().items()}}


def training_rows(s: dict, emulate: bool, quick: bool, tmp: Path) -> list[tuple[str, bool, str]]:
    rows = []
    eager = train(s, False, emulate, tmp / "eager.pt")
    capt = train(s, True, emulate, tmp / "captured.pt")
    same = all(torch.equal(v, capt["state"][k]) for k, v in eager["state"].items())
    # under the emulation the CPU is deterministic: a right captured step gives eager's weights exactly
    ok = capt["cuda_graphs"] == "captured" and abs(capt["test_acc"] - eager["test_acc"]) <= ACC_TOL and \
        (same or not emulate)
    rows.append(("train.run, captured vs eager (2 epochs)", ok,
                 f"test acc {capt['test_acc']:.3f} captured vs {eager['test_acc']:.3f} eager (tolerance "
                 f"{ACC_TOL}); captured run: {capt['cuda_graphs']}; weights " + ("identical" if same else "differ")))
    log(rows[-1][2])
    # the kill: a child process trains the same job and is killed as its second epoch starts
    ckpt = tmp / "resumed.pt"
    cmd = [sys.executable, "-m", "benchmarks.device_check", "--child", str(ckpt)] + \
        (["--emulate"] if emulate else []) + (["--quick"] if quick else [])
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    killed = p.returncode == -signal.SIGKILL
    at = io.load(ckpt, "checkpoint")["epoch"] if ckpt.exists() else None
    res = train(s, True, emulate, ckpt) if killed and at == 1 else None
    if res is None:
        rows.append(("kill after epoch 1, resume under capture", False,
                     f"the child was not killed after its first epoch (exit status {p.returncode}, checkpoint "
                     f"epoch {at}): {p.stderr.strip()[-300:]}"))
    else:
        same = all(torch.equal(v, capt["state"][k]) for k, v in res["state"].items())
        ok = (res["cuda_graphs"] == "captured" and res["epochs"] == EPOCHS and res["history"] == EPOCHS
              and abs(res["test_acc"] - capt["test_acc"]) <= ACC_TOL and (same or not emulate))
        rows.append(("kill after epoch 1, resume under capture", ok,
                     f"killed (SIGKILL) with epoch 1 checkpointed; resumed to {res['epochs']} epochs, "
                     f"{res['cuda_graphs']}; test acc {res['test_acc']:.3f} vs {capt['test_acc']:.3f} uninterrupted "
                     f"(tolerance {ACC_TOL}); weights " + ("identical" if same else "differ")))
    log(rows[-1][2])
    return rows


def plan_row(path: Path | None, experiment: str | None) -> tuple[str, bool | None, str]:
    """The paper's grid priced at the measured img/s (--quick measures resnet20 only: the smoke grid)."""
    cmd = f"python -m pipeline plan {f'--experiment {experiment} ' if experiment else ''}--throughput {path}"
    if path is None or not path.exists():
        return ("plan", False, "no throughput JSON was written")
    try:
        from pipeline.planning import plan as P
        text = P.plan(loading.load(experiment), experiment, P.load_throughput(path))
    except ImportError as e:          # the DAG's jobs come from the Snakefile: Snakemake is needed
        missing = (e.name or str(e)).split(".")[0]
        return ("plan", None, f"skipped ({missing} is not installed here): run `{cmd}` where the suite is installed")
    print(text)
    total = next((ln for ln in text.splitlines() if ln.startswith("total:")), "")
    return ("plan", "INCOMPLETE" not in total, f"{total} (`{cmd}`)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (the CPU test); the numbers then mean nothing")
    p.add_argument("--emulate", action="store_true", help="on the CPU, under the emulation of CUDA graphs")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for gpu_check's JSON")
    p.add_argument("--kinds", default=",".join(gpu_check.KINDS), help="with --emulate: the steps its capture check "
                                                                       "examines (default: all)")
    p.add_argument("--experiment", default=None, help="gpu_check measures this experiment's archs, width and batch "
                   "(the GPU turn: the rows `plan --experiment` prices it by), and plan prices it")
    p.add_argument("--steps", type=int, default=None, help="gpu_check's steps per timed epoch (default: its 351)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    s = sizes(a.quick)
    if a.child:
        torch.set_num_threads(1 if a.quick else torch.get_num_threads())
        train(s, True, a.emulate, Path(a.child), kill_at=1)
        return 3                                   # never reached: the kill ends the process
    if not a.emulate and not torch.cuda.is_available():
        p.error("no CUDA device here: run it on the GPU machine, or add --emulate (the CPU emulation)")
    threads = torch.get_num_threads()
    rows: list[tuple[str, bool | None, str]] = []
    out = Path(a.out)
    before = set(out.glob("throughput-*.json"))
    flags = ["--quick"] if a.quick else []
    try:
        if a.emulate:                              # the capture check on the CPU, then the CPU's rows
            rc = gpu_check.main(flags + ["--emulate", "--kinds", a.kinds])
            rows.append(("gpu_check: capture check (emulated)", rc == 0, f"exit status {rc}"))
        rc = gpu_check.main(flags + ["--out", str(out)] + (["--experiment", a.experiment] if a.experiment else [])
                            + (["--steps", str(a.steps)] if a.steps else []))
        made = sorted(set(out.glob("throughput-*.json")) - before) or sorted(out.glob("throughput-*.json"),
                                                                              key=lambda f: f.stat().st_mtime)
        path = made[-1] if made else None
        errors = json.loads(path.read_text()).get("errors", []) if path else ["no JSON"]
        rows.append(("gpu_check", rc == 0, f"exit status {rc}; " + ("; ".join(errors) if errors else "no errors")
                     + f"; JSON {path}"))
    except Exception as e:  # noqa: BLE001 - one table whatever fails
        path = None
        rows.append(("gpu_check", False, f"{type(e).__name__}: {str(e)[:300]}"))
    finally:
        torch.set_num_threads(threads)
    torch.set_num_threads(1 if a.quick else threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows += training_rows(s, a.emulate, a.quick, Path(tmp))
    except Exception as e:  # noqa: BLE001
        rows.append(("train.run captured vs eager, kill and resume", False, f"{type(e).__name__}: {str(e)[:300]}"))
    finally:
        torch.set_num_threads(threads)
    rows.append(plan_row(path, a.experiment or ("smoke" if a.quick else None)))
    print("\n| step | ok | measured |\n|---|---|---|")
    for name, ok, detail in rows:
        print(f"| {name} | {dict([(True, 'ok'), (False, 'MISS'), (None, '-')])[ok]} | {detail.replace('|', '/')} |")
    print(f"\nJSON for `python -m pipeline plan`: {path}")
    return 0 if all(ok is not False for _, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
