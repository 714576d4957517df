"""End-to-end tests of 'clipgen train' on the tiny synthetic data: one-line errors, the final line, the grid."""

import shutil

import pytest
import torch

from clipgen.runs import list_checkpoints, read_manifest
from clipgen.tsv import read_tsv, write_tsv
from tests._fixtures_train import mixture_file, train_mixtures, trained_run_dir

FIXTURES = (train_mixtures, trained_run_dir)


def _one_line_error(r, pattern: str) -> None:
    import re

    assert r.exit_code == 2, r
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert re.search(pattern, r.stderr), r.stderr


def test_help_lists_commands(cli):
    r = cli("train", "--help")
    assert r.exit_code == 0 and all(c in r.stdout for c in ("clip", "supervised", "grid"))


@pytest.mark.slow
def test_bad_input_is_one_line_exit_2(cli, train_mixtures, tmp_path):
    train = train_mixtures / mixture_file("natural-only", None, "train")
    base = ("train", "clip", "--train", train, "--logs", tmp_path / "logs", "--device", "cpu")
    _one_line_error(cli(*base, "--preset", "paper"), r"--preset: unknown preset 'paper'")
    _one_line_error(cli(*base, "--model", "RN-huge"), r"--model: unknown model 'RN-huge'")
    _one_line_error(cli("train", "clip", "--train", tmp_path / "none.tsv"), r"--train: .*none\.tsv: TSV file not found")
    bad = tmp_path / "bad.tsv"
    bad.write_text("filepath\ttitle\nx.jpg\n")
    _one_line_error(cli("train", "clip", "--train", bad, "--device", "cpu"),
                    r"bad\.tsv:2: expected 2 tab-separated fields, found 1")
    rows = read_tsv(train)
    rows[5] = (str(tmp_path / "gone.jpg"), "a photo of a gone thing")
    write_tsv(tmp_path / "missing.tsv", rows)
    _one_line_error(cli("train", "clip", "--train", tmp_path / "missing.tsv", "--device", "cpu"),
                    r"missing\.tsv:7: image .*gone\.jpg does not exist")
    _one_line_error(cli(*base, "--", "--bogus-flag"),
                    r"open_clip_train arguments: unrecognized arguments: --bogus-flag")
    _one_line_error(cli("train", "supervised", "--train", train, "--preset", "nope", "--device", "cpu"),
                    r"--preset: unknown preset 'nope'")
    _one_line_error(cli("train", "supervised", "--train", train, "--milestones", "a,b", "--device", "cpu"),
                    r"--milestones: 'a,b' is not a comma-separated list")
    assert not (tmp_path / "logs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where no GPU exists")
def test_gpu_requested_where_none_exists(cli, train_mixtures):
    train = train_mixtures / mixture_file("natural-only", None, "train")
    _one_line_error(cli("train", "clip", "--train", train, "--gpus", "1"), r"--gpus: a GPU was requested but no CUDA")
    _one_line_error(cli("train", "supervised", "--train", train, "--device", "cuda"), r"--device: a GPU was requested")


@pytest.mark.slow
def test_the_same_command_continues_and_other_settings_are_refused(cli, trained_run_dir, train_mixtures, tmp_path):
    """Rerunning the same command skips a finished run (with or without --resume); other settings on the existing run
    are one line that points to --force; a checkpoint that cannot be resumed from is one line."""
    logs = tmp_path / "logs"
    shutil.copytree(trained_run_dir, logs / "run")
    train = train_mixtures / mixture_file("cg-low", "sketch", "train")
    base = ("train", "clip", "--train", train, "--logs", logs, "--name", "run", "--device", "cpu", "--model",
            "RN-tiny", "--epochs", "2")
    for extra in ((), ("--resume",)):  # complete: nothing to do, and the last line says where the checkpoints are
        r = cli(*base, *extra)
        assert r.exit_code == 0 and "is complete" in r.stderr
        assert r.stdout.strip().splitlines()[-1] == f"checkpoints: {logs / 'run' / 'checkpoints'} (epoch_0..epoch_2.pt)"
    _one_line_error(cli(*base, "--lr", "0.1"), r"^error: --name: run .*/run was started with other settings "
                                               r"\(lr 0\.001 -> 0\.1\); rerun with its settings to continue it, pass "
                                               r"--force to start it over, or choose another --name$")
    _one_line_error(cli(*base, "--seed", "1"), r"\(seed 0 -> 1\); .* pass --force")
    torch.save({"epoch": 2, "state_dict": {}}, logs / "run" / "checkpoints" / "epoch_2.pt")  # readable, no optimizer
    _one_line_error(cli(*base), r"epoch_2\.pt: checkpoint lacks optimizer; cannot resume from it")
    assert read_manifest(logs / "run").extra["status"] == "complete"  # refusals change nothing


@pytest.mark.slow
def test_supervised_command(cli, train_mixtures, tmp_path):
    train = train_mixtures / mixture_file("natural-only", None, "train")
    args = ("train", "supervised", "--train", train, "--logs", tmp_path, "--name", "s", "--epochs", "1", "--device",
            "cpu", "--quiet", "--milestones", "1")
    r = cli(*args)
    assert r.exit_code == 0, r
    assert r.stdout.strip().splitlines()[-1] == f"checkpoints: {tmp_path / 's' / 'checkpoints'} " \
                                                f"(epoch_0..epoch_1.pt (2 files))"
    assert read_manifest(tmp_path / "s").hyperparameters["milestones"] == [1]
    log = (tmp_path / "s" / "metrics.jsonl").read_text()
    for extra in ((), ("--resume",)):  # the same command again: the finished run is skipped
        r = cli(*args, *extra)
        assert r.exit_code == 0 and r.stdout.strip().splitlines()[-1].startswith("checkpoints: "), r.stderr
    assert (tmp_path / "s" / "metrics.jsonl").read_text() == log
    _one_line_error(cli(*args, "--lr", "0.5"), r"--name: run .*/s was started with other settings "
                                               r"\(lr 0\.01 -> 0\.5\); .*pass --force to start it over")


def test_grid_dry_run_and_job_script(cli, train_mixtures, tmp_path):
    r = cli("train", "grid", "--index", train_mixtures, "--logs", tmp_path / "logs", "--dry-run")
    assert r.exit_code == 0, r
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "48 runs, 0 complete, 48 to train"
    assert sum(x.startswith("[todo] ") for x in lines) == 48
    assert not (tmp_path / "logs").exists()
    r = cli("train", "grid", "--index", train_mixtures, "--logs", tmp_path / "logs", "--seeds", "0",
            "--partition", "gpu", "--setup-cmd", "source venv/bin/activate")
    assert r.exit_code == 0, r
    script = tmp_path / "logs" / "grid" / "clipgen-train.sbatch"
    text = script.read_text()
    assert "#SBATCH --gres=gpu:4" in text and "#SBATCH --partition=gpu" in text and "source venv/bin/activate" in text
    tasks = (tmp_path / "logs" / "grid" / "clipgen-train.tasks").read_text().splitlines()
    assert len(tasks) == 16 and all("--gpus 4" in t and "--log live" in t for t in tasks)
    _one_line_error(cli("train", "grid", "--index", train_mixtures, "--dry-run", "--local"),
                    r"choose one of --dry-run, --submit and --local")
    if shutil.which("sbatch") is None:
        _one_line_error(cli("train", "grid", "--index", train_mixtures, "--logs", tmp_path / "l2", "--submit"),
                        r"--submit: sbatch not found")


@pytest.mark.slow
def test_grid_local_runs_and_skips(cli, train_mixtures, tmp_path):
    logs = tmp_path / "logs"
    args = ("train", "grid", "--index", train_mixtures, "--logs", logs, "--preset", "synthetic", "--setups",
            "natural-only", "--seeds", "0", "--epochs", "1", "--local", "--", "--device", "cpu")
    r = cli(*args)
    assert r.exit_code == 0, r
    assert "1 runs, 0 complete, 1 to train" in r.stdout
    run = logs / "natural-only-s0"
    assert sorted(list_checkpoints(run)) == [0, 1]
    m = read_manifest(run)
    assert m.mixture["setup"] == "natural-only" and m.seed == 0 and m.hyperparameters["epochs"] == 1
    r = cli(*args)
    assert r.exit_code == 0 and "1 runs, 1 complete, 0 to train" in r.stdout


def test_numeric_options_are_one_line_before_any_work(cli, tmp_path):
    for opt, val in (("--lr", "-1"), ("--accum-freq", "0"), ("--epochs", "0"), ("--batch-size", "-2"),
                     ("--workers", "-1")):
        r = cli("train", "clip", "--train", tmp_path / "t.tsv", "--logs", tmp_path / "logs", opt, val)
        assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
        assert r.stderr.startswith(f"error: Invalid value for '{opt}'"), r.stderr
    assert list(tmp_path.iterdir()) == []
