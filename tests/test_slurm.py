"""The same DAG on a real SLURM: a single-node cluster on this host (tests/slurm/start.sh), the smallest
smoke DAG that trains (prepare -> train_dense -> prune -> retrain fourier_kd) through the SLURM profile,
logging to an MLflow tracking server. Checks: every job ran as a SLURM job (the job-completion log), the
outputs equal the local smoke run's bit for bit (the session's `smoke` fixture, shared with test_e2e), MLflow
holds every run; then a job cancelled mid-epoch is resubmitted by Snakemake, resumes from its checkpoint (same
MLflow run) and ends equal to the uninterrupted run. The job is cancelled while it waits at an exact step
(PIPELINE_TEST_PAUSE_AT, pipeline/infra/faults.py): no timing window.

Needs root and slurm-wlm + munge (start.sh installs them with apt-get). Where SLURM cannot start, the tests
skip with the reason; under CI=true they fail instead (.ci/run runs them)."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.infra import faults
from pipeline.config.layout import ROOT
from tests.conftest import interrupt, unavailable, wait_for
from tests.mlflow_server import mlflow_server

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SLURM = ROOT / "tests" / "slurm"
CELL = "runs/smoke/{stage}/synthetic/resnet20/seed0"
TARGET = CELL.format(stage="retrain") + "/s0.9/fourier_kd/model.pt"
OUTPUTS = ["runs/smoke/data/synthetic.pt", CELL.format(stage="dense") + "/model.pt",
           CELL.format(stage="dense") + "/snapshots.pt", CELL.format(stage="prune") + "/s0.9/mask.pt", TARGET]
DAG_LIMIT = 1200      # seconds: a hard limit on every Snakemake run (SIGINT cancels its SLURM jobs)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A single-node SLURM with 2 fake GPUs for this module; stopped (only its own PIDs) afterwards."""
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        unavailable("snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    if os.geteuid() != 0:
        unavailable("starting slurmctld/slurmd/munged for the test cluster needs root")
    folder = tmp_path_factory.mktemp("slurm")
    r = subprocess.run(["bash", str(SLURM / "start.sh"), str(folder), "2"], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        subprocess.run(["bash", str(SLURM / "stop.sh"), str(folder)], timeout=60)
        unavailable(f"SLURM could not start: {r.stderr.strip()[-1500:]}")
    yield folder
    subprocess.run(["bash", str(SLURM / "stop.sh"), str(folder)], timeout=60)


def project_copy(folder: Path) -> Path:
    repo = folder / "repo"
    repo.mkdir(parents=True)
    for f in ("Snakefile", "params.yaml"):
        shutil.copy(ROOT / f, repo / f)
    for d in ("pipeline", "configs", "profiles", "tests/slurm/profile"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def environment(repo: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PIPELINE_RUNS")}
    env.update(PATH=f"{BIN}:{env['PATH']}", PYTHONPATH=str(repo), PYTHONHASHSEED="0", **extra)
    return env


def snakemake(args: str, repo: Path, env: dict, limit: float = DAG_LIMIT) -> subprocess.Popen:
    log = open(repo / f"snakemake-{time.time_ns()}.log", "w+")
    p = subprocess.Popen(f"snakemake {args}", shell=True, cwd=repo, env=env, stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)
    p.log, p.limit, p.t0 = log, limit, time.time()
    return p


def finish(p: subprocess.Popen) -> str:
    """Wait within the hard limit (then interrupt it); the run's output."""
    try:
        p.wait(timeout=max(1.0, p.limit - (time.time() - p.t0)))
    except subprocess.TimeoutExpired:
        interrupt(p)
    p.log.seek(0)
    out = p.log.read()
    p.log.close()
    assert p.returncode == 0, f"snakemake exited {p.returncode} (limit {p.limit:.0f} s)\n{out[-4000:]}"
    return out


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def jobcomp(cluster: Path, run_id: str) -> list[str]:
    """States of this Snakemake run's SLURM jobs, from the job-completion log (no accounting daemon)."""
    lines = (cluster / "log" / "jobcomp.log").read_text().splitlines()
    return [re.search(r"JobState=(\S+)", ln).group(1) for ln in lines if f"Name={run_id} " in ln]


def run_id(out: str) -> str:
    return re.search(r"SLURM run ID: (\S+)", out).group(1)


@pytest.fixture(scope="module")
def dag(cluster, tmp_path_factory):
    """The DAG through SLURM (tracking server), in a project copy."""
    folder = tmp_path_factory.mktemp("dag")
    with mlflow_server(folder / "mlflow") as url:
        slurm_repo = project_copy(folder / "slurm")
        env = environment(slurm_repo, MLFLOW_TRACKING_URI=url, SLURM_CONF=str(cluster / "slurm.conf"))
        out = finish(snakemake(f"{TARGET} --profile tests/slurm/profile --configfile configs/smoke.yaml",
                               slurm_repo, env))
        # What this DAG left, recorded now: the cancel test reruns a job here (in any test order)
        left = {"md5": {f: md5(slurm_repo / f) for f in OUTPUTS},
                "runs": sorted((r.data.tags["stage"], r.info.status) for r in mlflow_runs(url))}
        yield {"repo": slurm_repo, "env": env, "url": url, "out": out, "cluster": cluster, **left}


def mlflow_runs(url: str):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(url)
    return client.search_runs([client.get_experiment_by_name("smoke").experiment_id], max_results=1000)


def test_every_job_is_a_slurm_job_outputs_equal_a_local_run_mlflow_holds_every_run(dag, smoke):
    repo, out = dag["repo"], dag["out"]
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    assert len(submitted) == 4, out[-3000:]                       # prepare, train_dense, prune, retrain
    assert jobcomp(dag["cluster"], run_id(out)) == ["COMPLETED"] * 4
    for f in OUTPUTS:
        assert dag["md5"][f] == md5(smoke.repo / f), f"{f} differs between SLURM and the local smoke run"
    metrics = (repo / TARGET).with_name("metrics.json").read_text()
    assert "1 thread(s) per job" in metrics                        # --threads {threads} reached the job
    assert dag["runs"] == [(stage, "FINISHED") for stage in ("prepare", "prune", "retrain", "train_dense")]


def test_a_job_cancelled_mid_epoch_is_resubmitted_and_resumes_from_its_checkpoint(dag, tmp_path):
    repo, cluster = dag["repo"], dag["cluster"]
    reference = md5(repo / TARGET)
    checkpoints = repo / "runs" / "smoke" / "checkpoints"
    # The retrain job waits at step 5 of epoch 1 (epoch 0 checkpointed), once: its resubmission runs through.
    paused = tmp_path / "paused"
    env = {**dag["env"], faults.PAUSE: "0,1,5", faults.PAUSE_FILE: str(paused)}
    # Targets first: --forcerun and --configfile take several values.
    p = snakemake(f"{TARGET} --profile tests/slurm/profile --forcerun retrain --configfile configs/smoke.yaml",
                  repo, env)
    try:
        wait_for(lambda: paused.exists() and paused.read_text().endswith("\n"), "the retrain job to pause",
                 DAG_LIMIT / 2, alive=lambda: p.poll() is None)
        assert len(list(checkpoints.glob("retrain-*.pt"))) == 1, "no checkpoint of epoch 0"
        running = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i"], env=env, capture_output=True,
                                 text=True, timeout=30).stdout.split()
        assert len(running) == 1, running
        subprocess.run(["scancel", running[0]], env=env, check=True, timeout=30)
    except BaseException:
        interrupt(p)
        raise
    out = finish(p)
    assert jobcomp(cluster, run_id(out)) == ["CANCELLED", "COMPLETED"], out[-3000:]
    assert md5(repo / TARGET) == reference, "the resumed job does not equal the uninterrupted run"
    assert not list(checkpoints.glob("retrain-*.pt"))               # its work done, the checkpoint is removed
    retrain = [r for r in mlflow_runs(dag["url"]) if r.data.tags["stage"] == "retrain"]
    assert len(retrain) == 2 and {r.info.status for r in retrain} == {"FINISHED"}   # resumed in the same run


def test_gpu_requests_get_the_nodes_fake_gpus(cluster, tmp_path):
    """resources.gpu = 1 becomes sbatch --gpus=1: the job sees one of the node's 2 GPUs; 3 cannot be had."""
    env = {**os.environ, "SLURM_CONF": str(cluster / "slurm.conf")}
    r = subprocess.run(["sbatch", "--wait", "--gpus=1", "-o", str(tmp_path / "out"), "--wrap",
                        "echo $CUDA_VISIBLE_DEVICES"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out").read_text().split() == ["0"]
    r = subprocess.run(["sbatch", "--gpus=3", "--wrap", "true"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "not available" in r.stderr, r.stderr


def test_a_missing_cluster_skips_locally_and_fails_on_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no slurmd here"):
        unavailable("no slurmd here")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but the test cannot run: no slurmd here"):
        unavailable("no slurmd here")
