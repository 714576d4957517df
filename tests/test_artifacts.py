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
