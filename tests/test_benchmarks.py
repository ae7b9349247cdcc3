"""The benchmark script runs (tiny sizes) and prints every row; no timing is asserted (see benchmarks/)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.emulation import FAULTS
from benchmarks.run import ROWS, write_results
from pipeline.config.layout import ROOT
from pipeline.config import loading


def test_quick_run_prints_every_row(tmp_path, env):
    out = tmp_path / "bench.md"
    p = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    table = [ln for ln in p.stdout.splitlines() if ln.startswith("| ")]
    for name in ROWS:
        row = next((ln for ln in table if ln.startswith(f"| {name} |")), None)
        assert row is not None, f"row {name!r} missing from:\n{p.stdout}"
        ratio, target = [c.strip() for c in row.split("|")[2:4]]
        assert target, row
        if ratio == "n/a":
            assert "skipped" in row, row              # not measured: it says why (never a failure)
        else:
            assert float(ratio) >= 0, row
    for head in ("machine:", "torch", "date:"):
        assert head in p.stdout
    assert "| dense training: suite / bare loop |" in out.read_text()


def test_results_go_into_the_results_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# B\n\nintro\n\n## Results\n\nplaceholder\n\n## Later\n\nkept\n")
    write_results(readme, "| a | b |\n")
    write_results(readme, "| c | d |\n")             # a second run replaces the first
    text = readme.read_text()
    assert text == "# B\n\nintro\n\n## Results\n\n| c | d |\n\n## Later\n\nkept\n"
    plain = tmp_path / "plain.md"
    write_results(plain, "| x |")
    assert plain.read_text() == "| x |\n"


def test_gpu_check_runs_on_the_cpu_and_feeds_plan(tmp_path, env):
    """The device check script (torch + the pipeline's core only) runs here with tiny sizes; its JSON is what
    `python -m pipeline plan` prices the grid with."""
    # As on the GPU image: no MLflow, Snakemake or DVC (an import of any of them fails)
    bare = ("import sys, runpy\n"
            "for m in ('mlflow', 'snakemake', 'dvc'): sys.modules[m] = None\n"
            "sys.argv[0] = 'gpu_check'\n"
            "runpy.run_module('benchmarks.gpu_check', run_name='__main__', alter_sys=True)")
    p = subprocess.run([sys.executable, "-c", bare, "--quick", "--out", str(tmp_path)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    for kind in ("dense", "masked", "kd", "fourier_kd", "eval"):
        assert f"| resnet20 | {kind} |" in p.stdout
    assert "captured vs eager: skipped (no CUDA device)" in p.stdout
    (path,) = tmp_path.glob("throughput-*.json")
    measured = json.loads(path.read_text())
    assert set(measured["img_per_s"]["resnet20"]) == {"dense", "masked", "kd", "fourier_kd", "eval"}
    assert all(v > 0 for v in measured["img_per_s"]["resnet20"].values())
    p = subprocess.run([sys.executable, "-m", "pipeline", "plan", "--experiment", "smoke", "--throughput", str(path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "INCOMPLETE" not in p.stdout and "total:" in p.stdout


def test_ab_compares_with_a_git_revision(env):
    """benchmarks/ab.py imports a revision's pipeline/ beside this one (here HEAD against itself: a row per
    step kind, both sides measured); a revision that does not exist is refused before any compute."""
    p = subprocess.run([sys.executable, "-m", "benchmarks.ab", "--base", "HEAD", "--quick", "--reps", "1",
                        "--kinds", "dense,fourier_kd"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    for kind in ("dense", "fourier_kd"):
        row = next(ln for ln in p.stdout.splitlines() if ln.startswith(f"| {kind} step: this checkout / HEAD |"))
        assert float(row.split("|")[2]) > 0 and "new " in row and "base " in row
    p = subprocess.run([sys.executable, "-m", "benchmarks.ab", "--base", "no-such-revision"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "--base no-such-revision" in p.stderr and "[bench" not in p.stderr


def test_gpu_check_writes_what_it_measured_when_a_later_row_fails(tmp_path, monkeypatch):
    """One GPU run may be all a session gets: a failure part-way keeps the rows measured before it (JSON and
    table, the error named in both) and exits 1."""
    import torch

    from benchmarks import gpu_check as G
    measured = G.suite_img_s

    def fails_for_resnet56(setup, batch, steps):
        if setup.arch == "resnet56":
            raise RuntimeError("simulated failure")
        return measured(setup, batch, steps)
    monkeypatch.setattr(G, "suite_img_s", fails_for_resnet56)
    threads = torch.get_num_threads()
    try:
        rc = G.main(["--quick", "--archs", "resnet20,resnet56", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 1
    (path,) = tmp_path.glob("throughput-*.json")
    r = json.loads(path.read_text())
    assert set(r["img_per_s"]) == {"resnet20"} and r["errors"] == ["RuntimeError: simulated failure"]
    from pipeline.planning import plan as P
    assert "the measurement reports errors: RuntimeError: simulated failure" in P.plan(loading.load("smoke"), "smoke", r)


@pytest.mark.parametrize("fault", [None, *FAULTS])
@pytest.mark.parametrize("kind", ["dense", "masked", "kd", "fourier_kd"])
def test_gpu_check_catches_every_wrong_captured_step(kind, fault, capsys):
    """Under the emulation of CUDA graphs, each fault injected into the captured step fails the capture
    check (exit 1) and is named; without a fault every check passes (exit 0). A dense step has no mask, so
    leaving the mask out changes nothing there, and the check must then pass."""
    from benchmarks import gpu_check as G
    rc = G.main(["--quick", "--emulate", "--kinds", kind] + (["--inject", fault] if fault else []))
    out = capsys.readouterr().out
    if fault is None or (kind, fault) == ("dense", "no_mask"):
        assert rc == 0, out
        assert "the captured step agrees with eager on every check" in out
    else:
        assert rc == 1, out
        assert out.strip().splitlines()[-1] == (f"emulated CUDA graphs, the injected fault {fault}: the captured "
                                                f"step is WRONG: resnet20 {kind}: {fault}")


def test_device_check_runs_every_step_on_the_cpu_emulation(tmp_path, env):
    """The one prepared device script, as on a bare GPU image (no MLflow, Snakemake or DVC: plan is then
    skipped with the command to run elsewhere), on the CPU under the emulation of CUDA graphs: gpu_check
    and its JSON, train.run captured vs eager (identical weights: the CPU is deterministic), a SIGKILL after
    epoch 1 and a resume under capture (identical to the uninterrupted run); one table, exit 0."""
    bare = ("import sys, runpy\n"
            "for m in ('mlflow', 'snakemake', 'dvc'): sys.modules[m] = None\n"
            "sys.argv[0] = 'device_check'\n"
            "runpy.run_module('benchmarks.device_check', run_name='__main__', alter_sys=True)")
    p = subprocess.run([sys.executable, "-c", bare, "--quick", "--emulate", "--kinds", "masked", "--out",
                        str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = {ln.split(" | ")[0][2:]: ln.split(" | ")[1:] for ln in p.stdout.splitlines() if ln.startswith("| ")}
    assert rows["gpu_check: capture check (emulated)"][0] == "ok"
    assert rows["gpu_check"][0] == "ok" and str(tmp_path / "throughput-cpu.json") in rows["gpu_check"][1]
    assert rows["train.run, captured vs eager (2 epochs)"][0] == "ok"
    assert "captured run: captured; weights identical" in rows["train.run, captured vs eager (2 epochs)"][1]
    kill = rows["kill after epoch 1, resume under capture"]
    assert kill[0] == "ok" and "killed (SIGKILL) with epoch 1 checkpointed; resumed to 2 epochs, captured" in kill[1]
    assert kill[1].endswith("weights identical |")
    assert rows["plan"][0] == "-" and "skipped (snakemake is not installed here): run `python -m pipeline plan " \
                                      "--experiment smoke --throughput" in rows["plan"][1]


def test_device_check_fails_when_the_captured_training_falls_back(tmp_path, monkeypatch):
    """A capture that raises (emulated) makes train.run fall back: the device check's training rows then
    fail, naming the fallback and its reason."""
    from benchmarks import device_check as DC
    from benchmarks.emulation import Emulation
    monkeypatch.setattr(DC, "Emulation", lambda: Emulation("replay"))
    rows = DC.training_rows(DC.sizes(True), True, True, tmp_path)
    assert [ok for _, ok, _ in rows] == [False, False]
    assert "captured run: fallback: raised on replay (RuntimeError: emulated: CUDA graph launch failed)" in rows[0][2]
    assert "resumed to 2 epochs, fallback: raised on replay" in rows[1][2]
