"""Macro AUROC against scikit-learn directly, on random data and on the demo store's real labels."""
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ecg_core.data.store import open_store
from ecg_core.evaluation import multi_hot
from ecg_core.metrics import AurocResult, macro_auroc


def mean_of_sklearn(y, scores):
    return float(np.mean([roc_auc_score(y[:, i], scores[:, i]) for i in range(y.shape[1])]))


def test_random_multilabel_matches_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 6)) < 0.3).astype(np.int64)
    scores = rng.normal(size=(200, 6)) + 1.5 * y   # informative but not perfect
    names = [f"c{i}" for i in range(6)]
    result = macro_auroc(y, scores, names)
    assert isinstance(result, AurocResult) and result.excluded == []
    for i, name in enumerate(names):
        assert result.per_class[name] == pytest.approx(roc_auc_score(y[:, i], scores[:, i]), abs=1e-12)
    assert result.macro == pytest.approx(mean_of_sklearn(y, scores), abs=1e-12)
    assert result.macro == pytest.approx(roc_auc_score(y, scores, average="macro"), abs=1e-12)


def test_classes_without_positives_or_negatives_are_excluded_not_fatal():
    rng = np.random.default_rng(1)
    y = (rng.random((50, 4)) < 0.4).astype(bool)
    y[:, 1] = False   # no positive
    y[:, 3] = True    # no negative
    scores = rng.random((50, 4)).astype(np.float32)
    result = macro_auroc(y, scores, ["a", "b", "c", "d"])
    assert result.excluded == ["b", "d"] and sorted(result.per_class) == ["a", "c"]
    assert result.macro == pytest.approx(mean_of_sklearn(y[:, [0, 2]].astype(int), scores[:, [0, 2]]))
    nothing = macro_auroc(np.zeros((5, 2)), np.zeros((5, 2)), ["a", "b"])
    assert math.isnan(nothing.macro) and nothing.per_class == {} and nothing.excluded == ["a", "b"]


def test_real_demo_labels_with_a_class_absent(demo_store):
    store = open_store(demo_store)
    classes = store.tasks["labels"]
    rec = store.records
    test = rec[(rec["fold"] == 10) & ~rec["y_labels"].map(lambda labels: "LBBB" in labels)]
    y = multi_hot(test, "labels", classes)
    assert y[:, classes.index("LBBB")].sum() == 0 and y.sum(axis=1).min() >= 1
    rng = np.random.default_rng(2)
    scores = y * rng.random(y.shape) + rng.random(y.shape)
    result = macro_auroc(y, scores, classes)
    assert result.excluded == ["LBBB"]
    kept = [i for i, c in enumerate(classes) if c != "LBBB"]
    for i in kept:
        assert result.per_class[classes[i]] == pytest.approx(roc_auc_score(y[:, i], scores[:, i]))
    assert result.macro == pytest.approx(roc_auc_score(y[:, kept], scores[:, kept], average="macro"))


def test_bad_inputs_raise_one_line_errors():
    y, s = np.zeros((4, 2)), np.zeros((4, 2))
    y[:2, :] = 1
    with pytest.raises(ValueError, match="NaN/inf"):
        macro_auroc(y, np.where(np.eye(4, 2) > 0, np.nan, s), ["a", "b"])
    with pytest.raises(ValueError, match="only 0/1 labels"):
        macro_auroc(np.full((4, 2), np.nan), s, ["a", "b"])
    with pytest.raises(ValueError, match="only 0/1 labels, found \\[2.0\\]"):
        macro_auroc(y * 2, s, ["a", "b"])
    with pytest.raises(ValueError, match="differ in shape"):
        macro_auroc(y, s[:3], ["a", "b"])
    with pytest.raises(ValueError, match="2 classes in the arrays but 3 class names"):
        macro_auroc(y, s, ["a", "b", "c"])
    with pytest.raises(ValueError, match="must be 2-D"):
        macro_auroc(y[:, 0], s[:, 0], ["a"])
    with pytest.raises(ValueError, match="not unique"):
        macro_auroc(y, s, ["a", "a"])
