"""``clipgen extract info`` and ``validate``: what a store holds, and whether it is sound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import clipgen.store.schema as schema
from clipgen.store.reader import ActivationStore, open_store


def _storage(ds) -> int:
    if ds.is_virtual:
        return 0
    return int(ds.id.get_storage_size())


def store_info(path: str | Path) -> dict[str, Any]:
    """Provenance summary, layers with shapes and sizes, completeness (incomplete stores and shards included)."""
    from clipgen.store.parts import rows_done

    path = Path(path)
    with open_store(path, allow_incomplete=True) as st:
        f = st.file
        prov = st.provenance
        layers = []
        for name in st.layers:
            ds = f[schema.dataset_path(name)]
            info = st.layer_info(name)
            raw = int(np.prod(ds.shape)) * ds.dtype.itemsize
            layers.append({"name": name, "shape": list(ds.shape), "original_shape": list(info["original_shape"]),
                           "pooling": info["pooling"], "dtype": info["dtype"], "stored_bytes": _storage(ds),
                           "raw_bytes": raw, "virtual": bool(ds.is_virtual)})
        s = st.samples
        counts = {st.samples.domain_names[d] if d >= 0 else "(none)": int(c)
                  for d, c in zip(*np.unique(s.domains, return_counts=True), strict=True)}
        img = prov.get("image_set", {})
        return {
            "path": str(path), "format": schema.FORMAT, "schema_version": st.schema_version,
            "complete": st.complete, "rows_complete": st.rows_complete, "shard": st.shard,
            "rows": st.n_samples, "rows_done": rows_done(path, f), "skipped": len(st.skipped),
            "fingerprint": st.fingerprint, "created": st.created, "dtype": st.dtype,
            "model": (prov.get("model") or {}).get("name"), "epoch": prov.get("epoch"),
            "checkpoint": (prov.get("checkpoint") or {}).get("path"),
            "checkpoint_sha256": (prov.get("checkpoint") or {}).get("sha256"),
            "image_set": {k: img.get(k) for k in ("kind", "index", "split", "domains", "n_rows", "sha256") if k in img},
            "pooling": prov.get("pooling"), "precision": prov.get("precision"),
            "clipgen_version": prov.get("clipgen_version"), "command_line": prov.get("command_line"),
            "domains": counts, "classes": len(st.class_names), "held_out_labels": st.held_out_labels,
            "text": None if st.text_embeddings is None else {"classes": len(st.text_embeddings[0]),
                                                             "templates": len(st.text_embeddings[2])},
            "layers": layers, "file_bytes": path.stat().st_size,
        }


def validate_store(path: str | Path, *, check_values: bool = True) -> list[str]:
    """Every problem found (an empty list means sound). Refusals of :func:`open_store` raise as usual."""
    problems: list[str] = []
    with open_store(path, allow_incomplete=True) as st:
        _validate(st, problems, check_values)
    return problems


def _validate(st: ActivationStore, problems: list[str], check_values: bool) -> None:
    f = st.file
    n = st.n_samples
    if not st.rows_complete:
        problems.append("incomplete: not every row is written")
    if schema.fingerprint(st.provenance) != st.fingerprint:
        problems.append("fingerprint does not match the recorded provenance")
    s = st.samples
    for name in ("paths", "labels", "domains", "splits", "index"):
        if len(getattr(s, name)) != n:
            problems.append(f"/samples: {name} has {len(getattr(s, name))} rows, n_samples is {n}")
    if len(s.domains) and (s.domains.max() >= len(s.domain_names) or s.domains.min() < -1):
        problems.append("/samples/domain: ids outside the domain name table")
    if len(s.index) > 1 and np.any(np.diff(s.index) <= 0):
        problems.append("/samples/index: rows are not strictly increasing (duplicates or disorder)")
    skipped = np.asarray([i for i, _, _ in st.skipped], dtype=np.int64)
    if np.intersect1d(skipped, s.index).size:
        problems.append("/skipped: a skipped row is also stored")
    covered = np.union1d(skipped, s.index)
    if st.rows_complete:
        lo = st.shard["start"] if st.shard else 0
        hi = st.shard["stop"] if st.shard else (int(covered.max()) + 1 if covered.size else 0)
        total = (st.provenance.get("image_set") or {}).get("n_rows")
        if st.shard is None and total is not None:
            hi = int(total)
        if hi <= lo:
            problems.append("rows: the store covers no image of its image set")
        elif covered.size != hi - lo or covered.min() != lo or covered.max() != hi - 1:
            problems.append(f"rows: stored + skipped rows do not cover the image-set rows {lo}..{hi - 1} exactly "
                            f"({covered.size} of {hi - lo} covered)")
        if "progress" in f:
            done = int(f["progress"].attrs.get("rows_done", -1))
            if done != n:
                problems.append(f"/progress: {done} rows recorded as written, n_samples is {n}")
    labels_present = set(np.unique(s.labels[s.labels >= 0]).tolist())
    missing_names = labels_present - set(st.class_names)
    if st.class_names and missing_names:
        problems.append(f"/classes: no name for label(s) {sorted(missing_names)[:5]}")
    emb_dim = None
    for name in st.layers:
        path = schema.dataset_path(name)
        if path not in f:
            problems.append(f"layer {name}: dataset /{path} is missing")
            continue
        ds = f[path]
        if ds.shape[0] != n:
            problems.append(f"layer {name}: {ds.shape[0]} rows, n_samples is {n}")
            continue
        if name == schema.EMBEDDING:
            emb_dim = ds.shape[1]
        if not check_values or not st.rows_complete:
            continue
        bad = 0
        norm_err = 0.0
        for _, block in st.iter_layer(name):
            bad += int((~np.isfinite(block)).sum())
            if name == schema.EMBEDDING and len(block):
                norm_err = max(norm_err, float(np.abs(np.linalg.norm(block, axis=1) - 1).max()))
        if bad:
            problems.append(f"layer {name}: {bad} non-finite value(s)")
        if norm_err > 1e-3:
            problems.append(f"layer embedding: rows are not unit-norm (max |norm - 1| = {norm_err:.2g})")
    te = st.text_embeddings
    if te is not None:
        if te[1].shape[0] != len(te[0]):
            problems.append("/text: labels and embeddings differ in length")
        if emb_dim is not None and te[1].shape[1] != emb_dim:
            problems.append(f"/text: embedding width {te[1].shape[1]} differs from the image embedding {emb_dim}")
        if not te[2]:
            problems.append("/text: no templates recorded")
