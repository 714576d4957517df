"""Size matching: the published first-k rule, exactly, and a seeded random variant of the same sizes.

A mixture's DomainNet training part is a list of *groups*, one per (domain, class), in the order the published
script builds them: domains clipart, infograph, painting, quickdraw, real, sketch; inside a domain, classes in the
order of their first line in the split file; inside a group, split-file order.

:func:`first_k_counts` returns how many samples each group keeps so that the total is exactly the reference size
``S``:

1. ``f = S / N`` (N = samples in the mixture); group ``g`` keeps ``ceil(f * n_g)``.
2. With ``allow_pct = p``: the held-out groups of the test domain keep ``ceil(p * f * n_g)`` and are never
   shrunk further; every other group uses ``f' = (S - allowed) / (N - |held-out samples of the test domain|)``.
3. The overshoot is removed one sample at a time: domains in the order real, quickdraw, painting, sketch,
   infograph, clipart; inside a domain one sample from each group in turn; stop as soon as the total is ``S``.

The float arithmetic is the published script's, operation for operation, so the counts agree exactly. The
first-k selection keeps the first ``k_g`` samples of each group; the random selection keeps a seeded random
``k_g``-subset of each group (in split-file order), so both have the same size per (domain, class).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from clipgen.errors import ClipgenError

#: Order in which the overshoot is removed (largest domains first).
REMOVAL_ORDER: tuple[str, ...] = ("real", "quickdraw", "painting", "sketch", "infograph", "clipart")
SUBSAMPLE_MODES = ("first-k", "random")


@dataclass(frozen=True)
class Group:
    """One (domain, class) group of training samples: ``indices`` into that domain's rows, in file order."""

    domain: str
    label: int
    indices: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.indices)


def first_k_counts(groups: Sequence[Group], target: int, *, allow_pct: float | None = None,
                   test_domain: str | None = None, held_out: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """Samples kept per group so that the total is exactly ``target`` (the published rule)."""
    sizes = [g.n for g in groups]
    total = sum(sizes)
    if total == 0:
        raise ClipgenError("size matching: the mixture has no training samples")
    if target > total:
        raise ClipgenError(f"size matching: the mixture has {total} training samples, fewer than the reference size "
                           f"{target}; it cannot be matched (use --no-size-match)")
    shrink = target / total
    protected: set[int] = set()
    if allow_pct is not None and allow_pct > 0:
        protected = {i for i, g in enumerate(groups) if g.domain == test_domain and g.label in held_out}
        allowed = sum(math.ceil(allow_pct * shrink * sizes[i]) for i in protected)
        maximum = sum(sizes[i] for i in protected)
        if total == maximum:
            raise ClipgenError("size matching: the mixture holds only held-out samples of the test domain")
        pseudo_shrink = shrink
        shrink = (target - allowed) / (total - maximum)
        keep = [math.ceil(allow_pct * pseudo_shrink * n) if i in protected else math.ceil(shrink * n)
                for i, n in enumerate(sizes)]
    else:
        keep = [math.ceil(shrink * n) for n in sizes]
    keep = [min(k, n) for k, n in zip(keep, sizes, strict=True)]
    current = sum(keep)
    if current < target:
        raise ClipgenError(f"size matching: only {current} samples after shrinking, fewer than the reference size "
                           f"{target} (too many held-out samples allowed?)")
    order = [i for d in REMOVAL_ORDER for i, g in enumerate(groups) if g.domain == d and i not in protected]
    while current > target:
        progressed = False
        for i in order:
            if keep[i] == 0:  # the published script would fail here; one pass never empties a group
                continue
            keep[i] -= 1
            current -= 1
            progressed = True
            if current == target:
                break
        if not progressed:
            raise ClipgenError(f"size matching: cannot remove {current - target} more samples")
    return keep


def select(groups: Sequence[Group], keep: Sequence[int], mode: str = "first-k", seed: int = 0) -> list[list[int]]:
    """Per group, the row indices kept: the first ``k`` (``first-k``) or a seeded random ``k``-subset (``random``)."""
    if mode == "first-k":
        return [list(g.indices[:k]) for g, k in zip(groups, keep, strict=True)]
    if mode != "random":
        raise ClipgenError(f"--subsample: unknown mode {mode!r} (one of {', '.join(SUBSAMPLE_MODES)})")
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for g, k in zip(groups, keep, strict=True):
        if k >= g.n:
            out.append(list(g.indices))
        else:
            pick = np.sort(rng.choice(g.n, size=k, replace=False))
            out.append([g.indices[int(j)] for j in pick])
    return out
