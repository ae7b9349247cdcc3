"""CUDA graphs emulated on the CPU, with faults to inject: how the captured step (pipeline/core/captured.py) and the
device check (benchmarks/gpu_check.py --emulate) are tested without a GPU.

The emulation keeps CUDA's contract: capture RECORDS the step without running it (whatever the step changed
while recording -- weights, buffers, gradients, optimizer buffers -- is put back), and a replay runs the
recorded step on the static inputs, writing into the static outputs. Under it, a right captured run gives
exactly the eager run's weights. `fault` makes it wrong the ways a real capture could be:

- raising: `enter` (capture fails as it starts), `exit` (capture fails as it ends), `replay` (every launch
  fails), `late_replay` (the second launch and later fail: mid-epoch, after a good first replay);
- a wrong replay (FAULTS): `stale_batch` (the graph reads the batch it was captured with, not the static
  input), `stale_labels` (the same for the labels only), `no_step` (the optimizer update is not in the
  graph), `no_mask` (the mask re-application is not in the graph), `frozen_bn` (batch-norm statistics
  are not updated by the graph).

Torch and the pipeline's core only, like gpu_check.
"""
from __future__ import annotations

import contextlib

import torch

from pipeline.core import captured, masks as M

FAULTS = ("stale_batch", "stale_labels", "no_step", "no_mask", "frozen_bn")
RAISES = ("enter", "exit", "replay", "late_replay")


class Emulation:
    """`with Emulation(fault): ...` replaces torch.cuda's Stream, stream, current_stream, CUDAGraph and graph
    (and records every CapturedStep made); counts captures and replays."""

    def __init__(self, fault: str | None = None):
        if fault is not None and fault not in FAULTS + RAISES:
            raise ValueError(f"fault {fault!r}: one of {', '.join(FAULTS + RAISES)}")
        self.fault, self.steps, self.graphs, self.replays = fault, [], 0, 0
        self._saved = []

    # ---------------------------------------------------------------------------------- CUDA's contract
    def _graph(self, g):
        emu = self

        @contextlib.contextmanager
        def capture():
            if emu.fault == "enter":
                raise RuntimeError("emulated: CUDA graph capture failed to begin")
            s = g.owner
            g.recorded = (s.x.clone(), s.y.clone())     # what a stale graph would read
            before = _state(s.model, s.opt)
            try:
                yield
            finally:
                _restore(s.model, s.opt, before)        # recorded, not run
            if emu.fault == "exit":
                raise RuntimeError("emulated: operation failed due to a previous error during capture")
        return capture()

    def _replay(self, g):
        self.replays += 1
        if self.fault == "replay" or (self.fault == "late_replay" and self.replays > 1):
            raise RuntimeError("emulated: CUDA graph launch failed")
        s, fault = g.owner, self.fault
        x, y = s.x, s.y
        if fault == "stale_batch":
            x, y = g.recorded
        elif fault == "stale_labels":
            y = g.recorded[1]
        keep = _state(s.model, s.opt)
        apply = M.apply
        if fault == "no_mask":
            M.apply = lambda weights, masks: None
        try:
            new = s.step(x, y)                          # the recorded step ...
        finally:
            M.apply = apply
        if fault == "no_step":                          # weights and optimizer buffers as before the step
            _restore(s.model, s.opt, keep, buffers=False)
        if fault == "frozen_bn":                        # batch-norm statistics as before the step
            _restore(s.model, None, keep, params=False)
        for static, fresh in zip(s.out, new):
            if torch.is_tensor(static):                 # ... written into the static outputs
                static.copy_(fresh)

    # ------------------------------------------------------------------------------------ installation
    def __enter__(self):
        emu = self

        class Graph:
            def __init__(g):
                emu.graphs += 1
                g.owner = emu.steps[-1]                 # the CapturedStep that is capturing

            def replay(g):
                emu._replay(g)

        class Stream:
            def wait_stream(self, other):
                pass

        class Step(captured.CapturedStep):
            def __init__(step, *a, **k):
                super().__init__(*a, **k)
                emu.steps.append(step)

        for obj, name, value in ((torch.cuda, "Stream", Stream), (torch.cuda, "current_stream", lambda: Stream()),
                                 (torch.cuda, "stream", lambda s: contextlib.nullcontext()),
                                 (torch.cuda, "CUDAGraph", Graph), (torch.cuda, "graph", self._graph),
                                 (captured, "CapturedStep", Step), (captured, "_side", None)):
            self._saved.append((obj, name, getattr(obj, name)))
            setattr(obj, name, value)
        return self

    def __exit__(self, *exc):
        for obj, name, value in reversed(self._saved):
            setattr(obj, name, value)
        self._saved.clear()
        return False


def _state(model, opt) -> dict:
    return {"params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "buffers": {n: b.clone() for n, b in model.named_buffers()},
            "grads": [p.grad for p in model.parameters()],
            "opt": [] if opt is None else [{k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
                                           for s in opt.state.values()]}


def _restore(model, opt, saved: dict, params: bool = True, buffers: bool = True) -> None:
    with torch.no_grad():
        if params:
            for n, p in model.named_parameters():
                p.copy_(saved["params"][n])
            for p, g in zip(model.parameters(), saved["grads"]):
                p.grad = g
            if opt is not None:
                for old, s in zip(saved["opt"], opt.state.values()):
                    for k, v in old.items():
                        s[k].copy_(v)
        if buffers:
            for n, b in model.named_buffers():
                b.copy_(saved["buffers"][n])
