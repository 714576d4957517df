"""Writing artifacts safely: temporary name + rename, configs beside artifacts, hashes.

Every command that writes an artifact also writes its resolved configuration (a dataclass) as JSON next
to it, with the clipgen version and the command line, so any figure can be traced back to its inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clipgen import __version__
from clipgen.errors import ClipgenError, ConfigFieldError, flag_for

CONFIG_SUFFIX = ".config.json"


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def command_line() -> str:
    """The command line of this process, as a user would retype it."""
    import shlex

    argv = list(sys.argv)
    if argv and argv[0].endswith(("clipgen", "clipgen.exe")):
        argv[0] = "clipgen"
    return " ".join(shlex.quote(a) for a in argv)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths, tuples, sets and numpy scalars/arrays to plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        seq = sorted(obj) if isinstance(obj, (set, frozenset)) else obj
        return [to_jsonable(v) for v in seq]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    return obj


@contextlib.contextmanager
def atomic_path(path: str | Path, *, force: bool = True, field: str = "force") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block completes.

    With ``force=False`` an existing ``path`` is refused (exit 2, naming the flag of config field ``field``). On
    any exception the temporary file or directory is removed, so no half-written output is ever left under the
    final name.
    """
    path = Path(path)
    if path.exists() and not force:
        raise ClipgenError(f"{path}: already exists (pass {flag_for(field)} to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp_name)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        if isinstance(e, OSError) and e.filename is None and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, e.strerror, str(path)) from e  # a full disk: say which output
        raise


def write_text_atomic(path: str | Path, text: str, *, force: bool = True, field: str = "force") -> Path:
    with atomic_path(path, force=force, field=field) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any, *, force: bool = True, indent: int = 2) -> Path:
    return write_text_atomic(path, json.dumps(to_jsonable(obj), indent=indent) + "\n", force=force)


def save_torch_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_path`; a full disk is an OSError naming the file."""
    import torch

    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:  # a file object: a full disk is then an OSError (ENOSPC), not torch's
                torch.save(obj, f)      # RuntimeError without the cause
        except (OSError, RuntimeError) as e:
            # torch's archive writer may fail again while closing after the write failed: a RuntimeError whose
            # context is the OSError
            err = e if isinstance(e, OSError) else e.__context__
            if not isinstance(err, OSError) or (err is e and e.filename is not None):
                raise
            raise OSError(err.errno, err.strerror, str(tmp)) from None
    return Path(path)


def config_path_for(artifact: str | Path) -> Path:
    """Where an artifact's config lives: ``DIR/config.json`` for a folder, ``name.config.json`` beside a file."""
    artifact = Path(artifact)
    if artifact.is_dir() or artifact.suffix == "":
        return artifact / "config.json"
    return artifact.with_name(artifact.stem + CONFIG_SUFFIX)


def config_record(command: str, config: Any) -> dict[str, Any]:
    return {
        "command": command,
        "clipgen_version": __version__,
        "created": utc_now(),
        "command_line": command_line(),
        "config": to_jsonable(config),
    }


def write_config(artifact: str | Path, command: str, config: Any) -> Path:
    """Write the resolved configuration of ``command`` next to ``artifact`` and return its path."""
    path = config_path_for(artifact)
    return write_json_atomic(path, config_record(command, config))


def ensure_writable_output(path: str | Path, force: bool, field: str = "force") -> Path:
    """Refuse an existing output unless ``force``; the caller then writes through :func:`atomic_path`."""
    path = Path(path)
    if path.exists() and not force:
        raise ConfigFieldError(field, f"output {path} already exists; pass {flag_for(field)} to overwrite it")
    return path


def check_writable(path: str | Path, field: str) -> Path:
    """Refuse, before any work, an output that cannot be created: a path under a regular file, or a folder this
    process may not write in (permissions, read-only file system). Creates nothing."""
    path = Path(path)
    probe = path if path.is_dir() else path.parent
    while not probe.exists():  # the nearest existing folder is where the output's folders would be created
        if probe.is_symlink() or probe == probe.parent:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigFieldError(field, f"{path}: {probe} is a regular file, not a folder")
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigFieldError(field, f"{path}: cannot write in {probe} (permission denied or read-only file system)")
    return path


def _temp_pattern(path: Path):
    import re

    return re.compile(rf"^\.{re.escape(path.name)}\.[A-Za-z0-9_]+\.tmp$")


def stale_temps(path: str | Path) -> list[Path]:
    """Temporary files or folders :func:`atomic_path` left beside ``path`` when its process was killed (names
    ``.NAME.XXXXXXXX.tmp``). Only remove them while holding ``path``'s writer lock (:mod:`clipgen.locks`)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pat = _temp_pattern(path)
    return sorted(p for p in path.parent.iterdir() if pat.match(p.name))


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove :func:`stale_temps` of ``path``; returns what was removed."""
    gone = stale_temps(path)
    for p in gone:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return gone


@contextlib.contextmanager
def hdf5_create(path: str | Path) -> Iterator[Any]:
    """``h5py.File(path, "w")`` for a temporary output file (the caller deletes it on failure), safe on a full disk.

    HDF5 writes data and metadata when a file is flushed and closed. If the disk is full, a plain
    ``with h5py.File(...)`` then fails to close: its objects stay half released, HDF5 errors flood stderr and the
    interpreter can crash. Here, when the block fails (or the final flush does), the file's descriptor is pointed
    at ``/dev/null`` first, so HDF5 closes the abandoned file cleanly, and the original error propagates.
    """
    import h5py

    path = Path(path)
    f = h5py.File(path, "w")
    try:
        yield f
        f.flush()
    except BaseException:
        _abandon_hdf5(f)
        raise
    f.close()


def _abandon_hdf5(f: Any) -> None:
    """Close an HDF5 file whose contents are being thrown away, without writing to its disk."""
    with contextlib.suppress(Exception):
        fd = int(f.id.get_vfd_handle())
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, fd)  # what HDF5 still writes while closing goes nowhere (reads see an empty file)
        finally:
            os.close(null)
    with contextlib.suppress(Exception):
        f.close()


def ensure_free_space(folder: str | Path, needed: int, what: str) -> None:
    """Refuse, before writing, an output of about ``needed`` bytes that the disk of ``folder`` cannot hold (a clean
    one-line error instead of a file that fails half-way through)."""
    folder = Path(folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    margin = int(needed * 0.02) + (64 << 10)
    if free < needed + margin:
        raise ClipgenError(f"disk full: {what} needs about {(needed + margin) / 1e6:.1f} MB in {folder}, "
                           f"{free / 1e6:.1f} MB are free; free some space and rerun the same command: it continues, "
                           f"finished work is kept")
