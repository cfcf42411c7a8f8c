"""Test-set scoring that every evaluation protocol shares: the predictions file and the headline metrics.

Shapes: ``R`` records, ``C`` classes of the task.

Every evaluation job (linear probe, frozen attention probe, finetuning) ends with record-level scores of
the validation and the test records (the mean of each record's sliding-window sigmoid outputs). It hands
them to :func:`finish`, which

1. writes ``predictions.npz`` (:func:`write_predictions`): record ids, targets and scores of both parts and
   the class names, so that the aggregate job can compare two methods on the same records (paired
   bootstrap) and nothing has to be recomputed to add a metric later;
2. computes the headline metrics on the test records (:func:`headline_metrics`): macro AUROC (classes
   without a positive or a negative in the test fold are reported and excluded), per-class AUROC, macro
   AUPRC, macro F1 at per-class thresholds chosen on the validation records, and on a PhysioNet/CinC store's
   ``scored`` task the Challenge score (weights from the tables named in the store's provenance);
3. adds a 95 % percentile bootstrap confidence interval over test records (``bootstrap_resamples`` >= 1000
   resamples, seeded) to every headline number.

The result keys are documented in :data:`HEADLINE_KEYS`.
"""
from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecg_core import metrics as M
from ecg_core.atomic import open_atomic
from ecg_core.data.store import EcgStore

__all__ = ["HEADLINE_KEYS", "PREDICTIONS_FILE", "Predictions", "PredictionsError", "challenge_setup",
           "headline_metrics", "read_predictions", "write_predictions"]

PREDICTIONS_FILE = "predictions.npz"
PREDICTIONS_VERSION = 1
HEADLINE_KEYS = ("macro_auroc", "macro_auprc", "macro_f1", "challenge_score")
"""Metrics with a ``<key>_ci`` confidence interval in ``result.json`` (``challenge_score`` only on CinC)."""
NORMAL_SNOMED = "426783006"   # sinus rhythm: the Challenges' "inactive" (normal) class


class PredictionsError(ValueError):
    """A predictions file is missing, damaged or inconsistent (the message names the file)."""


@dataclass
class Predictions:
    """Record-level scores of one evaluation run (validation and test parts)."""

    classes: list[str]
    val_ids: np.ndarray      # (R_val,) str
    y_val: np.ndarray        # (R_val, C) float32 0/1
    val_scores: np.ndarray   # (R_val, C) float64 probabilities
    test_ids: np.ndarray
    y_test: np.ndarray
    test_scores: np.ndarray


def write_predictions(run_dir: str | os.PathLike[str], pred: Predictions) -> Path:
    """``<run_dir>/predictions.npz``, written to a temporary name and renamed (never half-written)."""
    target = Path(run_dir) / PREDICTIONS_FILE
    _check(pred, target)
    with open_atomic(target) as out:
        np.savez(out, version=np.array(PREDICTIONS_VERSION), classes=np.array(pred.classes, dtype=str),
                 val_ids=pred.val_ids.astype(str), y_val=pred.y_val.astype(np.float32),
                 val_scores=pred.val_scores.astype(np.float64), test_ids=pred.test_ids.astype(str),
                 y_test=pred.y_test.astype(np.float32), test_scores=pred.test_scores.astype(np.float64))
    return target


def read_predictions(run_dir: str | os.PathLike[str]) -> Predictions:
    """The predictions of an evaluation run; :class:`PredictionsError` naming the file if unusable."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise PredictionsError(f"{path}: no predictions file (the evaluation did not finish)")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:   # our handle: closed on errors too
            if int(z["version"]) != PREDICTIONS_VERSION:
                raise PredictionsError(f"{path}: predictions format {int(z['version'])}, expected "
                                       f"{PREDICTIONS_VERSION}")
            pred = Predictions(classes=[str(c) for c in z["classes"]], val_ids=z["val_ids"], y_val=z["y_val"],
                               val_scores=z["val_scores"], test_ids=z["test_ids"], y_test=z["y_test"],
                               test_scores=z["test_scores"])
    except PredictionsError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise PredictionsError(f"{path}: damaged predictions file ({type(exc).__name__}: {exc})") from exc
    _check(pred, path)
    return pred


def _check(pred: Predictions, path: Path) -> None:
    c = len(pred.classes)
    for part in ("val", "test"):
        ids, y, s = getattr(pred, f"{part}_ids"), getattr(pred, f"y_{part}"), getattr(pred, f"{part}_scores")
        if y.shape != (len(ids), c) or s.shape != (len(ids), c):
            raise PredictionsError(f"{path}: {part} arrays have shapes {y.shape} and {s.shape}, expected "
                                   f"({len(ids)}, {c})")
        if not np.all(np.isfinite(s)):
            raise PredictionsError(f"{path}: {part} scores hold NaN/inf values")


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChallengeSetup:
    """What the PhysioNet/CinC Challenge score of a task needs: weights in the task's class order."""

    weights_CC: np.ndarray
    normal_index: int
    tables: str


def challenge_setup(store: EcgStore, task: str, classes: Sequence[str]) -> ChallengeSetup | None:
    """The Challenge weights of a CinC store's ``scored`` task (None for any other store or task).

    The tables are the ones the store was ingested with (``attrs["scoring_tables"]``, e.g.
    ``ecg_core/data/tables/cinc2021 (...)``); their classes must be the task's classes.
    """
    tables = str(store.attrs.get("scoring_tables") or "")
    if task != "scored" or not tables:
        return None
    root = Path(__file__).resolve().parent.parent
    tables_dir = root / tables.split(" ")[0]
    names, weights = M.challenge_weights(tables_dir)
    position = {name: i for i, name in enumerate(names)}
    missing = [c for c in classes if c not in position]
    if missing:
        raise ValueError(f"{store.path}: task {task!r} classes {missing[:3]} are not in {tables_dir}/weights.csv")
    order = [position[c] for c in classes]
    if NORMAL_SNOMED not in classes:
        raise ValueError(f"{store.path}: task {task!r} has no normal class {NORMAL_SNOMED} (sinus rhythm)")
    return ChallengeSetup(weights_CC=np.asarray(weights)[np.ix_(order, order)],
                          normal_index=list(classes).index(NORMAL_SNOMED), tables=str(tables_dir))


def headline_metrics(pred: Predictions, *, n_resamples: int = 1000, seed: int = 0,
                     challenge: ChallengeSetup | None = None) -> dict[str, Any]:
    """The test metrics of ``pred`` with 95 % bootstrap intervals (``result.json`` keys).

    Thresholds for F1 and the Challenge score are chosen on the validation records, per class, to maximise
    F1 (:func:`ecg_core.metrics.choose_thresholds`), never on the test records.
    """
    if n_resamples < 1000:
        raise ValueError(f"bootstrap_resamples must be >= 1000 for a 95 % interval, got {n_resamples}")
    names = list(pred.classes)
    y, s = pred.y_test, pred.test_scores
    auroc = M.macro_auroc(y, s, names)
    auprc = M.macro_auprc(y, s, names)
    thresholds = M.choose_thresholds(pred.y_val, pred.val_scores)
    f1 = M.f1_at_thresholds(y, s, thresholds, names)
    out: dict[str, Any] = {
        "macro_auroc": auroc.macro, "per_class_auroc": dict(auroc.per_class), "excluded_classes": list(auroc.excluded),
        "macro_auprc": auprc.macro, "per_class_auprc": dict(auprc.per_class),
        "macro_f1": f1.macro, "per_class_f1": dict(f1.per_class),
        "thresholds": {n: float(t) for n, t in zip(names, thresholds)},
        "bootstrap_resamples": int(n_resamples), "bootstrap_seed": int(seed),
    }
    boot = M.bootstrap_macro_auroc(y, s, names, n_resamples=n_resamples, seed=seed)
    out["macro_auroc_ci"] = [boot.low, boot.high]
    out["bootstrap_valid"] = {"macro_auroc": boot.n_valid}
    for key, b in (("macro_auprc", M.bootstrap_macro_auprc(y, s, names, n_resamples=n_resamples, seed=seed)),
                   ("macro_f1", M.bootstrap_macro_f1(y, s, thresholds, names, n_resamples=n_resamples, seed=seed))):
        out[f"{key}_ci"] = [b.low, b.high]
        out["bootstrap_valid"][key] = b.n_valid
    if challenge is not None:
        predicted = (s >= thresholds[None, :]).astype(np.float64)

        def score(yy: np.ndarray, pp: np.ndarray) -> float:
            return M.challenge_score(yy, pp, challenge.weights_CC, challenge.normal_index)
        out["challenge_score"] = score(y, predicted)
        b = M.bootstrap_ci(score, (y, predicted), n_resamples=n_resamples, seed=seed)
        out["challenge_score_ci"] = [b.low, b.high]
        out["bootstrap_valid"]["challenge_score"] = b.n_valid
        out["challenge_tables"] = challenge.tables
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}
