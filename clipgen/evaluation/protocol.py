"""The paper's evaluation protocol: which images, which label space, which classes are held out.

* Images: the DomainNet **test** split of the test domain and of ``real`` (in that order, split-file order
  inside each), from a real or synthetic DomainNet root.
* Label space: every class present in these images (345 on the real dataset; the synthetic dataset holds a
  subset with real DomainNet labels). Class ``k`` of the classifier is ``class_labels[k]`` (sorted labels);
  predictions are always stored as DomainNet labels.
* Class names for prompts: the class folder with ``_`` replaced by a space, as the published scripts form them.
* Held-out (OOD) classes: ``--held-out`` when given, else the run manifest's ``mixture.held_out_labels``, else
  the paper's 15 classes; in every case only those present in the images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipgen import domainnet as dn
from clipgen.datasets import ImageRecord, domainnet_records, folders_of
from clipgen.errors import ClipgenError, ConfigFieldError, flag_for

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".webp", ".bmp")


@dataclass
class EvalImageSet:
    """The images of one evaluation (test domain + real) with their label space."""

    root: Path
    test_domain: str
    domains: tuple[str, ...]
    records: list[ImageRecord]
    labels: np.ndarray  # (N,) DomainNet labels
    domain_ids: np.ndarray  # (N,) indices into clipgen.domainnet.DOMAINS
    class_labels: list[int]  # the label space, sorted
    class_folders: list[str]
    class_names: list[str]  # prompt names: folder with "_" -> " "
    fingerprint: str  # sha256 over (domain, relative path, label) of every image, in order

    def __len__(self) -> int:
        return len(self.records)

    @property
    def rel_paths(self) -> list[str]:
        return [r.rel or r.path for r in self.records]

    def class_index(self) -> np.ndarray:
        """Row -> classifier column (index into ``class_labels``)."""
        lookup = {c: i for i, c in enumerate(self.class_labels)}
        return np.array([lookup[int(x)] for x in self.labels], dtype=np.int64)

    def describe(self) -> dict[str, Any]:
        return {
            "root": str(self.root), "split": "test", "domains": list(self.domains), "n_images": len(self),
            "n_images_per_domain": {d: int(np.sum(self.domain_ids == dn.DOMAINS.index(d))) for d in self.domains},
            "fingerprint": self.fingerprint,
        }


def fingerprint_records(records: Sequence[ImageRecord]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.domain}\t{r.rel or r.path}\t{r.label}\n".encode())
    return h.hexdigest()


def build_eval_set(root: str | Path, test_domain: str, field: str = "test_domain",
                   root_field: str = "data_root") -> EvalImageSet:
    """The test-split images of ``test_domain`` and ``real`` under a DomainNet ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigFieldError(root_field, f"{root} is not a directory")
    test_domain = dn.parse_test_domain(test_domain, field=field)
    domains = (test_domain, "real")
    for d in domains:
        f = dn.split_file(root, d, "test")
        if not f.is_file():
            raise ConfigFieldError(field if d == test_domain else root_field,
                                   f"domain {d!r} is absent from the data: {f} not found")
    records = domainnet_records(root, domains, split="test")
    for d in domains:
        if not any(r.domain == d for r in records):
            raise ConfigFieldError(field if d == test_domain else root_field,
                                   f"domain {d!r} has no test images in {dn.split_file(root, d, 'test')}")
    folders = folders_of(records)
    labels = np.array([r.label for r in records], dtype=np.int64)
    missing = sorted(set(labels.tolist()) - set(folders))
    if missing:
        raise ClipgenError(f"{root}: split-file paths must look like domain/class_folder/file (label {missing[0]})")
    class_labels = sorted(folders)
    return EvalImageSet(
        root=root.resolve(), test_domain=test_domain, domains=domains, records=records, labels=labels,
        domain_ids=np.array([dn.DOMAINS.index(r.domain) for r in records], dtype=np.int8),
        class_labels=class_labels, class_folders=[folders[c] for c in class_labels],
        class_names=[dn.folder_to_name(folders[c]) for c in class_labels], fingerprint=fingerprint_records(records),
    )


def resolve_held_out(image_set: EvalImageSet, names: Sequence[str] | None = None,
                     manifest_labels: Sequence[int] | None = None, field: str = "held_out") -> dn.HeldOut:
    """Held-out classes present in ``image_set`` (see the module docstring for the order of sources), by
    :func:`clipgen.domainnet.resolve_held_out`; an evaluation needs held-out and in-distribution classes. Names
    are the prompt names of the image set."""
    where = f"{' or '.join(image_set.domains)} under {image_set.root}"
    held = dn.resolve_held_out(dict(zip(image_set.class_labels, image_set.class_folders, strict=True)),
                               names or None, manifest_labels, field=field,
                               missing=lambda name, _: f"held-out class {name!r} has no test images in {where}")
    source = held.source
    absent = [dn.class_by_label(c).name for c in held.absent_labels] if source == "manifest" else held.absent
    if not held.labels:
        raise ConfigFieldError(field, f"no held-out class ({source}) has test images in {where}; name the held-out "
                                      f"classes with {flag_for(field)}")
    if len(held.labels) == len(image_set.class_labels):
        raise ConfigFieldError(field, "every evaluated class is held out; no in-distribution classes remain")
    name_of = dict(zip(image_set.class_labels, image_set.class_names, strict=True))
    return dn.HeldOut(held.labels, {name_of[c]: c for c in held.labels}, source, absent, held.absent_labels)


def imagenet_val_records(root: str | Path, field: str = "imagenet") -> list[ImageRecord]:
    """ImageNet validation images laid out as ``<root>/<wnid>/*.JPEG``, labelled by the 1000-class index."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigFieldError(field, f"{root} is not a directory")
    wnid_to_idx = {w: i for i, (w, _) in dn.imagenet_class_index().items()}
    records = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if d.name not in wnid_to_idx:
            raise ConfigFieldError(field, f"{d} is not an ImageNet class folder (expected <root>/<wnid>/*.JPEG)")
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                records.append(ImageRecord(str(f.resolve()), wnid_to_idx[d.name], "imagenet", "val",
                                           f"{d.name}/{f.name}"))
    if not records:
        raise ConfigFieldError(field, f"no images under {root} (expected <root>/<wnid>/*.JPEG)")
    return records
