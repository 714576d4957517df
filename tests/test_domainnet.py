from pathlib import Path

import pytest

from clipgen import domainnet as dn
from clipgen.errors import ClipgenError


def test_class_table_matches_reference_quirks():
    t = dn.class_table()
    assert len(t) == 345
    assert t[0].name == "aircraft carrier"
    # label order is not sorted-folder order
    assert dn.class_by_name("cello").label == 66 and dn.class_by_name("cell phone").label == 67
    assert sorted(["cello", "cell_phone"]) == ["cell_phone", "cello"]
    assert dn.class_by_name("The_Eiffel_Tower").folder == "The_Eiffel_Tower"
    assert dn.class_by_name("teddy-bear").label == 303


def test_held_out_labels_match_the_paper():
    expected = {"aircraft carrier": 0, "axe": 11, "banana": 13, "barn": 15, "bed": 25, "candle": 58, "lion": 174,
                "mountain": 190, "necklace": 197, "penguin": 218, "pizza": 225, "saxophone": 250,
                "television": 305, "tractor": 319, "traffic light": 320}
    assert {n: dn.class_by_name(n).label for n in dn.HELD_OUT_CLASSES} == expected


def test_unknown_class_is_an_error_with_suggestion():
    with pytest.raises(ClipgenError, match="did you mean"):
        dn.class_by_name("bananna")


@pytest.mark.parametrize("spec,expected", [
    ("all", dn.DOMAINS), ("rs", ("real", "sketch")), ("sr", ("real", "sketch")),
    ("sketch,real", ("real", "sketch")), ("cipqrs", dn.DOMAINS), ("quickdraw", ("quickdraw",)),
])
def test_parse_domains(spec, expected):
    assert dn.parse_domains(spec) == expected


@pytest.mark.parametrize("spec", ["rx", "rr", "photo", ""])
def test_parse_domains_rejects(spec):
    with pytest.raises(ClipgenError):
        dn.parse_domains(spec)


def test_test_domain_excludes_real():
    assert dn.parse_test_domain("s") == "sketch"
    with pytest.raises(ClipgenError, match="not a test domain"):
        dn.parse_test_domain("real")


def test_domain_letters_order():
    assert dn.domain_letters(["sketch", "clipart", "real"]) == "crs"


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "clipart_train.txt").write_text(text)
    return tmp_path


def test_read_split_and_errors(tmp_path):
    root = _write(tmp_path, "clipart/axe/a.jpg 11\nclipart/The_Eiffel_Tower/b.jpg 308\n")
    s = dn.read_split(root, "clipart", "train")
    assert [(x.label, x.folder, x.line) for x in s] == [(11, "axe", 1), (308, "The_Eiffel_Tower", 2)]
    with pytest.raises(ClipgenError, match=r"clipart_train.txt:1: image .* does not exist"):
        dn.read_split(root, "clipart", "train", check_files=True)
    for bad, msg in [("clipart/axe/a.jpg\n", ":1: expected 2 fields"), ("clipart/axe/a.jpg x\n", ":1: label 'x'"),
                     ("clipart/axe/a.jpg 1\nclipart/axe/b.jpg 345\n", ":2: label 345 out of range")]:
        _write(tmp_path, bad)
        with pytest.raises(ClipgenError, match=msg):
            dn.read_split(root, "clipart", "train")
    with pytest.raises(ClipgenError, match="split file not found"):
        dn.read_split(root, "sketch", "train")


def test_held_out_labels_come_from_split_files(tmp_path):
    # a non-standard label for axe: the split file wins over the reference table
    root = _write(tmp_path, "clipart/axe/a.jpg 7\nclipart/banana/b.jpg 13\n")
    samples = dn.read_split(root, "clipart", "train")
    assert dn.held_out_labels(["axe", "banana"], samples) == {"axe": 7, "banana": 13}
    with pytest.raises(ClipgenError, match="no images"):
        dn.held_out_labels(["lion"], samples)


def test_imagenet_mapping():
    m = dn.imagenet_to_domainnet()
    assert list(m)[:2] == ["aircraft carrier", "airplane"]
    assert sum(1 for v in m.values() if v) == 182
    assert len({i for v in m.values() if v for i in v}) == 450
    assert dn.imagenet_class_index()[0] == ("n01440764", "tench")
