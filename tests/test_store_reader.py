import json
import shutil

import h5py
import numpy as np
import pytest

from clipgen.errors import ClipgenError
from clipgen.store import FORMAT, SCHEMA_VERSION, build_store_from_arrays, open_store, schema
from clipgen.store import reader as reader_mod

DOMAINS = ["clipart", "sketch", "painting"]


def _arrays(n=90, seed=0, wide=4096):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, n)
    domains = [DOMAINS[i % 3] for i in range(n)]
    emb = rng.normal(size=(n, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    layers = {"act1": rng.normal(size=(n, 4)), "wide": rng.normal(size=(n, wide)), "embedding": emb}
    layers = {k: v.astype(np.float32) for k, v in layers.items()}
    return labels, domains, layers


@pytest.fixture
def store(tmp_path):
    labels, domains, layers = _arrays()
    path = tmp_path / "s.h5"
    text = ([0, 1, 2], np.eye(3, 8), ["a photo of a {}.", "a {}."], {0: "cat", 1: "dog", 2: "aircraft carrier"})
    build_store_from_arrays(path, paths=[f"/img/{i}.png" for i in range(len(labels))], labels=labels,
                            domains=domains, layers=layers, text=text, held_out_labels=[2],
                            provenance={"model": {"name": "RN-tiny"}}, splits=["test"] * len(labels))
    return path, labels, domains, layers


def test_round_trip(store):
    path, labels, domains, layers = store
    with open_store(path) as st:
        assert st.layers == ["act1", "wide", "embedding"]
        assert st.n_samples == 90 and st.complete and st.schema_version == SCHEMA_VERSION
        assert len(st.fingerprint) == 64 and st.provenance["model"]["name"] == "RN-tiny"
        np.testing.assert_array_equal(st.read_layer("act1"), layers["act1"].astype(np.float32))
        np.testing.assert_array_equal(st.read_layer("embedding"), layers["embedding"].astype(np.float32))
        s = st.samples
        np.testing.assert_array_equal(s.labels, labels)
        assert s.labels.dtype == np.int64 and s.domains.dtype == np.int64
        assert [s.domain_names[d] for d in s.domains] == domains
        assert s.paths[3] == "/img/3.png" and s.splits[0] == "test"
        assert st.class_names == {0: "cat", 1: "dog", 2: "aircraft carrier"}
        assert st.held_out_labels == [2]
        tl, te, tt = st.text_embeddings
        np.testing.assert_array_equal(tl, [0, 1, 2])
        np.testing.assert_array_equal(te, np.eye(3, 8, dtype=np.float32))
        assert tt == ["a photo of a {}.", "a {}."]
        info = st.layer_info("wide")
        assert info["channels"] == 4096 and info["original_shape"] == (4096,) and info["pooling"] == "mean"
        assert info["dtype"] == "float32"
        assert st.layer_info("embedding")["pooling"] == "l2-normalised"


def test_filters_are_anded_in_row_order(store):
    path, labels, domains, layers = store
    with open_store(path) as st:
        rows = np.array([80, 3, 4, 5, 60, 61, 1])
        got = st.read_layer("wide", rows=rows, domains=["sketch", "painting"], labels=[1, 2, 3])
        dom = np.array(domains)
        mask = np.zeros(90, bool)
        mask[rows] = True
        mask &= np.isin(dom, ["sketch", "painting"]) & np.isin(labels, [1, 2, 3])
        want = layers["wide"][np.flatnonzero(mask)]
        np.testing.assert_array_equal(got, want.astype(np.float32))
        np.testing.assert_array_equal(st.select(rows=rows, domains=["sketch", "painting"], labels=[1, 2, 3]),
                                      np.flatnonzero(mask))
        np.testing.assert_array_equal(st.read_layer("act1", rows=slice(10, 20)), layers["act1"][10:20])
        assert st.read_layer("act1", domains="sketch", dtype=np.float64).dtype == np.float64
        assert st.read_layer("act1", labels=[99]).shape == (0, 4)


def test_iter_layer_contiguous_blocks(store):
    path, _, _, layers = store
    with open_store(path) as st:
        seen = []
        for rows, block in st.iter_layer("wide", block_rows=16):
            assert block.dtype == np.float32 and len(rows) == len(block) <= 16
            assert np.all(np.diff(rows) == 1)  # contiguous
            np.testing.assert_array_equal(block, layers["wide"][rows])
            seen.extend(rows.tolist())
        assert seen == list(range(90))
        sel = [rows for rows, _ in st.iter_layer("wide", block_rows=16, rows=[1, 2, 40, 89])]
        assert [r.tolist() for r in sel] == [[1, 2], [40], [89]]


def test_read_slice_is_the_raw_stored_rows(store):
    path, _, _, layers = store
    with open_store(path) as st:
        got = st.read_slice("wide", 5, 37)
        assert got.dtype == st.file[schema.dataset_path("wide")].dtype  # as stored, no float32 copy
        np.testing.assert_array_equal(got, layers["wide"][5:37].astype(got.dtype))
        assert st.read_slice("wide", 90, 90).shape[0] == 0
        with pytest.raises(ClipgenError, match="rows 80:91 are outside layer 'wide'"):
            st.read_slice("wide", 80, 91)


def test_class_means_against_numpy(store, monkeypatch):
    path, labels, domains, layers = store
    monkeypatch.setattr(reader_mod, "BLOCK_BYTES", 1)  # force one chunk per block: really streamed
    calls = []
    with open_store(path) as st:
        orig = st._iter

        def spy(*a, **k):
            for item in orig(*a, **k):
                calls.append(len(item[0]))
                yield item

        st._iter = spy
        x = layers["wide"].astype(np.float64)
        for dom in DOMAINS:
            present, means = st.class_means("wide", dom)
            m = np.array(domains) == dom
            want_labels = np.unique(labels[m])
            np.testing.assert_array_equal(present, want_labels)
            want = np.stack([x[m & (labels == k)].mean(0) for k in want_labels])
            np.testing.assert_allclose(means, want, rtol=1e-12, atol=1e-12)
            assert means.dtype == np.float64
        assert max(calls) < 30  # never the whole domain (30 rows) at once
        present, means = st.class_means("wide", "sketch", labels=[1, 99])
        assert present.tolist() == ([1] if 1 in labels[np.array(domains) == "sketch"] else [])


def test_iter_class_means_per_domain(store):
    path, labels, domains, layers = store
    with open_store(path) as st:
        assert st.domains_present() == ["clipart", "painting", "sketch"]  # id order (DomainNet's)
        got = list(st.iter_class_means("act1", labels=[0, 1, 2]))
        assert [d for d, _, _ in got] == ["clipart", "painting", "sketch"]
        for d, present, means in got:
            m = (np.array(domains) == d) & np.isin(labels, [0, 1, 2])
            np.testing.assert_array_equal(present, np.unique(labels[m]))
            want = np.stack([layers["act1"][m & (labels == k)].astype(np.float64).mean(0) for k in present])
            np.testing.assert_allclose(means, want, rtol=1e-12)
        assert [d for d, _, _ in st.iter_class_means("act1", ["sketch"])] == ["sketch"]


def test_unknown_names(store):
    path = store[0]
    with open_store(path) as st:
        with pytest.raises(ClipgenError, match="no layer 'nope'.*act1 wide embedding"):
            st.read_layer("nope")
        with pytest.raises(ClipgenError, match="no domain 'photo'.*clipart painting sketch"):
            st.read_layer("act1", domains=["photo"])
        assert st.read_layer("act1", domains=["real"]).shape == (0, 4)  # a DomainNet domain without rows


def test_text_optional_and_no_held_out(tmp_path):
    p = build_store_from_arrays(tmp_path / "t.h5", paths=["a", "b"], labels=[0, 1], domains=["x", None],
                                layers={"l": np.ones((2, 3))})
    with open_store(p) as st:
        assert st.text_embeddings is None and st.held_out_labels == [] and st.class_names == {}
        assert st.samples.domain_names == ["x"] and st.samples.domains.tolist() == [0, -1]


# -- refusals --------------------------------------------------------------------------------------------------

def test_refuses_missing_and_not_hdf5(tmp_path):
    with pytest.raises(ClipgenError, match="store not found"):
        open_store(tmp_path / "nope.h5")
    p = tmp_path / "text.h5"
    p.write_text("hello")
    with pytest.raises(ClipgenError, match=r"text\.h5: not an HDF5 file"):
        open_store(p)


def test_refuses_truncated(store, tmp_path):
    path = store[0]
    data = path.read_bytes()
    t = tmp_path / "trunc.h5"
    t.write_bytes(data[: len(data) // 2])
    with pytest.raises(ClipgenError, match=r"trunc\.h5: (truncated or corrupt|not an HDF5)"), open_store(t) as st:
        st.read_layer("wide")


def test_refuses_foreign_hdf5(tmp_path):
    p = tmp_path / "foreign.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(ClipgenError, match="foreign.h5: not a clipgen activation store .no 'format'"):
        open_store(p)
    with h5py.File(p, "a") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(ClipgenError, match="format 'something-else'"):
        open_store(p)


def test_refuses_unknown_major_version(store, tmp_path):
    p = tmp_path / "v2.h5"
    shutil.copy(store[0], p)
    with h5py.File(p, "a") as f:
        f.attrs["schema_version"] = "2.0"
    with pytest.raises(ClipgenError, match=r"found 2\.0, this clipgen reads 1\.x"):
        open_store(p)
    with h5py.File(p, "a") as f:
        f.attrs["schema_version"] = "1.7"  # a newer minor version is readable
    with open_store(p) as st:
        assert st.schema_version == "1.7"
    assert FORMAT == "clipgen-activations"


def test_refuses_incomplete_unless_allowed(store, tmp_path):
    p = tmp_path / "inc.h5"
    shutil.copy(store[0], p)
    with h5py.File(p, "a") as f:
        f.attrs["complete"] = False
        f["progress"].attrs["rows_done"] = 40
    with pytest.raises(ClipgenError, match=r"inc\.h5: incomplete store \(40 of 90 rows"):
        open_store(p)
    with open_store(p, allow_incomplete=True) as st:
        assert not st.complete


def test_refuses_shard_unless_allowed(store, tmp_path):
    p = tmp_path / "shard.h5"
    shutil.copy(store[0], p)
    with h5py.File(p, "a") as f:
        f.attrs["shard"] = json.dumps({"index": 0, "count": 2, "start": 0, "stop": 90, "total": 180})
    with pytest.raises(ClipgenError, match="shard 0/2.*clipgen extract merge"):
        open_store(p)
    with open_store(p, allow_incomplete=True) as st:
        assert not st.complete and st.rows_complete and st.shard["count"] == 2
