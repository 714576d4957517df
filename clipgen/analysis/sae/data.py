"""The SAE's training rows: in memory (:class:`ArraySource`) or streamed from the stores (:class:`StreamingSource`),
and their assembly from activation stores with the validation rows (:func:`open_training_data`).

Both sources derive every random choice from ``(seed, epoch, ...)``, so an interrupted run resumes from its last
checkpoint with exactly the batches it would have seen.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clipgen.analysis.sae.config import RNG_BLOCKS, RNG_BUFFER, RNG_PERMUTATION, RNG_VAL, SAETrainConfig
from clipgen.errors import ClipgenError, ConfigFieldError


class ArraySource:
    """Training rows held in memory (CPU or GPU), visited in a fresh seeded permutation every epoch."""

    def __init__(self, data: np.ndarray | torch.Tensor, *, seed: int = 0, device: torch.device | str = "cpu"):
        t = torch.as_tensor(data)
        if t.ndim != 2 or t.shape[0] == 0:
            raise ClipgenError(f"training data must be a non-empty (rows, width) matrix, got shape {tuple(t.shape)}")
        self.data = t.to(device=device, dtype=torch.float32).contiguous()
        self.n_rows, self.d = (int(v) for v in self.data.shape)
        self.seed = int(seed)
        self._perm: tuple[int, torch.Tensor] | None = None

    @property
    def device(self) -> torch.device:
        return self.data.device

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, int(epoch), RNG_PERMUTATION])
            self._perm = (epoch, torch.from_numpy(rng.permutation(self.n_rows)).to(self.data.device))
        return self._perm[1]

    def batches(self, epoch: int, start_step: int, batch_size: int,
                out: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """Batches ``start_step, start_step+1, ...`` of ``epoch`` (the last partial batch is dropped)."""
        perm = self.permutation(epoch)
        for s in range(start_step, self.n_rows // batch_size):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            if out is not None and out.device == self.data.device:
                torch.index_select(self.data, 0, idx, out=out)
                yield out
            else:
                yield self.data.index_select(0, idx)

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """Up to ``n`` distinct random rows (for resampling and scale estimates)."""
        if n >= self.n_rows:
            return self.data
        idx = np.sort(rng.choice(self.n_rows, size=n, replace=False))
        return self.data.index_select(0, torch.from_numpy(idx).to(self.data.device))


class StreamingSource:
    """Rows read in contiguous blocks, in a random block order per epoch, shuffled within a memory buffer.

    ``blocks``: contiguous global row ranges ``(start, stop)``; ``read(start, stop)`` returns those rows (float16 or
    float32: the store's dtype is kept in the buffer, halving its memory for float16 stores); ``keep`` (bool per
    global row) drops rows (validation rows, other splits). A buffer holds ``buffer_rows // block_rows`` blocks,
    read in ascending order; the positions of its kept rows are permuted, and each batch is gathered from the
    buffer in that order (one copy per row, no permuted copy of the whole buffer). The epoch is the concatenation
    of the buffers, cut into batches (the last partial batch is dropped). Batches come in the buffer's dtype: the
    training step converts them to float32 (on the GPU, after a transfer of half the bytes). The next buffer is
    read by a background thread.
    """

    def __init__(self, blocks: Sequence[tuple[int, int]], read: Callable[[int, int], np.ndarray], d: int, *,
                 keep: np.ndarray | None = None, seed: int = 0, buffer_rows: int = 1 << 20, prefetch: bool = True):
        self.read, self.d, self.seed, self.prefetch = read, int(d), int(seed), prefetch
        self.keep = keep
        kept = [(a, b, int(keep[a:b].sum()) if keep is not None else b - a) for a, b in blocks]
        self.blocks = [(a, b) for a, b, n in kept if n > 0]
        self.block_counts = [n for _, _, n in kept if n > 0]
        self.n_rows = int(sum(self.block_counts))
        if self.n_rows == 0:
            raise ClipgenError("no training rows left after filtering")
        largest = max(b - a for a, b in self.blocks)
        self.blocks_per_buffer = max(1, int(buffer_rows) // max(1, largest))
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    device = torch.device("cpu")

    def _groups(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, int(epoch), RNG_BLOCKS]).permutation(len(self.blocks))
        k = self.blocks_per_buffer
        return [sorted(order[i:i + k].tolist()) for i in range(0, len(order), k)]

    def _load(self, epoch: int, gi: int, group: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The rows of the group's blocks (in block order) and the shuffled buffer positions of the kept ones."""
        total = sum(self.blocks[bi][1] - self.blocks[bi][0] for bi in group)
        buf: np.ndarray | None = None
        kept, pos = [], 0
        for bi in group:  # ascending block index: sequential reads within a buffer
            a, b = self.blocks[bi]
            rows = np.asarray(self.read(a, b))
            if rows.shape != (b - a, self.d):
                raise ClipgenError(f"block rows {a}:{b}: expected shape {(b - a, self.d)}, read {rows.shape}")
            if buf is None:
                dtype = rows.dtype if rows.dtype in (np.float16, np.float32) else np.float32
                buf = np.empty((total, self.d), dtype=dtype)
            buf[pos:pos + b - a] = rows
            kept.append(pos + np.flatnonzero(self.keep[a:b]) if self.keep is not None else np.arange(pos, pos + b - a))
            pos += b - a
        idx = np.concatenate(kept)
        perm = np.random.default_rng([self.seed, int(epoch), RNG_BUFFER, gi]).permutation(len(idx))
        return buf, idx[perm]

    def batches(self, epoch: int, start_step: int, batch_size: int,
                out: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        steps = self.n_rows // batch_size
        if start_step >= steps:
            return
        start_row, emitted = start_step * batch_size, start_step
        groups = self._groups(epoch)
        counts = [sum(self.block_counts[i] for i in g) for g in groups]
        needed, pos = [], 0
        for gi, n in enumerate(counts):
            if pos + n > start_row:
                needed.append((gi, pos))
            pos += n
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1) if self.prefetch else None
        try:
            future = pool.submit(self._load, epoch, needed[0][0], groups[needed[0][0]]) if pool else None
            carry: np.ndarray | None = None
            for j, (gi, gpos) in enumerate(needed):
                buf, order = future.result() if future is not None else self._load(epoch, gi, groups[gi])
                if pool is not None and j + 1 < len(needed):
                    nxt = needed[j + 1][0]
                    future = pool.submit(self._load, epoch, nxt, groups[nxt])
                self._last = (buf, order)
                if gpos < start_row:
                    order = order[start_row - gpos:]
                i = 0
                if carry is not None:
                    take = min(batch_size - len(carry), len(order))
                    carry = np.concatenate([carry, buf[order[:take]]])
                    i = take
                    if len(carry) < batch_size:
                        continue
                    yield torch.from_numpy(carry)
                    emitted += 1
                    carry = None
                    if emitted >= steps:
                        return
                while i + batch_size <= len(order):
                    yield torch.from_numpy(buf[order[i:i + batch_size]])
                    i += batch_size
                    emitted += 1
                    if emitted >= steps:
                        return
                carry = buf[order[i:]] if i < len(order) else None
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """Up to ``n`` random rows (float32) of the buffer in use (the first buffer of epoch 0 before training)."""
        if self._last is None:
            self._last = self._load(0, 0, self._groups(0)[0])
        buf, order = self._last
        idx = np.sort(order if n >= len(order) else rng.choice(order, size=n, replace=False))
        return torch.from_numpy(buf[idx]).float()


@dataclass
class TrainingData:
    """What :func:`run_train_sae` trains and validates on."""

    source: ArraySource | StreamingSource
    val: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)  # store fingerprints, layer, row counts: kept in checkpoints



def _layer_width(store: Any, path: str, layer: str, field: str) -> int:
    """The width of ``layer`` in ``store``; a missing layer is an error of config field ``field``."""
    if layer not in store.layers:
        raise ConfigFieldError(field, f"{path}: no layer {layer!r} in this store (layers: {' '.join(store.layers)})")
    shape = store.layer_info(layer)["shape"]
    if len(shape) != 2:
        raise ConfigFieldError("layer", f"{path}: layer {layer!r} is stored unpooled ({shape[1:]} per row); an SAE "
                                        "needs one vector per image (extract it with pooling)")
    return int(shape[1])


def _split_mask(store: Any, path: str, split: str | None, field: str) -> np.ndarray:
    """The rows of ``split`` (all rows for None); a split without rows is an error of config field ``field``."""
    if split is None:
        return np.ones(store.n_samples, dtype=bool)
    splits = store.samples.splits
    mask = splits == split
    if not mask.any():
        have = sorted({str(x) for x in splits}) or ["none"]
        raise ConfigFieldError(field, f"{path}: no rows of split {split!r} (splits: {', '.join(have)})")
    return mask


def open_training_data(cfg: SAETrainConfig, stack: Any, *, device: torch.device) -> TrainingData:
    """Training rows (and validation rows) of ``cfg.layer`` from the stores of ``cfg``; stores stay open in ``stack``.

    Training rows: every row of every store (only ``cfg.split`` rows when given), in store order. Validation: the
    rows of ``cfg.val_store`` (``cfg.val_split``), else a seeded ``cfg.val_fraction`` of the training rows, which
    then leave the training set; at most ``cfg.val_max_rows`` rows either way. Training rows that fit in
    ``cfg.buffer_mb`` are read once (chunk-aligned blocks) and kept in memory, on the GPU when it has room;
    larger sets are streamed (:class:`StreamingSource`).
    """
    from clipgen.store import open_store

    if not cfg.stores:
        raise ConfigFieldError("stores", "at least one activation store is required")
    segments: list[tuple[Any, int, int]] = []  # (store, first global row, rows)
    masks, widths, stores_info = [], {}, []
    offset = 0
    for path in cfg.stores:
        st = stack.enter_context(open_store(path))
        widths[str(path)] = _layer_width(st, str(path), cfg.layer, "layer")
        masks.append(_split_mask(st, str(path), cfg.split, "split"))
        segments.append((st, offset, st.n_samples))
        stores_info.append({"fingerprint": st.fingerprint, "rows": st.n_samples})
        offset += st.n_samples
    if len(set(widths.values())) > 1:
        desc = ", ".join(f"{p}: {w}" for p, w in widths.items())
        raise ConfigFieldError("stores", f"layer {cfg.layer!r} has different widths in the stores ({desc})")
    width = next(iter(widths.values()))
    keep = np.concatenate(masks)

    def read_rows(global_rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(global_rows), width), dtype=np.float32)
        for st, off, n in segments:
            sel = (global_rows >= off) & (global_rows < off + n)
            if sel.any():
                out[sel] = st.read_layer(cfg.layer, rows=global_rows[sel] - off)
        return out

    rng = np.random.default_rng([cfg.seed, 0, RNG_VAL])
    val, val_info = None, {"source": "none", "rows": 0}
    if cfg.val_store:
        vs = stack.enter_context(open_store(cfg.val_store))
        vw = _layer_width(vs, str(cfg.val_store), cfg.layer, "val_store")
        if vw != width:
            raise ConfigFieldError("val_store", f"{cfg.val_store}: layer {cfg.layer!r} is {vw} wide, the training "
                                                f"stores' is {width}")
        rows = np.flatnonzero(_split_mask(vs, str(cfg.val_store), cfg.val_split, "val_split"))
        if cfg.val_max_rows and len(rows) > cfg.val_max_rows:
            rows = np.sort(rng.choice(rows, size=cfg.val_max_rows, replace=False))
        val = torch.from_numpy(vs.read_layer(cfg.layer, rows=rows))
        val_info = {"source": "store", "fingerprint": vs.fingerprint, "rows": len(rows)}
    elif cfg.val_fraction > 0:
        cand = np.flatnonzero(keep)
        n_val = int(round(cfg.val_fraction * len(cand)))
        if cfg.val_max_rows:
            n_val = min(n_val, cfg.val_max_rows)
        if n_val > 0:
            pick = np.sort(rng.choice(cand, size=n_val, replace=False))
            keep[pick] = False
            val = torch.from_numpy(read_rows(pick))
            val_info = {"source": "held-out fraction", "fraction": cfg.val_fraction, "rows": n_val}
    n_keep = int(keep.sum())
    if n_keep == 0:
        raise ConfigFieldError("split" if cfg.split else "stores", "no training rows")
    budget_rows = max(1, int(cfg.buffer_mb * (1 << 20)) // (4 * width))
    if n_keep <= budget_rows:
        arr = np.empty((n_keep, width), dtype=np.float32)
        pos = 0
        for st, off, n in segments:
            for _, block in st.iter_layer(cfg.layer, rows=keep[off:off + n]):
                arr[pos:pos + len(block)] = block
                pos += len(block)
        where = torch.device("cpu")
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if arr.nbytes < 0.5 * free:
                where = device
        source: ArraySource | StreamingSource = ArraySource(arr, seed=cfg.seed, device=where)
    else:
        blocks = [(a, min(a + cfg.block_rows, off + n)) for _, off, n in segments
                  for a in range(off, off + n, cfg.block_rows)]

        def read(a: int, b: int) -> np.ndarray:
            # a plain slice of the layer: contiguous, in the store's dtype (no per-read row selection over
            # the whole store, no float32 copy: the step converts each batch)
            for st, off, n in segments:
                if off <= a < off + n:
                    return st.read_slice(cfg.layer, a - off, b - off)
            raise ClipgenError(f"rows {a}:{b} are outside the training stores")  # pragma: no cover

        source = StreamingSource(blocks, read, width, keep=keep, seed=cfg.seed, buffer_rows=budget_rows)
    info = {"layer": cfg.layer, "width": width, "stores": stores_info, "split": cfg.split,
            "train_rows": source.n_rows, "val": val_info,
            "mode": "resident" if isinstance(source, ArraySource) else "streaming"}
    return TrainingData(source=source, val=val, info=info)

