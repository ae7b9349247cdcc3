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
import importlib.util
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from pipeline.config.layout import ROOT
from pipeline.config.schema import Config
from pipeline.errors import ConfigError, TrackingDown
from pipeline.infra import offline
from pipeline.infra.run_record import alive, job, new_tags, param_items, run_name

MODE_ENV = "FOURIER_MBP_TRACKING"     # online | offline: overrides tracking.mode

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


def mode(cfg: Config) -> str:
    """online or offline: FOURIER_MBP_TRACKING, else tracking.mode; `auto` is offline where mlflow is missing."""
    m = os.environ.get(MODE_ENV) or cfg.tracking.mode
    if m not in ("auto", "online", "offline"):
        raise ConfigError(f"{MODE_ENV} = {m!r}: must be online, offline or auto")
    if m == "auto":
        try:
            found = importlib.util.find_spec("mlflow") is not None
        except (ImportError, ValueError):
            found = False
        m = "online" if found else "offline"
    return m


def Run(cfg: Config, stage: str, tags: dict, params: dict, run_id: str | None = None):
    """The tracking run of one job: an MLflow run, or offline a record to sync later (infra/offline.py)."""
    cls = MlflowRun if mode(cfg) == "online" else offline.OfflineRun
    return cls(cfg, stage, tags, params, run_id)


def sync(cfg: Config) -> list[tuple[str, str, int]]:
    """Every offline record of the experiment replayed into the store (checked first, all of them): returns
    (record, MLflow run id, items added) per record."""
    check_uri(cfg, probe=True)
    records = [(p, offline.read_record(p)) for p in offline.pending(cfg.name)]
    return [(p.name, *MlflowRun.replay(cfg, rec, p.parent)) for p, rec in records]


def tracking_uri(cfg: Config) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(ROOT / uri[len('sqlite:///'):]).resolve()}"   # relative to the project root
    return uri


def check_uri(cfg: Config, probe: bool = False, offline_ok: bool = True) -> str:
    """The tracking URI, checked before any compute: a SQLite store's folder must exist (nothing creates
    it silently: a typo would scatter runs into a new folder); with `probe`, a tracking server must answer
    its /health request. The error names the URI and its source. Offline, no store is needed (`sync` checks
    it when it runs)."""
    uri = tracking_uri(cfg)
    if offline_ok and mode(cfg) == "offline":
        return uri
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


class MlflowRun:
    """One MLflow run for one job. Use as a context manager: an exception marks it FAILED with the message."""

    def __init__(self, cfg: Config, stage: str, tags: dict, params: dict, run_id: str | None = None):
        self._connect(cfg)
        self.run_id = run_id
        self._call(self._start, stage, tags, params, run_id, cfg.name)

    def _connect(self, cfg: Config) -> None:
        """The store, checked; its lock (SQLite) or a tracking server's outage bounded (SERVER_BOUNDS)."""
        from mlflow.tracking import MlflowClient   # imported here: stages that never track skip its import cost
        self.uri = check_uri(cfg, offline_ok=False)
        self.lock = _lock_path(self.uri)
        if self.lock is None:
            for k, v in SERVER_BOUNDS.items():
                os.environ.setdefault(k, v)
        # Under the lock too: creating the client creates (migrates) a fresh store's tables, and parallel
        # jobs doing that at once fail ("table _alembic_tmp_... already exists", "database is locked").
        self.client = self._call(MlflowClient, self.uri)
        self.experiment = cfg.name

    def _start(self, stage, tags, params, run_id, experiment):
        exp_id = self._experiment_id()
        this = job(stage, tags)
        record = offline.records_dir(experiment) / f"{run_id}.json" if run_id is not None else None
        if record is not None and not self._exists(run_id) and record.is_file():
            # resumed here from a checkpoint an offline job wrote: its record first, then that run continues
            run_id = self._replay(exp_id, offline.read_record(record), record.parent)[0]
            self.run_id = run_id
        if run_id is not None and self._exists(run_id):
            from mlflow.entities import RunTag
            self.client.update_run(run_id, status="RUNNING")   # a resumed job continues its own run
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in alive(ROOT).items()])
        else:                                                  # (a new run if that store was deleted)
            full = new_tags(experiment, stage, tags, params, ROOT)
            self.run_id = self.client.create_run(exp_id, tags=full, run_name=run_name(full)).info.run_id
            self._supersede(exp_id, this)
            self._log_params(param_items(params))
        self._close_killed(exp_id, this)

    def _log_params(self, items: dict) -> None:
        from mlflow.entities import Param
        items = [Param(k, v) for k, v in items.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    @classmethod
    def replay(cls, cfg: Config, record: dict, folder: Path) -> tuple[str, int]:
        """One offline record into the store, as the run it would have been: (run id, items added)."""
        self = cls.__new__(cls)
        self._connect(cfg)
        self.run_id = None
        return self._call(self._replay, self._experiment_id(), record, folder)

    def _replay(self, exp_id: str, rec: dict, folder: Path) -> tuple[str, int]:
        """What the record holds and the run lacks, logged: nothing twice, whatever was synced before."""
        from mlflow.entities import Metric, RunTag
        found = list(self.client.search_runs([exp_id], f"tags.offline_id = '{rec['id']}'", max_results=1))
        added = 0
        if found:
            self.run_id = found[0].info.run_id
        elif rec.get("continues") and self._exists(rec["continues"]):
            self.run_id = rec["continues"]                      # an online run resumed offline: one run
        else:
            tags = {**rec["tags"], "offline_id": rec["id"]}
            self.run_id = self.client.create_run(exp_id, start_time=rec["start_ms"], tags=tags,
                                                 run_name=rec["name"]).info.run_id
            self._supersede(exp_id, rec["job"])
            self._log_params(rec["params"])
            added += 1 + len(rec["params"])
        run = self.client.get_run(self.run_id)
        # the tags the job set as it ran; what says who the run is (set when it was created, or by the online
        # run it continues) and whether a later run superseded it stays as the store has it
        own = ("superseded", "superseded_by", "params_digest", "invocation", "invocation_id", "git_commit")
        tags = {k: str(v) for k, v in {**rec["tags"], "offline_id": rec["id"]}.items()
                if k not in own and run.data.tags.get(k) != str(v)}
        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        have = {}
        for key in {m[0] for m in rec["metrics"]}:
            have[key] = {(m.step, m.timestamp) for m in self.client.get_metric_history(self.run_id, key)}
        todo = [Metric(k, v, ts, step) for k, v, step, ts in rec["metrics"] if (step, ts) not in have[k]]
        for i in range(0, len(todo), 500):
            self.client.log_batch(self.run_id, metrics=todo[i:i + 500])
        added += len(todo)
        for a in rec["artifacts"]:
            there = {Path(f.path).name for f in self.client.list_artifacts(self.run_id, a["subdir"])}
            if Path(a["file"]).name not in there:
                self.client.log_artifact(self.run_id, str(folder / a["file"]), a["subdir"])
                added += 1
        if rec["status"] != "RUNNING" and run.info.status != rec["status"]:
            self.client.set_terminated(self.run_id, rec["status"], end_time=rec.get("end_ms"))
            added += 1
        return self.run_id, added

    def _experiment_id(self) -> str:
        """The experiment's id, created with its description if it is new."""
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        # Artifacts beside a SQLite store (tests and users moving the store move them too).
        art = (self.lock.parent / "mlartifacts" / self.experiment).resolve().as_uri() \
            if self.uri.startswith("sqlite:///") else None      # a server: its artifact root
        try:
            return self.client.create_experiment(
                self.experiment, artifact_location=art,
                tags={"mlflow.note.content": DESCRIPTION.format(name=self.experiment, filter=COMPARE_FILTER),
                      "mlflow.experimentKind": "custom_model_development"})   # the UI opens on "Model training"
        except Exception as e:  # noqa: BLE001 - on a tracking server (no lock) another job may create it first
            if "RESOURCE_ALREADY_EXISTS" not in str(e):
                raise
            return self.client.get_experiment_by_name(self.experiment).experiment_id

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
