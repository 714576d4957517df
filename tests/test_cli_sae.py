"""``clipgen sae train`` and ``clipgen sae features`` end to end on tiny stores."""

from __future__ import annotations

import json

import pytest

from tests._fixtures_sae import make_store
from tests.conftest import small_disk


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "s.h5", provenance={"run": {"mixture": {"test_domain": "clipart"}}})[0]


def _train(cli, store, out, *extra):
    return cli("sae", "train", store, "--out", out, "--split", "train", "--batch-size", "16", "--epochs", "2",
               "--l1", "1e-3", "--lr", "1e-2", "--log-every", "32", "--device", "cpu", *extra)


@pytest.mark.slow
def test_train_then_features(cli, store, tmp_path):
    out = tmp_path / "sae"
    r = _train(cli, store, out)
    assert r.exit_code == 0, r.output
    assert "variance explained" in r.stdout and f"sae: {out / 'sae.pt'}" in r.stdout
    for name in ("sae.pt", "config.json", "log.jsonl", "metrics.json"):
        assert (out / name).is_file()
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["resample_every"] == 10_000_000 and cfg["expansion"] == 4 and cfg["layer"] == "embedding"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"loss", "mse", "l1", "l0", "dead", "fve"} <= set(log[0])
    # the same command again: the finished run is skipped (--resume is accepted and changes nothing); other settings
    # are one line that points to --force
    for extra in ((), ("--resume",)):
        r = _train(cli, store, out, *extra)
        assert r.exit_code == 0 and "already complete" in r.stdout, r.output
    r = _train(cli, store, out, "--lr", "0.001")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--lr:" in r.stderr and "--force" in r.stderr
    r = cli("sae", "features", store, "--sae", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads((out / "features" / "feature-sharing.json").read_text())
    assert res["test_domain"] == "clipart" and res["classes"] == ["axe", "banana"]
    assert f"score(clipart) = {res['score']:.4f}" in r.stdout
    assert "published code would report the sketch row" in r.stdout
    r = cli("sae", "features", store, "--sae", out, "--device", "cpu")
    assert r.exit_code == 2 and "--force" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.slow
def test_paper_setting_and_option_errors(cli, store, tmp_path):
    r = _train(cli, store, tmp_path / "p", "--paper")
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "p" / "config.json").read_text())["config"]
    assert config["resample_every"] == 0 and config["paper"] is True  # and the published step, init and weights
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["precision"] == "float32"
    r = _train(cli, store, tmp_path / "q", "--paper", "--resample-every", "100")
    assert r.exit_code == 2 and r.stderr.startswith("error: --paper:")
    r = _train(cli, store, tmp_path / "q", "--layer", "attnpool")
    assert r.exit_code == 2 and r.stderr.startswith("error: --layer:") and r.stderr.count("\n") == 1
    r = _train(cli, store, tmp_path / "q", "--batch-size", "4096")
    assert r.exit_code == 2 and "--batch-size" in r.stderr
    assert not (tmp_path / "q").exists()


@pytest.mark.slow
def test_features_refusals(cli, store, tmp_path):
    assert _train(cli, store, tmp_path / "sae").exit_code == 0
    wide = make_store(tmp_path / "wide.h5", width=24)[0]
    r = cli("sae", "features", wide, "--sae", tmp_path / "sae", "--test-domain", "sketch", "--device", "cpu")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert "SAE expects 16-wide inputs, but layer 'embedding'" in r.stderr
    none = make_store(tmp_path / "none.h5", held_out=())[0]
    r = cli("sae", "features", none, "--sae", tmp_path / "sae", "--test-domain", "sketch", "--device", "cpu")
    assert r.exit_code == 2 and "records no held-out classes" in r.stderr and r.stderr.count("\n") == 1
    r = cli("sae", "features", store, "--sae", tmp_path / "sae", "--ks", "5,x")
    assert r.exit_code == 2 and r.stderr.startswith("error: --ks:")
    r = cli("sae", "features", store, "--sae", tmp_path / "nothing")
    assert r.exit_code == 2 and "no such SAE file" in r.stderr


@pytest.mark.slow
def test_bad_stores_are_one_line_errors(cli, store, tmp_path):
    import shutil

    import h5py

    assert _train(cli, store, tmp_path / "sae").exit_code == 0
    newer = tmp_path / "newer.h5"
    shutil.copy(store, newer)
    with h5py.File(newer, "a") as f:
        f.attrs["schema_version"] = "99.0"
    partial = tmp_path / "partial.h5"
    shutil.copy(store, partial)
    with h5py.File(partial, "a") as f:
        f.attrs["complete"] = False
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["format"] = "something-else"
    other_layer = make_store(tmp_path / "other.h5", layer="attnpool")[0]
    cases = [(tmp_path / "missing.h5", "store not found"), (newer, "unsupported store schema version"),
             (partial, "incomplete store"), (foreign, "not a clipgen activation store")]
    for path, msg in cases:
        r = _train(cli, path, tmp_path / f"t-{path.stem}")
        assert r.exit_code == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, (path, r)
        assert msg in r.stderr and not (tmp_path / f"t-{path.stem}").exists()
        r = cli("sae", "features", path, "--sae", tmp_path / "sae", "--out", tmp_path / f"f-{path.stem}",
                "--device", "cpu")
        assert r.exit_code == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, (path, r)
        assert msg in r.stderr and not (tmp_path / f"f-{path.stem}").exists()
    # the SAE's layer is not in the store
    r = cli("sae", "features", other_layer, "--sae", tmp_path / "sae", "--out", tmp_path / "f", "--device", "cpu")
    assert r.exit_code == 2 and "--layer:" in r.stderr and "no layer 'embedding'" in r.stderr
    assert not (tmp_path / "f").exists()


@pytest.mark.slow
def test_names_end_to_end_with_an_openai_format_checkpoint(cli, tmp_path):
    """Train an SAE on a 64-wide embedding store, compute feature sharing, then name the latents with the text tower
    of a weights file in OpenAI's layout (no clipgen run): names, the cache and the labelled features appear."""
    import torch

    from clipgen.models.registry import create_model

    store = make_store(tmp_path / "s.h5", width=64, provenance={"run": {"mixture": {"test_domain": "clipart"}}})[0]
    out = tmp_path / "sae"
    assert _train(cli, store, out).exit_code == 0
    assert cli("sae", "features", store, "--sae", out, "--device", "cpu").exit_code == 0
    model, _, _ = create_model("RN-tiny")
    weights = tmp_path / "openai.pt"
    torch.save({**{k: v.half() for k, v in model.state_dict().items()}, "input_resolution": torch.tensor(64)},
               weights)
    vocab = tmp_path / "v.txt"
    vocab.write_text("axe\nbanana\nbed\naircraft carrier\n")
    r = cli("sae", "names", out, "--checkpoint", weights, "--model", "RN-tiny", "--vocab", vocab, "--top-k", "2",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "256 latents, 4 terms" in r.stdout and f"names: {out / 'names' / 'names.json'}" in r.stdout
    doc = json.loads((out / "names" / "names.json").read_text())
    assert len(doc["latents"]) == 256 and doc["model"]["checkpoint"]["sha256"] == doc["settings"]["checkpoint_sha256"]
    assert len(list((out / "names" / "text-embeddings").glob("*.npz"))) == 1
    nl = json.loads((out / "features" / "named-latents.json").read_text())  # existing features got labelled
    assert sorted(nl["classes"]) == ["axe", "banana"]
    r = cli("sae", "features", store, "--sae", out, "--device", "cpu", "--force", "--names", tmp_path / "none")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--names:" in r.stderr
    r = cli("sae", "names", out, "--checkpoint", weights, "--model", "RN-tiny", "--vocab", vocab, "--top-k", "2",
            "--device", "cpu")
    assert r.exit_code == 0 and "already complete" in r.stdout
    r = cli("sae", "names", out, "--vocab", vocab, "--device", "cpu")  # the store names no model
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--model-dir" in r.stderr
    layer = make_store(tmp_path / "l.h5", width=16, layer="layer4")[0]
    assert _train(cli, layer, tmp_path / "sae4", "--layer", "layer4").exit_code == 0
    r = cli("sae", "names", tmp_path / "sae4", "--checkpoint", weights, "--model", "RN-tiny", "--device", "cpu")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "layer 'layer4'" in r.stderr
    assert "joint image-text space" in r.stderr


@pytest.mark.slow
def test_second_writer_of_a_run_folder_is_refused(cli, store, tmp_path):
    import os
    import signal

    from tests.test_locks import _holder

    out = tmp_path / "sae"
    p = _holder(out)
    try:
        r = _train(cli, store, out)
        assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
        assert r.stderr.startswith(f"error: {out} is being written by another process (pid {p.pid})")
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert not out.exists()
    assert _train(cli, store, out).exit_code == 0  # the dead holder's lock is gone with it


def test_real_full_disk_is_one_line_naming_the_checkpoint(cli, store, tmp_path):
    """On a 24 KiB tmpfs the first checkpoint does not fit: one line, exit 2 (torch alone reports a RuntimeError
    without the cause)."""

    with small_disk(tmp_path, "24k") as mnt:
        r = _train(cli, store, mnt / "sae")
        assert r.exit_code == 2, r.output
        assert r.stderr.splitlines()[-1].startswith(f"error: disk full: no space left on the device while writing "
                                                    f"{mnt}/sae/checkpoints/step_"), r.stderr
        assert "Traceback" not in r.output
        assert not [p for p in mnt.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_json_output_and_progress_option(cli, store, tmp_path):
    """--json: stdout is one JSON document with the key numbers and paths; the human summary goes to stderr.
    --no-progress is accepted by both commands; the sharing table keeps full domain names."""
    out = tmp_path / "sae"
    r = _train(cli, store, out, "--json", "--no-progress")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    metrics = json.loads((out / "metrics.json").read_text())
    assert doc["sae"] == str(out / "sae.pt") and doc["already_complete"] is False
    assert doc["steps"] > 0 and doc["train"]["fve"] == pytest.approx(metrics["final"]["fve"])
    assert "variance explained" in r.stderr and "variance explained" not in r.stdout

    r = cli("sae", "features", store, "--sae", out, "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    header = next(line for line in r.stdout.splitlines() if "sketch" in line and "clipart" in line)
    assert header.split() == ["clipart", "real", "sketch"]  # not cut to 6 characters
    r = cli("sae", "features", store, "--sae", out, "--device", "cpu", "--json", "--force")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    res = json.loads((out / "features" / "feature-sharing.json").read_text())
    assert doc["results"] == str(out / "features" / "feature-sharing.json")
    assert doc["test_domain"] == "clipart" and doc["score"] == pytest.approx(res["score"])
    assert doc["mean"]["clipart"]["sketch"] == pytest.approx(doc["mean"]["sketch"]["clipart"])
    assert "score(clipart)" in r.stderr


def test_train_errors_of_a_field_name_its_argument_or_flag(cli, store, tmp_path):
    """Library errors name config fields; the CLI shows the argument (STORE for the field stores) or the flag."""
    wide = make_store(tmp_path / "w.h5", width=20, provenance={})[0]
    r = cli("sae", "train", store, wide, "--out", tmp_path / "x", "--device", "cpu")
    assert r.exit_code == 2 and r.stderr.startswith("error: STORE: layer 'embedding' has different widths")
    r = cli("sae", "train", store, "--out", tmp_path / "x", "--split", "val", "--device", "cpu")
    assert r.exit_code == 2 and r.stderr.startswith(f"error: --split: {store}: no rows of split 'val'")
    r = cli("sae", "train", store, "--out", tmp_path / "x", "--val-store", wide, "--device", "cpu")
    assert r.exit_code == 2 and r.stderr.startswith(f"error: --val-store: {wide}: layer 'embedding' is 20 wide")
    r = cli("sae", "train", store, "--out", tmp_path / "x", "--val-fraction", "1", "--device", "cpu")
    assert r.exit_code == 2 and r.stderr == "error: --val-fraction: must be in [0, 1), got 1.0\n"
    assert not (tmp_path / "x").exists()
