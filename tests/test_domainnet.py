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


def test_class_table_is_domainnets_label_order():
    """DomainNet's labels number its 345 folders in alphabetical order of the folder name, case and the
    separators ``_``/``-`` ignored (``cello`` before ``cell_phone``, ``table`` before ``t-shirt``)."""
    import re

    table = dn.class_table()
    folders = [c.folder for c in table]
    key = [re.sub("[_-]", "", f.lower()) for f in folders]
    assert [c.label for c in table] == list(range(dn.NUM_CLASSES)) and dn.NUM_CLASSES == 345
    assert key == sorted(key) and len(set(key)) == 345
    assert (folders[0], folders[66], folders[67], folders[-1]) == ("aircraft_carrier", "cello", "cell_phone", "zigzag")
    assert all(c.name == c.folder.replace("_", " ").lower() for c in table)


def test_analysis_vocabulary():
    assert dn.SUBSETS == ("all", "id", "ood")
    assert dn.DEFAULT_HIGHLIGHT == "quickdraw" and dn.DEFAULT_HIGHLIGHT in dn.TEST_DOMAINS
    # CKA/embeddings: the store's id order (c i p q r s); circuits: the published scripts' order, real first
    assert dn.STORE_PAIR_ORDER == ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
    assert dn.CIRCUIT_PAIR_ORDER == ("real", "clipart", "infograph", "painting", "quickdraw", "sketch")
    assert sorted(dn.CIRCUIT_PAIR_ORDER) == sorted(dn.STORE_PAIR_ORDER)
    assert dn.TEMPLATE_DOMAIN_WORDS == ("clipart", "infograph", "painting", "quickdraw", "sketch")


def test_store_pair_order_is_the_store_domain_table():
    from clipgen.store.schema import domain_table

    assert tuple(domain_table(["sketch", "real", "clipart"])[0]) == dn.STORE_PAIR_ORDER


def _present(*labels: int) -> dict[int, str]:
    return {lab: dn.class_by_label(lab).folder for lab in labels}


def test_resolve_held_out_paper_default():
    held = dn.resolve_held_out(_present(0, 1, 11, 13, 66))
    assert (held.labels, held.source, held.explicit) == ([0, 11, 13], "paper", False)
    assert held.by_name == {"aircraft carrier": 0, "axe": 11, "banana": 13}
    assert held.names == ["aircraft carrier", "axe", "banana"] and held.label_set == frozenset({0, 11, 13})
    assert held.absent == [n for n in dn.HELD_OUT_CLASSES if n not in held.by_name] and len(held.absent) == 12
    # every paper class: all 15 resolved, in the paper's order, none absent
    full = dn.resolve_held_out({c.label: c.folder for c in dn.class_table()})
    assert full.names == list(dn.HELD_OUT_CLASSES) and full.absent == [] and len(full.labels) == 15
    # none present: an empty result (each caller words its own error)
    assert dn.resolve_held_out(_present(1, 2)).labels == []


def test_resolve_held_out_by_name_uses_the_data_labels():
    present = {7: "axe", 66: "cello", 308: "The_Eiffel_Tower"}  # the data says axe is 7
    held = dn.resolve_held_out(present, ["the eiffel tower", "AXE", "axe"])
    assert (held.labels, held.by_name, held.source, held.absent, held.explicit) == (
        [7, 308], {"the eiffel tower": 308, "axe": 7}, "option", [], True)
    with pytest.raises(ClipgenError, match=r"^held_out: held-out class 'lion' \(folder lion\) has no images in the "
                                           r"data$"):
        dn.resolve_held_out(present, ["lion"])
    with pytest.raises(ClipgenError, match=r"^x: held-out class 'lion' is missing$"):
        dn.resolve_held_out(present, ["lion"], field="x", missing=lambda n, f: f"held-out class {n!r} is missing")
    with pytest.raises(ClipgenError, match="did you mean"):
        dn.resolve_held_out(present, ["bananna"])


def test_resolve_held_out_recorded_and_matched():
    held = dn.resolve_held_out(_present(0, 11, 66), names=None, recorded=[66, 13, 0])
    assert (held.labels, held.source, held.absent_labels, held.by_name) == ([0, 66], "manifest", [13], {})
    # an empty record falls back to the paper's classes
    assert dn.resolve_held_out(_present(0, 11), recorded=[]).source == "paper"
    # names matched by the data's own names (e.g. a store with any classes)
    names = {"class 0": 0, "class 1": 1}
    held = dn.resolve_held_out({0: "class 0", 1: "class 1"}, ["class 1"], match=names.get)
    assert (held.labels, held.by_name) == ([1], {"class 1": 1})
    with pytest.raises(ClipgenError, match=r"^held_out: nope 'class 9'$"):
        dn.resolve_held_out({}, ["class 9"], match=names.get, missing=lambda n, _: f"nope {n!r}")


def test_imagenet_classnames_are_the_published_list():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = dn.imagenet_classnames()
    assert len(names) == 1000 and len(set(names)) == 1000  # open_clip's has "missile" and "sunglasses" twice
    assert (names[27], names[638], names[744], names[836]) == ("eft", "maillot", "projectile", "sunglass")
    assert names[0] == "tench" and names[26] == "smooth newt" and names[837] == "sunglasses" and names[999] == \
        "toilet paper"
    # open_clip's list differs at exactly these four indices
    diff = {i: (a, b) for i, (a, b) in enumerate(zip(names, IMAGENET_CLASSNAMES, strict=True)) if a != b}
    assert diff == dn.IMAGENET_NAME_DIFFERENCES
    assert all(n == n.strip() and n for n in names)


def test_split_names():
    assert dn.split_names(" Real, sketch  clipart,,") == ["real", "sketch", "clipart"]
    assert dn.split_names(["Real ", " ", "x y"]) == ["real", "x y"] and dn.split_names(None) == []


def test_choose_domains_as_stored():
    have = ["clipart", "real", "sketch", "imagenet"]
    assert dn.choose_domains(have, None, where="the store") == have
    assert dn.choose_domains(have, ["Sketch", "real", "sketch"], where="the store") == ["sketch", "real"]
    with pytest.raises(ClipgenError, match=r"^domains: domain 'quickdraw' is not in the store \(it has: clipart, "
                                           r"real, sketch, imagenet\)$"):
        dn.choose_domains(have, ["real", "quickdraw"], where="the store")
    with pytest.raises(ClipgenError, match=r"^x: needs at least 3 domains, got 2 \(real, sketch\)$"):
        dn.choose_domains(have, "real,sketch", where="the store", field="x", minimum=3)


def test_choose_domains_parsed_in_a_pair_order():
    have = ["sketch", "real", "quickdraw", "imagenet"]
    kw = dict(where="f.h5", order=dn.CIRCUIT_PAIR_ORDER, parse=True)
    assert dn.choose_domains(have, "all", **kw) == ["real", "quickdraw", "sketch"]  # imagenet: in no pair order
    assert dn.choose_domains(have, "sq", **kw) == ["quickdraw", "sketch"]
    assert dn.choose_domains(have, ["sketch", "r"], **kw) == ["real", "sketch"]
    with pytest.raises(ClipgenError, match=r"^domains: domain 'clipart' is not in f.h5 \(it has: sketch, real, "):
        dn.choose_domains(have, "c,s", **kw)
    with pytest.raises(ClipgenError, match=r"^domains: domain 'clipart' is not in f.h5 \(it has: no domains\)$"):
        dn.choose_domains([], "c", **kw)
    with pytest.raises(ClipgenError, match=r"^domains: needs at least 2 domains to compare, got 1 \(sketch\) in "
                                           r"f.h5$"):
        dn.choose_domains(have, "s", too_few="needs at least {minimum} domains to compare, got {n} ({domains}) in "
                                             "{where}", **kw)
    with pytest.raises(ClipgenError, match="unknown domain"):
        dn.choose_domains(have, "sculpture", **kw)


def test_run_held_out_labels_keep_the_run_record():
    present = _present(0, 11, 66)
    # recorded labels are kept, with or without images here (a store or circuits file keeps the run's record)
    assert dn.run_held_out_labels({"held_out_labels": [174, 11, 11]}, present) == [11, 174]
    assert dn.run_held_out_labels({"held_out_labels": []}, present) == [0, 11]  # nothing recorded: the paper's
    assert dn.run_held_out_labels(None, present) == [0, 11]
