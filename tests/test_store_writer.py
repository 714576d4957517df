import h5py
import numpy as np
import pytest

from clipgen.errors import ClipgenError
from clipgen.store import FORMAT, SCHEMA_VERSION, build_store_from_arrays, open_store


def _build(path, **kw):
    args = dict(paths=["a", "b", "c"], labels=[0, 1, 1], domains=["sketch"] * 3,
                layers={"l1": np.arange(6.0).reshape(3, 2), "embedding": np.eye(3)})
    args.update(kw)
    return build_store_from_arrays(path, **args)


def test_file_layout_matches_schema(tmp_path):
    p = _build(tmp_path / "s.h5", dtype="float16")
    with h5py.File(p, "r") as f:
        assert f.attrs["format"] == FORMAT and f.attrs["schema_version"] == SCHEMA_VERSION
        assert bool(f.attrs["complete"]) and int(f.attrs["n_samples"]) == 3
        assert set(f) == {"samples", "layers", "embeddings", "classes", "skipped", "progress"}
        assert set(f["samples"]) == {"path", "index", "label", "domain", "split"}
        ds = f["layers/l1"]
        assert ds.dtype == np.float16 and ds.compression == "gzip" and ds.shuffle and ds.chunks[1:] == (2,)
        assert f["embeddings/image"].dtype == np.float32  # the embedding stays float32
        assert int(f["progress"].attrs["rows_done"]) == 3
        assert f["samples/index"][...].tolist() == [0, 1, 2]


def test_float16_values_are_the_cast(tmp_path):
    x = np.random.default_rng(0).normal(size=(3, 2))
    p = _build(tmp_path / "s.h5", dtype="float16", layers={"l1": x})
    with open_store(p) as st:
        np.testing.assert_array_equal(st.read_layer("l1"), x.astype(np.float16).astype(np.float32))


def test_refusals(tmp_path):
    with pytest.raises(ClipgenError, match="'l1' has shape"):
        _build(tmp_path / "a.h5", layers={"l1": np.zeros((2, 2))})
    with pytest.raises(ClipgenError, match="exceed the float16 range.*--dtype float32"):
        _build(tmp_path / "b.h5", dtype="float16", layers={"l1": np.full((3, 2), 1e6)})
    with pytest.raises(ClipgenError, match="unknown dtype"):
        _build(tmp_path / "c.h5", dtype="int8")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
    p = _build(tmp_path / "d.h5")
    with pytest.raises(ClipgenError, match="already exists"):
        _build(p, force=False)


def test_unpooled_layer(tmp_path):
    x = np.random.default_rng(1).normal(size=(3, 4, 2, 2)).astype(np.float32)
    p = _build(tmp_path / "u.h5", layers={"conv": x})
    with open_store(p) as st:
        info = st.layer_info("conv")
        assert info["pooling"] == "none" and info["channels"] == 4 and info["original_shape"] == (4, 2, 2)
        np.testing.assert_array_equal(st.read_layer("conv", rows=[2]), x[2:])
        labels, means = st.class_means("conv", "sketch")
        np.testing.assert_allclose(means[1], x[1:].mean(0), rtol=1e-6)
