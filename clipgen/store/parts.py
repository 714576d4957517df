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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import clipgen.store.schema as schema
from clipgen.errors import ClipgenError, ConfigFieldError, file_error
from clipgen.store.kind import open_h5, parts_dir
from clipgen.store.writer import (
    LayerDef,
    SampleTable,
    StoreLayout,
    _filters,
    copy_rows_raw,
    stored_dtype,
    write_rows,
)


def part_name(k: int) -> str:
    return schema.KIND.part_name(k)


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

    rel = plan.parts.name
    with schema.KIND.writing_header(plan.out) as f:
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
    return set(schema.KIND.parts_in(pdir))


# -- parts -----------------------------------------------------------------------------------------------------

def verified_blocks(plan: StorePlan) -> set[int]:
    """Blocks whose part file is whole and belongs to this plan; stray or foreign files are removed."""

    def ok(k: int, f) -> bool:
        a, b = plan.block_range(k)
        return (f.attrs.get("fingerprint") == plan.fingerprint and int(f.attrs["start"]) == a
                and int(f.attrs["stop"]) == b and int(f.attrs["block_rows"]) == plan.block_rows)

    return schema.KIND.verified_parts(plan.out, range(plan.n_blocks), ok)


def write_part(plan: StorePlan, k: int, arrays: dict[str, np.ndarray], reasons: Sequence[str], pool=None) -> Path:
    """Write block ``k`` (every layer's rows, and why any row is missing) as a whole part file."""
    import h5py

    from clipgen.artifacts import hdf5_create

    a, b = plan.block_range(k)
    with schema.KIND.writing_part(plan.out, k) as tmp, hdf5_create(tmp) as f:
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
    return plan.parts / part_name(k)


# -- assembly --------------------------------------------------------------------------------------------------

def assemble(plan: StorePlan, *, keep_parts: bool = False) -> tuple[int, list[tuple[int, str, str]]]:
    """Join every part into the final store (replacing the header atomically); return (rows, skipped images).

    Rows of images that could not be read (``--on-error skip``) are left out and listed under ``/skipped``.
    """
    import h5py

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
    with schema.KIND.assembling(plan.out, keep_parts=keep_parts) as f:
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
    return int(keep.sum()), skipped


def read_plan_header(path: Path) -> dict[str, Any]:
    """Fingerprint, provenance and settings of an existing store file (header or final)."""
    f = open_h5(path)
    try:
        schema.KIND.check(path, f)
        return {"fingerprint": str(f.attrs["fingerprint"]), "provenance": json.loads(str(f.attrs["provenance"])),
                "complete": bool(f.attrs.get("complete", False)), "settings": header_settings(f),
                "rows_done": rows_done(path, f), "n_samples": int(f.attrs["n_samples"])}
    finally:
        f.close()


def check_existing(plan: StorePlan, force: bool) -> dict[str, Any] | None:
    """Decide what to do with an existing output; returns its header to continue it (or skip it when complete), None
    to start fresh. The same command continues its own store; a store of other settings needs ``force``."""
    import shutil

    out = plan.out
    if not out.exists():
        if plan.parts.exists():
            shutil.rmtree(plan.parts)  # leftovers without a header: nothing to resume
        return None
    try:
        head = read_plan_header(out)
    except ClipgenError:
        if force:
            out.unlink()
            shutil.rmtree(plan.parts, ignore_errors=True)
            return None
        raise file_error(out, "exists and is not a readable clipgen store; pass --force to overwrite it") from None
    if force or (not head["complete"] and head["rows_done"] == 0):
        out.unlink()  # (an interrupted store without a single row holds nothing to resume: start it afresh)
        shutil.rmtree(plan.parts, ignore_errors=True)
        return None
    if head["fingerprint"] != plan.fingerprint:
        diff = schema.fingerprint_diff(head["provenance"], plan.provenance)
        raise file_error(out, f"fingerprint mismatch: the existing store was made from a different "
                              f"{', '.join(diff) or 'configuration'}; pass --force (or another --out) for a new store")
    s = head["settings"]
    if not head["complete"] and (s["block_rows"] != plan.block_rows or s["batch_size"] != plan.batch_size):
        raise ConfigFieldError("batch_size", f"the interrupted store was started with --batch-size {s['batch_size']} "
                                           f"--block-rows {s['block_rows']}; rerun with those to continue it, "
                                           f"or pass --force to start over")
    return head


def existing_settings(out: Path) -> dict[str, int]:
    """Batch size and block rows of an existing store (empty if none or unreadable: check_existing decides)."""
    if not out.is_file():
        return {}
    try:
        f = open_h5(out)
    except ClipgenError:
        return {}
    try:
        return {k: v for k, v in header_settings(f).items() if k in ("batch_size", "block_rows") and v}
    except (KeyError, OSError):
        return {}
    finally:
        f.close()


def discard_if_empty(out: Path) -> None:
    """Remove a store header (and its parts folder) in which no block was written: nothing to resume."""
    import shutil

    pdir = parts_dir(out)
    if completed_blocks_on_disk(pdir):
        return
    with contextlib.suppress(OSError, ClipgenError):
        if out.is_file() and not read_plan_header(out)["complete"]:
            out.unlink()
    if not out.exists():
        shutil.rmtree(pdir, ignore_errors=True)
