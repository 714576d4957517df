import pytest

from clipgen.store import schema


def _prov(**kw):
    p = {"model": {"name": "RN-tiny", "config": {"embed_dim": 64}}, "checkpoint": {"path": "/a/epoch_1.pt",
         "sha256": "ab"}, "epoch": 1, "image_set": {"index": "/dn", "sha256": "cd"}, "preprocess": {"size": 64},
         "pooling": {"conv": "mean"}, "layers": ["act1", "embedding"], "dtype": "float16", "precision": "fp32",
         "text": {"templates": ["a {}."]}, "command_line": "clipgen extract", "device": "cpu", "batch_size": 8}
    p.update(kw)
    return p


def test_fingerprint_covers_identity_not_circumstance():
    base = schema.fingerprint(_prov())
    assert len(base) == 64 and int(base, 16) >= 0
    # how the store was made does not change it
    assert schema.fingerprint(_prov(command_line="other", device="cuda", batch_size=256)) == base
    assert schema.fingerprint(_prov(checkpoint={"path": "/moved/epoch_1.pt", "sha256": "ab"})) == base
    # what the numbers are does
    for change in (dict(dtype="float32"), dict(layers=["act1"]), dict(precision="bf16"), dict(epoch=2),
                   dict(checkpoint={"path": "/a/epoch_1.pt", "sha256": "zz"}), dict(pooling={"conv": "none"}),
                   dict(image_set={"index": "/dn", "sha256": "other"})):
        assert schema.fingerprint(_prov(**change)) != base, change


def test_fingerprint_diff_names_fields():
    assert schema.fingerprint_diff(_prov(), _prov(dtype="float32", epoch=3)) == ["epoch", "dtype"]
    assert schema.fingerprint_diff(_prov(), _prov(device="x")) == []


def test_parse_version():
    assert schema.parse_version("1.0") == (1, 0)
    assert schema.parse_version(b"2.3") == (2, 3)
    assert schema.parse_version("1") == (1, 0)
    assert schema.parse_version("garbage")[0] == -1


@pytest.mark.parametrize("values,itemsize,block", [(32, 2, None), (2048, 2, 1024), (1, 4, 256), (100000, 4, 64)])
def test_chunk_rows(values, itemsize, block):
    r = schema.chunk_rows(values, itemsize, block)
    assert r >= 1 and r & (r - 1) == 0  # a power of two
    if block:
        assert block % r == 0
    if r > schema.MIN_CHUNK_ROWS and not block:
        assert r * values * itemsize <= schema.CHUNK_BYTES < 2 * r * values * itemsize


def test_domain_table():
    names, ids = schema.domain_table(["sketch", "clipart", None, "sketch"])
    assert names == ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]
    assert ids == [5, 0, -1, 5]
    names, ids = schema.domain_table(["b", "sketch", "a", "b"])
    assert names == ["sketch", "b", "a"] and ids == [1, 0, 2, 1]


def test_image_set_sha_is_order_sensitive():
    a = schema.image_set_sha256(["x", "y"], [0, 1], ["c", "c"], ["test", "test"])
    b = schema.image_set_sha256(["y", "x"], [1, 0], ["c", "c"], ["test", "test"])
    assert a != b and len(a) == 64


def test_dataset_path():
    assert schema.dataset_path("embedding") == "embeddings/image"
    assert schema.dataset_path("resblock3") == "layers/resblock3"
