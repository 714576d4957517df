"""The supervised baseline's label space: 1000 ImageNet classes followed by 345 DomainNet classes (1345).

A TSV row's label comes from the folder that holds its image (the captions are ignored):

- an ImageNet WordNet id (``.../n01440764/x.JPEG``) gives its ImageNet-1k index; when
  ``in_to_dn_mapping.json`` maps that ImageNet class to a DomainNet class, the label is 1000 + that
  DomainNet label instead (the 450 ImageNet classes that map to 182 DomainNet classes);
- a DomainNet class folder (``<domain>/<class_folder>/x.jpg``, also the synthetic base dataset's
  ``base/<class_folder>/x.jpg``) gives 1000 + its official DomainNet label.

A row whose folder is neither is an error naming the file and line. The DomainNet head is the last 345
logits; the supervised evaluation takes the argmax over those.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from clipgen import domainnet as dn
from clipgen.errors import ClipgenError, ConfigFieldError, file_error
from clipgen.models.supervised import NUM_DOMAINNET, NUM_IMAGENET, NUM_JOINT

WNID_RE = re.compile(r"^n\d{8}$")
__all__ = ["NUM_DOMAINNET", "NUM_IMAGENET", "NUM_JOINT", "imagenet_to_joint", "label_of_path", "tsv_labels"]


@lru_cache(maxsize=1)
def _wnid_index() -> dict[str, int]:
    return {wnid: idx for idx, (wnid, _) in dn.imagenet_class_index().items()}


@lru_cache(maxsize=1)
def imagenet_to_joint() -> dict[int, int]:
    """ImageNet-1k index -> joint label (1000 + DomainNet label) for the ImageNet classes that map to DomainNet."""
    out: dict[int, int] = {}
    for name, indices in dn.imagenet_to_domainnet().items():
        if not indices:
            continue
        try:
            label = dn.class_by_name(name).label
        except ConfigFieldError as e:  # the bundled mapping names a class that is not DomainNet's: a file error
            raise ClipgenError(f"in_to_dn_mapping.json: {e.detail}") from None
        for i in indices:
            if i in out and out[i] != NUM_IMAGENET + label:
                raise ClipgenError(f"in_to_dn_mapping.json: ImageNet class {i} maps to two DomainNet classes")
            out[int(i)] = NUM_IMAGENET + label
    return out


@lru_cache(maxsize=1)
def _folder_labels() -> dict[str, int]:
    return {c.folder: c.label for c in dn.class_table()}


def label_of_path(path: str) -> int | None:
    """The joint label of an image path (see the module docstring), or None when the folder says nothing."""
    parts = Path(path).parts
    if len(parts) < 2:
        return None
    folder = parts[-2]
    if WNID_RE.match(folder):
        idx = _wnid_index().get(folder)
        if idx is None:
            return None
        return imagenet_to_joint().get(idx, idx)
    label = _folder_labels().get(folder)
    if label is None:
        try:
            label = dn.class_by_name(folder).label
        except ClipgenError:
            return None
    return NUM_IMAGENET + label


def tsv_labels(tsv: str | Path, paths: Iterable[str] | None = None) -> list[int]:
    """Joint labels of every row of ``tsv`` (``paths``: its filepaths when already read)."""
    from clipgen.training.checks import line_of_row
    from clipgen.tsv import iter_tsv

    files = list(paths) if paths is not None else [fp for fp, _ in iter_tsv(tsv)]
    out = []
    for i, fp in enumerate(files):
        lab = label_of_path(fp)
        if lab is None:
            raise file_error(tsv, f"cannot determine the class of {fp}: its folder is neither an ImageNet "
                                  f"WordNet id nor a DomainNet class folder", line=line_of_row(tsv, i))
        out.append(lab)
    return out


def is_domainnet_label(label: int) -> bool:
    return NUM_IMAGENET <= label < NUM_JOINT
