import subprocess
import sys
import time

import pytest


@pytest.mark.slow
def test_help_is_fast_and_lists_groups():
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "clipgen.cli.main", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    assert r.returncode == 0
    assert "data" in r.stdout
    assert elapsed < 3.0  # generous for slow CI; the real figure is ~0.25 s
    # heavy modules stay out of the CLI import
    probe = ("import sys, clipgen.cli.main; "
             "print(','.join(m for m in ('torch', 'open_clip', 'umap', 'h5py', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
    assert out == ""


def test_version(cli):
    from clipgen import __version__

    r = cli("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"clipgen {__version__}"


def test_usage_errors_are_one_line_exit_2(cli):
    r = cli("data", "synth")
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: Missing option '--out'")
    r = cli("data", "synth", "--out", "x", "--image-size", "big")
    assert r.exit_code == 2 and "--image-size" in r.stderr and r.stderr.count("\n") == 1


def test_config_field_errors_name_the_flag_that_sets_the_field(cli, tmp_path):
    """Library code names a config field; the CLI shows the flag that sets it, also where the flag is not
    '--' + the field (an argument, a renamed option), and '--' + the field where no option sets it."""
    from typer.main import get_command

    from clipgen.cli.common import option_for_field
    from clipgen.cli.main import app

    root = get_command(app)
    summary, grid = root.commands["eval"].commands["summary"], root.commands["train"].commands["grid"]
    assert option_for_field(summary, "eval summary", "inputs") == "RESULTS"
    assert option_for_field(summary, "eval summary", "out") == "--out"
    assert option_for_field(grid, "train grid", "out") == "--out"
    assert option_for_field(grid, "train grid", "slurm.time") == "--time"
    assert option_for_field(grid, "train grid", "mode") == "--mode"
    r = cli("eval", "summary", tmp_path / "nothing-here")
    assert r.exit_code == 2 and r.stderr == f"error: RESULTS: {tmp_path / 'nothing-here'} does not exist\n"
    r = cli("eval", "summary", tmp_path, "--metric", "accuracy")
    assert r.exit_code == 2 and r.stderr.startswith("error: --metric: unknown metric 'accuracy' (one of ")
    r = cli("train", "grid", "--index", tmp_path, "--dry-run")
    assert r.exit_code == 2 and r.stderr.startswith(f"error: --index: {tmp_path / 'mixtures.json'} not found")


def test_clipgen_error_is_one_line_exit_2(cli, tmp_path):
    r = cli("data", "synth", "--out", tmp_path / "o", "--classes", "axe,qqqq")
    assert r.exit_code == 2
    assert r.stderr.strip() == "error: --classes: unknown DomainNet class 'qqqq'"
    assert not (tmp_path / "o").exists()


# -- outputs that cannot be written: one line naming the path, exit 2, nothing left behind -----------------------

def _one_line(r, *needles):
    assert r.exit_code == 2, r
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in r.stderr, r.stderr


def _outputs_under_a_file(name, tmp_path, synth_root, tiny_store):
    """A command line whose output lies under the regular file tmp_path/f."""
    from tests._fixtures_eval import fake_results
    from tests._fixtures_sae import make_store

    blocked = tmp_path / "f" / "out"
    if name == "data synth":
        return ["data", "synth", "--out", blocked, "--n-classes", "2", "--train-per-class", "1", "--test-per-class",
                "1", "--base-per-class", "1", "--base-extra-classes", "0", "--workers", "1"]
    if name == "data captions":
        return ["data", "captions", "--root", synth_root, "--out", blocked]
    if name == "cka":
        return ["cka", tiny_store, "--out", blocked, "--no-figures", "--layers", "act1", "--subsets", "all"]
    if name == "sae train":
        store = make_store(tmp_path / "s.h5")[0]
        return ["sae", "train", store, "--out", blocked, "--split", "train", "--batch-size", "16", "--epochs", "1",
                "--device", "cpu"]
    if name == "eval summary":
        fake_results(tmp_path / "r" / "s0" / "results.json", setup="cg-high", test_domain="quickdraw", seed=0,
                     values=[0.5])
        return ["eval", "summary", tmp_path / "r", "--out", blocked]
    if name == "data mixtures":
        return ["data", "mixtures", "--root", synth_root, "--out", blocked]
    if name == "embeddings":
        return ["embeddings", tiny_store, "--out", blocked]
    if name == "extract":
        return ["extract", "--model-dir", tmp_path, "--data", synth_root, "--out", blocked / "s.h5"]
    if name == "extract merge":
        return ["extract", "merge", tmp_path / "s.shard-0-of-1.h5", "--out", blocked / "s.h5"]
    if name == "circuits nodes":
        return ["circuits", "nodes", tmp_path / "c.h5", "--out", blocked]
    if name == "circuits compute":
        return ["circuits", "compute", "--model-dir", tmp_path, "--data", synth_root, "--out", blocked / "c.h5"]
    if name == "train clip":
        return ["train", "clip", "--train", tmp_path / "t.tsv", "--logs", blocked]
    raise AssertionError(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["data synth", "data captions", "data mixtures", "cka", "embeddings", "sae train",
                                  "eval summary", "extract", "extract merge", "circuits nodes", "circuits compute",
                                  "train clip"])
def test_output_under_a_regular_file_is_one_line(cli, name, tmp_path, synth_root, tiny_store):
    (tmp_path / "f").write_text("a file, not a folder\n")
    args = _outputs_under_a_file(name, tmp_path, synth_root, tiny_store)
    _one_line(cli(*args), str(tmp_path / "f"))
    assert (tmp_path / "f").read_text() == "a file, not a folder\n"


@pytest.mark.slow
def test_permission_denied_while_writing_is_one_line(cli, tmp_path, monkeypatch):
    # as root a read-only folder is writable, so the refusal the kernel gives a user is simulated where it happens
    import errno
    import os

    real = os.replace

    def replace(src, dst, *a, **kw):
        if str(dst).endswith(".tsv"):
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "dn"
    r = cli("data", "synth", "--out", out, "--n-classes", "2", "--train-per-class", "1", "--test-per-class", "1",
            "--base-per-class", "1", "--base-extra-classes", "0", "--workers", "1")
    assert r.exit_code == 2 and "Traceback" not in r.output  # (above the line: the progress bar of the rendering)
    assert r.stderr.splitlines()[-1] == f"error: {out}/base_train.tsv: permission denied"
    assert not [p for p in out.rglob("*.tmp")]  # the temporary file of the refused write is gone


def test_read_only_output_folder_is_refused_up_front(cli, tmp_path, monkeypatch):
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)  # the real thing: a folder this user may not write in
    else:  # root writes anywhere: make the access check answer what it answers a user for such a folder
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(ro) else real(p, mode, **kw))
    try:
        r = cli("data", "captions", "--root", tmp_path, "--out", ro / "captions")
        _one_line(r, f"--out: {ro / 'captions'}: cannot write in {ro} (permission denied or read-only file system)")
        r = cli("train", "clip", "--train", tmp_path / "t.tsv", "--logs", ro / "logs")
        _one_line(r, f"--logs: {ro / 'logs'}: cannot write in {ro}")
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


def test_disk_full_is_one_line_and_leaves_no_temporary_file(cli, tmp_path, monkeypatch):
    import errno

    import numpy as np

    real = np.savez_compressed

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full)
    from tests._fixtures_eval import fake_results

    fake_results(tmp_path / "r" / "s0" / "results.json", setup="cg-high", test_domain="quickdraw", seed=0,
                 values=[0.5])
    monkeypatch.setattr(np, "savez_compressed", real)
    import clipgen.artifacts as art

    def write_full(path, text, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(art.Path, "write_text", lambda self, *a, **kw: write_full(self, ""))
    r = cli("eval", "summary", tmp_path / "r", "--out", tmp_path / "sum")
    _one_line(r, "disk full: no space left on the device while writing", str(tmp_path / "sum"))
