"""Writing schema-v1 stores: the file layout, and a complete store from in-memory arrays.

:class:`StoreLayout` creates every dataset of a store (fixed number of rows, chunked by rows, compressed) and
writes its header (attributes, samples, classes, text, skipped images). The extractor
(:mod:`clipgen.extraction`) fills the layer datasets block by block; :func:`build_store_from_arrays` fills them at
once from arrays (analysis tests and benchmarks use it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import clipgen.store.schema as schema
from clipgen import __version__
from clipgen.errors import ClipgenError
from clipgen.store.kind import str_array

COMPRESSIONS = ("gzip", "lzf", "none")
#: Deflate level of "gzip" layers. Pooled float16 activations compress little (about 1.2-1.6x); level 1 stores them
#: within a few percent of level 4 at 1.3-1.5x the speed (measured in benchmarks/extract.py's setting), which is what
#: keeps the writer ahead of a GPU.
GZIP_LEVEL = 1


@dataclass(frozen=True)
class LayerDef:
    """One stored layer: its per-row stored shape and what it was pooled from."""

    name: str
    shape: tuple[int, ...]  # per-row stored shape: (C,) pooled, (C, H, W) / (L, D) unpooled
    original_shape: tuple[int, ...]  # per-sample module output shape
    pooling: str  # "mean" (spatial mean), "none", "cls", "token-mean", "-" (vectors), "l2-normalised"
    kind: str  # "conv", "tokens", "vector", "embedding"

    @property
    def channels(self) -> int:
        return int(self.shape[0]) if self.kind != "tokens" or len(self.shape) == 1 else int(self.shape[-1])


@dataclass
class SampleTable:
    """The rows of a store."""

    paths: list[str]
    labels: list[int]
    domains: list[str | None]
    splits: list[str | None]
    index: list[int] = field(default_factory=list)  # row of the image-set index; default 0..N-1

    def __post_init__(self):
        n = len(self.paths)
        if not self.index:
            self.index = list(range(n))
        for name in ("labels", "domains", "splits", "index"):
            if len(getattr(self, name)) != n:
                raise ClipgenError(f"samples: {name} has {len(getattr(self, name))} rows, paths has {n}")

    def __len__(self) -> int:
        return len(self.paths)


def _filters(compression: str) -> dict[str, Any]:
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": GZIP_LEVEL, "shuffle": True}
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if compression == "none":
        return {}
    raise ClipgenError(f"--compression: unknown compression {compression!r} (one of {', '.join(COMPRESSIONS)})")


def stored_dtype(layer: LayerDef, dtype: str) -> str:
    """The embedding is always stored as float32 (it is small and analyses need it unit-norm)."""
    return "float32" if layer.kind == "embedding" else dtype


def _write_strings(group, name: str, values: Sequence[Any]) -> None:
    import h5py

    arr = str_array(values)
    group.create_dataset(name, data=arr, dtype=h5py.string_dtype("utf-8"), maxshape=(None,),
                         chunks=(max(1, min(len(arr), 4096)),) if len(arr) else (1,), compression="gzip")


def _write_ints(group, name: str, values: Sequence[int]) -> None:
    arr = np.asarray(values, dtype=np.int64).reshape(-1)
    group.create_dataset(name, data=arr, maxshape=(None,), chunks=(max(1, min(len(arr), 1 << 14)),),
                         compression="gzip", shuffle=True)


class StoreLayout:
    """Create the datasets and header of a store in an open, writable ``h5py.File``."""

    def __init__(self, f, *, samples: SampleTable, layers: Sequence[LayerDef], dtype: str = "float16",
                 provenance: Mapping[str, Any], class_names: Mapping[int, str] | None = None,
                 held_out_labels: Sequence[int] | None = None, text: tuple | None = None,
                 skipped: Sequence[tuple[int, str, str]] = (), shard: Mapping[str, Any] | None = None,
                 compression: str = "gzip", block_rows: int | None = None, created: str | None = None):
        if dtype not in (*schema.DTYPES, schema.IMAGE_DTYPE):
            raise ClipgenError(f"--dtype: unknown dtype {dtype!r} (one of {', '.join(schema.DTYPES)})")
        self.f, self.samples, self.layers, self.dtype = f, samples, list(layers), dtype
        self.compression, self.block_rows = compression, block_rows
        self._filters = _filters(compression)
        self.provenance = dict(provenance)
        from clipgen.artifacts import utc_now

        self.created = created or utc_now()
        self._write_header(class_names or {}, list(held_out_labels or []), text, list(skipped), shard)

    # -- header ---------------------------------------------------------------------------------------------
    def _write_header(self, class_names, held_out, text, skipped, shard) -> None:
        f, s = self.f, self.samples
        a = f.attrs
        schema.KIND.stamp(a, created=self.created, complete=False)
        a["n_samples"] = len(s)
        a["layers"] = json.dumps([ld.name for ld in self.layers])
        a["dtype"] = self.dtype
        a["fingerprint"] = schema.fingerprint(self.provenance)
        a["provenance"] = schema.canonical_json(self.provenance)
        a["held_out_labels"] = json.dumps([int(x) for x in held_out])
        a["shard"] = json.dumps(dict(shard)) if shard else ""
        g = f.create_group("samples")
        _write_strings(g, "path", s.paths)
        _write_ints(g, "index", s.index)
        _write_ints(g, "label", s.labels)
        names, ids = schema.domain_table(s.domains)
        _write_ints(g, "domain", ids)
        g["domain"].attrs["names"] = json.dumps(names)
        _write_strings(g, "split", s.splits)
        c = f.create_group("classes")
        labs = sorted(int(k) for k in class_names)
        _write_ints(c, "label", labs)
        _write_strings(c, "name", [class_names[k] for k in labs])
        if text is not None:
            t_labels, t_emb, t_templates = text
            t = f.create_group("text")
            _write_ints(t, "label", t_labels)
            emb = np.asarray(t_emb, dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != len(t_labels):
                raise ClipgenError(f"text: embeddings of shape {emb.shape} do not match {len(t_labels)} labels")
            t.create_dataset("embedding", data=emb)
            _write_strings(t, "template", list(t_templates))
        k = f.create_group("skipped")
        _write_ints(k, "index", [x[0] for x in skipped])
        _write_strings(k, "path", [x[1] for x in skipped])
        _write_strings(k, "reason", [x[2] for x in skipped])
        p = f.create_group("progress")
        p.attrs["block_rows"] = int(self.block_rows or 0)
        p.attrs["rows_done"] = 0
        p.attrs["parts"] = ""

    # -- layers ---------------------------------------------------------------------------------------------
    def chunk_rows(self, layer: LayerDef) -> int:
        itemsize = np.dtype(stored_dtype(layer, self.dtype)).itemsize
        return schema.chunk_rows(int(np.prod(layer.shape)), itemsize, self.block_rows)

    def layer_attrs(self, ds, layer: LayerDef) -> None:
        ds.attrs["channels"] = layer.channels
        ds.attrs["original_shape"] = json.dumps(list(layer.original_shape))
        ds.attrs["pooling"] = layer.pooling
        ds.attrs["kind"] = layer.kind
        ds.attrs["dtype"] = stored_dtype(layer, self.dtype)

    def create_layers(self) -> dict[str, Any]:
        """Create every layer dataset (N rows, zero-filled) and return ``{name: dataset}``."""
        n = len(self.samples)
        out = {}
        for ld in self.layers:
            ds = self.f.create_dataset(schema.dataset_path(ld.name), shape=(n, *ld.shape),
                                       maxshape=(None, *ld.shape), dtype=stored_dtype(ld, self.dtype),
                                       chunks=(self.chunk_rows(ld), *ld.shape), **self._filters)
            self.layer_attrs(ds, ld)
            out[ld.name] = ds
        return out

    def mark_complete(self) -> None:
        self.f["progress"].attrs["rows_done"] = len(self.samples)
        self.f.attrs["complete"] = True


def cast_block(layer: LayerDef, block: np.ndarray, dtype: str, where: str = "") -> np.ndarray:
    """Cast one block to the stored dtype; float16 overflow is an error, not a silent inf."""
    target = np.dtype(stored_dtype(layer, dtype))
    if block.dtype == target:
        return block
    with np.errstate(over="ignore"):
        out = block.astype(target)
    if target == np.float16 and not np.isfinite(out).all() and np.isfinite(block).all():
        raise ClipgenError(f"{where or layer.name}: activations of layer {layer.name} exceed the float16 range "
                           f"(max |x| = {float(np.abs(block).max()):.3g}); extract with --dtype float32")
    return out


def _layer_def(name: str, arr: np.ndarray) -> LayerDef:
    shape = tuple(int(x) for x in arr.shape[1:])
    if name == schema.EMBEDDING:
        if len(shape) != 1:
            raise ClipgenError(f"layers: 'embedding' must be 2-D (N, D), got {arr.shape}")
        return LayerDef(name, shape, shape, "l2-normalised", "embedding")
    if len(shape) == 1:
        return LayerDef(name, shape, shape, "mean", "conv")
    return LayerDef(name, shape, shape, "none", "conv" if len(shape) == 3 else "tokens")


def build_store_from_arrays(path: str | Path, *, paths: Sequence[str], labels: Sequence[int],
                            domains: Sequence[str | None], layers: Mapping[str, np.ndarray],
                            text: tuple | None = None, held_out_labels: Sequence[int] | None = None,
                            provenance: Mapping[str, Any] | None = None, dtype: str = "float32",
                            splits: Sequence[str | None] | None = None,
                            class_names: Mapping[int, str] | None = None, compression: str = "gzip",
                            force: bool = True) -> Path:
    """Write a complete, valid schema-v1 store from in-memory arrays.

    ``layers`` maps layer names to ``(N, C)`` arrays (or ``(N, *shape)`` for unpooled layers), in forward order;
    ``"embedding"`` (if given) is stored last, as float32. ``text`` is ``(labels, embeddings (K, D), templates,
    class_names)`` where class_names is a ``{label: name}`` dict or a list aligned with ``labels``. Pooled 2-D
    layers are recorded with pooling ``"mean"``, higher-dimensional ones with ``"none"``.
    """

    from clipgen.artifacts import atomic_path, hdf5_create

    n = len(paths)
    labels = [int(x) for x in labels]
    table = SampleTable(list(map(str, paths)), labels, list(domains), list(splits) if splits is not None
                        else [""] * n)
    arrays = {k: np.asarray(v) for k, v in layers.items() if k != schema.EMBEDDING}
    if schema.EMBEDDING in layers:
        arrays[schema.EMBEDDING] = np.asarray(layers[schema.EMBEDDING])
    defs = []
    for name, arr in arrays.items():
        if arr.ndim < 2 or arr.shape[0] != n:
            raise ClipgenError(f"layers: {name!r} has shape {arr.shape}, expected ({n}, C)")
        defs.append(_layer_def(name, arr))
    names = dict(class_names or {})
    text_arrays = None
    if text is not None:
        t_labels, t_emb, t_templates, t_names = text
        t_labels = [int(x) for x in t_labels]
        if isinstance(t_names, Mapping):
            names.update({int(k): str(v) for k, v in t_names.items()})
        elif t_names is not None:
            names.update({lab: str(nm) for lab, nm in zip(t_labels, t_names, strict=True)})
        text_arrays = (t_labels, t_emb, list(t_templates))
    prov = dict(provenance or {"source": "arrays"})
    prov.setdefault("dtype", dtype)
    prov.setdefault("layers", [d.name for d in defs])
    prov.setdefault("clipgen_version", __version__)
    img = dict(prov.get("image_set") or {})
    img.setdefault("sha256", schema.image_set_sha256(table.paths, labels, table.domains, table.splits))
    img.setdefault("n_rows", n)
    prov["image_set"] = img
    with atomic_path(path, force=force) as tmp, hdf5_create(tmp) as f:
        lay = StoreLayout(f, samples=table, layers=defs, dtype=dtype, provenance=prov, class_names=names,
                          held_out_labels=held_out_labels, text=text_arrays, compression=compression)
        dsets = lay.create_layers()
        for d in defs:
            if n:
                dsets[d.name][...] = cast_block(d, arrays[d.name], dtype)
        lay.mark_complete()
    return Path(path)


# -- fast row-block writes ----------------------------------------------------------------------------------------

def _encode_chunk(chunk: np.ndarray, level: int) -> bytes:
    """HDF5's shuffle + deflate filters, done here so that chunks compress in parallel threads (zlib releases the
    GIL); the bytes are exactly what the filters would store."""
    import zlib

    s = chunk.dtype.itemsize
    raw = np.ascontiguousarray(chunk).view(np.uint8).reshape(-1, s).T.tobytes() if s > 1 else chunk.tobytes()
    return zlib.compress(raw, level)


def write_rows(ds, start: int, block: np.ndarray, pool=None) -> None:
    """Write ``block`` at row ``start`` of ``ds``.

    For gzip+shuffle datasets with ``start`` on a chunk boundary the chunks are encoded by ``pool`` (a thread pool)
    and written directly; otherwise h5py writes them.
    """
    rows = ds.chunks[0] if ds.chunks else 0
    direct = (pool is not None and rows and start % rows == 0 and ds.compression == "gzip" and ds.shuffle
              and ds.fletcher32 is False and ds.scaleoffset is None and block.dtype == ds.dtype
              and ds.chunks[1:] == ds.shape[1:])
    if not direct:
        ds[start:start + len(block)] = block
        return
    level = int(ds.compression_opts if ds.compression_opts is not None else GZIP_LEVEL)
    pieces = []
    for s in range(0, len(block), rows):
        part = block[s:s + rows]
        if len(part) < rows:  # an edge chunk is stored at full size
            pad = np.zeros((rows, *block.shape[1:]), dtype=block.dtype)
            pad[:len(part)] = part
            part = pad
        pieces.append((start + s, part))
    encoded = pool.map(lambda p: _encode_chunk(p[1], level), pieces)
    zeros = (0,) * (block.ndim - 1)
    for (off, _), data in zip(pieces, encoded, strict=True):
        ds.id.write_direct_chunk((off, *zeros), data, 0)


def copy_rows_raw(src, dst, dst_start: int) -> bool:
    """Copy every stored chunk of ``src`` into ``dst`` at row ``dst_start`` without decoding; False when the two
    datasets' chunking or filters differ or ``dst_start`` is not on a chunk boundary (then copy rows instead)."""
    if (src.chunks is None or src.chunks != dst.chunks or src.dtype != dst.dtype or src.compression != dst.compression
            or src.compression_opts != dst.compression_opts or src.shuffle != dst.shuffle
            or dst_start % src.chunks[0]):
        return False
    rows = src.chunks[0]
    zeros = (0,) * (len(src.shape) - 1)
    for s in range(0, src.shape[0], rows):
        mask, data = src.id.read_direct_chunk((s, *zeros))
        dst.id.write_direct_chunk((dst_start + s, *zeros), data, mask)
    return True
