import random

import pytest

from clipgen import domainnet as dn
from clipgen.data.imagenet_sketch import SketchConfig, mix_class_counts, run_sketch_mixtures
from clipgen.data.mixture_info import read_info
from clipgen.data.mixtures import MixturesConfig, run_mixtures
from clipgen.errors import ClipgenError
from clipgen.tsv import read_tsv

from . import _fixtures_data as _fx
from ._fixtures_data import make_sketch_root

synth_captioned = _fx.synth_captioned  # shared fixture

# ImageNet index -> images: two plain non-shared classes, two non-shared classes whose names contain a shared
# class name ("sea lion" holds "lion", "beer bottle" holds "bee"), and two shared classes (hatchet=axe, banana).
COUNTS = {25: 6, 26: 6, 150: 3, 440: 3, 596: 4, 954: 4}
TEMPLATES = ["{}.", "a {}.", "the {}.", "{} drawing.", "drawing of a {}.", "drawing of the {}.", "a {} drawing.",
             "a drawing of a {}.", "a drawing of the {}.", "{} sketch.", "sketch of a {}.", "sketch of the {}.",
             "a {} sketch.", "a sketch of a {}.", "a sketch of the {}.", "{} image.", "image of a {}.",
             "image of the {}.", "a {} image.", "an image of a {}.", "an image of the {}."]
SOURCES = {"natural-only+in-sketch": "lso-real-only", "leave-out-domain+in-sketch": "lso-cipqr-nosketchclasses",
           "cg-high+in-sketch": "lso-cipqrs-nosketchclasses"}


@pytest.fixture(scope="module")
def sketch_run(synth_root, synth_captioned, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("insk")
    sk = make_sketch_root(tmp / "sketch", COUNTS)
    base = dict(base=synth_root / "base_train.tsv", base_val=synth_root / "base_val.tsv")
    res = run_sketch_mixtures(SketchConfig(root=synth_root, sketch_root=sk, out=tmp / "out",
                                             captions=synth_captioned, **base), progress=False)
    # the source mixtures, written by `clipgen data mixtures`, for an independent comparison
    run_mixtures(MixturesConfig(root=synth_root, captions=synth_captioned, out=tmp / "src",
                                  setups=["natural-only", "leave-out-domain", "cg-high"], test_domains=["sketch"],
                                  **base), progress=False)
    return tmp, sk, res


def test_captions_follow_the_published_stream(sketch_run):
    from clipgen.domainnet import imagenet_classnames

    tmp, sk, res = sketch_run
    names = imagenet_classnames()
    random.seed(42)
    expected = []
    for i in sorted(COUNTS, key=lambda i: dn.imagenet_class_index()[i][0]):  # ImageFolder: sorted wnid folders
        wnid = dn.imagenet_class_index()[i][0]
        for j in range(COUNTS[i]):
            t = random.choice(TEMPLATES)
            t = t if random.random() < 0.5 else t[:-1]
            expected.append((str((sk / wnid / f"sketch_{j:04d}.JPEG").resolve()), t.format(names[i])))
    assert read_tsv(tmp / "out" / "in-sketch-captions.tsv") == expected
    assert res.n_images == 26 and res.n_kept == 18 and res.n_kept_other_filter == 12 and res.n_classes_kept == 4


def test_captions_use_the_published_imagenet_names():
    from clipgen.data.imagenet_sketch import caption_sketches
    from clipgen.domainnet import imagenet_classnames

    # the published stream (seed 42) gives the first image "an image of the {}."; class 27 is "eft" there
    # (open_clip's list says "newt"), and likewise maillot, projectile and sunglass
    got = [im.caption for im in caption_sketches([("a", 27), ("b", 638), ("c", 744), ("d", 836)],
                                                 imagenet_classnames())]
    assert got == ["an image of the eft.", "a drawing of the maillot.", "drawing of a projectile",
                   "image of the sunglass."]


def test_add_variant(sketch_run):
    tmp, sk, res = sketch_run
    sketches = [r for r in read_tsv(tmp / "out" / "in-sketch-captions.tsv")
                if any(f"/{dn.imagenet_class_index()[i][0]}/" in r[0] for i in (25, 26, 150, 440))]
    assert len(sketches) == 18
    n_base = len(read_tsv(tmp / "src" / "combined-captions-train-lso-real-only.tsv")) - len(
        read_tsv(tmp / "src" / "dn-captions-train-lso-real-only.tsv"))
    for setup, ident in SOURCES.items():
        src = read_tsv(tmp / "src" / f"combined-captions-train-{ident}.tsv")
        got = read_tsv(tmp / "out" / f"combined-captions-train-{ident}-with-in-sketches.tsv")
        base, dn_rows = src[:n_base], src[n_base:]
        drop = set(random.Random(42).sample(range(len(dn_rows)), k=18))
        assert got == base + [r for i, r in enumerate(dn_rows) if i not in drop] + sketches
        assert len(got) == len(src)  # size kept
        info = read_info(tmp / "out" / f"combined-captions-train-{ident}-with-in-sketches.tsv")
        assert info.setup == setup and info.counts["imagenet-sketch"] == 18 and info.counts["total"] == len(got)
        assert info.in_sketch["variant"] == "add" and info.in_sketch["filter"] == "class"
        val = read_tsv(tmp / "out" / f"combined-captions-val-{ident}-with-in-sketches.tsv")
        assert val == read_tsv(tmp / "src" / f"combined-captions-val-{ident}.tsv")


def test_mix_variant_matches_the_published_procedure(sketch_run):
    tmp, sk, res = sketch_run
    src = read_tsv(tmp / "src" / "combined-captions-train-lso-cipqrs-nosketchclasses.tsv")
    dn_part = read_tsv(tmp / "src" / "dn-captions-train-lso-cipqrs-nosketchclasses.tsv")
    base = src[: len(src) - len(dn_part)]
    in_sketches = read_tsv(tmp / "out" / "combined-captions-train-lso-real-only-with-in-sketches.tsv")[-18:]

    def is_sketch(p):  # <synth root>/sketch/<class folder>/<file>
        return p.split("/")[-3] == "sketch"

    dn_sk = [r for r in dn_part if is_sketch(r[0])]
    other = [r for r in dn_part if not is_sketch(r[0])]
    groups = {}
    for r in dn_sk:
        groups.setdefault(r[0].split("/")[-2], []).append(r)
    # the published procedure (with the 30% extra classes taken in the 50% subset's order)
    random.seed(42)
    k = mix_class_counts(len(groups))
    half = random.sample(list(groups), k=k["fiftyp"])
    quart = random.sample(half, k=k["twentyfivep"])
    thirty = quart + random.sample([c for c in half if c not in quart], k=k["thirtyp"] - k["twentyfivep"])
    ten = random.sample(quart, k=k["tenp"])
    five = random.sample(ten, k=k["fivep"])
    onep = random.sample(five, k=k["onep"])
    one = random.sample(onep, k=1)
    for mode, keep in [("fiftyp", half), ("twentyfivep", quart), ("thirtyp", thirty), ("tenp", ten),
                       ("fivep", five), ("onep", onep), ("one", one)]:
        remaining = [r for c in keep for r in groups[c]]
        drop = set(random.sample(range(len(other)), k=18 - (len(dn_sk) - len(remaining))))
        expected = base + [r for i, r in enumerate(other) if i not in drop] + remaining + in_sketches
        f = tmp / "out" / f"combined-captions-train-lso-cipqrs-nosketchclasses-with-in-sketches-{mode}.tsv"
        assert read_tsv(f) == expected, mode
        assert len(expected) == len(src)
        info = read_info(f)
        assert info.setup == f"in-sketch-mix-{mode}" and info.in_sketch["dn_sketch_classes_kept"] == len(keep)


def test_mix_class_counts_are_the_published_ones():
    assert mix_class_counts(330) == {"fiftyp": 165, "twentyfivep": 82, "thirtyp": 99, "tenp": 33, "fivep": 16,
                                     "onep": 3, "one": 1}
    assert mix_class_counts(4) == {"fiftyp": 2, "twentyfivep": 1, "thirtyp": 1, "tenp": 1, "fivep": 1, "onep": 1,
                                   "one": 1}


def test_substring_filter_and_determinism(sketch_run, synth_root, synth_captioned, tmp_path):
    tmp, sk, res = sketch_run
    cfg = SketchConfig(root=synth_root, sketch_root=sk, out=tmp_path / "a", captions=synth_captioned,
                       filter="substring", variants=["add"])
    r = run_sketch_mixtures(cfg, progress=False)
    assert r.n_kept == 12 and r.n_kept_other_filter == 18
    rows = read_tsv(tmp_path / "a" / "combined-captions-train-lso-real-only-with-in-sketches.tsv")
    wnids = {dn.imagenet_class_index()[i][0] for i in (150, 440)}
    assert not any(p.split("/")[-2] in wnids for p, _ in rows)  # "sea lion" and "beer bottle" dropped
    assert sum(p.split("/")[-2] in {dn.imagenet_class_index()[i][0] for i in (25, 26)} for p, _ in rows) == 12
    cfg.out = tmp_path / "b"
    run_sketch_mixtures(cfg, progress=False)
    for f in (tmp_path / "a").glob("*.tsv"):
        assert f.read_text() == (tmp_path / "b" / f.name).read_text()


def test_bad_input(sketch_run, synth_root, synth_captioned, tmp_path):
    tmp, sk, res = sketch_run

    def fails(message, **kw):
        cfg = dict(root=synth_root, sketch_root=sk, out=tmp_path / "bad", captions=synth_captioned)
        cfg.update(kw)
        with pytest.raises(ClipgenError, match=message):
            run_sketch_mixtures(SketchConfig(**cfg), progress=False)
        assert not (tmp_path / "bad").exists()

    fails(r"variants: unknown variant 'blend'", variants=["blend"])
    fails(r"modes: unknown mix mode 'half'", modes=["half"])
    fails(r"modes: no mix mode given", modes=[])
    fails(r"filter: unknown filter 'name'", filter="name")
    odd = tmp_path / "odd"
    (odd / "n99999999").mkdir(parents=True)
    fails(r"sketch_root: .*n99999999: folder name is not an ImageNet WordNet id", sketch_root=odd)
    fails(r"sketch_root: .* is not a folder", sketch_root=tmp_path / "none")
    shared_only = make_sketch_root(tmp_path / "shared", {596: 2})
    fails(r"sketch_root: no ImageNet-Sketch image of a class without a DomainNet counterpart",
          sketch_root=shared_only)
    many = make_sketch_root(tmp_path / "many", {25: 60})
    fails(r"add: 60 ImageNet sketches but only 48 DomainNet rows in lso-real-only", sketch_root=many,
          variants=["add"])
    fails(r"mix fiftyp: .* but only 1 ImageNet sketches", sketch_root=make_sketch_root(tmp_path / "one", {25: 1}),
          variants=["mix"])
    with pytest.raises(ClipgenError, match="already exists .*--force"):
        run_sketch_mixtures(SketchConfig(root=synth_root, sketch_root=sk, out=tmp / "out",
                                           captions=synth_captioned), progress=False)
