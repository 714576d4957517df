"""Helpers for the circuits tests: a run directory of a model with non-degenerate weights, a small circuits
computation and exact file comparisons (the fixtures are in tests/_fixtures_circuits.py).

The models themselves (:func:`~clipgen.circuits.attribution_reference.perturbed_model`, with live residual branches)
are in clipgen.circuits.attribution_reference, which the benchmarks use too.
"""

from __future__ import annotations

from pathlib import Path

from clipgen.circuits.attribution_reference import perturbed_model
from tests.conftest import h5_datasets


def make_perturbed_run(path: Path, model: str = "RN-tiny", epochs: tuple[int, ...] = (1, 2), seed: int = 0) -> Path:
    """A run directory (manifest + checkpoints) whose weights are :func:`perturbed_model` (one seed per epoch)."""
    import torch

    from clipgen.models.registry import model_config
    from clipgen.runs import RunManifest, write_manifest

    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    for e in epochs:
        m = perturbed_model(model, seed * 1000 + e)
        torch.save({"epoch": e, "name": path.name, "state_dict": m.state_dict()},
                   path / "checkpoints" / f"epoch_{e}.pt")
    write_manifest(path, RunManifest(kind="clip", name=path.name, model=model, model_config=model_config(model),
                                     seed=seed))
    return path


#: A small circuits computation for the store, compute and CLI tests: 2 classes (axe is held out) x 2 domains.
SMALL = dict(classes="axe,cello", domains="cq", steps=2, samples_per_class=3, device="cpu")


def small_config(out: Path, run_dir: Path, data: Path, **kw):
    from clipgen.circuits.compute import CircuitsConfig

    return CircuitsConfig(out=Path(out), model_dir=Path(run_dir), data=Path(data), **{**SMALL, **kw})


def assert_same_entries(a: Path, b: Path) -> None:
    """Two circuits files hold bit-identical entries and text, with the same fingerprint and plan."""
    import h5py
    import numpy as np

    da, db = h5_datasets(a), h5_datasets(b)
    assert sorted(da) == sorted(db)
    for k in da:
        assert da[k].dtype == db[k].dtype, k
        np.testing.assert_array_equal(da[k], db[k], err_msg=k)
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for key in ("fingerprint", "plan", "layers", "classes", "held_out", "settings", "domains", "complete"):
            assert fa.attrs[key] == fb.attrs[key], key
        for name in fa["entries"]:
            for lab in fa["entries"][name]:
                ga, gb = fa[f"entries/{name}/{lab}"].attrs, fb[f"entries/{name}/{lab}"].attrs
                for key in ("n_images", "class_name", "label", "domain", "complete"):
                    assert ga[key] == gb[key], (name, lab, key)
