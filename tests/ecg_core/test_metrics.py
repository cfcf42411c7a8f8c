"""Metrics against scikit-learn and written-out reference implementations, on random data, the demo store's real
labels and the real Challenge weight tables; bootstrap intervals against their generic path and a known truth."""
import csv
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from ecg_core.data.labels import load_cinc_scoring
from ecg_core.data.store import open_store
from ecg_core.evaluation import multi_hot
from ecg_core.metrics import (
    CINC_NORMAL_CODE,
    AurocResult,
    ClassMetric,
    bootstrap_ci,
    bootstrap_macro_auprc,
    bootstrap_macro_auroc,
    bootstrap_macro_f1,
    challenge_score,
    challenge_weights,
    choose_thresholds,
    f1_at_thresholds,
    macro_auprc,
    macro_auroc,
    paired_bootstrap,
    paired_bootstrap_macro_auroc,
    paired_bootstrap_mean_macro_auroc,
)


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


# --------------------------------------------------------------------------------------------------------
# AUPRC, thresholds and F1
# --------------------------------------------------------------------------------------------------------


def test_class_metric_is_the_auroc_result_type():
    assert AurocResult is ClassMetric
    assert isinstance(macro_auprc(np.eye(3), np.eye(3), ["a", "b", "c"]), AurocResult)


def test_auprc_random_multilabel_matches_sklearn_and_excludes_like_auroc():
    rng = np.random.default_rng(3)
    y = (rng.random((150, 5)) < 0.3).astype(np.int64)
    y[:, 1] = 0   # no positive: AUPRC undefined
    y[:, 4] = 1   # no negative: AUPRC defined (1.0) but left out like AUROC
    scores = np.round(rng.normal(size=y.shape) + y, 1)   # rounded: ties in the scores
    names = ["a", "b", "c", "d", "e"]
    result = macro_auprc(y, scores, names)
    assert result.excluded == macro_auroc(y, scores, names).excluded == ["b", "e"]
    for i in (0, 2, 3):
        assert result.per_class[names[i]] == pytest.approx(average_precision_score(y[:, i], scores[:, i]), abs=1e-12)
    kept = [0, 2, 3]
    assert result.macro == pytest.approx(average_precision_score(y[:, kept], scores[:, kept], average="macro"),
                                         abs=1e-12)


def brute_force_best_f1(y, s):
    """Max F1 over every distinct score used as threshold (prediction: s >= t), and the thresholds reaching it."""
    f1s = {t: f1_score(y, (s >= t).astype(int)) for t in np.unique(s)}
    best = max(f1s.values())
    return best, [t for t, f in f1s.items() if f == best]


def test_chosen_threshold_reaches_the_brute_force_max_f1_and_prefers_larger_thresholds():
    rng = np.random.default_rng(4)
    y = (rng.random((120, 6)) < 0.25).astype(int)
    scores = np.round(rng.normal(size=y.shape) + 1.2 * y, 1)   # many ties
    scores[:, 5] = np.repeat([0.0, 1.0, 2.0], 40)               # three tie groups only
    thresholds = choose_thresholds(y, scores)
    assert thresholds.shape == (6,)
    for c in range(6):
        best, maximisers = brute_force_best_f1(y[:, c], scores[:, c])
        assert f1_score(y[:, c], (scores[:, c] >= thresholds[c]).astype(int)) == pytest.approx(best, abs=1e-12)
        assert thresholds[c] == max(maximisers)


def test_threshold_tie_break_and_class_without_positives():
    # scores 3, 2, 1 with labels 1, 0, 1: t=3 -> F1 2/3, t=2 -> F1 1/2, t=1 -> F1 4/5; t=1 wins
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[3.0, 5.0], [2.0, 6.0], [1.0, 7.0]])
    assert choose_thresholds(y, s).tolist() == [1.0, math.inf]
    # labels 1, 0, 0, 1 on scores 4, 3, 2, 1: t=4 and t=1 both give F1 2/3 -> the larger, 4
    assert choose_thresholds(np.array([[1], [0], [0], [1]]), np.array([[4.0], [3.0], [2.0], [1.0]])).tolist() == [4.0]
    # logits: a class never positive in validation is never predicted on test, whatever the score scale
    never = f1_at_thresholds(np.array([[1, 1], [0, 0]]), np.array([[1e9, 1e9], [-1e9, 0.0]]),
                             np.array([math.inf, 0.5]), ["a", "b"])
    assert never.per_class == {"a": 0.0, "b": 1.0}


def test_f1_at_thresholds_matches_sklearn():
    rng = np.random.default_rng(5)
    y = (rng.random((200, 5)) < 0.3).astype(int)
    y[:, 2] = 0
    scores = rng.normal(size=y.shape) + y
    thresholds = rng.normal(0.5, 0.3, size=5)
    names = list("abcde")
    result = f1_at_thresholds(y, scores, thresholds, names)
    assert result.excluded == ["c"]
    predicted = (scores >= thresholds).astype(int)
    for i in (0, 1, 3, 4):
        assert result.per_class[names[i]] == pytest.approx(f1_score(y[:, i], predicted[:, i]), abs=1e-12)
    kept = [0, 1, 3, 4]
    assert result.macro == pytest.approx(f1_score(y[:, kept], predicted[:, kept], average="macro"), abs=1e-12)
    with pytest.raises(ValueError, match=r"thresholds_C must have shape \(5,\)"):
        f1_at_thresholds(y, scores, thresholds[:4], names)
    with pytest.raises(ValueError, match="thresholds_C holds NaN"):
        f1_at_thresholds(y, scores, np.full(5, np.nan), names)
    with pytest.raises(ValueError, match="only 0/1 labels"):
        choose_thresholds(y * 3, scores)


def test_auprc_and_f1_on_real_demo_labels(demo_store):
    store = open_store(demo_store)
    classes = store.tasks["labels"]
    rec = store.records
    y_val = multi_hot(rec[rec["fold"] == 9], "labels", classes)
    y_test = multi_hot(rec[rec["fold"] == 10], "labels", classes)
    rng = np.random.default_rng(6)
    s_val = rng.normal(size=y_val.shape) + 1.5 * y_val
    s_test = rng.normal(size=y_test.shape) + 1.5 * y_test
    kept = [i for i in range(len(classes)) if 0 < y_test[:, i].sum() < len(y_test)]
    assert kept

    auprc = macro_auprc(y_test, s_test, classes)
    assert [classes.index(c) for c in auprc.per_class] == kept
    for i in kept:
        assert auprc.per_class[classes[i]] == pytest.approx(average_precision_score(y_test[:, i], s_test[:, i]))
    assert auprc.macro == pytest.approx(average_precision_score(y_test[:, kept], s_test[:, kept], average="macro"))

    thresholds = choose_thresholds(y_val, s_val)
    assert np.isinf(thresholds[y_val.sum(axis=0) == 0]).all() and np.isfinite(thresholds[y_val.sum(axis=0) > 0]).all()
    f1 = f1_at_thresholds(y_test, s_test, thresholds, classes)
    predicted = (s_test >= thresholds).astype(int)
    for i in kept:
        assert f1.per_class[classes[i]] == pytest.approx(f1_score(y_test[:, i], predicted[:, i], zero_division=0))
    assert f1.macro == pytest.approx(f1_score(y_test[:, kept], predicted[:, kept], average="macro", zero_division=0))


# --------------------------------------------------------------------------------------------------------
# PhysioNet/CinC Challenge score
# --------------------------------------------------------------------------------------------------------


def naive_challenge_score(labels, outputs, weights, normal_index):
    """The Challenge definition written out record by record and class by class."""
    def raw(outs):
        n_rec, n_cls = labels.shape
        confusion = [[0.0] * n_cls for _ in range(n_cls)]
        for r in range(n_rec):
            union = sum(1 for k in range(n_cls) if labels[r, k] or outs[r, k])
            norm = max(union, 1)
            for i in range(n_cls):
                for j in range(n_cls):
                    if labels[r, i] and outs[r, j]:
                        confusion[i][j] += 1.0 / norm
        return sum(weights[i][j] * confusion[i][j] for i in range(n_cls) for j in range(n_cls))

    inactive_outputs = np.zeros_like(labels)
    inactive_outputs[:, normal_index] = 1
    observed, correct, inactive = raw(outputs), raw(labels), raw(inactive_outputs)
    return 0.0 if correct == inactive else (observed - inactive) / (correct - inactive)


@pytest.mark.parametrize("year", [2020, 2021])
def test_challenge_weights_load_in_scoring_class_order(year):
    scoring = load_cinc_scoring(year)
    classes, weights = challenge_weights(scoring.tables_dir)
    assert classes == scoring.classes and weights.shape == (len(classes), len(classes))
    assert len(classes) == {2020: 24, 2021: 26}[year]
    assert np.allclose(np.diag(weights), 1.0) and np.allclose(weights, weights.T)
    assert ((weights >= 0) & (weights <= 1)).all()
    # every entry against the CSV text, read here with the csv module; a class is found by its canonical code
    with open(scoring.tables_dir / "weights.csv", newline="") as handle:
        table = list(csv.reader(handle))
    column = {code: k for k, entry in enumerate(table[0][1:]) for code in entry.split("|")}
    for i, row_code in enumerate(classes):
        for j, col_code in enumerate(classes):
            assert weights[i, j] == float(table[1 + column[row_code]][1 + column[col_code]])
    # merged codes (listed separately in 2020, as code1|code2 in 2021) become one class
    assert "59118001" not in classes and "713427006" in classes


@pytest.mark.parametrize("year", [2020, 2021])
def test_challenge_score_matches_a_naive_loop_with_real_weights(year):
    classes, weights = challenge_weights(load_cinc_scoring(year).tables_dir)
    normal = classes.index(CINC_NORMAL_CODE)
    rng = np.random.default_rng(year)
    n, c = 80, len(classes)
    labels = (rng.random((n, c)) < 0.08).astype(int)
    labels[:5] = 0                                   # records without a scored label
    outputs = np.where(rng.random((n, c)) < 0.2, 1 - labels, labels)   # flip 20 % of the entries
    outputs[5:8] = 0                                 # records without any output
    expected = naive_challenge_score(labels, outputs, weights, normal)
    assert challenge_score(labels, outputs, weights, normal) == pytest.approx(expected, abs=1e-12)
    assert challenge_score(labels.astype(bool), outputs.astype(bool), weights, normal) == pytest.approx(expected,
                                                                                                        abs=1e-12)
    assert challenge_score(labels, labels, weights, normal) == pytest.approx(1.0, abs=1e-12)
    only_normal = np.zeros_like(labels)
    only_normal[:, normal] = 1
    assert challenge_score(labels, only_normal, weights, normal) == pytest.approx(0.0, abs=1e-12)


def test_challenge_score_hand_computed_case():
    weights = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    labels = np.array([[1, 0, 0], [1, 0, 1]])
    outputs = np.array([[0, 1, 0], [1, 0, 0]])
    # observed: record 1 union {0,1} -> A[0,1] += 1/2; record 2 union {0,2} -> A[0,0], A[2,0] += 1/2
    #   = 0.5*0.5 + 1*0.5 + 0*0.5 = 0.75
    # correct: record 1 -> A[0,0] += 1; record 2 -> A[0,0], A[0,2], A[2,0], A[2,2] += 1/2  = 1 + 0.5 + 0.5 = 2
    # inactive (only class 2): record 1 -> A[0,2] += 1/2; record 2 -> A[0,2], A[2,2] += 1/2  = 0.5
    assert challenge_score(labels, outputs, weights, normal_index=2) == pytest.approx((0.75 - 0.5) / (2 - 0.5))
    # every record only normal: correct == inactive, scored 0.0 as in the official evaluation code
    assert challenge_score(np.array([[0, 0, 1]]), np.array([[1, 0, 0]]), weights, 2) == 0.0


def test_challenge_score_bad_inputs():
    weights = np.eye(3)
    y = np.array([[1, 0, 0]])
    with pytest.raises(ValueError, match="y_pred_NC must hold only 0/1 labels"):
        challenge_score(y, np.array([[0.7, 0, 0]]), weights, 2)
    with pytest.raises(ValueError, match=r"W_CC must have shape \(3, 3\)"):
        challenge_score(y, y, np.eye(2), 2)
    with pytest.raises(ValueError, match="normal_index 3 is not a class index"):
        challenge_score(y, y, weights, 3)
    with pytest.raises(ValueError, match="differ in shape"):
        challenge_score(y, np.zeros((2, 3)), weights, 0)


# --------------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------------


def generic_macro(names):
    return lambda y, s: macro_auroc(y, s, names).macro


def test_fast_bootstrap_equals_generic_path_with_ties_and_a_rare_class():
    rng = np.random.default_rng(7)
    y = (rng.random((120, 4)) < 0.3).astype(int)
    y[:, 3] = 0
    y[17, 3] = 1                                     # one positive: absent from ~1/3 of the resamples
    scores = np.round(rng.normal(size=y.shape) + y, 1)
    names = list("abcd")
    generic = bootstrap_ci(generic_macro(names), [y, scores], n_resamples=150, seed=11)
    fast = bootstrap_macro_auroc(y, scores, names, n_resamples=150, seed=11)
    assert fast.estimate == generic.estimate == macro_auroc(y, scores, names).macro
    assert fast.n_valid == generic.n_valid == 150 and fast.n_resamples == 150
    assert fast.low == pytest.approx(generic.low, abs=1e-9) and fast.high == pytest.approx(generic.high, abs=1e-9)
    assert generic.low < generic.estimate < generic.high


def auprc_and_f1_data(seed, n=120):
    """Labels with a rare class (one positive) and a class with two negatives, scores rounded to one decimal
    (ties) plus a column of three tie groups, thresholds with a never-predicted (+inf) class."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 6)) < 0.3).astype(int)
    y[:, 3] = 0
    y[17, 3] = 1                                     # one positive: absent from ~1/3 of the resamples
    y[:, 4] = 1
    y[[5, n // 2], 4] = 0                            # two negatives: absent from some resamples
    scores = np.round(rng.normal(size=y.shape) + y, 1)
    scores[:, 5] = np.repeat([0.0, 1.0, 2.0], n // 3)
    thresholds = choose_thresholds(y, np.round(scores + rng.normal(scale=0.5, size=y.shape), 1))
    thresholds[1] = math.inf
    return y, scores, thresholds, list("abcdef")


def generic_auprc(names):
    return lambda y, s: macro_auprc(y, s, names).macro


def generic_f1(thresholds, names):
    return lambda y, s: f1_at_thresholds(y, s, thresholds, names).macro


def test_fast_auprc_and_f1_bootstrap_equal_generic_path_with_ties_and_rare_classes():
    y, scores, thresholds, names = auprc_and_f1_data(13)
    cases = [(bootstrap_macro_auprc(y, scores, names, n_resamples=150, seed=11),
              bootstrap_ci(generic_auprc(names), [y, scores], n_resamples=150, seed=11),
              macro_auprc(y, scores, names).macro),
             (bootstrap_macro_f1(y, scores, thresholds, names, n_resamples=150, seed=11),
              bootstrap_ci(generic_f1(thresholds, names), [y, scores], n_resamples=150, seed=11),
              f1_at_thresholds(y, scores, thresholds, names).macro)]
    for fast, generic, point in cases:
        assert fast.estimate == generic.estimate == point
        assert fast.n_valid == generic.n_valid == 150 and fast.n_resamples == 150
        assert fast.low == pytest.approx(generic.low, abs=1e-9) and fast.high == pytest.approx(generic.high, abs=1e-9)
        assert generic.low < generic.estimate < generic.high


def test_fast_auprc_and_f1_equal_generic_path_resample_by_resample():
    """With one resample the interval is that resample's value, so each seed compares one resample: among
    them resamples without the rare class's positive or without the negatives of class e."""
    y, scores, thresholds, names = auprc_and_f1_data(14, n=45)
    scores[:, 0] = 0.5                               # a single tie group
    for seed in range(25):
        for fast, generic in ((bootstrap_macro_auprc(y, scores, names, n_resamples=1, seed=seed),
                               bootstrap_ci(generic_auprc(names), [y, scores], n_resamples=1, seed=seed)),
                              (bootstrap_macro_f1(y, scores, thresholds, names, n_resamples=1, seed=seed),
                               bootstrap_ci(generic_f1(thresholds, names), [y, scores], n_resamples=1, seed=seed))):
            assert fast.n_valid == generic.n_valid == 1
            assert fast.low == fast.high == pytest.approx(generic.low, abs=1e-9)


def test_fast_auprc_and_f1_count_valid_resamples():
    n, n_resamples, seed = 40, 400, 5
    y = np.zeros((n, 1), dtype=int)
    y[9] = 1
    scores = np.round(np.random.default_rng(9).normal(size=(n, 1)), 1)
    thresholds = np.array([0.0])
    rng = np.random.default_rng(seed)
    expected = sum(9 in rng.integers(0, n, size=n) for _ in range(n_resamples))
    auprc = bootstrap_macro_auprc(y, scores, ["x"], n_resamples, seed)
    f1 = bootstrap_macro_f1(y, scores, thresholds, ["x"], n_resamples, seed)
    generic = bootstrap_ci(generic_auprc(["x"]), [y, scores], n_resamples, seed)
    assert auprc.n_valid == f1.n_valid == generic.n_valid == expected and auprc.n_resamples == n_resamples
    assert auprc.low == pytest.approx(generic.low, abs=1e-9) and auprc.high == pytest.approx(generic.high, abs=1e-9)
    nothing = [bootstrap_macro_auprc(np.ones((10, 2)), np.zeros((10, 2)), ["x", "y"], n_resamples=20),
               bootstrap_macro_f1(np.zeros((10, 2)), np.zeros((10, 2)), np.zeros(2), ["x", "y"], n_resamples=20)]
    for result in nothing:
        assert result.n_valid == 0 and math.isnan(result.low) and math.isnan(result.high)
        assert math.isnan(result.estimate) and result.n_resamples == 20


def test_fast_auprc_and_f1_bad_arguments():
    y, scores, thresholds, names = auprc_and_f1_data(15, n=30)
    assert bootstrap_macro_auprc(y, scores, names, n_resamples=50, seed=2) == \
        bootstrap_macro_auprc(y, scores, names, n_resamples=50, seed=2)
    with pytest.raises(ValueError, match="n_resamples must be at least 1"):
        bootstrap_macro_auprc(y, scores, names, n_resamples=0)
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
        bootstrap_macro_f1(y, scores, thresholds, names, alpha=0.0)
    with pytest.raises(ValueError, match=r"thresholds_C must have shape \(6,\)"):
        bootstrap_macro_f1(y, scores, thresholds[:5], names)
    with pytest.raises(ValueError, match="thresholds_C holds NaN"):
        bootstrap_macro_f1(y, scores, np.full(6, np.nan), names)
    with pytest.raises(ValueError, match="6 classes in the arrays but 5 class names"):
        bootstrap_macro_auprc(y, scores, names[:5])
    with pytest.raises(ValueError, match="NaN/inf"):
        bootstrap_macro_auprc(y, np.full(y.shape, np.inf), names)


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(8)
    y = (rng.random((100, 3)) < 0.4).astype(int)
    scores = rng.normal(size=y.shape) + y
    names = ["a", "b", "c"]
    first = bootstrap_macro_auroc(y, scores, names, n_resamples=200, seed=3)
    assert bootstrap_macro_auroc(y, scores, names, n_resamples=200, seed=3) == first
    assert bootstrap_ci(generic_macro(names), [y, scores], n_resamples=50, seed=3) == \
        bootstrap_ci(generic_macro(names), [y, scores], n_resamples=50, seed=3)
    assert bootstrap_macro_auroc(y, scores, names, n_resamples=200, seed=4) != first


def test_bootstrap_counts_valid_resamples_with_a_rare_class():
    n, n_resamples, seed = 40, 400, 5
    y = np.zeros((n, 1), dtype=int)
    y[9] = 1
    scores = np.random.default_rng(9).normal(size=(n, 1))
    # the resamples that contain record 9, drawn as documented: default_rng(seed), one resample at a time
    rng = np.random.default_rng(seed)
    expected = sum(9 in rng.integers(0, n, size=n) for _ in range(n_resamples))
    assert 0.5 * n_resamples < expected < 0.75 * n_resamples   # about 1 - (1 - 1/40)^40 = 0.64

    def auroc_or_raise(labels, s):
        if labels.min() == labels.max():
            raise ValueError("one class only")
        return roc_auc_score(labels[:, 0], s[:, 0])

    raises = bootstrap_ci(auroc_or_raise, [y, scores], n_resamples, seed)
    nan = bootstrap_ci(generic_macro(["x"]), [y, scores], n_resamples, seed)
    fast = bootstrap_macro_auroc(y, scores, ["x"], n_resamples, seed)
    assert raises.n_valid == nan.n_valid == fast.n_valid == expected and fast.n_resamples == n_resamples
    assert fast.low == pytest.approx(nan.low, abs=1e-9) and fast.high == pytest.approx(nan.high, abs=1e-9)
    nothing = bootstrap_macro_auroc(np.zeros((10, 1)), np.zeros((10, 1)), ["x"], n_resamples=20)
    assert nothing.n_valid == 0 and math.isnan(nothing.low) and math.isnan(nothing.estimate)


def test_bootstrap_ci_covers_the_true_binormal_auroc():
    """Positives ~ N(d, 1), negatives ~ N(0, 1): AUROC = Phi(d / sqrt(2)). The nominal 95 % interval must hold
    the truth in 90-99 % of 200 independent datasets (binomial sd of the rate there: 1.5 %). 500 resamples per
    interval are enough: the Monte Carlo error of a 2.5 % percentile from 500 draws is small next to the
    interval width, and it only adds noise to the coverage rate, which the 90-99 % band allows for."""
    d, n_pos, n_neg = 1.0, 100, 200
    truth = norm.cdf(d / math.sqrt(2))
    labels = np.concatenate([np.ones(n_pos), np.zeros(n_neg)])[:, None]
    rng = np.random.default_rng(10)
    covered = 0
    for k in range(200):
        scores = np.concatenate([rng.normal(d, 1, n_pos), rng.normal(0, 1, n_neg)])[:, None]
        result = bootstrap_macro_auroc(labels, scores, ["x"], n_resamples=500, seed=k)
        covered += result.low <= truth <= result.high
    assert 0.90 <= covered / 200 <= 0.99


def test_paired_bootstrap():
    rng = np.random.default_rng(12)
    y = (rng.random((200, 3)) < 0.3).astype(int)
    a = rng.normal(size=y.shape) + 1.5 * y
    b = a + rng.normal(scale=1.5, size=y.shape)      # a degraded copy of a: clearly worse
    names = ["a", "b", "c"]

    same = paired_bootstrap_macro_auroc(y, a, a.copy(), names, n_resamples=200)
    assert same.delta == 0.0 and same.low == same.high == 0.0 and same.p_value == 1.0 and same.n_valid == 200
    assert paired_bootstrap(generic_macro(names), y, a, a.copy(), n_resamples=50).p_value == 1.0

    better = paired_bootstrap_macro_auroc(y, a, b, names, n_resamples=500, seed=1)
    assert better.delta == pytest.approx(macro_auroc(y, a, names).macro - macro_auroc(y, b, names).macro)
    assert better.delta > 0 and better.low > 0 and better.p_value < 0.01
    assert paired_bootstrap_macro_auroc(y, b, a, names, n_resamples=500, seed=1).p_value == better.p_value
    assert paired_bootstrap_macro_auroc(y, a, b, names, n_resamples=500, seed=1) == better

    generic = paired_bootstrap(generic_macro(names), y, a, b, n_resamples=100, seed=2)
    fast = paired_bootstrap_macro_auroc(y, a, b, names, n_resamples=100, seed=2)
    assert fast.n_valid == generic.n_valid == 100 and fast.delta == pytest.approx(generic.delta, abs=1e-12)
    assert fast.low == pytest.approx(generic.low, abs=1e-9) and fast.high == pytest.approx(generic.high, abs=1e-9)
    assert fast.p_value == generic.p_value
    assert paired_bootstrap(generic_macro(names), y, a, b, n_resamples=100, seed=2) == generic


def test_bootstrap_bad_arguments():
    y, s = np.eye(4), np.eye(4)
    names = list("abcd")
    with pytest.raises(ValueError, match="n_resamples must be at least 1"):
        bootstrap_macro_auroc(y, s, names, n_resamples=0)
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
        bootstrap_ci(generic_macro(names), [y, s], alpha=1.5)
    with pytest.raises(ValueError, match="differ in their number of records"):
        bootstrap_ci(generic_macro(names), [y, s[:3]])
    with pytest.raises(ValueError, match="NaN/inf"):
        paired_bootstrap_macro_auroc(y, s, np.full((4, 4), np.nan), names)


def test_paired_bootstrap_of_seed_averaged_auroc_matches_the_generic_path():
    rng = np.random.default_rng(5)
    y = (rng.random((120, 3)) < 0.35).astype(float)
    names = ["a", "b", "c"]
    runs_a = [np.round(rng.normal(size=y.shape) + 1.5 * y, 1) for _ in range(3)]   # rounded: ties
    runs_b = [rng.normal(size=y.shape) + 0.5 * y for _ in range(3)]
    fast = paired_bootstrap_mean_macro_auroc(y, runs_a, runs_b, names, n_resamples=200, seed=2)

    def averaged(yy, s_NKC):
        return float(np.mean([macro_auroc(yy, s_NKC[:, k], names).macro for k in range(s_NKC.shape[1])]))

    slow = paired_bootstrap(averaged, y, np.stack(runs_a, axis=1), np.stack(runs_b, axis=1), n_resamples=200, seed=2)
    assert fast.delta == pytest.approx(slow.delta, abs=1e-12) and fast.n_valid == slow.n_valid
    assert (fast.low, fast.high, fast.p_value) == pytest.approx((slow.low, slow.high, slow.p_value), abs=1e-9)
    assert fast.delta > 0 and fast.p_value < 0.01
    one = paired_bootstrap_mean_macro_auroc(y, runs_a[:1], runs_b[:1], names, n_resamples=200, seed=2)
    assert one == paired_bootstrap_macro_auroc(y, runs_a[0], runs_b[0], names, n_resamples=200, seed=2)
    with pytest.raises(ValueError, match="same number"):
        paired_bootstrap_mean_macro_auroc(y, runs_a, runs_b[:2], names)
