"""``clipgen circuits`` end to end on the tiny model: compute -> info -> nodes -> similarity -> plot, merge, and
one-line errors with exit code 2."""

import json

import h5py
import networkx as nx
import pytest

from clipgen.circuits.store import open_circuits
from tests._circuits_helpers import SMALL, assert_same_entries
from tests.conftest import make_random_run, small_disk

pytest_plugins = ["tests._fixtures_circuits"]  # circuits_run_dir, small_circuits


def _compute_args(run, data, out, **kw):
    opts = {"classes": SMALL["classes"], "domains": SMALL["domains"], "steps": SMALL["steps"],
            "samples-per-class": SMALL["samples_per_class"], "device": "cpu", **kw}
    args = ["circuits", "compute", "--model-dir", run, "--data", data, "--out", out, "--no-progress"]
    for k, v in opts.items():
        args += [f"--{k}", str(v)]
    return args


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in r.output


def test_help_lists_every_command(cli):
    r = cli("circuits", "--help")
    assert r.exit_code == 0
    for name in ("compute", "merge", "info", "nodes", "similarity", "plot"):
        assert name in r.stdout


@pytest.mark.slow
def test_compute_info_nodes_similarity_plot(cli, circuits_run_dir, synth_root, small_circuits, tmp_path):
    out = tmp_path / "c.h5"
    r = cli(*_compute_args(circuits_run_dir, synth_root, out))
    assert r.exit_code == 0, r
    assert "4 (domain, class) entries, 4 computed now" in r.stdout
    assert_same_entries(out, small_circuits)  # the CLI computes what the library computes
    cfg = json.loads(out.with_name("c.config.json").read_text())
    assert cfg["command"] == "circuits compute" and cfg["config"]["steps"] == 2 and cfg["config"]["classes"] == \
        "axe,cello"
    r = cli(*_compute_args(circuits_run_dir, synth_root, out))  # the same command again: nothing to do
    assert r.exit_code == 0 and "(already complete)" in r.stdout

    r = cli("circuits", "info", out)
    assert r.exit_code == 0, r
    assert "(complete)" in r.stdout and "entries: 4 of 4 complete; per domain clipart 2, quickdraw 2" in r.stdout
    assert "model RN-tiny epoch 2" in r.stdout and "1 held out: axe" in r.stdout
    r = cli("circuits", "info", out, "--json")
    info = json.loads(r.stdout)
    assert info["entries"]["complete"] == 4 and info["settings"]["steps"] == 2 and info["model"] == "RN-tiny"

    r = cli("circuits", "nodes", out, "--no-progress", "--subsets", "id")
    assert r.exit_code == 0, r
    nodes = json.loads((tmp_path / "c-nodes" / "node_similarity.json").read_text())
    with open_circuits(out) as cf:  # Jaccard of the stored selections, by hand, for one layer and class
        a, b = (set(cf.read(d, 66).selected["resblock3"].tolist()) for d in ("clipart", "quickdraw"))
    row = [x for x in nodes["results"] if x["layer"] == "resblock3" and x["subset"] == "id"]
    assert len(row) == 1 and row[0]["n_classes"] == 1
    assert row[0]["mean"] == pytest.approx(len(a & b) / len(a | b))
    assert (tmp_path / "c-nodes" / "nodes_pairs_id.png").stat().st_size > 0
    # the summary: the highlighted domain's mean similarity (over layers) vs the other pairs (none here)
    layer_means = [x["mean"] for x in nodes["results"] if x["subset"] == "id"]
    assert f"id classes, mean over layers: {sum(layer_means) / len(layer_means):.4f} vs n/a" in r.stdout
    r = cli("circuits", "nodes", out, "--no-progress", "--subsets", "id", "--force", "--json")
    assert r.exit_code == 0, r
    doc = json.loads(r.stdout)
    assert doc["out"] == str(tmp_path / "c-nodes") and "node_similarity.json" in doc["files"]
    assert doc["highlight"]["domain"] == "quickdraw"
    assert doc["highlight"]["subsets"]["id"]["with"] == pytest.approx(sum(layer_means) / len(layer_means))
    assert doc["highlight"]["subsets"]["id"]["without"] is None

    r = cli("circuits", "similarity", out, "--no-progress", "--metrics", "jaccard,wl_h2", "--subsets", "all")
    assert r.exit_code == 0, r
    sim = json.loads((tmp_path / "c-similarity" / "circuit_similarity.json").read_text())
    assert sim["metrics"] == ["jaccard", "wl_h2"]
    assert (tmp_path / "c-similarity" / "circuits_wl_h2_all.png").is_file()
    jac = sim["similarity"]["jaccard"]["all"]["clipart/quickdraw"]
    assert f"jaccard, all classes: {jac:.4f} vs n/a" in r.stdout
    r = cli("circuits", "similarity", out, "--no-progress", "--metrics", "jaccard", "--subsets", "all", "--force",
            "--json")
    assert r.exit_code == 0, r
    doc = json.loads(r.stdout)
    assert doc["highlight"]["metrics"]["jaccard"]["all"] == {"with": pytest.approx(jac), "without": None}

    r = cli("circuits", "plot", out, "--domain", "q", "--class", "cello", "--out", tmp_path / "fig.png")
    assert r.exit_code == 0, r
    assert (tmp_path / "fig.png").stat().st_size > 0 and (tmp_path / "fig.dot").is_file()
    g = nx.read_graphml(tmp_path / "fig.graphml")
    with open_circuits(out) as cf:
        res = cf.read("quickdraw", 66)
    assert g.number_of_nodes() == sum(len(res.selected[n]) for n in res.layers[1:])
    r = cli("circuits", "plot", out, "--domain", "q", "--class", "cello", "--out", tmp_path / "fig.png")
    _one_line_error(r, "already exists")


@pytest.mark.slow
def test_a_vit_end_to_end(cli, synth_root, tmp_path):
    """A randomly initialised ViT-tiny run: compute -> info -> nodes -> similarity -> plot."""
    vit = make_random_run(tmp_path / "vit", model="ViT-tiny", epochs=(0,))
    out = tmp_path / "v.h5"
    r = cli(*_compute_args(vit, synth_root, out))
    assert r.exit_code == 0, r
    assert "4 (domain, class) entries, 4 computed now" in r.stdout
    with open_circuits(out) as cf:
        assert cf.layers == ["input", "resblock1", "resblock2", "resblock3", "resblock4", "proj"]
        assert cf.settings["family"] == "vit" and cf.settings["nodes"] == "channels"
        res = cf.read("quickdraw", 66)
    assert res.nodes["resblock2"].shape == (128,) and res.edges["resblock3"].shape == (13, 13)
    r = cli("circuits", "info", out)
    assert r.exit_code == 0 and "layers: input(3) resblock1(128)" in r.stdout and "proj(64)" in r.stdout, r
    r = cli("circuits", "nodes", out, "--no-progress", "--subsets", "all")
    assert r.exit_code == 0, r
    nodes = json.loads((tmp_path / "v-nodes" / "node_similarity.json").read_text())
    assert {x["layer"] for x in nodes["results"]} == {"resblock1", "resblock2", "resblock3", "resblock4", "proj"}
    r = cli("circuits", "similarity", out, "--no-progress", "--metrics", "jaccard,wl_h1", "--subsets", "all")
    assert r.exit_code == 0, r
    assert (tmp_path / "v-similarity" / "circuit_similarity.json").is_file()
    r = cli("circuits", "plot", out, "--domain", "q", "--class", "cello", "--out", tmp_path / "vfig.png")
    assert r.exit_code == 0, r
    g = nx.read_graphml(tmp_path / "vfig.graphml")
    assert g.number_of_nodes() == sum(len(res.selected[n]) for n in res.layers[1:]) == 13 * 4 + 7

    heads = tmp_path / "h.h5"  # attention heads as nodes: 2 heads + the bypassing stream per block
    r = cli(*_compute_args(vit, synth_root, heads, nodes="heads", **{"node-fraction": 0.5}))
    assert r.exit_code == 0, r
    with open_circuits(heads) as cf:
        assert cf.layers == ["input", "heads1", "heads2", "heads3", "heads4", "proj"]
        assert cf.settings["nodes"] == "heads" and cf.settings["family"] == "vit"
        res = cf.read("clipart", 11)
    assert res.nodes["heads2"].shape == (3,) and res.edges["heads3"].shape == (2, 2)
    r = cli("circuits", "similarity", heads, "--no-progress", "--metrics", "jaccard", "--subsets", "all")
    assert r.exit_code == 0, r


@pytest.mark.slow
def test_shards_and_merge(cli, circuits_run_dir, synth_root, small_circuits, tmp_path):
    out = tmp_path / "c.h5"
    for i in (0, 1):
        r = cli(*_compute_args(circuits_run_dir, synth_root, out, shard=f"{i}/2"))
        assert r.exit_code == 0, r
    shards = [tmp_path / "c.shard-0-of-2.h5", tmp_path / "c.shard-1-of-2.h5"]
    r = cli("circuits", "info", shards[0])
    assert r.exit_code == 0 and "shard 0/2 (entries 0..2 of 4)" in r.stdout
    _one_line_error(cli("circuits", "nodes", shards[0]), "is shard 0/2", "clipgen circuits merge")
    _one_line_error(cli("circuits", "merge", shards[1], "--out", tmp_path / "m.h5"), "gap:", "shard(s) 0 of 2")
    r = cli("circuits", "merge", *shards, "--out", tmp_path / "m.h5")
    assert r.exit_code == 0 and "merged 2 shard(s)" in r.stdout, r
    assert_same_entries(tmp_path / "m.h5", small_circuits)
    assert json.loads((tmp_path / "m.config.json").read_text())["command"] == "circuits merge"


@pytest.mark.slow
def test_one_line_errors(cli, circuits_run_dir, synth_root, small_circuits, tmp_path):
    out = tmp_path / "c.h5"
    _one_line_error(cli(*_compute_args(circuits_run_dir, synth_root, out, classes="zebraa")),
                    "--classes: unknown DomainNet class 'zebraa'")
    _one_line_error(cli(*_compute_args(circuits_run_dir, synth_root, out, domains="cx")), "--domains")
    _one_line_error(cli(*_compute_args(circuits_run_dir, synth_root, out, classes="teddy-bear", domains="cp")),
                    "class 'teddy-bear' (303) has no test images in painting")
    _one_line_error(cli(*_compute_args(circuits_run_dir, synth_root, out, nodes="heads")), "--nodes",
                    "a ResNet's nodes are its channels")
    _one_line_error(cli(*_compute_args(circuits_run_dir, synth_root, out, nodes="neurons")), "--nodes",
                    "unknown node kind 'neurons'")
    copy = tmp_path / "copy.h5"
    copy.write_bytes(small_circuits.read_bytes())
    _one_line_error(cli(*_compute_args(circuits_run_dir, synth_root, copy, steps=3)), "fingerprint mismatch",
                    "settings.steps", "--force")
    r = cli(*_compute_args(circuits_run_dir, synth_root, copy, steps=3, classes="axe", domains="q"), "--force")
    assert r.exit_code == 0, r
    with h5py.File(copy, "r") as f:
        assert json.loads(f.attrs["settings"])["steps"] == 3 and json.loads(f.attrs["plan"]) == [["quickdraw", 11]]
    _one_line_error(cli("circuits", "info", tmp_path / "none.h5"), "none.h5: circuits file not found")
    _one_line_error(cli("circuits", "plot", small_circuits, "--domain", "sketch", "--class", "axe",
                        "--out", tmp_path / "x.png"), "--domain", "sketch")
    _one_line_error(cli("circuits", "plot", small_circuits, "--domain", "c", "--class", "banana",
                        "--out", tmp_path / "x.png"), "--class", "error: --class: ")
    r = cli("circuits", "compute", "--model-dir", circuits_run_dir, "--data", synth_root)
    assert r.exit_code == 2 and "--out" in r.stderr


@pytest.mark.slow
def test_compute_from_a_checkpoint_file_with_model(cli, circuits_run_dir, synth_root, small_circuits, tmp_path):
    """A weights file not trained by clipgen (here the run's last epoch as a plain OpenAI-layout state dict):
    --checkpoint FILE --model NAME computes the same circuits and records the file's sha256."""
    import hashlib

    import numpy as np
    import torch

    sd = torch.load(circuits_run_dir / "checkpoints" / "epoch_2.pt", map_location="cpu")["state_dict"]
    ck = tmp_path / "weights.pt"
    torch.save({k.removeprefix("module."): v for k, v in sd.items()}, ck)
    out = tmp_path / "c.h5"
    args = _compute_args(circuits_run_dir, synth_root, out)
    i = args.index("--model-dir")
    args[i:i + 2] = ["--checkpoint", ck, "--model", "RN-tiny"]
    r = cli(*args)
    assert r.exit_code == 0, r
    with open_circuits(out) as a, open_circuits(small_circuits) as b:
        prov = a.provenance
        assert prov["checkpoint"]["sha256"] == hashlib.sha256(ck.read_bytes()).hexdigest()
        assert prov["run_dir"] is None and prov["model"] == "RN-tiny"
        ea, eb = a.read("quickdraw", 66), b.read("quickdraw", 66)
        for name in eb.nodes:
            np.testing.assert_allclose(ea.nodes[name], eb.nodes[name], rtol=1e-6, atol=1e-9)


# -- failures: disk full, a second writer, a killed assembly ----------------------------------------------------

@pytest.mark.slow
def test_disk_full_is_one_line_keeps_finished_entries_and_resumes(cli, circuits_run_dir, synth_root, tmp_path,
                                                                   monkeypatch):
    import builtins
    import errno

    import clipgen.circuits.store as S

    seen = []

    class Full:  # the second entry's file: a few bytes reach the disk, then the device is full
        def __init__(self, path):
            self.f = builtins.open(path, "wb")  # noqa: SIM115 - closed by __exit__

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(bytes(data[:100]))
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(path, mode="r", *a, **kw):
        seen.append(path)
        return Full(path) if len(seen) == 2 else builtins.open(path, mode, *a, **kw)

    monkeypatch.setattr(S, "open", fake_open, raising=False)
    out = tmp_path / "c.h5"
    r = cli(*_compute_args(circuits_run_dir, synth_root, out))
    _one_line_error(r, "error: disk full: no space left on the device while writing", f"{out}.parts/")
    parts = sorted(p.name for p in (tmp_path / "c.h5.parts").iterdir())
    assert len(parts) == 1 and not parts[0].startswith(".")  # the first entry kept, no temporary file
    monkeypatch.undo()
    r = cli(*_compute_args(circuits_run_dir, synth_root, out))
    assert r.exit_code == 0, r.stderr
    assert open_circuits(out).summary()["entries"]["complete"] == 4


@pytest.mark.slow
def test_real_full_disk_is_one_line_without_hdf5_noise(circuits_run_dir, synth_root, tmp_path):
    """On a 64 KiB tmpfs (the header and one entry fit): a clean exit 2, not a crash with HDF5's error stack."""
    import os
    import subprocess
    import sys

    with small_disk(tmp_path, "64k") as mnt:
        args = [str(a) for a in _compute_args(circuits_run_dir, synth_root, mnt / "c.h5")]
        r = subprocess.run([sys.executable, "-m", "clipgen.cli.main", *args], capture_output=True, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
        assert r.returncode == 2, r.stderr[-3000:]
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: disk full: no space left on the device while "
                                                       f"writing {mnt}/c.h5"), r.stderr[-3000:]
        assert not [p for p in mnt.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_second_writer_refused_and_stale_assembly_temporaries_removed(cli, circuits_run_dir, synth_root,
                                                                      tmp_path):
    import os
    import signal

    from tests.test_locks import _holder

    out = tmp_path / "c.h5"
    p = _holder(out)
    try:
        _one_line_error(cli(*_compute_args(circuits_run_dir, synth_root, out)),
                        f"{out} is being written by another process (pid {p.pid})")
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert sorted(x.name for x in tmp_path.iterdir()) == [".c.h5.lock"]  # the dead holder's; nothing else
    stale = tmp_path / ".c.h5.x1y2z3w4.tmp"  # what a kill during the final assembly leaves
    stale.write_bytes(b"\0" * 1024)
    r = cli(*_compute_args(circuits_run_dir, synth_root, out))
    assert r.exit_code == 0, r.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c.config.json", "c.h5"]
