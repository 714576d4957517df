"""The report's document model, its numbers and the verdict rule, against hand computations."""

import math

import pytest

from clipgen.report import Document, cka_layer_means, intermediate, std_error, verdict


def test_std_error_by_hand():
    assert std_error(0.5, 100) == pytest.approx(0.05)
    assert std_error(0.2, 16) == pytest.approx(math.sqrt(0.16 / 16))
    assert math.isnan(std_error(0.5, 0))


def test_verdict_uses_two_standard_errors():
    # 60% vs 40% on 100 images each: SE of the difference = sqrt(2 * 0.24 / 100) = 0.0693; 2 SE = 0.139 < 0.2
    v, se = verdict(0.6, 100, 0.4, 100)
    assert se == pytest.approx(math.sqrt(0.48 / 100)) and v == "holds"
    assert verdict(0.4, 100, 0.6, 100)[0] == "reversed"
    # 55% vs 45% on 100 images: 0.1 < 2 * 0.0703 -> inconclusive
    assert verdict(0.55, 100, 0.45, 100)[0] == "inconclusive"
    # no variance at all: decided by the sign
    assert verdict(1.0, 10, 0.0, 10)[0] == "holds"
    assert verdict(0.0, 10, 0.0, 10)[0] == "inconclusive"


def test_cka_layer_means_split_pairs_by_the_highlight():
    rows = []
    for layer, vals in (("l1", {("a", "q"): 0.2, ("b", "q"): 0.4, ("a", "b"): 0.9}),
                        ("l2", {("a", "q"): 0.5, ("b", "q"): 0.7, ("a", "b"): 0.6})):
        for (da, db), v in vals.items():
            rows.append({"layer": layer, "domain_a": da, "domain_b": db, "subset": "all", "kernel": "linear",
                         "estimator": "unbiased", "cka": v})
            rows.append({"layer": layer, "domain_a": da, "domain_b": db, "subset": "all", "kernel": "rbf",
                         "estimator": "unbiased", "cka": -1.0})  # another kernel: ignored
    means = cka_layer_means({"results": rows}, "q")
    assert means["l1"] == pytest.approx((0.3, 0.9)) and means["l2"] == pytest.approx((0.6, 0.6))


def test_intermediate_is_the_middle_third():
    assert intermediate([f"l{i}" for i in range(9)]) == ["l3", "l4", "l5"]
    assert intermediate(["a", "b", "c"]) == ["b"] and intermediate(["a"]) == ["a"]


def test_markdown_and_html(tmp_path):
    png = tmp_path / "f.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    doc = Document()
    doc.h(1, "Title")
    doc.p("Some **bold** and `code`.")
    doc.table(["a", "b"], [[1, "x"], [2, "y"]])
    doc.figure(png, "A figure [with brackets].")
    doc.figure(tmp_path / "missing.png", "gone")
    doc.items(["one", "two"])
    md = doc.markdown(tmp_path)
    assert md.startswith("# Title\n\nSome **bold** and `code`.")
    assert "| a | b |\n|---|---|\n| 1 | x |\n| 2 | y |" in md
    assert "![A figure (with brackets).](f.png)" in md and "*A figure [with brackets].*" in md
    assert "*(figure not available: gone)*" in md and "- one\n- two" in md
    html = doc.html("t")
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html
    assert "data:image/png;base64," in html and "<td>2</td><td>y</td>" in html
    assert "missing.png" not in html


def test_sae_names_table_from_named_latents(tmp_path):
    import json

    from clipgen.report import _sae_names_table

    base = tmp_path / "sae"
    (base / "features").mkdir(parents=True)
    e = lambda i, n, s: {"latent": i, "names": [n, "other"], "similarity": s, "fraction": {}}  # noqa: E731
    (base / "features" / "named-latents.json").write_text(json.dumps({"classes": {"axe": {
        "shared": [e(3, "hatchet", 0.41), e(7, "sketch", 0.2), e(1, "a", 0.1), e(2, "b", 0.1)],
        "specific": {"sketch": [e(5, "pencil", 0.333)], "real": [e(9, "photo", 0.5)]}}}}))
    doc = Document()
    _sae_names_table(doc, {"cg-high": base, "leave-out-domain": tmp_path / "none"}, "sketch")
    md = doc.markdown(tmp_path)
    assert "| CG high-diversity | axe | #3 hatchet (0.41), #7 sketch (0.20), #1 a (0.10) | #5 pencil (0.33) |" in md
    assert "photo" not in md and "latents specific to sketch" in md
    empty = Document()
    _sae_names_table(empty, {"cg-high": tmp_path / "none"}, "sketch")
    assert empty.markdown(tmp_path).strip() == ""
