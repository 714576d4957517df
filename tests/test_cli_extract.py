"""``clipgen extract`` end to end: extraction, layers, info, validate, merge, and one-line errors (exit 2)."""

import json
import shutil

import h5py
import numpy as np
import pytest

from clipgen.store import open_store


@pytest.fixture
def base(random_run_dir, synth_root):
    return ["extract", "--model-dir", random_run_dir, "--data", synth_root, "--domains", "c", "--device", "cpu",
            "--no-text", "--batch-size", "8", "--block-rows", "8", "--no-progress"]


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.output
    for n in needles:
        assert n in r.stderr, r.stderr


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
