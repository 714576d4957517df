"""The report's document model, its numbers and the verdict rule, against hand computations."""

import json
import math
import shutil
import subprocess
from pathlib import Path
from statistics import mean, stdev

import pytest

from clipgen.report import SETUP_LABELS, Document, cka_layer_means, intermediate, std_error, verdict
from tests._fixtures_study import ACC, build_study


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


# ---------------------------------------------------------------------------------------------------------------
# the study report on a real-layout study folder (two seeds, two test domains, some analyses missing)



@pytest.fixture
def study(tmp_path):
    return build_study(tmp_path / "study")


def _cell(values):
    return f"{100 * mean(values):.1f} ± {100 * stdev(values):.1f}% (n={len(values)})"


@pytest.mark.slow
def test_study_report_figure2_means_and_stds_by_hand(study, cli):
    r = cli("report", study)
    assert r.exit_code == 0, r.output
    md = (study / "report.md").read_text()
    for td in ("sketch", "clipart"):
        assert f"**Test domain {td}**: last evaluated epoch, mean ± sample std over seeds 0, 1." in md
    # sketch: 10/20, 50/60, 70/90 -> 15.0 ± 7.1, 55.0 ± 7.1, 80.0 ± 14.1; id_acc 0.9 in every run
    for (_td, setup), vals in ACC.items():
        label = SETUP_LABELS[setup]
        assert f"| {label} | {_cell(vals)} |" in md, (label, _cell(vals))
    assert "| CG high-diversity | 55.0 ± 7.1% (n=2) | " in md and "| 82.5 ± 3.5% (n=2) |" in md
    assert "| Leave-out-domain | 80.0 ± 14.1% (n=2) | " in md
    assert md.count("| 90.0 ± 0.0% (n=2) |") == 2 * 5  # C1 of the test domain and of real, in each of 5 groups
    # the findings, with the means over seeds
    assert "Leave-out-domain 80.0% vs Natural-only 15.0% (difference +65.0 points" in md
    assert "CG high-diversity 82.5% vs Natural-only 35.0% (difference +47.5 points" in md
    # the figures were drawn for this report (no eval summary in the study)
    assert (study / "report-figures" / "figure2.png").is_file() and "](report-figures/curves.png)" in md
    cfg = json.loads((study / "report.config.json").read_text())
    assert cfg["command"] == "report" and cfg["config"]["inputs"] == [str(study)]


@pytest.mark.slow
def test_study_report_sections_cka_and_not_computed_yet(study, tmp_path):
    from clipgen.report import ReportConfig, run_report

    md_path, html_path = run_report(ReportConfig(inputs=[study], out=tmp_path / "rep"))
    md = md_path.read_text()
    sections = ["## Zero-shot generalization (the paper's Figure 2)",
                "## Representational similarity across domains (CKA, the paper's Figure 6a)",
                "## SAE feature sharing (the paper's Appendix C.1)", "## Embedding analysis (the paper's Figure 5)",
                "## Circuits (the paper's Figures 6b and 6c)", "## Which of the paper's findings hold here",
                "## Artifacts and how to rerun a step"]
    pos = [md.index(s) for s in sections]
    assert pos == sorted(pos) and md.startswith("# clipgen study report")
    assert "8 run directories" in md and "10 evaluation results" in md and "1 activation stores" in md
    # CKA (hand-made): intermediate layer resblock1: quickdraw pairs (0.2 + 0.4) / 2 = 0.3, others 0.8
    assert ("for the CG high-diversity model (exp-cg-high-sketch-seed0); pairs with quickdraw against the other "
            "pairs. In the intermediate layers (resblock1 to resblock1) the mean is 0.300 for pairs with quickdraw "
            "and 0.800 for the other pairs.") in md
    assert "at the last layer (attnpool) the pairs with quickdraw average 0.500, the others 0.600" in md
    assert "| mean linear CKA resblock1..resblock1: 0.300 with quickdraw vs 0.800 others | holds |" in md
    store = study / "h5" / "cg-test.h5"
    assert f"*Not computed yet:* SAE feature sharing. Computed by `clipgen sae train {store} --out SAE_DIR" in md
    assert f"*Not computed yet:* the embedding analysis. Computed by `clipgen embeddings {store}`." in md
    run = (study / "grid" / "exp-cg-high-sketch-seed0").resolve()
    assert ("*Not computed yet:* node and circuit similarity. Computed by `clipgen circuits compute --model-dir "
            f"{run} --data DOMAINNET_ROOT --out CIRCUITS.h5") in md
    assert f"- `clipgen cka {store} --out {study / 'analysis' / 'cka-q'} --subsets all" in md
    # figures outside OUT keep their path; the HTML embeds every figure as a decodable PNG
    html = html_path.read_text()
    _assert_images_decode(html, md.count("!["))


def _assert_images_decode(html: str, expected: int) -> None:
    import base64
    import io
    import re

    from PIL import Image

    srcs = re.findall(r"<img [^>]*src=\"([^\"]+)\"", html)
    assert len(srcs) == expected > 0
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        img.load()
        assert img.format == "PNG" and img.size[0] > 0


def test_study_report_without_anything_computed(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    r = cli("report", tmp_path / "empty")
    assert r.exit_code == 0, r.output
    md = (tmp_path / "empty" / "report.md").read_text()
    assert ("*Not computed yet:* no evaluation results. Computed by `clipgen eval grid RUNS --data-root "
            "DOMAINNET_ROOT`.") in md
    assert "*No finding can be checked yet: its inputs are not computed.*" in md


@pytest.mark.slow
def test_study_report_bad_input_is_one_line(tmp_path, cli, study):
    r = cli("report", tmp_path / "nope")
    assert r.exit_code == 2 and r.stderr.strip() == f"error: STUDY_DIR: {tmp_path / 'nope'} is not a directory"
    bad = study / "grid" / "exp-cg-high-sketch-seed0" / "eval" / "zero-shot" / "sketch" / "results.json"
    bad.write_text("{not json")
    r = cli("report", study)
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {bad}: unreadable JSON")
    assert len(r.stderr.strip().splitlines()) == 1 and not (study / "report.md").exists()


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
                    reason="no headless chromium installed")
def test_report_html_in_headless_chromium(study, tmp_path):
    """scripts/check_report_html.sh: every image decodes in a real browser, no console errors; a broken image and a
    script error are caught."""
    from clipgen.report import ReportConfig, run_report

    _, html_path = run_report(ReportConfig(inputs=[study], out=tmp_path / "rep"))
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_report_html.sh"
    r = subprocess.run([str(script), str(html_path)], capture_output=True, text=True, timeout=120)
    n = html_path.read_text().count("<img ")
    assert r.returncode == 0 and r.stdout.startswith(f"ok: {html_path}: all {n} images loaded"), r.stdout + r.stderr
    html = html_path.read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1))
    r = subprocess.run([str(script), str(broken)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and f"1 of {n} images did not load" in r.stderr, r.stdout + r.stderr
    scripted = tmp_path / "scripted.html"
    scripted.write_text(html.replace("<body>", "<body><script>undefinedFunction();</script>", 1))
    r = subprocess.run([str(script), str(scripted)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "0 of" in r.stderr and "console:" in r.stderr, r.stdout + r.stderr


def _feature_sharing(study, run_dir, name, score):
    """A store of ``run_dir`` and an SAE + 'sae features' output of it, in the layout those commands write."""
    from clipgen.analysis.feature_sharing import FeatureSharingConfig
    from clipgen.artifacts import write_config
    from clipgen.extraction import ExtractConfig
    from tests._fixtures_study import _png

    store = study / "h5" / f"{name}.h5"
    store.write_bytes(b"")
    write_config(store, "extract", ExtractConfig(out=store, model_dir=run_dir))
    sae = study / "saes" / name
    sae.mkdir(parents=True)
    (sae / "metrics.json").write_text(json.dumps({"val": {"fve": 0.91, "l0": 7.5, "dead": 3}, "arch": {"d_sae": 64}}))
    fs = sae / "shared"
    fs.mkdir()
    (fs / "feature-sharing.json").write_text(json.dumps({"score": score}))
    _png(fs / "feature-sharing.png")
    write_config(fs, "sae features", FeatureSharingConfig(store=str(store), sae=str(sae), out=str(fs),
                                                          test_domain="sketch"))


@pytest.mark.slow
def test_study_report_sae_finding_with_a_zero_accuracy(study):
    """The CG high-diversity model at 0% held-out accuracy still enters the SAE finding (0.0 is a value)."""
    from clipgen.report import ReportConfig, run_report

    cg, lod = study / "grid" / "exp-cg-high-sketch-seed0", study / "grid" / "exp-leave-out-domain-sketch-seed0"
    res = cg / "eval" / "zero-shot" / "sketch" / "results.json"
    doc = json.loads(res.read_text())
    doc["metrics"]["sketch"]["ood_acc"] = [0.05, 0.0]
    res.write_text(json.dumps(doc))
    _feature_sharing(study, cg, "cg", 0.4)
    _feature_sharing(study, lod, "lod", 0.6)
    md = run_report(ReportConfig(inputs=[study]))[0].read_text()
    assert "| CG high-diversity | 0.400 | 0.91 | 7.5 | 3 | 64 |" in md and "| Leave-out-domain | 0.600 |" in md
    assert "for the CG high-diversity model; the sketch row scores 0.400." in md
    assert ("CG high-diversity vs leave-out-domain) | sharing 0.400 vs 0.600; sketch C2 accuracy 0.0% vs 70.0% | "
            "holds |") in md


def test_sae_names_table_from_named_latents(tmp_path):
    from clipgen.report.analysis_sections import _sae_names_table

    base = tmp_path / "features"
    base.mkdir()
    e = lambda i, n, s: {"latent": i, "names": [n, "other"], "similarity": s, "fraction": {}}  # noqa: E731
    (base / "named-latents.json").write_text(json.dumps({"classes": {"axe": {
        "shared": [e(3, "hatchet", 0.41), e(7, "sketch", 0.2), e(1, "a", 0.1), e(2, "b", 0.1)],
        "specific": {"sketch": [e(5, "pencil", 0.333)], "real": [e(9, "photo", 0.5)]}}}}))
    doc = Document()
    _sae_names_table(doc, {"CG high-diversity": base, "Leave-out-domain": tmp_path / "none"}, "sketch")
    md = doc.markdown(tmp_path)
    assert "| CG high-diversity | axe | #3 hatchet (0.41), #7 sketch (0.20), #1 a (0.10) | #5 pencil (0.33) |" in md
    assert "photo" not in md and "latents specific to sketch" in md
    empty = Document()
    _sae_names_table(empty, {"CG high-diversity": tmp_path / "none"}, "sketch")
    assert empty.markdown(tmp_path).strip() == ""
