"""The one DomainNet vocabulary: domains, letters, classes, held-out classes and their resolution, the analyses'
class subsets, domain pair orders and default highlighted domain, caption terms; and the split-file reader.

Every other module takes these from here (none restates a domain name, a subset or the held-out rule).

Labels always come from the split files (``{domain}_{split}.txt``, lines ``relative/path label``), never from
sorting folder names: DomainNet's label order is not Python's ``sorted()`` order (``cello`` comes before
``cell_phone``), and some folders carry capitals or hyphens (``The_Eiffel_Tower``, ``teddy-bear``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from clipgen.errors import ClipgenError, ConfigFieldError, file_error

#: The six domains in the fixed order used for mixture names (``c i p q r s``).
DOMAINS: tuple[str, ...] = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
DOMAIN_LETTERS: dict[str, str] = {d[0]: d for d in DOMAINS}
#: "real" is never a test domain.
TEST_DOMAINS: tuple[str, ...] = tuple(d for d in DOMAINS if d != "real")
SPLITS: tuple[str, ...] = ("train", "test")
NUM_CLASSES = 345

#: The domain the analyses (CKA, embeddings, node/circuit similarity, the demo and its report) highlight by
#: default: the paper's outlier domain.
DEFAULT_HIGHLIGHT = "quickdraw"
#: The class subsets of the analyses: every class, the in-distribution ones (not held out), the held-out ones.
SUBSETS: tuple[str, ...] = ("all", "id", "ood")
#: Domain pair orders. Pairs are unordered; an order fixes how they are listed (rows of a CSV, lines of a
#: figure), so each command keeps the order its outputs always had:
#: * CKA and embeddings list the domains of the activation store in its id order, which for DomainNet stores is
#:   :data:`DOMAINS` (ids c0 i1 p2 q3 r4 s5, shared by every store) unless ``--domains`` orders them;
#: * node and circuit similarity follow the published circuit scripts: real first, then :data:`DOMAINS` order.
STORE_PAIR_ORDER: tuple[str, ...] = DOMAINS
CIRCUIT_PAIR_ORDER: tuple[str, ...] = ("real", *(d for d in DOMAINS if d != "real"))
#: The words that make a zero-shot template name a domain (the published ``--domain_invariant`` keeps those
#: templates): every domain but real, whose templates say "photo" like the generic ones.
TEMPLATE_DOMAIN_WORDS: tuple[str, ...] = tuple(d for d in DOMAINS if d != "real")

#: The paper's 15 held-out (C2) classes, by name.
HELD_OUT_CLASSES: tuple[str, ...] = (
    "aircraft carrier", "axe", "banana", "barn", "bed", "candle", "lion", "mountain", "necklace", "penguin",
    "pizza", "saxophone", "television", "tractor", "traffic light",
)

#: Caption terms: two generic terms plus two per domain.
GENERIC_TERMS: tuple[str, ...] = ("image", "picture")
DOMAIN_TERMS: dict[str, tuple[str, ...]] = {
    "clipart": ("clipart", "illustration"),
    "infograph": ("infograph", "informational chart"),
    "painting": ("painting", "art"),
    "quickdraw": ("quickdraw", "doodle"),
    "real": ("photo", "snapshot"),
    "sketch": ("sketch", "drawing"),
}
#: Article before a term: "an " for vowel-initial terms, "" for "art", "a " otherwise.
TERM_ARTICLES: dict[str, str] = {
    "image": "an ", "picture": "a ", "clipart": "a ", "illustration": "an ", "infograph": "an ",
    "informational chart": "an ", "painting": "a ", "art": "", "quickdraw": "a ", "doodle": "a ", "photo": "a ",
    "snapshot": "a ", "sketch": "a ", "drawing": "a ",
}
#: The six caption templates of the paper ({A} article, {T} term, {C} class name).
CAPTION_TEMPLATES: tuple[str, ...] = (
    "{A}{T} of a {C}.",
    "a {C} {T}.",
    "{A}{T} depicting a {C}.",
    "a {C} depicted in {A}{T}.",
    "{A}{T} showing a {C}.",
    "a {C} is visible in {A}{T}.",
)


@dataclass(frozen=True)
class DNClass:
    """One DomainNet class: its official label, its name (lower case, spaces) and its folder on disk."""

    label: int
    name: str
    folder: str


def _resource_text(name: str) -> str:
    return resources.files("clipgen.resources").joinpath(name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def class_table() -> tuple[DNClass, ...]:
    """The 345 DomainNet classes in label order."""
    rows = list(csv.DictReader(_resource_text("domainnet_classes.tsv").splitlines(), delimiter="\t"))
    table = tuple(DNClass(int(r["index"]), r["name"], r["folder"]) for r in rows)
    assert [c.label for c in table] == list(range(NUM_CLASSES))
    return table


@lru_cache(maxsize=1)
def _class_lookup() -> dict[str, DNClass]:
    lookup: dict[str, DNClass] = {}
    for c in class_table():
        for key in (c.name, c.folder, c.folder.replace("_", " ")):
            lookup[normalise_class_name(key)] = c
    return lookup


def normalise_class_name(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def class_by_name(name: str, field: str = "classes") -> DNClass:
    """Look a class up by name or folder (case-insensitive, ``_`` or space); unknown names are an error."""
    c = _class_lookup().get(normalise_class_name(name))
    if c is None:
        import difflib

        close = difflib.get_close_matches(normalise_class_name(name), [x.name for x in class_table()], n=3)
        hint = f" (did you mean: {', '.join(close)}?)" if close else ""
        raise ConfigFieldError(field, f"unknown DomainNet class {name!r}{hint}")
    return c


def class_by_label(label: int) -> DNClass:
    if not 0 <= label < NUM_CLASSES:
        raise ClipgenError(f"label {label} is out of range 0..{NUM_CLASSES - 1}")
    return class_table()[label]


def folder_to_name(folder: str) -> str:
    """The caption class name of a folder, as the published caption script forms it (``_`` -> space)."""
    return folder.replace("_", " ")


def parse_domains(spec: str | Sequence[str], field: str = "domains", allowed: Sequence[str] = DOMAINS) -> tuple[
        str, ...]:
    """Parse ``all``, a letter string (``cipqrs``), or comma/space separated names into canonical order."""
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "all":
            return tuple(d for d in DOMAINS if d in allowed)
        parts = [p for p in s.replace(",", " ").split() if p]
        if len(parts) == 1 and parts[0] not in DOMAINS:
            word = parts[0]
            bad = sorted({ch for ch in word if ch not in DOMAIN_LETTERS})
            if bad:
                raise ConfigFieldError(field, f"unknown domain or domain letters {spec!r} (letters: c i p q r s; "
                                               f"names: {', '.join(DOMAINS)})")
            if len(set(word)) != len(word):
                raise ConfigFieldError(field, f"repeated domain letter in {spec!r}")
            parts = [DOMAIN_LETTERS[ch] for ch in word]
    else:
        parts = [p.strip().lower() for p in spec]
    out = []
    for p in parts:
        d = DOMAIN_LETTERS.get(p, p)
        if d not in DOMAINS:
            raise ConfigFieldError(field, f"unknown domain {p!r} (one of {', '.join(DOMAINS)})")
        if d not in allowed:
            raise ConfigFieldError(field, f"domain {d!r} is not allowed here (one of {', '.join(allowed)})")
        if d not in out:
            out.append(d)
    if not out:
        raise ConfigFieldError(field, "no domain given")
    return tuple(d for d in DOMAINS if d in out)


def parse_test_domain(name: str, field: str = "test_domain") -> str:
    d = DOMAIN_LETTERS.get(name.strip().lower(), name.strip().lower())
    if d not in TEST_DOMAINS:
        raise ConfigFieldError(field, f"{name!r} is not a test domain (one of {', '.join(TEST_DOMAINS)})")
    return d


def split_names(spec: str | Sequence[str] | None) -> list[str]:
    """Option values as a list: a string split at commas and spaces, or the items of a sequence; each stripped and
    lower-cased, empty ones dropped."""
    if spec is None:
        return []
    parts = spec.replace(",", " ").split() if isinstance(spec, str) else [str(s) for s in spec]
    return [p.strip().lower() for p in parts if p.strip()]


def choose_domains(have: Sequence[str], requested: str | Sequence[str] | None, *, where: str,
                   field: str = "domains", minimum: int = 2, order: Sequence[str] | None = None,
                   parse: bool = False,
                   too_few: str = "needs at least {minimum} domains, got {n} ({domains})") -> list[str]:
    """The domains an analysis compares: ``requested`` (default: every domain of ``have``), each one the data
    holds (``have``; ``where`` names the data in errors), at least ``minimum`` of them.

    ``parse``: the request is DomainNet domains, by name or letter, or ``all`` (:func:`parse_domains`); otherwise
    names as the data spells them (a store may hold any domain). ``order``: the order of the result (a pair order,
    which also drops domains outside it); otherwise the order requested, or ``have``'s. ``too_few`` is the error
    text of too few domains (``{minimum}``, ``{n}``, ``{domains}`` and ``{where}`` filled in).
    """
    have = [str(d) for d in have]
    parts = split_names(requested)
    if not parts or (parse and parts == ["all"]):
        chosen = list(have)
    elif parse:
        chosen = list(parse_domains(parts if len(parts) > 1 else parts[0], field=field))
    else:
        chosen = list(dict.fromkeys(parts))
    if order is not None:
        chosen = [d for d in order if d in set(chosen)]
    missing = [d for d in chosen if d not in have]
    if missing:
        raise ConfigFieldError(field, f"domain {missing[0]!r} is not in {where} (it has: "
                                       f"{', '.join(have) or 'no domains'})")
    if len(chosen) < minimum:
        raise ConfigFieldError(field, too_few.format(minimum=minimum, n=len(chosen),
                                                     domains=", ".join(chosen) or "none", where=where))
    return chosen


def domain_letters(domains: Iterable[str]) -> str:
    """``['real', 'sketch']`` -> ``'rs'``, always in the order c i p q r s."""
    ds = set(domains)
    return "".join(d[0] for d in DOMAINS if d in ds)


# ---------------------------------------------------------------------------------------------------------------
# Split files


@dataclass(frozen=True)
class Sample:
    """One line of a split file."""

    path: str  # relative to the DomainNet root, e.g. "clipart/aircraft_carrier/clipart_001_000001.jpg"
    label: int
    domain: str
    line: int  # 1-based line in the split file

    @property
    def folder(self) -> str:
        parts = self.path.split("/")
        return parts[1] if len(parts) > 2 else ""


def split_file(root: str | Path, domain: str, split: str) -> Path:
    return Path(root) / f"{domain}_{split}.txt"


def read_split(root: str | Path, domain: str, split: str, *, num_classes: int = NUM_CLASSES,
               check_files: bool = False) -> list[Sample]:
    """Read ``{root}/{domain}_{split}.txt`` with full validation (file:line in every error)."""
    path = split_file(root, domain, split)
    if not path.is_file():
        raise file_error(path, f"split file not found (is {Path(root)} a DomainNet root?)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise file_error(path, f"cannot read split file ({e.__class__.__name__}: {e})") from None
    samples: list[Sample] = []
    root = Path(root)
    for i, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise file_error(path, f"expected 2 fields 'relative/path label', found {len(fields)}", line=i)
        rel, lab = fields
        try:
            label = int(lab)
        except ValueError:
            raise file_error(path, f"label {lab!r} is not an integer", line=i) from None
        if not 0 <= label < num_classes:
            raise file_error(path, f"label {label} out of range 0..{num_classes - 1}", line=i)
        if check_files and not (root / rel).is_file():
            raise file_error(path, f"image {root / rel} does not exist", line=i)
        samples.append(Sample(rel, label, domain, i))
    return samples


def folders_by_label(samples: Iterable[Sample], source: str = "split files") -> dict[int, str]:
    """Map label -> class folder as the split files say, checking that each label has one folder."""
    out: dict[int, str] = {}
    for s in samples:
        f = s.folder
        prev = out.setdefault(s.label, f)
        if prev != f:
            raise ClipgenError(f"{source}: label {s.label} is used for two class folders ({prev!r} and {f!r})")
    return out


def held_out_labels(names: Sequence[str], samples: Iterable[Sample], field: str = "held_out") -> dict[str, int]:
    """Resolve held-out class names to labels *as the split files give them* (via each class's folder)."""
    return resolve_held_out(folders_by_label(samples), names, field=field).by_name


# ---------------------------------------------------------------------------------------------------------------
# Held-out classes


@dataclass
class HeldOut:
    """Held-out (C2) classes resolved against the classes present in some data (:func:`resolve_held_out`)."""

    labels: list[int]  # the held-out labels with images in the data, sorted
    by_name: dict[str, int]  # class name -> its label in the data, in the order asked (names, or the paper's order)
    source: str  # "option" (names given), "manifest" (labels recorded by a run) or "paper" (the paper's 15)
    absent: list[str] = field(default_factory=list)  # default classes without images in the data, by name
    absent_labels: list[int] = field(default_factory=list)  # recorded labels without images, in recorded order

    @property
    def names(self) -> list[str]:
        return list(self.by_name)

    @property
    def explicit(self) -> bool:
        """Named by the user (not a default)."""
        return self.source == "option"

    @property
    def label_set(self) -> frozenset[int]:
        return frozenset(self.labels)

    def describe(self) -> dict[str, Any]:
        return {"labels": self.labels, "names": self.names, "source": self.source, "absent": self.absent}


def not_in_data(name: str, folder: str | None) -> str:
    """The error of a held-out class asked for by name that has no images in the data."""
    return f"held-out class {name!r} (folder {folder}) has no images in the data"


def resolve_held_out(present: Mapping[int, str], names: Sequence[str] | None = None,
                     recorded: Iterable[int] | None = None, *, field: str = "held_out",
                     missing: Callable[[str, str | None], str] = not_in_data,
                     match: Callable[[str], int | None] | None = None) -> HeldOut:
    """The held-out classes of some data, from the first source given: ``names``, ``recorded`` labels (a run's
    mixture), else the paper's 15 (:data:`HELD_OUT_CLASSES`).

    ``present`` maps every label with images in the data to its class folder. A name is a DomainNet class (by
    name or folder, :func:`class_by_name`) found in the data by its folder, so labels are the data's own; one
    without images is an error (``missing(name, folder)``). ``match`` replaces that lookup (it returns the label of
    a name, or None for the error ``missing(name, None)``), for data whose classes are known only by their own
    names. Recorded labels and the paper's classes may be absent from the data: those are reported in
    ``absent_labels`` / ``absent``, never an error here (each caller decides what too few classes means). Labels
    in the result are unique and sorted; ``by_name`` is empty for recorded labels (they come without names).
    """
    if names is not None:
        by_name: dict[str, int] = {}
        if match is not None:
            for n in names:
                label = match(n)
                if label is None:
                    raise ConfigFieldError(field, missing(n, None))
                by_name[n] = label
        else:
            by_folder = {folder: label for label, folder in present.items()}
            for n in names:
                c = class_by_name(n, field=field)
                if c.folder not in by_folder:
                    raise ConfigFieldError(field, missing(c.name, c.folder))
                by_name[c.name] = by_folder[c.folder]
        return HeldOut(sorted(set(by_name.values())), by_name, "option")
    wanted = [int(x) for x in recorded or ()]
    if wanted:
        return HeldOut(sorted({x for x in wanted if x in present}), {}, "manifest",
                       absent_labels=[x for x in wanted if x not in present])
    by_folder = {folder: label for label, folder in present.items()}
    paper = [class_by_name(n) for n in HELD_OUT_CLASSES]
    by_name = {c.name: by_folder[c.folder] for c in paper if c.folder in by_folder}
    return HeldOut(sorted(set(by_name.values())), by_name, "paper",
                   absent=[c.name for c in paper if c.folder not in by_folder])


def run_held_out_labels(mixture: Mapping[str, Any] | None, present: Mapping[int, str]) -> list[int]:
    """A run's held-out labels for the files made from its model (a store, a circuits file): every label its
    mixture recorded, with or without images in ``present`` (the file keeps the run's record), else the paper's
    classes present (:func:`resolve_held_out`)."""
    held = resolve_held_out(present, recorded=(mixture or {}).get("held_out_labels"))
    return sorted({*held.labels, *held.absent_labels})


@lru_cache(maxsize=1)
def imagenet_class_index() -> dict[int, tuple[str, str]]:
    """ImageNet-1k index -> (WordNet id, class name)."""
    raw = json.loads(_resource_text("imagenet_class_index.json"))
    return {int(k): (v[0], v[1]) for k, v in raw.items()}


@lru_cache(maxsize=1)
def imagenet_to_domainnet() -> dict[str, list[int] | None]:
    """DomainNet class name -> list of ImageNet-1k indices (or None), in DomainNet label order."""
    return json.loads(_resource_text("in_to_dn_mapping.json"))


#: The four indices where the published scripts' ImageNet class names (OpenAI's list) differ from open_clip's
#: ``IMAGENET_CLASSNAMES``: index -> (published name, open_clip's name).
IMAGENET_NAME_DIFFERENCES: dict[int, tuple[str, str]] = {
    27: ("eft", "newt"), 638: ("maillot", "tights"), 744: ("projectile", "missile"), 836: ("sunglass", "sunglasses"),
}


def imagenet_classnames() -> list[str]:
    """The 1000 ImageNet class names the published scripts use (OpenAI's list), in class-index order.

    Shipped as ``clipgen/resources/imagenet_classnames.txt`` (one name per line). It equals open_clip's
    ``IMAGENET_CLASSNAMES`` except at the four indices of :data:`IMAGENET_NAME_DIFFERENCES` (e.g. 27 is "eft",
    where open_clip says "newt"). Used for the ImageNet-Sketch captions and the ImageNet zero-shot classifier.
    """
    return _resource_text("imagenet_classnames.txt").splitlines()
