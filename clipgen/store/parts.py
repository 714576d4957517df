"""Resumable writing: a header store, one part file per row block, and the final assembly.

While an extraction runs, ``STORE.h5`` is a *header* (``complete = False``): attributes, samples, classes and text,
and layer datasets that are HDF5 virtual datasets over the part files ``STORE.h5.parts/block-NNNNNN.h5``. The header
is written once, atomically, and never modified; each part file is written under a temporary name and renamed when
whole. So a kill -9 at any moment leaves a header plus whole part files: the progress marker is the set of part
files, and resuming computes only the missing blocks. Block contents depend only on the block (fixed row ranges and
batch composition), so a resumed store is identical to an uninterrupted one. When every block exists, the parts are
assembled (compressed chunks copied without decoding) into the final store, which atomically replaces the header,
and the parts folder is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipgen.errors import ClipgenError, file_error
from clipgen.store import schema
from clipgen.store.writer import (
    LayerDef,
    SampleTable,
    StoreLayout,
    _filters,
    copy_rows_raw,
    stored_dtype,
    write_rows,
)

PARTS_SUFFIX = ".parts"
_PART_RE = re.compile(r"^block-(\d{6})\.h5$")


def parts_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + PARTS_SUFFIX)


def part_name(k: int) -> str:
    return f"block-{k:06d}.h5"


@dataclass
class StorePlan:
    """Everything a store file will hold except the layer values."""

    out: Path
    samples: SampleTable  # the rows this file covers (the whole image set, or a shard's range)
    layers: list[LayerDef]
    dtype: str
    provenance: dict[str, Any]
    block_rows: int
    batch_size: int
    class_names: dict[int, str] = field(default_factory=dict)
    held_out_labels: list[int] = field(default_factory=list)
    text: tuple | None = None  # (labels, embeddings, templates)
    shard: dict[str, Any] | None = None
    compression: str = "gzip"

    @property
    def fingerprint(self) -> str:
        return schema.fingerprint(self.provenance)

    @property
    def n_rows(self) -> int:
        return len(self.samples)

    @property
    def n_blocks(self) -> int:
        return -(-self.n_rows // self.block_rows)

    def block_range(self, k: int) -> tuple[int, int]:
        return k * self.block_rows, min((k + 1) * self.block_rows, self.n_rows)

    @property
    def parts(self) -> Path:
        return parts_dir(self.out)

    def layout(self, f, **kw) -> StoreLayout:
        return StoreLayout(f, samples=kw.pop("samples", self.samples), layers=self.layers, dtype=self.dtype,
                           provenance=self.provenance, class_names=self.class_names,
                           held_out_labels=self.held_out_labels, text=self.text, shard=self.shard,
                           compression=self.compression, block_rows=self.block_rows, **kw)


# -- header ----------------------------------------------------------------------------------------------------

def write_header(plan: StorePlan) -> None:
    """Write the in-progress header store (atomically) and create the parts folder."""
    import h5py

    from clipgen.artifacts import atomic_path, hdf5_create

    plan.parts.mkdir(parents=True, exist_ok=True)
    rel = plan.parts.name
    with atomic_path(plan.out, force=True) as tmp, hdf5_create(tmp) as f:
        lay = plan.layout(f)
        p = f["progress"].attrs
        p["parts"] = rel
        p["n_blocks"] = plan.n_blocks
        p["batch_size"] = plan.batch_size
        for ld in plan.layers:
            dt = stored_dtype(ld, plan.dtype)
            vl = h5py.VirtualLayout(shape=(plan.n_rows, *ld.shape), dtype=dt)
            for k in range(plan.n_blocks):
                a, b = plan.block_range(k)
                vl[a:b] = h5py.VirtualSource(f"{rel}/{part_name(k)}", schema.dataset_path(ld.name),
                                             shape=(b - a, *ld.shape))
            ds = f.create_virtual_dataset(schema.dataset_path(ld.name), vl,
                                          fillvalue=np.nan if np.dtype(dt).kind == "f" else 0)
            lay.layer_attrs(ds, ld)


def header_settings(f) -> dict[str, Any]:
    p = f["progress"].attrs
    return {"block_rows": int(p.get("block_rows", 0)), "batch_size": int(p.get("batch_size", 0)),
            "n_blocks": int(p.get("n_blocks", 0)), "parts": str(p.get("parts", ""))}


def rows_done(path: str | Path, f) -> int:
    """Rows written so far: of the final store, or of the part files an in-progress header points to."""
    if bool(f.attrs.get("complete", False)):
        return int(f.attrs["n_samples"])
    s = header_settings(f)
    if not s["parts"] or not s["block_rows"]:
        return int(f["progress"].attrs.get("rows_done", 0))
    n = int(f.attrs["n_samples"])
    done = completed_blocks_on_disk(Path(path).parent / s["parts"])
    return sum(min(s["block_rows"], n - k * s["block_rows"]) for k in done if k * s["block_rows"] < n)


def completed_blocks_on_disk(pdir: Path) -> set[int]:
    if not pdir.is_dir():
        return set()
    return {int(m.group(1)) for p in pdir.iterdir() if (m := _PART_RE.match(p.name))}


# -- parts -----------------------------------------------------------------------------------------------------

def verified_blocks(plan: StorePlan) -> set[int]:
    """Blocks whose part file is whole and belongs to this plan; stray or foreign files are removed."""
    import h5py

    done = set()
    for k in sorted(completed_blocks_on_disk(plan.parts)):
        p = plan.parts / part_name(k)
        ok = False
        if k < plan.n_blocks:
            try:
                with h5py.File(p, "r", locking=False) as f:
                    a, b = plan.block_range(k)
                    ok = (f.attrs.get("fingerprint") == plan.fingerprint and int(f.attrs["start"]) == a
                          and int(f.attrs["stop"]) == b and int(f.attrs["block_rows"]) == plan.block_rows)
            except (OSError, KeyError):
                ok = False
        if ok:
            done.add(k)
        else:
            p.unlink(missing_ok=True)
    for stray in plan.parts.glob("*.tmp"):  # a part being written when the process died
        stray.unlink(missing_ok=True)
    return done


def write_part(plan: StorePlan, k: int, arrays: dict[str, np.ndarray], reasons: Sequence[str], pool=None) -> Path:
    """Write block ``k`` (every layer's rows, and why any row is missing) as a whole part file."""
    import h5py

    from clipgen.artifacts import hdf5_create

    a, b = plan.block_range(k)
    final = plan.parts / part_name(k)
    tmp = plan.parts / f".{part_name(k)}.tmp"
    try:
        with hdf5_create(tmp) as f:
            f.attrs["fingerprint"] = plan.fingerprint
            f.attrs["block"], f.attrs["start"], f.attrs["stop"] = k, a, b
            f.attrs["block_rows"] = plan.block_rows
            for ld in plan.layers:
                arr = arrays[ld.name]
                if arr.shape != (b - a, *ld.shape):
                    raise ClipgenError(f"block {k}: layer {ld.name} has shape {arr.shape}, expected "
                                       f"{(b - a, *ld.shape)}")
                rows = schema.chunk_rows(int(np.prod(ld.shape)), np.dtype(stored_dtype(ld, plan.dtype)).itemsize,
                                         plan.block_rows)
                ds = f.create_dataset(schema.dataset_path(ld.name), shape=arr.shape, maxshape=(None, *ld.shape),
                                      dtype=stored_dtype(ld, plan.dtype), chunks=(rows, *ld.shape),
                                      **_filters(plan.compression))
                write_rows(ds, 0, arr, pool)
            f.create_dataset("reason", data=np.array(list(reasons), dtype=h5py.string_dtype("utf-8")))
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


# -- assembly --------------------------------------------------------------------------------------------------

def assemble(plan: StorePlan, *, keep_parts: bool = False) -> tuple[int, list[tuple[int, str, str]]]:
    """Join every part into the final store (replacing the header atomically); return (rows, skipped images).

    Rows of images that could not be read (``--on-error skip``) are left out and listed under ``/skipped``.
    """
    import h5py

    from clipgen.artifacts import atomic_path, hdf5_create

    missing = [k for k in range(plan.n_blocks) if not (plan.parts / part_name(k)).is_file()]
    if missing:
        raise file_error(plan.parts, f"cannot assemble: blocks {missing[:5]} are missing")
    from clipgen.artifacts import ensure_free_space

    reasons: list[str] = []
    stored = plan.out.stat().st_size if plan.out.is_file() else 0  # the header's part of the final file
    for k in range(plan.n_blocks):
        with h5py.File(plan.parts / part_name(k), "r", locking=False) as f:
            reasons.extend(str(r) for r in f["reason"].asstr()[...])
            stored += sum(int(f[schema.dataset_path(ld.name)].id.get_storage_size()) for ld in plan.layers)
    ensure_free_space(plan.out.parent, stored, f"the final store {plan.out}")
    keep = np.array([not r for r in reasons], dtype=bool)
    s = plan.samples
    skipped = [(int(s.index[i]), s.paths[i], reasons[i]) for i in np.flatnonzero(~keep)]
    kept = SampleTable([s.paths[i] for i in np.flatnonzero(keep)], [s.labels[i] for i in np.flatnonzero(keep)],
                       [s.domains[i] for i in np.flatnonzero(keep)], [s.splits[i] for i in np.flatnonzero(keep)],
                       [s.index[i] for i in np.flatnonzero(keep)])
    with atomic_path(plan.out, force=True) as tmp, hdf5_create(tmp) as f:
        created = None
        with contextlib.suppress(OSError, KeyError), h5py.File(plan.out, "r", locking=False) as h:
            created = str(h.attrs["created"])
        lay = plan.layout(f, samples=kept, skipped=skipped, created=created)
        dsets = lay.create_layers()
        pos = 0
        for k in range(plan.n_blocks):
            a, b = plan.block_range(k)
            with h5py.File(plan.parts / part_name(k), "r", locking=False) as src:
                m = keep[a:b]
                for ld in plan.layers:
                    sds = src[schema.dataset_path(ld.name)]
                    if m.all() and copy_rows_raw(sds, dsets[ld.name], pos):
                        continue
                    data = sds[...]
                    dsets[ld.name][pos:pos + int(m.sum())] = data[m]
                pos += int(m.sum())
        lay.mark_complete()
    if not keep_parts:
        shutil.rmtree(plan.parts, ignore_errors=True)
    return int(keep.sum()), skipped


def read_plan_header(path: Path) -> dict[str, Any]:
    """Fingerprint, provenance and settings of an existing store file (header or final)."""
    from clipgen.store.reader import check_header, open_h5

    f = open_h5(path)
    try:
        check_header(path, f)
        return {"fingerprint": str(f.attrs["fingerprint"]), "provenance": json.loads(str(f.attrs["provenance"])),
                "complete": bool(f.attrs.get("complete", False)), "settings": header_settings(f),
                "rows_done": rows_done(path, f), "n_samples": int(f.attrs["n_samples"])}
    finally:
        f.close()
