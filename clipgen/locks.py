"""Exclusive writer locks on outputs: one process at a time writes a store, circuits file, SAE run, results folder.

:func:`output_lock` takes a POSIX record lock (``fcntl.lockf``) on a small lock file beside the output
(``.NAME.lock``), holding the writer's pid. Record locks belong to the process: the kernel releases them when the
process dies, kill -9 included, so a lock file left behind by a dead writer is taken over at once, and they are not
inherited by forked children (an ``flock`` would be: the image-loading worker processes of a killed writer would
keep its output locked until they noticed their parent was gone). Within one process a registry refuses a second
lock on the same output. A second writer is refused with one line naming the output and the pid that holds it. The
lock file is removed on release; a process that opened it just before is not fooled (it checks after locking that
the name still refers to the file it locked). Record locks also work on network file systems (through the NFS lock
manager), where HDF5's own file locking is often disabled.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from clipgen.errors import ClipgenError

LOCK_SUFFIX = ".lock"

#: Lock files held by this process (record locks do not exclude their own process), guarded by a thread lock.
_HELD: set[str] = set()
_HELD_GUARD = threading.Lock()


def lock_path(output: str | Path) -> Path:
    """The lock file of ``output``: ``.NAME.lock`` in the same folder."""
    output = Path(output)
    return output.with_name(f".{output.name}{LOCK_SUFFIX}")


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text().strip() or 0)
        if pid:
            return f" (pid {pid})"
    return ""


class OutputLock:
    """A held lock (see :func:`output_lock`); :meth:`release` is idempotent."""

    def __init__(self, output: Path, path: Path, fd: int, created: list[Path] | None = None):
        self.output, self.path, self.fd = output, path, fd
        self.created = created or []  # folders made for the lock file, removed again on release if still empty

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):  # unlink first, while still held: a waiting opener sees a new inode
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        os.close(self.fd)  # closing releases the record lock
        self.fd = -1
        with _HELD_GUARD:
            _HELD.discard(str(self.path))
        for d in reversed(self.created):
            with contextlib.suppress(OSError):
                d.rmdir()


def acquire(output: str | Path) -> OutputLock:
    """Take the writer lock of ``output`` or raise a one-line :class:`ClipgenError` naming the holder's pid."""
    output = Path(output)
    path = lock_path(output)
    created = []
    d = path.parent
    while not d.exists() and d != d.parent:
        created.insert(0, d)
        d = d.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
        why = f"{blocker} is a regular file" if blocker is not None and not blocker.is_dir() else e.strerror
        raise ClipgenError(f"{output}: cannot create the output folder {path.parent} ({why})") from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            for c in reversed(created):
                with contextlib.suppress(OSError):
                    c.rmdir()
            raise ClipgenError(f"{output}: cannot write in {path.parent} ({e.strerror})") from None
        key = str(path)
        with _HELD_GUARD:
            mine = key in _HELD
            if not mine:
                _HELD.add(key)
        if mine:  # closing our second descriptor would drop the first one's record lock: refuse before locking
            os.close(fd)
            raise ClipgenError(f"{output} is being written by another writer of this process (pid {os.getpid()}); "
                               f"choose another output")
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            with _HELD_GUARD:
                _HELD.discard(key)
            os.close(fd)  # (the holder created the folders: nothing of ours to remove)
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise ClipgenError(f"{output}: cannot lock {path} ({e.strerror})") from None
            raise ClipgenError(f"{output} is being written by another process{_holder(path)}; wait for it to "
                               f"finish or stop it, then rerun (or choose another output)") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed the file between our open and our lock: take the new one
            os.close(fd)
            with _HELD_GUARD:
                _HELD.discard(key)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return OutputLock(output, path, fd, created)


@contextlib.contextmanager
def output_lock(output: str | Path) -> Iterator[OutputLock]:
    """Hold the exclusive writer lock of ``output`` for the block (see the module docstring)."""
    lock = acquire(output)
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def writing_output(out: str | Path, discard: Callable[[Path], None], *,
                   keep: tuple[type[BaseException], ...] = ()) -> Iterator[Path]:
    """The frame of a resumable writer of ``out`` (an activation store, a circuits file): the output is checked to be
    writable, its writer lock held for the block, temporary files a killed final assembly left beside it removed
    first. If the block fails and ``out`` did not exist before, ``discard(out)`` removes what holds nothing to
    resume; an exception of a ``keep`` type (a simulated crash in the tests) leaves everything as it is."""
    from clipgen.artifacts import check_writable, remove_stale_temps

    out = Path(out)
    check_writable(out, "out")
    with output_lock(out):
        remove_stale_temps(out)
        existed = out.exists()
        try:
            yield out
        except keep:
            raise
        except BaseException:
            if not existed:
                discard(out)
            raise

