import numpy as np
import pytest
import torch

from clipgen.datasets import domainnet_records, load_image
from clipgen.errors import ClipgenError
from clipgen.evaluation.zeroshot import encode_images, predict_topk
from clipgen.runs import load_clip


@pytest.mark.slow
def test_encode_images_matches_direct_forward(random_run_dir, synth_root):
    m = load_clip(random_run_dir, 0)
    recs = domainnet_records(synth_root, ["sketch"], "test")[:5]
    f = encode_images(m.model, recs, m.preprocess, batch_size=2)
    with torch.no_grad():
        x = torch.stack([m.preprocess(load_image(r.path)) for r in recs])
        ref = torch.nn.functional.normalize(m.model.encode_image(x), dim=-1)
    torch.testing.assert_close(f, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(f.norm(dim=1), torch.ones(5))


def test_predict_topk_maps_to_labels_and_marks_skipped():
    w = torch.eye(3)  # class k points along axis k
    x = torch.tensor([[0.1, 0.9, 0.3], [0.8, 0.1, 0.5], [float("nan")] * 3])
    top = predict_topk(x, w, [11, 66, 308], k=5)
    assert top.shape == (3, 3)  # k is capped at the number of classes
    assert top[0].tolist() == [66, 308, 11] and top[1].tolist() == [11, 308, 66]
    assert (top[2] == -1).all()
    assert predict_topk(x[:2], w, np.array([1, 2, 3]), k=1).tolist() == [[2], [1]]


@pytest.mark.slow
def test_unreadable_image_in_a_worker_is_a_one_line_error(random_run_dir, synth_root, tmp_path):
    m = load_clip(random_run_dir, 0)
    recs = domainnet_records(synth_root, ["sketch"], "test")[:3]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    recs[1] = type(recs[1])(str(bad), recs[1].label, "sketch", "test", "sketch/x/bad.jpg")
    with pytest.raises(ClipgenError) as e:
        encode_images(m.model, recs, m.preprocess, batch_size=2, workers=1)
    assert str(e.value) == f"{bad}: corrupt or unreadable image (UnidentifiedImageError)"
    f = encode_images(m.model, recs, m.preprocess, batch_size=2, workers=1, on_error="skip")
    assert torch.isnan(f[1]).all() and not torch.isnan(f[[0, 2]]).any()
    with pytest.raises(ClipgenError, match="on_error: must be 'fail' or 'skip'"):
        encode_images(m.model, recs, m.preprocess, on_error="ignore")


@pytest.mark.slow
def test_topk_many_equals_the_labels_of_the_embeddings_and_holds_no_embeddings(random_run_dir, synth_root, tmp_path,
                                                                               monkeypatch):
    """Top-k labels computed batch by batch for two checkpoints: the same as predict_topk of the full (N, D)
    embeddings, skipped images -1; and nothing of shape (N, D) is ever allocated (memory O(N k) per checkpoint)."""
    import clipgen.evaluation.zeroshot as zs

    a, b = load_clip(random_run_dir, 0), load_clip(random_run_dir, 2)
    recs = domainnet_records(synth_root, ["sketch", "real"], "test")[:9]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    recs[4] = type(recs[4])(str(bad), recs[4].label, "sketch", "test", "sketch/x/bad.jpg")
    labels = [11, 13, 58, 66, 218, 300]
    rng = np.random.default_rng(0)
    ws = [torch.nn.functional.normalize(torch.as_tensor(rng.standard_normal((6, 64)), dtype=torch.float32), dim=-1)
          for _ in range(2)]
    want = [predict_topk(encode_images(m.model, recs, a.preprocess, batch_size=2, on_error="skip"), w, labels, 5)
            for m, w in ((a, ws[0]), (b, ws[1]))]
    shapes = []
    real_full = torch.full
    monkeypatch.setattr(torch, "full", lambda size, *x, **k: shapes.append(tuple(size)) or real_full(size, *x, **k))
    got = zs.topk_many([a.model, b.model], ws, labels, 5, recs, a.preprocess, batch_size=2, on_error="skip")
    for g, w_ in zip(got, want, strict=True):
        assert g.dtype == np.int64 and g.shape == (9, 5)
        np.testing.assert_array_equal(g, w_)
        assert (g[4] == -1).all() and (g[[0, 1, 2, 3, 5, 6, 7, 8]] >= 0).all()
    assert shapes == [(9, 5), (9, 5)]  # the labels of each checkpoint, never (9, 64) embeddings

