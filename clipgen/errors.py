"""Errors that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations

import errno
import os
import re
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


class ConfigFieldError(ClipgenError):
    """A bad value of a config field. Library code names the FIELD (``batch_size``), as it knows no command line;
    the CLI, which knows which flag sets which field, shows it as that flag (``error: --batch-size: ...``).
    Outside the CLI the message names the field (``batch_size: ...``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message


def flag_for(field: str) -> str:
    """The flag that sets config field ``field`` by the CLI's naming rule (``--`` + the field with dashes), for a
    message body that tells the user what to pass (``pass --force to overwrite``)."""
    return "--" + field.replace("_", "-")


def file_error(path: str | Path, message: str, line: int | None = None) -> ClipgenError:
    """A ClipgenError that names a file (and optionally a 1-based line number)."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return ClipgenError(f"{where}: {message}")


def option_error(option: str, message: str) -> ClipgenError:
    """A ClipgenError that names a command-line option (CLI code; library code raises :class:`ConfigFieldError`)."""
    return ClipgenError(f"{option}: {message}")


#: errno values of an output (or input) path a user can fix: shown as one line, exit code 2.
_PATH_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a component of the path is a regular file, not a folder",
    errno.EEXIST: "already exists and is in the way (a file where a folder is needed)",
    errno.EISDIR: "is a folder, not a file",
    errno.ENAMETOOLONG: "file name too long",
}
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_MKSTEMP_NAME = re.compile(r"^\.(.+)\.[a-z0-9_]{8}\.tmp$")  # atomic_path's temporary names
_TEMP_NAME = re.compile(r"^\.(.+)\.tmp$")
_H5_FILENAME = re.compile(r"(?:filename|name) = '([^']*)'")


def is_disk_full(exc: BaseException) -> bool:
    """True for an out-of-space error (``ENOSPC``/``EDQUOT``, or an HDF5 error whose message says so)."""
    return _os_error(exc, full_only=True) is not None


def _os_error(exc: BaseException | None, full_only: bool = False) -> BaseException | None:
    seen = set()
    while exc is not None and id(exc) not in seen:  # the error itself, or what it was raised from
        seen.add(id(exc))
        text = str(exc)
        if isinstance(exc, OSError | RuntimeError) and ("No space left" in text or "Disk quota exceeded" in text
                                                       or getattr(exc, "errno", None) in _DISK_FULL):
            return exc  # (h5py raises some write failures, e.g. of a flush, as RuntimeError)
        if isinstance(exc, OSError) and not full_only and exc.errno in _PATH_ERRNOS:
            return exc
        exc = exc.__cause__  # (not __context__: an error raised while handling one is a bug of its own)
    return None


def os_error_message(exc: BaseException) -> str | None:
    """One line for an OSError a user can fix (disk full, permissions, a path blocked by a file), naming the path;
    None for anything else (a bug, which keeps its traceback)."""
    e = _os_error(exc)
    if e is None:
        return None
    path = getattr(e, "filename", None)
    if path is None:
        m = _H5_FILENAME.search(str(e))
        path = m.group(1) if m else None
    if path is not None:
        path = Path(os.fsdecode(path))
        parts = list(path.parts)
        for i, part in enumerate(parts):  # a temporary file (or folder) of an output: name the output
            m = _MKSTEMP_NAME.match(part) or (_TEMP_NAME.match(part) if i == len(parts) - 1 else None)
            if m:
                parts[i] = m.group(1)
        path = Path(*parts)
    where = f"{path}" if path is not None else "an output file"
    if getattr(e, "errno", None) in _DISK_FULL or "No space left" in str(e) or "Disk quota exceeded" in str(e):
        folder = Path(where).parent if path is not None else None
        return (f"disk full: no space left on the device while writing {where}"
                + (f" (in {folder})" if folder is not None else "")
                + "; free some space and rerun the same command: it continues, finished work is kept")
    why = _PATH_ERRNOS[e.errno]
    if e.filename2 is not None:
        return f"{where} -> {os.fsdecode(e.filename2)}: {why}"
    return f"{where}: {why}"
