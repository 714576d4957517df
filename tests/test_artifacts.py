import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from clipgen import __version__
from clipgen.artifacts import atomic_path, config_path_for, sha256_file, to_jsonable, write_config
from clipgen.errors import ClipgenError


@dataclass
class Cfg:
    out: Path
    n: int = 3
    xs: tuple = (1, 2)


def test_write_config_beside_file_and_folder(tmp_path):
    f = tmp_path / "store.h5"
    f.write_bytes(b"x")
    p = write_config(f, "extract", Cfg(out=f))
    assert p == tmp_path / "store.config.json"
    rec = json.loads(p.read_text())
    assert rec["command"] == "extract" and rec["clipgen_version"] == __version__
    assert rec["config"] == {"out": str(f), "n": 3, "xs": [1, 2]}
    d = tmp_path / "run"
    d.mkdir()
    assert config_path_for(d) == d / "config.json"


def test_atomic_path_removes_temp_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise ValueError
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"
    with pytest.raises(ClipgenError, match="--force"), atomic_path(target, force=False):
        pass


def test_atomic_directory_replace(tmp_path):
    target = tmp_path / "d"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]


def test_sha256_and_jsonable(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert to_jsonable({"a": np.float32(1.5), "b": np.arange(2), "c": {3, 1}}) == {"a": 1.5, "b": [0, 1], "c": [1, 3]}


def test_check_writable_refuses_a_path_under_a_file_and_creates_nothing(tmp_path):
    from clipgen.artifacts import check_writable
    from clipgen.errors import ClipgenError

    (tmp_path / "f").write_text("x")
    with pytest.raises(ClipgenError, match=r"^out: .*/f/a/b: .*/f is a regular file, not a folder$"):
        check_writable(tmp_path / "f" / "a" / "b", "out")
    assert check_writable(tmp_path / "new" / "deep", "out") == tmp_path / "new" / "deep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_stale_temps_are_only_the_outputs_own(tmp_path):
    from clipgen.artifacts import atomic_path, remove_stale_temps, stale_temps

    out = tmp_path / "s.h5"
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        left = tmp.name
        raise RuntimeError("killed")  # (atomic_path cleans up; a kill -9 would not)
    (tmp_path / left).write_text("what a kill leaves")
    (tmp_path / ".s.h5.config.json.abcd1234.tmp").write_text("another output's")
    (tmp_path / ".s.h5.lock").write_text("1")
    assert stale_temps(out) == [tmp_path / left]
    assert remove_stale_temps(out) == [tmp_path / left]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.h5.config.json.abcd1234.tmp", ".s.h5.lock"]


def test_ensure_free_space(tmp_path):
    import shutil

    from clipgen.artifacts import ensure_free_space
    from clipgen.errors import ClipgenError

    ensure_free_space(tmp_path, 1000, "x")
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(ClipgenError, match=rf"^disk full: the store needs about .* MB in {tmp_path}, .* MB are free"):
        ensure_free_space(tmp_path, free * 2, "the store")


def test_hdf5_create_closes_an_abandoned_file_cleanly(tmp_path):
    import h5py
    import numpy as np

    from clipgen.artifacts import hdf5_create

    p = tmp_path / "a.h5"
    with pytest.raises(OSError, match="No space left"), hdf5_create(p) as f:
        ds = f.create_dataset("x", shape=(100, 8), chunks=(10, 8), dtype="f4")
        ds[:50] = np.ones((50, 8), np.float32)  # dirty chunks in the cache, as when a disk fills up
        raise OSError(28, "No space left on device")
    assert not f.id.valid  # closed (its last writes went to /dev/null), nothing left open to crash at exit
    with hdf5_create(p) as f:
        f["y"] = np.arange(3)
    with h5py.File(p, "r") as f:
        assert f["y"][...].tolist() == [0, 1, 2]
