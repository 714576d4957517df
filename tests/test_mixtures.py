import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest

from clipgen import domainnet as dn
from clipgen.data.mixture_info import read_info
from clipgen.data.mixtures import MixturesConfig, make_spec, plan_specs, run_mixtures
from clipgen.errors import ClipgenError
from clipgen.tsv import read_tsv

from . import _fixtures_data as _fx
from ._fixtures_data import TEXT_HELD_OUT

synth_captioned = _fx.synth_captioned  # shared fixture
text_root = _fx.text_root  # shared fixture

ALL = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]
HELD_LABELS = {0, 11, 13, 58, 174}  # aircraft carrier, axe, banana, candle, lion (the fixture's held-out classes)


# ---------------------------------------------------------------------------------------------------------------
# An independent implementation of the published rule (spec 1.3), straight from its description


def read_lines(root: Path, domain: str, split: str) -> list[tuple[str, int]]:
    out = []
    for line in (root / f"{domain}_{split}.txt").read_text().splitlines():
        if line.strip():
            p, lab = line.split()
            out.append((p, int(lab)))
    return out


def reference_train(root, domains, x, held, *, filtered=True, allow=0.0, subsample=True):
    """Relative paths of the DomainNet training part, in the published order."""
    filt = filtered and allow == 0
    samples = []
    for d in ALL:
        if d in domains:
            samples += [(p, lab) for p, lab in read_lines(root, d, "train") if not (filt and d == x and lab in held)]
    if not subsample:
        return [p for p, _ in samples]
    index = {d: {} for d in ALL}
    for p, lab in samples:
        d, cls = p.split("/")[:2]
        index[d].setdefault(cls, []).append((p, lab))
    size = len(read_lines(root, "real", "train")) + sum(1 for _, lab in read_lines(root, x, "train")
                                                         if lab not in held)
    f = size / len(samples)
    heldcls = {dn.class_by_label(lab).folder for lab in held}
    if allow > 0:
        allowed = sum(math.ceil(allow * f * len(v)) for c, v in index[x].items() if c in heldcls)
        maxi = sum(len(v) for c, v in index[x].items() if c in heldcls)
        pf, f = f, (size - allowed) / (len(samples) - maxi)
    sub = {}
    for d in ALL:
        sub[d] = {}
        for c, v in index[d].items():
            if allow > 0 and d == x and c in heldcls:
                sub[d][c] = v[: math.ceil(allow * pf * len(v))]
            else:
                sub[d][c] = v[: math.ceil(f * len(v))]
    cur = sum(len(v) for d in ALL for v in sub[d].values())
    assert cur >= size
    while cur != size:
        for d in ["real", "quickdraw", "painting", "sketch", "infograph", "clipart"]:
            for c in sub[d]:
                if allow > 0 and d == x and c in heldcls:
                    continue
                sub[d][c].pop()
                cur -= 1
                if cur == size:
                    break
            if cur == size:
                break
    return [p for d in ALL for c in sub[d] for p, _ in sub[d][c]]


def reference_val(root, domains, x, held, filtered=True):
    out = []
    for d in ALL:
        if d in domains:
            out += [p for p, lab in read_lines(root, d, "test") if not (filtered and d == x and lab in held)]
    return out


def rel(rows, root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    return [p.removeprefix(prefix) for p, _ in rows]


@pytest.fixture(scope="module")
def paper_grid(text_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    cfg = MixturesConfig(root=text_root, out=out, paper=True, held_out=list(TEXT_HELD_OUT),
                         base=text_root / "base_train.tsv", base_val=text_root / "base_val.tsv")
    res = run_mixtures(cfg, progress=False)
    return out, res


def test_paper_grid_file_names(paper_grid):
    out, res = paper_grid
    expected = {"lso-real-only"}
    for x, letter in (("clipart", "c"), ("infograph", "i"), ("painting", "p"), ("quickdraw", "q"), ("sketch", "s")):
        expected |= {f"lso-{''.join(sorted(letter + 'r', key='cipqrs'.index))}-no{x}classes",
                     f"lso-cipqrs-no{x}classes", f"lso-{'cipqrs'.replace(letter, '')}-no{x}classes"}
    names = {p.name for p in out.glob("*.tsv")}
    want = {f"{k}-captions-{s}-{i}.tsv" for k in ("combined", "dn") for s in ("train", "val") for i in expected}
    assert names == want and len(want) == 64
    assert {i.file for i in res.infos} == want


def test_paper_grid_rows_match_the_independent_rule(paper_grid, text_root):
    out, _ = paper_grid
    base = [r[0] for r in read_tsv(text_root / "base_train.tsv")]
    base_val = [r[0] for r in read_tsv(text_root / "base_val.tsv")]
    held = HELD_LABELS
    for x in dn.TEST_DOMAINS:
        for domains in (["real", x], ALL, [d for d in ALL if d != x]):
            ident = f"lso-{dn.domain_letters(domains)}-no{x}classes"
            train = read_tsv(out / f"combined-captions-train-{ident}.tsv")
            assert [p for p, _ in train[: len(base)]] == base  # base first, never subsampled
            dn_rows = read_tsv(out / f"dn-captions-train-{ident}.tsv")
            assert rel(dn_rows, text_root) == reference_train(text_root, domains, x, held)
            assert len(dn_rows) == len(train) - len(base)
            val = read_tsv(out / f"combined-captions-val-{ident}.tsv")
            assert [p for p, _ in val[: len(base_val)]] == base_val
            assert rel(val[len(base_val):], text_root) == reference_val(text_root, domains, x, held)
    # natural-only: base + all of real train, in file order, not size-matched
    nat = read_tsv(out / "dn-captions-train-lso-real-only.tsv")
    assert rel(nat, text_root) == [p for p, _ in read_lines(text_root, "real", "train")]


def test_size_matching_gives_the_reference_size(paper_grid, text_root):
    out, res = paper_grid
    for x in dn.TEST_DOMAINS:
        size = len(read_lines(text_root, "real", "train")) + sum(
            1 for _, lab in read_lines(text_root, x, "train") if lab not in HELD_LABELS)
        sizes = {len(read_tsv(out / f"dn-captions-train-lso-{ltr}-no{x}classes.tsv"))
                 for ltr in (dn.domain_letters(["real", x]), "cipqrs", dn.domain_letters(set(ALL) - {x}))}
        assert sizes == {size}
        assert res.reference_sizes[x] == size
    # natural-only is smaller than the size-matched mixtures by |X train ∩ C1|
    assert len(read_tsv(out / "dn-captions-train-lso-real-only.tsv")) == len(read_lines(text_root, "real", "train"))


def test_held_out_classes_absent_in_cg_and_lod_without_test_domain(paper_grid, text_root):
    out, _ = paper_grid
    folders = {dn.class_by_label(lab).folder for lab in HELD_LABELS}
    for x in dn.TEST_DOMAINS:
        for ltr in (dn.domain_letters(["real", x]), "cipqrs"):
            for split in ("train", "val"):
                paths = rel(read_tsv(out / f"dn-captions-{split}-lso-{ltr}-no{x}classes.tsv"), text_root)
                in_x = [p for p in paths if p.startswith(f"{x}/")]
                assert in_x and not any(p.split("/")[1] in folders for p in in_x)
                # other domains keep their held-out classes
                assert any(p.split("/")[1] in folders for p in paths if not p.startswith(f"{x}/"))
        lod = rel(read_tsv(out / f"dn-captions-train-lso-{dn.domain_letters(set(ALL) - {x})}-no{x}classes.tsv"),
                  text_root)
        assert not any(p.startswith(f"{x}/") for p in lod)


def test_index_records_every_tsv(paper_grid):
    out, res = paper_grid
    index = json.loads((out / "mixtures.json").read_text())["mixtures"]
    assert set(index) == {p.name for p in out.glob("*.tsv")}
    for name in index:
        info = read_info(out / name)
        rows = read_tsv(out / name)
        assert info.counts["total"] == len(rows)
        dn_total = sum(v["id"] + v["ood"] for k, v in info.counts.items() if isinstance(v, dict))
        assert dn_total + info.counts["base"] == len(rows)
        assert info.identifier in name and info.held_out == list(TEXT_HELD_OUT)
        assert (info.base is not None) == name.startswith("combined-")
        if info.split == "val":
            assert not info.size_matched and info.subsample == "none"
    lo = read_info(out / "combined-captions-train-lso-rs-nosketchclasses.tsv")
    assert (lo.setup, lo.test_domain, lo.domains, lo.size_matched, lo.subsample) == (
        "cg-low", "sketch", ["real", "sketch"], True, "first-k")
    assert lo.counts["sketch"]["ood"] == 0 and lo.counts["real"]["ood"] > 0 and lo.caption_seed == 42
    nat = read_info(out / "combined-captions-train-lso-real-only.tsv")
    assert (nat.setup, nat.test_domain, nat.size_matched, nat.subsample) == ("natural-only", None, False, "none")
    assert {read_info(out / f"combined-captions-train-lso-{ltr}-noclipartclasses.tsv").setup
            for ltr in ("cr", "cipqrs", "ipqrs")} == {"cg-low", "cg-high", "leave-out-domain"}


def test_summary_json(paper_grid):
    out, res = paper_grid
    doc = json.loads((out / "mixtures-summary.json").read_text())
    assert doc["format"] == "clipgen-mixtures-summary"
    assert set(doc["columns"]) == {i.file for i in res.infos}
    rows = {(r["domain"], r["group"]): r["counts"] for r in doc["rows"]}
    f = "combined-captions-train-lso-cipqrs-nopaintingclasses.tsv"
    assert rows[("painting", "C2")][f] == 0 and rows[("painting", "C1")][f] > 0
    assert rows[("base", "")][f] == 50
    assert sum(rows[(d, g)][f] for d in ALL for g in ("C1", "C2")) + 50 == rows[("total", "")][f]
    assert doc["held_out"]["names"] == list(TEXT_HELD_OUT)


@pytest.mark.parametrize("variant", ["pseudo", "allow0.05", "allow0.4", "allow1"])
@pytest.mark.parametrize("x, domains", [("sketch", ["real", "sketch"]), ("quickdraw", ALL)])
def test_upper_bounds_match_the_rule(text_root, tmp_path, variant, x, domains):
    allow = float(variant[5:]) if variant.startswith("allow") else None
    cfg = MixturesConfig(root=text_root, out=tmp_path, domain_sets=[dn.domain_letters(domains)], test_domains=[x],
                         pseudo=variant == "pseudo", allow_pct=[allow] if allow else [],
                         held_out=list(TEXT_HELD_OUT))
    res = run_mixtures(cfg, progress=False)
    (info,) = [i for i in res.infos if i.split == "train"]
    suffix = "-pseudo" if allow is None else f"-allow{allow}"
    assert info.file == f"combined-captions-train-lso-{dn.domain_letters(domains)}-no{x}classes{suffix}.tsv"
    got = rel(read_tsv(tmp_path / info.file), text_root)
    assert got == reference_train(text_root, domains, x, HELD_LABELS, filtered=False, allow=allow or 0.0)
    held_in_x = [p for p in got if p.startswith(f"{x}/") and dn.class_by_name(p.split("/")[1]).label in HELD_LABELS]
    assert held_in_x  # the upper bounds contain the held-out classes of the test domain
    assert len(got) == res.reference_sizes[x]
    val = rel(read_tsv(tmp_path / info.file.replace("-train-", "-val-")), text_root)
    assert val == reference_val(text_root, domains, x, HELD_LABELS, filtered=False)


@pytest.mark.slow
def test_domain_interpolation_subsets_and_nosub(text_root, tmp_path):
    subsets = ["qrs", "prs", "irs", "crs", "cqrs", "cprs", "cirs", "cpqrs", "ciprs"]
    cfg = MixturesConfig(root=text_root, out=tmp_path, domain_sets=subsets, test_domains=["sketch"],
                         held_out=list(TEXT_HELD_OUT))
    res = run_mixtures(cfg, progress=False)
    for s in subsets:
        info = read_info(tmp_path / f"combined-captions-train-lso-{s}-nosketchclasses.tsv")
        assert info.setup == "custom" and dn.domain_letters(info.domains) == s
        got = rel(read_tsv(tmp_path / info.file), text_root)
        assert got == reference_train(text_root, [dn.DOMAIN_LETTERS[c] for c in s], "sketch", HELD_LABELS)
    assert len({len(read_tsv(tmp_path / i.file)) for i in res.infos if i.split == "train"}) == 1
    cfg = MixturesConfig(root=text_root, out=tmp_path, setups=["cg-high"], test_domains=["clipart"],
                         size_match=False, held_out=list(TEXT_HELD_OUT))
    run_mixtures(cfg, progress=False)
    got = rel(read_tsv(tmp_path / "combined-captions-train-lso-cipqrs-noclipartclasses-nosub.tsv"), text_root)
    assert got == reference_train(text_root, ALL, "clipart", HELD_LABELS, subsample=False)
    assert read_info(tmp_path / "combined-captions-train-lso-cipqrs-noclipartclasses-nosub.tsv").subsample == "none"


@pytest.mark.slow
def test_random_subsampling_same_sizes_seeded(text_root, tmp_path):
    kw = dict(root=text_root, setups=["cg-high"], test_domains=["painting"], held_out=list(TEXT_HELD_OUT))
    run_mixtures(MixturesConfig(out=tmp_path / "k", **kw), progress=False)
    run_mixtures(MixturesConfig(out=tmp_path / "a", subsample="random", seed=3, **kw), progress=False)
    run_mixtures(MixturesConfig(out=tmp_path / "b", subsample="random", seed=3, **kw), progress=False)
    run_mixtures(MixturesConfig(out=tmp_path / "c", subsample="random", seed=4, **kw), progress=False)
    name = "combined-captions-train-lso-cipqrs-nopaintingclasses"
    first = rel(read_tsv(tmp_path / "k" / f"{name}.tsv"), text_root)
    a = rel(read_tsv(tmp_path / "a" / f"{name}-random3.tsv"), text_root)
    b = rel(read_tsv(tmp_path / "b" / f"{name}-random3.tsv"), text_root)
    c = rel(read_tsv(tmp_path / "c" / f"{name}-random4.tsv"), text_root)
    assert a == b and a != c and a != first

    def per_group(paths):
        return Counter(tuple(p.split("/")[:2]) for p in paths)

    assert per_group(a) == per_group(first) == per_group(c)  # the same size per (domain, class)
    assert len(set(a)) == len(a) and set(a) <= set(reference_train(text_root, ALL, "painting", HELD_LABELS,
                                                                     subsample=False))
    info = read_info(tmp_path / "a" / f"{name}-random3.tsv")
    assert (info.subsample, info.seed, info.size_matched) == ("random", 3, True)


def test_aligned_captions(text_root, tmp_path):
    cfg = MixturesConfig(root=text_root, out=tmp_path, setups=["cg-high"], test_domains=["quickdraw"], aligned=True,
                         held_out=list(TEXT_HELD_OUT))
    run_mixtures(cfg, progress=False)
    rows = read_tsv(tmp_path / "combined-captions-train-lso-cipqrs-noquickdrawclasses-aligned.tsv")
    assert rel(rows, text_root) == reference_train(text_root, ALL, "quickdraw", HELD_LABELS)
    terms = [t for d in ALL for t in dn.DOMAIN_TERMS[d]]
    assert not any(f" {t}" in f" {c}" for _, c in rows for t in terms)
    assert read_info(tmp_path / "combined-captions-train-lso-cipqrs-noquickdrawclasses-aligned.tsv").aligned


def test_synthetic_quirks_and_default_held_out(synth_root, synth_captioned, tmp_path):
    res = run_mixtures(MixturesConfig(root=synth_root, captions=synth_captioned, out=tmp_path,
                                        setups=["cg-low", "cg-high"], test_domains=["painting"]), progress=False)
    # the synthetic default holds 2 of the paper's 15 held-out classes; the default uses those and says so
    assert res.held_out.names == ["axe", "banana"] and len(res.held_out.absent) == 13
    assert res.held_out.by_name == {"axe": 11, "banana": 13}
    rows = read_tsv(tmp_path / "combined-captions-train-lso-cipqrs-nopaintingclasses.tsv")
    assert {Path(p).parent.name for p, _ in rows} >= {"The_Eiffel_Tower", "teddy-bear", "cell_phone", "cello"}
    # the class without painting test images is simply absent from the painting part of the val set
    val = read_tsv(tmp_path / "combined-captions-val-lso-pr-nopaintingclasses.tsv")
    painting_val = [p for p, _ in val if "/painting/" in p]
    assert "teddy-bear" not in {Path(p).parent.name for p in painting_val}
    assert {Path(p).parent.name for p in painting_val} == {"The_Eiffel_Tower", "cell_phone", "cello"}
    info = read_info(tmp_path / "combined-captions-val-lso-pr-nopaintingclasses.tsv")
    assert info.counts["painting"] == {"id": 3 * 4, "ood": 0}


def test_explicit_held_out(synth_root, synth_captioned, tmp_path):
    res = run_mixtures(MixtureConfig(synth_root, synth_captioned, tmp_path, "cello,The Eiffel Tower"),
                         progress=False)
    assert res.held_out.by_name == {"cello": 66, "the eiffel tower": 308}
    rows = read_tsv(tmp_path / "combined-captions-train-lso-rs-nosketchclasses.tsv")
    sk = {Path(p).parent.name for p, _ in rows if "/sketch/" in p}
    assert sk == {"axe", "banana", "cell_phone", "teddy-bear"}
    with pytest.raises(ClipgenError, match="held_out: unknown DomainNet class 'cellos'"):
        run_mixtures(MixtureConfig(synth_root, synth_captioned, tmp_path / "x", "cellos"), progress=False)
    with pytest.raises(ClipgenError, match="held_out: held-out class 'lion' .* has no images in the data"):
        run_mixtures(MixtureConfig(synth_root, synth_captioned, tmp_path / "y", "axe,lion"), progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def MixtureConfig(root, captions, out, held):  # noqa: N802 - a small factory for the tests above
    return MixturesConfig(root=root, captions=captions, out=out, setups=["cg-low"], test_domains=["sketch"],
                          held_out=held.split(","))


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the file/line/option, nothing written


def _copy(text_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "dn"
    shutil.copytree(text_root, root)
    return root


@pytest.mark.parametrize("kw, message", [
    (dict(setups=["cg-low"], test_domains=["real"]), r"test_domains: 'real' is not a test domain"),
    (dict(domain_sets=["rsx"]), r"domain_sets: unknown domain or domain letters 'rsx'"),
    (dict(domain_sets=["cr"], test_domains=["sketch"]), r"domain_sets: test domain 'sketch' is not among the domains"),
    (dict(setups=["leave-out-domain"], test_domains=["sketch"], pseudo=True), r"pseudo: .* does not contain"),
    (dict(setups=["natural-only"], pseudo=True), r"pseudo: does not apply to natural-only"),
    (dict(setups=["cg-low"], allow_pct=[1.5]), r"allow_pct: 1.5 is not in \(0, 1\]"),
    (dict(setups=["cg-low"], allow_pct=[0.1], pseudo=True), r"pseudo: cannot be combined with --allow-pct"),
    (dict(setups=["cg-low"], allow_pct=[0.1], size_match=False), r"allow_pct: requires size matching"),
    (dict(setups=["cg-lo"]), r"setups: unknown setup 'cg-lo'"),
    (dict(), r"setups: nothing to build"),
    (dict(paper=True, setups=["cg-low"]), r"paper: cannot be combined"),
    (dict(setups=["cg-high"], subsample="shuffle"), r"subsample: unknown mode 'shuffle'"),
])
def test_bad_options(text_root, tmp_path, kw, message):
    kw.setdefault("held_out", list(TEXT_HELD_OUT))
    if "test_domains" in kw:
        for t in kw["test_domains"]:
            if t == "real":
                with pytest.raises(ClipgenError, match=message):
                    dn.parse_test_domain(t, field="test_domains")
                return
    with pytest.raises(ClipgenError, match=message):
        run_mixtures(MixturesConfig(root=text_root, out=tmp_path / "o", **kw), progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "sketch_train.txt").unlink(), r"sketch_train.txt: split file not found"),
    (lambda r: _append(r / "real_test.txt", "real/zebra/x.jpg 1 2"), r"real_test.txt:\d+: expected 2 fields"),
    (lambda r: _append(r / "real_test.txt", "real/zebra/x.jpg z"), r"real_test.txt:\d+: label 'z' is not an int"),
    (lambda r: _append(r / "real_test.txt", "real/zebra/x.jpg -1"), r"real_test.txt:\d+: label -1 out of range"),
    (lambda r: _append(r / "real_test.txt", "real/zebra/x.jpg 344"), r"real_test.tsv: does not match .*rerun"),
    (lambda r: (r / "captions" / "clipart_test.tsv").unlink(), r"clipart_test.tsv: caption file not found"),
    (lambda r: shutil.rmtree(r / "captions"), r"captions: caption folder .* not found"),
    (lambda r: _append(r / "base_train.tsv", "only-one-field"), r"base_train.tsv:52: expected 2 tab-separated"),
])
def test_bad_files(text_root, tmp_path, damage, message):
    root = _copy(text_root, tmp_path)
    damage(root)
    cfg = MixturesConfig(root=root, out=tmp_path / "o", paper=True, held_out=list(TEXT_HELD_OUT),
                         base=root / "base_train.tsv")
    with pytest.raises(ClipgenError, match=message):
        run_mixtures(cfg, progress=False)
    assert not (tmp_path / "o").exists()


def test_check_files_and_empty_results(synth_root, synth_captioned, tmp_path):
    root = tmp_path / "dn"
    shutil.copytree(synth_root, root, ignore=shutil.ignore_patterns("base"))
    victim = dn.read_split(root, "sketch", "train")[5]
    (root / victim.path).unlink()
    cfg = MixturesConfig(root=root, captions=synth_captioned, out=tmp_path / "o", setups=["cg-low"],
                         test_domains=["sketch"], check_files=True)
    with pytest.raises(ClipgenError, match=rf"sketch_train.txt:{victim.line}: image .* does not exist"):
        run_mixtures(cfg, progress=False)
    cfg.check_files = False
    run_mixtures(cfg, progress=False)  # without --check-files the missing image is not looked for
    # every sketch class held out: the sketch part of CG low-diversity is empty, but real is not -> fine;
    # held-out classes covering everything in a one-domain mixture give an empty result
    every = [c.name for c in dn.class_table() if c.folder in {s.folder for s in dn.read_split(root, "real", "train")}]
    cfg2 = MixturesConfig(root=root, captions=synth_captioned, out=tmp_path / "e", domain_sets=["s"],
                          test_domains=["sketch"], size_match=False, held_out=every)
    with pytest.raises(ClipgenError, match="mixture lso-s-nosketchclasses-nosub: no training images"):
        run_mixtures(cfg2, progress=False)
    assert not (tmp_path / "e").exists()


def test_existing_outputs_need_force(text_root, tmp_path):
    cfg = MixturesConfig(root=text_root, out=tmp_path, setups=["cg-low"], test_domains=["clipart"],
                         held_out=list(TEXT_HELD_OUT))
    run_mixtures(cfg, progress=False)
    f = tmp_path / "combined-captions-train-lso-cr-noclipartclasses.tsv"
    before = f.read_text()
    cfg.subsample = "first-k"
    cfg.held_out = ["axe"]
    with pytest.raises(ClipgenError, match="already exists .*pass --force"):
        run_mixtures(cfg, progress=False)
    assert f.read_text() == before
    cfg.force = True
    run_mixtures(cfg, progress=False)
    assert f.read_text() != before
    # a second invocation into the same folder extends the index
    run_mixtures(MixturesConfig(root=text_root, out=tmp_path, setups=["natural-only"]), progress=False)
    index = json.loads((tmp_path / "mixtures.json").read_text())["mixtures"]
    assert {"combined-captions-train-lso-real-only.tsv", f.name} <= set(index)
    assert len(json.loads((tmp_path / "mixtures.config.json").read_text())["invocations"]) == 3


def test_spec_identifiers():
    assert make_spec("natural-only", None).identifier == "lso-real-only"
    assert make_spec("natural-only", None, aligned=True).identifier == "lso-real-only-aligned"
    assert make_spec("cg-low", "infograph").identifier == "lso-ir-noinfographclasses"
    assert make_spec("cg-high", "sketch", size_match=False).identifier == "lso-cipqrs-nosketchclasses-nosub"
    assert make_spec("cg-low", "sketch", allow_pct=0.05).identifier == "lso-rs-nosketchclasses-allow0.05"
    assert make_spec("cg-low", "sketch", allow_pct=1).identifier == "lso-rs-nosketchclasses-allow1.0"
    assert make_spec("cg-high", "quickdraw", aligned=True).identifier == "lso-cipqrs-noquickdrawclasses-aligned"
    assert make_spec("cg-high", "clipart", pseudo=True).identifier == "lso-cipqrs-noclipartclasses-pseudo"
    assert make_spec("cg-low", "clipart", subsample="random", seed=2).identifier == "lso-cr-noclipartclasses-random2"
    assert make_spec(None, "clipart", domains=["c", "q", "r"]).identifier == "lso-cqr-noclipartclasses"
    specs = plan_specs(MixturesConfig(root=Path("."), out=Path("."), paper=True))
    assert len(specs) == 16 and specs[0].setup == "natural-only"


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line + "\n")
