import random
import re
import shutil
from pathlib import Path

import pytest

from clipgen import domainnet as dn
from clipgen.data.captions import (
    CaptionConfig,
    caption_path,
    check_matches_split,
    mentions_domain,
    read_caption_file,
    run_captions,
)
from clipgen.errors import ClipgenError

from . import _fixtures_data as _fx
from ._fixtures_data import make_text_domainnet

synth_captioned = _fx.synth_captioned  # shared fixture
text_root = _fx.text_root  # shared fixture

# The published caption vocabulary, written out here independently of clipgen.domainnet.
TERMS = {"all": ["image", "picture"], "clipart": ["clipart", "illustration"],
         "infograph": ["infograph", "informational chart"], "painting": ["painting", "art"],
         "quickdraw": ["quickdraw", "doodle"], "real": ["photo", "snapshot"], "sketch": ["sketch", "drawing"]}
ARTICLES = {"image": "an ", "picture": "a ", "clipart": "a ", "illustration": "an ", "infograph": "an ",
            "informational chart": "an ", "painting": "a ", "art": "", "quickdraw": "a ", "doodle": "a ",
            "photo": "a ", "snapshot": "a ", "sketch": "a ", "drawing": "a "}
TEMPLATES = ["{AAN}{TERM} of a {CLS}.", "a {CLS} {TERM}.", "{AAN}{TERM} depicting a {CLS}.",
             "a {CLS} depicted in {AAN}{TERM}.", "{AAN}{TERM} showing a {CLS}.", "a {CLS} is visible in {AAN}{TERM}."]


def reference_captions(root: Path, seed: int, aligned: bool) -> dict[tuple[str, str], list[str]]:
    """The published algorithm, written independently: module-level random, one pass c i p q r s, train/test."""
    random.seed(seed)
    out = {}
    for d in ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]:
        for split in ["train", "test"]:
            lines = [x for x in (root / f"{d}_{split}.txt").read_text().splitlines() if x.strip()]
            caps = []
            for line in lines:
                path, label = line.split()
                domain, cls, *_ = path.split("/")
                cls = cls.replace("_", " ")
                template = random.choice(TEMPLATES)
                template = template if random.random() < 0.5 else template[:-1]
                term = random.choice(TERMS["all"]) if aligned else random.choice(TERMS["all"] + TERMS[domain])
                caps.append("\t".join([path, label, template.format(CLS=cls, TERM=term, AAN=ARTICLES[term])]))
            out[(d, split)] = caps
    return out


def test_captions_match_the_published_stream_exactly(text_root):
    cap_dir = text_root / "captions"
    for aligned in (False, True):
        ref = reference_captions(text_root, 42, aligned)
        for (d, split), lines in ref.items():
            got = caption_path(cap_dir, d, split, aligned).read_text().splitlines()
            assert got == lines, (d, split, aligned)
    # published layout: no header, three tab-separated fields, aligned under aligned-captions/
    assert (cap_dir / "aligned-captions" / "sketch_test.tsv").is_file()
    first = (cap_dir / "clipart_train.tsv").read_text().splitlines()[0].split("\t")
    assert len(first) == 3 and first[0].startswith("clipart/") and first[1].isdigit()


def test_caption_statistics(text_root):
    cap_dir = text_root / "captions"
    standard = aligned = 0
    n = stops = 0
    domain_term_hits = 0
    for d in dn.DOMAINS:
        for split in dn.SPLITS:
            rows = read_caption_file(caption_path(cap_dir, d, split), d)
            arows = read_caption_file(caption_path(cap_dir, d, split, aligned=True), d)
            n += len(rows)
            domain_term_hits += sum(mentions_domain(c, d) for _, _, c in rows)
            stops += sum(c.endswith(".") for _, _, c in rows)
            # no aligned caption names any domain term (of any domain)
            assert not any(mentions_domain(c, dd) for _, _, c in arows for dd in dn.DOMAINS)
            standard += len(rows)
            aligned += len(arows)
            for _, label, c in rows:
                name = dn.folder_to_name(dn.class_by_label(label).folder)
                assert name in c
    assert standard == aligned == n > 1500
    # about half of the standard captions name their domain, and about half keep the full stop
    assert 0.45 < domain_term_hits / n < 0.55
    assert 0.45 < stops / n < 0.55


def test_class_names_keep_folder_spelling(synth_captioned, synth_root):
    rows = read_caption_file(caption_path(synth_captioned, "clipart", "train"), "clipart")
    caps = {dn.class_by_label(label).folder: c for _, label, c in rows}
    assert "The Eiffel Tower" in caps["The_Eiffel_Tower"]  # capitals kept, _ -> space
    assert "teddy-bear" in caps["teddy-bear"]
    assert re.search(r"\ba axe\b", " ".join(c for _, _, c in rows))  # the published "a {C}" is kept


def test_deterministic_and_seed_dependent(text_root, tmp_path):
    a = run_captions(CaptionConfig(root=text_root, out=tmp_path / "a", seed=42, aligned=False), progress=False)
    b = run_captions(CaptionConfig(root=text_root, out=tmp_path / "b", seed=7, aligned=False), progress=False)
    same = (tmp_path / "a" / "real_train.tsv").read_text() == (text_root / "captions" / "real_train.tsv").read_text()
    assert same
    assert (tmp_path / "b" / "real_train.tsv").read_text() != (tmp_path / "a" / "real_train.tsv").read_text()
    assert not (tmp_path / "a" / "aligned-captions").exists()
    assert a.counts == b.counts and a.counts["quickdraw"]["train"] > a.counts["clipart"]["train"]


def test_existing_outputs_need_force(text_root, tmp_path):
    out = tmp_path / "caps"
    run_captions(CaptionConfig(root=text_root, out=out, aligned=False), progress=False)
    before = (out / "sketch_test.tsv").read_text()
    with pytest.raises(ClipgenError, match="already exists.*--force"):
        run_captions(CaptionConfig(root=text_root, out=out, aligned=False, seed=1), progress=False)
    assert (out / "sketch_test.tsv").read_text() == before
    run_captions(CaptionConfig(root=text_root, out=out, aligned=False, seed=1, force=True), progress=False)
    assert (out / "sketch_test.tsv").read_text() != before


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "painting_test.txt").unlink(), r"painting_test.txt: split file not found"),
    (lambda r: _append(r / "real_train.txt", "real/zebra/x.jpg"), r"real_train.txt:\d+: expected 2 fields"),
    (lambda r: _append(r / "real_train.txt", "real/zebra/x.jpg seven"), r"real_train.txt:\d+: label 'seven'"),
    (lambda r: _append(r / "sketch_test.txt", "sketch/zebra/x.jpg 345"), r"sketch_test.txt:\d+: label 345 out"),
    (lambda r: _append(r / "clipart_test.txt", "real/zebra/x.jpg 344"), r"clipart_test.txt:\d+: path 'real/zebra"),
])
def test_bad_split_files_write_nothing(tmp_path, damage, message):
    root = make_text_domainnet(tmp_path / "dn", lo=1, hi=3)
    damage(root)
    with pytest.raises(ClipgenError, match=message):
        run_captions(CaptionConfig(root=root), progress=False)
    assert not (root / "captions").exists() or not any((root / "captions").glob("*.tsv"))


def test_check_files(tmp_path, synth_root):
    root = tmp_path / "dn"
    shutil.copytree(synth_root, root, ignore=shutil.ignore_patterns("base"))
    run_captions(CaptionConfig(root=root, check_files=True, aligned=False), progress=False)
    victim = dn.read_split(root, "infograph", "test")[3]
    (root / victim.path).unlink()
    with pytest.raises(ClipgenError, match=rf"infograph_test.txt:{victim.line}: image .* does not exist"):
        run_captions(CaptionConfig(root=root, check_files=True, out=tmp_path / "c2"), progress=False)
    assert not (tmp_path / "c2").exists()


def test_stale_caption_files_are_detected(text_root, tmp_path):
    rows = read_caption_file(caption_path(text_root / "captions", "real", "train"), "real")
    samples = dn.read_split(text_root, "real", "train")
    check_matches_split(rows, samples, Path("c.tsv"), Path("s.txt"))
    with pytest.raises(ClipgenError, match="does not match s.txt .*rerun"):
        check_matches_split(rows[:-1], samples, Path("c.tsv"), Path("s.txt"))
    bad = tmp_path / "real_train.tsv"
    bad.write_text("real/zebra/a.jpg\t344\ta zebra.\n" + "real/zebra/b.jpg\t344 a zebra photo\n")
    with pytest.raises(ClipgenError, match=r"real_train.tsv:2: expected 3 tab-separated fields"):
        read_caption_file(bad, "real")


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line + "\n")
