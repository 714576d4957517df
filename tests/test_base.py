import dataclasses
import json

import pytest

from clipgen.data.base import PAPER_CC_IDENTIFIERS, MergeBaseConfig, default_base_name, run_merge_base
from clipgen.data.mixture_info import read_info
from clipgen.data.mixtures import MixturesConfig, run_mixtures
from clipgen.errors import ClipgenError
from clipgen.tsv import read_tsv

from . import _fixtures_data as _fx
from ._fixtures_data import TEXT_HELD_OUT, write_base

text_root = _fx.text_root  # shared fixture


@pytest.fixture(scope="module")
def cc_mixtures(text_root, tmp_path_factory):
    """The paper's seven CC mixtures, once with an ImageNet-Captions-like base and once without."""
    out = {}
    for with_base in (True, False):
        d = tmp_path_factory.mktemp("mix")
        kw = dict(base=text_root / "base_train.tsv", base_val=text_root / "base_val.tsv") if with_base else {}
        run_mixtures(MixturesConfig(root=text_root, out=d, setups=["natural-only", "cg-low", "cg-high",
                                                                     "leave-out-domain"],
                                      test_domains=["clipart", "sketch"], held_out=list(TEXT_HELD_OUT), **kw),
                       progress=False)
        out[with_base] = d
    return out


@pytest.mark.parametrize("with_base", [True, False])
def test_merge_paper_cc(cc_mixtures, tmp_path, with_base):
    folder = cc_mixtures[with_base]
    cc = write_base(tmp_path / "cc3m-train.tsv", 13, prefix="cc3m")
    res = run_merge_base(MergeBaseConfig(base=cc, mixtures=folder, out=tmp_path / "out", identifiers=["paper-cc"]),
                         progress=False)
    assert sorted(p.name for p in res.files) == sorted(f"cc3m-train-{i}.tsv" for i in PAPER_CC_IDENTIFIERS)
    cc_rows = read_tsv(cc)
    for ident in PAPER_CC_IDENTIFIERS:
        merged = read_tsv(tmp_path / "out" / f"cc3m-train-{ident}.tsv")
        # the DomainNet part, taken independently from the mixture files: without any base rows
        dn_file = folder / (f"dn-captions-train-{ident}.tsv" if with_base else f"combined-captions-train-{ident}.tsv")
        assert merged == cc_rows + read_tsv(dn_file)
        info = read_info(tmp_path / "out" / f"cc3m-train-{ident}.tsv")
        assert info.identifier == ident and info.base == str(cc.resolve()) and info.counts["base"] == 13
        assert info.counts["total"] == len(merged) and info.source.endswith(dn_file.name)
        src = read_info(dn_file)
        assert (info.setup, info.test_domain, info.domains) == (src.setup, src.test_domain, src.domains)
    # not a single ImageNet-Captions-like row leaks in
    assert not any("/base/" in p for f in res.files for p, _ in read_tsv(f))


def test_merge_all_relative_paths_and_force(cc_mixtures, tmp_path):
    cc = tmp_path / "cc" / "cc12m_train.tsv"
    cc.parent.mkdir()
    cc.write_text("filepath\ttitle\nimages/0.jpg\ta cat\n/abs/1.jpg\ta dog\n")
    cfg = MergeBaseConfig(base=cc, mixtures=cc_mixtures[True], out=tmp_path / "out")
    res = run_merge_base(cfg, progress=False)
    # default "all": every training mixture of the folder (here exactly the seven CC ones)
    in_folder = {i["identifier"] for i in json.loads((cc_mixtures[True] / "mixtures.json").read_text())[
        "mixtures"].values() if i["split"] == "train"}
    assert {read_info(f).identifier for f in res.files} == in_folder == set(PAPER_CC_IDENTIFIERS)
    first = read_tsv(res.files[0])[:2]
    assert first == [(str(cc.parent.resolve() / "images" / "0.jpg"), "a cat"), ("/abs/1.jpg", "a dog")]
    assert default_base_name(cc) == "cc12m" and res.files[0].name.startswith("cc12m-train-lso-")
    with pytest.raises(ClipgenError, match="already exists .*--force"):
        run_merge_base(cfg, progress=False)
    run_merge_base(dataclasses.replace(cfg, force=True), progress=False)
    # merging into the mixture folder itself: the merged files are not taken as sources next time
    cfg2 = MergeBaseConfig(base=cc, mixtures=cc_mixtures[True], out=cc_mixtures[True], name="ccx",
                           identifiers=["rs-nosketchclasses"])
    (f,) = run_merge_base(cfg2, progress=False).files
    run_merge_base(MergeBaseConfig(base=cc, mixtures=cc_mixtures[True], out=tmp_path / "o3", name="ccy"),
                   progress=False)
    assert not (tmp_path / "o3" / f"ccy-train-{f.name}").exists()
    assert len(list((tmp_path / "o3").glob("*.tsv"))) == 7


def test_merge_bad_input(cc_mixtures, tmp_path):
    cc = write_base(tmp_path / "cc3m-train.tsv", 4)

    def fails(message, **kw):
        cfg = dict(base=cc, mixtures=cc_mixtures[True], out=tmp_path / "bad")
        cfg.update(kw)
        with pytest.raises(ClipgenError, match=message):
            run_merge_base(MergeBaseConfig(**cfg), progress=False)
        assert not (tmp_path / "bad").exists()

    fails(r"^identifiers: no training mixture 'lso-ir-noinfographclasses'", identifiers=["ir-noinfographclasses"])
    fails(r"^mixtures: .* has no mixtures.json", mixtures=tmp_path)
    fails(r"base: .*nothing.tsv: base TSV not found", base=tmp_path / "nothing.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("filepath\ttitle\n/a.jpg\tok\n/b.jpg\n")
    fails(r"bad.tsv:3: expected 2 tab-separated fields", base=bad)
    bad.write_text("path\tcaption\n/a.jpg\tok\n")
    fails(r"bad.tsv:1: header .* lacks column", base=bad)
    bad.write_text("filepath\ttitle\n")
    fails(r"^base: .*bad.tsv: base TSV has no rows", base=bad)
    fails(r"missing.tsv:2: image /data/base/img_0000.jpg does not exist",
          base=write_base(tmp_path / "x" / "missing.tsv", 2), check_files=True)


@pytest.mark.slow
def test_base_captions_survive_merging_as_pandas_reads_them(cc_mixtures, tmp_path):
    pd = pytest.importorskip("pandas")
    cc = tmp_path / "cc3m-train.tsv"
    # as a raw TSV: a CSV-quoted caption with quotes and a tab, doubled spaces, a quote inside a caption
    cc.write_text('filepath\ttitle\n/a.jpg\t"""quoted"" start\twith tab"\n/b.jpg\ttwo  spaces  here\n'
                  '/c.jpg\tsay "hi"\n/d.jpg\tplain\n', encoding="utf-8")
    base = list(zip(*pd.read_csv(cc, sep="\t").values.T.tolist(), strict=True))
    assert len(base) == 4 and base[0][1] == '"quoted" start\twith tab' and base[1][1] == "two  spaces  here"
    res = run_merge_base(MergeBaseConfig(base=cc, mixtures=cc_mixtures[True], out=tmp_path / "o",
                                         identifiers=["real-only"]), progress=False)
    merged = pd.read_csv(res.files[0], sep="\t")
    assert list(zip(merged["filepath"], merged["title"], strict=True))[:4] == base  # doubled spaces kept
    assert res.infos[0].counts["base"] == 4 and len(merged) == res.infos[0].counts["total"]
    assert read_tsv(res.files[0])[:4] == base
    # an unclosed quote: refused with file:line instead of reading 4 rows as 2
    cc.write_text('filepath\ttitle\n/a.jpg\tone\n/b.jpg\t"two\n/c.jpg\tthree "\n/d.jpg\tfour\n')
    with pytest.raises(ClipgenError, match=r"cc3m-train.tsv:3: a field starts with a double quote"):
        run_merge_base(MergeBaseConfig(base=cc, mixtures=cc_mixtures[True], out=tmp_path / "o2"), progress=False)
    assert not (tmp_path / "o2").exists()
