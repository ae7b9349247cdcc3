"""Errors the CLI turns into exit codes. No heavy imports here: a config error exits before torch loads."""
from __future__ import annotations


class CorruptFile(RuntimeError):
    """A truncated, foreign, tampered or missing input file: the message names it (exit status 3)."""


class Busy(RuntimeError):
    """Another copy of the same job holds its checkpoint: the message names it (exit status 4)."""


class Diverged(RuntimeError):
    """Training produced a non-finite loss: the message names the epoch and step (exit status 1)."""


class GraphsFailed(RuntimeError):
    """runtime.cuda_graphs: true and the captured CUDA step failed or disagreed with the eager one (exit
    status 5; with `auto` the job continues eagerly instead)."""


class NoSpace(RuntimeError):
    """The disk is full: the message names the file, the bytes it needs and the bytes free (exit status 6)."""


class TrackingDown(RuntimeError):
    """The MLflow tracking server stopped answering during a job (its retries bounded): the job stopped at an
    epoch boundary with its checkpoint kept; one line names the URI and how to resume (exit status 7)."""


class ConfigError(ValueError):
    """A bad parameter: the message names the key, the value and what is allowed."""

