"""Synthetic data for the SAE tests: sparse non-negative combinations of planted unit-norm dictionary atoms."""

from __future__ import annotations

import numpy as np


def planted_data(n: int = 4096, d: int = 16, n_atoms: int = 24, active: int = 3, seed: int = 0,
                 offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(X (n, d), atoms (n_atoms, d))``: each row is ``offset + a sum of `active` atoms, weights in [0.5, 1.5]``."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((n_atoms, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    x = np.full((n, d), offset, dtype=np.float64)
    for i in range(n):
        idx = rng.choice(n_atoms, size=active, replace=False)
        x[i] += rng.uniform(0.5, 1.5, size=active) @ atoms[idx]
    return x.astype(np.float32), atoms.astype(np.float32)


def make_store(path, *, width: int = 16, labels=(0, 11, 13, 25), held_out=(11, 13),
               domains=("clipart", "real", "sketch"), per_cell: int = 6, splits=("train", "test"),
               provenance=None, seed: int = 0, layer: str = "embedding", x: np.ndarray | None = None,
               dtype: str = "float32"):
    """A complete store of ``per_cell`` rows per (label, domain, split) with one layer of ``width`` (random rows
    unless ``x`` is given, stored as ``dtype``; ``embedding`` is always float32); returns (path, the rows in store
    order)."""
    from clipgen.store import build_store_from_arrays

    rng = np.random.default_rng(seed)
    paths, labs, doms, spl = [], [], [], []
    for s in splits:
        for lab in labels:
            for d in domains:
                for i in range(per_cell):
                    paths.append(f"/data/{d}/{lab}/{s}_{i}.jpg")
                    labs.append(lab)
                    doms.append(d)
                    spl.append(s)
    n = len(paths)
    if x is None:
        x = rng.standard_normal((n, width)).astype(np.float32)
    names = {0: "aircraft carrier", 11: "axe", 13: "banana", 25: "bed"}
    build_store_from_arrays(path, paths=paths, labels=labs, domains=doms, splits=spl, layers={layer: x},
                            held_out_labels=list(held_out), provenance=provenance, dtype=dtype,
                            class_names={lab: names.get(lab, f"class{lab}") for lab in labels})
    return path, x
