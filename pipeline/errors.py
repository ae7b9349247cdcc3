"""Errors the CLI turns into exit codes. No heavy imports here: a config error exits before torch loads."""


class CorruptFile(RuntimeError):
    """A truncated, foreign, tampered or missing input file: the message names it (exit status 3)."""
