"""Evaluation metrics for multi-label ECG tasks: macro AUROC/AUPRC/F1, the PhysioNet/CinC Challenge score and
bootstrap confidence intervals.

Shapes: ``N`` records (or windows), ``C`` classes, ``B`` bootstrap resamples.

Excluded classes
    A class without a positive (or without a negative) in ``y_true`` has no defined ROC curve. With small
    label fractions or rare classes this happens on real splits, so such a class is left out of the macro
    mean and reported in ``excluded`` instead of crashing the job or silently scoring it 0.5. AUPRC and F1
    are defined for a class without negatives (and undefined without positives), but ``macro_auprc`` and
    ``f1_at_thresholds`` leave out exactly the same classes as ``macro_auroc`` so that the macro numbers
    of one evaluation average over the same classes and can be compared side by side.

Thresholds
    A record is predicted positive for class ``c`` when ``score >= threshold[c]``. ``choose_thresholds``
    picks, per class, the threshold that maximises F1 on a validation split (the "Fmax"-style operating
    point of Strodthoff et al., IEEE JBHI 2021, chosen on validation instead of test).

Challenge score
    ``challenge_score`` is the normalised score of the PhysioNet/Computing in Cardiology Challenge 2020/2021
    (Perez Alday et al., "Classification of 12-lead ECGs: the PhysioNet/Computing in Cardiology Challenge
    2020", Physiol. Meas. 41(12):124003, 2020; Reyna et al., "Will Two Do? Varying Dimensions in
    Electrocardiography: the PhysioNet/Computing in Cardiology Challenge 2021", CinC 2021), with the weight
    matrices of ``ecg_core/data/tables/cinc{2020,2021}/weights.csv`` read by ``challenge_weights``.

Bootstrap
    ``bootstrap_ci`` / ``paired_bootstrap`` resample records (rows) with replacement and take percentile
    intervals (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13). They accept any metric
    callable. ``bootstrap_macro_auroc`` / ``paired_bootstrap_macro_auroc``, ``bootstrap_macro_auprc`` and
    ``bootstrap_macro_f1`` compute the same numbers for their metric (same seed, same resamples) without
    re-sorting each resample: a resample is a vector of multiplicities per record, and its metric is the
    full-data metric with each record weighted by its multiplicity (see ``_resampled_auroc``,
    ``_resampled_auprc`` and ``_resampled_macro_f1``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from ecg_core.data.labels import LabelError, _read_table_header, load_cinc_scoring

__all__ = [
    "CINC_NORMAL_CODE",
    "AurocResult",
    "BootstrapResult",
    "ClassMetric",
    "PairedResult",
    "bootstrap_ci",
    "bootstrap_macro_auprc",
    "bootstrap_macro_auroc",
    "bootstrap_macro_f1",
    "challenge_score",
    "challenge_weights",
    "choose_thresholds",
    "f1_at_thresholds",
    "macro_auprc",
    "macro_auroc",
    "paired_bootstrap",
    "paired_bootstrap_macro_auroc",
    "paired_bootstrap_mean_macro_auroc",
]

#: SNOMED CT code of sinus rhythm (NSR), the "inactive" output of the Challenge score.
CINC_NORMAL_CODE = "426783006"

#: Resamples whose multiplicities are held in memory at once by the vectorised bootstrap (B x N floats each).
_RESAMPLE_BLOCK = 128


@dataclass(frozen=True)
class ClassMetric:
    """A per-class metric and its macro mean.

    ``macro`` is the unweighted mean of ``per_class`` (NaN when every class is excluded);
    ``per_class`` maps each scored class name to its value; ``excluded`` lists, in class order, the
    classes without both positives and negatives in ``y_true``.
    """

    macro: float
    per_class: dict[str, float] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)


#: The result type of ``macro_auroc``; kept under its original name.
AurocResult = ClassMetric


@dataclass(frozen=True)
class BootstrapResult:
    """``estimate``: the metric on the full data; ``low``/``high``: percentile interval over the ``n_valid``
    resamples (of ``n_resamples`` drawn) on which the metric was defined; NaN when none was."""

    estimate: float
    low: float
    high: float
    n_resamples: int
    n_valid: int


@dataclass(frozen=True)
class PairedResult:
    """``delta``: metric(a) - metric(b) on the full data; ``low``/``high``: percentile interval of the
    resampled deltas; ``p_value``: two-sided bootstrap p-value for delta = 0 (see ``paired_bootstrap``);
    ``n_valid``: resamples on which both metrics were defined."""

    delta: float
    low: float
    high: float
    p_value: float
    n_valid: int


# --------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------


def _as_2d(name: str, array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (records, classes), got shape {a.shape}")
    return a


def _binary(name: str, array: np.ndarray) -> np.ndarray:
    """2-D 0/1 array (bool or numeric) as float64."""
    a = _as_2d(name, array).astype(np.float64)
    if not np.all((a == 0) | (a == 1)):
        bad = np.unique(a[(a != 0) & (a != 1)])[:5]
        raise ValueError(f"{name} must hold only 0/1 labels, found {bad.tolist()}")
    return a


def _finite(name: str, array: np.ndarray) -> np.ndarray:
    """2-D finite real array as float64."""
    a = _as_2d(name, array).astype(np.float64)
    non_finite = ~np.isfinite(a)
    if non_finite.any():
        rows = np.unique(np.nonzero(non_finite)[0])
        raise ValueError(f"{name} holds {int(non_finite.sum())} NaN/inf values (in records {rows[:5].tolist()}"
                         f"{'...' if rows.size > 5 else ''})")
    return a


def _same_shape(y_name: str, y: np.ndarray, s_name: str, s: np.ndarray) -> None:
    if y.shape != s.shape:
        raise ValueError(f"{y_name} {y.shape} and {s_name} {s.shape} differ in shape")
    if y.shape[0] == 0:
        raise ValueError("no records to score")


def _validate(y_true_NC: np.ndarray, scores_NC: np.ndarray,
              class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Checked (labels, scores, names): shapes agree, at least one record, names unique and one per column,
    labels 0/1, scores finite. Labels and scores are returned as float64."""
    y = _as_2d("y_true_NC", y_true_NC)
    s = _as_2d("scores_NC", scores_NC)
    names = [str(c) for c in class_names]
    _same_shape("y_true_NC", y, "scores_NC", s)
    if y.shape[1] != len(names):
        raise ValueError(f"{y.shape[1]} classes in the arrays but {len(names)} class names")
    if len(set(names)) != len(names):
        raise ValueError(f"class names are not unique: {names}")
    return _binary("y_true_NC", y), _finite("scores_NC", s), names


def _scorable_C(y_NC: np.ndarray) -> np.ndarray:
    """Classes with at least one positive and one negative."""
    positives = y_NC.sum(axis=0)
    return (positives > 0) & (positives < y_NC.shape[0])


def _class_metric(y_NC: np.ndarray, names: list[str], values: Callable[[int], float]) -> ClassMetric:
    per_class: dict[str, float] = {}
    excluded: list[str] = []
    for c, (name, ok) in enumerate(zip(names, _scorable_C(y_NC))):
        if ok:
            per_class[name] = float(values(c))
        else:
            excluded.append(name)
    macro = float(np.mean(list(per_class.values()))) if per_class else math.nan
    return ClassMetric(macro=macro, per_class=per_class, excluded=excluded)


# --------------------------------------------------------------------------------------------------------
# Ranking metrics and F1
# --------------------------------------------------------------------------------------------------------


def macro_auroc(y_true_NC: np.ndarray, scores_NC: np.ndarray, class_names: Sequence[str]) -> AurocResult:
    """Per-class ROC AUC (``sklearn.metrics.roc_auc_score``) and their unweighted mean.

    Args:
        y_true_NC: multi-hot targets, values 0/1 (bool or numeric).
        scores_NC: any real-valued scores (probabilities or logits), higher meaning more likely.
        class_names: the ``C`` class names, in column order.

    Raises:
        ValueError: shapes disagree, class names repeat, ``y_true_NC`` holds values other than 0/1 (or NaN), or
            ``scores_NC`` holds NaN/inf values.
    """
    y, s, names = _validate(y_true_NC, scores_NC, class_names)
    return _class_metric(y, names, lambda c: roc_auc_score(y[:, c], s[:, c]))


def macro_auprc(y_true_NC: np.ndarray, scores_NC: np.ndarray, class_names: Sequence[str]) -> ClassMetric:
    """Per-class average precision (``sklearn.metrics.average_precision_score``, the step-wise area under the
    precision-recall curve) and their unweighted mean.

    Average precision is defined for a class without negatives (it is then 1) but not without positives.
    The classes left out are nevertheless the same as in ``macro_auroc`` (no positive or no negative), so
    that macro AUROC and macro AUPRC of one evaluation cover the same classes. Arguments and errors as in
    ``macro_auroc``.
    """
    y, s, names = _validate(y_true_NC, scores_NC, class_names)
    return _class_metric(y, names, lambda c: average_precision_score(y[:, c], s[:, c]))


def choose_thresholds(y_val_NC: np.ndarray, scores_val_NC: np.ndarray) -> np.ndarray:
    """Per class, the score threshold that maximises F1 on a validation split; shape ``(C,)``.

    A record is predicted positive when ``score >= threshold``. The candidates are the distinct scores of
    the class: sorting the scores in decreasing order, the threshold equal to the ``k``-th largest distinct
    value predicts the ``n_k`` records up to the end of its tie group, with ``tp_k`` = cumulative sum of the
    labels there, so ``F1_k = 2 tp_k / (P + n_k)`` (``P`` positives) for all candidates at once. Ties in F1
    are broken towards the larger threshold (fewer positive predictions).

    A class without a positive in ``y_val_NC`` gets ``+inf``: every positive prediction would be a false
    positive, so the F1-optimal rule on that split is "never predict the class", and ``+inf`` means that for
    any finite score whether the scores are probabilities or logits (a fixed 0.5 would be wrong for logits,
    and the maximum validation score would still predict test records that score above it).

    Raises:
        ValueError: as ``macro_auroc`` for the two arrays (shapes, 0/1 labels, finite scores).
    """
    y = _binary("y_val_NC", y_val_NC)
    s = _finite("scores_val_NC", scores_val_NC)
    _same_shape("y_val_NC", y, "scores_val_NC", s)
    n = y.shape[0]
    order_NC = np.argsort(-s, axis=0, kind="stable")
    s_sorted = np.take_along_axis(s, order_NC, axis=0)
    tp_NC = np.cumsum(np.take_along_axis(y, order_NC, axis=0), axis=0)
    predicted_N1 = np.arange(1, n + 1, dtype=np.float64)[:, None]
    group_end_NC = np.ones_like(s_sorted, dtype=bool)
    group_end_NC[:-1] = s_sorted[:-1] != s_sorted[1:]
    positives_C = y.sum(axis=0)
    f1_NC = np.where(group_end_NC, 2.0 * tp_NC / (positives_C + predicted_N1), -np.inf)
    best_C = np.argmax(f1_NC, axis=0)   # first maximum = largest threshold among ties
    thresholds_C = s_sorted[best_C, np.arange(s.shape[1])]
    return np.where(positives_C > 0, thresholds_C, np.inf)


def f1_at_thresholds(y_true_NC: np.ndarray, scores_NC: np.ndarray, thresholds_C: np.ndarray,
                     class_names: Sequence[str]) -> ClassMetric:
    """Per-class F1 of the predictions ``scores_NC >= thresholds_C`` and their unweighted mean.

    F1 = 2 TP / (2 TP + FP + FN), as ``sklearn.metrics.f1_score``. Classes are left out as in
    ``macro_auroc`` (no positive or no negative), so every scored class has a defined F1.
    ``thresholds_C`` may hold ``+inf`` (never predict, see ``choose_thresholds``) but not NaN.

    Raises:
        ValueError: as ``macro_auroc``, or ``thresholds_C`` not of shape ``(C,)`` or holding NaN.
    """
    y, s, names = _validate(y_true_NC, scores_NC, class_names)
    t = np.asarray(thresholds_C, dtype=np.float64)
    if t.shape != (y.shape[1],):
        raise ValueError(f"thresholds_C must have shape ({y.shape[1]},), got {t.shape}")
    if np.isnan(t).any():
        raise ValueError(f"thresholds_C holds NaN (classes {np.nonzero(np.isnan(t))[0][:5].tolist()})")
    predicted = s >= t
    tp_C = (predicted * y).sum(axis=0)
    denominator_C = predicted.sum(axis=0) + y.sum(axis=0)
    return _class_metric(y, names, lambda c: 2.0 * tp_C[c] / denominator_C[c])


# --------------------------------------------------------------------------------------------------------
# PhysioNet/CinC Challenge score
# --------------------------------------------------------------------------------------------------------


def challenge_weights(tables_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """Scored classes and weight matrix of the Challenge tables in ``tables_dir``.

    Reads ``weights.csv`` (e.g. ``ecg_core/data/tables/cinc2021``). Header entries written ``code1|code2``
    (2021) stand for one class, named by its first code. Codes that the Challenge scores as one diagnosis
    but that 2020 lists separately (with identical weights) are reduced to the canonical code, as the
    official scoring code does. The result follows ``load_cinc_scoring(year).classes`` exactly (codes and
    order), and the same consistency checks apply (they run inside ``load_cinc_scoring``).

    Returns:
        ``(classes, W_CC)``: canonical SNOMED CT codes and the ``C x C`` weights, ``W_CC[i, j]`` being the
        reward for predicting class ``j`` on a record of class ``i``.

    Raises:
        LabelError: a table is missing or inconsistent, or a weight is not a finite number.
    """
    tables_dir = Path(tables_dir)
    # The year of load_cinc_scoring only selects the packaged tables; the directory is given here.
    scoring = load_cinc_scoring(0, tables_dir)
    path = tables_dir / "weights.csv"
    header, body = _read_table_header(path)   # load_cinc_scoring checked that the matrix is square
    entries = [entry.split("|")[0] for entry in header]
    rows = [row[0].split("|")[0] for row in body]
    if rows != entries:
        raise LabelError(f"{path}: row labels differ from the header")
    try:
        matrix = np.array([[float(cell) for cell in row[1:]] for row in body], dtype=np.float64)
    except ValueError as exc:
        raise LabelError(f"{path}: a weight is not a number ({exc})") from exc
    if not np.isfinite(matrix).all():
        raise LabelError(f"{path}: weights must be finite numbers")
    position = [entries.index(code) for code in scoring.classes]
    return list(scoring.classes), matrix[np.ix_(position, position)]


def _challenge_raw(y_NC: np.ndarray, p_NC: np.ndarray, W_CC: np.ndarray) -> float:
    """sum(W * A) for the Challenge's multi-label confusion matrix A (see ``challenge_score``).

    A = sum_n a_n b_n^T / u_n, so sum(W * A) = sum_n (a_n^T W b_n) / u_n.
    """
    union_N = np.maximum(np.logical_or(y_NC, p_NC).sum(axis=1), 1)
    return float(np.sum(((y_NC @ W_CC) * p_NC).sum(axis=1) / union_N))


def challenge_score(y_true_NC: np.ndarray, y_pred_NC: np.ndarray, W_CC: np.ndarray, normal_index: int) -> float:
    """Normalised PhysioNet/CinC Challenge 2020/2021 score of binary multi-label predictions.

    Following Perez Alday et al. (Physiol. Meas. 2020, section 2.4) and Reyna et al. (CinC 2021): each record
    ``n`` with true labels ``a_n`` and predicted labels ``b_n`` adds ``1 / u_n`` to ``A[i, j]`` for every true
    class ``i`` and predicted class ``j``, where ``u_n = max(|a_n OR b_n|, 1)`` is the number of classes in
    the union of its labels and outputs. With ``score(B) = sum(W * A(B))``::

        normalised = (score(predictions) - score(only normal)) / (score(truth) - score(only normal))

    where "only normal" predicts just the normal class (sinus rhythm, ``CINC_NORMAL_CODE``) for every record.
    Perfect predictions give 1 and predicting only normal gives 0. When the denominator is 0 (every record
    is labelled only normal) the result is 0.0, as in the official ``evaluate_model.py``, so that numbers
    stay comparable with published scores.

    Args:
        y_true_NC, y_pred_NC: 0/1 labels and binary predictions over the scored classes (canonical codes, in
            the order of ``challenge_weights``).
        W_CC: weight matrix from ``challenge_weights``.
        normal_index: column of the normal class, e.g. ``classes.index(CINC_NORMAL_CODE)``.

    Raises:
        ValueError: shapes disagree, values other than 0/1, ``W_CC`` not ``C x C`` or not finite, or
            ``normal_index`` out of range.
    """
    y = _binary("y_true_NC", y_true_NC)
    p = _binary("y_pred_NC", y_pred_NC)
    _same_shape("y_true_NC", y, "y_pred_NC", p)
    n_classes = y.shape[1]
    W = np.asarray(W_CC, dtype=np.float64)
    if W.shape != (n_classes, n_classes):
        raise ValueError(f"W_CC must have shape ({n_classes}, {n_classes}), got {W.shape}")
    if not np.isfinite(W).all():
        raise ValueError("W_CC holds NaN/inf values")
    if not 0 <= int(normal_index) < n_classes:
        raise ValueError(f"normal_index {normal_index} is not a class index (0..{n_classes - 1})")
    normal = np.zeros_like(y)
    normal[:, int(normal_index)] = 1.0
    observed = _challenge_raw(y, p, W)
    correct = _challenge_raw(y, y, W)
    inactive = _challenge_raw(y, normal, W)
    if correct == inactive:
        return 0.0
    return (observed - inactive) / (correct - inactive)


# --------------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------------


def _check_bootstrap(n_resamples: int, alpha: float = 0.05) -> None:
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")


def _resamples(n_records: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Row indices of each resample, drawn one resample at a time from ``np.random.default_rng(seed)``.

    Every bootstrap function draws through here, so the generic and the vectorised paths see the same
    resamples for the same seed.
    """
    rng = np.random.default_rng(seed)
    for _ in range(int(n_resamples)):
        yield rng.integers(0, n_records, size=n_records)


def _percentile_interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    if values.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def _two_sided_p(deltas: np.ndarray, delta: float) -> float:
    """(1 + #resampled deltas at or beyond 0 on the side opposite ``delta``) / (1 + n), doubled, capped at 1.

    This is the percentile-interval bootstrap test (the smallest alpha whose two-sided percentile interval
    excludes 0), with the Monte Carlo "+1" correction of Davison & Hinkley ("Bootstrap Methods and their
    Application", 1997, eq. 4.11) so that a finite number of resamples never reports p = 0; the smallest
    attainable value is 2 / (1 + n). ``delta == 0`` (e.g. identical scores) gives 1.
    """
    if deltas.size == 0 or math.isnan(delta):
        return math.nan
    if delta == 0:
        return 1.0
    opposite = np.count_nonzero(deltas <= 0) if delta > 0 else np.count_nonzero(deltas >= 0)
    return float(min(1.0, 2.0 * (1.0 + opposite) / (1.0 + deltas.size)))


def _call_metric(metric: Callable[..., float], arrays: Sequence[np.ndarray]) -> float:
    """The metric's value, or NaN when it raises ValueError or is not finite (an undefined resample)."""
    try:
        value = float(metric(*arrays))
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _rows(arrays: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int]:
    arrays = [np.asarray(a) for a in arrays]
    if not arrays:
        raise ValueError("bootstrap needs at least one array")
    if any(a.ndim == 0 for a in arrays):
        raise ValueError("bootstrap arrays must have a record axis (axis 0)")
    lengths = {a.shape[0] for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"bootstrap arrays differ in their number of records: {[a.shape[0] for a in arrays]}")
    n = lengths.pop()
    if n == 0:
        raise ValueError("no records to resample")
    return arrays, n


def bootstrap_ci(metric: Callable[..., float], arrays: Sequence[np.ndarray], n_resamples: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> BootstrapResult:
    """Percentile bootstrap interval of ``metric`` over records.

    Each resample draws ``N`` row indices with replacement (``np.random.default_rng(seed)``) and calls
    ``metric(*[a[idx] for a in arrays])``, e.g. ``metric=lambda y, s: macro_auroc(y, s, names).macro``.
    A resample on which the metric raises ``ValueError`` or returns NaN/inf is skipped; ``n_valid`` counts
    the others, and the interval is the ``alpha/2`` and ``1 - alpha/2`` quantiles of their values.
    ``estimate`` is the metric on the full data (errors there propagate).
    """
    _check_bootstrap(n_resamples, alpha)
    arrays, n = _rows(arrays)
    estimate = float(metric(*arrays))
    values = np.array([_call_metric(metric, [a[idx] for a in arrays]) for idx in _resamples(n, n_resamples, seed)])
    valid = values[~np.isnan(values)]
    low, high = _percentile_interval(valid, alpha)
    return BootstrapResult(estimate=estimate, low=low, high=high, n_resamples=int(n_resamples),
                           n_valid=int(valid.size))


def paired_bootstrap(metric: Callable[[np.ndarray, np.ndarray], float], y_true: np.ndarray, scores_a: np.ndarray,
                     scores_b: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> PairedResult:
    """Paired bootstrap comparison of two methods scored on the same records.

    Both methods are evaluated on the same resampled records; ``delta = metric(y, a) - metric(y, b)`` on the
    full data, ``low``/``high`` the percentile interval of the resampled deltas, and ``p_value`` the
    two-sided bootstrap p-value for "no difference" (see ``_two_sided_p``: twice the share of resampled
    deltas on the other side of 0 from ``delta``, with +1 in numerator and denominator, capped at 1).
    Resamples on which either metric is undefined (``ValueError`` or NaN) are skipped and not counted in
    ``n_valid``.
    """
    _check_bootstrap(n_resamples, alpha)
    (y, a, b), n = _rows([y_true, scores_a, scores_b])
    delta = float(metric(y, a)) - float(metric(y, b))
    deltas = np.array([_call_metric(metric, [y[idx], a[idx]]) - _call_metric(metric, [y[idx], b[idx]])
                       for idx in _resamples(n, n_resamples, seed)])
    return _paired_result(delta, deltas, alpha)


def _paired_result(delta: float, deltas: np.ndarray, alpha: float) -> PairedResult:
    valid = deltas[~np.isnan(deltas)]
    low, high = _percentile_interval(valid, alpha)
    return PairedResult(delta=delta, low=low, high=high, p_value=_two_sided_p(valid, delta), n_valid=int(valid.size))


def _multiplicities(n_records: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of at most ``_RESAMPLE_BLOCK`` rows: how often each record occurs in each resample (B x N),
    for the same resamples as ``_resamples``."""
    block: list[np.ndarray] = []
    for idx in _resamples(n_records, n_resamples, seed):
        block.append(idx)
        if len(block) == _RESAMPLE_BLOCK:
            yield _counts(block, n_records)
            block = []
    if block:
        yield _counts(block, n_records)


def _counts(block: list[np.ndarray], n_records: int) -> np.ndarray:
    offsets = (np.arange(len(block)) * n_records)[:, None]
    flat = (np.stack(block) + offsets).ravel()
    return np.bincount(flat, minlength=len(block) * n_records).reshape(len(block), n_records).astype(np.float64)


def _resampled_auroc(y_N: np.ndarray, s_N: np.ndarray, k_BN: np.ndarray) -> np.ndarray:
    """AUROC of one class in each resample given by multiplicities ``k_BN``; NaN where a resample lacks
    positives or negatives.

    Mann-Whitney form of the AUROC (Hanley & McNeil, Radiology 143:29-36, 1982) with each record counted
    ``k`` times: ``AUROC = sum_{i pos, j neg} k_i k_j (1[s_i > s_j] + 1/2 1[s_i = s_j]) / (K_pos K_neg)``.
    Sorting the scores once, with ``g(i)`` the tie group of record ``i`` and ``Neg_<(g)`` / ``Neg_g`` the
    resampled negatives below / within group ``g``, the numerator is
    ``sum_{i pos} k_i (Neg_<(g(i)) + Neg_g(i) / 2)``, i.e. average ranks for ties as in
    ``sklearn.metrics.roc_auc_score``. All sums are of integers and halves, so they are exact.
    """
    order = np.argsort(s_N, kind="stable")
    s_sorted, positive = s_N[order], y_N[order] == 1
    k_sorted = k_BN[:, order]
    group_end = np.ones(s_sorted.size, dtype=bool)
    group_end[:-1] = s_sorted[:-1] != s_sorted[1:]
    group_of = np.cumsum(np.concatenate([[0], group_end[:-1]]))          # tie group of each sorted record
    neg_through_BG = np.cumsum(k_sorted * ~positive, axis=1)[:, group_end]   # negatives up to group end
    neg_before_BG = np.concatenate([np.zeros((k_BN.shape[0], 1)), neg_through_BG[:, :-1]], axis=1)
    mid_BG = 0.5 * (neg_before_BG + neg_through_BG)
    k_pos = k_sorted[:, positive]
    numerator_B = (k_pos * mid_BG[:, group_of[positive]]).sum(axis=1)
    n_pos_B, n_neg_B = k_pos.sum(axis=1), neg_through_BG[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((n_pos_B > 0) & (n_neg_B > 0), numerator_B / (n_pos_B * n_neg_B), np.nan)


def _resampled_auprc(y_N: np.ndarray, s_N: np.ndarray, k_BN: np.ndarray) -> np.ndarray:
    """Average precision of one class in each resample given by multiplicities ``k_BN``; NaN where a resample
    lacks positives or negatives.

    ``sklearn.metrics.average_precision_score`` on a resample is ``AP = sum_g (R_g - R_{g-1}) P_g`` over the
    distinct scores ``g`` of the resample in decreasing order (ties grouped), where ``TP_g`` / ``PP_g`` are
    the resampled positives / records scoring ``>= g``, ``P_g = TP_g / PP_g`` and ``R_g = TP_g / K_pos``.
    Only tie groups holding a positive add to the sum (elsewhere ``R_g = R_{g-1}``), so, sorting the full
    data once, the sum runs over the ``Q`` tie groups of the full data that hold a positive: ``TP_q - TP_{q-1}``
    is the multiplicity of the positives in group ``q`` and ``PP_q`` the multiplicity of the records down to
    the end of group ``q``, both segment sums (``np.add.reduceat``) followed by a cumulative sum over the
    ``Q`` groups. A group absent from a resample adds ``0``. The counts are sums of integers, hence exact;
    only the precisions and their weighted sum are rounded.
    """
    order = np.argsort(-s_N, kind="stable")
    s_sorted, positive = s_N[order], y_N[order] == 1
    if not positive.any():
        return np.full(k_BN.shape[0], np.nan)
    group_end = np.ones(s_sorted.size, dtype=bool)
    group_end[:-1] = s_sorted[:-1] != s_sorted[1:]
    group_of = np.cumsum(np.concatenate([[0], group_end[:-1]]))          # tie group of each sorted record
    # tie groups holding a positive (decreasing score), and where each starts among the sorted positives
    groups_Q, first_positive_Q = np.unique(group_of[positive], return_index=True)
    after_Q = np.nonzero(group_end)[0][groups_Q] + 1                     # first record after each group
    k_sorted = k_BN[:, order]
    # segment q < Q: the records after group q-1 down to the end of group q; a last segment holds the rest
    starts = np.concatenate([[0], after_Q[after_Q < s_sorted.size]])
    records_BS = np.add.reduceat(k_sorted, starts, axis=1)
    pp_BQ = np.cumsum(records_BS, axis=1)[:, :groups_Q.size]
    new_tp_BQ = np.add.reduceat(k_sorted[:, positive], first_positive_Q, axis=1)
    tp_BQ = np.cumsum(new_tp_BQ, axis=1)
    # new_tp > 0 implies pp > 0; a group without resampled positives adds nothing (and may have pp = 0)
    precision_BQ = np.divide(tp_BQ, pp_BQ, out=np.zeros_like(tp_BQ), where=new_tp_BQ > 0)
    n_pos_B = tp_BQ[:, -1]
    n_neg_B = records_BS.sum(axis=1) - n_pos_B
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((n_pos_B > 0) & (n_neg_B > 0), (new_tp_BQ * precision_BQ).sum(axis=1) / n_pos_B, np.nan)


def _macro_of(values_BC: np.ndarray) -> np.ndarray:
    """Mean over the classes that are not NaN in each resample; NaN for a resample where all are."""
    scored_B = (~np.isnan(values_BC)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scored_B > 0, np.nansum(values_BC, axis=1) / scored_B, np.nan)


def _resampled_macro(y_NC: np.ndarray, s_NC: np.ndarray, k_BN: np.ndarray,
                     per_class: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Macro mean of ``per_class(y_N, s_N, k_BN)`` (NaN where a resample lacks positives or negatives of the
    class) in each resample; a class absent (or without negatives) from a resample is left out of that
    resample's mean, and a resample without any scorable class is NaN."""
    values_BC = np.full((k_BN.shape[0], y_NC.shape[1]), np.nan)
    for c in np.nonzero(_scorable_C(y_NC))[0]:
        values_BC[:, c] = per_class(y_NC[:, c], s_NC[:, c], k_BN)
    return _macro_of(values_BC)


def _resampled_macro_auroc(y_NC: np.ndarray, s_NC: np.ndarray, k_BN: np.ndarray) -> np.ndarray:
    """Macro AUROC of each resample (see ``_resampled_macro``)."""
    return _resampled_macro(y_NC, s_NC, k_BN, _resampled_auroc)


def _resampled_macro_f1(y_NC: np.ndarray, predicted_NC: np.ndarray, k_BN: np.ndarray) -> np.ndarray:
    """Macro F1 of the fixed binary predictions ``predicted_NC`` in each resample, from the multiplicity-weighted
    counts ``TP = k @ (pred * y)``, ``PP = k @ pred`` and ``K_pos = k @ y``: ``F1 = 2 TP / (PP + K_pos)``.
    Classes without positives or negatives in a resample are left out of its mean (``_macro_of``)."""
    n_classes = y_NC.shape[1]
    counts_B3C = k_BN @ np.concatenate([predicted_NC * y_NC, predicted_NC, y_NC], axis=1)
    tp_BC, pp_BC, n_pos_BC = np.split(counts_B3C, [n_classes, 2 * n_classes], axis=1)
    scorable_BC = (n_pos_BC > 0) & (n_pos_BC < k_BN.sum(axis=1, keepdims=True))
    f1_BC = np.divide(2.0 * tp_BC, pp_BC + n_pos_BC, out=np.full_like(tp_BC, np.nan), where=scorable_BC)
    return _macro_of(f1_BC)


def _bootstrap_result(estimate: float, values: np.ndarray, n_resamples: int, alpha: float) -> BootstrapResult:
    valid = values[~np.isnan(values)]
    low, high = _percentile_interval(valid, alpha)
    return BootstrapResult(estimate=estimate, low=low, high=high, n_resamples=int(n_resamples),
                           n_valid=int(valid.size))


def bootstrap_macro_auroc(y_true_NC: np.ndarray, scores_NC: np.ndarray, class_names: Sequence[str],
                          n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> BootstrapResult:
    """``bootstrap_ci`` of ``macro_auroc(...).macro``, vectorised over resamples; same resamples and results
    (to rounding) as the generic path for the same seed. Arguments and errors as in ``macro_auroc``."""
    _check_bootstrap(n_resamples, alpha)
    y, s, names = _validate(y_true_NC, scores_NC, class_names)
    estimate = macro_auroc(y, s, names).macro
    values = np.concatenate([_resampled_macro_auroc(y, s, k_BN)
                             for k_BN in _multiplicities(y.shape[0], n_resamples, seed)])
    return _bootstrap_result(estimate, values, n_resamples, alpha)


def bootstrap_macro_auprc(y_true_NC: np.ndarray, scores_NC: np.ndarray, class_names: Sequence[str],
                          n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> BootstrapResult:
    """``bootstrap_ci`` of ``macro_auprc(...).macro``, vectorised over resamples (see ``_resampled_auprc``);
    same resamples and results (to rounding) as the generic path for the same seed. A class is left out of a
    resample exactly when ``macro_auprc`` would leave it out there (no positive or no negative in the
    resample); a resample without any class left is not valid. Arguments and errors as in ``macro_auroc``."""
    _check_bootstrap(n_resamples, alpha)
    y, s, names = _validate(y_true_NC, scores_NC, class_names)
    estimate = macro_auprc(y, s, names).macro
    values = np.concatenate([_resampled_macro(y, s, k_BN, _resampled_auprc)
                             for k_BN in _multiplicities(y.shape[0], n_resamples, seed)])
    return _bootstrap_result(estimate, values, n_resamples, alpha)


def bootstrap_macro_f1(y_true_NC: np.ndarray, scores_NC: np.ndarray, thresholds_C: np.ndarray,
                       class_names: Sequence[str], n_resamples: int = 1000, seed: int = 0,
                       alpha: float = 0.05) -> BootstrapResult:
    """``bootstrap_ci`` of ``f1_at_thresholds(..., thresholds_C, ...).macro`` (thresholds fixed, not re-chosen
    per resample), vectorised over resamples (see ``_resampled_macro_f1``); same resamples and results (to
    rounding) as the generic path for the same seed. Classes are left out of a resample as in
    ``bootstrap_macro_auprc``. Arguments and errors as in ``f1_at_thresholds``."""
    _check_bootstrap(n_resamples, alpha)
    y, s, names = _validate(y_true_NC, scores_NC, class_names)
    estimate = f1_at_thresholds(y, s, thresholds_C, names).macro   # also checks thresholds_C
    predicted = (s >= np.asarray(thresholds_C, dtype=np.float64)).astype(np.float64)
    values = np.concatenate([_resampled_macro_f1(y, predicted, k_BN)
                             for k_BN in _multiplicities(y.shape[0], n_resamples, seed)])
    return _bootstrap_result(estimate, values, n_resamples, alpha)


def paired_bootstrap_macro_auroc(y_true_NC: np.ndarray, scores_a_NC: np.ndarray, scores_b_NC: np.ndarray,
                                 class_names: Sequence[str], n_resamples: int = 1000, seed: int = 0,
                                 alpha: float = 0.05) -> PairedResult:
    """``paired_bootstrap`` of ``macro_auroc(...).macro``, vectorised over resamples; same resamples and
    results (to rounding) as the generic path for the same seed. A class left out of a resample (no positive
    or negative there) is left out for both methods, since that depends only on the labels."""
    _check_bootstrap(n_resamples, alpha)
    y, a, names = _validate(y_true_NC, scores_a_NC, class_names)
    _, b, _ = _validate(y_true_NC, scores_b_NC, class_names)
    delta = float(macro_auroc(y, a, names).macro - macro_auroc(y, b, names).macro)
    deltas = np.concatenate([_resampled_macro_auroc(y, a, k_BN) - _resampled_macro_auroc(y, b, k_BN)
                             for k_BN in _multiplicities(y.shape[0], n_resamples, seed)])
    return _paired_result(delta, deltas, alpha)


def paired_bootstrap_mean_macro_auroc(y_true_NC: np.ndarray, scores_a_KNC: Sequence[np.ndarray],
                                      scores_b_KNC: Sequence[np.ndarray], class_names: Sequence[str],
                                      n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> PairedResult:
    """Paired bootstrap of the difference of *seed-averaged* macro AUROCs: ``a`` and ``b`` are each a list of
    ``K`` score arrays (e.g. one run per seed, matched by seed) on the same records; every resample scores all
    ``2 K`` runs on the same resampled records, and the statistic is ``mean_k AUROC(a_k) - mean_k AUROC(b_k)``.
    With ``K = 1`` this is :func:`paired_bootstrap_macro_auroc` (same resamples, same result)."""
    _check_bootstrap(n_resamples, alpha)
    if not len(scores_a_KNC) or len(scores_a_KNC) != len(scores_b_KNC):
        raise ValueError(f"a and b need the same number (>= 1) of runs, got {len(scores_a_KNC)} and "
                         f"{len(scores_b_KNC)}")
    checked = [_validate(y_true_NC, s, class_names) for s in [*scores_a_KNC, *scores_b_KNC]]
    y, names = checked[0][0], checked[0][2]
    k = len(scores_a_KNC)
    a, b = [c[1] for c in checked[:k]], [c[1] for c in checked[k:]]
    delta = float(np.mean([macro_auroc(y, s, names).macro for s in a]) - np.mean([macro_auroc(y, s, names).macro
                                                                                  for s in b]))
    deltas = np.concatenate([
        np.mean([_resampled_macro_auroc(y, s, k_BN) for s in a], axis=0)
        - np.mean([_resampled_macro_auroc(y, s, k_BN) for s in b], axis=0)
        for k_BN in _multiplicities(y.shape[0], n_resamples, seed)])
    return _paired_result(delta, deltas, alpha)
