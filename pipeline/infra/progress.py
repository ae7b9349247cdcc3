"""What a running job tells the person watching: one line per epoch on stderr (stage, cell, epoch/total, loss,
accuracy, lr, radius, elapsed, time left), and, with `--log FILE`, the same stderr copied to that file (every
Snakemake rule has a `log:` file; `tail -f runs/<name>/logs/...` follows a job).
"""
from __future__ import annotations

import io
import sys
import time
from pathlib import Path


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """`Progress(stage, cell, total)(done, metrics)` prints one line; the time left extrapolates the epochs
    run in this process (a resumed job does not count the epochs it skipped)."""

    def __init__(self, stage: str, cell: str, total: int, stream=None):
        self.stage, self.cell, self.total = stage, cell, total
        self.stream = stream
        self.t0 = time.time()
        self.first: int | None = None

    def __call__(self, done: int, m: dict) -> None:
        if self.first is None:
            self.first = done - 1
        elapsed = time.time() - self.t0
        left = elapsed / max(1, done - self.first) * (self.total - done)
        parts = [f"[{self.stage} {self.cell}] epoch {done}/{self.total}"]
        for key, fmt in (("train_loss", "loss {:.4f}"), ("train_acc", "acc {:.3f}"), ("val_acc", "val {:.3f}"),
                         ("lr", "lr {:.3g}"), ("radius", "radius {:.2f}"), ("sparsity", "sparsity {:.3f}")):
            if m.get(key) is not None:
                parts.append(fmt.format(m[key]))
        parts.append(f"elapsed {_clock(elapsed)} left {_clock(left)}")
        print("  ".join(parts), file=self.stream or sys.stderr, flush=True)


def note(stage: str, cell: str, text: str) -> None:
    """One line for a job without epochs (spectral evaluation, report)."""
    print(f"[{stage} {cell}] {text}", file=sys.stderr, flush=True)


class _Tee:
    def __init__(self, *streams):
        self.streams = list(streams)

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()

    def __getattr__(self, name):          # fileno, isatty, encoding ...: the terminal's
        return getattr(self.streams[0], name)


_held: tuple[str, _Tee, io.StringIO] | None = None     # a log not opened yet: (path, tee, what it holds back)


def log_to(path: str | None, defer: bool = False) -> None:
    """Copy everything written to stderr from here on to `path` (created with its folder; overwritten).
    defer: hold it in memory until `open_log()` (a job that must first take its lock: a refused second copy
    never opens, so never empties, the log of the copy that runs)."""
    global _held
    if not path:
        return
    held = io.StringIO()
    sys.stderr = tee = _Tee(sys.stderr, held)
    _held = (path, tee, held)
    if not defer:
        open_log()


def open_log() -> None:
    """Open the held log file: what was held back first, then live (nothing happens without a held log)."""
    global _held
    if _held is None:
        return
    path, tee, held = _held
    _held = None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "w", buffering=1)
    f.write(held.getvalue())
    tee.streams[tee.streams.index(held)] = f


def drop_log() -> None:
    """Never open the held log (this copy was refused: the file belongs to the copy that runs)."""
    global _held
    if _held is not None:
        _, tee, held = _held
        tee.streams.remove(held)
        _held = None
