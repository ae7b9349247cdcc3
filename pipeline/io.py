"""Files: atomic writes (temp file then rename, so a killed job never leaves a half-written output that
Snakemake or DVC would take for done), safe checkpoint loading, checksums."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from .errors import CorruptFile  # noqa: F401 - re-exported: io.CorruptFile is what stages raise


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(obj, path) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def write_text(path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CorruptFile(f"{path}: file is missing") from None
    except json.JSONDecodeError as e:
        raise CorruptFile(f"{path}: not valid JSON ({e})") from None


def load(path, kind: str, keys=()) -> dict:
    """torch.load with weights_only=True (no code runs from a file); a truncated or foreign file gives an
    error naming it and what was expected, never a bare stack trace."""
    path = Path(path)
    if not path.is_file():
        raise CorruptFile(f"{path}: {kind} file is missing")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CorruptFile(f"{path}: not a readable {kind} file (truncated or foreign?): "
                          f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}") from None
    if not isinstance(obj, dict) or obj.get("kind") != kind or any(k not in obj for k in keys):
        found = obj.get("kind") if isinstance(obj, dict) else type(obj).__name__
        raise CorruptFile(f"{path}: expected a {kind} file, found {found!r}")
    return obj


def sha256(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()
