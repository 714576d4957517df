"""The circuits file: schema, the reader API, resume after a crash, refusals (merging shards: test_circuits_merge)."""

import json
import shutil

import h5py
import numpy as np
import pytest

from clipgen.artifacts import sha256_file
from clipgen.circuits import store as S
from clipgen.circuits.attribution import CircuitResult, n_selected
from clipgen.circuits.compute import run_circuits
from clipgen.errors import ClipgenError
from tests._circuits_helpers import assert_same_entries, small_config

pytest_plugins = ["tests._fixtures_circuits"]  # circuits_run_dir, small_circuits

LAYERS = ["input", "act1", "act2", "act3", "avgpool", "resblock1", "resblock2", "resblock3", "resblock4", "attnpool"]
CHANNELS = [3, 8, 8, 16, 16, 64, 128, 256, 512, 64]
PLAN = [("clipart", 11), ("quickdraw", 11), ("clipart", 66), ("quickdraw", 66)]  # class-major, held-out first


@pytest.mark.slow
def test_schema_of_a_computed_file(small_circuits, circuits_run_dir, synth_root):
    with h5py.File(small_circuits, "r") as f:
        a = f.attrs
        assert a["format"] == "clipgen-circuits" and a["schema_version"] == "1.0" and bool(a["complete"])
        prov, settings = json.loads(a["provenance"]), json.loads(a["settings"])
        assert a["fingerprint"] == S.fingerprint(prov, settings)
        assert [la["name"] for la in json.loads(a["layers"])] == LAYERS
        assert [la["channels"] for la in json.loads(a["layers"])] == CHANNELS
        assert json.loads(a["domains"]) == ["clipart", "quickdraw"]
        assert json.loads(a["classes"]) == {"11": "axe", "66": "cello"} and json.loads(a["held_out"]) == [11]
        assert [tuple(x) for x in json.loads(a["plan"])] == PLAN and json.loads(a["absent"]) == [] and a["shard"] == ""
        assert settings["steps"] == 2 and settings["rule"] == "left" and settings["samples_per_class"] == 3
        assert settings["n_templates"] == 86 and settings["precision"] == "fp32" and settings["seed"] == 42
        assert prov["model"] == "RN-tiny" and prov["epoch"] == 2
        assert prov["checkpoint"]["sha256"] == sha256_file(circuits_run_dir / "checkpoints" / "epoch_2.pt")
        assert [s["domain"] for s in prov["data"]["sources"]] == ["clipart", "quickdraw"]
        emb = f["text/embedding"][...]
        assert emb.shape == (2, 64) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
        assert f["text/label"][...].tolist() == [11, 66] and len(f["text/template"]) == 86
        assert sorted(f["entries"]) == ["clipart", "quickdraw"]
        for d, lab in PLAN:
            g = f[f"entries/{d}/{lab}"]
            assert g.attrs["complete"] and g.attrs["n_images"] == 3 and g.attrs["domain"] == d
            assert g.attrs["label"] == lab and g.attrs["class_name"] == {11: "axe", 66: "cello"}[lab]
            for name, c in zip(LAYERS, CHANNELS, strict=True):
                assert g[f"nodes/{name}"].shape == (c,) and g[f"nodes/{name}"].dtype == np.float32
                sel = g[f"selected/{name}"][...]
                assert sel.dtype == np.int64 and len(sel) == n_selected(c, 0.1) and len(set(sel.tolist())) == len(sel)
                s = np.abs(g[f"nodes/{name}"][...])
                assert s[sel].min() >= np.delete(s, sel).max(initial=0)  # the top |score| channels
            for up, down in zip(LAYERS[:-1], LAYERS[1:], strict=True):
                assert g[f"edges/{down}"].shape == (len(g[f"selected/{down}"]), len(g[f"selected/{up}"]))
            assert "edges/input" not in g
            paths = g["image_path"].asstr()[...]
            assert len(paths) == 3 and all(p.startswith(str(synth_root.resolve())) for p in paths)
            lines = (synth_root / f"{d}_test.txt").read_text().splitlines()
            for p, ln in zip(paths, g["image_line"][...], strict=True):
                rel, label = lines[ln - 1].split()
                assert p.endswith(rel) and int(label) == lab
            assert g["metric"].shape == (3,) and np.all(np.abs(g["metric"][...]) <= 1)
    assert not S.parts_dir(small_circuits).exists()
    cfg = json.loads(small_circuits.with_name("small.config.json").read_text())
    assert cfg["command"] == "circuits compute" and cfg["config"]["classes"] == "axe,cello"


@pytest.mark.slow
def test_reader_api(small_circuits, circuits_run_dir):
    with S.open_circuits(small_circuits) as cf:
        assert cf.path == small_circuits and cf.layers == LAYERS and cf.domains == ["clipart", "quickdraw"]
        assert cf.classes == {11: "axe", 66: "cello"} and cf.held_out == [11]
        assert cf.settings["node_fraction"] == 0.1 and cf.provenance["model"] == "RN-tiny"
        assert cf.entries() == PLAN and cf.complete and cf.shard is None
        r = cf.read("quickdraw", 66)
        assert isinstance(r, CircuitResult) and r.layers == LAYERS
        with h5py.File(small_circuits, "r", locking=False) as f:
            g = f["entries/quickdraw/66"]
            for name in LAYERS:
                np.testing.assert_array_equal(r.nodes[name], g[f"nodes/{name}"][...])
                np.testing.assert_array_equal(r.selected[name], g[f"selected/{name}"][...])
            for name in LAYERS[1:]:
                np.testing.assert_array_equal(r.edges[name], g[f"edges/{name}"][...])
            np.testing.assert_array_equal(r.metric, g["metric"][...])
        assert set(r.timings) == {"nodes", "edges"}
        assert cf.n_images("clipart", 11) == 3 and len(cf.image_paths("clipart", 11)) == 3
        with pytest.raises(ClipgenError, match=r"small\.h5: no circuit for class 'axe' \(11\) in domain sketch "
                                               r"\(not part of this file\)"):
            cf.read("sketch", 11)
        s = cf.summary()
        assert s["entries"] == {"planned": 4, "complete": 4, "per_domain": {"clipart": 2, "quickdraw": 2},
                                "absent": []}
        assert s["images_per_entry"] == {"min": 3, "max": 3, "total": 12} and s["n_classes"] == 2


@pytest.mark.slow
def test_resume_after_a_crash_is_identical(small_circuits, circuits_run_dir, synth_root, tmp_path):
    out = tmp_path / "c.h5"
    cfg = small_config(out, circuits_run_dir, synth_root)
    with pytest.raises(S.SimulatedCrash):
        run_circuits(cfg, progress=False, crash_after=2)
    parts = S.parts_dir(out)
    assert sorted(p.name for p in parts.iterdir()) == ["clipart-011.h5", "quickdraw-011.h5"]
    with h5py.File(out, "r") as f:
        assert not bool(f.attrs["complete"]) and "entries" not in f
    assert not out.with_name("c.config.json").exists()  # the config goes beside the finished file
    with pytest.raises(ClipgenError, match=r"incomplete circuits file \(2 of 4 entries computed\)"):
        S.open_circuits(out)
    with S.open_circuits(out, allow_incomplete=True) as cf:
        assert cf.entries() == PLAN[:2] and not cf.complete
        assert cf.read("quickdraw", 11).layers == LAYERS
        with pytest.raises(ClipgenError, match=r"not computed yet"):
            cf.read("clipart", 66)
    # a half-written part and a part of another computation are discarded on resume
    (parts / ".clipart-066.h5.tmp").write_bytes(b"half")
    shutil.copy(parts / "clipart-011.h5", parts / "clipart-066.h5")
    notes = []
    run = run_circuits(cfg, progress=False, note=notes.append)
    assert run.resumed_from == 2 and run.computed == 2 and any("resuming, 2 of 4" in n for n in notes)
    assert not parts.exists() and out.with_name("c.config.json").is_file()
    assert_same_entries(out, small_circuits)
    with S.open_circuits(out) as cf:
        assert len(cf.provenance["resumed"]) == 1
    again = run_circuits(cfg, progress=False)
    assert again.already_complete and again.computed == 0


@pytest.mark.slow
def test_resume_refusals(small_circuits, circuits_run_dir, synth_root, tmp_path):
    out = tmp_path / "c.h5"
    shutil.copy(small_circuits, out)
    with pytest.raises(ClipgenError, match=r"c\.h5: fingerprint mismatch: it was computed with a different "
                                           r"settings\.steps; pass --force"):
        run_circuits(small_config(out, circuits_run_dir, synth_root, steps=3), progress=False)
    with pytest.raises(ClipgenError, match=r"fingerprint mismatch: .* different checkpoint\.sha256, epoch;"):
        run_circuits(small_config(out, circuits_run_dir, synth_root, epoch=1), progress=False)
    with pytest.raises(ClipgenError, match=r"different list of \(domain, class\) entries \(4 entries, this command "
                                           r"plans 2\)"):
        run_circuits(small_config(out, circuits_run_dir, synth_root, classes="axe"), progress=False)
    out.write_bytes(b"not hdf5")
    with pytest.raises(ClipgenError, match="not a readable circuits file; pass --force"):
        run_circuits(small_config(out, circuits_run_dir, synth_root), progress=False)


def _hand_result(seed=0):
    rng = np.random.default_rng(seed)
    nodes = {n: rng.normal(size=c).astype(np.float32) for n, c in zip(LAYERS[:3], (3, 4, 5), strict=True)}
    sel = {n: np.argsort(-np.abs(v))[:2].astype(np.int64) for n, v in nodes.items()}
    edges = {n: rng.normal(size=(2, 2)).astype(np.float32) for n in LAYERS[1:3]}
    return CircuitResult(LAYERS[:3], nodes, sel, edges, rng.normal(size=2).astype(np.float32), {"nodes": 0.1})


def test_written_by_hand_and_refused_headers(tmp_path):
    header = S.CircuitsHeader(provenance={"model": "m"}, settings={"steps": 1},
                              layers=[{"name": n, "channels": c, "shape": [c]} for n, c in
                                      zip(LAYERS[:3], (3, 4, 5), strict=True)],
                              domains=["sketch"], classes={7: "x"}, held_out=[], plan=[("sketch", 7)])
    out = tmp_path / "h.h5"
    S.write_header(out, header)
    S.write_entry(out, header, "sketch", 7, _hand_result(), image_paths=["/a.png", "/b.png"], image_line=[1, 2])
    assert S.verified_entries(out, header) == {("sketch", 7)}
    S.assemble(out, header)
    with S.open_circuits(out) as cf:
        r = cf.read("sketch", 7)
        want = _hand_result()
        for n in want.layers:
            np.testing.assert_array_equal(r.nodes[n], want.nodes[n])
        np.testing.assert_array_equal(r.edges["act2"], want.edges["act2"])
        assert cf.image_paths("sketch", 7) == ["/a.png", "/b.png"] and cf.n_images("sketch", 7) == 2
    with pytest.raises(ClipgenError, match="layers"):
        bad = _hand_result()
        bad.layers = ["input", "act1"]
        S.write_entry(out, header, "sketch", 7, bad, image_paths=[], image_line=[])
    # refusals of the reader
    with pytest.raises(ClipgenError, match=r"nope\.h5: circuits file not found"):
        S.open_circuits(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(ClipgenError, match=r"text\.h5: not an HDF5 file"):
        S.open_circuits(tmp_path / "text.h5")
    with h5py.File(tmp_path / "act.h5", "w") as f:
        f.attrs["format"] = "clipgen-activations"
        f.attrs["schema_version"] = "1.0"
    with pytest.raises(ClipgenError, match=r"act\.h5: not a clipgen circuits file \(format 'clipgen-activations'"):
        S.open_circuits(tmp_path / "act.h5")
    future = tmp_path / "future.h5"
    shutil.copy(out, future)
    with h5py.File(future, "a") as f:
        f.attrs["schema_version"] = "2.0"
    with pytest.raises(ClipgenError, match=r"unsupported circuits schema version: found 2\.0.*upgrade clipgen"):
        S.open_circuits(future)


def test_files_from_before_the_node_kind_keep_their_fingerprint():
    """Settings written before ViTs had no family/nodes: a ResNet channels file of today has the same fingerprint
    (it resumes and is skipped as complete); another node kind or family does not."""
    prov = {"model": "RN-tiny", "model_config": {}, "checkpoint": {"sha256": "ab"}, "epoch": 1, "data": {"sources": []}}
    old = {"steps": 2, "rule": "left"}
    assert S.fingerprint(prov, {"family": "resnet", "nodes": "channels", **old}) == S.fingerprint(prov, old)
    assert S.fingerprint(prov, {"family": "vit", "nodes": "channels", **old}) != S.fingerprint(prov, old)
    assert S.fingerprint(prov, {"family": "vit", "nodes": "heads", **old}) != S.fingerprint(
        prov, {"family": "vit", "nodes": "channels", **old})
