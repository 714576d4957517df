"""clipgen.errors: which OSErrors become one line (and what the line says), which stay tracebacks."""

import errno

from clipgen.errors import is_disk_full, os_error_message


def test_disk_full_names_the_output_not_its_temporary_name():
    e = OSError(errno.ENOSPC, "No space left on device", "/data/stores/.q.h5.k3j9a_x2.tmp")
    assert is_disk_full(e)
    assert os_error_message(e) == ("disk full: no space left on the device while writing /data/stores/q.h5 (in "
                                   "/data/stores); free some space and rerun the same command: it continues, "
                                   "finished work is kept")


def test_hdf5_disk_full_message_without_filename_attribute():
    # what h5py raises: errno set, the file only inside the message
    e = OSError(28, "Driver write request failed (file write failed: time = Sat Dec  5 2026\n, filename = "
                    "'/x/run.h5.parts/.real-011.h5.tmp', file descriptor = 3, errno = 28, error message = 'No space "
                    "left on device', buf = 0x1)")
    assert is_disk_full(e)
    assert os_error_message(e).startswith("disk full: no space left on the device while writing "
                                          "/x/run.h5.parts/real-011.h5 (in /x/run.h5.parts)")
    assert is_disk_full(OSError("Can't write data (No space left on device)"))  # errno lost: the text says it


def test_path_errors_name_the_path():
    assert os_error_message(NotADirectoryError(errno.ENOTDIR, "Not a directory", "a/b")) == (
        "a/b: a component of the path is a regular file, not a folder")
    assert os_error_message(PermissionError(errno.EACCES, "Permission denied", "/ro/x")) == "/ro/x: permission denied"
    assert os_error_message(OSError(errno.EROFS, "Read-only file system", "/mnt/x")) == "/mnt/x: read-only file system"
    assert os_error_message(IsADirectoryError(errno.EISDIR, "Is a directory", "o")) == "o: is a folder, not a file"


def test_raised_from_an_os_error_counts_but_a_bug_in_a_handler_does_not():
    try:
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/ro/x")
        except PermissionError as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as w:
        assert os_error_message(w) == "/ro/x: permission denied"
    try:
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/ro/x")
        except PermissionError:
            raise KeyError("a bug while handling it")  # noqa: B904 - implicit context, on purpose
    except KeyError as k:
        assert os_error_message(k) is None


def test_other_errors_keep_their_traceback():
    assert os_error_message(FileNotFoundError(errno.ENOENT, "No such file", "x")) is None  # not an output problem
    assert os_error_message(OSError(errno.EIO, "Input/output error", "x")) is None
    assert os_error_message(ValueError("bug")) is None
    assert not is_disk_full(PermissionError(errno.EACCES, "Permission denied", "x"))


def test_config_field_error_names_the_field_outside_the_cli():
    from clipgen.errors import ClipgenError, ConfigFieldError

    e = ConfigFieldError("batch_size", "must be at least 1, got 0")
    assert isinstance(e, ClipgenError) and e.exit_code == 2
    assert str(e) == "batch_size: must be at least 1, got 0"
    assert (e.field, e.detail) == ("batch_size", "must be at least 1, got 0")
