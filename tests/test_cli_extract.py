"""``clipgen extract`` end to end: extraction, layers, info, validate, merge, and one-line errors (exit 2)."""

import json
import shutil

import h5py
import numpy as np
import pytest

from clipgen.store import open_store
from tests.conftest import small_disk


@pytest.fixture
def base(random_run_dir, synth_root):
    return ["extract", "--model-dir", random_run_dir, "--data", synth_root, "--domains", "c", "--device", "cpu",
            "--no-text", "--batch-size", "8", "--block-rows", "8", "--no-progress"]


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.output
    for n in needles:
        assert n in r.stderr, r.stderr


@pytest.mark.slow
def test_extract_info_validate(cli, base, tmp_path):
    out = tmp_path / "s.h5"
    r = cli(*base, "--out", out)
    assert r.exit_code == 0, r.stderr
    with open_store(out) as st:
        n, layers = st.n_samples, st.layers
    assert f"store {out}: {n} rows, fingerprint" in r.stdout
    assert (tmp_path / "s.config.json").is_file()
    r = cli(*base, "--out", out, "--json")  # the same command: already complete, one JSON document on stdout
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["out"] == str(out) and doc["rows"] == n and doc["already_complete"] is True
    assert doc["bytes"] == out.stat().st_size and "(already complete)" in r.stderr
    r = cli("extract", "info", out)
    assert r.exit_code == 0, r.stderr
    assert "clipgen-activations schema 1.0, complete" in r.stdout and "model RN-tiny epoch 2" in r.stdout
    for name in layers:
        assert f"  {name} " in r.stdout
    d = json.loads(cli("extract", "info", out, "--json").stdout)
    assert d["complete"] and d["rows"] == n and [x["name"] for x in d["layers"]] == layers
    assert d["image_set"]["kind"] == "domainnet" and d["domains"] == {"clipart": n}
    r = cli("extract", "validate", out)
    assert r.exit_code == 0 and r.stdout.strip() == f"{out}: ok"
    # a damaged value is found (a copy, with one NaN written into a compressed layer)
    bad = tmp_path / "bad.h5"
    shutil.copy(out, bad)
    with h5py.File(bad, "a") as f:
        f["layers/resblock2"][3, 5] = np.nan
    _one_line_error(cli("extract", "validate", bad), "bad.h5: 1 problem(s): layer resblock2: 1 non-finite value(s)")
    assert cli("extract", "validate", bad, "--quick").exit_code == 0  # structure only


def test_layers_command(cli, random_run_dir):
    r = cli("extract", "layers", "--model-dir", random_run_dir)
    assert r.exit_code == 0, r.stderr
    names = [ln.split()[0] for ln in r.stdout.splitlines()[1:]]
    assert names == ["act1", "act2", "act3", "avgpool", "resblock1", "resblock2", "resblock3", "resblock4",
                     "attnpool", "embedding"]
    rows = json.loads(cli("extract", "layers", "--model-dir", random_run_dir, "--json").stdout)
    act3 = [x for x in rows if x["name"] == "act3"][0]
    assert act3["channels"] == 16 and act3["shape"] == [16, 32, 32] and act3["pooled_bytes_fp16"] == 32


@pytest.mark.slow
def test_shards_and_merge(cli, base, tmp_path):
    out = tmp_path / "s.h5"
    for i in range(2):
        r = cli(*base, "--out", out, "--shard", f"{i}/2")
        assert r.exit_code == 0, r.stderr
    shards = [tmp_path / f"s.shard-{i}-of-2.h5" for i in range(2)]
    assert "finished shard 0/2" in cli("extract", "info", shards[0]).stdout
    r = cli("extract", "merge", *shards[::-1], "--out", tmp_path / "m.h5", "--copy")
    assert r.exit_code == 0 and "merged 2 shard(s)" in r.stdout and "self-contained copy" in r.stdout
    assert cli("extract", "validate", tmp_path / "m.h5").exit_code == 0
    _one_line_error(cli("extract", "merge", shards[0], "--out", tmp_path / "g.h5"), "gap:", "shard(s) 1 of 2")
    _one_line_error(cli("extract", "merge", shards[0], shards[0], shards[1], "--out", tmp_path / "o.h5"),
                    "overlap: row 0")
    assert not (tmp_path / "g.h5").exists() and not (tmp_path / "o.h5").exists()


@pytest.mark.slow
def test_errors_are_one_line(cli, base, tmp_path, random_run_dir, synth_root):
    out = tmp_path / "s.h5"
    assert cli(*base, "--out", out).exit_code == 0
    for extra in ((), ("--resume",)):  # the same command again: a complete store is skipped (--resume changes nothing)
        r = cli(*base, "--out", out, *extra)
        assert r.exit_code == 0 and r.stdout.strip().endswith("(already complete)"), r.stderr
    _one_line_error(cli(*base, "--out", tmp_path / "x.h5", "--layer", "act1,conv9"),
                    "--layer: unknown layer(s) conv9; valid: act1 act2")
    _one_line_error(cli(*base), "--out: missing")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    _one_line_error(cli("extract", "info", foreign), "not a clipgen activation store")
    _one_line_error(cli(*base, "--out", foreign), "exists and is not a readable clipgen store; pass --force")
    v2 = tmp_path / "v2.h5"
    shutil.copy(out, v2)
    with h5py.File(v2, "a") as f:
        f.attrs["schema_version"] = "2.0"
    _one_line_error(cli("extract", "info", v2), "unsupported store schema version: found 2.0, this clipgen reads 1.x")
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(out.read_bytes()[:2000])
    _one_line_error(cli("extract", "validate", trunc), "trunc.h5:")
    _one_line_error(cli(*base, "--out", out, "--epoch", "1"), "fingerprint mismatch",
                    "checkpoint.sha256, epoch", "pass --force")


@pytest.mark.slow
def test_numeric_options_are_checked_up_front(cli, base, tmp_path):
    out = tmp_path / "s.h5"
    for opt, val in (("--batch-size", "-4"), ("--batch-size", "0"), ("--block-rows", "0"), ("--workers", "-1"),
                     ("--writer-threads", "-1"), ("--epoch", "-1"), ("--max-size-gb", "0")):
        _one_line_error(cli(*base, opt, val, "--out", out), f"Invalid value for '{opt}'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_validate_checks_coverage_and_progress(cli, base, tmp_path):
    from clipgen.store import build_store_from_arrays

    # what '--batch-size -4' used to write: a store marked complete without a single row of its 5-image set
    empty = build_store_from_arrays(tmp_path / "empty.h5", paths=[], labels=[], domains=[],
                                    layers={"act1": np.zeros((0, 4), np.float32)},
                                    provenance={"image_set": {"n_rows": 5}})
    _one_line_error(cli("extract", "validate", empty), "rows: stored + skipped rows do not cover the image-set rows "
                    "0..4 exactly (0 of 5 covered)")
    out = tmp_path / "s.h5"
    assert cli(*base, "--out", out).exit_code == 0
    bad = tmp_path / "bad.h5"
    shutil.copy(out, bad)
    with h5py.File(bad, "a") as f:
        n = int(f.attrs["n_samples"])
        f["progress"].attrs["rows_done"] = n - 3
    _one_line_error(cli("extract", "validate", bad, "--quick"), f"/progress: {n - 3} rows recorded as written, "
                    f"n_samples is {n}")


@pytest.mark.slow
def test_disk_full_is_one_line_and_the_same_command_resumes(cli, base, tmp_path, monkeypatch):
    import errno

    import clipgen.store.parts as parts

    real = parts.write_rows

    def write_rows(ds, start, block, pool=None):
        if "block-000002" in ds.file.filename:
            raise OSError(errno.ENOSPC, "Driver write request failed (file write failed: filename = "
                          f"'{ds.file.filename}', errno = 28, error message = 'No space left on device')")
        return real(ds, start, block, pool)

    monkeypatch.setattr(parts, "write_rows", write_rows)
    out = tmp_path / "s.h5"
    r = cli(*base, "--out", out)
    _one_line_error(r, f"error: disk full: no space left on the device while writing {out}.parts/block-000002.h5 "
                       f"(in {out}.parts); free some space and rerun the same command: it continues")
    assert not list(tmp_path.rglob("*.tmp"))
    monkeypatch.undo()
    r = cli(*base, "--out", out, "--resume")
    assert r.exit_code == 0, r.stderr
    assert cli("extract", "validate", out).exit_code == 0


@pytest.mark.slow
def test_real_full_disk_is_one_line_and_resumes_when_space_is_freed(random_run_dir, synth_root, tmp_path):
    """On a 400 KiB tmpfs every block fits but not the final store (where HDF5 used to fail closing the file and
    crash the interpreter): exit 2 with one line, no temporary file; with more space the same command resumes."""
    import os
    import subprocess
    import sys

    with small_disk(tmp_path, "400k") as mnt:
        out = mnt / "s.h5"
        cmd = [sys.executable, "-m", "clipgen.cli.main", "extract", "--model-dir", str(random_run_dir), "--data",
               str(synth_root), "--domains", "cs", "--device", "cpu", "--batch-size", "8",
               "--block-rows", "8", "--no-progress", "--out", str(out)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 2, r.stderr[-3000:]
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: disk full: ") and str(mnt) in lines[0], r.stderr
        assert not [p for p in mnt.rglob("*") if p.name.endswith(".tmp")]
        subprocess.run(["mount", "-o", "remount,size=4m", str(mnt)], check=True)
        r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert subprocess.run([sys.executable, "-m", "clipgen.cli.main", "extract", "validate", str(out)],
                              capture_output=True, env=env).returncode == 0
