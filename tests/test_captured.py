"""The captured step's bookkeeping (pipeline/core/captured.py), on the CPU, under an emulation of CUDA graphs.

No GPU runs here (benchmarks/gpu_check.py compares captured and eager on a real one). What this checks is
the part that is ours, not CUDA's: which calls run eagerly, when capture happens, that each batch reaches the
static input buffers before a replay, that the batch of the capturing call is trained exactly once, that the
loop reads the static outputs after each replay, and that a new epoch captures again. The emulation keeps
CUDA's contract: capture RECORDS the step without running it (the state the step changes is put back), and
replay runs the recorded step on the static inputs, writing into the static outputs. Under it, a captured
run must give exactly the eager run's weights and metrics.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.emulation import Emulation
from pipeline.core import captured, models, train as T
from pipeline.errors import GraphsFailed
from pipeline.methods import distill


def _blob(n=96, test=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = lambda k: torch.randint(0, 256, (k, 3, 32, 32), dtype=torch.uint8, generator=g)   # noqa: E731
    y = lambda k: torch.randint(0, 4, (k,), generator=g)                                   # noqa: E731
    return {"train_x": x(n), "train_y": y(n), "val_x": x(test), "val_y": y(test), "test_x": x(test),
            "test_y": y(test), "classes": ["a", "b", "c", "d"]}


def _train(tmp_path, loss_name, graphs, fault=None, strict=False, fallbacks=None):
    """Two epochs (lr and radius change between them) of 6 steps of 16 images; with `graphs`, under the
    emulation (with `fault`); `fallbacks` collects the reasons train.run reports."""
    data = T.Data(_blob(), "cpu")
    model = models.build("resnet20", 4, width=0.25, seed=0)
    mask = {n: torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < 0.3
            for n, w in models.prunable(model).items()}
    teacher = models.build("resnet20", 4, width=0.25, seed=1).eval()
    loss = {"ce": T.cross_entropy,
            "kd": distill.kd_loss(teacher, 4.0, 0.9),
            "fourier_kd": distill.kd_loss(teacher, 4.0, 0.9, radius_fn=lambda e: [4.0, 8.0][e])}[loss_name]
    recipe = T.Recipe([T.Round(epochs=2, lr=0.05, lr_drops=[0.5], gamma=0.1)], loss=loss, masks=mask,
                      batch_size=16)
    rt = T.Runtime(torch.device("cpu"), amp=False, channels_last=False, compile=False, graphs=graphs,
                   graphs_strict=strict)
    ckpt = tmp_path / f"{loss_name}-{graphs}-{fault}.pt"
    reasons = [] if fallbacks is None else fallbacks
    if not graphs:
        return T.run(recipe, model, data, rt, seed=0, ckpt=ckpt, key="k"), None
    with Emulation(fault) as emulation:
        out = T.run(recipe, model, data, rt, seed=0, ckpt=ckpt, key="k", on_fallback=reasons.append)
    return out, emulation


_EAGER: dict = {}


def _eager(tmp_path, loss_name):
    """The eager run of `loss_name`, once per test session (it is deterministic on the CPU)."""
    if loss_name not in _EAGER:
        _EAGER[loss_name] = _train(tmp_path, loss_name, graphs=False)[0]
    return _EAGER[loss_name]


def _same_weights(a, b):
    for n, t in a.model.state_dict().items():
        assert torch.equal(t, b.model.state_dict()[n]), f"{n} differs between captured and eager"


@pytest.mark.parametrize("loss_name", ["ce", "kd", "fourier_kd"])
def test_captured_training_equals_eager_under_graph_semantics(tmp_path, loss_name):
    eager = _eager(tmp_path, loss_name)
    capt, emu = _train(tmp_path, loss_name, graphs=True)
    steps = 96 // 16
    # one capture per epoch (the radius and lr are constants only within one), after WARMUP eager steps;
    # every later step, the capturing call's batch included, is one replay
    assert emu.graphs == 2 and emu.replays == 2 * (steps - captured.WARMUP)
    _same_weights(eager, capt)
    for a, b in zip(eager.history, capt.history):
        assert a == b
    assert capt.cuda_graphs == "captured" and eager.cuda_graphs == "off"
    zeros = sum(int((~m).sum()) for m in eager.masks.values())
    assert sum(int((w == 0).sum()) for n, w in capt.model.named_parameters() if n in capt.masks) >= zeros


def test_a_replay_without_the_new_batch_would_be_caught(tmp_path, monkeypatch):
    """The emulation can fail: a CapturedStep that forgets to copy the batch into its static input trains
    on a stale batch (which the first-capture check cannot see: the first replay's batch is the captured
    one), and the weights then differ from eager."""
    eager = _eager(tmp_path, "ce")

    def no_copy(self, x, y):
        self.graph.replay()                     # the bug: no copy of (x, y) into the static buffers
    monkeypatch.setattr(captured.CapturedStep, "_replay", no_copy)
    capt, _ = _train(tmp_path, "ce", graphs=True)
    assert capt.cuda_graphs == "captured"
    assert any(not torch.equal(t, capt.model.state_dict()[n]) for n, t in eager.model.state_dict().items())


# A graph that raises on capture's start or end or on replay (the first, or a later one mid-epoch), and replays
# that the first-capture check sees are wrong (no optimizer update, no mask, frozen batch-norm statistics).
FALLBACKS = {"enter": "raised on capture (RuntimeError: emulated: CUDA graph capture failed to begin)",
             "exit": "raised on capture (RuntimeError: emulated: operation failed due to a previous error during "
                     "capture)",
             "replay": "raised on replay (RuntimeError: emulated: CUDA graph launch failed)",
             "late_replay": "raised on replay (RuntimeError: emulated: CUDA graph launch failed)",
             "no_step": "disagreed with the eager step on its first capture: conv.weight differs by 1 of the "
                        "eager step's own change",
             "no_mask": "disagreed with the eager step on its first capture: ",
             "frozen_bn": "disagreed with the eager step on its first capture: bn.running_mean differs by 1 of the "
                          "eager step's own change"}


@pytest.mark.parametrize("fault", list(FALLBACKS))
def test_a_failing_capture_falls_back_to_the_eager_steps(tmp_path, capsys, fault):
    """The job finishes with exactly the eager run's weights and metrics (the batch of the failed capture or
    replay is trained once, eagerly, from the state before it), one warning line names runtime.cuda_graphs
    and the reason, and the reason reaches on_fallback (the MLflow tags, stages._train)."""
    eager = _eager(tmp_path, "ce")
    capsys.readouterr()
    reasons = []
    capt, emu = _train(tmp_path, "ce", graphs=True, fault=fault, fallbacks=reasons)
    _same_weights(eager, capt)
    assert [a == b for a, b in zip(eager.history, capt.history)] == [True, True]
    assert emu.graphs == 1                  # one capture tried; epoch 1 runs eagerly: no second capture
    assert emu.replays == {"enter": 0, "exit": 0, "late_replay": 2}.get(fault, 1)
    assert len(reasons) == 1 and reasons[0].startswith(FALLBACKS[fault]), reasons
    assert capt.cuda_graphs == f"fallback: {reasons[0]}"
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "runtime.cuda_graphs" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("warning: runtime.cuda_graphs: the captured training "
                                                         f"step {reasons[0]}; the job continues"), warnings


@pytest.mark.parametrize("fault", ["exit", "no_step"])
def test_cuda_graphs_true_stops_instead(tmp_path, fault):
    with pytest.raises(GraphsFailed) as e:
        _train(tmp_path, "ce", graphs=True, fault=fault, strict=True)
    assert str(e.value).startswith(f"runtime.cuda_graphs: true, and the captured training step {FALLBACKS[fault]}")


def test_one_side_stream_per_process():
    with Emulation():
        assert captured.side_stream() is captured.side_stream()


@pytest.mark.parametrize("setting", ["auto", True])
def test_a_job_whose_capture_raises_finishes_eagerly_with_the_tag(tmp_path, env, monkeypatch, setting):
    """`python -m pipeline train_dense` on a (emulated) GPU whose capture fails: with `auto` it exits 0, the
    warning line is on stderr and in the job's --log file, and the MLflow run carries cuda_graphs=fallback
    and the reason; with `true` it exits 5 naming runtime.cuda_graphs."""
    import contextlib
    import io as io_
    from dataclasses import replace

    import mlflow

    from pipeline.__main__ import main

    from .conftest import write_experiment
    tiny = {"synthetic": {"source": "synthetic", "classes": 10, "train_size": 160, "val_size": 32, "test_size": 32}}
    experiment = write_experiment(tmp_path, name="t", datasets=tiny, train={"epochs": 2, "batch_size": 16},
                                  runtime={"cuda_graphs": setting})
    monkeypatch.setenv("PIPELINE_CONFIGS", str(experiment.parent))     # --experiment t: tmp_path/t.yaml
    experiment = experiment.stem
    runtime = T.runtime
    monkeypatch.setattr(T, "runtime", lambda cfg: replace(runtime(cfg), graphs=True))   # as on CUDA
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    log, err = tmp_path / "job.log", io_.StringIO()
    try:
        with contextlib.redirect_stderr(err), Emulation("exit"):
            assert main(["prepare", "--experiment", str(experiment), "--dataset", "synthetic",
                         "--out", str(tmp_path / "d.pt")]) == 0, err.getvalue()
            code = main(["train_dense", "--experiment", str(experiment), "--dataset", "synthetic", "--arch",
                         "resnet20", "--seed", "0", "--data", str(tmp_path / "d.pt"), "--out",
                         str(tmp_path / "out" / "model.pt"), "--log", str(log)])
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
    reason = FALLBACKS["exit"]
    client = mlflow.tracking.MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id], "tags.stage = 'train_dense'")
    if setting is True:
        assert code == 5, err.getvalue()
        assert (f"captured CUDA step failed: runtime.cuda_graphs: true, and the captured training step {reason}"
                in err.getvalue())
        assert not (tmp_path / "out").exists() and run.info.status == "FAILED"
        return
    assert code == 0, err.getvalue()
    line = (f"warning: runtime.cuda_graphs: the captured training step {reason}; the job continues with eager "
            f"steps from the state before that capture (runtime.cuda_graphs: false skips the attempt)")
    assert [ln for ln in err.getvalue().splitlines() if "runtime.cuda_graphs" in ln] == [line]
    assert [ln for ln in log.read_text().splitlines() if "runtime.cuda_graphs" in ln] == [line]
    assert run.data.tags["cuda_graphs"] == "fallback" and run.data.tags["cuda_graphs_reason"] == reason
    assert run.info.status == "FINISHED" and (tmp_path / "out" / "model.pt").exists()
