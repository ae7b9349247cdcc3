"""A training step captured once as a CUDA graph and replayed for every batch (`runtime.cuda_graphs`).

Eager ResNet-20 at batch 128 on an H100 is bound by kernel launches and host work, not arithmetic (issue 9:
16 ms a step eagerly, 2.3 ms for the same step captured). So the whole step -- forward and loss (the
teacher's forward and the low-pass filter included), backward, the SGD step and the mask re-application --
is recorded once and replayed with each new batch copied into static input buffers.

Exactness: within an epoch, the radius and the learning rate are constants, so ONE capture per epoch
replays exactly the step the eager loop would run. The first `WARMUP` steps of each epoch run eagerly; they
are real training steps, not extra ones, and they create what capture cannot (the optimizer's momentum
buffers, the cached filter masks, cuBLAS workspaces). Capture only records kernels, so the batch of the
capturing call is then trained by the first replay. A new epoch (new radius, lr or masks) captures again.

Failure (issue 19): the step has never met every GPU, driver and torch build it may run on. A capture or
replay that raises, or a job's first capture that disagrees with the eager step (`disagreement`), puts the
state back as it was before that capture and the job continues with eager steps (`Graphs.fail`: one warning
line naming runtime.cuda_graphs and the reason); `runtime.cuda_graphs: true` raises GraphsFailed instead.
"""
from __future__ import annotations

import sys
from typing import Callable

import torch

from pipeline.errors import GraphsFailed

WARMUP = 3
# The first-capture self-check: the captured step and the eager step from the same state on the same batch.
# The same kernels on the same inputs agree to rounding (atomics in backward); a wrong step (no update, no
# mask, frozen batch-norm statistics) differs by about its whole effect.
LOSS_TOL = 1e-3      # relative difference of the losses
CHANGE_TOL = 0.05    # per tensor: |captured - eager| / |eager - before|, the eager step's own change

_side = None


def side_stream():
    """The one side stream of this process for every warm-up (PyTorch's capture recipe warms up on a side
    stream). cuBLAS keeps a workspace per (handle, stream) for the life of the process, so a new stream per
    epoch would grow the memory a job holds."""
    global _side
    if _side is None:
        _side = torch.cuda.Stream()
    return _side


class Graphs:
    """A job's use of CUDA graphs, across its epochs: `strict` (runtime.cuda_graphs: true) makes a failure
    raise; otherwise one warning line goes to stderr (and so to the job's log), `on_fallback(reason)` is
    called (the MLflow tags), and every later step of the job runs eagerly.
    `check`: the self-check on the job's first capture (benchmarks/gpu_check.py turns it off to examine the
    raw captured step itself)."""

    def __init__(self, strict: bool = False, on_fallback: Callable[[str], None] | None = None, check: bool = True):
        self.strict, self.on_fallback, self.check = strict, on_fallback, check
        self.checked = False              # the job's first capture passed the self-check
        self.reason: str | None = None    # why the job fell back to eager steps (None: it has not)

    def wrap(self, step: Callable, model, opt, pruned: dict | None = None) -> Callable:
        """An epoch's step, captured (or the eager step itself once the job has fallen back). `pruned`:
        {name: (weight, bool tensor of its pruned entries)}, which must be exactly zero after a replay."""
        return step if self.reason else CapturedStep(step, self, model, opt, pruned or {})

    def fail(self, reason: str) -> None:
        if self.strict:
            raise GraphsFailed(f"runtime.cuda_graphs: true, and the captured training step {reason}. Set "
                               f"runtime.cuda_graphs: auto to continue with eager steps, or false not to capture")
        self.reason = reason
        print(f"warning: runtime.cuda_graphs: the captured training step {reason}; the job continues with eager "
              f"steps from the state before that capture (runtime.cuda_graphs: false skips the attempt)",
              file=sys.stderr, flush=True)
        if self.on_fallback is not None:
            self.on_fallback(reason)


class CapturedStep:
    """step(x, y) -> (loss, logits, radius), run eagerly for WARMUP calls, then captured and replayed."""

    def __init__(self, step: Callable, graphs: Graphs, model, opt, pruned: dict):
        self.step, self.graphs, self.model, self.opt, self.pruned = step, graphs, model, opt, pruned
        self.calls, self.graph, self.eager = 0, None, False
        self.x = self.y = self.out = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        self.calls += 1
        if self.eager:
            return self.step(x, y)
        if self.calls <= WARMUP:
            return self._warm(x, y)
        if self.graph is None:
            return self._first(x, y)
        try:
            self._replay(x, y)
        except Exception as e:  # noqa: BLE001 - any failure of the graph falls back (or raises when strict)
            # A graph launch that fails enqueues nothing: the state is that before this step.
            return self._fall_back(f"raised on replay ({_name(e)})", None, x, y)
        return self.out

    def _warm(self, x, y):
        # On the side stream, as PyTorch's whole-network capture recipe warms up (autograd's and the
        # optimizer's lazily created state then lives where capture expects it).
        side = side_stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.step(x, y)
        torch.cuda.current_stream().wait_stream(side)
        return out

    def _first(self, x, y):
        """Capture, and train this call's batch by the first replay. The job's first capture is checked
        against the eager step from the same state on the same batch (run first, then undone)."""
        before, ref, stage = self._state(), None, "on capture"
        try:
            if self.graphs.check and not self.graphs.checked:
                loss = self._warm(x, y)[0].detach().float().clone()
                ref = (loss, self._state())
                self._restore(before)
            self.x, self.y = x.clone(), y.clone()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.step(self.x, self.y)
            stage = "on replay"
            self._replay(x, y)
        except Exception as e:  # noqa: BLE001 - any failure of the graph falls back (or raises when strict)
            return self._fall_back(f"raised {stage} ({_name(e)})", before, x, y)
        if ref is not None:
            bad = disagreement(ref[0], ref[1], self.out[0], self._state(), before, self._names(), self.pruned)
            if bad:
                return self._fall_back(f"disagreed with the eager step on its first capture: {bad}", before, x, y)
            self.graphs.checked = True
        return self.out

    def _replay(self, x, y):
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()

    def _fall_back(self, reason: str, before, x, y):
        self.graphs.fail(reason)               # raises GraphsFailed when runtime.cuda_graphs is true
        self.eager, self.graph, self.out = True, None, None
        if before is not None:
            self._restore(before)
        return self.step(x, y)                 # this call's batch, trained once, eagerly

    # The state a step changes: the model's parameters and buffers, the optimizer's (momentum) buffers.
    def _tensors(self) -> list:
        return list(self.model.state_dict().values()) + \
            [v for s in self.opt.state.values() for v in s.values() if torch.is_tensor(v)]

    def _names(self) -> list[str]:
        index = {id(p): n for n, p in self.model.named_parameters()}
        return list(self.model.state_dict()) + [f"optimizer {k} of {index.get(id(p), '?')}"
                                                for p, s in self.opt.state.items() for k, v in s.items()
                                                if torch.is_tensor(v)]

    def _state(self) -> list:
        return [t.detach().clone() for t in self._tensors()]

    def _restore(self, saved: list) -> None:
        now = self._tensors()
        if len(now) != len(saved):
            raise RuntimeError("captured step: the state changed shape during capture; cannot put it back")
        with torch.no_grad():
            for t, s in zip(now, saved):
                t.copy_(s)


def disagreement(loss_ref, state_ref, loss, state, before, names, pruned: dict) -> str | None:
    """Why a captured step differs from the eager one from the same state `before` on the same batch (None:
    it does not): the loss, every parameter, buffer and optimizer buffer (relative to the eager step's own
    change; integer buffers exactly), and pruned weights that are not exactly zero."""
    loss = loss.detach().float()
    if not torch.isclose(loss, loss_ref, rtol=LOSS_TOL, atol=0).item():
        return f"loss {loss.item():.6g} captured vs {loss_ref.item():.6g} eager"
    for name, r, c, b in zip(names, state_ref, state, before):
        if not r.is_floating_point():
            if not torch.equal(r, c):
                return f"{name} is {c.tolist()} captured vs {r.tolist()} eager"
            continue
        change, diff = (r - b).float().norm().item(), (c - r).float().norm().item()
        if not diff <= CHANGE_TOL * change + 1e-12 * (1 + r.float().norm().item()):
            return f"{name} differs by {diff / change if change else float('inf'):.3g} of the eager step's own change"
    for name, (w, off) in pruned.items():
        n = int((w.detach()[off] != 0).sum())
        if n:
            return f"{n} pruned weights of {name} are not zero after the replay"
    return None


def _name(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}"
