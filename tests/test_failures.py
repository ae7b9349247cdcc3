"""Errors that say what to do: a full disk names the file, the bytes it needs and the bytes free (exit 6, on
a real tmpfs of 256 KiB when this process may mount one); a damaged checkpoint says to delete it, and
deleting it restarts the job."""
from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest
import torch

from pipeline.config import layout
from pipeline.infra import io
from pipeline.stages import common as jobs
from pipeline.core import train as T
from pipeline.errors import CorruptFile, NoSpace

from .conftest import write_experiment
from .test_integrity import TINY, _main
from pipeline.config import loading


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """A folder on a 256 KiB tmpfs (root may mount one); elsewhere, writes in io fail with ENOSPC past
    256 KiB, as the kernel's do."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        real = os.fdopen

        class Full:
            def __init__(self, f):
                self.f, self.n = f, 0

            def write(self, b):
                self.n += len(b)
                if self.n > 256 * 1024:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return self.f.write(b)

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *a):
                return self.f.__exit__(*a)
        monkeypatch.setattr(io.os, "fdopen", lambda fd, mode: Full(real(fd, mode)))
    yield folder
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_names_the_file_the_bytes_needed_and_free(full_disk):
    out = full_disk / "metrics.json"
    io.write_json(out, {"test_acc": 0.5})
    text = "x" * 400_000
    with pytest.raises(NoSpace) as e:
        io.write_text(out, text)
    msg = str(e.value)
    assert msg.startswith(f"{out}: no space left on the device: writing it needs about 400,000 bytes, ")
    assert "bytes are free there; free some space" in msg
    assert io.read_json(out) == {"test_acc": 0.5}                     # the old output untouched
    assert sorted(p.name for p in full_disk.iterdir()) == ["metrics.json"]   # no temp file left
    with pytest.raises(NoSpace, match=f"^{full_disk / 'ck.pt'}: no space left on the device: writing it needs "
                                      f"about 4,001,344 bytes"):  # 4e6 tensor bytes + 3 keys + 2 scalars + 1024
        io.save({"kind": "checkpoint", "w": torch.zeros(1_000_000)}, full_disk / "ck.pt")   # torch.save's own error
    assert sorted(p.name for p in full_disk.iterdir()) == ["metrics.json"]


def test_a_stage_on_a_full_disk_exits_6_with_one_line(full_disk, tmp_path, env):
    experiment = write_experiment(tmp_path, name="t", datasets=TINY)
    out = full_disk / "data.pt"
    code, err = _main(["prepare", "--experiment", experiment, "--dataset", "synthetic", "--out", out])
    assert code == 6, err
    (line,) = [x for x in err.splitlines() if x.startswith("disk full: ")]
    assert line.startswith(f"disk full: {out}: no space left on the device: writing it needs about ")
    assert "Traceback" not in err and not list(full_disk.iterdir())


def test_a_damaged_checkpoint_says_delete_it_and_deleting_it_restarts_the_job(tmp_path, env):
    experiment = write_experiment(tmp_path, name="t", datasets=TINY, train={"epochs": 1}, lth={"rewind_epoch": 0})
    data, out = tmp_path / "data.pt", tmp_path / "dense" / "model.pt"
    assert _main(["prepare", "--experiment", experiment, "--dataset", "synthetic", "--out", data])[0] == 0
    cfg = loading.load(experiment)
    ckpt = layout.checkpoint(cfg.name, "dense", layout.dense_key(cfg, "synthetic", "resnet20", 0,
                                                       io.read_json(f"{data}.json")["sha256"]))
    io.save({"kind": "checkpoint", "key": "k", "run_id": None, "model": {"w": torch.ones(3)}}, ckpt)
    raw = torch.load(ckpt, weights_only=True)
    raw["model"]["w"][1] = 2.0                                        # one value changed: checksum mismatch
    torch.save(raw, ckpt)
    args = ["train_dense", "--experiment", experiment, "--dataset", "synthetic", "--arch", "resnet20", "--seed", 0,
            "--data", data, "--out", out]
    code, err = _main(args)
    assert code == 3, err
    (line,) = [x for x in err.splitlines() if x.startswith("input error: ")]
    assert line.startswith(f"input error: {ckpt}: checksum ") and "rerun the stage" not in line
    assert line.endswith(f"It is this job's own checkpoint, not an input: delete it (rm {ckpt}) and rerun the "
                         f"job; it restarts from its inputs, the last good outputs before it, and trains its "
                         f"epochs again")
    ckpt.unlink()
    code, err = _main(args)
    assert code == 0, err
    assert json.loads(out.with_name("metrics.json").read_text())["epochs"] == 1 and not ckpt.exists()


def test_a_killed_writes_temp_files_are_removed_when_its_job_starts_again(tmp_path, env):
    experiment = write_experiment(tmp_path, name="t", datasets=TINY)
    out = tmp_path / "data" / "d.pt"
    out.parent.mkdir()
    stale = [out.parent / ".d.pt.k1ll3d_x.tmp", out.parent / ".d.pt.json.Ab3dE6gH.tmp"]   # what _atomic leaves
    kept = [out.parent / ".other.pt.k1ll3d_x.tmp", out.parent / "notes.tmp", out.parent / ".d.pt.tmp",
            out.parent / ".d.pt.toolong123.tmp"]                 # another output's, or not of our making
    for f in stale + kept:
        f.write_bytes(b"")
    assert _main(["prepare", "--experiment", experiment, "--dataset", "synthetic", "--out", out])[0] == 0
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["d.pt", "d.pt.json", *(f.name for f in kept)])
    ckpt = tmp_path / "ck" / "job.pt"
    ckpt.parent.mkdir()
    (ckpt.parent / ".job.pt.zZ9_aa00.tmp").write_bytes(b"half a checkpoint")
    with io.exclusive(ckpt):                                     # the job's lock held: its checkpoint's temp gone
        assert sorted(p.name for p in ckpt.parent.iterdir()) == ["job.pt.lock"]
