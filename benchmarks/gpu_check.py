"""`python -m benchmarks.gpu_check [--quick] [--archs A,B] [--out DIR]`: the device check (issues 9, 19).

Needs torch and the pipeline's core only (no MLflow, Snakemake or DVC), so it runs on a bare GPU image:
`python -m benchmarks.gpu_check` from the repository root. Under 5 minutes on one H100. It

1. checks the captured step against the eager one, for every arch and the dense, masked, kd and fourier_kd
   steps: the suite's own training loop (train._epoch), 2 epochs with the lr and the fourier_kd radius
   changing, from the same weights over the same batches, run eagerly twice (the device's own noise) and
   captured once (raw: no self-check, no fallback). A wrong step cannot pass: per-step losses; checksums of
   the images and labels each step consumed, computed inside the step (so inside the graph); the whole
   state_dict, buffers included, relative to eager's own change; the weights' change against eager's;
   pruned weights exactly zero after every step (CUDA only; on the CPU see --emulate);
2. measures img/s of the suite's step exactly as train.run runs it (captured on CUDA, per-epoch capture
   included) for the dense, masked (90% MBP mask), kd and fourier_kd (radius 8) steps, and of the
   spectral evaluation in fp32 (as the pipeline runs it), per arch; the reference is a plain step (forward,
   backward, SGD, bf16 + channels_last) captured as one CUDA graph and replayed (on a CPU: the plain eager
   step); and the peak GPU memory of the process;
3. measures the total throughput of K = 1, 2, 4 training processes sharing the device, and the peak GPU
   memory of each (CUDA only);
4. writes benchmarks/results/throughput-<device>.json, which `python -m pipeline plan` reads.

`--emulate [--inject FAULT]` runs check 1 alone on the CPU under the emulation of CUDA graphs
(benchmarks/emulation.py), with a wrong captured step to catch: stale_batch, stale_labels, no_step,
no_mask or frozen_bn. Exit status 1 naming the failing checks when it catches one, 0 when nothing is wrong.
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

from pipeline.core import captured, masks as M, models, train as T
from pipeline.evaluate import spectral as SP
from pipeline.config.layout import ROOT

from .common import KD_ALPHA, KD_T, RADIUS, SPARSITY, fake_blob, machine, suite_epoch, sync
from .emulation import FAULTS, Emulation
from pipeline.config import loading
from pipeline.methods import distill

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
                     "kd": distill.kd_loss(teacher, KD_T, KD_ALPHA),
                     "fourier_kd": distill.kd_loss(teacher, KD_T, KD_ALPHA, radius_fn=lambda e: RADIUS)}
        self.check_loss = {**self.loss, "fourier_kd": distill.kd_loss(teacher, KD_T, KD_ALPHA,
                                                                 radius_fn=lambda e: CHECK_RADII[e])}

    def epoch(self, kind: str, batch: int, rt: T.Runtime):
        """A fresh model and optimizer; returns (model, run(data, seed) -> metrics of one suite epoch). Its
        epochs share one captured.Graphs, as a job's do: the first-capture self-check runs once, not in every
        timed epoch; strict, so that a failure is reported rather than timed as an eager step."""
        model, epoch = suite_epoch(T, self.base, None if kind == "dense" else self.masks, self.loss[kind], batch, rt)
        hooks = {"graphs": captured.Graphs(strict=True)} if rt.graphs else {}
        return model, lambda data, seed=0: epoch(data, torch.Generator().manual_seed(seed), **hooks)


# The capture check (issue 19): what a wrong captured step cannot pass. Two epochs, the lr and the fourier_kd
# radius changing between them (each epoch captures anew), from the same weights over the same batches.
CHECK_LR = (0.05, 0.01)
CHECK_RADII = (4.0, 8.0)
# A captured step may differ from eager by what two eager runs differ by on this device (cuDNN and atomics
# are not deterministic on CUDA): NOISE x the eager-vs-eager figure, and never less than the floor (the CPU
# is deterministic: there a right captured step agrees exactly).
NOISE = 4.0
FLOOR = {"loss": 2e-3, "change": 0.02}
CHECKS = ("per-step loss", "images consumed", "labels consumed", "weights vs eager", "weights moved",
          "buffers vs eager", "pruned weights zero")


def diagnose(checks: dict) -> str | None:
    """The wrong step that failing checks point to, most specific first (--inject names the same faults):
    another batch read (stale_batch), other labels (stale_labels), pruned weights left nonzero (no_mask),
    weights that moved otherwise than eager's (no_step), batch-norm statistics alone wrong (frozen_bn)."""
    bad = {n for n, c in checks.items() if not c["ok"]}
    for check, fault in (("images consumed", "stale_batch"), ("labels consumed", "stale_labels"),
                         ("pruned weights zero", "no_mask"), ("weights moved", "no_step")):
        if check in bad:
            return fault
    if bad == {"buffers vs eager"}:
        return "frozen_bn"
    return "a wrong step (" + ", ".join(sorted(bad)) + ")" if bad else None


def trace(setup: Setup, kind: str, batch: int, data, graphs: captured.Graphs | None) -> dict:
    """Two suite epochs of `kind` from setup.base, captured (`graphs`) or eager. Per step: the loss, checksums
    of the images and labels the step consumed (computed inside the step, so inside the graph: they are what
    a replay read), and how many pruned weights are not zero after it; at the end the whole state_dict."""
    rt = replace(setup.rt, graphs=graphs is not None)
    probe = torch.zeros(2, dtype=torch.float64, device=rt.device)
    pos = torch.arange(1, batch + 1, dtype=torch.float64, device=rt.device)    # order matters to the sum
    inner = setup.check_loss[kind]

    def loss(student, x, y, epoch, norm):
        probe[0].copy_((x.double().flatten(1).sum(1) * pos[:len(x)]).sum())
        probe[1].copy_((y.double() * pos[:len(y)]).sum())
        return inner(student, x, y, epoch, norm)
    masks = None if kind == "dense" else setup.masks
    model, run = suite_epoch(T, setup.base, masks, loss, batch, rt)
    pruned = [] if masks is None else [(w, masks[n].logical_not()) for n, w in T.masked_weights(model, masks).items()]
    start = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    rec = {"loss": [], "probe": [], "nonzero": []}

    def observe(i, value, logits):
        rec["loss"].append(value.detach().float().clone())
        rec["probe"].append(probe.clone())
        rec["nonzero"].append(sum(((w.detach()[off] != 0).sum() for w, off in pruned),
                                  torch.zeros((), dtype=torch.long, device=rt.device)))
    hooks = {"observe": observe} if graphs is None else {"observe": observe, "graphs": graphs}
    for e in range(2):
        run(data, torch.Generator().manual_seed(e), epoch=e, lr=CHECK_LR[e], **hooks)
    sync(rt.device)
    return {"loss": torch.stack(rec["loss"]).cpu(), "probe": torch.stack(rec["probe"]).cpu(),
            "nonzero": torch.stack(rec["nonzero"]).cpu(), "start": start,
            "end": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}


def measures(a: dict, b: dict, params: list[str]) -> dict:
    """How far run `b` is from run `a` (both from the same start): per-step loss (largest relative
    difference), steps whose consumed images / labels differ, the weights' and the float buffers' distance
    relative to `a`'s own change, the weights' change relative to `a`'s, integer buffers equal, and the
    pruned weights not zero after any step of `b`."""
    def dist(names, x, y):
        return sum(float((x[n].double() - y[n].double()).pow(2).sum()) for n in names) ** 0.5

    def rel(names, x, y):                                  # |x - y| / |a's own change|
        d, c = dist(names, x, y), dist(names, a["end"], a["start"])
        return d / c if c else (0.0 if d == 0 else float("inf"))
    bufs = [n for n in a["end"] if n not in params and a["end"][n].is_floating_point()]
    ints = [n for n in a["end"] if n not in params and not a["end"][n].is_floating_point()]
    la, lb = a["loss"].double(), b["loss"].double()
    return {"per-step loss": float(((lb - la).abs() / la.abs().clamp_min(1e-12)).max()),
            "images consumed": int((~torch.isclose(b["probe"][:, 0], a["probe"][:, 0], rtol=1e-9, atol=0)).sum()),
            "labels consumed": int((b["probe"][:, 1] != a["probe"][:, 1]).sum()),
            "weights vs eager": rel(params, b["end"], a["end"]),
            "weights moved": rel(params, b["end"], a["start"]),
            "buffers vs eager": rel(bufs, b["end"], a["end"]) +
                                (0.0 if all(torch.equal(a["end"][n], b["end"][n]) for n in ints) else float("inf")),
            "pruned weights zero": int(b["nonzero"].sum())}


def judge(m: dict, noise: dict) -> dict:
    """{check: {value, limit, ok}}: counts must be 0 and "weights moved" 1; the rest within NOISE x the
    eager-vs-eager figure, or the floor."""
    out = {}
    for name, v in m.items():
        if name in ("images consumed", "labels consumed", "pruned weights zero"):
            limit, ok = 0, v == 0
        elif name == "weights moved":
            limit = max(NOISE * abs(noise[name] - 1), FLOOR["change"])
            ok = abs(v - 1) <= limit
        else:
            limit = max(NOISE * noise[name], FLOOR["loss" if name == "per-step loss" else "change"])
            ok = v <= limit
        out[name] = {"value": v, "limit": limit, "ok": bool(ok)}
    return out


def capture_check(setup: Setup, batch: int, steps: int, kinds=KINDS) -> dict:
    """Captured vs eager (and eager vs eager, the device's own noise) over the same 2 epochs of `steps`
    batches from the same weights, per kind of step. The captured step runs raw: no first-capture
    self-check and no fallback (a failure is reported as the kind's error)."""
    data = T.Data(fake_blob(steps * batch, batch, batch, seed=3), setup.rt.device)
    params = [n for n, _ in setup.base.named_parameters()]
    out = {}
    for kind in kinds:
        try:
            eager, again = trace(setup, kind, batch, data, None), trace(setup, kind, batch, data, None)
            capt = trace(setup, kind, batch, data, captured.Graphs(strict=True, check=False))
        except Exception as e:  # noqa: BLE001 - reported per kind
            out[kind] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}", "checks": {}}
            log(f"capture check {setup.arch} {kind}: {out[kind]['error']}")
            continue
        checks = judge(measures(eager, capt, params), measures(eager, again, params))
        if kind == "dense":
            checks.pop("pruned weights zero")
        bad = [n for n, c in checks.items() if not c["ok"]]
        out[kind] = {"ok": not bad, "checks": checks, "diagnosis": diagnose(checks),
                     "loss_eager": eager["loss"].tolist(), "loss_captured": capt["loss"].tolist()}
        log(f"capture check {setup.arch} {kind}: " + ("ok" if not bad else f"MISS {', '.join(bad)}: looks like "
                                                      f"{out[kind]['diagnosis']}"))
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
    """Forward images per second of the spectral evaluation (every radius, low- and high-pass), in fp32 as
    the pipeline runs it (spectral.fp32)."""
    rt, spec = SP.fp32(setup.rt), loading.load().spectral
    data = T.Data(fake_blob(16, 1, images, seed=5), rt.device)
    model = T.to_device(copy.deepcopy(setup.base), rt).eval()
    SP.band_predictions(model, data, rt, spec.radii, spec.filter, spec.batch_size)
    sync(rt.device)
    t0 = time.perf_counter()
    SP.band_predictions(model, data, rt, spec.radii, spec.filter, spec.batch_size)
    sync(rt.device)
    return images * 2 * (len(spec.radii) + 1) / (time.perf_counter() - t0)


def peak_mb(device) -> float | None:
    """This process's peak GPU memory so far (allocated by torch), in MB; None on the CPU."""
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def concurrent_img_s(arch: str, width: float, batch: int, steps: int, k: int, graphs: bool) -> tuple:
    """Total img/s of k processes each training masked epochs on the same device at once, and the largest
    peak GPU memory of one of them (MB)."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--child", arch, str(width), str(batch), str(steps),
           str(int(graphs))]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(k)]
    outs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    # Overlap: total images over the span from the first start to the last end of the timed epochs.
    start, end = min(o["start"] for o in outs), max(o["end"] for o in outs)
    return sum(o["images"] for o in outs) / (end - start), max(o["peak_gpu_mb"] or 0 for o in outs)


def child(arch: str, width: float, batch: int, steps: int, graphs: bool) -> dict:
    rt = replace(T.runtime(loading.load()), compile=False)
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
    return {"start": start, "end": time.time(), "images": 3 * steps * batch, "peak_gpu_mb": peak_mb(rt.device)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (the CPU test); the numbers then mean nothing")
    p.add_argument("--archs", default=None, help="comma-separated (default: every arch of params.yaml's grid on "
                                                 "CUDA, resnet20 elsewhere)")
    p.add_argument("--kinds", default=",".join(KINDS), help="steps the capture check examines (default: all)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed epoch (default 351 = a CIFAR-10 epoch)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON")
    p.add_argument("--experiment", default=None, help="measure at this experiment's width, batch and runtime (and, "
                   "on the CPU, its resources.threads per job), so that `plan --experiment` can price it")
    p.add_argument("--emulate", action="store_true", help="the capture check alone, on the CPU, under the emulation "
                                                          "of CUDA graphs (benchmarks/emulation.py); no JSON")
    p.add_argument("--inject", choices=FAULTS, default=None, help="with --emulate: a wrong captured step to catch")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        arch, width, batch, steps, graphs = a.child
        print(json.dumps(child(arch, float(width), int(batch), int(steps), graphs == "1")))
        return 0
    if a.inject and not a.emulate:
        p.error("--inject needs --emulate (faults are injected into the emulation of CUDA graphs)")
    kinds = a.kinds.split(",")
    if bad := [k for k in kinds if k not in KINDS]:
        p.error(f"--kinds: unknown step {bad} (choose from {', '.join(KINDS)})")
    cfg = loading.load(a.experiment)
    rt = replace(T.runtime(cfg), compile=False)
    if a.emulate:
        return emulated(rt, a, kinds)
    cuda = rt.device.type == "cuda"
    width, batch = (0.125, 16) if a.quick else (cfg.model.width, cfg.train.batch_size)
    steps = a.steps or (4 if a.quick else 351)
    archs = a.archs.split(",") if a.archs else (list(cfg.grid.archs) if cuda and not a.quick else ["resnet20"])
    if not cuda:           # on the CPU a job's share of the cores: what the DAG gives each job
        torch.set_num_threads(1 if a.quick else cfg.resources.threads if a.experiment else torch.get_num_threads())
    head = machine() + [f"runtime: device {rt.device}, bf16 {rt.amp}, channels_last {rt.channels_last}, "
                        f"cuda_graphs {rt.graphs}; batch {batch}, width {width}, {steps} steps per timed epoch",
                        versions()]
    for ln in head:
        log(ln)
    cpu = machine()[1].split(": ", 1)[1].split(", Linux")[0]
    result = {"device": torch.cuda.get_device_name() if cuda else f"CPU {cpu}",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "cuda": torch.version.cuda, "batch": batch, "width": width,
              "steps_per_epoch": steps, "cuda_graphs": rt.graphs, "quick": a.quick, "experiment": cfg.name,
              "threads": torch.get_num_threads(), "img_per_s": {},
              "reference_img_per_s": {}, "capture_check": {}, "concurrent_img_per_s": {}, "peak_gpu_mb": {},
              "concurrent_peak_gpu_mb": {}, "errors": []}
    # A session may get one GPU run: whatever fails, what was measured before it is still written (and the
    # exit status is 1). A captured step that fails or disagrees with eager leaves the eager rows to measure.
    try:
        if cuda:
            for arch in archs:
                result["capture_check"][arch] = capture_check(Setup(arch, width, rt), batch, 20, kinds)
            failed = [f"{arch} {k}" for arch, c in result["capture_check"].items() for k, v in c.items() if not v["ok"]]
            if failed:
                result["errors"].append("capture check failed for " + ", ".join(failed) + " (eager step measured)")
                rt = replace(rt, graphs=False)
                result["cuda_graphs"] = False
                log("the captured step failed or disagreed with eager: measuring the eager step")
        for arch in archs:
            setup = Setup(arch, width, rt)
            rates = suite_img_s(setup, batch, steps)
            rates["eval"] = eval_img_s(setup, 64 if a.quick else 2000)
            result["img_per_s"][arch] = rates
            result["reference_img_per_s"][arch] = plain_img_s(setup, batch, steps)
            result["peak_gpu_mb"][arch] = peak_mb(rt.device)        # this process, up to this arch
            log(f"reference {arch}: {result['reference_img_per_s'][arch]:,.0f} img/s")
        if cuda:
            for k in (1, 2, 4):
                rate, peak = concurrent_img_s(archs[0], width, batch, steps, k, rt.graphs)
                result["concurrent_img_per_s"][str(k)], result["concurrent_peak_gpu_mb"][str(k)] = rate, peak
                log(f"{k} processes at once: {rate:,.0f} img/s in total, peak {peak:,.0f} MB per process")
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
    return 0 if not result["errors"] else 1


def versions() -> str:
    return f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}, cuDNN " \
           f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'none'}"


def emulated(rt: T.Runtime, a, kinds: list[str]) -> int:
    """The capture check on the CPU under the emulation of CUDA graphs, with `a.inject`'s fault: exit 1 and
    the failing checks named when it catches the captured step being wrong, 0 when it finds nothing."""
    rt = replace(rt, amp=False, channels_last=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Emulation(a.inject):
            width, batch, steps = (0.125, 16, 6) if a.quick else (0.25, 32, 8)
            archs = a.archs.split(",") if a.archs else ["resnet20"]
            result = {"capture_check": {arch: capture_check(Setup(arch, width, rt), batch, steps, kinds)
                                        for arch in archs}}
    finally:
        torch.set_num_threads(threads)
    print(capture_table(result["capture_check"]))
    wrong = [(arch, k, v.get("error") or v["diagnosis"]) for arch, c in result["capture_check"].items()
             for k, v in c.items() if not v["ok"]]
    what = f"the injected fault {a.inject}" if a.inject else "no fault injected"
    if wrong:
        print(f"emulated CUDA graphs, {what}: the captured step is WRONG: " +
              "; ".join(f"{arch} {k}: {d}" for arch, k, d in wrong))
        return 1
    print(f"emulated CUDA graphs, {what}: the captured step agrees with eager on every check")
    return 0


def capture_table(checks: dict) -> str:
    names = list(CHECKS)
    lines = ["| arch | step | " + " | ".join(names) + " | verdict |", "|---|---|" + "---|" * len(names) + "---|"]
    for arch, kinds in checks.items():
        for kind, c in kinds.items():
            if c.get("error"):
                lines.append(f"| {arch} | {kind} | " + " | ".join("-" for _ in names) + f" | ERROR {c['error']} |")
                continue
            cells = []
            for n in names:
                ch = c["checks"].get(n)
                bound = "" if ch is None else f"1 ± {ch['limit']:.3g}" if n == "weights moved" else \
                    f"<= {ch['limit']:.3g}"
                cells.append("n/a" if ch is None else
                             f"{ch['value']:.3g} ({bound})" + ("" if ch["ok"] else " MISS")
                             if isinstance(ch["value"], float) else
                             f"{ch['value']}" + ("" if ch["ok"] else " MISS"))
            verdict = "ok" if c["ok"] else f"MISS: {c['diagnosis']}"
            lines.append(f"| {arch} | {kind} | " + " | ".join(cells) + f" | {verdict} |")
    lines.append("(losses: largest relative difference of one step; images, labels: steps whose consumed batch "
                 "differs; weights, buffers: distance relative to eager's own change; weights moved: captured "
                 "change / eager change; pruned weights zero: nonzero pruned weights summed over the steps)")
    return "\n".join(lines)


def report(r: dict, head: list[str]) -> str:
    lines = ["```"] + head + ["```", "", "| arch | step | suite img/s | reference img/s | suite / reference | target |",
                              "|---|---|---|---|---|---|"]
    for arch, rates in r["img_per_s"].items():
        ref = r["reference_img_per_s"][arch]
        for kind, v in rates.items():
            target = TARGETS.get((arch, kind))
            tgt = f">= {target:,} (H100)" if target else ""
            ratio = f"{v / ref:.3f}" if kind != "eval" else "(forward only, fp32)"
            lines.append(f"| {arch} | {kind} | {v:,.0f} | {ref:,.0f} | {ratio} | {tgt} |")
    if r["capture_check"]:
        lines += ["", "captured vs eager (2 epochs, lr and radius changing):", capture_table(r["capture_check"])]
    else:
        lines.append("\ncaptured vs eager: skipped (no CUDA device)")
    for e in r.get("errors", []):
        lines.append(f"\nERROR: {e}")
    if any(v is not None for v in r["peak_gpu_mb"].values()):
        lines += ["", "peak GPU memory of this process: " + ", ".join(
            f"{arch} {v:,.0f} MB" for arch, v in r["peak_gpu_mb"].items() if v is not None)]
    if r["concurrent_img_per_s"]:
        lines += ["", "processes sharing the device: " + ", ".join(
            f"K={k}: {v:,.0f} img/s in total (peak {r['concurrent_peak_gpu_mb'][k]:,.0f} MB per process)"
            for k, v in r["concurrent_img_per_s"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
