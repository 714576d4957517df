# Over 500 lines on purpose: planning, building, writing and summarising mixtures share MixtureSpec and its names.
"""Training and validation mixtures, named as the published files.

A mixture is the base dataset (optional here; ImageNet-Captions in the paper, ``base_train.tsv`` of a synthetic
root) plus a DomainNet part:

================== ====================================================== ================================
setup              DomainNet part (test domain X, held-out classes C2)    identifier
================== ====================================================== ================================
natural-only       real, all classes, never size-matched                   ``lso-real-only``
cg-low             real + X without C2                                     ``lso-{r+X}-no{X}classes``
cg-high            all six domains, X without C2                           ``lso-cipqrs-no{X}classes``
leave-out-domain   the five domains other than X                           ``lso-{all but X}-no{X}classes``
custom             any domain subset holding X, X without C2 (Fig. 3/8)    ``lso-{letters}-no{X}classes``
================== ====================================================== ================================

Suffixes, in the published order: ``-nosub`` (not size-matched), ``-pseudo`` (upper bound: C2 of X kept),
``-allow{p}`` (a fraction p of X's C2 training images allowed back in), ``-aligned`` (domain-neutral captions);
clipgen adds ``-random{seed}`` for the seeded random subsampling (same sizes as first-k).

Files per mixture (``{split}`` = train or val): ``combined-captions-{split}-{identifier}.tsv`` (base rows first,
then the DomainNet part) and, when a base is given, also ``dn-captions-{split}-{identifier}.tsv`` (the DomainNet
part alone, as the published script writes it). Validation = the DomainNet *test* split of the same domains with
the same class filter (never subsampled) plus the base's validation TSV. Every TSV gets a
:class:`~clipgen.data.mixture_info.MixtureInfo` in ``mixtures.json``; ``mixtures-summary.json`` holds the
summary table (rows per domain and class group).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipgen import domainnet as dn
from clipgen.data.captions import caption_path, check_matches_split, default_captions_dir, read_caption_file
from clipgen.data.mixture_info import MixtureInfo, write_index
from clipgen.data.subsample import SUBSAMPLE_MODES, Group, first_k_counts, select
from clipgen.errors import ClipgenError, ConfigFieldError

MAIN_SETUPS: tuple[str, ...] = ("natural-only", "cg-low", "cg-high", "leave-out-domain")
SUMMARY_NAME = "mixtures-summary.json"
CONFIG_NAME = "mixtures.config.json"

#: A DomainNet row: absolute image path, label, caption.
Row = tuple[str, int, str]


# ---------------------------------------------------------------------------------------------------------------
# What a mixture is


@dataclass(frozen=True)
class MixtureSpec:
    """One mixture (train + val) to build."""

    setup: str  # natural-only, cg-low, cg-high, leave-out-domain, custom
    domains: tuple[str, ...]  # DomainNet domains of the mixture, in the order c i p q r s
    test_domain: str | None = None
    pseudo: bool = False
    allow_pct: float | None = None
    aligned: bool = False
    size_match: bool = True
    subsample: str = "first-k"
    seed: int = 0

    @property
    def filters_held_out(self) -> bool:
        """Whether X's held-out classes are removed (not for pseudo and allow-pct, as published)."""
        return self.test_domain is not None and not self.pseudo and self.allow_pct is None

    @property
    def identifier(self) -> str:
        if self.setup == "natural-only":
            ident = "real-only"
        else:
            ident = f"{dn.domain_letters(self.domains)}-no{self.test_domain}classes"
            if not self.size_match:
                ident += "-nosub"
            if self.pseudo:
                ident += "-pseudo"
            if self.allow_pct is not None:
                ident += f"-allow{float(self.allow_pct)}"
        if self.aligned:
            ident += "-aligned"
        if self.size_match and self.subsample == "random":
            ident += f"-random{self.seed}"
        return f"lso-{ident}"

    def file(self, split: str, kind: str = "combined") -> str:
        return f"{kind}-captions-{split}-{self.identifier}.tsv"


def setup_domains(setup: str, test_domain: str | None) -> tuple[str, ...]:
    if setup == "natural-only":
        return ("real",)
    if test_domain is None:
        raise ConfigFieldError("test_domains", f"setup {setup!r} needs a test domain")
    if setup == "cg-low":
        return tuple(d for d in dn.DOMAINS if d in ("real", test_domain))
    if setup == "cg-high":
        return dn.DOMAINS
    if setup == "leave-out-domain":
        return tuple(d for d in dn.DOMAINS if d != test_domain)
    raise ConfigFieldError("setups", f"unknown setup {setup!r} (one of {', '.join(MAIN_SETUPS)})")


def infer_setup(domains: Sequence[str], test_domain: str) -> str:
    """The paper's name for a domain set: cg-low, cg-high, leave-out-domain, or custom."""
    ds = set(domains)
    for setup in ("cg-low", "cg-high", "leave-out-domain"):
        if ds == set(setup_domains(setup, test_domain)):
            return setup
    return "custom"


def make_spec(setup: str | None, test_domain: str | None, *, domains: Sequence[str] | None = None,
              pseudo: bool = False, allow_pct: float | None = None, aligned: bool = False, size_match: bool = True,
              subsample: str = "first-k", seed: int = 0) -> MixtureSpec:
    """A validated spec, from a setup name or from an explicit domain set (``domains``)."""
    if subsample not in SUBSAMPLE_MODES:
        raise ConfigFieldError("subsample", f"unknown mode {subsample!r} (one of {', '.join(SUBSAMPLE_MODES)})")
    if domains is not None:
        ds = dn.parse_domains(list(domains), field="domain_sets")
        if test_domain is None:
            raise ConfigFieldError("test_domains", "a domain subset needs a test domain")
        if test_domain not in ds:
            raise ConfigFieldError("domain_sets", f"test domain {test_domain!r} is not among the domains "
                                            f"{dn.domain_letters(ds)!r} (use --setup leave-out-domain for the "
                                            f"leave-out-domain mixture)")
        setup = infer_setup(ds, test_domain)
    else:
        if setup not in MAIN_SETUPS:
            raise ConfigFieldError("setups", f"unknown setup {setup!r} (one of {', '.join(MAIN_SETUPS)})")
        ds = setup_domains(setup, test_domain)
    if setup == "natural-only":
        if pseudo or allow_pct is not None:
            raise ConfigFieldError("pseudo" if pseudo else "allow_pct",
                                   "natural-only has no test domain to pseudo-exclude or allow classes of")
        return MixtureSpec("natural-only", ds, None, aligned=aligned, size_match=False, subsample="first-k",
                           seed=seed)
    if pseudo and allow_pct is not None:
        raise ConfigFieldError("pseudo", "cannot be combined with --allow-pct")
    if (pseudo or allow_pct is not None) and test_domain not in ds:
        raise ConfigFieldError("pseudo" if pseudo else "allow_pct",
                               f"the {setup} mixture for {test_domain} does not contain {test_domain}")
    if allow_pct is not None:
        if not 0 < allow_pct <= 1:
            raise ConfigFieldError("allow_pct", f"{allow_pct} is not in (0, 1]")
        if not size_match:
            raise ConfigFieldError("allow_pct", "requires size matching (drop --no-size-match)")
    return MixtureSpec(setup, ds, test_domain, pseudo, allow_pct, aligned, size_match,
                       subsample if size_match else "first-k", seed)


# ---------------------------------------------------------------------------------------------------------------
# Data: the captioned DomainNet


@dataclass
class CaptionedDomainNet:
    """Caption rows of the DomainNet domains a set of mixtures needs, with their (domain, class) groups."""

    root: Path
    captions: Path
    aligned: bool
    rows: dict[tuple[str, str], list[Row]] = field(default_factory=dict)
    samples: dict[tuple[str, str], list[dn.Sample]] = field(default_factory=dict)
    _groups: dict[tuple[str, str], list[Group]] = field(default_factory=dict)

    def groups(self, domain: str, split: str) -> list[Group]:
        """Groups of one domain/split: classes in order of first appearance, indices in file order."""
        key = (domain, split)
        if key not in self._groups:
            by_label: dict[int, list[int]] = {}
            for i, (_, label, _) in enumerate(self.rows[key]):
                by_label.setdefault(label, []).append(i)
            self._groups[key] = [Group(domain, label, tuple(ix)) for label, ix in by_label.items()]
        return self._groups[key]

    def all_samples(self) -> list[dn.Sample]:
        return [s for v in self.samples.values() for s in v]


def load_domainnet(root: str | Path, domains: Iterable[str], *, captions: str | Path | None = None,
                   aligned: bool = False, check_files: bool = False) -> CaptionedDomainNet:
    """Read split files and caption files of ``domains`` (both splits), checking they agree."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigFieldError("root", f"{root} is not a folder")
    cap_dir = Path(captions) if captions is not None else default_captions_dir(root)
    if not cap_dir.is_dir():
        raise ConfigFieldError("captions", f"caption folder {cap_dir} not found (run 'clipgen data captions --root "
                                         f"{root}' first)")
    data = CaptionedDomainNet(root, cap_dir, aligned)
    prefix = str(root.resolve())
    for d in dn.DOMAINS:
        if d not in set(domains):
            continue
        for s in dn.SPLITS:
            samples = dn.read_split(root, d, s, check_files=check_files)
            cfile = caption_path(cap_dir, d, s, aligned)
            rows = read_caption_file(cfile, d)
            check_matches_split(rows, samples, cfile, dn.split_file(root, d, s))
            data.samples[(d, s)] = samples
            data.rows[(d, s)] = [(f"{prefix}/{rel}", label, cap) for rel, label, cap in rows]
    return data


def resolve_held_out(names: Sequence[str] | None, samples: Sequence[dn.Sample]) -> dn.HeldOut:
    """Explicit names must all be DomainNet classes present in the data; the default (the paper's 15) uses those
    present (:func:`clipgen.domainnet.resolve_held_out` on the split files' label -> folder)."""
    if names is not None:
        names = [n.strip() for n in names if n.strip()]
        if not names:
            raise ConfigFieldError("held_out", "no class given")
    held = dn.resolve_held_out(dn.folders_by_label(samples), names, field="held_out")
    if not held.labels:
        raise ConfigFieldError("held_out", "none of the paper's 15 held-out classes is in the data; name the held-out "
                                         "classes explicitly")
    return held


def held_out_record(held: dn.HeldOut) -> dict[str, Any]:
    """The held-out classes as the mixture summaries record them."""
    return {"names": held.names, "labels": held.by_name, "absent": held.absent, "explicit": held.explicit}


def reference_size(data: CaptionedDomainNet, test_domain: str, held: frozenset[int]) -> int:
    """S(X) = |real train| + |X train without the held-out classes| (the DomainNet part of CG low-diversity)."""
    n_real = len(data.rows[("real", "train")])
    n_x = sum(1 for _, label, _ in data.rows[(test_domain, "train")] if label not in held)
    return n_real + n_x


# ---------------------------------------------------------------------------------------------------------------
# Building


@dataclass
class BuiltMixture:
    spec: MixtureSpec
    train: list[Row]  # DomainNet part, in the published order
    val: list[Row]
    train_domains: list[str]  # domain of each train row (same length as train)
    counts: dict[str, dict[str, dict[str, int]]]  # split -> domain -> {"id", "ood"}
    reference_size: int | None


def _count(groups: Iterable[tuple[str, int, int]], held: frozenset[int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for d, label, n in groups:
        c = out.setdefault(d, {"id": 0, "ood": 0})
        c["ood" if label in held else "id"] += n
    return {d: out[d] for d in dn.DOMAINS if d in out}


def build_mixture(data: CaptionedDomainNet, spec: MixtureSpec, held: frozenset[int]) -> BuiltMixture:
    """The DomainNet part of one mixture (train and val)."""
    x = spec.test_domain

    def kept(d: str, label: int) -> bool:
        return not (spec.filters_held_out and d == x and label in held)

    groups = [g for d in spec.domains for g in data.groups(d, "train") if kept(d, g.label)]
    ref = None
    if spec.size_match:
        if x is None:
            raise ClipgenError("size matching needs a test domain")
        ref = reference_size(data, x, held)
        keep = first_k_counts(groups, ref, allow_pct=spec.allow_pct, test_domain=x, held_out=held)
        chosen = select(groups, keep, spec.subsample, spec.seed)
        train: list[Row] = []
        train_domains: list[str] = []
        for g, ix in zip(groups, chosen, strict=True):
            rows = data.rows[(g.domain, "train")]
            train.extend(rows[i] for i in ix)
            train_domains.extend([g.domain] * len(ix))
        train_counts = _count(((g.domain, g.label, k) for g, k in zip(groups, keep, strict=True)), held)
    else:  # file order, as the published script keeps it without subsampling
        train, train_domains = [], []
        for d in spec.domains:
            rows = [r for r in data.rows[(d, "train")] if kept(d, r[1])]
            train.extend(rows)
            train_domains.extend([d] * len(rows))
        train_counts = _count(((g.domain, g.label, g.n) for g in groups), held)
    val: list[Row] = []
    for d in spec.domains:
        val.extend(r for r in data.rows[(d, "test")] if kept(d, r[1]))
    val_counts = _count(((g.domain, g.label, g.n) for d in spec.domains for g in data.groups(d, "test")
                         if kept(d, g.label)), held)
    name = spec.identifier
    if not train:
        raise ClipgenError(f"mixture {name}: no training images (check --domains, --held-out and the split files)")
    if not val:
        raise ClipgenError(f"mixture {name}: no validation images in the test splits of {', '.join(spec.domains)}")
    return BuiltMixture(spec, train, val, train_domains, {"train": train_counts, "val": val_counts}, ref)


# ---------------------------------------------------------------------------------------------------------------
# Base dataset rows


def read_base(path: str | Path, field: str = "base", check_files: bool = False) -> list[tuple[str, str]]:
    """``(absolute path, caption)`` rows of a ``filepath<TAB>title`` TSV; relative paths are taken relative to the
    TSV's folder."""
    from clipgen.data.base import iter_base

    rows = list(iter_base(path, field=field, check_files=check_files))
    if not rows:
        raise ConfigFieldError(field, f"{path}: base TSV has no rows")
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The command


@dataclass
class MixturesConfig:
    """Options of ``clipgen data mixtures``."""

    root: Path
    out: Path
    captions: Path | None = None  # default <root>/captions
    paper: bool = False  # natural-only + CG low/high + leave-out-domain for every test domain
    setups: list[str] = field(default_factory=list)
    domain_sets: list[str] = field(default_factory=list)  # explicit subsets, e.g. ["qrs", "prs"]
    test_domains: list[str] | None = None  # None: all five
    pseudo: bool = False
    allow_pct: list[float] = field(default_factory=list)
    aligned: bool = False
    size_match: bool = True
    subsample: str = "first-k"
    seed: int = 0
    held_out: list[str] | None = None  # None: the paper's 15 (those present in the data)
    base: Path | None = None
    base_val: Path | None = None
    check_files: bool = False
    force: bool = False  # overwrite existing TSVs
    caption_seed: int | None = None  # read from captions-summary.json when present


def plan_specs(cfg: MixturesConfig) -> list[MixtureSpec]:
    """Every mixture the options ask for, de-duplicated, in a stable order."""
    tds = list(cfg.test_domains) if cfg.test_domains else list(dn.TEST_DOMAINS)
    for t in tds:
        dn.parse_test_domain(t, field="test_domains")
    if cfg.paper and (cfg.setups or cfg.domain_sets):
        raise ConfigFieldError("paper", "cannot be combined with --setup or --domains")
    setups = list(MAIN_SETUPS) if cfg.paper else list(cfg.setups)
    if not setups and not cfg.domain_sets:
        raise ConfigFieldError("setups", "nothing to build: give --paper, --setup or --domains")
    if cfg.pseudo and cfg.allow_pct:
        raise ConfigFieldError("pseudo", "cannot be combined with --allow-pct")
    kw: dict[str, Any] = dict(aligned=cfg.aligned, size_match=cfg.size_match, subsample=cfg.subsample,
                              seed=cfg.seed)
    variants: list[dict[str, Any]] = [dict(pseudo=cfg.pseudo)] if not cfg.allow_pct else [
        dict(allow_pct=p) for p in cfg.allow_pct]
    specs: list[MixtureSpec] = []
    for s in setups:
        if s == "natural-only":
            if cfg.pseudo or cfg.allow_pct:
                raise ConfigFieldError("pseudo" if cfg.pseudo else "allow_pct",
                                   "does not apply to natural-only; leave natural-only out of --setup")
            specs.append(make_spec("natural-only", None, aligned=cfg.aligned))
            continue
        for t in tds:
            for v in variants:
                specs.append(make_spec(s, t, **kw, **v))
    for letters in cfg.domain_sets:
        ds = dn.parse_domains(letters, field="domain_sets")
        for t in tds:
            for v in variants:
                specs.append(make_spec(None, t, domains=ds, **kw, **v))
    return list(dict.fromkeys(specs))


@dataclass
class MixturesResult:
    out: Path
    infos: list[MixtureInfo]
    held_out: dn.HeldOut
    reference_sizes: dict[str, int]
    summary: Path
    index: Path


def _infos_for(b: BuiltMixture, held: dn.HeldOut, base_n: dict[str, int], base: dict[str, Path | None],
               caption_seed: int | None, with_dn_files: bool) -> list[tuple[MixtureInfo, list[tuple[str, str]]]]:
    s = b.spec
    out = []
    for split in ("train", "val"):
        dn_counts = b.counts[split]
        n_dn = sum(c["id"] + c["ood"] for c in dn_counts.values())
        matched = s.size_match and split == "train"
        kinds = ["combined", "dn"] if with_dn_files else ["combined"]
        for kind in kinds:
            nb = base_n[split] if kind == "combined" else 0
            counts: dict[str, Any] = {"base": nb, **dn_counts, "total": nb + n_dn}
            info = MixtureInfo(
                file=s.file(split, kind), split=split, setup=s.setup, domains=list(s.domains),
                test_domain=s.test_domain, held_out=list(held.names), held_out_labels=list(held.labels),
                pseudo=s.pseudo, allow_pct=s.allow_pct, aligned=s.aligned, size_matched=matched,
                subsample=(s.subsample if matched else "none"), seed=s.seed,
                base=str(base[split].resolve()) if kind == "combined" and base[split] is not None else None,
                counts=counts, identifier=s.identifier, caption_seed=caption_seed,
                reference_size=b.reference_size if matched else None,
            )
            rows = b.train if split == "train" else b.val
            out.append((info, [(p, c) for p, _, c in rows]))
    return out


def _caption_seed(captions: Path) -> int | None:
    from clipgen.data.captions import SUMMARY_NAME as CAPTIONS_SUMMARY

    p = captions / CAPTIONS_SUMMARY
    try:
        return int(json.loads(p.read_text(encoding="utf-8"))["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_mixtures(cfg: MixturesConfig, *, progress: bool = True) -> MixturesResult:
    """Build every requested mixture, then write all TSVs (atomically), ``mixtures.json`` and the summary."""
    from clipgen.progress import make_progress
    from clipgen.tsv import write_tsv

    specs = plan_specs(cfg)
    out = Path(cfg.out)
    with_dn_files = cfg.base is not None or cfg.base_val is not None
    targets = [out / s.file(sp, k) for s in specs for sp in ("train", "val")
               for k in (("combined", "dn") if with_dn_files else ("combined",))]
    if not cfg.force:
        existing = [p for p in targets if p.exists()]
        if existing:
            raise ClipgenError(f"{existing[0]}: already exists ({len(existing)} of {len(targets)} outputs exist; "
                               f"pass --force to overwrite)")
    needed = {"real"} | {d for s in specs for d in s.domains} | {s.test_domain for s in specs if s.test_domain}
    data = load_domainnet(cfg.root, needed, captions=cfg.captions, aligned=cfg.aligned,
                          check_files=cfg.check_files)
    held = resolve_held_out(cfg.held_out, data.all_samples())
    base_rows = {"train": read_base(cfg.base, "base", cfg.check_files) if cfg.base else [],
                 "val": read_base(cfg.base_val, "base_val", cfg.check_files) if cfg.base_val else []}
    base_paths = {"train": Path(cfg.base) if cfg.base else None, "val": Path(cfg.base_val) if cfg.base_val else None}
    caption_seed = cfg.caption_seed if cfg.caption_seed is not None else _caption_seed(data.captions)
    # build everything in memory first: a bad option or empty mixture leaves no file behind
    built = [build_mixture(data, s, held.label_set) for s in specs]
    refs = {x: reference_size(data, x, held.label_set) for x in sorted({s.test_domain for s in specs
                                                                          if s.test_domain})}
    infos: list[MixtureInfo] = []
    with make_progress(disable=not progress) as bar:
        task = bar.add_task("writing mixture TSVs", total=len(targets))
        for b in built:
            for info, dn_rows in _infos_for(b, held, {k: len(v) for k, v in base_rows.items()}, base_paths,
                                            caption_seed, with_dn_files):
                rows = (base_rows[info.split] + dn_rows) if info.base is not None else dn_rows
                write_tsv(out / info.file, rows, force=True)
                infos.append(info)
                bar.advance(task)
    index = write_index(out, infos)
    summary = write_summary(out, infos, held, refs)
    _append_config(out, cfg)
    return MixturesResult(out, infos, held, refs, summary, index)


# ---------------------------------------------------------------------------------------------------------------
# Summary: rows per domain and class group, one column per TSV


def summary_rows(infos: Sequence[MixtureInfo]) -> list[dict[str, Any]]:
    """Table rows: each domain's C1 (id) and C2 (held-out) counts, then base and total; one value per file."""
    present = [d for d in dn.DOMAINS if any(d in i.counts for i in infos)]
    rows: list[dict[str, Any]] = []
    for d in present:
        for group, key in (("C1", "id"), ("C2", "ood")):
            rows.append({"domain": d, "group": group,
                         "counts": {i.file: int(i.counts.get(d, {}).get(key, 0)) for i in infos}})
    rows.append({"domain": "base", "group": "", "counts": {i.file: int(i.counts.get("base", 0)) for i in infos}})
    rows.append({"domain": "total", "group": "", "counts": {i.file: int(i.counts.get("total", 0)) for i in infos}})
    return rows


def write_summary(out: Path, infos: Sequence[MixtureInfo], held: dn.HeldOut, refs: dict[str, int]) -> Path:
    """``mixtures-summary.json``: the summary table of every mixture in the folder (merged across runs)."""
    from clipgen.artifacts import write_json_atomic

    path = out / SUMMARY_NAME
    old: dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}
    merged = {m["file"]: m for m in old.get("mixtures", []) if isinstance(m, dict) and "file" in m}
    for i in infos:
        merged[i.file] = {"file": i.file, "split": i.split, "title": i.title, "identifier": i.identifier,
                          "test_domain": i.test_domain, "counts": i.counts}
    all_infos = [MixtureInfo(file=m["file"], split=m["split"], setup="custom", domains=[], test_domain=None,
                             counts=m["counts"]) for m in merged.values()]
    doc = {
        "format": "clipgen-mixtures-summary", "version": 1,
        "held_out": {**held_out_record(held), "label_set": held.labels},
        "reference_sizes": {**old.get("reference_sizes", {}), **refs},
        "columns": sorted(merged),
        "mixtures": [merged[k] for k in sorted(merged)],
        "rows": summary_rows(sorted(all_infos, key=lambda i: i.file)),
    }
    return write_json_atomic(path, doc)


def _append_config(out: Path, cfg: MixturesConfig) -> None:
    from clipgen.artifacts import config_record, write_json_atomic

    path = out / CONFIG_NAME
    runs: list[Any] = []
    if path.is_file():
        try:
            runs = list(json.loads(path.read_text(encoding="utf-8")).get("invocations", []))
        except (OSError, json.JSONDecodeError, AttributeError):
            runs = []
    runs.append(config_record("data mixtures", cfg))
    write_json_atomic(path, {"invocations": runs})


def summary_tables(infos: Sequence[MixtureInfo]) -> list[tuple[str, list[MixtureInfo]]]:
    """Train mixtures grouped for printing: natural-only first, then one table per test domain."""
    train = [i for i in infos if i.split == "train" and i.file.startswith("combined-")]
    groups: dict[str, list[MixtureInfo]] = {}
    for i in train:
        groups.setdefault(i.test_domain or "", []).append(i)
    order = [""] + list(dn.TEST_DOMAINS)
    return [(f"test domain {k}" if k else "no test domain", groups[k]) for k in order if k in groups]


def short_name(info: MixtureInfo) -> str:
    """Column header: the setup over the identifier without ``lso-`` and ``-no{X}classes``."""
    ident = str(info.identifier or info.file).removeprefix("lso-")
    if info.test_domain:
        ident = ident.replace(f"-no{info.test_domain}classes", "")
    return f"{info.setup}\n{ident}"


def render_summary(infos: Sequence[MixtureInfo]) -> list[Any]:
    """Rich tables of the train mixtures (rows per domain and class group; base, total and val total below)."""
    from rich.table import Table

    by_ident = {(i.identifier, i.file.startswith("combined-")): i for i in infos if i.split == "val"}
    tables = []
    for title, group in summary_tables(infos):
        t = Table(title=f"training mixtures, {title}", title_justify="left")
        t.add_column("domain")
        t.add_column("classes")
        for i in group:
            t.add_column(short_name(i), justify="right")
        for r in summary_rows(group):
            if r["domain"] in ("base", "total"):
                t.add_section()
            label = {"C1": "C1 (ID)", "C2": "C2 (held-out)"}.get(r["group"], "")
            cells = [f"{r['counts'][i.file]:,}" if r["counts"][i.file] else "-" for i in group]
            t.add_row(r["domain"], label, *cells)
        vals = [by_ident.get((i.identifier, True)) for i in group]
        t.add_row("val total", "", *[f"{v.counts.get('total', 0):,}" if v else "?" for v in vals])
        tables.append(t)
    return tables
