"""CKA maths (plain arrays) and the class-subset logic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from clipgen.analysis import cka as C
from clipgen.errors import ClipgenError, ConfigFieldError

# ----------------------------------------------------------------------------- independent reference formulas


def ref_hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. (2012), Theorem 2: the U-statistic with explicit sums over distinct index tuples."""
    n = k.shape[0]
    t1 = sum(k[i, j] * l[i, j] for i, j in itertools.permutations(range(n), 2))
    t2 = sum(k[i, j] * l[q, r] for i, j, q, r in itertools.permutations(range(n), 4))
    t3 = sum(k[i, j] * l[i, q] for i, j, q in itertools.permutations(range(n), 3))

    def falling(m: int, r: int) -> int:
        out = 1
        for t in range(r):
            out *= m - t
        return out

    return t1 / falling(n, 2) + t2 / falling(n, 4) - 2.0 * t3 / falling(n, 3)


def ref_hsic_biased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """tr(KHLH) / (n-1)^2 written out as sums: sum k_ij l_ij - 2/n sum k_ij l_iq + 1/n^2 sum k sum l."""
    n = k.shape[0]
    s1 = sum(k[i, j] * l[i, j] for i in range(n) for j in range(n))
    s2 = sum(k[i, j] * l[i, q] for i in range(n) for j in range(n) for q in range(n))
    s3 = sum(k[i, j] for i in range(n) for j in range(n)) * sum(l[i, j] for i in range(n) for j in range(n))
    return (s1 - 2.0 / n * s2 + s3 / n**2) / (n - 1) ** 2


def ref_rbf(x: np.ndarray, median: str = "lower") -> np.ndarray:
    n = x.shape[0]
    d = np.array([[float(np.sum((x[i] - x[j]) ** 2)) for j in range(n)] for i in range(n)])
    nz = sorted(d[i, j] for i in range(n) for j in range(i + 1, n) if d[i, j] > 0)
    m = len(nz)
    if m % 2:
        sigma2 = nz[m // 2]
    else:
        sigma2 = nz[m // 2 - 1] if median == "lower" else 0.5 * (nz[m // 2 - 1] + nz[m // 2])
    return np.exp(-d / (2 * sigma2))


def rand(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


# ----------------------------------------------------------------------------- estimators and kernels


@pytest.mark.parametrize("n", [4, 6])
def test_unbiased_hsic_matches_u_statistic(n):
    x, y = rand((n, 3), 1), rand((n, 5), 2)
    for k, l in [(C.linear_gram(x), C.linear_gram(y)), (ref_rbf(x), ref_rbf(y))]:  # noqa: E741
        assert C.hsic_unbiased(k, l) == pytest.approx(ref_hsic_unbiased(k, l), rel=1e-10, abs=1e-12)


def test_biased_hsic_matches_sums():
    x, y = rand((5, 3), 3), rand((5, 2), 4)
    k, l = C.linear_gram(x), C.rbf_gram(y)  # noqa: E741
    assert C.hsic_biased(k, l) == pytest.approx(ref_hsic_biased(k, l), rel=1e-10)
    # and the textbook matrix form
    n = 5
    h = np.eye(n) - np.ones((n, n)) / n
    assert C.hsic_biased(k, l) == pytest.approx(np.trace(k @ h @ l @ h) / (n - 1) ** 2, rel=1e-10)


def test_hand_computed_tiny_case():
    # 4 points on a line, one feature: K = x x^T with x = (0, 1, 2, 3); L = K -> CKA 1, and a worked value of HSIC
    x = np.arange(4.0)[:, None]
    k = C.linear_gram(x)
    # biased: centred x = (-1.5, -.5, .5, 1.5), |x_c|^2 = 5, tr(KHKH) = |x_c|^4 = 25, / (n-1)^2 = 9
    assert C.hsic_biased(k, k) == pytest.approx(25 / 9)
    assert C.hsic_unbiased(k, k) == pytest.approx(ref_hsic_unbiased(k, k))
    assert C.cka_from_grams(k, k) == pytest.approx(1.0)


def test_rbf_sigma_is_median_of_nonzero_distances():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])  # rows 1 and 2 identical
    np.testing.assert_allclose(C.rbf_gram(x), ref_rbf(x), rtol=1e-12)
    d = C.squared_distances(C.linear_gram(x))
    assert d[1, 2] == 0.0 and np.all(np.diag(d) == 0)
    # non-zero upper-triangle distances: 1,1,4,10, 5,5,5,5, 5(3-4? no) ... computed explicitly:
    pairs = [float(np.sum((x[i] - x[j]) ** 2)) for i in range(5) for j in range(i + 1, 5)]
    assert C.rbf_sigma2(d) == pytest.approx(float(np.median([p for p in pairs if p > 0])))
    with pytest.raises(ClipgenError, match="identical"):
        C.rbf_gram(np.ones((5, 3)))


def test_rbf_sigma_for_an_even_number_of_pairs_is_the_lower_middle_value_by_default():
    # 4 points on a line: 6 pairs with squared distances 1, 4, 9, 16, 36, 49 (0-1, 1-3, 0-3, 3-7, 1-7, 0-7)
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    d = C.squared_distances(C.linear_gram(x))
    assert C.rbf_sigma2(d) == 9.0  # lower of the two middle values (torch.median), the published choice
    assert C.rbf_sigma2(d, "lower") == 9.0
    assert C.rbf_sigma2(d, "mean") == 12.5  # (9 + 16) / 2
    # the published script takes torch.median over the non-zero entries of the whole matrix (each pair twice)
    import torch

    assert float(torch.median(torch.from_numpy(d)[torch.from_numpy(d) != 0])) == 9.0
    np.testing.assert_allclose(C.rbf_gram(x)[0, 1:], np.exp(-np.array([1.0, 9.0, 49.0]) / 18.0), rtol=1e-14)
    np.testing.assert_allclose(C.rbf_gram(x, median="mean")[0, 1:], np.exp(-np.array([1.0, 9.0, 49.0]) / 25.0),
                               rtol=1e-14)
    with pytest.raises(ConfigFieldError, match="^rbf_median"):
        C.rbf_sigma2(d, "upper")


def test_rbf_median_choice_changes_cka_and_each_matches_a_hand_built_gram():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    y = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    for median in C.RBF_MEDIANS:
        want = C.cka_from_grams(ref_rbf(x, median), ref_rbf(y, median))
        assert C.cka(x, y, "rbf", rbf_median=median) == pytest.approx(want, rel=1e-12)
    # the lower median is the default, and the choice matters on 4 classes
    assert C.cka(x, y, "rbf") == C.cka(x, y, "rbf", rbf_median="lower")
    assert abs(C.cka(x, y, "rbf", rbf_median="lower") - C.cka(x, y, "rbf", rbf_median="mean")) > 1e-3


@pytest.mark.parametrize("kernel", C.KERNELS)
@pytest.mark.parametrize("estimator", C.ESTIMATORS)
def test_cka_self_is_one_and_symmetric(kernel, estimator):
    x, y = rand((12, 7), 5), rand((12, 4), 6)
    assert C.cka(x, x, kernel, estimator) == pytest.approx(1.0, abs=1e-12)
    assert C.cka(x, y, kernel, estimator) == pytest.approx(C.cka(y, x, kernel, estimator), abs=1e-12)
    assert C.cka(x, y, kernel, estimator) < 0.9


@pytest.mark.parametrize("kernel", C.KERNELS)
@pytest.mark.parametrize("estimator", C.ESTIMATORS)
def test_invariance_to_orthogonal_transform_and_isotropic_scaling(kernel, estimator):
    x, y = rand((15, 6), 7), rand((15, 9), 8)
    q, _ = np.linalg.qr(rand((6, 6), 9))
    base = C.cka(x, y, kernel, estimator)
    assert C.cka(x @ q, y, kernel, estimator) == pytest.approx(base, abs=1e-10)
    assert C.cka(3.7 * x, 0.01 * y, kernel, estimator) == pytest.approx(base, abs=1e-10)
    # an anisotropic scaling does change it (so the test above can fail)
    assert abs(C.cka(x * np.array([10, 1, 1, 1, 1, 1.0]), y, kernel, estimator) - base) > 1e-3


@pytest.mark.parametrize("estimator", C.ESTIMATORS)
def test_linear_cka_invariant_to_translation(estimator):
    # the estimators themselves (on Gram matrices): the sweep relies on this when it centres the class means
    x, y = rand((10, 5), 10), rand((10, 3), 11)
    shift = 3.0 * rand((1, 5), 12)
    g = C.cka_from_grams(C.linear_gram(x), C.linear_gram(y), estimator)
    assert C.cka_from_grams(C.linear_gram(x + shift), C.linear_gram(y), estimator) == pytest.approx(g, abs=1e-10)
    # and a large offset (ReLU-like activations far from the origin) loses no precision in cka()
    assert C.cka(x + 1e4 * shift, y, "linear", estimator) == pytest.approx(g, abs=1e-12)


def test_gram_form_equals_feature_form():
    for seed in range(3):
        x, y = rand((20, 6), seed), rand((20, 30), seed + 10)
        assert C.cka(x, y, "linear", "biased") == pytest.approx(C.linear_cka_features(x, y), rel=1e-10)
    # CKA is a similarity of Gram matrices: equal Gram matrices (X -> X Q for rectangular orthonormal Q) give 1
    x = rand((9, 4), 3)
    q, _ = np.linalg.qr(rand((8, 8), 4))
    assert C.cka(x, np.hstack([x, np.zeros((9, 4))]) @ q, "linear", "unbiased") == pytest.approx(1.0, abs=1e-12)


def test_fewer_than_four_rows_is_an_error_not_nan():
    x = rand((3, 5), 0)
    for est in C.ESTIMATORS:
        with pytest.raises(ClipgenError, match="at least 4"):
            C.cka(x, x, "linear", est)


def test_constant_representation_is_an_error_not_nan():
    x = np.ones((6, 4))
    with pytest.raises(ClipgenError, match="constant"):
        C.cka(x, rand((6, 4)), "linear", "biased")


@pytest.mark.parametrize("kernel", C.KERNELS)
def test_degenerate_unbiased_self_hsic_is_an_error_not_rounding_noise(kernel):
    # all class means equal but one: the unbiased self-HSIC is exactly 0 (up to rounding, which RBF leaves at
    # ~1e-15 for both, so the ratio of noise would read 1.0); the biased estimator stays well defined
    x = np.array([[1.0], [1.0], [1.0], [-2.0]])
    y = np.array([[0.5, 1.0], [0.5, 1.0], [0.5, 1.0], [3.0, -1.0]])
    with pytest.raises(ClipgenError, match="constant or degenerate"):
        C.cka(x, y, kernel, "unbiased")
    assert C.cka(x, y, kernel, "biased") == pytest.approx(1.0)
    # a representation far from degenerate passes at any scale
    z = rand((5, 3), 1)
    assert np.isfinite(C.cka(1e-6 * z, 1e6 * rand((5, 2), 2), kernel, "unbiased"))


# ----------------------------------------------------------------------------- class subsets


def test_pair_classes_use_the_intersection_of_both_domains():
    held = [0, 5]
    a = [0, 1, 2, 3, 4, 5, 6]
    b = [0, 1, 2, 4, 5, 6, 7]  # lacks 3, has 7
    np.testing.assert_array_equal(C.pair_classes(a, b, "all", held), [0, 1, 2, 4, 5, 6])
    np.testing.assert_array_equal(C.pair_classes(a, b, "id", held), [1, 2, 4, 6])
    np.testing.assert_array_equal(C.pair_classes(a, b, "ood", held), [0, 5])
    with pytest.raises(ConfigFieldError, match="^subsets"):
        C.pair_classes(a, b, "odd", held)


def test_plan_class_sets_per_pair_and_errors():
    present = {"real": np.arange(8), "painting": np.array([0, 1, 2, 4, 5, 6, 7]), "sketch": np.arange(8)}
    pairs = C.domain_pairs(["real", "painting", "sketch"])
    assert pairs == [("real", "painting"), ("real", "sketch"), ("painting", "sketch")]
    plan = C.plan_class_sets(present, pairs, ["all", "id"], held_out=[0, 1, 2])
    assert plan[("real", "sketch", "all")].tolist() == list(range(8))
    assert plan[("real", "painting", "all")].tolist() == [0, 1, 2, 4, 5, 6, 7]  # not painting's list for every pair
    assert plan[("painting", "sketch", "id")].tolist() == [4, 5, 6, 7]
    assert plan[("real", "sketch", "id")].tolist() == [3, 4, 5, 6, 7]
    with pytest.raises(ClipgenError, match=r"'ood' of the pair real/painting has 3 classes"):
        C.plan_class_sets(present, pairs, ["all", "ood"], held_out=[0, 1, 2])
    with pytest.raises(ClipgenError, match="'ood' needs held-out classes"):
        C.plan_class_sets(present, pairs, ["ood"], held_out=[])
    # the published script's single class list (painting's) for every pair, kept as an option
    faithful = C.plan_class_sets(present, pairs, ["all", "id"], held_out=[0, 1, 2], reference=present["painting"])
    assert faithful[("real", "sketch", "all")].tolist() == [0, 1, 2, 4, 5, 6, 7]
    assert faithful[("real", "sketch", "id")].tolist() == [4, 5, 6, 7]
