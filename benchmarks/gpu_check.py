"""`python -m benchmarks.gpu_check [--quick] [--archs A,B] [--out DIR]`: the device check of issue 9.

Needs torch and the pipeline's core only (no MLflow, Snakemake or DVC), so it runs on a bare GPU image:
`python -m benchmarks.gpu_check` from the repository root. Under 5 minutes on one H100. It

1. checks the captured step against the eager one: the suite's own training loop (train._epoch) with
   runtime.cuda_graphs on and off, from the same weights over the same batches, for the dense, masked, kd
   and fourier_kd steps; the train loss and the weights must agree within a bf16 tolerance (CUDA only);
2. measures img/s of the suite's step exactly as train.run runs it (captured on CUDA, per-epoch capture
   included) for the dense, masked (90% MBP mask), kd and fourier_kd (radius 8) steps, and of the
   spectral evaluation, per arch; the reference is a plain step (forward, backward, SGD, bf16 +
   channels_last) captured as one CUDA graph and replayed (on a CPU: the plain eager step);
3. measures the total throughput of K = 1, 2, 4 training processes sharing the device (CUDA only);
4. writes benchmarks/results/throughput-<device>.json, which `python -m pipeline plan` reads.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline import config as C, masks as M, methods as MT, models, spectral as SP, train as T
from pipeline.config import ROOT

from .common import KD_ALPHA, KD_T, RADIUS, SPARSITY, fake_blob, machine, suite_epoch, sync

KINDS = ("dense", "masked", "kd", "fourier_kd")
# issue 9's targets on an H100, resnet20, batch 128 (img/s of the suite's step)
TARGETS = {("resnet20", "dense"): 40_000, ("resnet20", "kd"): 25_000, ("resnet20", "fourier_kd"): 16_000}
TOLERANCE = 0.02    # relative: bf16 has 8 mantissa bits; the same kernels captured or not agree far closer


def log(msg: str) -> None:
    print(f"[gpu_check {time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


T0 = time.perf_counter()


class Setup:
    """One arch on the device: initial weights, a 90% global MBP mask, a teacher, and the loss of each kind."""

    def __init__(self, arch: str, width: float, rt: T.Runtime):
        self.arch, self.rt = arch, rt
        self.base = models.build(arch, 10, width, seed=0)
        self.masks = {n: m.to(rt.device) for n, m in M.global_magnitude(models.prunable(self.base), SPARSITY).items()}
        teacher = T.to_device(models.build(arch, 10, width, seed=1), rt).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.loss = {"dense": T.cross_entropy, "masked": T.cross_entropy,
                     "kd": MT.kd_loss(teacher, KD_T, KD_ALPHA),
                     "fourier_kd": MT.kd_loss(teacher, KD_T, KD_ALPHA, radius_fn=lambda e: RADIUS)}

    def epoch(self, kind: str, batch: int, rt: T.Runtime):
        """A fresh model and optimizer; returns (model, run(data, seed) -> metrics of one suite epoch)."""
        model, epoch = suite_epoch(T, self.base, None if kind == "dense" else self.masks, self.loss[kind], batch, rt)
        return model, lambda data, seed=0: epoch(data, torch.Generator().manual_seed(seed))


def capture_check(setup: Setup, batch: int, steps: int) -> dict:
    """Captured vs eager over the same `steps` batches from the same weights, per kind of step."""
    rt = setup.rt
    data = T.Data(fake_blob(steps * batch, batch, batch, seed=3), rt.device)
    out = {}
    for kind in KINDS:
        res = {}
        for graphs in (False, True):
            model, run = setup.epoch(kind, batch, replace(rt, graphs=graphs))
            m = run(data)
            res[graphs] = (m["train_loss"], torch.cat([p.detach().float().flatten() for p in model.parameters()]))
        (l0, w0), (l1, w1) = res[False], res[True]
        dl = abs(l1 - l0) / max(abs(l0), 1e-12)
        dw = ((w1 - w0).norm() / w0.norm()).item()
        out[kind] = {"loss_eager": l0, "loss_captured": l1, "loss_rel_diff": dl, "weights_rel_diff": dw,
                     "ok": dl <= TOLERANCE and dw <= TOLERANCE}
        log(f"capture check {setup.arch} {kind}: loss {l0:.5f} eager vs {l1:.5f} captured, weights rel diff {dw:.2e}")
    return out


def suite_img_s(setup: Setup, batch: int, steps: int) -> dict:
    """img/s of one suite epoch of `steps` steps (after one warm-up epoch), per kind, as train.run runs it."""
    rt = setup.rt
    data = T.Data(fake_blob(steps * batch, batch, batch, seed=4), rt.device)
    out = {}
    for kind in KINDS:
        _, run = setup.epoch(kind, batch, rt)
        run(data, seed=1)
        sync(rt.device)
        t0 = time.perf_counter()
        run(data, seed=2)
        sync(rt.device)
        out[kind] = steps * batch / (time.perf_counter() - t0)
        log(f"suite {setup.arch} {kind}: {out[kind]:,.0f} img/s")
    return out


def plain_img_s(setup: Setup, batch: int, steps: int) -> float:
    """The reference: forward, cross-entropy, backward, SGD; captured once and replayed on CUDA."""
    rt = setup.rt
    model = T.to_device(copy.deepcopy(setup.base), rt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(steps, batch, 3, 32, 32, generator=g).to(rt.device)
    ys = torch.randint(0, 10, (steps, batch), generator=g).to(rt.device)
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    x, y = xs[0].contiguous(memory_format=fmt), ys[0].clone()

    def step():
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp, cache_enabled=False):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    cuda = rt.device.type == "cuda"
    if cuda:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        go = graph.replay
    else:
        step()
        go = step
    sync(rt.device)
    t0 = time.perf_counter()
    for i in range(steps):
        x.copy_(xs[i])
        y.copy_(ys[i])
        go()
    sync(rt.device)
    return steps * batch / (time.perf_counter() - t0)


def eval_img_s(setup: Setup, images: int) -> float:
    """Forward images per second of the spectral evaluation (every radius, low- and high-pass)."""
    rt, spec = setup.rt, C.load().spectral
    data = T.Data(fake_blob(16, 1, images, seed=5), rt.device)
    model = T.to_device(copy.deepcopy(setup.base), rt).eval()
    SP.band_predictions(model, data, rt, spec.radii, spec.filter, spec.batch_size)
    sync(rt.device)
    t0 = time.perf_counter()
    SP.band_predictions(model, data, rt, spec.radii, spec.filter, spec.batch_size)
    sync(rt.device)
    return images * 2 * (len(spec.radii) + 1) / (time.perf_counter() - t0)


def concurrent_img_s(arch: str, width: float, batch: int, steps: int, k: int, graphs: bool) -> float:
    """Total img/s of k processes each training masked epochs on the same device at once."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--child", arch, str(width), str(batch), str(steps),
           str(int(graphs))]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(k)]
    outs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    # Overlap: total images over the span from the first start to the last end of the timed epochs.
    start, end = min(o["start"] for o in outs), max(o["end"] for o in outs)
    return sum(o["images"] for o in outs) / (end - start)


def child(arch: str, width: float, batch: int, steps: int, graphs: bool) -> dict:
    rt = replace(T.runtime(C.load()), compile=False)
    rt = replace(rt, graphs=rt.graphs and graphs)
    setup = Setup(arch, width, rt)
    data = T.Data(fake_blob(steps * batch, batch, batch, seed=6), rt.device)
    _, run = setup.epoch("masked", batch, rt)
    run(data, seed=1)
    sync(rt.device)
    start = time.time()
    for s in range(3):
        run(data, seed=2 + s)
    sync(rt.device)
    return {"start": start, "end": time.time(), "images": 3 * steps * batch}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (the CPU test); the numbers then mean nothing")
    p.add_argument("--archs", default=None, help="comma-separated (default: every arch of params.yaml's grid on "
                                                 "CUDA, resnet20 elsewhere)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed epoch (default 351 = a CIFAR-10 epoch)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        arch, width, batch, steps, graphs = a.child
        print(json.dumps(child(arch, float(width), int(batch), int(steps), graphs == "1")))
        return 0
    cfg = C.load()
    rt = replace(T.runtime(cfg), compile=False)
    cuda = rt.device.type == "cuda"
    width, batch = (0.125, 16) if a.quick else (cfg.model.width, cfg.train.batch_size)
    steps = a.steps or (4 if a.quick else 351)
    archs = a.archs.split(",") if a.archs else (list(cfg.grid.archs) if cuda and not a.quick else ["resnet20"])
    if not cuda:
        torch.set_num_threads(1 if a.quick else torch.get_num_threads())
    head = machine() + [f"runtime: device {rt.device}, bf16 {rt.amp}, channels_last {rt.channels_last}, "
                        f"cuda_graphs {rt.graphs}; batch {batch}, width {width}, {steps} steps per timed epoch"]
    for ln in head:
        log(ln)
    cpu = machine()[1].split(": ", 1)[1].split(", Linux")[0]
    result = {"device": torch.cuda.get_device_name() if cuda else f"CPU {cpu}",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "batch": batch, "width": width, "steps_per_epoch": steps,
              "cuda_graphs": rt.graphs, "quick": a.quick, "img_per_s": {}, "reference_img_per_s": {},
              "capture_check": {}, "concurrent_img_per_s": {}, "errors": []}
    # A session may get one GPU run: whatever fails, what was measured before it is still written (and the
    # exit status is 1). A capture that fails or disagrees with eager leaves the eager rows to measure.
    try:
        for arch in archs:
            if cuda and arch == archs[0]:
                try:
                    result["capture_check"] = capture_check(Setup(arch, width, rt), batch, 20)
                except Exception as e:  # noqa: BLE001 - reported in the output, then measured eagerly
                    result["errors"].append(f"capture check: {type(e).__name__}: {str(e)[:300]}")
                if result["errors"] or not all(c["ok"] for c in result["capture_check"].values()):
                    rt = replace(rt, graphs=False)
                    result["cuda_graphs"] = False
                    log("the captured step failed or disagreed with eager: measuring the eager step")
            setup = Setup(arch, width, rt)
            rates = suite_img_s(setup, batch, steps)
            rates["eval"] = eval_img_s(setup, 64 if a.quick else 2000)
            result["img_per_s"][arch] = rates
            result["reference_img_per_s"][arch] = plain_img_s(setup, batch, steps)
            log(f"reference {arch}: {result['reference_img_per_s'][arch]:,.0f} img/s")
        if cuda:
            for k in (1, 2, 4):
                result["concurrent_img_per_s"][str(k)] = concurrent_img_s(archs[0], width, batch, steps, k, rt.graphs)
                log(f"{k} processes at once: {result['concurrent_img_per_s'][str(k)]:,.0f} img/s in total")
    except Exception as e:  # noqa: BLE001 - the partial result is written below
        result["errors"].append(f"{type(e).__name__}: {str(e)[:300]}")
        log(f"stopped early: {result['errors'][-1]}")
    print(report(result, head))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", result["device"].lower()).strip("-")[:40] if cuda else "cpu"
    path = out / f"throughput-{slug}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    log(f"written to {path}")
    ok = all(c["ok"] for c in result["capture_check"].values()) and not result["errors"]
    return 0 if ok else 1


def report(r: dict, head: list[str]) -> str:
    lines = ["```"] + head + ["```", "", "| arch | step | suite img/s | reference img/s | suite / reference | target |",
                              "|---|---|---|---|---|---|"]
    for arch, rates in r["img_per_s"].items():
        ref = r["reference_img_per_s"][arch]
        for kind, v in rates.items():
            target = TARGETS.get((arch, kind))
            tgt = f">= {target:,} (H100)" if target else ""
            ratio = f"{v / ref:.3f}" if kind != "eval" else "(forward only)"
            lines.append(f"| {arch} | {kind} | {v:,.0f} | {ref:,.0f} | {ratio} | {tgt} |")
    if r["capture_check"]:
        lines += ["", "| captured vs eager | loss eager | loss captured | weights rel. diff | ok |", "|---|---|---|---|---|"]
        for kind, c in r["capture_check"].items():
            lines.append(f"| {kind} | {c['loss_eager']:.5f} | {c['loss_captured']:.5f} | {c['weights_rel_diff']:.2e} "
                         f"| {'ok' if c['ok'] else 'MISS'} |")
    else:
        lines.append("\ncaptured vs eager: skipped (no CUDA device)")
    for e in r.get("errors", []):
        lines.append(f"\nERROR: {e}")
    if r["concurrent_img_per_s"]:
        lines += ["", "processes sharing the device: " + ", ".join(
            f"K={k}: {v:,.0f} img/s in total" for k, v in r["concurrent_img_per_s"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
