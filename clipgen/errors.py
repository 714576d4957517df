"""Errors that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations

from pathlib import Path


class ClipgenError(Exception):
    """Bad input or usage: shown as one line (``error: ...``), exit code 2, never a traceback.

    Library code raises it for anything a user can fix (a missing file, a malformed line, an unknown
    option value); the message names the file, line or option.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # one line, always
        return " ".join(str(self.message).split())


def file_error(path: str | Path, message: str, line: int | None = None) -> ClipgenError:
    """A ClipgenError that names a file (and optionally a 1-based line number)."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return ClipgenError(f"{where}: {message}")


def option_error(option: str, message: str) -> ClipgenError:
    """A ClipgenError that names a command-line option."""
    return ClipgenError(f"{option}: {message}")
