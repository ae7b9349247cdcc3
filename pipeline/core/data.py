"""Datasets: prepare one dataset into a single checksummed file of uint8 tensors with a train/val/test split.

Sources:
  torchvision  CIFAR-10/100 through torchvision's own download and archive check (needs internet once).
  imagefolder  any train/<class>/ and test/<class>/ tree (air-gapped clusters; the CIFAR-10 JPEG copy).
  synthetic    generated, deterministic per seed: every class has a LOW-frequency template and a
               HIGH-frequency template, so either band alone identifies the class and low-pass / high-pass
               evaluations mean something.
The prepared file holds everything as uint8 (N, 3, 32, 32), so a stage keeps the whole dataset on its device
(one copy) and augments in batched tensor ops.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pipeline.infra import io
from pipeline.config.schema import Config, DatasetCfg
from pipeline.errors import ConfigError
from pipeline.config.layout import resolve_path

SIZE = 32


def _torchvision(name: str, d: DatasetCfg, root: Path):
    import torchvision
    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    out = []
    for train in (True, False):
        ds = cls(str(root), train=train, download=True)
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        out += [x, torch.tensor(ds.targets, dtype=torch.int64)]
    return (*out, list(ds.classes))


def _imagefolder(d: DatasetCfg, split_seed: int):
    from PIL import Image
    folder = resolve_path(d.path)
    classes = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    if len(classes) != d.classes:
        raise ValueError(f"datasets.*.classes = {d.classes}: {folder / 'train'} has {len(classes)} class folders")
    out = []
    for split, limit in (("train", d.train_size), ("test", d.test_size)):
        files = [(f, y) for y, c in enumerate(classes) for f in sorted((folder / split / c).iterdir()) if f.is_file()]
        if not files:
            raise io.CorruptFile(f"{folder / split}: no image files")
        if limit is not None and limit < len(files):   # a fixed random subset, same for every run
            g = torch.Generator().manual_seed(split_seed)
            files = [files[i] for i in sorted(torch.randperm(len(files), generator=g)[:limit].tolist())]
        x = np.empty((len(files), SIZE, SIZE, 3), dtype=np.uint8)
        for i, (f, _) in enumerate(files):
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    x[i] = np.asarray(im if im.size == (SIZE, SIZE) else im.resize((SIZE, SIZE), Image.BILINEAR))
            except (OSError, ValueError) as e:   # PIL: unidentified, truncated or damaged image
                raise io.CorruptFile(f"{f}: not a readable image ({type(e).__name__}: {e})") from None
        out += [torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.tensor([y for _, y in files])]
    return (*out, classes)


def _wave(fy: int, fx: int, phase: float) -> torch.Tensor:
    """A 32x32 cosine along the integer frequency (fy, fx)."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    return torch.cos(2 * math.pi * (fy * yy + fx * xx) / SIZE + phase)


def synthetic(classes: int, n: int, seed: int, split_seed: int = 0):
    """n images (uint8, N x 3 x 32 x 32) and labels. Class templates depend only on split_seed (the same
    task for every split); images, labels and noise on `seed`."""
    g = torch.Generator().manual_seed(split_seed)
    temps = []
    for band in ((1, 3), (10, 14)):              # low band: radius 1-3; high band: radius 10-14
        t = torch.zeros(classes, 3, SIZE, SIZE)
        for c in range(classes):
            for _ in range(3):
                while True:
                    fy, fx = torch.randint(-band[1], band[1] + 1, (2,), generator=g).tolist()
                    if band[0] <= math.hypot(fy, fx) <= band[1]:
                        break
                ch = torch.rand(3, generator=g) * 2 - 1
                t[c] += ch[:, None, None] * _wave(fy, fx, float(torch.rand(1, generator=g)) * 2 * math.pi)
        temps.append(t / t.flatten(1).std(1)[:, None, None, None])
    g = torch.Generator().manual_seed(1_000_003 * (seed + 1))
    y = torch.randint(0, classes, (n,), generator=g)
    amp = 0.6 + 0.8 * torch.rand(n, 2, generator=g)     # each cue's strength varies per image
    x = 0.5 + 0.12 * amp[:, :1, None, None] * temps[0][y] + 0.08 * amp[:, 1:, None, None] * temps[1][y]
    x = x + 0.08 * torch.randn(x.shape, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), y


def _synthetic(d: DatasetCfg, split_seed: int):
    names = [f"class{i}" for i in range(d.classes)]
    return (*synthetic(d.classes, d.train_size, 1, split_seed), *synthetic(d.classes, d.test_size, 2, split_seed), names)


def prepare(cfg: Config, dataset: str, out: Path) -> dict:
    """Write the prepared dataset to `out` (.pt) and its description with checksum to out.json."""
    d = cfg.datasets[dataset]
    if d.source == "torchvision":
        tx, ty, ex, ey, classes = _torchvision(dataset, d, resolve_path(cfg.data.root))
        if d.train_size:
            keep = torch.randperm(len(ty), generator=torch.Generator().manual_seed(cfg.data.split_seed))[:d.train_size]
            tx, ty = tx[keep.sort().values], ty[keep.sort().values]
        if d.test_size:
            ex, ey = ex[: d.test_size], ey[: d.test_size]
    elif d.source == "imagefolder":
        tx, ty, ex, ey, classes = _imagefolder(d, cfg.data.split_seed)
    else:
        tx, ty, ex, ey, classes = _synthetic(d, cfg.data.split_seed)
    if d.val_size >= len(ty):
        raise ConfigError(f"datasets.{dataset}.val_size = {d.val_size}: must be smaller than the "
                          f"{len(ty)} training images")
    perm = torch.randperm(len(ty), generator=torch.Generator().manual_seed(cfg.data.split_seed))
    val, train = perm[: d.val_size].sort().values, perm[d.val_size:].sort().values
    blob = {"kind": "dataset", "name": dataset, "classes": classes,
            "train_x": tx[train], "train_y": ty[train], "val_x": tx[val], "val_y": ty[val],
            "test_x": ex, "test_y": ey}
    io.save(blob, out)
    info = {"name": dataset, "source": d.source, "classes": classes, "sha256": io.sha256(out),
            "sizes": {s: int(len(blob[f"{s}_y"])) for s in ("train", "val", "test")}}
    io.write_json(Path(str(out) + ".json"), info)
    return info


def load(path: Path) -> dict:
    """Load a prepared dataset after checking its checksum against the description written beside it."""
    info = io.read_json(Path(str(path) + ".json"), keys=("sha256",), schema=io.DATASET)
    if not Path(path).is_file():
        raise io.CorruptFile(f"{path}: prepared dataset is missing (run the prepare stage)")
    digest = io.sha256(path)
    if digest != info["sha256"]:
        raise io.CorruptFile(f"{path}: checksum {digest[:12]} does not match {info['sha256'][:12]} "
                             f"in {path}.json: the prepared dataset was changed or damaged; rerun prepare")
    blob = io.load(path, "dataset", keys=("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"))
    blob["sha256"] = digest
    return blob
