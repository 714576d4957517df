"""Joining shard files (``clipgen extract --shard i/n``) into one store.

Every shard must be finished, carry the same fingerprint and shard count, and together the shards must cover each
row of the image set exactly once (rows skipped as unreadable count as covered: they are listed under
``/skipped``). By default the merged store's layers are HDF5 virtual datasets that read the shard files in place
(instant, no copy; keep the shard files beside it); ``copy=True`` writes a self-contained store.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import clipgen.store.schema as schema
from clipgen.errors import ClipgenError, file_error
from clipgen.store.kind import writing_h5
from clipgen.store.reader import ActivationStore, open_store
from clipgen.store.shards import missing_shards_hint, opened_shards
from clipgen.store.writer import LayerDef, SampleTable, StoreLayout, copy_rows_raw


@dataclass
class MergeConfig:
    """``clipgen extract merge``: the shard files and the merged store."""

    shards: list[Path]
    out: Path
    copy: bool = False  # a self-contained store (default: virtual datasets over the shard files)
    force: bool = False  # overwrite an existing store
    block_rows: int = 8192  # rows per copied block


@dataclass
class MergeResult:
    path: Path
    shards: int
    rows: int
    virtual: bool


def _layer_defs(st: ActivationStore) -> list[LayerDef]:
    out = []
    for name in st.layers:
        info = st.layer_info(name)
        out.append(LayerDef(name, tuple(info["shape"][1:]), tuple(info["original_shape"]), info["pooling"],
                            info["kind"]))
    return out


def check_shards(stores: list[ActivationStore]) -> list[ActivationStore]:
    """The shards in row order, after checking fingerprint, count and exact coverage of the image set."""
    if not stores:
        raise ClipgenError("merge: no shard files given")
    for st in stores:
        if st.shard is None:
            raise file_error(st.path, "is not a shard file (written without --shard); nothing to merge")
        if not st.rows_complete:
            raise file_error(st.path, f"shard {st.shard['index']}/{st.shard['count']} is unfinished; finish it with "
                                      f"the same 'clipgen extract ... --shard ...' command")
    first = stores[0]
    for st in stores[1:]:
        if st.fingerprint != first.fingerprint:
            diff = schema.fingerprint_diff(first.provenance, st.provenance)
            raise file_error(st.path, f"fingerprint differs from {first.path.name} (in {', '.join(diff) or 'header'})"
                                      f": shards of different extractions cannot be merged")
        if st.shard["count"] != first.shard["count"] or st.shard["total"] != first.shard["total"]:
            raise file_error(st.path, f"is shard of {st.shard['count']} (of {st.shard['total']} rows), "
                                      f"{first.path.name} of {first.shard['count']} (of {first.shard['total']} rows)")
        if st.layers != first.layers:
            raise file_error(st.path, f"layers differ from {first.path.name}")
    stores = sorted(stores, key=lambda s: (s.shard["start"], s.shard["index"]))
    total = int(first.shard["total"])
    owner = np.full(total, -1, dtype=np.int64)
    for j, st in enumerate(stores):
        rows = np.concatenate([st.samples.index, np.asarray([i for i, _, _ in st.skipped], dtype=np.int64)])
        if rows.size and (rows.min() < 0 or rows.max() >= total):
            raise file_error(st.path, f"rows outside the image set of {total} rows")
        taken = rows[owner[rows] >= 0]
        if taken.size or len(np.unique(rows)) != len(rows):
            other = stores[int(owner[taken[0]])].path.name if taken.size else st.path.name
            r = int(taken[0]) if taken.size else int(rows[np.argmax(np.bincount(rows))])
            raise file_error(st.path, f"overlap: row {r} of the image set is also in {other}")
        owner[rows] = j
    missing = np.flatnonzero(owner < 0)
    if missing.size:
        hint = missing_shards_hint([s.shard["index"] for s in stores], first.shard["count"])
        raise ClipgenError(f"merge: gap: {missing.size} row(s) of the image set are in no shard, first row "
                           f"{int(missing[0])}{hint}")
    return stores


def run_merge(cfg: MergeConfig) -> MergeResult:
    """Merge shard files into ``cfg.out`` (virtual datasets, or a self-contained copy)."""
    import h5py

    out, copy, block_rows = Path(cfg.out), cfg.copy, cfg.block_rows
    with opened_shards(cfg.shards, out, lambda p: open_store(p, allow_incomplete=True), force=cfg.force) as opened:
        stores = check_shards(opened)
        first = stores[0]
        s = [st.samples for st in stores]
        names = [st.samples.domain_names for st in stores]
        table = SampleTable(
            [str(p) for x in s for p in x.paths], [int(v) for x in s for v in x.labels],
            [n[d] if d >= 0 else None for x, n in zip(s, names, strict=True) for d in x.domains],
            [str(v) for x in s for v in x.splits], [int(v) for x in s for v in x.index])
        skipped = sorted(k for st in stores for k in st.skipped)
        te = first.text_embeddings
        text = (te[0].tolist(), te[1], te[2]) if te is not None else None
        prov = dict(first.provenance, merged_from=[p.path.name for p in stores])
        defs = _layer_defs(first)
        compression = _compression_of(first)
        with writing_h5(out) as f:
            lay = StoreLayout(f, samples=table, layers=defs, dtype=first.dtype, provenance=prov,
                              class_names=first.class_names, held_out_labels=first.held_out_labels, text=text,
                              skipped=skipped, compression=compression, created=first.created)
            if copy:
                dsets = lay.create_layers()
                for d in defs:
                    pos = 0
                    for st in stores:
                        src = st.file[schema.dataset_path(d.name)]
                        n = src.shape[0]
                        if not copy_rows_raw(src, dsets[d.name], pos):
                            for a in range(0, n, block_rows):
                                b = min(a + block_rows, n)
                                dsets[d.name][pos + a:pos + b] = src[a:b]
                        pos += n
            else:
                rels = [os.path.relpath(st.path.resolve(), out.resolve().parent) for st in stores]
                for d in defs:
                    dt = first.file[schema.dataset_path(d.name)].dtype
                    vl = h5py.VirtualLayout(shape=(len(table), *d.shape), dtype=dt)
                    pos = 0
                    for st, rel in zip(stores, rels, strict=True):
                        n = st.n_samples
                        vl[pos:pos + n] = h5py.VirtualSource(rel, schema.dataset_path(d.name), shape=(n, *d.shape))
                        pos += n
                    ds = f.create_virtual_dataset(schema.dataset_path(d.name), vl, fillvalue=np.nan)
                    lay.layer_attrs(ds, d)
                f.attrs["virtual_sources"] = json.dumps(rels)
            lay.mark_complete()
        return MergeResult(out, len(stores), len(table), not copy)


def _compression_of(st: ActivationStore) -> str:
    for name in st.layers:
        ds = st.file[schema.dataset_path(name)]
        if ds.is_virtual:
            continue
        return {"gzip": "gzip", "lzf": "lzf"}.get(ds.compression or "", "none")
    return "gzip"
