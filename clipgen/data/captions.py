"""DomainNet caption files: one caption per image, from the split files, paper-faithful.

Each image gets ``template.format(A=article, T=term, C=class name)`` with

* a template drawn uniformly from the six :data:`~clipgen.domainnet.CAPTION_TEMPLATES`, whose full stop is
  dropped with probability 0.5;
* a term drawn uniformly from the two generic terms plus the image's two domain terms (standard captions), or
  from the generic terms only ("aligned" captions, which never reveal the domain);
* the term's article (:data:`~clipgen.domainnet.TERM_ARTICLES`, "a axe" kept as in the original) and the class
  name = the class folder with ``_`` replaced by a space (``The_Eiffel_Tower`` -> ``The Eiffel Tower``).

The random stream is the published script's: one :class:`random.Random` seeded with ``seed`` (42), consumed in the
order clipart, infograph, painting, quickdraw, real, sketch, and train before test inside each domain, three draws
per image (template, full stop, term). The aligned captions restart the stream from the same seed. So the same
seed on the real DomainNet gives the paper's captions, byte for byte.

Layout (the published one, relative to the output folder, ``<root>/captions`` by default)::

    <out>/{domain}_{split}.tsv                   relative/path<TAB>label<TAB>caption   (no header)
    <out>/aligned-captions/{domain}_{split}.tsv  the same with aligned captions
    <out>/captions.config.json, captions-summary.json

Paths stay relative to the DomainNet root, as in the split files; ``clipgen data mixtures`` joins them with the
root it is given. Unlike the published script, nothing is written into the dataset folder itself (unless
``--out`` points there) and no symlinks are made for the aligned captions.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from clipgen import domainnet as dn
from clipgen.artifacts import atomic_path, config_record, write_json_atomic
from clipgen.errors import ClipgenError, ConfigFieldError, file_error

ALIGNED_DIR = "aligned-captions"
DEFAULT_SUBDIR = "captions"
SUMMARY_NAME = "captions-summary.json"
CONFIG_NAME = "captions.config.json"
#: The published seed.
PAPER_SEED = 42

#: One caption row: path relative to the DomainNet root, label, caption.
CaptionRow = tuple[str, int, str]


@dataclass
class CaptionConfig:
    """Options of ``clipgen data captions``."""

    root: Path  # DomainNet root (real or synthetic) with {domain}_{split}.txt
    out: Path | None = None  # default: <root>/captions
    seed: int = PAPER_SEED
    aligned: bool = True  # also write the aligned captions
    check_files: bool = False  # check that every image exists
    force: bool = False  # overwrite existing caption files


def default_captions_dir(root: str | Path) -> Path:
    return Path(root) / DEFAULT_SUBDIR


def caption_path(captions_dir: str | Path, domain: str, split: str, aligned: bool = False) -> Path:
    base = Path(captions_dir) / ALIGNED_DIR if aligned else Path(captions_dir)
    return base / f"{domain}_{split}.tsv"


def terms_for(domain: str, aligned: bool) -> tuple[str, ...]:
    return dn.GENERIC_TERMS if aligned else dn.GENERIC_TERMS + dn.DOMAIN_TERMS[domain]


def make_caption(rng: random.Random, domain: str, folder: str, aligned: bool = False) -> str:
    """One caption; three draws from ``rng`` in the published order (template, full stop, term)."""
    template = rng.choice(dn.CAPTION_TEMPLATES)
    if not rng.random() < 0.5:
        template = template[:-1]
    term = rng.choice(terms_for(domain, aligned))
    return template.format(A=dn.TERM_ARTICLES[term], T=term, C=dn.folder_to_name(folder))


def _check_layout(samples: Iterable[dn.Sample], root: Path, domain: str, split: str) -> None:
    path = dn.split_file(root, domain, split)
    for s in samples:
        parts = s.path.split("/")
        if len(parts) < 3 or parts[0] != domain or not parts[1]:
            raise file_error(path, f"path {s.path!r} is not '{domain}/<class folder>/<file>'", line=s.line)


def generate_captions(splits: dict[tuple[str, str], list[dn.Sample]], seed: int = PAPER_SEED,
                      aligned: bool = False) -> dict[tuple[str, str], list[CaptionRow]]:
    """Captions for every (domain, split), consuming one random stream in the published order."""
    rng = random.Random(seed)
    out: dict[tuple[str, str], list[CaptionRow]] = {}
    for d in dn.DOMAINS:
        for split in dn.SPLITS:
            if (d, split) not in splits:
                continue
            out[(d, split)] = [(s.path, s.label, make_caption(rng, d, s.path.split("/")[1], aligned))
                               for s in splits[(d, split)]]
    return out


def mentions_domain(caption: str, domain: str) -> bool:
    """Whether a caption uses one of ``domain``'s terms (the term sits after the article or the class name)."""
    return any(f" {t}" in f" {caption}" for t in dn.DOMAIN_TERMS[domain])


@dataclass
class CaptionResult:
    out: Path
    files: list[Path]
    counts: dict[str, dict[str, int]]  # domain -> split -> rows
    domain_term_fraction: dict[str, dict[str, float]]  # kind ("standard"/"aligned") -> domain -> fraction
    summary: Path


def write_caption_file(path: Path, rows: list[CaptionRow], force: bool) -> None:
    with atomic_path(path, force=force) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{p}\t{label}\t{cap}\n" for p, label, cap in rows)


def run_captions(cfg: CaptionConfig, *, progress: bool = True) -> CaptionResult:
    """Read and validate all split files, then write the standard (and aligned) caption files."""
    from clipgen.progress import make_progress

    root = Path(cfg.root)
    if not root.is_dir():
        raise ConfigFieldError("root", f"{root} is not a folder")
    out = Path(cfg.out) if cfg.out is not None else default_captions_dir(root)
    kinds = [False, True] if cfg.aligned else [False]
    targets = [caption_path(out, d, s, a) for a in kinds for d in dn.DOMAINS for s in dn.SPLITS]
    if not cfg.force:
        existing = [p for p in targets if p.exists()]
        if existing:
            raise ClipgenError(f"{existing[0]}: already exists (pass --force to overwrite)")
    # everything is read and validated before the first file is written
    splits: dict[tuple[str, str], list[dn.Sample]] = {}
    for d in dn.DOMAINS:
        for s in dn.SPLITS:
            samples = dn.read_split(root, d, s, check_files=cfg.check_files)
            _check_layout(samples, root, d, s)
            splits[(d, s)] = samples
    for d in dn.DOMAINS:  # one folder per label, as DomainNet has
        dn.folders_by_label([x for s in dn.SPLITS for x in splits[(d, s)]],
                            source=f"{dn.split_file(root, d, 'train')} and {d}_test.txt")
    files: list[Path] = []
    fractions: dict[str, dict[str, float]] = {}
    with make_progress(disable=not progress) as bar:
        task = bar.add_task("writing caption files", total=len(targets))
        for aligned in kinds:
            caps = generate_captions(splits, cfg.seed, aligned=aligned)
            kind = "aligned" if aligned else "standard"
            fractions[kind] = {}
            for d in dn.DOMAINS:
                rows = caps[(d, "train")] + caps[(d, "test")]
                fractions[kind][d] = sum(mentions_domain(c, d) for _, _, c in rows) / max(1, len(rows))
                for s in dn.SPLITS:
                    p = caption_path(out, d, s, aligned)
                    write_caption_file(p, caps[(d, s)], force=True)
                    files.append(p)
                    bar.advance(task)
    counts = {d: {s: len(splits[(d, s)]) for s in dn.SPLITS} for d in dn.DOMAINS}
    summary = write_json_atomic(out / SUMMARY_NAME, {
        "format": "clipgen-captions-summary", "version": 1, "root": str(root.resolve()), "seed": cfg.seed,
        "counts": counts, "domain_term_fraction": fractions,
    })
    write_json_atomic(out / CONFIG_NAME, config_record("data captions", cfg))
    return CaptionResult(out, files, counts, fractions, summary)


# ---------------------------------------------------------------------------------------------------------------
# Reading caption files back (clipgen data mixtures)


def read_caption_file(path: str | Path, domain: str, num_classes: int = dn.NUM_CLASSES) -> list[CaptionRow]:
    """Read ``path<TAB>label<TAB>caption`` lines (the published format) with file:line errors."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "caption file not found (run 'clipgen data captions' first, or pass --captions)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise file_error(path, f"cannot read caption file ({e.__class__.__name__}: {e})") from None
    rows: list[CaptionRow] = []
    prefix = f"{domain}/"
    for i, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise file_error(path, f"expected 3 tab-separated fields 'path label caption', found {len(fields)}",
                             line=i)
        rel, lab, cap = fields
        try:
            label = int(lab)
        except ValueError:
            raise file_error(path, f"label {lab!r} is not an integer", line=i) from None
        if not 0 <= label < num_classes:
            raise file_error(path, f"label {label} out of range 0..{num_classes - 1}", line=i)
        if not rel.startswith(prefix):
            raise file_error(path, f"path {rel!r} is not in domain {domain!r}", line=i)
        rows.append((rel, label, cap.strip()))
    return rows


def check_matches_split(rows: list[CaptionRow], samples: list[dn.Sample], caption_file: Path,
                        split_file: Path) -> None:
    """Caption files must describe exactly the images of the split file (else they are stale)."""
    diff = [i for i, (r, s) in enumerate(zip(rows, samples, strict=False)) if r[0] != s.path or r[1] != s.label]
    if len(rows) != len(samples) or diff:
        k = diff[0] if diff else min(len(rows), len(samples))
        raise file_error(caption_file, f"does not match {split_file} ({len(rows)} vs {len(samples)} rows, first "
                                       f"difference at row {k + 1}); rerun 'clipgen data captions --force'")
