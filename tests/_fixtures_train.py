"""Fixtures of the training tests, also used by the eval/extract/demo tests.

- :func:`write_synth_mixtures` writes the paper's mixtures (natural-only + CG low/high + leave-out-domain per
  test domain, train and val) over the tiny synthetic DomainNet, with a ``mixtures.json`` index - a simple
  stand-in for ``clipgen data mixtures`` (no size matching, one caption template).
- ``train_mixtures``: that folder (session, shared across xdist workers).
- ``trained_run_dir``: a real CLIP run trained through ``clipgen train clip`` (RN-tiny, the CG low-diversity
  sketch mixture, 2 epochs, CPU fp32), with ``checkpoints/epoch_0.pt .. epoch_2.pt`` and the manifest.
  Read-only for tests: copy it before modifying.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import shared_artifact

TRAINED_RUN_EPOCHS = 2
TRAINED_RUN_MIXTURE = ("cg-low", "sketch")


def mixture_file(setup: str, test_domain: str | None, split: str) -> str:
    return f"synth-{split}-{setup}" + (f"-{test_domain}" if test_domain else "") + ".tsv"


def write_synth_mixtures(root: Path, out: Path) -> Path:
    """The main-grid mixtures over the synthetic DomainNet at ``root``, written into ``out`` with mixtures.json."""
    from clipgen import domainnet as dn
    from clipgen.data.mixture_info import MixtureInfo, write_index
    from clipgen.tsv import read_tsv, write_tsv

    root = Path(root).resolve()
    out.mkdir(parents=True, exist_ok=True)
    samples = {(d, s): dn.read_split(root, d, s) for d in dn.DOMAINS for s in dn.SPLITS}
    names = {x.label: dn.folder_to_name(x.folder) for v in samples.values() for x in v}
    held = sorted(lab for lab, n in names.items() if dn.normalise_class_name(n) in dn.HELD_OUT_CLASSES)
    base = {"train": read_tsv(root / "base_train.tsv"), "test": read_tsv(root / "base_val.tsv")}

    def rows(split: str, domains, restricted: str | None):
        out_rows = list(base[split])
        counts: dict = {"base": len(base[split])}
        for d in domains:
            keep = [x for x in samples[(d, split)] if not (d == restricted and x.label in held)]
            out_rows += [(str(root / x.path), f"a {dn.DOMAIN_TERMS[d][0]} of a {names[x.label]}.") for x in keep]
            counts[d] = {"id": sum(x.label not in held for x in keep), "ood": sum(x.label in held for x in keep)}
        counts["total"] = len(out_rows)
        return out_rows, counts

    plans: list[tuple[str, str | None, tuple[str, ...], str | None]] = [("natural-only", None, ("real",), None)]
    for x in dn.TEST_DOMAINS:
        plans.append(("cg-low", x, tuple(d for d in dn.DOMAINS if d in ("real", x)), x))
        plans.append(("cg-high", x, dn.DOMAINS, x))
        plans.append(("leave-out-domain", x, tuple(d for d in dn.DOMAINS if d != x), None))
    infos = []
    for setup, x, domains, restricted in plans:
        for split, tag in (("train", "train"), ("test", "val")):
            r, counts = rows(split, domains, restricted)
            fname = mixture_file(setup, x, tag)
            write_tsv(out / fname, r)
            infos.append(MixtureInfo(file=fname, split=tag, setup=setup, domains=list(domains), test_domain=x,
                                     held_out=[names[h] for h in held], held_out_labels=held, size_matched=False,
                                     subsample="none", base=str(root / "base_train.tsv"), counts=counts))
    write_index(out, infos, merge=False)
    return out


@pytest.fixture(scope="session")
def train_mixtures(synth_root, tmp_path_factory) -> Path:
    """Folder with the synthetic main-grid mixtures and their mixtures.json (read-only for tests)."""
    return shared_artifact(tmp_path_factory, "train-mixtures",
                           lambda p: write_synth_mixtures(synth_root, p / "indices")) / "indices"


def train_tiny_run(mixtures: Path, logs: Path, name: str = "run", epochs: int = TRAINED_RUN_EPOCHS,
                   *extra: str) -> Path:
    """Train RN-tiny through the real ``clipgen train clip`` command (in-process CLI, trainer subprocess)."""
    from typer.testing import CliRunner

    from clipgen.cli.main import app

    setup, x = TRAINED_RUN_MIXTURE
    args = ["train", "clip", "--train", str(mixtures / mixture_file(setup, x, "train")),
            "--val", str(mixtures / mixture_file(setup, x, "val")), "--logs", str(logs), "--name", name,
            "--preset", "synthetic", "--model", "RN-tiny", "--epochs", str(epochs), "--device", "cpu",
            "--precision", "fp32", "--log", "quiet", *extra]
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    if r.exit_code != 0:
        raise RuntimeError(f"clipgen {' '.join(args)} failed ({r.exit_code}): {r.stderr[-2000:]}")
    return logs / name


@pytest.fixture(scope="session")
def trained_run_dir(train_mixtures, tmp_path_factory) -> Path:
    """A trained RN-tiny CLIP run directory (epochs 0..2; read-only for tests)."""
    return shared_artifact(tmp_path_factory, "run-trained-rn-tiny",
                           lambda p: train_tiny_run(train_mixtures, p / "logs")) / "logs" / "run"
