"""sae names: cosine naming by hand on a tiny CLIP, the text-embedding cache, refusals, names on feature sharing."""

import csv
import json

import numpy as np
import pytest
import torch

from clipgen.analysis.sae import SAEArch, SparseAutoencoder, save_sae
from clipgen.analysis.sae_names import (
    SaeNamesConfig,
    default_vocabulary,
    load_names,
    run_sae_names,
    shared_and_specific,
    similarity_matrix,
    top_names,
)
from clipgen.artifacts import sha256_file
from clipgen.errors import ClipgenError
from clipgen.runs import load_clip
from tests._fixtures_sae import make_store

TERMS = ["axe", "banana", "bed", "sketch", "painting", "aircraft carrier"]


def _text(run, terms, template="{}"):
    """Hand reference: normalised text embeddings straight from the model."""
    loaded = load_clip(run)
    with torch.no_grad():
        t = loaded.model.encode_text(loaded.tokenizer([template.format(x) for x in terms]))
    return torch.nn.functional.normalize(t, dim=-1).numpy().astype(np.float64)


@pytest.fixture
def setup(tmp_path, random_run_dir):
    """A store whose provenance names the random RN-tiny run, an SAE 'trained' on its embedding layer with
    latent 0 = the text embedding of 'banana' and latent 1 = -'axe' (+ noise elsewhere), and a vocabulary."""
    ck = random_run_dir / "checkpoints" / "epoch_2.pt"
    prov = {"run_dir": str(random_run_dir), "epoch": 2, "model": {"name": "RN-tiny"},
            "checkpoint": {"path": str(ck), "sha256": sha256_file(ck)}}
    store, _ = make_store(tmp_path / "s.h5", width=64, provenance=prov)
    t = _text(random_run_dir, TERMS)
    sae = SparseAutoencoder(SAEArch(d_in=64, d_sae=32), seed=1)
    with torch.no_grad():
        sae.W_dec[0] = torch.from_numpy(t[1]).float() * 3.0  # a scaled direction: the cosine ignores the scale
        sae.W_dec[1] = -torch.from_numpy(t[0]).float()
    run = tmp_path / "sae-run"
    save_sae(run / "sae.pt", sae, layer="embedding", train_config={"stores": [str(store)], "layer": "embedding"})
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(TERMS[:3]) + "\n\n" + "\n".join(TERMS[3:]) + "\naxe\n")  # a blank line, a repeat
    return run, vocab, t, sae.W_dec.detach().numpy().astype(np.float64)


@pytest.mark.slow
def test_names_equal_a_hand_computation(setup):
    run, vocab, t, dec = setup
    res = run_sae_names(SaeNamesConfig(sae=str(run), vocab=str(vocab), top_k=3, device="cpu"))
    assert res.out == run / "names" and not res.cached
    d = dec / np.linalg.norm(dec, axis=1, keepdims=True)
    ref = d @ t.T
    doc = json.loads((run / "names" / "names.json").read_text())
    assert doc["format"] == "clipgen-sae-names" and doc["vocabulary"]["terms"] == 6 and doc["top_k"] == 3
    for i, rec in enumerate(doc["latents"]):
        order = sorted(range(6), key=lambda j: (-ref[i, j], j))[:3]
        assert rec["names"] == [TERMS[j] for j in order]
        np.testing.assert_allclose(rec["similarities"], ref[i, order], atol=2e-6)
    assert doc["latents"][0]["names"][0] == "banana" and doc["latents"][0]["similarities"][0] == pytest.approx(1, 1e-5)
    assert "axe" not in doc["latents"][1]["names"]  # the opposite direction is the least similar term
    ck = doc["model"]["checkpoint"]
    assert ck["sha256"] == sha256_file(ck["path"]) and doc["model"]["epoch"] == 2
    rows = list(csv.DictReader((run / "names" / "names.csv").open()))
    assert len(rows) == 32 * 3 and rows[0] == {"latent": "0", "rank": "1", "name": "banana",
                                               "similarity": f"{ref[0, 1]:.6f}"}
    cfg = json.loads((run / "names" / "config.json").read_text())
    assert cfg["command"] == "sae names" and cfg["config"]["top_k"] == 3
    assert load_names(run / "names").names(0) == doc["latents"][0]["names"]


@pytest.mark.slow
def test_text_embeddings_are_cached_per_checkpoint_vocabulary_and_template(setup):
    run, vocab, _, _ = setup
    cfg = SaeNamesConfig(sae=str(run), vocab=str(vocab), device="cpu")
    first = run_sae_names(cfg)
    cache = sorted((run / "names" / "text-embeddings").glob("*.npz"))
    assert len(cache) == 1 and not first.cached
    again = run_sae_names(cfg)  # the same command: nothing to do
    assert again.already_complete
    with pytest.raises(ClipgenError, match="other settings.*--force"):
        run_sae_names(SaeNamesConfig(sae=str(run), vocab=str(vocab), top_k=2, device="cpu"))
    forced = run_sae_names(SaeNamesConfig(sae=str(run), vocab=str(vocab), top_k=2, device="cpu", force=True))
    assert forced.cached and forced.indices.shape == (32, 2)
    np.testing.assert_array_equal(forced.indices, first.indices[:, :2])
    tpl = run_sae_names(SaeNamesConfig(sae=str(run), vocab=str(vocab), template="a photo of a {}.", device="cpu",
                                       force=True))
    assert not tpl.cached and len(list((run / "names" / "text-embeddings").glob("*.npz"))) == 2


def test_other_layers_and_bad_input_are_refused(setup, tmp_path, random_run_dir):
    run, vocab, _, _ = setup
    bad = tmp_path / "layer4-sae"
    save_sae(bad / "sae.pt", SparseAutoencoder(SAEArch(d_in=64, d_sae=8)), layer="layer4")
    with pytest.raises(ClipgenError, match="layer 'layer4'.*not in CLIP's joint image-text space"):
        run_sae_names(SaeNamesConfig(sae=str(bad), vocab=str(vocab), device="cpu"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(ClipgenError, match="empty.txt: the vocabulary is empty"):
        run_sae_names(SaeNamesConfig(sae=str(run), vocab=str(empty), device="cpu"))
    with pytest.raises(ClipgenError, match="^template: "):
        run_sae_names(SaeNamesConfig(sae=str(run), vocab=str(vocab), template="a photo", device="cpu"))
    with pytest.raises(ClipgenError, match="^top_k: "):
        run_sae_names(SaeNamesConfig(sae=str(run), vocab=str(vocab), top_k=0, device="cpu"))
    ck1 = random_run_dir / "checkpoints" / "epoch_1.pt"  # not the checkpoint the store was extracted with
    with pytest.raises(ClipgenError, match="not the checkpoint whose embeddings the SAE was trained on"):
        run_sae_names(SaeNamesConfig(sae=str(run), vocab=str(vocab), checkpoint=str(ck1), model="RN-tiny",
                                     device="cpu"))
    assert not (run / "names").exists()


def test_default_vocabulary_is_what_clipgen_ships():
    v = default_vocabulary()
    assert len(v) == len(set(v))
    for term in ("aircraft carrier", "the eiffel tower", "tench", "goldfish", "sketch", "quickdraw", "image"):
        assert term in v, term
    assert 1000 < len(v) <= 345 + 1000 + 40


def test_similarity_and_ties_by_hand():
    dec = np.array([[2.0, 0.0], [1.0, 1.0]])
    text = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    s = similarity_matrix(dec, text)
    np.testing.assert_allclose(s, [[1, 0, 1], [2 ** -0.5, 2 ** -0.5, 2 ** -0.5]])
    idx, sim = top_names(s, 2)
    assert idx.tolist() == [[0, 2], [0, 1]]  # ties by term order


def test_shared_and_specific_by_hand():
    # 3 domains x 5 latents; counts out of 10, 10 and 0 images (the third domain is absent)
    hist = np.array([[9, 8, 0, 3, 0], [7, 0, 6, 2, 0], [0, 0, 0, 0, 0]])
    shared, spec = shared_and_specific(hist, np.array([10, 10, 0]), top=3, shared=4, specific=2)
    # domain 0 set: [0, 1, 3]; domain 1 set: [0, 2, 3]; shared 0 (mean 0.8) before 3 (0.25)
    assert shared == [0, 3] and spec == {0: [1], 1: [2]}


@pytest.mark.slow
def test_names_label_feature_sharing(setup, tmp_path):
    from clipgen.analysis.feature_sharing import FeatureSharingConfig, run_feature_sharing

    run, vocab, _, _ = setup
    run_sae_names(SaeNamesConfig(sae=str(run), vocab=str(vocab), device="cpu"))
    cfg = FeatureSharingConfig(store=str(run.parent / "s.h5"), sae=str(run), out=str(run / "features"),
                               test_domain="sketch", device="cpu")
    run_feature_sharing(cfg, progress=False)
    nl = json.loads((run / "features" / "named-latents.json").read_text())
    names = json.loads((run / "names" / "names.json").read_text())["latents"]
    assert sorted(nl["classes"]) == ["axe", "banana"]
    for rec in nl["classes"]["axe"]["shared"]:
        assert rec["names"] == names[rec["latent"]]["names"]
    assert (run / "features" / "named-latents" / "axe.png").read_bytes()[:4] == b"\x89PNG"
    fs = json.loads((run / "features" / "feature-sharing.json").read_text())
    assert fs["names"]["named_latents"] == "named-latents.json"
