import json

import pytest

from clipgen.evaluation.results import read_results
from tests._fixtures_eval import fake_results, uneven_root
from tests.conftest import small_disk

FIXTURES = (uneven_root,)


@pytest.mark.slow
def test_zero_shot_command(cli, random_run_dir, uneven_root, tmp_path):
    out = tmp_path / "o"
    r = cli("eval", "zero-shot", "--data-root", uneven_root, "--model-dir", random_run_dir, "--test-domain", "p",
            "--epochs", "last", "--templates", "simple", "--out", out, "--no-progress", "--held-out", "axe")
    assert r.exit_code == 0, r.stderr
    doc = read_results(out)
    assert doc["test_domain"] == "painting" and doc["held_out"]["names"] == ["axe"]
    assert "painting" in r.stdout and "skipped classes without images: teddy-bear" in r.stdout
    assert f"results: {out / 'results.json'}" in r.stdout
    # final-epoch accuracies as one JSON document (the summary goes to stderr)
    j = cli("eval", "zero-shot", "--data-root", uneven_root, "--model-dir", random_run_dir, "--test-domain", "p",
            "--epochs", "last", "--templates", "simple", "--out", out, "--no-progress", "--held-out", "axe", "--json")
    assert j.exit_code == 0, j.stderr
    got = json.loads(j.stdout)
    assert got["results"] == str(out / "results.json") and got["skipped"] == [2] and got["final_epoch"] == 2
    for d in doc["domains"]:
        assert got["final"][d]["ood_acc"] == doc["metrics"][d]["ood_acc"][-1]
        assert got["final"][d]["n_id"] == doc["counts"][d]["id"]
    assert "already evaluated" in j.stderr
    again = cli("eval", "zero-shot", "--data-root", uneven_root, "--model-dir", random_run_dir, "--test-domain", "p",
                "--epochs", "last", "--templates", "simple", "--out", out, "--no-progress", "--held-out", "axe")
    assert again.exit_code == 0 and "already evaluated: epoch(s) 2" in again.stdout
    # other settings on the existing results: one line that points to --force
    other = cli("eval", "zero-shot", "--data-root", uneven_root, "--model-dir", random_run_dir, "--test-domain", "p",
                "--epochs", "last", "--templates", "openai", "--out", out, "--no-progress", "--held-out", "axe")
    assert other.exit_code == 2 and other.stderr.count("\n") == 1 and "pass --force to replace it" in other.stderr


def test_errors_are_one_line(cli, random_run_dir, uneven_root, tmp_path):
    (tmp_path / "bare").mkdir()
    r = cli("eval", "zero-shot", "--data-root", uneven_root, "--model-dir", tmp_path / "bare", "--test-domain", "s")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: ") and "pass the checkpoint file(s) and --model NAME" in r.stderr
    r = cli("eval", "zero-shot", "--data-root", uneven_root, "--model-dir", random_run_dir, "--test-domain", "s",
            "--store", tmp_path / "nope.h5", "--out", tmp_path / "zs")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: --store: ") and "nope.h5 does not exist" in r.stderr
    r = cli("eval", "supervised", "--data-root", uneven_root, "--model-dir", random_run_dir, "--test-domain", "s")
    assert r.exit_code == 2 and "evaluate it with 'clipgen eval zero-shot'" in r.stderr
    r = cli("eval", "grid", random_run_dir, "--data-root", uneven_root, "--dry-run", "--local")
    assert r.exit_code == 2 and r.stderr.strip() == "error: --dry-run and --local exclude each other"
    assert not (tmp_path / "eval-grid").exists()


@pytest.mark.slow
def test_summary_and_grid_commands(cli, random_run_dir, uneven_root, tmp_path, monkeypatch):
    for seed, v in enumerate((0.2, 0.4)):
        fake_results(tmp_path / "r" / f"s{seed}" / "results.json", setup="cg-high", test_domain="quickdraw",
                     seed=seed, values=[v])
    r = cli("eval", "summary", tmp_path / "r", "--out", tmp_path / "s")
    assert r.exit_code == 0, r.stderr
    assert "| quickdraw | 30.0 ± 14.1 (n=2) |" in r.stdout
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["command"] == "eval summary" and cfg["config"]["metric"] == "ood_acc"
    # the same output again: the error names --out (the option that points at it) and how to replace it
    r = cli("eval", "summary", tmp_path / "r", "--out", tmp_path / "s")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: --out: ") and "already exists (use --force to replace it)" in r.stderr
    r = cli("eval", "summary", tmp_path / "r", "--out", tmp_path / "s", "--force", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["out"] == str(tmp_path / "s") and str(tmp_path / "s" / "summary.csv") in doc["files"]
    row = next(x for x in doc["rows"] if x["test_domain"] == "quickdraw")
    assert row["ood_acc_mean"] == pytest.approx(0.3) and row["n_seeds"] == 2
    assert "| quickdraw | 30.0 ± 14.1 (n=2) |" in r.stderr
    monkeypatch.chdir(tmp_path)
    r = cli("eval", "grid", random_run_dir, "--data-root", uneven_root, "--test-domains", "sketch",
            "--epochs", "last", "--partition", "gpu")
    assert r.exit_code == 0, r.stderr
    assert "1 tasks; job script" in r.stdout and "--test-domain sketch" in r.stdout
    assert "#SBATCH --partition=gpu" in (tmp_path / "eval-grid" / "eval-grid.sbatch").read_text()


# -- bad input and failures: one line, exit 2, nothing left behind ------------------------------------------------

def _one_line(r, *needles):
    assert r.exit_code == 2, r
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in r.stderr, r.stderr


def _zs(cli, run, root, out, *extra):
    return cli("eval", "zero-shot", "--data-root", root, "--model-dir", run, "--test-domain", "p", "--epochs",
               "last", "--templates", "simple", "--out", out, "--no-progress", "--held-out", "axe", *extra)


def test_zero_shot_numeric_options_refused(cli, random_run_dir, uneven_root, tmp_path):
    out = tmp_path / "o"
    for opt, val in (("--batch-size", "0"), ("--batch-size", "-1"), ("--workers", "-2")):
        _one_line(_zs(cli, random_run_dir, uneven_root, out, opt, val), f"Invalid value for '{opt}'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_failed_evaluation_leaves_no_output_folder(cli, random_run_dir, synth_root, tmp_path):
    from tests._fixtures_eval import derived_root

    def keep(domain, split, lines):
        if domain == "painting" and split == "test":
            return [*lines, f"painting/{lines[0].split('/')[1]}/missing.png {lines[0].split()[1]}"]
        return lines

    root = derived_root(synth_root, tmp_path / "dn", keep)
    out = tmp_path / "runs" / "o"
    _one_line(_zs(cli, random_run_dir, root, out), "missing.png")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_disk_full_at_results_json_leaves_no_predictions(cli, random_run_dir, uneven_root, tmp_path, monkeypatch):
    import errno

    import clipgen.evaluation.results as res

    def full(path, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(res, "write_json_atomic", full)
    out = tmp_path / "o"
    _one_line(_zs(cli, random_run_dir, uneven_root, out), f"disk full: no space left on the device while writing "
              f"{out}/results.json")
    assert not out.exists()  # neither predictions.npz without its results.json, nor an empty folder


@pytest.mark.slow
def test_real_full_disk_is_one_line_and_leaves_nothing(cli, random_run_dir, uneven_root, tmp_path):

    with small_disk(tmp_path, "8k") as mnt:
        (mnt / "filler").write_bytes(b"\0" * 4096)
        r = _zs(cli, random_run_dir, uneven_root, mnt / "o")
        _one_line(r, f"disk full: no space left on the device while writing {mnt}/o/")
        assert sorted(p.name for p in mnt.iterdir()) == ["filler"]
