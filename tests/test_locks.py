"""Writer locks (clipgen.locks): a second writer is refused with the holder's pid; the lock dies with its process."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from clipgen.errors import ClipgenError
from clipgen.locks import acquire, lock_path, output_lock

_HOLD = textwrap.dedent("""
    import sys, time
    from clipgen.locks import acquire
    lock = acquire(sys.argv[1])
    print("locked", flush=True)
    time.sleep(60)
""")

_TRY = textwrap.dedent("""
    import sys
    from clipgen.errors import ClipgenError
    from clipgen.locks import acquire
    try:
        acquire(sys.argv[1]).release()
        print("acquired")
    except ClipgenError as e:
        print("refused:", e)
""")


def _holder(out):
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_writer_refused_names_pid_then_lock_freed_by_kill9(tmp_path):
    out = tmp_path / "store.h5"
    p = _holder(out)
    try:
        with pytest.raises(ClipgenError) as e:  # this process
            acquire(out)
        assert str(e.value).startswith(f"{out} is being written by another process (pid {p.pid});")
        r = subprocess.run([sys.executable, "-c", _TRY, str(out)], capture_output=True, text=True, check=True)
        assert r.stdout.startswith(f"refused: {out} is being written by another process (pid {p.pid})")
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert lock_path(out).exists()  # left behind by the killed holder ...
    with output_lock(out) as lk:  # ... and taken over at once: the kernel released the flock
        assert lk.path.read_text().strip() == str(os.getpid())
    assert not lock_path(out).exists()  # removed on release


def test_lock_is_exclusive_within_a_process_and_released(tmp_path):
    out = tmp_path / "run"
    with output_lock(out) as held, pytest.raises(ClipgenError, match="is being written by another writer of this "
                                                                     f"process \\(pid {os.getpid()}\\)"):
        acquire(out)
        assert held.path.exists()
    with output_lock(out):  # free again
        pass


_HOLD_AND_FORK = textwrap.dedent("""
    import os, sys, time
    from clipgen.locks import acquire
    lock = acquire(sys.argv[1])
    child = os.fork()  # like a data-loading worker: it shares the lock file's descriptor
    if child == 0:
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    time.sleep(60)
""")


def test_lock_dies_with_its_process_even_when_a_forked_child_lives_on(tmp_path):
    """A writer killed with -9 while its loader workers (forked children) still run: the lock is free at once."""
    out = tmp_path / "store.h5"
    p = subprocess.Popen([sys.executable, "-c", _HOLD_AND_FORK, str(out)], stdout=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    try:
        with pytest.raises(ClipgenError, match=f"another process \\(pid {p.pid}\\)"):
            acquire(out)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        os.kill(child, 0)  # the child still runs ...
        with output_lock(out) as lk:  # ... and does not hold the lock
            assert lk.path.read_text().strip() == str(os.getpid())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_folders_made_for_the_lock_are_removed_when_left_empty(tmp_path):
    out = tmp_path / "a" / "b" / "c.h5"
    with output_lock(out):
        assert (tmp_path / "a" / "b").is_dir()
    assert not (tmp_path / "a").exists()
    with output_lock(out):
        (tmp_path / "a" / "b" / "c.h5").write_text("x")  # the output was written: its folder stays
    assert (tmp_path / "a" / "b" / "c.h5").is_file()


def test_lock_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ClipgenError, match=r"f/out.h5: cannot create the output folder .*/f \(.*/f is a regular "
                                           r"file\)"):
        acquire(tmp_path / "f" / "out.h5")


def test_stale_holder_pid_file_does_not_block(tmp_path):
    out = tmp_path / "x.h5"
    lock_path(out).write_text("999999\n")  # a lock file without a live flock (its writer died)
    t = time.time()
    with output_lock(out):
        pass
    assert time.time() - t < 5
