"""End-to-end `clipgen data ...` on tiny synthetic data: outputs, summaries, one-line errors with exit code 2."""

import json

import pytest

from clipgen.data.mixture_info import read_info
from clipgen.tsv import read_tsv

from ._fixtures_data import make_imagenet_captions, make_sketch_root, write_base


def one_line_error(r, *fragments):
    assert r.exit_code == 2, r
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    for f in fragments:
        assert f in r.stderr, (f, r.stderr)


def test_help_lists_the_data_commands(cli):
    r = cli("data", "--help")
    assert r.exit_code == 0
    for c in ("synth", "captions", "imagenet-captions", "mixtures", "merge-base", "imagenet-sketch"):
        assert c in r.stdout


@pytest.mark.slow
def test_captions_then_paper_mixtures(cli, synth_root, tmp_path):
    caps = tmp_path / "captions"
    r = cli("data", "captions", "--root", synth_root, "--out", caps)
    assert r.exit_code == 0, r
    assert "domain term" in r.stdout and "wrote 24 caption files" in r.stdout
    assert len(list(caps.glob("*.tsv"))) == 12 and len(list((caps / "aligned-captions").glob("*.tsv"))) == 12
    r = cli("data", "captions", "--root", synth_root, "--out", caps)
    one_line_error(r, "already exists", "--force")
    r = cli("data", "captions", "--root", synth_root, "--out", caps, "--force", "--json", "--no-progress")
    assert r.exit_code == 0, r
    doc = json.loads(r.stdout)  # one JSON document; the table goes to stderr
    assert doc["out"] == str(caps) and len(doc["files"]) == 24 and "domain term" in r.stderr
    assert doc["counts"]["sketch"]["test"] == len((synth_root / "sketch_test.txt").read_text().splitlines())

    out = tmp_path / "mix"
    r = cli("data", "mixtures", "--root", synth_root, "--captions", caps, "--out", out, "--paper",
            "--base", synth_root / "base_train.tsv", "--base-val", synth_root / "base_val.tsv")
    assert r.exit_code == 0, r
    assert "the 2 of the paper's 15 present in the data: axe, banana" in r.stdout
    assert "training mixtures, test domain sketch" in r.stdout and "C2 (held-out)" in r.stdout
    assert "wrote 64 TSVs" in r.stdout
    assert len(list(out.glob("combined-captions-*.tsv"))) == 32
    index = json.loads((out / "mixtures.json").read_text())["mixtures"]
    assert set(index) == {p.name for p in out.glob("*.tsv")}
    for name in ("combined-captions-train-lso-rs-nosketchclasses.tsv", "combined-captions-val-lso-real-only.tsv"):
        rows = read_tsv(out / name)
        assert read_info(out / name).counts["total"] == len(rows)
        assert all(p.startswith("/") for p, _ in rows)
    summary = json.loads((out / "mixtures-summary.json").read_text())
    assert len(summary["columns"]) == 64 and summary["reference_sizes"]["sketch"] == 80
    # rerunning needs --force; with --force it rewrites the same content
    before = (out / "combined-captions-train-lso-cipqr-nosketchclasses.tsv").read_text()
    r = cli("data", "mixtures", "--root", synth_root, "--captions", caps, "--out", out, "--paper",
            "--base", synth_root / "base_train.tsv", "--base-val", synth_root / "base_val.tsv")
    one_line_error(r, "already exists", "--force")
    r = cli("data", "mixtures", "--root", synth_root, "--captions", caps, "--out", out, "--paper", "--force",
            "--base", synth_root / "base_train.tsv", "--base-val", synth_root / "base_val.tsv")
    assert r.exit_code == 0 and (out / "combined-captions-train-lso-cipqr-nosketchclasses.tsv").read_text() == before
    r = cli("data", "mixtures", "--root", synth_root, "--captions", caps, "--out", out, "--paper", "--force",
            "--base", synth_root / "base_train.tsv", "--base-val", synth_root / "base_val.tsv", "--json")
    assert r.exit_code == 0, r
    doc = json.loads(r.stdout)
    assert doc["index"] == str(out / "mixtures.json") and doc["held_out"] == ["axe", "banana"]
    assert len(doc["mixtures"]) == 64 and doc["reference_sizes"]["sketch"] == 80
    row = next(m for m in doc["mixtures"] if m["file"] == "combined-captions-val-lso-real-only.tsv")
    assert row["rows"] == len(read_tsv(out / row["file"]))

    # merge-base on top: the paper's CC preset
    cc = write_base(tmp_path / "cc3m-train.tsv", 5, prefix="cc3m")
    r = cli("data", "merge-base", "--base", cc, "--mixtures", out, "--out", tmp_path / "cc", "--identifiers",
            "paper-cc")
    assert r.exit_code == 0, r
    assert len(list((tmp_path / "cc").glob("cc3m-train-lso-*.tsv"))) == 7 and "5 base +" in r.stdout
    r = cli("data", "merge-base", "--base", cc, "--mixtures", out, "--out", tmp_path / "cc", "--identifiers", "xx")
    one_line_error(r, "--identifiers: no training mixture 'lso-xx'")
    # a caption opening a quote it never closes would swallow the next lines: refused with file:line, nothing written
    bad = tmp_path / "bad-train.tsv"
    bad.write_text('filepath\ttitle\n/a.jpg\tone\n/b.jpg\t"two\n/c.jpg\tthree\n/d.jpg\tfour\n')
    r = cli("data", "merge-base", "--base", bad, "--mixtures", out, "--out", tmp_path / "q", "--identifiers",
            "paper-cc")
    one_line_error(r, "bad-train.tsv:3: a field starts with a double quote")
    assert not (tmp_path / "q").exists()


@pytest.mark.slow
def test_mixture_errors_are_one_line(cli, synth_root, tmp_path):
    caps = tmp_path / "captions"
    assert cli("data", "captions", "--root", synth_root, "--out", caps, "--no-aligned").exit_code == 0
    base = ["data", "mixtures", "--root", synth_root, "--captions", caps, "--out", tmp_path / "o"]
    one_line_error(cli(*base, "--setup", "cg-low", "--test-domain", "real"), "--test-domain", "'real'",
                   "error: --test-domain: domain 'real' is not allowed here")
    one_line_error(cli(*base, "--setup", "cg-lo"), "error: --setup: unknown setup 'cg-lo'")
    one_line_error(cli(*base, "--domains", "crz"), "--domains: unknown domain or domain letters 'crz'")
    one_line_error(cli(*base, "--domains", "cr", "--test-domain", "sketch"), "not among the domains")
    one_line_error(cli(*base, "--setup", "cg-low", "--held-out", "axe,lion"), "--held-out", "'lion'", "no images")
    one_line_error(cli(*base, "--setup", "cg-low", "--held-out", "axxe"), "--held-out: unknown DomainNet class")
    one_line_error(cli(*base, "--setup", "cg-low", "--allow-pct", "lots"), "--allow-pct: 'lots' is not a number")
    one_line_error(cli(*base, "--setup", "cg-low", "--aligned"), "aligned-captions", "caption file not found")
    one_line_error(cli(*base), "nothing to build", "error: --setup: nothing to build")
    one_line_error(cli("data", "mixtures", "--root", synth_root, "--captions", tmp_path / "nocaps", "--out",
                       tmp_path / "o", "--paper"), "error: --captions: caption folder")
    one_line_error(cli("data", "mixtures", "--root", tmp_path / "nope", "--out", tmp_path / "o", "--paper"),
                   "--root:", "is not a folder")
    assert not (tmp_path / "o").exists()


def test_imagenet_captions_cli(cli, tmp_path):
    js, train = make_imagenet_captions(tmp_path / "in", {"n01440764": 12}, missing=2)
    r = cli("data", "imagenet-captions", "--captions-json", js, "--imagenet-train", train, "--out", tmp_path / "o",
            "--val-fraction", "0.25")
    assert r.exit_code == 0, r
    assert "9 train" in r.stdout and "3 val" in r.stdout and "2 images missing" in r.stdout
    one_line_error(cli("data", "imagenet-captions", "--captions-json", js, "--imagenet-train", train, "--out",
                       tmp_path / "o"), "in-captions-train.tsv: already exists")


@pytest.mark.slow
def test_imagenet_sketch_cli(cli, synth_root, tmp_path):
    caps = tmp_path / "captions"
    assert cli("data", "captions", "--root", synth_root, "--out", caps, "--no-aligned").exit_code == 0
    sk = make_sketch_root(tmp_path / "sk", {25: 5, 150: 2, 596: 2})
    r = cli("data", "imagenet-sketch", "--root", synth_root, "--captions", caps, "--sketch-root", sk, "--out",
            tmp_path / "o", "--variant", "mix", "--modes", "fiftyp,one")
    assert r.exit_code == 0, r
    assert "7 kept (2 classes" in r.stdout and "the substring filter would keep 5" in r.stdout
    assert sorted(p.name for p in (tmp_path / "o").glob("combined-captions-train-*.tsv")) == [
        "combined-captions-train-lso-cipqrs-nosketchclasses-with-in-sketches-fiftyp.tsv",
        "combined-captions-train-lso-cipqrs-nosketchclasses-with-in-sketches-one.tsv"]
    one_line_error(cli("data", "imagenet-sketch", "--root", synth_root, "--captions", caps, "--sketch-root", sk,
                       "--out", tmp_path / "o2", "--modes", "most"), "--modes: unknown mix mode 'most'")
    one_line_error(cli("data", "imagenet-sketch", "--root", synth_root, "--captions", caps, "--sketch-root", sk,
                       "--out", tmp_path / "o2", "--variant", "blend"), "error: --variant: unknown variant 'blend'")
