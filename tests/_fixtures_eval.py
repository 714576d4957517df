"""Fixtures of the evaluation tests: DomainNet roots derived from the tiny synthetic one, and fake results."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import shared_artifact


def derived_root(src: Path, dst: Path, keep=None, drop_splits: tuple[str, ...] = ()) -> Path:
    """A DomainNet root at ``dst`` that links ``src``'s image folders and rewrites its split files.

    ``keep(domain, split, lines) -> lines`` filters the lines of each split file; ``drop_splits`` names split
    files (e.g. ``"quickdraw_test"``) to leave out.
    """
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_dir():
            os.symlink(p.resolve(), dst / p.name)
        elif p.name.endswith(("_train.txt", "_test.txt")):
            stem = p.name[:-4]
            if stem in drop_splits:
                continue
            lines = p.read_text().splitlines()
            if keep is not None:
                d, s = stem.rsplit("_", 1)
                lines = keep(d, s, lines)
            (dst / p.name).write_text("".join(x + "\n" for x in lines))
        else:
            shutil.copy(p, dst / p.name)
    return dst


def _uneven(domain: str, split: str, lines: list[str]) -> list[str]:
    """Unequal class sizes in the test split: the k-th class (by label) keeps k+1 of its images (at most all)."""
    if split != "test":
        return lines
    by_label: dict[int, list[str]] = {}
    for x in lines:
        by_label.setdefault(int(x.split()[1]), []).append(x)
    out = []
    for k, lab in enumerate(sorted(by_label)):
        out += by_label[lab][: k + 1]
    return out


@pytest.fixture(scope="session")
def uneven_root(synth_root, tmp_path_factory) -> Path:
    """The tiny synthetic DomainNet with unequal class sizes in every test split (1, 2, 3, 4, 4, 4 images)."""
    return shared_artifact(tmp_path_factory, "eval-uneven-root",
                           lambda p: derived_root(synth_root, p / "dn", keep=_uneven)) / "dn"


@pytest.fixture(scope="session")
def zs_sketch(random_run_dir, uneven_root, tmp_path_factory) -> Path:
    """Zero-shot results of the random-weight run on sketch (epochs 0-2), on the uneven root (read-only)."""
    def build(p: Path) -> None:
        from clipgen.evaluation.zeroshot_eval import ZeroShotConfig, run_zero_shot

        run_zero_shot(ZeroShotConfig(data_root=uneven_root, model_dir=random_run_dir, test_domain="sketch",
                                     out=p / "out", progress=False))

    return shared_artifact(tmp_path_factory, "eval-zs-sketch", build) / "out"


def fake_results(path: Path, *, setup: str | None, test_domain: str, seed, values: list[float],
                 metric: str = "ood_acc", unweighted: list[float] | None = None, kind: str = "zero-shot",
                 model: str = "RN50", name: str | None = None, pseudo: bool = False,
                 mixture_test_domain: str | None = "same", epochs: list[int] | None = None) -> Path:
    """A schema-conforming results.json whose test-domain ``metric`` takes ``values`` over epochs."""
    epochs = epochs or list(range(len(values)))
    mix = None
    if setup is not None:
        mix = {"setup": setup, "domains": ["real", test_domain], "pseudo": pseudo, "allow_pct": None,
               "aligned": False, "base": None,
               "test_domain": None if setup == "natural-only" else
               (test_domain if mixture_test_domain == "same" else mixture_test_domain)}
    metrics = {}
    for d in (test_domain, "real"):
        m = {k: [0.0] * len(values) for k in ("ood_acc", "id_acc", "ood_acc_unweighted", "id_acc_unweighted",
                                               "ood_top5", "id_top5", "ood_macro_f1", "id_macro_f1")}
        if d == test_domain:
            m[metric] = list(values)
            if unweighted is not None:
                m["ood_acc_unweighted"] = list(unweighted)
        m["per_class_ood"] = {}
        metrics[d] = m
    doc = {"format": "clipgen-eval-results", "schema_version": 1, "kind": kind,
           "run": {"name": name or path.parent.name, "seed": seed, "model": model, "setup": setup, "mixture": mix},
           "test_domain": test_domain, "domains": [test_domain, "real"], "method": {"templates": "paper"},
           "epochs": epochs, "metrics": metrics}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path
