import numpy as np
import pytest

from clipgen.evaluation.metrics import (
    accuracy,
    domain_counts,
    domain_metrics,
    macro_f1,
    per_class_accuracy,
    topk_accuracy,
)


def test_basic_metrics_by_hand():
    y = np.array([1, 1, 1, 2, 3])
    p = np.array([1, 2, 1, 2, 1])
    assert accuracy(y, p) == pytest.approx(3 / 5)
    assert accuracy(y[:0], p[:0]) is None
    assert per_class_accuracy(y, p, [1, 2, 3, 4]) == {1: pytest.approx(2 / 3), 2: 1.0, 3: 0.0, 4: None}
    top = np.array([[1, 2], [2, 3], [3, 1], [1, 2], [2, 1]])
    assert topk_accuracy(y, top) == pytest.approx(3 / 5)  # rows 0, 2 and 3 hold their label
    # F1 per class on these rows: class 1 tp=2 fp=1 fn=1 -> 4/6; class 2 tp=1 fp=1 fn=0 -> 2/3; class 3 -> 0
    assert macro_f1(y, p) == pytest.approx(np.mean([4 / 6, 2 / 3, 0.0]))


def test_topk_hand_rows():
    y = np.array([1, 1, 1, 2, 3])
    top = np.array([[1, 2], [2, 3], [3, 1], [1, 2], [2, 1]])
    hits = [1 in top[0], 1 in top[1], 1 in top[2], 2 in top[3], 3 in top[4]]
    assert topk_accuracy(y, top) == pytest.approx(np.mean(hits))


def test_weighted_and_unweighted_differ_with_unequal_class_sizes():
    # held-out classes 10 (4 images, all right) and 11 (1 image, wrong); ID classes 20 (2 images) and 21 (absent)
    y = np.array([10, 10, 10, 10, 11, 20, 20])
    top = np.array([[10, 11], [10, 11], [10, 11], [10, 11], [10, 20], [20, 10], [11, 20]])
    m = domain_metrics(y, top, held_out=[10, 11], class_labels=[10, 11, 20, 21])
    assert m["ood_acc"] == pytest.approx(4 / 5)
    assert m["ood_acc_unweighted"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["id_acc"] == pytest.approx(1 / 2)
    assert m["id_acc_unweighted"] == pytest.approx(1 / 2)  # class 21 has no images: skipped, not a zero
    assert m["ood_top5"] == pytest.approx(4 / 5) and m["id_top5"] == 1.0
    assert m["per_class_ood"] == {10: 1.0, 11: 0.0}
    # OOD rows: class 10 tp=4 fp=1 fn=0 -> 8/9; class 11 tp=0 -> 0
    assert m["ood_macro_f1"] == pytest.approx((8 / 9 + 0) / 2)
    c = m["counts"]
    assert c == {"ood": 5, "id": 2, "per_class_ood": {10: 4, 11: 1}, "ood_classes": 2, "id_classes": 1,
                 "skipped_classes": [21]}


def test_held_out_class_absent_in_domain():
    y = np.array([10, 20, 21])
    top = np.array([10, 21, 21])
    m = domain_metrics(y, top, held_out=[10, 11], class_labels=[10, 11, 20, 21])
    assert m["per_class_ood"] == {10: 1.0, 11: None}
    assert m["ood_acc_unweighted"] == 1.0
    assert domain_counts(y, [10, 11], [10, 11, 20, 21])["skipped_classes"] == [11]


def test_topk_unweighted_and_per_class_topk_by_hand():
    # held-out 10 (3 images) and 11 (1 image); ID 20 (2 images), 21 (absent); top-2 predictions
    y = np.array([10, 10, 10, 11, 20, 20])
    top = np.array([[20, 10], [10, 11], [11, 20], [10, 20], [21, 20], [10, 11]])
    m = domain_metrics(y, top, held_out=[10, 11], class_labels=[10, 11, 20, 21])
    # top-2 hits per row: T T F F T F
    assert m["ood_top5"] == pytest.approx(2 / 4) and m["id_top5"] == pytest.approx(1 / 2)
    assert m["per_class_ood_top5"] == {10: pytest.approx(2 / 3), 11: 0.0}
    assert m["ood_top5_unweighted"] == pytest.approx((2 / 3 + 0.0) / 2)  # differs from the weighted 0.5
    assert m["id_top5_unweighted"] == pytest.approx(1 / 2)  # class 21 has no images: skipped
    # top-1 of the same rows: only row 1 is right
    assert m["per_class_ood"] == {10: pytest.approx(1 / 3), 11: 0.0}
    m = domain_metrics(y[:3], top[:3], held_out=[10, 11], class_labels=[10, 11, 20, 21])
    assert m["per_class_ood_top5"][11] is None and m["id_top5"] is None and m["id_top5_unweighted"] is None
