"""Errors with a short class name that goes into a manifest's ``status`` or a job's failures table."""

from __future__ import annotations

import os


def printable(text: str) -> str:
    """``text`` as valid UTF-8: a file name that is not UTF-8 (a Windows zip unpacked on Linux: latin-1 'ü')
    reaches Python with surrogate escapes, which pyarrow cannot store; its bytes are shown as \\xNN instead."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a lone surrogate that escapes no byte
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


class SignfeatError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


class CheckpointError(SignfeatError):
    """A model checkpoint that is there but cannot be loaded as asked (another family's, a layer past its depth,
    weights missing or cut short): not a question of where it lies."""


class ClipError(SignfeatError):
    """One clip cannot be used. ``kind`` is a short snake_case class (``missing_file``, ``empty_folder``...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(printable(message))  # it ends in a Parquet table
        self.kind = kind

    def __reduce__(self):  # picklable across Ray workers with both fields
        return (type(self), (self.kind, str(self)))


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, Slurm, Kubernetes, systemd) while a job runs: it stops the job as Ctrl-C does."""


def refuse_output_over_input(flag: str, out, inputs, what: str = "the input {}") -> None:
    """An output path that is one of the command's inputs (or a link to it) would overwrite it, exit 0: an annotation
    table replaced by the manifest built from it, a video it names, a video by its features, a manifest by its curated
    subset. One stat of ``out``, then one per input (a build passes every path its rows name)."""
    try:
        out_stat = os.stat(out)
    except OSError:  # not there yet
        return
    for given in inputs:
        try:
            given_stat = os.stat(given)
        except OSError:  # missing: whoever reads it says so
            continue
        if (given_stat.st_dev, given_stat.st_ino) == (out_stat.st_dev, out_stat.st_ino):
            raise SignfeatError(f"{flag} {out} is {what.format(given)}: writing there would overwrite it; give another path")
