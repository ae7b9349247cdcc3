"""Peak memory of one training job, phase by phase, measured in a child process."""
from __future__ import annotations

import resource
import sys
import tempfile
from pathlib import Path

import torch

from pipeline.infra import io
from pipeline.core import models, train as T

from .common import Row, Sizes, _child, blob_bytes, fake_blob, log, verdict

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
    from pipeline.core import data as D
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
    T.train_epoch(model, model, opt, recipe, data, rt, torch.Generator().manual_seed(0), 0, None, None)
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


