"""`python -m benchmarks.gpu_turn pack|run|land`: a lent GPU machine turned into a CIFAR-10 (JPEG) result.

The GPU machine has torch but no MLflow, Snakemake or DVC and no network; it receives only the checkout (at
most 64 MiB: ../shared stays behind), and at most 8 files of 16 MiB come back from it. So the turn is three
commands (configs/cifar10_gpu.yaml is the experiment; docs/running.md, "The GPU turn", the walk-through):

    pack  (here, a full installation)  the ImageFolder tree at $CIFAR10_JPEG_DIR into turn/data.pack (the JPEG
                                       bytes as they are, one file: ~59 MB for all 60,000 images) and the
                                       DAG's jobs into turn/jobs.json (export_jobs); refuses a checkout that
                                       would not travel;
    run   (the GPU machine: carry turn/) the device check (benchmarks/device_check.py; a failure stops the
                                       turn before the DAG), the pack unpacked into turn/images/, the DAG
                                       driven (pipeline/stages/driver.py: --jobs at once, resumable, tracking
                                       offline) until --until seconds after the start, then runs/<name>/ (less
                                       its prepared data) packed into $OUT in parts of at most 15 MiB. Run
                                       again on the still-warm machine, it resumes what the deadline stopped;
    land  (here)                       the parts unpacked into runs/<name>/, the data prepared again here (its
                                       digest must equal the GPU machine's), the offline runs synced into
                                       MLflow, and, when the DAG finished: Snakemake takes the outputs as
                                       done (`--touch`, no recompute) and the report is published to
                                       results/<name>/.

tests/test_gpu_turn.py rehearses all three on the CPU at a tiny size, where MLflow, Snakemake and DVC cannot
be imported, with the device check under the CUDA-graph emulation (--quick --emulate).
"""
from __future__ import annotations

import argparse
import io as _io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from pipeline.config import layout
from pipeline.config.layout import ROOT
from pipeline.stages.driver import STOPPED, jobs_path

TURN = ROOT / "turn"
PACK = TURN / "data.pack"
JOBS = TURN / "jobs.json"
IMAGES = TURN / "images"
PART = 15 * 2 ** 20                 # bytes per returned part (the device tool returns files of at most 16 MiB)
PARTS = 6                           # parts at most: 8 files come back, and the device check writes one
TRAVELS = 64 * 2 ** 20              # what travels to the GPU machine: the checkout, untracked files, turn/
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[gpu_turn {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


# ------------------------------------------------------------------------------------------- the data


def pack_data(folder: Path, dest: Path = PACK) -> int:
    """The ImageFolder tree (train/, test/) as one file: an 8-byte index length, a JSON index of [split, class,
    name, offset, size], then the files' bytes. Returns the number of images."""
    index, offset = [], 0
    for split in ("train", "test"):
        if not (folder / split).is_dir():
            raise SystemExit(f"{folder / split}: missing; CIFAR10_JPEG_DIR must be an ImageFolder tree with "
                             "train/ and test/")
        for cls in sorted(p.name for p in (folder / split).iterdir() if p.is_dir()):
            for f in sorted((folder / split / cls).iterdir()):
                index.append([split, cls, f.name, offset, f.stat().st_size])
                offset += index[-1][-1]
    head = json.dumps(index, separators=(",", ":")).encode()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(len(head).to_bytes(8, "little"))
        out.write(head)
        for split, cls, name, _, _ in index:
            out.write((folder / split / cls / name).read_bytes())
    tmp.replace(dest)
    return len(index)


def unpack_data(src: Path = PACK, dest: Path = IMAGES) -> int:
    """The pack back into an ImageFolder tree, byte for byte; a tree already complete is left as it is."""
    with open(src, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        index = json.loads(f.read(n))
        done = dest / ".complete"
        if done.exists() and done.read_text() == str(len(index)):
            return len(index)
        for split, cls, name, _, size in index:       # the bytes follow the index in its order
            p = dest / split / cls / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(f.read(size))
    done.write_text(str(len(index)))
    return len(index)


def travelling_bytes() -> int:
    """What the device tool sends: tracked files and untracked ones git does not ignore, plus turn/ (carried)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    files = [ROOT / f for f in listed if f and (ROOT / f).is_file()]
    files += [p for p in TURN.rglob("*") if p.is_file() and IMAGES not in p.parents]
    return sum(p.stat().st_size for p in files)


# ---------------------------------------------------------------------------------------- the commands


def _python(*args, env=None) -> int:
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env or os.environ).returncode


def pack(experiment: str) -> int:
    folder = Path(os.environ.get("CIFAR10_JPEG_DIR") or ROOT.parent / "shared" / "data" / "cifar10-jpeg")
    n = pack_data(folder)
    say(f"packed {n:,} images from {folder} into {PACK} ({PACK.stat().st_size:,} bytes)")
    if code := _python("-m", "pipeline", "export_jobs", "--experiment", experiment):
        return code
    JOBS.write_bytes(jobs_path(experiment).read_bytes())
    size = travelling_bytes()
    say(f"{len(json.loads(JOBS.read_text())['jobs'])} jobs into {JOBS}; {size / 2 ** 20:.1f} MiB would travel "
        f"(of {TRAVELS / 2 ** 20:.0f})")
    if size > TRAVELS:
        raise SystemExit(f"{size:,} bytes would travel, above the device tool's {TRAVELS:,}: pack fewer images "
                         "or remove untracked files")
    return 0


def _left_behind(rel: Path) -> bool:
    """Not brought back: the prepared data (rebuilt here from the same images; its .json comes back, so the
    rebuild is checked)."""
    return rel.parts[0] == "data" and rel.suffix == ".pt"


def pack_runs(experiment: str, out: Path) -> int:
    runs = layout.run_dir(experiment)
    for old in out.glob(f"runs-{experiment}.tgz.*"):
        old.unlink()
    buf = _io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for p in sorted(runs.rglob("*")):
            if p.is_file() and not _left_behind(p.relative_to(runs)):
                tar.add(p, arcname=str(p.relative_to(runs)))
    data = buf.getvalue()
    parts = -(-len(data) // PART)
    if parts > PARTS:
        raise SystemExit(f"runs/{experiment} packs into {len(data):,} bytes, {parts} parts of {PART:,}: above the "
                         f"{PARTS} that come back")
    for k in range(parts):
        (out / f"runs-{experiment}.tgz.{k:02d}").write_bytes(data[k * PART:(k + 1) * PART])
    return parts


def run(experiment: str, out: Path, until: float | None, jobs: int, quick: bool, emulate: bool, force: bool) -> int:
    """The GPU machine's one command. Exit status: the driver's (0 done, 75 stopped at the deadline), or the
    device check's when it failed."""
    out.mkdir(parents=True, exist_ok=True)
    runs = layout.run_dir(experiment)
    if not jobs_path(experiment).exists():           # the first call; a second finds the first's runs/ there
        runs.mkdir(parents=True, exist_ok=True)
        jobs_path(experiment).write_bytes(JOBS.read_bytes())
    say(f"{unpack_data():,} images in {IMAGES}")
    env = {**os.environ, "CIFAR10_JPEG_DIR": str(IMAGES), "FOURIER_MBP_TRACKING": "offline",
           "PYTHONUNBUFFERED": "1"}
    passed = runs / "device_check.passed"            # a second call on the same machine skips the check
    if not passed.exists():
        # gpu_check at this experiment's arch, width and batch (the rows `plan` prices it by), 150 steps a row:
        # about a minute, not the 5-10 of the paper grid's three archs
        check = _python("-m", "benchmarks.device_check", "--out", out, "--steps", 4 if quick else 150,
                        *(["--quick"] if quick else ["--experiment", experiment]),
                        *(["--emulate", "--kinds", "masked"] if emulate else []), env=env)  # one kind: the rehearsal
        say(f"device check: exit status {check}")
        if check and not force:
            say("the device check failed: the DAG was not run (its table above says which step; --force runs it)")
            return check
        passed.write_text(f"exit status {check}\n")
    left = None if until is None else max(0.0, until - (time.monotonic() - T0))
    code = _python("-m", "pipeline", "drive", "--experiment", experiment, "--jobs", jobs,
                   *(["--until", f"{left:.0f}"] if left is not None else []), env=env)
    parts = pack_runs(experiment, out)
    say(f"drive: exit status {code}{' (stopped at the deadline: run this again to resume)' if code == STOPPED else ''}"
        f"; runs/{experiment} packed into {parts} part(s) in {out}")
    return code


def land(experiment: str, parts: Path) -> int:
    runs = layout.run_dir(experiment)
    found = sorted(parts.glob(f"runs-{experiment}.tgz.*"))
    if not found:
        raise SystemExit(f"{parts}: no runs-{experiment}.tgz.* parts (the GPU command's $OUT files)")
    with tarfile.open(fileobj=_io.BytesIO(b"".join(p.read_bytes() for p in found)), mode="r:gz") as tar:
        tar.extractall(runs, filter="data")
    say(f"unpacked {len(found)} part(s) into {runs}")
    listed = json.loads(jobs_path(experiment).read_text())["jobs"]
    from pipeline.config import loading
    from pipeline.core import data
    cfg = loading.load(experiment)
    for job in (j for j in listed if j["rule"] == "prepare"):      # the same bytes as there, or stop
        made = ROOT / job["outs"][0]
        info = made.with_name(made.name + ".json")
        there = json.loads(info.read_text())["sha256"] if info.exists() else None
        # data.prepare, not the prepare job: the job's MLflow run is the GPU machine's, synced below
        here = data.prepare(cfg, re.search(r"--dataset (\S+)", job["cmd"])[1], made)["sha256"]
        if there is not None and here != there:
            raise SystemExit(f"{made}: prepared here with sha256 {here[:12]}, the GPU machine's was {there[:12]}: "
                             "the images or their decoding differ, so its results are not adopted")
        say(f"{made.name}: prepared here, sha256 {here[:12]} as on the GPU machine")
    if code := _python("-m", "pipeline", "sync", "--experiment", experiment):
        return code
    if not (ROOT / listed[-1]["outs"][0]).exists():
        done = sum(all((ROOT / o).exists() for o in j["outs"]) for j in listed)
        say(f"{done} of {len(listed)} jobs finished on the GPU machine: synced, not adopted or published")
        return STOPPED
    subprocess.run(["snakemake", "--touch", "--cores", "1", "--quiet", "all", "--configfile",
                    f"configs/{experiment}.yaml"], cwd=ROOT, check=True)
    return _python("-m", "pipeline", "publish", "--experiment", experiment)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_turn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=("pack", "run", "land"))
    p.add_argument("--experiment", default="cifar10_gpu")
    p.add_argument("--out", default=os.environ.get("OUT") or str(TURN / "out"), help="run: the folder that comes "
                   "back ($OUT on the GPU machine)")
    p.add_argument("--parts", default=None, help="land: the folder holding the returned parts")
    p.add_argument("--until", type=float, default=None, help="run: seconds after the start when the drive stops "
                   "(leave time to pack: ~30 s)")
    p.add_argument("--jobs", type=int, default=4, help="run: DAG jobs at once on the GPU")
    p.add_argument("--quick", action="store_true", help="run: the device check's tiny sizes (the rehearsal)")
    p.add_argument("--emulate", action="store_true", help="run: the device check on the CPU, CUDA graphs emulated")
    p.add_argument("--force", action="store_true", help="run: drive the DAG even if the device check failed")
    a = p.parse_args(argv)
    if a.step == "pack":
        return pack(a.experiment)
    if a.step == "run":
        return run(a.experiment, Path(a.out), a.until, a.jobs, a.quick, a.emulate, a.force)
    if a.parts is None:
        p.error("land needs --parts DIR (the folder the GPU command's files came back to)")
    return land(a.experiment, Path(a.parts))


if __name__ == "__main__":
    sys.exit(main())
