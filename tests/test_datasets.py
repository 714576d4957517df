import pytest
import torch

from clipgen import domainnet as dn
from clipgen.datasets import domainnet_records, folders_of, make_loader, tsv_records
from clipgen.errors import ClipgenError


def _tf(img):
    import numpy as np

    return torch.from_numpy(np.asarray(img.resize((8, 8)), dtype="float32")).permute(2, 0, 1)


def test_domainnet_records_filter(synth_root):
    recs = domainnet_records(synth_root, ("sketch", "real"), "test", labels=[11])
    assert {r.domain for r in recs} == {"sketch", "real"} and {r.label for r in recs} == {11}
    assert all(r.path.startswith(str(synth_root.resolve())) for r in recs)
    assert folders_of(domainnet_records(synth_root, ("real",), "train"))[11] == "axe"
    with pytest.raises(ClipgenError, match="--split"):
        domainnet_records(synth_root, ("real",), "val")


def test_loader_fail_and_skip(synth_root, tmp_path):
    recs = domainnet_records(synth_root, ("quickdraw",), "test")[:5]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    from clipgen.datasets import ImageRecord

    recs = recs[:2] + [ImageRecord(str(bad), 0)] + recs[2:]
    with pytest.raises(ClipgenError, match="bad.jpg: corrupt"):
        list(make_loader(recs, _tf, batch_size=4))
    batches = list(make_loader(recs, _tf, batch_size=4, on_error="skip"))
    kept = torch.cat([k for _, k, _ in batches]).tolist()
    skipped = torch.cat([s for _, _, s in batches]).tolist()
    assert kept == [0, 1, 3, 4, 5] and skipped == [2]
    assert batches[0][0].shape == (3, 3, 8, 8)


def test_tsv_records(synth_root):
    recs = tsv_records(synth_root / "base_val.tsv")
    assert recs and all(r.label == -1 for r in recs)
    assert len(dn.read_split(synth_root, "real", "test")) > 0
