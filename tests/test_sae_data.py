"""clipgen.analysis.sae.data: the training rows: array and streaming sources, rows read from stores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipgen.analysis.sae import (
    ArraySource,
    StreamingSource,
    run_train_sae,
)
from clipgen.errors import ClipgenError, ConfigFieldError
from tests._fixtures_sae import run_log, store_cfg


def test_streaming_source_epochs_and_resume():
    n, d = 1000, 3
    data = np.arange(n * d, dtype=np.float32).reshape(n, d)
    keep = np.ones(n, dtype=bool)
    keep[::7] = False
    reads = []

    def read(a, b):
        reads.append((a, b))
        return data[a:b]

    blocks = [(a, min(a + 64, n)) for a in range(0, n, 64)]
    src = StreamingSource(blocks, read, d, keep=keep, seed=3, buffer_rows=200)
    assert src.n_rows == int(keep.sum())
    bsz = 50
    full = [b.clone() for b in src.batches(0, 0, bsz)]
    assert len(full) == src.n_rows // bsz
    rows = torch.cat(full)[:, 0].numpy() / d
    assert len(np.unique(rows)) == len(rows) and keep[rows.astype(int)].all()
    assert all(b - a <= 64 for a, b in reads)  # contiguous block reads only
    # resuming mid-epoch gives exactly the remaining batches
    reads.clear()
    tail = [b.clone() for b in src.batches(0, 9, bsz)]
    assert len(tail) == len(full) - 9 and all(torch.equal(a, b) for a, b in zip(tail, full[9:], strict=True))
    assert len(reads) < len(blocks)  # buffers before the resume point are skipped without reading
    # another epoch: another order; same epoch again: same order
    again = torch.cat(list(b.clone() for b in src.batches(0, 0, bsz)))
    other = torch.cat(list(b.clone() for b in src.batches(1, 0, bsz)))
    assert torch.equal(again, torch.cat(full)) and not torch.equal(other, again)


def test_array_source_permutation():
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    src = ArraySource(x, seed=1)
    b = list(src.batches(0, 0, 6))
    assert len(b) == 3
    seen = torch.cat(b)[:, 0] / 2
    assert len(set(seen.tolist())) == 18
    assert torch.equal(torch.cat(list(src.batches(0, 1, 6))), torch.cat(b[1:]))


@pytest.mark.slow
def test_train_from_store_with_split_and_held_out_validation(tmp_path):
    from tests._fixtures_sae import make_store

    store, x = make_store(tmp_path / "s.h5")  # 4 labels x 3 domains x 6 rows x 2 splits = 144 rows
    res = run_train_sae(store_cfg(tmp_path / "run", [store], split="train", val_fraction=0.25), progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_rows"] == 72 - 18 and res.val["rows"] == 18
    assert res.steps == 2 * (54 // 16)
    ck = torch.load(tmp_path / "run" / "sae.pt", weights_only=False)
    assert ck["data"]["stores"][0]["rows"] == 144 and ck["data"]["mode"] == "resident"
    assert ck["data"]["val"] == {"source": "held-out fraction", "fraction": 0.25, "rows": 18}


def test_store_streaming_reads_exactly_the_training_rows(tmp_path):
    from clipgen.analysis.sae import open_training_data
    from tests._fixtures_sae import make_store

    n = 144
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None], 4, axis=1)  # row i holds i
    store, _ = make_store(tmp_path / "s.h5", width=4, x=x)
    store2, _ = make_store(tmp_path / "t.h5", width=4, x=x + n)
    from contextlib import ExitStack

    for buffer_mb in (1.0, 40 * 16 / 2**20):  # resident, then streaming with 40-row buffers
        cfg = store_cfg(tmp_path / "r", [store, store2], split="test", val_fraction=0.1, block_rows=10,
                         buffer_mb=buffer_mb, batch_size=1)
        with ExitStack() as stack:
            data = open_training_data(cfg, stack, device=torch.device("cpu"))
            seen = torch.cat(list(data.source.batches(0, 0, 1)))[:, 0].numpy()
            val = data.val[:, 0].numpy()
        expected = np.r_[np.arange(72, 144), np.arange(72, 144) + n]  # the test rows of both stores
        assert sorted(np.r_[seen, val].tolist()) == expected.tolist()
        assert len(val) == 14 and not set(val) & set(seen)
        assert data.info["mode"] == ("resident" if buffer_mb == 1.0 else "streaming")


@pytest.mark.slow
def test_streaming_keeps_the_store_dtype_and_trains(tmp_path):
    from contextlib import ExitStack

    from clipgen.analysis.sae import open_training_data
    from tests._fixtures_sae import make_store

    n = 144
    rng = np.random.default_rng(0)
    x = np.c_[np.arange(n, dtype=np.float32), rng.standard_normal((n, 7)).astype(np.float32)]  # column 0 = row id
    store, _ = make_store(tmp_path / "s.h5", width=8, x=x, layer="act", dtype="float16")
    cfg = store_cfg(tmp_path / "run", [store], layer="act", val_fraction=0.0, block_rows=10,
                     buffer_mb=30 * 8 * 4 / 2**20, batch_size=8, epochs=3)
    with ExitStack() as stack:
        data = open_training_data(cfg, stack, device=torch.device("cpu"))
        assert data.info["mode"] == "streaming"
        batches = list(data.source.batches(0, 0, 8))
        sample = data.source.sample(5, np.random.default_rng(1))
    assert all(b.dtype == torch.float16 and b.shape == (8, 8) for b in batches)  # the stored float16, not a copy
    seen = torch.cat(batches).float().numpy()
    order = seen[:, 0].astype(int)
    assert sorted(order.tolist()) == list(range(n))  # every row once (144 = 18 batches of 8)
    np.testing.assert_array_equal(seen, x[order].astype(np.float16).astype(np.float32))
    assert sample.dtype == torch.float32 and sample.shape == (5, 8)
    res = run_train_sae(cfg, progress=False)
    log = [r for r in run_log(tmp_path / "run") if r["kind"] == "train"]
    assert res.steps == 3 * 18 and all(np.isfinite(r["loss"]) for r in log) and log[-1]["loss"] < log[0]["loss"]


def test_store_refusals(tmp_path):
    from tests._fixtures_sae import make_store

    store, _ = make_store(tmp_path / "s.h5")
    wide, _ = make_store(tmp_path / "w.h5", width=20)
    with pytest.raises(ConfigFieldError, match="^layer: .*s.h5: no layer 'resblock1'"):
        run_train_sae(store_cfg(tmp_path / "a", [store], layer="resblock1"), progress=False)
    with pytest.raises(ConfigFieldError, match="^stores: layer 'embedding' has different widths"):
        run_train_sae(store_cfg(tmp_path / "b", [store, wide]), progress=False)
    with pytest.raises(ConfigFieldError, match="^split: .*no rows of split 'val' .*splits: test, train"):
        run_train_sae(store_cfg(tmp_path / "c", [store], split="val"), progress=False)
    with pytest.raises(ConfigFieldError, match="^val_store: .*w.h5: layer 'embedding' is 20 wide"):
        run_train_sae(store_cfg(tmp_path / "d", [store], val_store=str(wide)), progress=False)
    with pytest.raises(ClipgenError, match="not an HDF5 file"):
        (tmp_path / "junk.h5").write_text("junk")
        run_train_sae(store_cfg(tmp_path / "e", [tmp_path / "junk.h5"]), progress=False)
    assert not any((tmp_path / n).exists() for n in "abcde")
