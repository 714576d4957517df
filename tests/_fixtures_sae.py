"""Synthetic data for the SAE tests (sparse non-negative combinations of planted unit-norm dictionary atoms, stores),
and the small run configurations and models the SAE test modules share."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipgen.analysis.sae import SAEArch, SAETrainConfig, SparseAutoencoder


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


def sae_cfg(out, **kw) -> SAETrainConfig:
    base = dict(out=str(out), expansion=4, l1=3e-2, lr=1e-2, batch_size=128, epochs=2, seed=0, resample_every=0,
                log_every=128 * 8, val_every=0, checkpoint_every=0, device="cpu")
    base.update(kw)
    return SAETrainConfig(**base)


def run_log(path) -> list[dict]:
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", name="planted")
def planted_fixture():
    """``planted``: the data set the SAE tests train on (a test module imports ``planted_fixture`` to use it)."""
    return planted_data(n=4096, d=16, n_atoms=24, active=3, seed=0)


def model_with_dead(n_dead: int) -> SparseAutoencoder:
    m = SparseAutoencoder(SAEArch(d_in=16, d_sae=64), seed=0)
    with torch.no_grad():
        m.b_enc[:n_dead] = -100.0
    return m


def store_cfg(out, stores, **kw):
    base = dict(stores=[str(s) for s in stores], out=str(out), expansion=2, l1=1e-3, lr=1e-2, batch_size=16,
                epochs=2, seed=0, resample_every=0, log_every=16 * 4, val_every=0, checkpoint_every=0, device="cpu")
    base.update(kw)
    return SAETrainConfig(**base)
