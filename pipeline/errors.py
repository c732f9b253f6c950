"""Errors with a short class name that goes into a manifest's ``status`` or a job's failures table."""

from __future__ import annotations


class SignfeatError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


class ClipError(SignfeatError):
    """One clip cannot be used. ``kind`` is a short snake_case class (``missing_file``, ``empty_folder``...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # picklable across Ray workers with both fields
        return (type(self), (self.kind, str(self)))
