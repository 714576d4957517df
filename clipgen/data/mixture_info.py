"""What a mixture TSV contains, recorded next to it so later steps never parse file names.

``clipgen data mixtures`` writes ``mixtures.json`` in its output folder: one :class:`MixtureInfo` per TSV
file name. ``clipgen train`` copies the entry of its training TSV into the run manifest, and
``clipgen eval summary`` groups runs by it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clipgen.artifacts import write_json_atomic
from clipgen.errors import file_error

INDEX_NAME = "mixtures.json"
#: Setups of the paper (Figure 1/2) plus "custom" for arbitrary domain subsets.
SETUPS = ("natural-only", "cg-low", "cg-high", "leave-out-domain", "custom")
#: ImageNet-Sketch experiments: ``add`` (three setups plus ImageNet sketches) and ``mix``
#: (CG high-diversity with ImageNet sketches, DomainNet sketches kept for a percentage of the C1 classes;
#: modes in the published order, which fixes the random stream).
SKETCH_MIX_MODES = {"fiftyp": 50, "twentyfivep": 25, "thirtyp": 30, "tenp": 10, "fivep": 5, "onep": 1, "one": None}
SETUP_TITLES = {
    "natural-only": "Natural-only",
    "cg-low": "CG low-diversity",
    "cg-high": "CG high-diversity",
    "leave-out-domain": "Leave-out-domain",
    "custom": "Domain subset",
    "natural-only+in-sketch": "Natural-only + ImageNet sketches",
    "leave-out-domain+in-sketch": "Leave-out-domain + ImageNet sketches",
    "cg-high+in-sketch": "CG high-diversity + ImageNet sketches",
    **{f"in-sketch-mix-{m}": "ImageNet sketches + DomainNet sketches of " + (f"{p}% of" if p else "one of")
       + " the C1 classes" for m, p in SKETCH_MIX_MODES.items()},
}


@dataclass
class MixtureInfo:
    """One mixture TSV (train or val)."""

    file: str  # TSV file name, e.g. combined-captions-train-lso-rs-nosketchclasses.tsv
    split: str  # "train" or "val"
    setup: str  # one of SETUPS
    domains: list[str]  # DomainNet domains included
    test_domain: str | None  # None for natural-only
    held_out: list[str] = field(default_factory=list)  # held-out class names
    held_out_labels: list[int] = field(default_factory=list)
    pseudo: bool = False  # upper bound: held-out classes of the test domain kept
    allow_pct: float | None = None  # fraction of held-out test-domain images allowed back in
    aligned: bool = False  # domain-neutral captions
    size_matched: bool = True
    subsample: str = "first-k"  # "first-k" (paper), "random", or "none"
    seed: int = 0
    base: str | None = None  # base dataset TSV merged in
    counts: dict[str, Any] = field(default_factory=dict)  # {"base": n, "<domain>": {"id": n, "ood": n}, "total": n}
    # Added later (all optional, so older indexes still load):
    identifier: str | None = None  # published identifier, e.g. lso-rs-nosketchclasses (never parse file names)
    caption_seed: int | None = None  # seed of the DomainNet captions (clipgen data captions)
    reference_size: int | None = None  # S(X) the DomainNet part was matched to (None when not size-matched)
    source: str | None = None  # the mixture TSV this one was derived from (merge-base, ImageNet-Sketch)
    in_sketch: dict[str, Any] | None = None  # ImageNet-Sketch details: variant, mode, filter, counts

    @property
    def title(self) -> str:
        t = SETUP_TITLES.get(self.setup, self.setup)
        if self.pseudo:
            t += " (upper bound)"
        if self.allow_pct is not None:
            t += f" + {self.allow_pct:g} held-out"
        if self.aligned:
            t += ", aligned captions"
        return t


def write_index(out_dir: str | Path, infos: list[MixtureInfo], merge: bool = True) -> Path:
    """Write (or update) ``mixtures.json`` in ``out_dir``."""
    path = Path(out_dir) / INDEX_NAME
    data: dict[str, Any] = {}
    if merge and path.is_file():
        data = json.loads(path.read_text(encoding="utf-8")).get("mixtures", {})
    for info in infos:
        data[info.file] = asdict(info)
    return write_json_atomic(path, {"format": "clipgen-mixtures", "version": 1, "mixtures": dict(sorted(data.items()))})


def read_info(tsv_path: str | Path) -> MixtureInfo | None:
    """The MixtureInfo of a TSV from the ``mixtures.json`` beside it, or None when there is none."""
    tsv_path = Path(tsv_path)
    path = tsv_path.parent / INDEX_NAME
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise file_error(path, f"unreadable mixture index ({e})") from None
    entry = raw.get("mixtures", {}).get(tsv_path.name)
    if entry is None:
        return None
    known = set(MixtureInfo.__dataclass_fields__)
    return MixtureInfo(**{k: v for k, v in entry.items() if k in known})
