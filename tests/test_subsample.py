from collections import Counter

import pytest

from clipgen.data.subsample import Group, first_k_counts, select
from clipgen.errors import ClipgenError


def groups(*spec):
    out, start = [], 0
    for domain, label, n in spec:
        out.append(Group(domain, label, tuple(range(start, start + n))))
        start += n
    return out


def test_hand_computed_overshoot_order():
    # N = 19, S = 11, f = 11/19: ceil -> real 3, 3; quickdraw 3; painting 2; sketch 2 = 13, overshoot 2,
    # removed from real's two classes (real comes first in the removal order, although it is listed after).
    g = groups(("painting", 1, 3), ("quickdraw", 1, 4), ("real", 1, 5), ("real", 2, 5), ("sketch", 1, 2))
    assert first_k_counts(g, 11) == [2, 3, 2, 2, 2]
    # S = 9, f = 9/19: ceil -> painting 2, quickdraw 2, real 3, 3, sketch 1 = 11; real gives back 2
    assert first_k_counts(g, 9) == [2, 2, 2, 2, 1]
    # S = 5, f = 5/19: ceil -> 1, 2, 2, 2, 1 = 8: real gives 2, then quickdraw 1 (the next domain in the order)
    assert first_k_counts(g, 5) == [1, 1, 1, 1, 1]
    # two classes per domain: the overshoot of 3 takes one from each real class, then quickdraw's first class
    g2 = groups(("clipart", 1, 9), ("quickdraw", 1, 9), ("quickdraw", 2, 9), ("real", 1, 9), ("real", 2, 9))
    # N = 45, S = 13: ceil(13/45 * 9) = ceil(2.6) = 3 each = 15, overshoot 2 -> real, real
    assert first_k_counts(g2, 13) == [3, 3, 3, 2, 2]
    # S = 12: ceil(2.4) = 3 each = 15, overshoot 3 -> real, real, quickdraw 1
    assert first_k_counts(g2, 12) == [3, 2, 3, 2, 2]


def test_hand_computed_allow_pct():
    # real 10, sketch C1 6, sketch C2 4; S = 12, p = 0.5: f = 0.6, allowed = ceil(0.5 * 0.6 * 4) = 2,
    # f' = (12 - 2) / (20 - 4) = 0.625 -> real 7, sketch C1 4, C2 2 = 13; real gives back 1; C2 is never popped.
    g = groups(("real", 1, 10), ("sketch", 1, 6), ("sketch", 9, 4))
    assert first_k_counts(g, 12, allow_pct=0.5, test_domain="sketch", held_out={9}) == [6, 4, 2]
    assert first_k_counts(g, 12, allow_pct=1.0, test_domain="sketch", held_out={9}) == [5, 4, 3]


def test_exact_target_and_errors():
    g = groups(("real", 1, 7), ("clipart", 2, 7))
    assert first_k_counts(g, 14) == [7, 7]
    with pytest.raises(ClipgenError, match="fewer than the reference size 15"):
        first_k_counts(g, 15)
    with pytest.raises(ClipgenError, match="no training samples"):
        first_k_counts([], 3)


def test_select_first_k_and_random():
    g = groups(("real", 1, 10), ("sketch", 2, 6))
    keep = [4, 3]
    assert select(g, keep) == [[0, 1, 2, 3], [10, 11, 12]]
    a, b, c = select(g, keep, "random", 0), select(g, keep, "random", 0), select(g, keep, "random", 1)
    assert a == b and a != c
    assert [len(x) for x in a] == keep and all(x == sorted(x) for x in a)
    assert set(a[0]) <= set(range(10)) and set(a[1]) <= set(range(10, 16))
    # over many seeds every sample is picked about equally often (k/n = 0.4 for the first group)
    hits = Counter(i for s in range(2000) for i in select(g, keep, "random", s)[0])
    assert all(0.33 < hits[i] / 2000 < 0.47 for i in range(10))
    with pytest.raises(ClipgenError, match="--subsample: unknown mode"):
        select(g, keep, "shuffle")
