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
import datetime
import json
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline import config as C, frequency as fq, io, masks as M, methods as MT, models, spectral as SP, train as T
from pipeline.config import ROOT

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
    "speedup: bf16 autocast on / off (CUDA)",
)

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


# --------------------------------------------------------------------------------- the training steps


class Bench:
    """Shared state of the throughput rows: one dataset, one initial network, one mask, one teacher."""

    def __init__(self, sz: Sizes, rt: T.Runtime):
        self.sz, self.rt, self.B = sz, rt, sz.batch
        self.blob = fake_blob(sz.steps * sz.batch, sz.batch, sz.batch)
        self.data = T.Data(self.blob, rt.device)
        self.warm = T.Data(fake_blob(sz.warmup * sz.batch, sz.batch, sz.batch, seed=1), rt.device)
        self.path_data = T.Data(fake_blob(sz.path_steps * sz.batch, sz.batch, sz.batch, seed=2), rt.device)
        # The bare loop's data: already float and normalised, in memory on the device.
        self.xs = self.data.normalize(self.data.train_x.float() / 255)
        self.ys = self.data.train_y
        self.base = models.build("resnet20", 10, sz.width, seed=0)
        self.masks = {n: m.to(rt.device) for n, m in
                      M.global_magnitude(models.prunable(self.base), SPARSITY).items()}
        teacher = T.to_device(models.build("resnet20", 10, sz.width, seed=1), rt).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher

    def opt(self, model):
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    # -- the suite: train._epoch, exactly as train.run calls it (one "epoch" = the timed steps)
    def suite(self, loss=T.cross_entropy, masked=False, rt: T.Runtime | None = None, data=None):
        rt = rt or self.rt
        model = T.to_device(copy.deepcopy(self.base), rt)
        opt = self.opt(model)
        masks = self.masks if masked else None
        weights = None if masks is None else T._weights(model, masks)
        if weights is not None:
            M.apply(weights, masks)
        recipe = T.Recipe([], loss=loss, batch_size=self.B)
        g = torch.Generator().manual_seed(0)

        def go(d):
            return lambda: T._epoch(model, model, opt, recipe, d, rt, g, 0, weights, masks)
        return go(self.warm), go(data or self.data)

    # -- the bare loop: float data in memory, flip + crop, SGD, no bookkeeping
    def bare(self, mode="ce", masked=False):
        rt, B = self.rt, self.B
        model = T.to_device(copy.deepcopy(self.base), rt)
        opt = self.opt(model)
        params = dict(model.named_parameters())
        pm = [(params[n], m.to(params[n].dtype)) for n, m in self.masks.items()] if masked else []
        with torch.no_grad():
            for p, m in pm:
                p.mul_(m)
        g = torch.Generator().manual_seed(0)
        t_fixed = torch.randn(B, 10, generator=g).to(rt.device)   # "student2": teacher logits given
        teacher = self.teacher

        def steps(n):
            model.train()
            perm = torch.randperm(n * B, generator=g).to(rt.device)
            for i in range(n):
                idx = perm[i * B:(i + 1) * B]
                x, y = self.xs[idx], self.ys[idx]
                flip = (torch.rand(B, generator=g) < 0.5).to(rt.device)
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
                dy, dx = torch.randint(0, 9, (2,), generator=g).tolist()
                x = F.pad(x, (4, 4, 4, 4))[:, :, dy:dy + 32, dx:dx + 32]
                if rt.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
                    if mode == "ce":
                        loss = F.cross_entropy(model(x), y)
                    else:
                        if mode == "kd":
                            with torch.no_grad():
                                t = teacher(x)
                            s_f = s = model(x)
                        else:                       # student2: the two student passes of fourier_kd
                            t = t_fixed
                            s_f, s = model(x), model(x)
                        kl = F.kl_div(F.log_softmax(s_f.float() / KD_T, 1), F.log_softmax(t.float() / KD_T, 1),
                                      log_target=True, reduction="batchmean")
                        loss = KD_ALPHA * KD_T * KD_T * kl + (1 - KD_ALPHA) * F.cross_entropy(s, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for p, m in pm:
                        p.mul_(m)
        return lambda: steps(self.sz.warmup), lambda: steps(self.sz.steps)

    def teacher_forward(self):
        rt, B = self.rt, self.B

        def steps(n):
            with torch.no_grad():
                for i in range(n):
                    x = self.xs[i * B:(i + 1) * B]
                    if rt.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
                        self.teacher(x)
        return lambda: steps(self.sz.warmup), lambda: steps(self.sz.steps)

    def fft(self, repeat: int = 5):
        """fq.lowpass on one [0, 1] batch, `repeat` times per step (it is short: more calls, less noise)."""
        B = self.B
        x01 = self.data.train_x[:B].float() / 255

        def steps(n):
            for _ in range(n * repeat):
                fq.lowpass(x01, RADIUS, "circle")
        return lambda: steps(self.sz.warmup), lambda: steps(self.sz.steps), repeat


def run_pair(fns: dict, bench: Bench, steps: int) -> dict:
    """{name: (warm, timed)} -> {name: seconds per step}."""
    for warm, _ in fns.values():
        warm()
    med = interleaved({k: v[1] for k, v in fns.items()}, bench.sz.reps, bench.rt.device)
    return {k: v / steps for k, v in med.items()}


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
    kd = MT.kd_loss(bench.teacher, KD_T, KD_ALPHA)
    t = run_pair({"suite": bench.suite(kd, masked=True), "bare": bench.bare("kd", masked=True)}, bench, S)
    per["kd"] = t
    r = t["suite"] / t["bare"]
    rows.append(Row("kd retraining: suite / bare loop", r, "<= 1.05", verdict(r, 1.05),
                    f"suite {ips(t['suite'])} ({t['suite'] * 1e3:.0f} ms/step), bare {ips(t['bare'])}"))

    log("fourier_kd: suite vs parts")
    fkd = MT.kd_loss(bench.teacher, KD_T, KD_ALPHA, radius_fn=lambda e: RADIUS)
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
    from pipeline.tracking import Run
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


# ---------------------------------------------------------------------------------------------- memory


def _proc_status() -> dict:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                k, _, v = ln.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                 # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def child_memory(path: str, width: float, batch: int, steps: int | None, threads: int, device: str) -> dict:
    """One training job's memory, phase by phase: load the prepared file (data.load), build the on-device
    Data, train `steps` steps (None: one whole epoch) through train._epoch. Bytes (host RSS; on CUDA also
    the device's allocated memory)."""
    from pipeline import data as D
    cuda = device == "cuda"
    rt = T.Runtime(torch.device(device), amp=cuda, channels_last=cuda, compile=False)
    torch.set_num_threads(threads)
    model = T.to_device(models.build("resnet20", 10, width, seed=0), rt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    # The same path once on a tiny file first, so that code paged in on first use is not counted as data.
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny.pt"
        io.save(fake_blob(batch, 1, 1), tiny)
        io.write_json(Path(str(tiny) + ".json"), {"sha256": io.sha256(tiny)})
        T.Data(D.load(tiny), rt.device)
    m = {}
    m["peak_start"] = _proc_status().get("VmHWM", 0)     # imports, model, the tiny run
    can_reset = _reset_peak()
    m["base"] = _proc_status().get("VmRSS", 0)
    blob = D.load(Path(path))
    m["dataset"], m["train_images"] = blob_bytes(blob), blob["train_x"].numel()
    m["after_load"], m["peak_load"] = _proc_status().get("VmRSS", 0), _proc_status().get("VmHWM", 0)
    _reset_peak()
    if cuda:
        torch.cuda.synchronize()
        gpu0 = torch.cuda.memory_allocated()
    data = T.Data(blob, rt.device)
    m["after_data"], m["peak_data"] = _proc_status().get("VmRSS", 0), _proc_status().get("VmHWM", 0)
    _reset_peak()
    if cuda:
        torch.cuda.synchronize()
        m["gpu_data"] = torch.cuda.memory_allocated() - gpu0
        torch.cuda.reset_peak_memory_stats()
    if steps is not None:                             # a few steps; the whole dataset stays resident
        full = (data.train_x, data.train_y)
        data.train_x, data.train_y = full[0][:steps * batch], full[1][:steps * batch]
    recipe = T.Recipe([], batch_size=batch)
    T._epoch(model, model, opt, recipe, data, rt, torch.Generator().manual_seed(0), 0, None, None)
    m["after_train"], m["peak_train"] = _proc_status().get("VmRSS", 0), _proc_status().get("VmHWM", 0)
    if cuda:
        m["gpu_peak"] = torch.cuda.max_memory_allocated()
    # The job's own peak: VmHWM over the phases. ru_maxrss is only the fallback: after fork + exec it also
    # counts the parent's resident size at the fork.
    peaks = [m[k] for k in ("peak_start", "peak_load", "peak_data", "peak_train")]
    m["peak"] = max(peaks) if all(peaks) else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    m["phases"] = can_reset
    return m


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


def memory_rows(sz: Sizes, rt: T.Runtime) -> list[Row]:
    rows = []
    mb = 1 / 2**20
    for label, spec in (("smoke-sized", sz.smoke), ("CIFAR-10-sized", sz.cifar)):
        name = f"peak memory: {label} job"
        log(name)
        train, val, test, width, batch, steps = spec
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "data.pt"
                blob = fake_blob(train, val, test)
                io.save(blob, path)
                del blob
                io.write_json(Path(str(path) + ".json"), {"sha256": io.sha256(path)})
                m = _child(["memory", str(path), str(width), str(batch), str(steps),
                            str(torch.get_num_threads()), rt.device.type], timeout=300)
        except Exception as e:  # noqa: BLE001 - a failed measurement is a row, not a crash
            rows.append(Row(name, None, "<= 1.05 copies", None, f"failed: {type(e).__name__}: {e}"))
            continue
        ds = m["dataset"]
        copies = (m["after_data"] - m["base"]) / ds
        what = f"{train + val + test:,} images, resnet20 x{width}, batch {batch}, " + \
               (f"{steps} steps" if steps else f"one epoch ({train // batch} steps)")
        if m["phases"]:
            peaks = (f"peak above start: load {(m['peak_load'] - m['base']) * mb:.0f}, Data init "
                     f"{(m['peak_data'] - m['base']) * mb:.0f}, training {(m['peak_train'] - m['base']) * mb:.0f} MB"
                     f" (Data init transient = {(m['peak_data'] - m['after_load']) / m['train_images']:.1f} bytes "
                     f"per training pixel: the float32 copy for the normalisation constants)")
        else:
            peaks = "per-phase peaks unavailable"
        if "gpu_data" in m:
            peaks += (f"; GPU: {m['gpu_data'] / ds:.2f} copies after Data, peak allocated "
                      f"{m['gpu_peak'] * mb:.0f} MB")
        rows.append(Row(name, copies, "<= 1.05 copies", verdict(copies, 1.05),
                        f"dataset {ds * mb:.1f} MB ({what}); resident copies after Data = ratio; peak RSS "
                        f"{m['peak'] * mb:.0f} MB, start {m['base'] * mb:.0f} MB; {peaks}"))
    return rows


# ------------------------------------------------------------------------------------------ DAG reruns


def _venv_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(ROOT / ".venv" / "bin"),
                                   env.get("PATH", "")])
    return env


def _timed_cmd(cmd: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=_venv_env(), capture_output=True, text=True, timeout=timeout)
    return time.perf_counter() - t0, p


def dag_rows(sz: Sizes) -> list[Row]:
    smoke_done = (ROOT / "runs" / "smoke").is_dir() and (ROOT / "results" / "smoke" / "summary.csv").is_file()
    todo = "skipped: run make smoke first"
    rows = []
    sm = ["snakemake", "--cores", "all", "--configfile", "configs/smoke.yaml"]
    name = "no-op rerun: snakemake"
    if not sz.dag:
        rows.append(Row(name, None, "< 1 (5 s)", None, "skipped: --quick"))
    elif not smoke_done:
        rows.append(Row(name, None, "< 1 (5 s)", None, todo))
    else:
        log(name)
        try:
            t_dry, p = _timed_cmd(sm + ["-n"], 300)
            out = p.stdout + p.stderr
            if p.returncode != 0 or "Nothing to be done" not in out:
                jobs = next((ln.split()[-1] for ln in out.splitlines() if ln.split()[:1] == ["total"]), "?")
                why = f"{jobs} jobs to run" if p.returncode == 0 else f"exit status {p.returncode}"
                rows.append(Row(name, None, "< 1 (5 s)", None, f"skipped: run make smoke first (the smoke DAG "
                                f"is not up to date: snakemake -n: {why})"))
            else:
                ts = []
                for _ in range(3):
                    t, p = _timed_cmd(sm, 300)
                    if p.returncode != 0:
                        raise RuntimeError(f"exit status {p.returncode}: {(p.stderr or p.stdout)[-300:]}")
                    ts.append(t)
                t = statistics.median(ts)
                rows.append(Row(name, t / 5.0, "< 1 (5 s)", t < 5.0,
                                f"{t:.2f} s (median of 3; dry run {t_dry:.2f} s); ratio = time / 5 s"))
        except Exception as e:  # noqa: BLE001
            rows.append(Row(name, None, "< 1 (5 s)", None, f"failed: {type(e).__name__}: {e}"))

    name = "no-op rerun: dvc repro"
    dvc_ready = (ROOT / ".dvc").is_dir() and (ROOT / "dvc.lock").is_file()
    if not sz.dag:
        rows.append(Row(name, None, "< 1 (20 s)", None, "skipped: --quick"))
    elif not (smoke_done and dvc_ready):
        rows.append(Row(name, None, "< 1 (20 s)", None, todo + " and make dvc-smoke"))
    else:
        log(name)
        try:
            t_st, p = _timed_cmd(["dvc", "status"], 600)
            if p.returncode != 0 or "up to date" not in (p.stdout + p.stderr):
                rows.append(Row(name, None, "< 1 (20 s)", None, "skipped: dvc status shows changed stages; "
                                "run make smoke first and make dvc-smoke"))
            else:
                t, p = _timed_cmd(["dvc", "repro"], 600)
                if p.returncode != 0:
                    raise RuntimeError(f"exit status {p.returncode}: {(p.stderr or p.stdout)[-300:]}")
                rows.append(Row(name, t / 20.0, "< 1 (20 s)", t < 20.0,
                                f"{t:.2f} s (dvc status {t_st:.2f} s); ratio = time / 20 s"))
        except Exception as e:  # noqa: BLE001
            rows.append(Row(name, None, "< 1 (20 s)", None, f"failed: {type(e).__name__}: {e}"))
    return rows


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
        global CLOCK
        clock, CLOCK = CLOCK, time.perf_counter      # wall clock here: CPU time adds up over threads
        try:
            t = speed({"one": (with_threads(1, warm), with_threads(1, go)),
                       "all": (with_threads(cores, warm), with_threads(cores, go))})
        finally:
            CLOCK = clock
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
                        "cpu" if CLOCK is time.process_time else "wall"],
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

    name = "speedup: bf16 autocast on / off (CUDA)"
    if rt.device.type != "cuda":
        rows.append(Row(name, None, f"> 1 ({info}.amp)", None, "skipped: no CUDA device"))
    else:
        rows.append(toggle(name, "amp", f"> 1 ({info}.amp)", on="bf16", off="fp32"))
    return rows


def child_compile(width: float, batch: int, steps: int, reps: int, threads: int) -> dict:
    """Eager vs torch.compile'd resnet20 dense steps through train._epoch (steady state after warm-up)."""
    cfg = C.load()
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
            T._epoch(step_model, model, opt, recipe, warm, rt, g, 0, None, None)
            T._epoch(step_model, model, opt, recipe, warm, rt, g, 0, None, None)
        except Exception as e:  # noqa: BLE001
            return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"}
        if kind == "compiled":
            out["warmup"] = time.perf_counter() - t0
        fns[kind] = (lambda sm=step_model, m=model, o=opt, gg=g:
                     T._epoch(sm, m, o, recipe, data, rt, gg, 0, None, None))
    t = interleaved(fns, reps, rt.device)
    out.update({k: v / steps for k, v in t.items()})
    return out


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
    global CLOCK

    if a.child:                                         # a measurement in its own process
        kind, *rest = a.child
        if kind == "memory":
            path, width, batch, steps, threads, device = rest
            out = child_memory(path, float(width), int(batch), int(steps) or None, int(threads), device)
        else:
            width, batch, steps, reps, threads, clock = rest
            if clock == "cpu":
                CLOCK = time.process_time
            out = child_compile(float(width), int(batch), int(steps), int(reps), int(threads))
        print(json.dumps(out))
        return 0

    if a.clock == "cpu" and not torch.cuda.is_available():
        CLOCK = time.process_time
    sz = QUICK if a.quick else FULL
    sz = replace(sz, steps=a.steps or sz.steps, reps=a.reps or sz.reps)
    deadline = T0 + a.budget
    cfg = C.load()                                     # params.yaml: the runtime every stage resolves
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
