"""The one training loop: whole dataset on the device as uint8, batched augmentation, masks re-applied after
every optimizer step, a checkpoint every epoch, resume from it, bit-identical on the CPU.

Every stage that trains (dense, each retraining method, iterative rounds) describes itself as a list of
`Round`s and a loss; this module runs them. A round's `begin` hook prunes / rewinds at its start; the
`epoch_hook` (gradual pruning) may change the masks at the start of an epoch.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.infra import faults, io
from pipeline.core import masks as M
from pipeline.core import captured
from pipeline.config.schema import full_band_radius
from pipeline.errors import Diverged

# ------------------------------------------------------------------------------------------- the device


@dataclass
class Runtime:
    device: torch.device
    amp: bool            # bf16 autocast
    channels_last: bool
    compile: bool
    graphs: bool = False   # CUDA graphs: the training step captured once per epoch and replayed (captured.py)
    graphs_strict: bool = False   # runtime.cuda_graphs: true: a failed capture stops the job (auto: eager steps)


    def describe(self) -> str:
        """The numeric path, for the Hardware line and MLflow: e.g. 'bf16 autocast, channels_last'."""
        return f"{'bf16 autocast' if self.amp else 'fp32'}, {'channels_last' if self.channels_last else 'NCHW'}"


def cpu_bf16_native() -> bool:
    """The CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles: recent Xeon and EPYC). Elsewhere torch
    emulates bf16 on the CPU, slower than fp32, so `auto` keeps fp32 there."""
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def set_threads(n: int) -> None:
    """CPU threads of this process: a job's share (--threads from its scheduler), 0 = every core."""
    torch.set_num_threads(n or os.cpu_count() or 1)


def runtime(cfg) -> Runtime:
    """Resolve the runtime section: device, precision, memory format, determinism (threads: set_threads)."""
    r = cfg.runtime
    cuda = torch.cuda.is_available() and r.device != "cpu"
    if r.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device = 'cuda' but no CUDA device is available")
    # auto: bit-identical reruns where they are possible (the CPU); on CUDA they are not anyway (cuDNN,
    # atomics), and deterministic kernels there cost speed.
    deterministic = r.deterministic is True or (r.deterministic == "auto" and not cuda)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=cuda)
    torch.backends.cudnn.benchmark = cuda and not deterministic
    # auto: bf16 autocast and channels_last where the hardware computes bf16 natively (CUDA, a CPU with
    # AVX512-BF16 or AMX; an emulating CPU runs bf16 ~10x slower). fp32 channels_last is faster on the CPUs
    # measured too (benchmarks/README.md, cpu_paths), but stays opt-in there until paired seeds show it moves
    # no accuracy. Evaluation stays fp32 on the CPU (predict).
    native = cuda or (r.device != "cuda" and cpu_bf16_native())
    return Runtime(device=torch.device("cuda" if cuda else "cpu"),
                   amp=(r.amp == "bf16") or (r.amp == "auto" and native),
                   channels_last=(r.channels_last == "on") or (r.channels_last == "auto" and native),
                   compile=r.compile,
                   graphs=cuda and not r.compile and r.cuda_graphs in ("auto", True),
                   graphs_strict=r.cuda_graphs is True)


def to_device(model: nn.Module, rt: Runtime) -> nn.Module:
    model = model.to(rt.device)
    return model.to(memory_format=torch.channels_last) if rt.channels_last else model


# --------------------------------------------------------------------------------------------- the data


class Data:
    """One copy of the prepared dataset on the device, uint8; batches come out as float in [0, 1]."""

    def __init__(self, blob: dict, device):
        self.device = torch.device(device)
        for s in ("train", "val", "test"):
            setattr(self, f"{s}_x", blob[f"{s}_x"].to(self.device))
            setattr(self, f"{s}_y", blob[f"{s}_y"].to(self.device))
        # Normalisation constants of this training split (fixed per prepared file, so every stage agrees).
        # One transient float copy (divided in place), not two: the peak of a CIFAR-sized job is 4 bytes per
        # pixel above the uint8 dataset here, not 8 (benchmarks/: peak memory).
        x = blob["train_x"].float().div_(255)
        self.mean = x.mean((0, 2, 3)).view(1, 3, 1, 1).to(self.device)
        self.std = x.std((0, 2, 3)).view(1, 3, 1, 1).to(self.device)
        self.classes = len(blob["classes"])
        self.sha256 = blob.get("sha256")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def draw_epoch(n: int, batch: int, steps: int, g: torch.Generator, device) -> tuple:
    """An epoch's randomness: the order, then each step's flips (steps, b) and crop offsets (steps, 2, b).
    Drawn on the CPU generator in the order the steps once drew them (so the stream, the batches and the
    checkpoints are unchanged), and copied to the device once per epoch, not once per step: a copy per step
    is a host-device synchronisation on CUDA."""
    order = torch.randperm(n, generator=g)
    b = min(batch, n)
    flips, offs = [], []
    for _ in range(steps):
        flips.append(torch.rand(b, generator=g) < 0.5)
        offs.append(torch.randint(0, 9, (2, b), generator=g))
    return order.to(device), torch.stack(flips).to(device), torch.stack(offs).to(device)


def augment(x: torch.Tensor, flip: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
    """Random crop with 4-pixel zero padding and horizontal flip, for the whole batch at once, from the
    step's draws (`flip`: (b,) bool, `off`: (2, b) offsets in 0..8, both on x's device)."""
    b, _, h, w = x.shape
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    # Every 32x32 window of the padded batch as a view (b, c, 9, 9, h, w), then one window per image: the
    # same pixels as indexing rows and columns element by element, at a third of the cost on the CPU.
    windows = F.pad(x, (4, 4, 4, 4)).unfold(2, h, 1).unfold(3, w, 1)
    return windows[torch.arange(b, device=x.device), :, off[0], off[1]]


@torch.no_grad()
def predict(model: nn.Module, data: Data, x_uint8_or_float: torch.Tensor, rt: Runtime, batch: int = 1000):
    """Predicted classes for images (uint8 or float in [0, 1]) in eval mode."""
    model.eval()
    out = []
    for i in range(0, len(x_uint8_or_float), batch):
        x = x_uint8_or_float[i:i + batch]
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        x = data.normalize(x.to(rt.device))
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # bf16 trains the model; on the CPU the accuracy it is judged by is computed in fp32
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp and rt.device.type == "cuda"):
            out.append(model(x).argmax(1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=rt.device)


def accuracy(model, data: Data, split: str, rt: Runtime) -> float:
    y = getattr(data, f"{split}_y")
    return (predict(model, data, getattr(data, f"{split}_x"), rt) == y).float().mean().item()


# ------------------------------------------------------------------------------------------ the recipe

# A loss gets (student, batch in [0,1] after augmentation, labels, epoch within the round, normalize) and
# returns (loss, student logits on the unfiltered batch, radius used or None).
LossFn = Callable[..., tuple]


def cross_entropy(student, x, y, epoch, norm):
    logits = student(norm(x))
    return F.cross_entropy(logits, y), logits, None


@dataclass
class Round:
    epochs: int
    lr: float
    lr_drops: list[float]
    gamma: float
    schedule_offset: int = 0          # lth: the lr schedule resumes at the rewind epoch
    schedule_epochs: int | None = None
    begin: Callable | None = None     # begin(model, masks) -> masks: prune / rewind at the round's start
    level: float | None = None        # an iterative chain's level (a grid sparsity) this round completes
    schedule: str = "step"            # the lr's shape over the schedule: step | cosine | onecycle (lr_at)


@dataclass
class Recipe:
    rounds: list[Round]
    loss: LossFn = cross_entropy
    masks: dict | None = None         # initial masks (None = dense)
    epoch_hook: Callable | None = None  # epoch_hook(model, masks, epoch) -> masks (gradual pruning)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    snapshots: list[int] = field(default_factory=list)   # epochs whose weights are kept (rewinding)


def drop_epoch(fraction: float, epochs: int) -> int:
    """The epoch where a drop at `fraction` of the schedule takes effect: floor(f * epochs + 0.5), halves
    rounded up (Python's round() rounds them to even: 0.5 x 5 = 2.5 would give epoch 2, not 3). The
    round(.., 9) keeps the decimal product (0.7 * 5 = 3.4999999999999996 in floats) from rounding down."""
    return math.floor(round(fraction * epochs, 9) + 0.5)


# OneCycle (Smith & Topin 2019) as torch.optim.lr_scheduler.OneCycleLR runs it with its defaults: warm up
# from lr / 25 to lr over the first 30% of the steps, then anneal to lr / 25 / 1e4, both halves cosine.
ONECYCLE_PCT, ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4


def _cos(a: float, b: float, t: float) -> float:
    """From a (t = 0) to b (t = 1) along half a cosine."""
    return b + (a - b) * (1 + math.cos(math.pi * t)) / 2


def lr_at(r: Round, epoch: int) -> float:
    """The lr of `epoch` of a round (one value per epoch; the loop gives it to the optimizer at the epoch's
    start). The schedule runs over schedule_epochs (default: the round's epochs); lth rounds start at
    schedule_offset (the rewind epoch) of the dense schedule.
    - step (He et al. 2016): lr x gamma from each drop epoch (lr_drops) on;
    - cosine (Loshchilov & Hutter 2017, without restarts; CosineAnnealingLR): lr (1 + cos(pi e / E)) / 2;
    - onecycle (Smith & Topin 2019; OneCycleLR with its defaults, an epoch per step): lr / 25 rising to lr
      at epoch 0.3 E - 1, then falling to lr / 25 / 1e4 at the last epoch E - 1, both halves cosine.
    lr_drops and gamma are read by step only."""
    total = r.schedule_epochs or r.epochs
    e = epoch + r.schedule_offset
    if r.schedule == "step":
        return r.lr * r.gamma ** sum(e >= drop_epoch(f, total) for f in r.lr_drops)
    if r.schedule == "cosine":
        return r.lr * (1 + math.cos(math.pi * e / total)) / 2
    if r.schedule == "onecycle":
        start, low = r.lr / ONECYCLE_DIV, r.lr / ONECYCLE_DIV / ONECYCLE_FINAL_DIV
        peak = float(ONECYCLE_PCT * total) - 1           # OneCycleLR's end of the warm-up phase (a float step)
        if e <= peak:
            return _cos(start, r.lr, e / peak) if peak > 0 else r.lr
        return _cos(r.lr, low, (e - peak) / (total - 1 - peak))
    raise ValueError(f"lr schedule {r.schedule!r}: must be step, cosine or onecycle")


# -------------------------------------------------------------------------------------------- the loop


@dataclass
class Trained:
    """What the training loop returns: the trained model and its masks, one history row per epoch, the epochs
    and seconds it took (every process that worked on it), the dense snapshots it saved, a chain's levels
    ({sparsity: model, masks, rounds, epochs, seconds}) and how the step ran (cuda_graphs)."""
    model: nn.Module
    masks: dict | None
    epochs: int
    seconds: float
    history: list = field(default_factory=list)
    snapshots: dict = field(default_factory=dict)
    levels: dict = field(default_factory=dict)
    cuda_graphs: str = "off"


def cpu_state(model: nn.Module) -> dict:
    """The model's weights, detached, on the CPU (a compiled model's underlying module)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in getattr(model, "_orig_mod", model).state_dict().items()}


def _rng_state(g: torch.Generator) -> dict:
    return {"data": g.get_state(), "torch": torch.get_rng_state()}


_clock = time.perf_counter   # the training time's clock (a test replaces it)


def run(recipe: Recipe, model: nn.Module, data: Data, rt: Runtime, seed: int, ckpt: Path, key: str,
        log: Callable[[int, dict], None] = lambda step, m: None, run_id: str | None = None,
        on_fallback: Callable[[str], None] = lambda reason: None,
        on_resume: Callable[[int, int, int], None] = lambda epochs, rnd, epoch: None) -> Trained:
    """Train through every round; return what was trained (Trained).
    A checkpoint is written at `ckpt` after every epoch (atomically) and resumed from if it exists and its
    `key` (a hash of the job's parameters) matches; one with another key is refused, never overwritten.
    "seconds" is the training time of every process that worked on the model (the checkpoint carries the
    time of its completed epochs; an epoch a killed process did not finish is trained, and counted, again).
    A non-finite loss raises Diverged naming the epoch and step, before that epoch is checkpointed.
    A captured step that fails (captured.py) prints one warning line, calls `on_fallback(reason)` and the job
    continues eagerly ("cuda_graphs" in the result: "off", "captured" or "fallback: <reason>"); with
    runtime.cuda_graphs: true it raises GraphsFailed.
    `on_resume(epochs done, round, epoch within it)` is called once when a checkpoint is resumed from."""
    t0 = _clock()
    model = to_device(model, rt)
    step_model = torch.compile(model) if rt.compile else model
    g = torch.Generator().manual_seed(seed)
    masks = _to(recipe.masks, rt.device)
    graphs = captured.Graphs(strict=rt.graphs_strict, on_fallback=on_fallback) if rt.graphs else None
    start_round, start_epoch, history, snapshots, levels, before = 0, 0, [], {}, {}, 0.0
    if ckpt.exists():
        state = load_checkpoint(ckpt, keys=("key", "round", "epoch", "model", "optimizer", "rng"))
        _refuse_other_key(ckpt, state["key"], key)
        model.load_state_dict(state["model"])
        masks = _to(state["masks"], rt.device)
        g.set_state(state["rng"]["data"])
        torch.set_rng_state(state["rng"]["torch"])
        start_round, start_epoch = state["round"], state["epoch"]
        history, snapshots, levels = state["history"], state["snapshots"], state.get("levels", {})
        before = float(state.get("train_seconds", 0.0))
    else:
        state = None
    total_epochs = sum(r.epochs for r in recipe.rounds[:start_round]) + start_epoch
    if state is not None:
        on_resume(total_epochs, start_round, start_epoch)

    for ri in range(start_round, len(recipe.rounds)):
        rnd = recipe.rounds[ri]
        resuming = state is not None and ri == start_round
        if not resuming and rnd.begin is not None:
            masks = _to(rnd.begin(model, masks), rt.device)
        weights = None if masks is None else masked_weights(model, masks)
        if weights is not None:
            M.apply(weights, masks)
        opt = torch.optim.SGD(model.parameters(), lr=rnd.lr, momentum=recipe.momentum,
                              weight_decay=recipe.weight_decay)
        if resuming:
            opt.load_state_dict(state["optimizer"])
        first = start_epoch if resuming else 0
        if not resuming and 0 in recipe.snapshots and ri == 0:
            snapshots[0] = cpu_state(model)
        for epoch in range(first, rnd.epochs):
            if recipe.epoch_hook is not None:
                masks = recipe.epoch_hook(model, masks, epoch)
                weights = masked_weights(model, masks)
                M.apply(weights, masks)
            lr = lr_at(rnd, epoch)
            for pg in opt.param_groups:
                pg["lr"] = lr
            metrics = train_epoch(step_model, model, opt, recipe, data, rt, g, epoch, weights, masks, graphs,
                             halt=faults.at(ri, epoch))
            bad = metrics.pop("first_bad_step")
            if not math.isfinite(metrics["train_loss"]):
                where = f"first at step {bad} of {max(1, len(data.train_y) // recipe.batch_size)}" if bad >= 0 \
                    else "its sum over the epoch overflowed"
                raise Diverged(f"the training loss is not finite in round {ri}, epoch {epoch} (counting from 0), "
                               f"{where} (lr {lr:g}); no model written")
            metrics.update(lr=lr, val_acc=accuracy(step_model, data, "val", rt), round=ri)
            if masks is not None:
                metrics["sparsity"] = M.stats(masks)["sparsity"]
            total_epochs += 1
            history.append(metrics)
            if ri == 0 and epoch + 1 in recipe.snapshots:
                snapshots[epoch + 1] = cpu_state(model)
            stop = log(total_epochs, metrics)    # an exception (the tracking server is down): raised once
            if rnd.level is not None and epoch + 1 == rnd.epochs:     # a chain's level: kept, and checkpointed
                levels[rnd.level] = {"model": cpu_state(model), "masks": {n: m.cpu() for n, m in masks.items()},
                                     "rounds": ri + 1, "epochs": total_epochs, "seconds": before + _clock() - t0}
            io.save({"kind": "checkpoint", "key": key, "round": ri, "epoch": epoch + 1, "model": cpu_state(model),
                     "optimizer": opt.state_dict(), "rng": _rng_state(g), "history": history,
                     "masks": None if masks is None else {n: m.cpu() for n, m in masks.items()},
                     "snapshots": snapshots, "levels": levels, "run_id": run_id,
                     "train_seconds": before + _clock() - t0}, ckpt)
            if isinstance(stop, BaseException):   # ... this epoch is checkpointed: a rerun resumes after it
                raise stop
        state = None
    mode = "off" if graphs is None else "captured" if graphs.reason is None else f"fallback: {graphs.reason}"
    return Trained(model=model, masks=masks, history=history, epochs=total_epochs, snapshots=snapshots,
                   levels=levels, seconds=before + _clock() - t0, cuda_graphs=mode)


def _refuse_other_key(ckpt: Path, found: str, key: str) -> None:
    if found != key:
        raise io.CorruptFile(f"{ckpt}: checkpoint belongs to other parameters (key {found}, this job "
                             f"{key}); move it away to start over")


def load_checkpoint(ckpt: Path, keys) -> dict:
    """A job's own checkpoint. Damaged, it is no output to rebuild: the message says to delete it, which
    restarts the job from its inputs (the last good outputs before it), not "rerun the stage that writes it"
    (this very job, which would read it again)."""
    try:
        return io.load(ckpt, "checkpoint", keys=keys)
    except io.CorruptFile as e:
        why = str(e).removesuffix("; rerun the stage that writes it")
        raise io.CorruptFile(f"{why}. It is this job's own checkpoint, not an input: delete it (rm {ckpt}) and "
                             f"rerun the job; it restarts from its inputs, the last good outputs before it, and "
                             f"trains its epochs again") from None


def checkpoint_run_id(ckpt: Path, key: str | None = None) -> str | None:
    """The MLflow run a killed job had started, so that its resume continues the same run. With `key`, a
    checkpoint of other parameters is refused here, before its MLflow run is touched."""
    if not ckpt.exists():
        return None
    state = load_checkpoint(ckpt, keys=("key", "run_id"))
    if key is not None:
        _refuse_other_key(ckpt, state["key"], key)
    return state.get("run_id")


def _to(masks: dict | None, device) -> dict | None:
    return None if masks is None else {n: m.to(device) for n, m in masks.items()}


def masked_weights(model: nn.Module, masks: dict) -> dict:
    params = dict(model.named_parameters())
    return {n: params[n] for n in masks}


def train_epoch(step_model, model, opt, recipe: Recipe, data: Data, rt: Runtime, g, epoch, weights, masks,
           graphs: captured.Graphs | None = None, observe: Callable | None = None, halt=None) -> dict:
    """One epoch. `graphs`: the job's CUDA-graph state (rt.graphs; None: a fresh one). `observe(i, loss,
    logits)`: called after every step with its outputs (benchmarks/gpu_check.py records them). `halt` =
    (step, action): action() just before that step (pipeline/faults.py: the tests' kill and pause points)."""
    step_model.train()
    n = len(data.train_y)
    loss_sum = torch.zeros((), device=rt.device)
    correct = torch.zeros((), device=rt.device)
    radius = None
    # The first step whose loss is not finite (-1: none), kept on the device: no host sync per step.
    first_bad = torch.full((), -1, dtype=torch.long, device=rt.device)
    # drop_last: every step sees a full batch (no tiny last batch that destabilises batch norm)
    steps = max(1, n // recipe.batch_size)
    order, flips, offs = draw_epoch(n, recipe.batch_size, steps, g, rt.device)
    # The masks as 0/1 in the weights' dtype once per epoch, not converted from bool after every step.
    keep = None if weights is None else {k: m.to(weights[k].dtype) for k, m in masks.items()}

    def step(x, y):
        # autocast's weight-cast cache cannot live in a CUDA graph; without it the casts are the same.
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp, cache_enabled=not rt.graphs):
            loss, logits, radius = recipe.loss(step_model, x, y, epoch, data.normalize)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if weights is not None:
            M.apply(weights, keep)
        return loss, logits, radius
    if rt.graphs:
        graphs = graphs or captured.Graphs(strict=rt.graphs_strict)
        step = graphs.wrap(step, model, opt, None if weights is None else
                           {k: (weights[k], masks[k].logical_not()) for k in weights})
    for i in range(steps):
        if halt is not None and i == halt[0]:
            halt[1]()
        idx = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
        x = augment(data.train_x[idx].float().div_(255), flips[i], offs[i])
        y = data.train_y[idx]
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, logits, radius = step(x, y)
        if observe is not None:
            observe(i, loss, logits)
        loss_sum += loss.detach().float() * len(y)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), i, first_bad)
        correct += (logits.argmax(1) == y).sum()
    seen = steps * min(recipe.batch_size, n)
    out = {"train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
           "first_bad_step": int(first_bad)}
    if radius is not None:
        out["radius"] = full_band_radius(x.shape[-1]) if math.isinf(radius) else float(radius)   # corner
    return out
