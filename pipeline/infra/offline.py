"""Tracking without MLflow: each job's run recorded in a file, replayed into any MLflow store later (`sync`).

For a node that cannot reach the tracking server, and for a machine with torch but no MLflow (the lent GPU
machine). `tracking.mode: offline` (or FOURIER_MBP_TRACKING=offline, or `auto` where mlflow is not
importable) gives every job an OfflineRun instead of an MLflow run; nothing else changes (the same outputs,
bytes and resume behaviour). Its record, runs/<experiment>/tracking/<run id>.json, holds what the MLflow run
would have held: name, tags, params, every metric with its step and time, the status, and the artifacts
(copied beside it, each with its sha256). It is written atomically, with its digest, after every call.

`python -m pipeline sync --experiment NAME` replays the records into the store `tracking.uri` names, as the
runs they would have been (same names, tags, params, metric steps and times, FINISHED/FAILED), once: each
record's run carries the tag `offline_id`, and only what that run lacks is logged, so a second sync adds
nothing and an interrupted one, run again, completes. A job resumed online from an offline checkpoint syncs
its record first and continues that run; one resumed offline from an online checkpoint records `continues`,
and sync appends to the online run: either way, one job is one run.
"""
from __future__ import annotations

import hashlib
import shutil
import socket
import time
import uuid
from pathlib import Path

from pipeline.config import layout
from pipeline.errors import CorruptFile
from pipeline.infra import io
from pipeline.infra.run_record import job, new_tags, param_items, run_name

RECORD = "offline-run"     # a record's `kind`


def records_dir(name: str) -> Path:
    return layout.run_dir(name) / "tracking"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class OfflineRun:
    """The MLflow run of one job, recorded in a file (the interface of tracking.MlflowRun)."""

    def __init__(self, cfg, stage: str, tags: dict, params: dict, run_id: str | None = None):
        self.experiment = cfg.name
        if run_id is not None and (records_dir(cfg.name) / f"{run_id}.json").is_file():   # resumed offline
            self.run_id = run_id
            self.record = read_record(self.path)
            self.record["status"] = "RUNNING"
            self.record["tags"]["host"] = socket.gethostname()
        else:                      # a new run; `continues`: the online run of a job resumed here, if any
            self.run_id = uuid.uuid4().hex
            full = new_tags(cfg.name, stage, tags, params)
            self.record = {"kind": RECORD, "id": self.run_id, "continues": run_id, "experiment": cfg.name,
                           "name": run_name(full), "tags": full, "job": job(stage, tags),
                           "params": param_items(params), "metrics": [], "artifacts": [], "status": "RUNNING",
                           "start_ms": int(time.time() * 1000), "end_ms": None}
        self._write()

    @property
    def path(self) -> Path:
        return records_dir(self.experiment) / f"{self.run_id}.json"

    def _write(self) -> None:
        io.write_json(self.path, self.record)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        now = int(time.time() * 1000)
        rows = [[k, float(v), step or 0, now] for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if rows:
            self.record["metrics"] += rows
            self._write()

    def log_missing(self, history: list[dict]) -> None:
        """Epochs a checkpoint holds that the record lacks (a job killed between its checkpoint and its log)."""
        logged = {step for k, _, step, _ in self.record["metrics"] if k == "train_loss"}
        for step, metrics in enumerate(history, 1):
            if step not in logged:
                self.log_metrics(metrics, step)

    def set_tags(self, tags: dict) -> None:
        self.record["tags"].update({k: str(v) for k, v in tags.items()})
        self._write()

    def log_artifact(self, path, subdir: str | None = None) -> None:
        """A copy beside the record (a job's artifact may be a temporary file), with its sha256."""
        path = Path(path)
        if not path.exists():
            return
        dest = records_dir(self.experiment) / self.run_id / (subdir or "") / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        entry = {"file": str(dest.relative_to(records_dir(self.experiment))), "subdir": subdir,
                 "sha256": _sha256(dest)}
        self.record["artifacts"] = [a for a in self.record["artifacts"] if a["file"] != entry["file"]] + [entry]
        self._write()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            self.record["status"] = "FINISHED"
        else:
            self.record["status"] = "FAILED"
            self.record["tags"]["error"] = f"{exc_type.__name__}: {exc}"[:5000]
        self.record["end_ms"] = int(time.time() * 1000)
        self._write()
        return False


def read_record(path: Path) -> dict:
    """A record, its digest and every artifact's sha256 checked (CorruptFile names the file: exit 3)."""
    rec = io.read_json(path, keys=("kind", "id", "experiment", "name", "tags", "params", "metrics", "artifacts",
                                   "status", "start_ms", "job"))
    if rec["kind"] != RECORD:
        raise CorruptFile(f"{path}: kind = {rec['kind']!r}: not an offline run record")
    for a in rec["artifacts"]:
        f = Path(path).parent / a["file"]
        if not f.is_file() or _sha256(f) != a["sha256"]:
            raise CorruptFile(f"{f}: artifact of the offline run {path.name} is missing or not the file recorded "
                              f"(sha256 {a['sha256'][:12]}...)")
    return rec


def pending(name: str) -> list[Path]:
    """Every record of the experiment, oldest first (a continued run's records replay in order)."""
    folder = records_dir(name)
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.json"), key=lambda p: (read_record(p)["start_ms"], p.name))
