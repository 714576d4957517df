"""Reading activation stores: the small API every analysis uses.

>>> with open_store("store.h5") as st:
...     st.layers                                   # ['act1', ..., 'attnpool', 'embedding']
...     x = st.read_layer("resblock3", domains=["sketch"], labels=[0, 1])
...     labels, means = st.class_means("resblock3", "sketch")
...     for domain, labels, means in st.iter_class_means("resblock3"): ...

Reads never load a whole layer unless asked to: :meth:`ActivationStore.iter_layer` and
:meth:`ActivationStore.class_means` (and :meth:`ActivationStore.iter_class_means`, domain by domain) stream
chunk-aligned row blocks.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

import clipgen.store.schema as schema
from clipgen.errors import ClipgenError, file_error
from clipgen.store.kind import attr_str, open_h5

#: Rows of float32 a block read aims at (bytes).
BLOCK_BYTES = 16 << 20


@dataclass
class Samples:
    """Per-row metadata of a store."""

    paths: np.ndarray  # str
    labels: np.ndarray  # int64
    domains: np.ndarray  # int64 ids, -1 unknown
    domain_names: list[str]  # id -> name
    splits: np.ndarray  # str
    index: np.ndarray  # int64 row of the image-set index

    def __len__(self) -> int:
        return len(self.paths)

    def domain_of(self, row: int) -> str | None:
        d = int(self.domains[row])
        return self.domain_names[d] if d >= 0 else None


def _str_dataset(ds) -> np.ndarray:
    vals = ds.asstr()[...] if len(ds) else []
    return np.array(list(vals), dtype=str) if len(vals) else np.array([], dtype=str)


def check_header(path: Path, f) -> None:
    """Refuse a file that is not a clipgen activation store this version reads."""
    schema.KIND.check(path, f)


class ActivationStore:
    """A read-only view of one store file. Use :func:`open_store`; close it (or use ``with``)."""

    def __init__(self, path: Path, f):
        self.path = Path(path)
        self._f = f

    # -- lifetime -------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return f"ActivationStore({str(self.path)!r}, {self.n_samples} samples, {len(self.layers)} layers, {state})"

    @property
    def file(self):
        """The underlying ``h5py.File`` (read-only)."""
        if self._f is None:
            raise ClipgenError(f"{self.path}: store is closed")
        return self._f

    # -- header ---------------------------------------------------------------------------------------------
    @property
    def schema_version(self) -> str:
        return attr_str(self.file.attrs, "schema_version")

    @property
    def fingerprint(self) -> str:
        return attr_str(self.file.attrs, "fingerprint")

    @cached_property
    def provenance(self) -> dict[str, Any]:
        return json.loads(attr_str(self.file.attrs, "provenance", "{}") or "{}")

    @property
    def created(self) -> str:
        return attr_str(self.file.attrs, "created")

    @property
    def dtype(self) -> str:
        return attr_str(self.file.attrs, "dtype")

    @cached_property
    def shard(self) -> dict[str, Any] | None:
        """``{"index", "count", "start", "stop", "total"}`` for a shard file, else None."""
        s = attr_str(self.file.attrs, "shard")
        return json.loads(s) if s else None

    @property
    def complete(self) -> bool:
        """Every row of the image set is written (a shard on its own is not complete)."""
        return bool(self.file.attrs.get("complete", False)) and self.shard is None

    @property
    def rows_complete(self) -> bool:
        """Every row this file covers is written (true for a finished shard)."""
        return bool(self.file.attrs.get("complete", False))

    @property
    def n_samples(self) -> int:
        return int(self.file.attrs["n_samples"])

    @cached_property
    def layers(self) -> list[str]:
        return list(json.loads(attr_str(self.file.attrs, "layers", "[]")))

    def _dataset(self, name: str):
        if name not in self.layers:
            raise ClipgenError(f"{self.path}: no layer {name!r} in this store; layers: {' '.join(self.layers)}")
        return self.file[schema.dataset_path(name)]

    def layer_info(self, name: str) -> dict[str, Any]:
        ds = self._dataset(name)
        a = ds.attrs
        return {
            "channels": int(a["channels"]),
            "original_shape": tuple(json.loads(attr_str(a, "original_shape", "[]"))),
            "pooling": attr_str(a, "pooling"),
            "dtype": attr_str(a, "dtype", str(ds.dtype)),
            "kind": attr_str(a, "kind"),
            "shape": tuple(int(x) for x in ds.shape),
            "chunk_rows": int(ds.chunks[0]) if ds.chunks else None,
        }

    @cached_property
    def samples(self) -> Samples:
        g = self.file["samples"]
        return Samples(
            paths=_str_dataset(g["path"]),
            labels=np.asarray(g["label"][...], dtype=np.int64),
            domains=np.asarray(g["domain"][...], dtype=np.int64),
            domain_names=list(json.loads(attr_str(g["domain"].attrs, "names", "[]"))),
            splits=_str_dataset(g["split"]),
            index=np.asarray(g["index"][...], dtype=np.int64),
        )

    @cached_property
    def class_names(self) -> dict[int, str]:
        g = self.file["classes"]
        return {int(k): str(v) for k, v in zip(g["label"][...], _str_dataset(g["name"]), strict=True)}

    @cached_property
    def held_out_labels(self) -> list[int]:
        return [int(x) for x in json.loads(attr_str(self.file.attrs, "held_out_labels", "[]") or "[]")]

    @cached_property
    def text_embeddings(self) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
        if "text" not in self.file:
            return None
        g = self.file["text"]
        return (np.asarray(g["label"][...], dtype=np.int64), np.asarray(g["embedding"][...], dtype=np.float32),
                [str(t) for t in _str_dataset(g["template"])])

    @cached_property
    def skipped(self) -> list[tuple[int, str, str]]:
        """Images of the image set left out at extraction (``--on-error skip``): (index row, path, reason)."""
        if "skipped" not in self.file:
            return []
        g = self.file["skipped"]
        return [(int(i), str(p), str(r)) for i, p, r in zip(g["index"][...], _str_dataset(g["path"]),
                                                               _str_dataset(g["reason"]), strict=True)]

    # -- row selection --------------------------------------------------------------------------------------
    def domain_id(self, name: str) -> int:
        names = self.samples.domain_names
        if name not in names:
            present = sorted({names[d] for d in np.unique(self.samples.domains) if d >= 0})
            raise ClipgenError(f"{self.path}: no domain {name!r} in this store; domains: {' '.join(present)}")
        return names.index(name)

    def select(self, *, rows: Any = None, domains: str | Iterable[str] | None = None,
               labels: int | Iterable[int] | None = None) -> np.ndarray:
        """Sorted row indices matching every given filter (rows AND domains AND labels)."""
        n = self.n_samples
        mask = np.ones(n, dtype=bool)
        if rows is not None:
            sel = np.zeros(n, dtype=bool)
            if isinstance(rows, slice):
                sel[rows] = True
            else:
                r = np.asarray(rows)
                if r.dtype == bool:
                    if r.shape != (n,):
                        raise ClipgenError(f"rows: boolean mask of shape {r.shape}, store has {n} rows")
                    sel = r.copy()
                else:
                    r = r.astype(np.int64).reshape(-1)
                    if r.size and (r.min() < -n or r.max() >= n):
                        raise ClipgenError(f"rows: index out of range for a store of {n} rows")
                    sel[r] = True
            mask &= sel
        if domains is not None:
            ds = [domains] if isinstance(domains, str) else list(domains)
            mask &= np.isin(self.samples.domains, [self.domain_id(d) for d in ds])
        if labels is not None:
            ls = [labels] if isinstance(labels, (int, np.integer)) else list(labels)
            mask &= np.isin(self.samples.labels, np.asarray(ls, dtype=np.int64))
        return np.flatnonzero(mask)

    # -- reading --------------------------------------------------------------------------------------------
    def _block_rows(self, ds, block_rows: int | None) -> int:
        chunk = int(ds.chunks[0]) if ds.chunks else 1024
        if block_rows:
            return max(1, int(block_rows))
        per_row = max(1, int(np.prod(ds.shape[1:])) * 4)
        return max(chunk, (BLOCK_BYTES // per_row) // chunk * chunk)

    def read_layer(self, name: str, *, rows: Any = None, domains: str | Iterable[str] | None = None,
                   labels: int | Iterable[int] | None = None, dtype: Any = np.float32) -> np.ndarray:
        """The selected rows of a layer as ``(n, C)`` (``(n, *shape)`` for unpooled layers), in row order."""
        ds = self._dataset(name)
        idx = self.select(rows=rows, domains=domains, labels=labels)
        out = np.empty((len(idx), *ds.shape[1:]), dtype=dtype)
        pos = 0
        for _, block in self._iter(ds, idx, None, dtype):
            out[pos:pos + len(block)] = block
            pos += len(block)
        return out

    def read_slice(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of a layer exactly as stored (the store's dtype, no row selection, no copy to float32):
        the cheapest read, for callers that stream contiguous blocks and convert each batch themselves."""
        ds = self._dataset(name)
        n = int(ds.shape[0])
        if not 0 <= start <= stop <= n:
            raise ClipgenError(f"{self.path}: rows {start}:{stop} are outside layer {name!r} ({n} rows)")
        return ds[start:stop]

    def iter_layer(self, name: str, *, block_rows: int | None = None, rows: Any = None,
                   domains: str | Iterable[str] | None = None, labels: int | Iterable[int] | None = None,
                   dtype: Any = np.float32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(row_indices, block)`` over the selected rows, reading contiguous chunk-aligned row ranges."""
        ds = self._dataset(name)
        idx = self.select(rows=rows, domains=domains, labels=labels)
        yield from self._iter(ds, idx, block_rows, dtype)

    def _iter(self, ds, idx: np.ndarray, block_rows: int | None, dtype) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if len(idx) == 0:
            return
        b = self._block_rows(ds, block_rows)
        blocks = idx // b
        starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
        ends = np.r_[starts[1:], len(idx)]
        for s, e in zip(starts, ends, strict=True):
            sel = idx[s:e]
            lo, hi = int(sel[0]), int(sel[-1]) + 1
            data = ds[lo:hi]
            if hi - lo != len(sel):
                data = data[sel - lo]
            yield sel, np.asarray(data, dtype=dtype)

    def class_means(self, name: str, domain: str, *, labels: Iterable[int] | None = None,
                    dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray]:
        """Per-class mean of a layer over one domain's rows: ``(labels_present, means (K, C))``, labels sorted.

        Streams chunk-aligned blocks; a label asked for but without rows in ``domain`` is not in the result.
        """
        ds = self._dataset(name)
        idx = self.select(domains=[domain], labels=labels)
        y_all = self.samples.labels
        present = np.unique(y_all[idx])
        width = int(np.prod(ds.shape[1:]))
        sums = np.zeros((len(present), width), dtype=np.float64)
        counts = np.zeros(len(present), dtype=np.int64)
        for rows, block in self._iter(ds, idx, None, np.float32):
            y = np.searchsorted(present, y_all[rows])
            order = np.argsort(y, kind="stable")
            ys = y[order]
            starts = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]])
            part = np.add.reduceat(block.reshape(len(rows), width)[order].astype(np.float64), starts, axis=0)
            sums[ys[starts]] += part
            counts += np.bincount(y, minlength=len(present))
        means = (sums / np.maximum(counts, 1)[:, None]).astype(dtype)
        return present, means.reshape((len(present), *ds.shape[1:]))

    def domains_present(self) -> list[str]:
        """Names of the domains that have rows, in id order."""
        names = self.samples.domain_names
        return [names[d] for d in np.unique(self.samples.domains) if d >= 0]

    def iter_class_means(self, name: str, domains: Iterable[str] | None = None, *,
                         labels: Iterable[int] | None = None, dtype: Any = np.float64
                         ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """``(domain, labels_present, means (K, C))`` for each domain (default: every domain with rows), one domain
        at a time, each streamed as :meth:`class_means` does."""
        for d in (self.domains_present() if domains is None else list(domains)):
            present, means = self.class_means(name, d, labels=labels, dtype=dtype)
            yield d, present, means


def open_store(path: str | Path, *, allow_incomplete: bool = False,
               command: str = "clipgen extract") -> ActivationStore:
    """Open a store for reading; refuses, with a one-line error naming the file, anything that is not a complete
    clipgen store of a schema this version reads (``allow_incomplete`` admits stores still being written and
    shard files). ``command`` is the one that writes this kind of file, named in the message of an incomplete one."""
    path = Path(path)
    f = open_h5(path)
    try:
        check_header(path, f)
        st = ActivationStore(path, f)
        if not allow_incomplete:
            if st.shard is not None:
                sh = st.shard
                raise file_error(path, f"is shard {sh.get('index')}/{sh.get('count')} of an image set (rows "
                                       f"{sh.get('start')}..{sh.get('stop')} of {sh.get('total')}); join the shards "
                                       f"with 'clipgen extract merge'")
            if not st.rows_complete:
                from clipgen.store.parts import rows_done

                done = rows_done(path, f) if "progress" in f else 0
                raise file_error(path, f"incomplete store ({done} of {st.n_samples} rows written): finish it with "
                                       f"the same '{command} ...' command")
        check_virtual_sources(path, f)
        return st
    except BaseException:
        f.close()
        raise


def header_extras(path: Path) -> tuple[dict[int, str], tuple | None, list[int]]:
    """Class names, ``(labels, text embeddings, templates)`` and held-out labels of a store file, complete or still
    being written: what a resumed extraction carries over."""
    f = open_h5(path)
    try:
        st = ActivationStore(path, f)
        te = st.text_embeddings
        text = (te[0].tolist(), te[1], te[2]) if te is not None else None
        return dict(st.class_names), text, list(st.held_out_labels)
    finally:
        f.close()


def check_virtual_sources(path: Path, f) -> None:
    """A merged store made of virtual datasets needs its shard files: name the first one missing."""
    src = attr_str(f.attrs, "virtual_sources")
    if not src:
        return
    for name in json.loads(src):
        p = Path(name) if Path(name).is_absolute() else path.parent / name
        if not p.is_file():
            raise file_error(path, f"virtual store: shard file {p} is missing (merge with --copy for a "
                                   f"self-contained store)")
