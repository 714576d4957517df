import subprocess
import sys
import time


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


def test_clipgen_error_is_one_line_exit_2(cli, tmp_path):
    r = cli("data", "synth", "--out", tmp_path / "o", "--classes", "axe,qqqq")
    assert r.exit_code == 2
    assert r.stderr.strip() == "error: --classes: unknown DomainNet class 'qqqq'"
    assert not (tmp_path / "o").exists()
