"""Merging another base dataset (CC3M, CC12M, any ``filepath<TAB>title`` TSV) with mixtures.

For its CC3M/CC12M runs the paper trains on ``{cc}-train.tsv`` followed by the DomainNet part of a mixture
(``dn-captions-train-{identifier}.tsv``), without ImageNet-Captions, and validates on the plain ``{cc}-val.tsv``.
:func:`run_merge_base` does the same for any mixture written by ``clipgen data mixtures``: it takes the DomainNet part
from the mixture folder (the ``dn-captions`` file, or the ``combined-captions`` file minus its recorded base rows)
and writes ``{name}-train-{identifier}.tsv`` = base rows, then the DomainNet rows.

Differences from the published ``merge_ccxm.py``: outputs go to ``--out`` (the script wrote to a misspelt
``data/indicies/`` folder and skipped files by checking that path, so its "already exists" test looked in the
wrong place); existing outputs need ``--force``; natural-only is ``{name}-train-lso-real-only.tsv`` (what the
script wrote; its training script looked for ``{name}-train-real-only.tsv``), and every output is recorded in
``mixtures.json`` so training finds its setup without parsing names.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from clipgen.data.mixture_info import INDEX_NAME, MixtureInfo, write_index
from clipgen.errors import ClipgenError, ConfigFieldError, file_error

#: The seven mixtures of the paper's CC3M/CC12M runs (natural-only; CG low, CG high, LOD for clipart and sketch).
PAPER_CC_IDENTIFIERS: tuple[str, ...] = (
    "lso-real-only",
    "lso-cr-noclipartclasses", "lso-cipqrs-noclipartclasses", "lso-ipqrs-noclipartclasses",
    "lso-rs-nosketchclasses", "lso-cipqrs-nosketchclasses", "lso-cipqr-nosketchclasses",
)


def iter_base(path: str | Path, field: str = "base", check_files: bool = False) -> Iterator[tuple[str, str]]:
    """Stream ``(absolute path, caption)`` rows of a base TSV (relative paths: relative to the TSV's folder)."""
    from clipgen.tsv import iter_tsv_lines

    path = Path(path)
    if not path.is_file():
        raise ConfigFieldError(field, f"{path}: base TSV not found")
    folder = path.resolve().parent
    for i, fp, title in iter_tsv_lines(path):
        p = Path(fp)
        absolute = p if p.is_absolute() else folder / p
        if check_files and not absolute.is_file():
            raise file_error(path, f"image {absolute} does not exist", line=i)
        yield str(absolute), title


def default_base_name(base: Path) -> str:
    """``cc3m-train.tsv`` -> ``cc3m``."""
    stem = Path(base).name
    for suffix in (".tsv", ".csv"):
        stem = stem.removesuffix(suffix)
    return stem.removesuffix("-train").removesuffix("_train") or "base"


def load_index(folder: Path) -> dict[str, MixtureInfo]:
    import json

    path = folder / INDEX_NAME
    if not path.is_file():
        raise ConfigFieldError("mixtures",
                               f"{folder} has no {INDEX_NAME} (write mixtures with 'clipgen data mixtures')")
    try:
        raw = json.loads(path.read_text(encoding="utf-8")).get("mixtures", {})
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise file_error(path, f"unreadable mixture index ({e})") from None
    known = set(MixtureInfo.__dataclass_fields__)
    return {k: MixtureInfo(**{f: v for f, v in e.items() if f in known}) for k, e in raw.items()}


def dn_part_source(index: dict[str, MixtureInfo], identifier: str) -> MixtureInfo:
    """The train TSV holding ``identifier``'s DomainNet part: the dn-captions file if present, else the combined one."""
    cands = [i for i in index.values() if i.identifier == identifier and i.split == "train" and i.source is None
             and i.in_sketch is None]
    if not cands:
        raise ConfigFieldError("identifiers", f"no training mixture {identifier!r} in the mixture folder")
    cands.sort(key=lambda i: (i.base is not None, i.file))  # without base rows first
    return cands[0]


def read_dn_part(folder: Path, info: MixtureInfo) -> list[tuple[str, str]]:
    """The DomainNet rows of a mixture TSV (its recorded base rows skipped), checked against its counts."""
    from clipgen.tsv import read_tsv

    path = folder / info.file
    rows = read_tsv(path)
    nb = int(info.counts.get("base", 0)) if info.base is not None else 0
    total = int(info.counts.get("total", len(rows)))
    if len(rows) != total:
        raise file_error(path, f"has {len(rows)} rows but {INDEX_NAME} records {total}; rewrite it with "
                               f"'clipgen data mixtures --force'")
    return rows[nb:]


@dataclass
class MergeBaseConfig:
    """Options of ``clipgen data merge-base``."""

    base: Path  # filepath<TAB>title TSV, e.g. cc3m-train.tsv
    mixtures: Path  # folder written by clipgen data mixtures
    out: Path
    identifiers: list[str] = field(default_factory=lambda: ["all"])  # "all", "paper-cc", or identifiers
    name: str | None = None  # output prefix [default: base file name without -train.tsv]
    check_files: bool = False
    force: bool = False  # overwrite existing TSVs


def resolve_identifiers(requested: Sequence[str], index: dict[str, MixtureInfo]) -> list[str]:
    req = [r.strip() for r in requested if r.strip()]
    if not req or req == ["all"]:
        ids = sorted({i.identifier for i in index.values() if i.split == "train" and i.identifier
                      and i.source is None and i.in_sketch is None})
        if not ids:
            raise ConfigFieldError("mixtures", "the mixture folder holds no training mixture")
        return ids
    if req == ["paper-cc"]:
        req = list(PAPER_CC_IDENTIFIERS)
    out = []
    for r in req:
        ident = r if r.startswith("lso-") else f"lso-{r}"
        dn_part_source(index, ident)  # exists?
        if ident not in out:
            out.append(ident)
    return out


@dataclass
class MergeBaseResult:
    files: list[Path]
    infos: list[MixtureInfo]
    base_rows: int


def run_merge_base(cfg: MergeBaseConfig, *, progress: bool = True) -> MergeBaseResult:
    from clipgen.artifacts import config_record, write_json_atomic
    from clipgen.progress import make_progress
    from clipgen.tsv import write_tsv

    folder = Path(cfg.mixtures)
    if not folder.is_dir():
        raise ConfigFieldError("mixtures", f"{folder} is not a folder")
    index = load_index(folder)
    ids = resolve_identifiers(cfg.identifiers, index)
    name = cfg.name or default_base_name(cfg.base)
    if not name or "/" in name:
        raise ConfigFieldError("name", f"{name!r} is not a usable file name prefix")
    out = Path(cfg.out)
    targets = [out / f"{name}-train-{i}.tsv" for i in ids]
    if not cfg.force:
        for p in targets:
            if p.exists():
                raise ClipgenError(f"{p}: already exists (pass --force to overwrite)")
    # validate the base TSV once (and count it) before writing anything
    n_base = sum(1 for _ in iter_base(cfg.base, check_files=cfg.check_files))
    if n_base == 0:
        raise ConfigFieldError("base", f"{cfg.base}: base TSV has no rows")
    sources = [dn_part_source(index, i) for i in ids]
    parts = [read_dn_part(folder, s) for s in sources]
    base_abs = str(Path(cfg.base).resolve())
    infos: list[MixtureInfo] = []
    with make_progress(disable=not progress) as bar:
        task = bar.add_task(f"merging {name} with mixtures", total=len(ids))
        for target, src, dn_rows in zip(targets, sources, parts, strict=True):
            # base captions as they are (the published script copies the lines): doubled spaces, tabs and quotes kept
            n = write_tsv(target, _chain(iter_base(cfg.base), dn_rows), force=True, clean=False)
            dn_counts = {k: v for k, v in src.counts.items() if k not in ("base", "total")}
            counts = {"base": n_base, **dn_counts, "total": n}
            infos.append(replace(src, file=target.name, base=base_abs, counts=counts,
                                 source=str((folder / src.file).resolve())))
            bar.advance(task)
    write_index(out, infos)
    write_json_atomic(out / f"{name}-merge.config.json", config_record("data merge-base", cfg))
    return MergeBaseResult(targets, infos, n_base)


def _chain(a, b):
    yield from a
    yield from b
