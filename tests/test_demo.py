"""``clipgen demo`` end to end in its reduced form (scale ``tiny``): every stage, the report, skipping on rerun."""

import json
import shlex

import pytest

from clipgen.demo import SCALES, DemoConfig, run_demo

STAGES = ["data", "mixtures", "train", "eval", "extract", "cka", "embeddings", "sae", "circuits"]
REPORT_SECTIONS = [
    "## Training data",
    "## Zero-shot generalization (the paper's Figure 2)",
    "## Representational similarity across domains (CKA, the paper's Figure 6a)",
    "## SAE feature sharing (the paper's Appendix C.1)",
    "## Embedding analysis (the paper's Figure 5)",
    "## Circuits (the paper's Figures 6b and 6c)",
    "## Which of the paper's findings hold here",
    "## Artifacts and how to rerun a step",
]


class _Demo:
    def __init__(self, exit_code: int, output: str):
        self.exit_code, self.output = exit_code, output


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """The tiny demo, built once per test session (across xdist workers, under a file lock) by the CLI.

    Read-only for tests: a test that reruns or changes the demo works on :func:`demo_copy`, so the tests pass in any
    order and on any worker."""
    from typer.testing import CliRunner

    from clipgen.cli.main import app
    from tests.conftest import shared_artifact

    def build(path):
        r = CliRunner().invoke(app, ["demo", "--out", str(path / "out"), "--scale", "tiny", "--no-progress",
                                     "--device", "cpu"], catch_exceptions=True)
        assert r.exit_code == 0, r.stdout + r.stderr
        (path / "cli-output.txt").write_text(r.stdout + r.stderr)

    root = shared_artifact(tmp_path_factory, "demo-tiny", build)
    return root / "out", _Demo(0, (root / "cli-output.txt").read_text())


@pytest.fixture
def demo_copy(tiny_demo, tmp_path):
    """A private copy of the tiny demo's folder (stage keys do not depend on where the folder is)."""
    import shutil

    dst = tmp_path / "out"
    shutil.copytree(tiny_demo[0], dst, copy_function=shutil.copy2)
    return dst


@pytest.fixture
def cli():
    from typer.testing import CliRunner

    from clipgen.cli.main import app
    from tests.conftest import CliResult

    def run(*args):
        res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)
        return CliResult(res.exit_code, res.stdout, res.stderr, res.exception)

    return run


@pytest.mark.slow
def test_every_stage_and_artifact(tiny_demo):
    out, r = tiny_demo
    state = json.loads((out / "demo.json").read_text())
    assert list(state["stages"]) == STAGES
    assert state["scale"]["name"] == "tiny" and state["device"].startswith("cpu")
    assert "device: cpu" in r.output
    runs = ["natural-only-s0", "cg-low-sketch-s0", "cg-high-sketch-s0", "leave-out-domain-sketch-s0"]
    for name in runs:
        ck = out / "runs" / name / "checkpoints"
        assert (ck / "epoch_0.pt").is_file() and (ck / f"epoch_{SCALES['tiny'].epochs}.pt").is_file()
        res = json.loads((out / "runs" / name / "eval" / "zero-shot" / "sketch" / "results.json").read_text())
        assert res["epochs"] == [0, 1] and res["run"]["name"] == name
    for f in ("eval-summary/figure2.png", "eval-summary/summary.csv", "stores/cg-high-sketch-s0-test.h5",
              "stores/leave-out-domain-sketch-s0-train.h5", "cka/cg-high-sketch-s0/cka.json",
              "embeddings/cg-high-sketch-s0/embeddings.json", "sae/cg-high-sketch-s0/sae.pt",
              "sae/leave-out-domain-sketch-s0/features/feature-sharing.json", "config.json", "data/contact_sheet.png",
              "sae/cg-high-sketch-s0/names/names.json", "sae/cg-high-sketch-s0/features/named-latents.json",
              "circuits/cg-high-sketch-s0/circuits.h5", "circuits/cg-high-sketch-s0/nodes/node_similarity.json",
              "circuits/cg-high-sketch-s0/similarity/circuit_similarity.json",
              "circuits/cg-high-sketch-s0/plot/circuit_sketch_axe.png"):
        assert (out / f).is_file(), f
    # tiny has 8 classes, 4 held out, painting lacks one test class: id has 3 classes in painting pairs -> skipped
    assert state["stages"]["cka"]["outputs"]["subsets"] == ["all", "ood"]
    assert state["stages"]["cka"]["outputs"]["fewest_classes"] == {"all": 7, "id": 3, "ood": 4}
    # circuits: every held-out class (axe 11, banana 13, candle 58, penguin 218) and the first ID class
    assert state["stages"]["circuits"]["outputs"]["classes"] == [11, 13, 58, 66, 218]
    from clipgen.circuits.store import open_circuits

    with open_circuits(out / "circuits" / "cg-high-sketch-s0" / "circuits.h5") as cf:
        assert len(cf.entries()) == 5 * 6 and sorted(cf.classes) == [11, 13, 58, 66, 218]
        assert cf.settings["steps"] == SCALES["tiny"].circuit_steps


@pytest.mark.slow
def test_report_has_every_section_and_its_numbers(tiny_demo):
    out, _ = tiny_demo
    md = (out / "report.md").read_text()
    pos = [md.index(s) for s in REPORT_SECTIONS]
    assert pos == sorted(pos)
    summary = json.loads((out / "runs" / "cg-high-sketch-s0" / "eval" / "zero-shot" / "sketch" / "results.json")
                         .read_text())
    acc = summary["metrics"]["sketch"]["ood_acc"][-1]
    assert f"| CG high-diversity | {100 * acc:.1f}% |" in md
    assert "| model | class | top shared latents (name, cosine) | latents specific to sketch |" in md
    for fig in ("eval-summary/figure2.png", "cka/cg-high-sketch-s0/highlight_all_linear_unbiased.png",
                "sae/cg-high-sketch-s0/features/feature-sharing.png",
                "circuits/cg-high-sketch-s0/nodes/nodes_highlight_all.png",
                "circuits/cg-high-sketch-s0/plot/circuit_sketch_axe.png"):
        assert f"]({fig})" in md and (out / fig).is_file()
    assert "Named SAE concepts" in md and "| model | class | top shared latents (name, cosine) |" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == md.count("![")
    assert "Which of the paper&#x27;s findings hold here" in html or "Which of the paper's findings" in html


@pytest.mark.slow
def test_rerun_skips_every_stage(demo_copy):
    out = demo_copy
    before = (out / "runs" / "cg-high-sketch-s0" / "checkpoints" / "epoch_1.pt").stat().st_mtime_ns
    res = run_demo(DemoConfig(out=out, scale="tiny", progress=False, device="cpu"))
    assert res.skipped == STAGES
    assert (out / "runs" / "cg-high-sketch-s0" / "checkpoints" / "epoch_1.pt").stat().st_mtime_ns == before


@pytest.mark.slow
def test_rerun_commands_in_the_report_work(tiny_demo, cli, tmp_path):
    out, _ = tiny_demo
    md = (out / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("- `clipgen cka "))
    argv = shlex.split(line[3:-1])[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "cka")
    r = cli(*argv)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cka" / "cka.json").is_file()


def test_bad_options_are_one_line_errors(cli, tmp_path):
    r = cli("demo", "--out", tmp_path / "x", "--test-domain", "real")
    assert r.exit_code == 2 and "--test-domain" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("demo", "--out", tmp_path / "x", "--scale", "huge")
    assert r.exit_code == 2 and "--scale" in r.stderr


@pytest.mark.slow
def test_a_changed_setting_reruns_only_its_stage(demo_copy, monkeypatch):
    import dataclasses

    import clipgen.demo as demo_mod

    out = demo_copy
    monkeypatch.setitem(demo_mod.SCALES, "tiny", dataclasses.replace(SCALES["tiny"], sae_epochs=21))
    res = run_demo(DemoConfig(out=out, scale="tiny", progress=False, device="cpu"))
    assert res.skipped == [s for s in STAGES if s != "sae"]
    metrics = json.loads((out / "sae" / "cg-high-sketch-s0" / "metrics.json").read_text())
    assert metrics["epochs"] == 21


@pytest.mark.slow
def test_force_redoes_every_stage(demo_copy):
    """--force starts every stage afresh (the runs are retrained, not resumed)."""
    out = demo_copy
    ck = out / "runs" / "cg-high-sketch-s0" / "checkpoints" / "epoch_1.pt"
    before = ck.stat().st_mtime_ns
    res = run_demo(DemoConfig(out=out, scale="tiny", progress=False, device="cpu", force=True))
    assert res.skipped == [] and ck.stat().st_mtime_ns != before
    state = json.loads((out / "demo.json").read_text())
    assert list(state["stages"]) == STAGES
    assert "its stages took" in (out / "report.md").read_text()
