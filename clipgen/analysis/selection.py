"""Choosing layers, domains and classes of an open activation store, with one-line errors naming the option.

Shared by the store-reading analyses (``clipgen cka``, ``clipgen embeddings``); nothing here reads a layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clipgen import domainnet as dn
from clipgen.errors import ConfigFieldError


def class_name_map(store) -> dict[int, str]:
    """``{label: class name}`` as recorded in the store (may be empty)."""
    return {int(k): str(v) for k, v in dict(store.class_names).items()}


def domain_name_to_id(store) -> dict[str, int]:
    """``{domain name: domain id}`` of the store's sample table."""
    return {str(n): i for i, n in enumerate(store.samples.domain_names)}


def domain_of_rows(store) -> np.ndarray:
    """The domain name of every row (``""`` where unknown)."""
    names = np.array([*map(str, store.samples.domain_names), ""])
    ids = np.asarray(store.samples.domains, dtype=np.int64)
    return names[np.where(ids >= 0, ids, len(names) - 1)]


def store_domain_names(store) -> list[str]:
    """The store's domain names in id order, only those with at least one row."""
    present = set(np.unique(np.asarray(store.samples.domains)).tolist())
    return [str(n) for i, n in enumerate(store.samples.domain_names) if i in present]


def resolve_domains(store, domains: Sequence[str] | None, field: str = "domains", minimum: int = 2) -> list[str]:
    """The requested domains (default: every stored one), checked against the store; at least ``minimum``
    (:func:`clipgen.domainnet.choose_domains`, in the order requested, else the store's)."""
    return dn.choose_domains(store_domain_names(store), domains, where="the store", field=field, minimum=minimum)


def resolve_layers(store, layers: Sequence[str] | None, field: str = "layers") -> list[str]:
    """The requested layers (default: every stored layer, forward order), checked against the store."""
    if not layers:
        return list(store.layers)
    missing = [name for name in layers if name not in store.layers]
    if missing:
        raise ConfigFieldError(field, f"layer {missing[0]!r} is not in the store (it has: {', '.join(store.layers)})")
    return list(dict.fromkeys(layers))


def resolve_held_out(store, names: Sequence[str] | None, field: str = "held_out") -> list[int]:
    """Held-out labels: the store's, or the given class names looked up in the store's class names (by
    :func:`clipgen.domainnet.resolve_held_out`, matching the store's own names: it may hold any classes)."""
    if names is None:
        return sorted({int(h) for h in store.held_out_labels})
    classes = class_name_map(store)
    by_name = {" ".join(n.split()).lower(): lab for lab, n in classes.items()}
    held = dn.resolve_held_out(classes, names, field=field,
                               match=lambda n: by_name.get(dn.normalise_class_name(n)),
                               missing=lambda n, _: f"class {n!r} is not among the store's class names")
    return held.labels


def present_labels(store, domains: Sequence[str]) -> dict[str, np.ndarray]:
    """The labels with at least one stored row, per domain (from the sample table; no layer is read)."""
    ids = domain_name_to_id(store)
    dom = np.asarray(store.samples.domains)
    lab = np.asarray(store.samples.labels)
    return {d: np.unique(lab[dom == ids[d]]).astype(np.int64) for d in domains}
