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
