"""Files: atomic writes (temp file then rename, so a killed job never leaves a half-written output that
Snakemake or DVC would take for done), checksummed saving and safe loading, exclusive job locks.

Every file written by `save` carries the sha256 of its own content (every tensor's bytes, every field), and
`load` recomputes it: a flipped bit anywhere in a model, mask, snapshot, heat map or checkpoint is an input
error naming the file, never a silently wrong number. `load(..., expect={...})` also checks the fields a
reading stage relies on (arch, width, classes, the producing job's parameters digest).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from pipeline.errors import Busy, CorruptFile, NoSpace
from pipeline.infra.progress import open_log

CHECKSUM = "sha256"   # the key under which `save` embeds the checksum of everything else in the file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write, size: int) -> None:
    """`write(f)` into a temp file beside `path`, then renamed onto it. `size`: about how many bytes it
    writes, for the message when the disk is full."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())     # mkstemp makes 0600; an output honours the umask like open()
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if _disk_full(e):
            raise NoSpace(f"{path}: no space left on the device: writing it needs about {size:,} bytes, "
                          f"{_free(path.parent):,} bytes are free there; free some space (or move runs/ with "
                          f"PIPELINE_RUNS / the outputs elsewhere) and rerun: completed outputs and the last "
                          f"checkpoint are kept") from None
        raise


def clear_stale(*paths) -> None:
    """Remove the temp files `_atomic` left beside these outputs when a kill interrupted it
    (`.<name>.<8 random characters>.tmp`): called when the job that writes them starts again (a training
    job: once it holds its lock). Nothing else in the folder is touched."""
    for p in map(Path, paths):
        ours = re.compile(rf"\.{re.escape(p.name)}\.[A-Za-z0-9_]{{8}}\.tmp")
        if p.parent.is_dir():
            for f in p.parent.iterdir():
                if ours.fullmatch(f.name) and f.is_file() and not f.is_symlink():
                    f.unlink(missing_ok=True)


def _disk_full(e: BaseException | None) -> bool:
    """ENOSPC (or a full quota) anywhere in the chain: torch.save reports it as a RuntimeError
    ("unexpected pos ...") whose cause or context is the OSError."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _free(folder: Path) -> int:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _is_tensor(obj) -> bool:
    """torch is imported only where a job needs it: no tensor exists before it is, so the JSON half of this
    module (report manifests, metrics) serves the torch-free Snakefile too."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _nbytes(obj) -> int:
    """About the size of `obj` saved: its tensors' bytes (the rest is small)."""
    if _is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values()) + 64 * len(obj)
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj) + 8 * len(obj)
    return 64


def content_sha256(obj) -> str:
    """The sha256 of a nested structure of dicts, lists, tensors and scalars: every tensor's dtype, shape
    and bytes, every key and scalar. Independent of how torch.save lays out the file."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj) -> None:
    if _is_tensor(obj):
        import torch
        t = obj.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}:".encode())
        # the array's buffer itself, not a bytes copy of it (a prepared CIFAR file would double its peak)
        h.update(memoryview(t.view(torch.uint8).numpy()) if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k in sorted(obj, key=repr):
            h.update(f"{k!r}=".encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"S{obj!r};".encode())


def save(obj: dict, path) -> str:
    """torch.save of a dict with its content checksum embedded (verified by `load`), atomically; returns
    the checksum."""
    obj = {k: v for k, v in obj.items() if k != CHECKSUM}
    obj[CHECKSUM] = content_sha256(obj)
    import torch
    _atomic(path, lambda f: torch.save(obj, f), _nbytes(obj) + 1024)
    return obj[CHECKSUM]


def write_text(path, text: str) -> None:
    data = text.encode()
    _atomic(path, lambda f: f.write(data), len(data))


DIGEST = "content_sha256"   # the key under which `write_json` embeds the digest of a JSON object's other keys


def json_sha256(obj) -> str:
    """The sha256 of a JSON value's canonical text (sorted keys, no spaces): what it reads back as, whatever
    the indentation (floats print their shortest round-trip form, so a reread value hashes the same)."""
    canon = json.loads(json.dumps(obj))
    return hashlib.sha256(json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_json(path, obj) -> None:
    """A JSON file, atomically; an object (dict) carries the digest of its content (verified by `read_json`)."""
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k != DIGEST}
        obj[DIGEST] = json_sha256(obj)
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path, keys=(), schema: dict | None = None):
    """A JSON file holding an object with `keys` (or, with keys=None, any JSON value). An object must carry
    the digest `write_json` gave it (an edited or damaged file is refused), every number in it must be
    finite, and the values of `schema` (key -> Kind, [Kind], {key: ...}) must be what it says; the digest
    key is removed from what is returned. Any failure: CorruptFile naming the file and the key (exit 3)."""
    try:
        obj = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise CorruptFile(f"{path}: file is missing") from None
    except (ValueError, OSError, RecursionError) as e:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CorruptFile(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if keys is not None:
        if not isinstance(obj, dict):
            raise CorruptFile(f"{path}: expected a JSON object, found {type(obj).__name__}")
        if missing := [k for k in keys if k not in obj]:
            raise CorruptFile(f"{path}: missing keys {missing}")
    if isinstance(obj, dict):
        _verify(path, "", DIGEST, obj.pop(DIGEST, None), lambda: json_sha256(obj))
    _finite(path, "", obj)
    if schema is not None:
        _valid(path, "", obj, schema)
    return obj


class Kind:
    """What a JSON value must be: `test(value) -> bool`, and the words for the error message."""

    def __init__(self, test, says: str):
        self.test, self.says = test, says


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


FRACTION = Kind(lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]")
COUNT = Kind(lambda v: type(v) is int and v >= 0, "a non-negative integer")
SECONDS = Kind(lambda v: _number(v) and v >= 0, "a non-negative number")
TEXT = Kind(lambda v: isinstance(v, str), "a string")
SHA256 = Kind(lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
              "a sha256 checksum (64 hex digits)")
KAPPA = Kind(lambda v: _number(v) and -1 <= v <= 1, "a number in [-1, 1] (Cohen's kappa)")
RADIUS = Kind(lambda v: v == "full" or (_number(v) and v >= 0), 'a non-negative number or "full"')
EACH = "*"          # a schema key matching every key of an object (a mapping of names)


def _at(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


def _bad(path, where, value, says):
    raise CorruptFile(f"{path}: {where} = {repr(value)[:80]}: must be {says}; rerun the stage that writes it")


def _finite(path, where, v) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        _bad(path, where or "value", v, "a finite number")
    elif isinstance(v, dict):
        for k, x in v.items():
            _finite(path, _at(where, k), x)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _finite(path, f"{where}[{i}]", x)


def _valid(path, where, v, spec) -> None:
    if isinstance(spec, Kind):
        if not spec.test(v):
            _bad(path, where, v, spec.says)
    elif isinstance(spec, list):                          # [Kind]: a list of values of that kind
        if not isinstance(v, list):
            _bad(path, where, v, "a list")
        for i, x in enumerate(v):
            _valid(path, f"{where}[{i}]", x, spec[0])
    else:                                                 # {key: spec}: an object; keys absent are not checked
        if not isinstance(v, dict):
            _bad(path, where, v, "an object")
        for k, x in v.items():
            if k in spec or EACH in spec:
                _valid(path, _at(where, k), x, spec.get(k, spec.get(EACH)))
        if (rule := spec.get(None)) is not None and (broken := rule(v)):   # across keys: (key, says)
            _bad(path, _at(where, broken[0]), v[broken[0]], broken[1])


def _one_per_radius(v: dict):
    """Band curves: one value per radius."""
    n = len(v.get("radii", []))
    return next(((k, f"a list of {n} values (one per radius)") for k in ("low_acc", "high_acc", "low_agree",
                 "high_agree", "low_kappa", "high_kappa") if k in v and len(v[k]) != n), None)


# What each JSON output holds (the writers: stages._finish, masks.stats, spectral.evaluate, data.prepare).
METRICS = {"val_acc": FRACTION, "test_acc": FRACTION, "test_agreement": FRACTION, "sparsity": FRACTION,
           "epochs": COUNT, "nonzero_weights": COUNT, "weights": COUNT, "nonzero": COUNT, "prunable": COUNT,
           "rounds": COUNT, "chain_levels": COUNT, "val_history": [FRACTION], "train_seconds": SECONDS,
           "hardware": TEXT, "experiment": TEXT,
           "nonzero_params": COUNT, "macs": COUNT, "dense_macs": COUNT, "macs_input": TEXT,   # cost.py
           "speedup": Kind(lambda v: _number(v) and v >= 1, "a number >= 1 (dense MACs / nonzero MACs)")}
MASK_STATS = {"sparsity": FRACTION, "kept": COUNT, "total": COUNT, "layers": {EACH: FRACTION}}
BANDS = {"radii": [RADIUS], "filter": TEXT, "low_acc": [FRACTION], "high_acc": [FRACTION],
         "low_agree": [FRACTION], "high_agree": [FRACTION], "low_kappa": [KAPPA], "high_kappa": [KAPPA],
         "bn_images": COUNT, None: _one_per_radius}
MATCH = {"fraction": FRACTION, "sparsity": FRACTION, "target": FRACTION, "acc": FRACTION, "tolerance": FRACTION,
         "steps": COUNT}                                  # signature.damage_matched
SPECTRAL = {**BANDS, "heatmap_seconds": SECONDS, "variants": {EACH: {**BANDS, "match": MATCH}}}
DATASET = {"sha256": SHA256, "name": TEXT, "source": TEXT, "classes": [TEXT], "sizes": {EACH: COUNT}}


def _verify(path, what: str, name: str, stored, actual) -> None:
    """The digest a file was written with (`stored`) against its content's (`actual()`)."""
    if stored is None:
        raise CorruptFile(f"{path}: {what}carries no {name} (not written by this pipeline, or by a version "
                          f"before {name}s); rerun the stage that writes it")
    if (now := actual()) != stored:
        raise CorruptFile(f"{path}: {name} {now[:12]} does not match the {str(stored)[:12]} it was written "
                          f"with: the {what or 'file '}was changed or damaged; rerun the stage that writes it")


def load(path, kind: str, keys=(), expect: dict | None = None) -> dict:
    """torch.load with weights_only=True (no code runs from a file); a truncated, foreign or tampered file
    (checksum mismatch) gives an error naming it and what was expected, never a bare stack trace. `expect`:
    fields that must hold these values (e.g. {"arch": "resnet20"}) for the reading job."""
    path = Path(path)
    if not path.is_file():
        raise CorruptFile(f"{path}: {kind} file is missing")
    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CorruptFile(f"{path}: not a readable {kind} file (truncated or foreign?): "
                          f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}") from None
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        found = obj.get("kind") if isinstance(obj, dict) else type(obj).__name__
        raise CorruptFile(f"{path}: expected a {kind} file, found {found!r}")
    _verify(path, f"{kind} file ", "checksum", obj.pop(CHECKSUM, None), lambda: content_sha256(obj))
    if missing := [k for k in keys if k not in obj]:
        raise CorruptFile(f"{path}: {kind} file lacks {missing}")
    for k, want in (expect or {}).items():
        if obj.get(k) != want:
            raise CorruptFile(f"{path}: {kind} file has {k} = {obj.get(k)!r}, this job expects {want!r}")
    return obj


def sha256(path, chunk: int = 1 << 22, algorithm: str = "sha256") -> str:
    """The file's hash. algorithm="md5" gives DVC's hash of the file: its cache holds the file as
    files/md5/<first 2 hex digits>/<the other 30>."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


@contextlib.contextmanager
def exclusive(path):
    """Hold an exclusive lock on `path` (a job's checkpoint) for the block: a second copy of the same job
    raises Busy naming the holder (pid, host) at once, instead of sharing the checkpoint. The lock is an
    flock on `path`.lock, released by the kernel when its holder exits, even on SIGKILL."""
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise Busy(f"{path}: another copy of this job is running ({holder}); wait for it to finish, "
                       f"or stop it and rerun") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        open_log()                # the job's --log opens only now: a refused copy never touches it
        clear_stale(path)         # a checkpoint write a kill interrupted: its temp file
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
