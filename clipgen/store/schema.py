"""The activation store's schema (version 1, :data:`KIND`): names, attributes, fingerprint, chunking.

One HDF5 file per (checkpoint, image set) extraction. Layout (docs/extract.md documents it in full)::

    /                     attrs: format, schema_version, clipgen_version, created, complete, n_samples, layers,
                                 dtype, fingerprint, provenance (JSON), held_out_labels (JSON), shard (JSON)
    /samples/path         (N,) utf-8   absolute image path
    /samples/index        (N,) int64   row of the image-set index the sample came from
    /samples/label        (N,) int64   DomainNet label (-1 unknown)
    /samples/domain       (N,) int64   domain id (-1 unknown); attr ``names``: JSON list id -> name
    /samples/split        (N,) utf-8
    /layers/<name>        (N, C) pooled activations (or (N, *shape) with pooling "none"); attrs: channels,
                                 original_shape, pooling, kind, dtype
    /embeddings/image     (N, D) float32 L2-normalised image embedding (the layer called ``embedding``)
    /classes/label, /classes/name   (K,) label -> prompt class name
    /text/label (K,) int64, /text/embedding (K, D) float32, /text/template (T,) utf-8
    /skipped/index, /skipped/path, /skipped/reason   images left out (``--on-error skip``), never silently
    /progress             attrs: block_rows, n_blocks, rows_done, parts (folder of an extraction in progress)

The fingerprint is the sha256 of the provenance fields that decide what the numbers are (model and weights,
image set, preprocessing, pooling, layers, dtype, precision, templates); shards and resumed extractions must match
it. Everything that only says *how* the store was made (device, batch size, command line, dates) stays out.
"""

from __future__ import annotations

import hashlib
from typing import Any

from clipgen import domainnet as dn
from clipgen.store.kind import FileKind, canonical_json, dotted_get, parse_version

#: Provenance keys (dotted for nested ones) that make up the fingerprint.
FINGERPRINT_KEYS = (
    "model.name", "model.config", "checkpoint.sha256", "epoch", "image_set.sha256", "preprocess", "pooling",
    "layers", "dtype", "precision", "text.templates",
)

#: The activation store as a file kind: bumping the schema is one edit, ``schema_version`` here.
KIND = FileKind(format="clipgen-activations", schema_version="1.0", title="activation store", noun="store",
                fingerprint_keys=FINGERPRINT_KEYS, part_name=lambda k: f"block-{int(k):06d}.h5",
                part_pattern=r"^block-(\d{6})\.h5$", part_key=lambda m: int(m.group(1)))
FORMAT = KIND.format
SCHEMA_VERSION = KIND.schema_version

#: The name of the L2-normalised image embedding among the layers, and where it lives.
EMBEDDING = "embedding"
EMBEDDING_PATH = "embeddings/image"

DTYPES = ("float16", "float32")
#: The dtype of an image cache's ``pixels`` layer (``clipgen data cache``): model-input images before normalisation.
IMAGE_DTYPE = "uint8"
#: Target size of one compressed chunk before compression (rows x channels x itemsize).
CHUNK_BYTES = 1 << 18
MIN_CHUNK_ROWS = 16

__all__ = ["CHUNK_BYTES", "DTYPES", "EMBEDDING", "EMBEDDING_PATH", "FINGERPRINT_KEYS", "FORMAT", "IMAGE_DTYPE", "KIND",
           "MIN_CHUNK_ROWS", "SCHEMA_VERSION", "canonical_json", "chunk_rows", "dataset_path", "domain_table",
           "dotted_get", "fingerprint", "fingerprint_diff", "identity", "image_set_sha256", "parse_version"]


def dataset_path(layer: str) -> str:
    """Where a layer's dataset lives in the file."""
    return EMBEDDING_PATH if layer == EMBEDDING else f"layers/{layer}"


def identity(provenance: dict[str, Any]) -> dict[str, Any]:
    """The part of the provenance the fingerprint covers."""
    return KIND.identity(provenance)


def fingerprint(provenance: dict[str, Any]) -> str:
    """sha256 (hex) of the identity fields of ``provenance``."""
    return KIND.fingerprint(provenance)


def fingerprint_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The identity fields in which two provenances differ (for error messages)."""
    return KIND.fingerprint_diff(a, b)


def image_set_sha256(paths, labels, domains, splits) -> str:
    """sha256 of the rows of an image set (path, label, domain, split per line): what decides the store's rows."""
    h = hashlib.sha256()
    for p, lab, d, s in zip(paths, labels, domains, splits, strict=True):
        h.update(f"{p}\t{int(lab)}\t{d or ''}\t{s or ''}\n".encode())
    return h.hexdigest()


def domain_table(names) -> tuple[list[str], list[int]]:
    """Domain names per row -> (id -> name list, id per row); None/"" -> -1.

    When every name is a DomainNet domain the ids are the canonical ones (c0 i1 p2 q3 r4 s5) and the table lists
    all six domains, so ids agree across stores; otherwise names get ids in order of first appearance.
    """
    seen = [n for n in dict.fromkeys(names) if n]
    if all(n in dn.DOMAINS for n in seen):
        table = list(dn.DOMAINS)
    else:
        table = [d for d in dn.DOMAINS if d in seen] + [n for n in seen if n not in dn.DOMAINS]
    ids = {n: i for i, n in enumerate(table)}
    return table, [ids[n] if n else -1 for n in names]


def chunk_rows(per_row_values: int, itemsize: int, block_rows: int | None = None) -> int:
    """Rows per chunk: a power of two near CHUNK_BYTES per chunk, dividing ``block_rows`` when given."""
    per_row = max(1, per_row_values * itemsize)
    rows = MIN_CHUNK_ROWS
    while rows * 2 * per_row <= CHUNK_BYTES:
        rows *= 2
    if block_rows:
        while rows > 1 and block_rows % rows:
            rows //= 2
        rows = min(rows, block_rows)
    return max(1, rows)
