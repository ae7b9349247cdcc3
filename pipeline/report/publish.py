"""Publishing a report without touching what is not ours.

`Staged(report.dir)`: the report stage builds its files in a hidden folder inside report.dir and moves them
into place only when every file is written. report.dir keeps a manifest of the files we put there
(`.fourier-mbp-report.json`): a new report replaces the files it writes and removes only the files the
previous manifest lists and it no longer writes. Nothing else in the folder is read, moved or deleted. A
folder that is not empty and holds no manifest of ours is refused before any compute (exit 2, naming it),
as are the project root (or a folder above it), runs/ itself, and any folder holding git-tracked files: a
report never lands among files someone else owns. A hidden `.staged-*` folder is ours only if it holds our
marker file.

`python -m pipeline publish --experiment NAME`: copy a finished report from runs/<name>/report/ (a run's
output, git-ignored) to results/<name>/ (the committed example a reader opens on the repository's page),
by the same manifest. A run never writes into results/, so no run satisfies its own target with a committed
file and no run dirties git; refreshing the committed example is this one explicit step, which also
regenerates results/README.md, the index of the committed experiments (index.py).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pipeline.infra import io
from pipeline.config import layout
from pipeline.config.layout import ROOT, resolve_path
from pipeline.config.schema import Config
from pipeline.errors import ConfigError

FILES = ("README.md", "summary.csv", "spectral.csv", "curves.csv", "metrics.json")
OURS = ".fourier-mbp-report.json"     # report.dir's manifest: every file a report of ours put there
PREFIX, MARKER, MANIFEST = ".staged-", ".fourier-mbp-staged", "MANIFEST"   # a build folder, ours by its marker


def published_dir(cfg: Config) -> Path:
    return ROOT / "results" / cfg.name


def _runs_roots() -> set[Path]:
    return {(ROOT / "runs").resolve(), layout.runs().resolve()}


def _tracked(folder: Path) -> list[str]:
    """Git-tracked files in `folder` (none when git or a repository is absent)."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "ls-files", "-z", "--", "."], capture_output=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [f for f in out.stdout.decode(errors="replace").split("\0") if f] if out.returncode == 0 else []


def _ours(folder: Path) -> bool:
    return folder.is_dir() and folder.name.startswith(PREFIX) and (folder / MARKER).is_file()


def owned(target: Path) -> list[str] | None:
    """The files our manifest in `target` lists (relative paths); None without a manifest of ours."""
    if not (target / OURS).is_file():
        return None
    files = io.read_json(target / OURS, keys=("files",))["files"]
    if not isinstance(files, list) or not all(isinstance(f, str) and _inside(f) for f in files):
        raise io.CorruptFile(f"{target / OURS}: files must be a list of relative paths inside the folder")
    return files


def _inside(rel: str) -> bool:
    p = Path(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts


def check_target(target, tracked_ok: bool = False) -> Path:
    """report.dir, resolved (symlinks followed, `..` collapsed) and refused (ConfigError naming it) unless a
    report may be written there: every judgement below, and every write after it, is on the real folder."""
    target = Path(target)
    real = target.resolve()
    why = None
    if ROOT.resolve().is_relative_to(real):
        why = "it is the project root or a folder above it"
    elif real in _runs_roots():
        why = "it is runs/ itself, which holds every job's outputs"
    elif not tracked_ok and real.is_dir() and (files := _tracked(real)):
        why = f"it holds git-tracked files ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})"
    elif real.is_dir() and owned(real) is None:
        foreign = sorted(p.name for p in real.iterdir() if not _ours(p))
        if foreign:
            why = (f"it is not empty ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}) and holds "
                   f"no {OURS} of ours: it was not written by this pipeline")
            readme = real / "README.md"
            if readme.is_file() and readme.read_text(errors="replace").startswith("# Report: experiment "):
                why += (" (or by a version before manifests: if it holds nothing of yours, delete it, "
                        f"rm -r {real}, and rerun)")
    if why:
        real_text = "" if real == target.absolute() else f" (that is {real})"     # a symlink or `..` resolved
        raise ConfigError(f"report.dir = {str(target)!r}{real_text}: refused, {why}. A report replaces and deletes files "
                          f"in its folder: name an empty or new folder (the default is runs/<name>/report)")
    return real


class Staged:
    """`with Staged(target) as folder:` write the report into `folder`; on success its files replace their
    namesakes in `target` and the previous report's files it no longer writes are removed (both by our
    manifest only); on an exception nothing in `target` changes. The move follows a manifest written once
    everything is built, so a publish interrupted by a kill is completed by the next Staged on the same
    target, and a build interrupted by a kill is discarded."""

    def __init__(self, target):
        self.target = check_target(target)
        self.target.mkdir(parents=True, exist_ok=True)
        for old in sorted(p for p in self.target.glob(PREFIX + "*") if _ours(p)):
            if (old / MANIFEST).is_file():
                _publish(old, self.target)
            else:
                shutil.rmtree(old, ignore_errors=True)
        self.folder = Path(tempfile.mkdtemp(dir=self.target, prefix=PREFIX))
        (self.folder / MARKER).touch()

    def __enter__(self):
        return self.folder

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            names = sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*")
                           if p.is_file() and p.name != MARKER)
            old = set(owned(self.target) or [])
            if taken := [f for f in names if f not in old and (self.target / f).exists()]:
                shutil.rmtree(self.folder, ignore_errors=True)
                raise ConfigError(f"report.dir = {str(self.target)!r}: refused, {', '.join(taken[:3])} would be "
                                  f"overwritten and our manifest ({OURS}) does not list it: it is not ours. "
                                  f"Move it, or name another folder")
            io.write_json(self.folder / MANIFEST, names)
            _publish(self.folder, self.target)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)
        return False


def place(build: Path, target) -> Path:
    """Copy a finished report build (runs/<name>/report_build/, the orchestrator's output, listed by its own
    manifest) into report.dir by the rules of `Staged`: only our files there are replaced or removed, and only
    once every file is copied. Snakemake and DVC delete the build, never report.dir: a user's files and the
    previous report survive a failed or forced report job."""
    files = owned(build)
    if files is None:
        raise io.CorruptFile(f"{build}: no {OURS}: not a finished report build; rerun the report "
                             f"(snakemake --forcerun report)")
    with Staged(target) as folder:
        for f in files:
            (folder / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(build / f, folder / f)
    return Path(target)


def _publish(folder: Path, target: Path) -> None:
    new = io.read_json(folder / MANIFEST, keys=None)
    old = owned(target) or []
    # Listed first: a kill part-way leaves every file of ours in the manifest, and none of anyone else's.
    io.write_json(target / OURS, {"files": sorted(set(old) | set(new))})
    _replace(new, old, lambda f: (folder / f) if (folder / f).is_file() else None, target, os.replace)
    shutil.rmtree(folder, ignore_errors=True)


def _replace(new: list[str], old: list[str], source, target: Path, move) -> None:
    """Put each of `new` (source(name) -> a path, or None when already moved) into target; remove the files
    of `old` that `new` lacks; then list exactly `new` in the manifest."""
    for f in new:
        src = source(f)
        if src is not None:
            (target / f).parent.mkdir(parents=True, exist_ok=True)
            move(src, target / f)
    for f in sorted(set(old) - set(new)):
        (target / f).unlink(missing_ok=True)
        parent = (target / f).parent
        while parent != target:
            try:
                parent.rmdir()                      # only a folder left empty (anything else in it stays)
            except OSError:
                break
            parent = parent.parent
    io.write_json(target / OURS, {"files": sorted(new)})


def publish(cfg: Config) -> Path:
    src, dst = resolve_path(cfg.report.dir), published_dir(cfg)
    missing = [f for f in FILES if not (src / f).is_file()]
    if missing:
        raise ConfigError(f"report.dir = {cfg.report.dir!r}: no finished report to publish (missing {missing}); "
                          f"run the experiment first (snakemake --cores all --configfile configs/{cfg.name}.yaml)")
    new = owned(src) or [*FILES, *(f"figures/{p.name}" for p in sorted((src / "figures").glob("*.png")))]
    dst.mkdir(parents=True, exist_ok=True)
    # results/<name>/ is tracked (git restores anything); before its first manifest, files are only replaced
    old = owned(dst) or []
    io.write_json(dst / OURS, {"files": sorted(set(old) | set(new))})
    _replace(new, old, lambda f: src / f, dst, shutil.copyfile)
    write_index()
    return dst


def write_index() -> Path:
    """results/README.md, the index of every committed experiment, regenerated from the published reports."""
    from pipeline.report.index import index
    path = ROOT / "results" / "README.md"
    io.write_text(path, index(path.parent))
    return path
