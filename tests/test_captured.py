"""The captured step's bookkeeping (pipeline/captured.py), on the CPU, under an emulation of CUDA graphs.

No GPU runs here (benchmarks/gpu_check.py compares captured and eager on a real one). What this checks is
the part that is ours, not CUDA's: which calls run eagerly, when capture happens, that each batch reaches the
static input buffers before a replay, that the batch of the capturing call is trained exactly once, that the
loop reads the static outputs after each replay, and that a new epoch captures again. The emulation keeps
CUDA's contract: capture RECORDS the step without running it (the state the step changes is put back), and
replay runs the recorded step on the static inputs, writing into the static outputs. Under it, a captured
run must give exactly the eager run's weights and metrics.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from pipeline import captured, methods, models, train as T


class Emulation:
    """torch.cuda's Stream, stream, current_stream, CUDAGraph and graph, on the CPU."""

    def __init__(self, model):
        self.model, self.optimizers, self.steps, self.graphs, self.replays = model, [], [], 0, 0

    def graph(self, g):
        @contextlib.contextmanager
        def capture():
            params = {n: p.detach().clone() for n, p in self.model.state_dict().items()}
            grads = [p.grad for p in self.model.parameters()]
            buffers = [{k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
                       for o in self.optimizers for s in o.state.values()]
            yield
            with torch.no_grad():       # recorded, not run: what the step changed is put back
                for n, t in self.model.state_dict().items():
                    t.copy_(params[n])
                for p, gr in zip(self.model.parameters(), grads):
                    p.grad = gr
                for saved, s in zip(buffers, [s for o in self.optimizers for s in o.state.values()]):
                    for k, v in saved.items():
                        s[k].copy_(v)
        return capture()

    def install(self, monkeypatch):
        class Graph:
            def __init__(graph):
                self.graphs += 1
                graph.owner = self.steps[-1]       # the CapturedStep that is capturing

            def replay(graph):
                self.replays += 1
                s = graph.owner
                new = s.step(s.x, s.y)               # the recorded step, on the static inputs ...
                for static, fresh in zip(s.out, new):
                    if torch.is_tensor(static):     # ... written into the static outputs
                        static.copy_(fresh)

        class Stream:
            def wait_stream(self, other):
                pass

        class Step(captured.CapturedStep):
            def __init__(step, fn):
                super().__init__(fn)
                self.steps.append(step)

        sgd = torch.optim.SGD

        def optimizer(*a, **k):
            self.optimizers.append(sgd(*a, **k))
            return self.optimizers[-1]
        monkeypatch.setattr(T, "CapturedStep", Step)
        monkeypatch.setattr(torch.optim, "SGD", optimizer)
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda: Stream())
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", self.graph)


def _blob(n=96, test=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = lambda k: torch.randint(0, 256, (k, 3, 32, 32), dtype=torch.uint8, generator=g)   # noqa: E731
    y = lambda k: torch.randint(0, 4, (k,), generator=g)                                   # noqa: E731
    return {"train_x": x(n), "train_y": y(n), "val_x": x(test), "val_y": y(test), "test_x": x(test),
            "test_y": y(test), "classes": ["a", "b", "c", "d"]}


def _train(tmp_path, loss_name, graphs, monkeypatch=None):
    data = T.Data(_blob(), "cpu")
    model = models.build("resnet20", 4, width=0.25, seed=0)
    mask = {n: torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < 0.3
            for n, w in models.prunable(model).items()}
    teacher = models.build("resnet20", 4, width=0.25, seed=1).eval()
    loss = {"ce": T.cross_entropy,
            "kd": methods.kd_loss(teacher, 4.0, 0.9),
            "fourier_kd": methods.kd_loss(teacher, 4.0, 0.9, radius_fn=lambda e: [4.0, 8.0][e])}[loss_name]
    recipe = T.Recipe([T.Round(epochs=2, lr=0.05, lr_drops=[0.5], gamma=0.1)], loss=loss, masks=mask,
                      batch_size=16)
    emulation = None
    if graphs:
        emulation = Emulation(model)
        emulation.install(monkeypatch)
    rt = T.Runtime(torch.device("cpu"), amp=False, channels_last=False, compile=False, graphs=graphs)
    out = T.run(recipe, model, data, rt, seed=0, ckpt=tmp_path / f"{loss_name}-{graphs}.pt", key="k")
    if graphs:
        monkeypatch.undo()
    return out, emulation


@pytest.mark.parametrize("loss_name", ["ce", "kd", "fourier_kd"])
def test_captured_training_equals_eager_under_graph_semantics(tmp_path, monkeypatch, loss_name):
    eager, _ = _train(tmp_path, loss_name, graphs=False)
    capt, emu = _train(tmp_path, loss_name, graphs=True, monkeypatch=monkeypatch)
    steps = 96 // 16
    # one capture per epoch (the radius and lr are constants only within one), after WARMUP eager steps;
    # every later step, the capturing call's batch included, is one replay
    assert emu.graphs == 2 and emu.replays == 2 * (steps - captured.WARMUP)
    for n, t in eager["model"].state_dict().items():
        assert torch.equal(t, capt["model"].state_dict()[n]), f"{n} differs between captured and eager"
    for a, b in zip(eager["history"], capt["history"]):
        assert a == b
    zeros = sum(int((~m).sum()) for m in eager["masks"].values())
    assert sum(int((w == 0).sum()) for n, w in capt["model"].named_parameters() if n in capt["masks"]) >= zeros


def test_a_replay_without_the_new_batch_would_be_caught(tmp_path, monkeypatch):
    """The emulation can fail: a CapturedStep that forgets to copy the batch into its static input trains
    on a stale batch, and the weights then differ from eager."""
    eager, _ = _train(tmp_path, "ce", graphs=False)

    def stale(self, x, y):
        self.calls += 1
        if self.calls <= captured.WARMUP:
            return self.step(x, y)
        if self.graph is None:
            self.x, self.y = x.clone(), y.clone()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.step(self.x, self.y)
        self.graph.replay()                     # the bug: no copy of (x, y) into the static buffers
        return self.out
    monkeypatch.setattr(captured.CapturedStep, "__call__", stale)
    capt, _ = _train(tmp_path, "ce", graphs=True, monkeypatch=monkeypatch)
    assert any(not torch.equal(t, capt["model"].state_dict()[n]) for n, t in eager["model"].state_dict().items())
