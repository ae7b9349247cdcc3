"""MLflow: every job is one run (tags for stage, dataset, arch, seed, sparsity, method; the resolved params;
the git commit; the data checksum; per-epoch metrics; artifacts).

A run's name starts with the method and cell (`fourier_kd s0.9 seed0 | retrain synthetic/resnet20`). Tags say
what made it: `params_digest` (the job and every parameter it reads), `git_commit`, `invocation` (snakemake,
dvc or manual) and `invocation_id`. When a job runs again, its older runs get `superseded = "true"` (and
`superseded_by`), so the filter `tags.superseded = "false"` counts every model once. The experiment's
description (shown in the UI) says how to compare the methods.

On one machine, parallel jobs share one SQLite store. SQLite allows one writer at a time, so every call here
holds an exclusive file lock beside the store (and retries with backoff if the database still reports itself
locked): no lost run, no lost metric, no "database is locked" failure. On a cluster, jobs on many nodes log
to an MLflow tracking server (http(s)://host:port), which serialises writes itself: no lock then (a file lock
on a network filesystem is not to be trusted). A resumed job continues its run.
"""
from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from pipeline.config.catalog import color
from pipeline.config.layout import ROOT, digest
from pipeline.config.schema import Config
from pipeline.errors import ConfigError
from pipeline.errors import TrackingDown
from pipeline.infra.provenance import invocation

COMPARE_FILTER = 'tags.stage = "retrain" and tags.superseded = "false"'   # the README and tests use it
DESCRIPTION = """\
**{name}**: one run per job of the Snakemake/DVC DAG (Shang et al., ICASSP 2022: Fourier-guided MBP vs MBP baselines).

Compare the methods (Runs, table view):

1. Search: `{filter}` (retrained models, each counted once).
2. Columns: tick `test_acc` (final test accuracy; also `val_acc`, `train_seconds`). Sort: `test_acc`.
3. Several seeds: Group by `method` (a tag); a group row shows the mean over its seeds.

Spectral evaluations: `tags.stage = "spectral"` (band curves and heat map under each run's artifacts, figures/).
The written report with claims and intervals: runs/{name}/report/README.md.
"""
JOB_TAGS = ("dataset", "arch", "seed", "sparsity", "method")    # with `stage`: which job a run belongs to


def tracking_uri(cfg: Config) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(ROOT / uri[len('sqlite:///'):]).resolve()}"   # relative to the project root
    return uri


def check_uri(cfg: Config, probe: bool = False) -> str:
    """The tracking URI, checked before any compute: a SQLite store's folder must exist (nothing creates
    it silently: a typo would scatter runs into a new folder); with `probe`, a tracking server must answer
    its /health request. The error names the URI and its source."""
    uri = tracking_uri(cfg)
    source = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "tracking.uri"
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):]).resolve()
        if not db.parent.is_dir():
            raise ConfigError(f"{source} = {uri!r}: the folder of this SQLite store, {db.parent}, does not exist "
                              f"(create it, or fix the URI)")
        for path, keep in ((db, False), (_lock_path(f"sqlite:///{db}"), True)):   # every job writes both
            if why := _unwritable(path, keep):
                raise ConfigError(f"{source} = {uri!r}: {path} cannot be written ({why}); name a store in a "
                                  f"writable folder. Nothing was computed")
    elif probe and uri.startswith(("http://", "https://")):
        import urllib.request
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_SECONDS) as r:
                ok = r.status == 200
        except (OSError, ValueError) as e:
            ok, why = False, f"{type(e).__name__}: {e}".splitlines()[0][:200]
        else:
            why = "/health did not answer 200"
        if not ok:
            raise ConfigError(f"{source} = {uri!r}: the tracking server does not answer ({why}); start it "
                              f"(README: Running on a cluster) or fix the URI. Nothing was computed")
    return uri


# A tracking server that stops answering: MLflow retries each request (defaults: 7 retries, backoff factor
# 2, 120 s timeout: minutes per call, about 9 minutes before a job failed). Bounded here, unless the user set
# them: 3 retries, backoff 1 (sleeps 0, 2, 4 s), jitter 0.5 s, 10 s per attempt: at most 47.5 s per call.
SERVER_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PROBE_SECONDS = 10


def outage_bound() -> float:
    """Seconds one MLflow request may take against a dead server with the settings in force (urllib3:
    no sleep before the first retry, then factor * 2**(k-1))."""
    e = {k: float(os.environ.get(k, v)) for k, v in SERVER_BOUNDS.items()}
    n, f = int(e["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]), e["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]
    return ((n + 1) * e["MLFLOW_HTTP_REQUEST_TIMEOUT"] + sum(f * 2 ** (k - 1) for k in range(2, n + 1))
            + n * e["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"])


def _unreachable(e: BaseException) -> bool:
    """MLflow's words for a request that got no answer after its retries (connection refused or reset,
    timeout, server errors until the retries ran out)."""
    text = str(e)
    return text.startswith("API request to ") and ("failed with exception" in text or "timeout" in text)


def _lock_path(uri: str) -> Path | None:
    """The lock file beside a SQLite store; None for a tracking server (it serialises writes itself)."""
    if uri.startswith(("http://", "https://")):
        return None
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):] + ".lock")
    return ROOT / ".mlflow.lock"


def _unwritable(path: Path, keep: bool) -> str | None:
    """Why a file cannot be written at `path` (None: it can). An existing file is opened for appending (nothing
    changes). A missing one is created (`keep`: the lock file, which every job creates and leaves anyway) or a
    uniquely named file beside it is created and removed (the store: MLflow creates it itself)."""
    try:
        if path.exists() or keep:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        else:
            fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.probe-")
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def _alive(pid: str | None) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:        # someone else's live process
        return True
    return True


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def run_name(tags: dict) -> str:
    """Method and cell first (what a reader compares), then stage and data: `kd s0.9 seed0 | retrain c10/r20`."""
    cell = " ".join(x for x in (tags.get("method"), f"s{tags['sparsity']}" if tags.get("sparsity") not in
                                (None, "0.0") else None, f"seed{tags['seed']}" if "seed" in tags else None) if x)
    where = "/".join(tags[k] for k in ("dataset", "arch") if k in tags)
    return " | ".join(x for x in (cell, " ".join(x for x in (tags["stage"], where) if x)) if x)


class Run:
    """One MLflow run for one job. Use as a context manager: an exception marks it FAILED with the message."""

    def __init__(self, cfg: Config, stage: str, tags: dict, params: dict, run_id: str | None = None):
        from mlflow.tracking import MlflowClient   # imported here: stages that never track skip its import cost
        self.uri = check_uri(cfg)
        self.lock = _lock_path(self.uri)
        if self.lock is None:                       # a tracking server: its outage bounded (SERVER_BOUNDS)
            for k, v in SERVER_BOUNDS.items():
                os.environ.setdefault(k, v)
        # Under the lock too: creating the client creates (migrates) a fresh store's tables, and parallel
        # jobs doing that at once fail ("table _alembic_tmp_... already exists", "database is locked").
        self.client = self._call(MlflowClient, self.uri)
        self.experiment = cfg.name
        self.run_id = run_id
        self._call(self._start, stage, tags, params, run_id, cfg.name)

    def _start(self, stage, tags, params, run_id, experiment):
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            # Artifacts beside a SQLite store (tests and users moving the store move them too).
            art = (self.lock.parent / "mlartifacts" / self.experiment).resolve().as_uri() \
                if self.uri.startswith("sqlite:///") else None      # a server: its artifact root
            try:
                exp_id = self.client.create_experiment(
                    self.experiment, artifact_location=art,
                    tags={"mlflow.note.content": DESCRIPTION.format(name=self.experiment, filter=COMPARE_FILTER),
                          "mlflow.experimentKind": "custom_model_development"})   # the UI opens on "Model training"
            except Exception as e:  # noqa: BLE001 - on a tracking server (no lock) another job may create it first
                if "RESOURCE_ALREADY_EXISTS" not in str(e):
                    raise
                exp_id = self.client.get_experiment_by_name(self.experiment).experiment_id
        else:
            exp_id = exp.experiment_id
        job = {"stage": stage, **{k: str(v) for k, v in tags.items() if k in JOB_TAGS}}
        alive = {"project": str(ROOT), "host": socket.gethostname(), "pid": str(os.getpid())}
        if run_id is not None and self._exists(run_id):
            from mlflow.entities import RunTag
            self.client.update_run(run_id, status="RUNNING")   # a resumed job continues its own run
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in alive.items()])
        else:                                                  # (a new run if that store was deleted)
            tool, tool_id = invocation()
            tags = {"stage": stage, "git_commit": git_commit(), "experiment": experiment,
                    **{k: str(v) for k, v in tags.items()}}
            tags.update(params_digest=digest({"stage": stage, **tags, "params": params}, drop=("git_commit",)),
                        invocation=tool, invocation_id=tool_id, superseded="false", **alive)
            if "method" in tags:
                tags["mlflow.runColor"] = color(tags["method"])      # the figures' colour in the UI too
            self.run_id = self.client.create_run(exp_id, tags=tags, run_name=run_name(tags)).info.run_id
            self._supersede(exp_id, job)
            from mlflow.entities import Param
            items = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(params).items())]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100])
        self._close_killed(exp_id, job)

    def _same_job(self, exp_id: str, job: dict, extra: str):
        """The other runs of this job (same stage and cell) from this project folder: a clone elsewhere
        sharing the store runs its own jobs (runs from before the `project` tag count as ours)."""
        where = " and ".join(f"tags.{k} = '{v}'" for k, v in job.items())
        for r in self.client.search_runs([exp_id], f"{where} and {extra}", max_results=1000):
            if r.info.run_id != self.run_id and r.data.tags.get("project", str(ROOT)) == str(ROOT):
                yield r

    def _supersede(self, exp_id: str, job: dict) -> None:
        """Older runs of the same job get superseded = "true": they describe outputs this run replaces,
        whatever their parameters were (their params_digest tells which)."""
        for r in self._same_job(exp_id, job, "tags.superseded = 'false'"):
            self.client.set_tag(r.info.run_id, "superseded", "true")
            self.client.set_tag(r.info.run_id, "superseded_by", self.run_id)

    def _close_killed(self, exp_id: str, job: dict) -> None:
        """A run of this job still RUNNING, whose process is gone, was left by a killed job: marked KILLED,
        with the reason. (A live process of it on this host is left alone; one on another host cannot be
        asked, and a training job's lock has already refused a second live copy.)"""
        for r in self._same_job(exp_id, job, "attributes.status = 'RUNNING'"):
            t = r.data.tags
            if t.get("host") == socket.gethostname() and _alive(t.get("pid")):
                continue
            self.client.set_tag(r.info.run_id, "killed_reason",
                                f"its process (pid {t.get('pid', '?')} on {t.get('host', '?')}) ended without "
                                f"closing the run (killed); found when the same job started again as run "
                                f"{self.run_id}")
            self.client.set_terminated(r.info.run_id, "KILLED")

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException
        try:
            self.client.get_run(run_id)
            return True
        except MlflowException:
            return False

    @contextmanager
    def _locked(self):
        if self.lock is None:
            yield
            return
        with open(self.lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _call(self, fn, *args, **kw):
        for attempt in range(8):
            try:
                with self._locked():
                    return fn(*args, **kw)
            except Exception as e:  # noqa: BLE001
                if self.lock is None and _unreachable(e):
                    raise TrackingDown(
                        f"{self.uri}: the tracking server did not answer (MLflow gave up after its retries, at "
                        f"most {outage_bound():.0f} s: {str(e).splitlines()[0][:160]}); the job stopped, its "
                        f"checkpoint kept: start the server again and rerun the same command to resume "
                        f"(same MLflow run)") from None
                if "locked" not in str(e).lower() or attempt == 7:
                    raise
                time.sleep(0.1 * 2 ** attempt)

    def log_missing(self, history: list[dict]) -> None:
        """Epochs a checkpoint holds that the run lacks (logged while the tracking server was down): logged
        now, and no others (nothing is logged twice)."""
        logged = {m.step for m in self._call(self.client.get_metric_history, self.run_id, "train_loss")}
        for step, metrics in enumerate(history, 1):
            if step not in logged:
                self.log_metrics(metrics, step)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if isinstance(v, (int, float))]
        if items:
            self._call(self.client.log_batch, self.run_id, metrics=items)

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag
        self._call(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path, subdir: str | None = None) -> None:
        if Path(path).exists():
            self._call(self.client.log_artifact, self.run_id, str(path), subdir)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:                   # the job's outputs are written: FINISHED says they exist
            self._call(self.client.set_terminated, self.run_id, "FINISHED")
        elif isinstance(exc, TrackingDown):
            pass                          # nobody to tell: RUNNING until the rerun continues it (or KILLED)
        else:
            msg = f"{exc_type.__name__}: {exc}"[:5000]
            try:
                self.set_tags({"error": msg})
                self._call(self.client.set_terminated, self.run_id, "FAILED")
            except Exception:  # noqa: BLE001 - never hide the job's own error behind a tracking error
                pass
        return False
