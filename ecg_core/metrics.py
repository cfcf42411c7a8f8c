"""Evaluation metrics: macro AUROC over the classes of a multi-label task (the PTB-XL benchmark metric).

Shapes: ``N`` records (or windows), ``C`` classes.

A class without a positive (or without a negative) in ``y_true`` has no defined ROC curve. With small
label fractions or rare classes this happens on real splits, so such a class is left out of the macro
mean and reported in ``excluded`` instead of crashing the job or silently scoring it 0.5.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = ["AurocResult", "macro_auroc"]


@dataclass(frozen=True)
class AurocResult:
    """Macro AUROC and its parts.

    ``macro`` is the unweighted mean of ``per_class`` (NaN when every class is excluded);
    ``per_class`` maps each scored class name to its AUROC; ``excluded`` lists, in class order, the
    classes without both positives and negatives in ``y_true``.
    """

    macro: float
    per_class: dict[str, float] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)


def _as_2d(name: str, array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (records, classes), got shape {a.shape}")
    return a


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
    y = _as_2d("y_true_NC", y_true_NC)
    s = _as_2d("scores_NC", scores_NC)
    names = [str(c) for c in class_names]
    if y.shape != s.shape:
        raise ValueError(f"y_true_NC {y.shape} and scores_NC {s.shape} differ in shape")
    if y.shape[1] != len(names):
        raise ValueError(f"{y.shape[1]} classes in the arrays but {len(names)} class names")
    if len(set(names)) != len(names):
        raise ValueError(f"class names are not unique: {names}")
    if y.shape[0] == 0:
        raise ValueError("no records to score")
    y_float = y.astype(np.float64)
    if not np.all((y_float == 0) | (y_float == 1)):
        bad = np.unique(y_float[(y_float != 0) & (y_float != 1)])[:5]
        raise ValueError(f"y_true_NC must hold only 0/1 labels, found {bad.tolist()}")
    s_float = s.astype(np.float64)
    non_finite = ~np.isfinite(s_float)
    if non_finite.any():
        rows = np.unique(np.nonzero(non_finite)[0])
        raise ValueError(f"scores_NC holds {int(non_finite.sum())} NaN/inf values (in records {rows[:5].tolist()}"
                         f"{'...' if rows.size > 5 else ''})")
    per_class: dict[str, float] = {}
    excluded: list[str] = []
    positives = y_float.sum(axis=0)
    for c, name in enumerate(names):
        if positives[c] == 0 or positives[c] == y.shape[0]:
            excluded.append(name)
            continue
        per_class[name] = float(roc_auc_score(y_float[:, c], s_float[:, c]))
    macro = float(np.mean(list(per_class.values()))) if per_class else math.nan
    return AurocResult(macro=macro, per_class=per_class, excluded=excluded)
