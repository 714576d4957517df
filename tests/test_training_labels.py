import pytest

from clipgen import domainnet as dn
from clipgen.errors import ClipgenError
from clipgen.training.labels import imagenet_to_joint, is_domainnet_label, label_of_path, tsv_labels
from clipgen.tsv import write_tsv


def _wnid(idx: int) -> str:
    return dn.imagenet_class_index()[idx][0]


def test_imagenet_rows():
    # spec 1.1: aircraft carrier -> ImageNet 403, axe -> 596 hatchet, lion -> 291, penguin -> 145 king penguin
    assert label_of_path(f"/in/train/{_wnid(403)}/x.JPEG") == 1000 + 0
    assert label_of_path(f"/in/train/{_wnid(596)}/x.JPEG") == 1000 + 11
    assert label_of_path(f"/in/val/{_wnid(291)}/x.JPEG") == 1000 + 174
    assert label_of_path(f"{_wnid(145)}/x.JPEG") == 1000 + 218
    # an ImageNet class without a DomainNet counterpart keeps its ImageNet index
    unmapped = next(i for i in range(1000) if i not in imagenet_to_joint())
    assert label_of_path(f"/in/{_wnid(unmapped)}/x.JPEG") == unmapped
    assert len(imagenet_to_joint()) == 450  # 450 ImageNet classes map to 182 DomainNet classes
    assert len(set(imagenet_to_joint().values())) == 182
    assert label_of_path("/in/n99999999/x.JPEG") is None  # looks like a wnid, is none


def test_domainnet_and_base_rows():
    assert label_of_path("/dn/real/The_Eiffel_Tower/real_309_000061.jpg") == 1000 + 308
    assert label_of_path("sketch/teddy-bear/x.jpg") == 1000 + 303
    assert label_of_path("/dn/clipart/cell_phone/x.jpg") == 1000 + 67  # not sorted-name order: cello is 66
    assert label_of_path("/dn/base/cello/base_000001.jpg") == 1000 + 66
    assert label_of_path("/dn/base/unknown_thing/x.jpg") is None
    assert label_of_path("x.jpg") is None
    assert is_domainnet_label(1000) and is_domainnet_label(1344) and not is_domainnet_label(999)


def test_tsv_labels_and_error_line(tmp_path):
    p = tmp_path / "t.tsv"
    write_tsv(p, [("/dn/real/axe/a.jpg", "an axe"), (f"/in/{_wnid(403)}/b.JPEG", "a ship")])
    assert tsv_labels(p) == [1011, 1000]
    write_tsv(p, [("/dn/real/axe/a.jpg", "x"), ("/dn/real/axe/b.jpg", "x"), ("/cc/000/123.jpg", "a caption")])
    with pytest.raises(ClipgenError, match=r"t\.tsv:4: cannot determine the class of /cc/000/123\.jpg"):
        tsv_labels(p)
