"""The shared HDF5 file layer (clipgen.store.kind): schema versions, fingerprints, part files; for both kinds built
on it, the activation store and the circuits file."""

import h5py
import numpy as np
import pytest

from clipgen.circuits import store as circuits_store
from clipgen.errors import ClipgenError
from clipgen.store import build_store_from_arrays, open_store, schema
from clipgen.store.kind import FileKind, parts_dir


def _write_store(path):
    return build_store_from_arrays(path, paths=["a.png", "b.png"], labels=[0, 1], domains=["sketch", "real"],
                                   layers={"act1": np.ones((2, 3), dtype=np.float32)})


def _write_circuits(path):
    header = circuits_store.CircuitsHeader(provenance={"model": "m"}, settings={"steps": 1},
                                           layers=[{"name": "input", "channels": 3, "shape": [3]}],
                                           domains=["sketch"], classes={7: "x"}, held_out=[], plan=[])
    circuits_store.write_header(path, header)
    return circuits_store.assemble(path, header)


KINDS = {
    "store": (schema.KIND, _write_store, open_store),
    "circuits": (circuits_store.KIND, _write_circuits, circuits_store.open_circuits),
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_schema_bump_is_one_edit_and_still_reads_v1(name, tmp_path, monkeypatch):
    kind, write, open_ = KINDS[name]
    v1 = write(tmp_path / "v1.h5")
    with h5py.File(v1, "r") as f:
        assert f.attrs["schema_version"] == "1.0" and f.attrs["format"] == kind.format
    # the bump: one edit, the kind's schema_version
    monkeypatch.setattr(kind, "schema_version", "2.0")
    with open_(v1) as x:  # a v1 file still opens
        assert x.path == v1
    v2 = write(tmp_path / "v2.h5")
    with h5py.File(v2, "r") as f:
        assert f.attrs["schema_version"] == "2.0"
    with open_(v2):
        pass
    future = tmp_path / "v3.h5"
    future.write_bytes(v2.read_bytes())
    with h5py.File(future, "a") as f:
        f.attrs["schema_version"] = "3.0"
    with pytest.raises(ClipgenError, match=rf"v3\.h5: unsupported {kind.noun} schema version: found 3\.0, this "
                                           rf"clipgen reads 1\.x to 2\.x \(schema 2\.0\); upgrade clipgen$"):
        open_(future)
    # without the bump, the v2 file is one of an unknown newer version: refused with the clear error
    monkeypatch.undo()
    with pytest.raises(ClipgenError, match=rf"v2\.h5: unsupported {kind.noun} schema version: found 2\.0, this "
                                           rf"clipgen reads 1\.x \(schema 1\.0\); upgrade clipgen$"):
        open_(v2)
    with open_(v1):
        pass


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_foreign_or_unversioned_file_is_refused(name, tmp_path):
    kind, write, open_ = KINDS[name]
    other = write(tmp_path / "x.h5")
    with h5py.File(other, "a") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(ClipgenError, match=rf"not a clipgen {kind.title} \(format 'something-else'; expected "
                                           rf"'{kind.format}'\)"):
        open_(other)
    with h5py.File(other, "a") as f:
        f.attrs["format"] = kind.format
        del f.attrs["schema_version"]
    with pytest.raises(ClipgenError, match=rf"unsupported {kind.noun} schema version: found none, this clipgen "
                                           rf"reads 1\.x \(schema 1\.0\)$"):
        open_(other)


def _kind() -> FileKind:
    return FileKind(format="test-kind", schema_version="1.0", title="test file", noun="test",
                    fingerprint_keys=("model", "settings"), part_name=lambda k: f"part-{k:03d}.h5",
                    part_pattern=r"^part-(\d{3})\.h5$", part_key=lambda m: int(m.group(1)))


def test_fingerprints_and_their_diff():
    kind = _kind()
    a = {"model": "m", "settings": {"steps": 2, "rule": "left"}, "device": "cpu"}
    b = dict(a, device="cuda")
    assert kind.fingerprint(a) == kind.fingerprint(b)  # device is not part of the identity
    c = dict(a, model="n", settings={"steps": 3, "rule": "left", "seed": 1})
    assert kind.fingerprint(c) != kind.fingerprint(a)
    assert kind.fingerprint_diff(a, c) == ["model", "settings"]
    assert kind.fingerprint_diff(a, c, itemise=("settings",)) == ["model", "settings.seed", "settings.steps"]


def test_part_files_are_whole_or_absent_and_verified(tmp_path):
    kind = _kind()
    out = tmp_path / "f.h5"
    parts_dir(out).mkdir()
    for k in (0, 1, 5):
        with kind.writing_part(out, k) as tmp, h5py.File(tmp, "w") as f:
            f.attrs["ok"] = k != 1
    with pytest.raises(RuntimeError), kind.writing_part(out, 2) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert sorted(kind.parts_on_disk(out)) == [0, 1, 5]  # part 2 never appeared, its temporary file is gone
    (parts_dir(out) / ".part-003.h5.tmp").write_bytes(b"stray")
    (parts_dir(out) / "part-004.h5").write_bytes(b"not hdf5")
    (parts_dir(out) / "notes.txt").write_text("kept")
    assert kind.verified_parts(out, range(5), lambda k, f: bool(f.attrs["ok"]), clean=False) == {0}
    assert sorted(p.name for p in parts_dir(out).iterdir()) == [".part-003.h5.tmp", "notes.txt", "part-000.h5",
                                                                 "part-001.h5", "part-004.h5", "part-005.h5"]
    assert kind.verified_parts(out, range(5), lambda k, f: bool(f.attrs["ok"])) == {0}
    assert sorted(p.name for p in parts_dir(out).iterdir()) == ["notes.txt", "part-000.h5"]


def test_header_and_final_file_replace_each_other_atomically(tmp_path):
    kind = _kind()
    out = tmp_path / "f.h5"
    with kind.writing_header(out) as f:
        kind.stamp(f.attrs, created="today", complete=False)
    assert parts_dir(out).is_dir()
    with pytest.raises(RuntimeError), kind.assembling(out) as f:
        kind.stamp(f.attrs, created="today", complete=True)
        raise RuntimeError("killed")
    with h5py.File(out, "r") as f:  # the header is untouched, the parts are kept
        assert not f.attrs["complete"]
        kind.check(out, f)
    assert parts_dir(out).is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["f.h5", "f.h5.parts"]
    with kind.assembling(out) as f:
        kind.stamp(f.attrs, created="today", complete=True)
    with h5py.File(out, "r") as f:
        assert f.attrs["complete"] and f.attrs["format"] == "test-kind" and f.attrs["created"] == "today"
    assert not parts_dir(out).exists()
