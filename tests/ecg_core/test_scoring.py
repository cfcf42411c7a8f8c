"""The scoring every evaluation protocol shares: predictions file, headline metrics, bootstrap intervals,
the Challenge score on a store ingested from real CinC 2021 records."""
from pathlib import Path

import numpy as np
import pytest

from ecg_core import metrics as M
from ecg_core.data.ingest import ingest
from ecg_core.data.store import open_store
from ecg_core.scoring import (
    PREDICTIONS_FILE,
    Predictions,
    PredictionsError,
    challenge_setup,
    headline_metrics,
    read_predictions,
    write_predictions,
)

CLASSES = ["A", "B", "C", "D"]


def fake_predictions(n_val=120, n_test=200, seed=0, classes=CLASSES, signal=1.2) -> Predictions:
    """Informative but imperfect scores (probabilities) of a multi-label task."""
    rng = np.random.default_rng(seed)

    def part(n):
        y = (rng.random((n, len(classes))) < 0.3).astype(np.float32)
        logits = rng.normal(size=y.shape) + signal * (2 * y - 1)
        return y, 1 / (1 + np.exp(-logits))

    y_val, s_val = part(n_val)
    y_test, s_test = part(n_test)
    return Predictions(classes=list(classes), val_ids=np.array([f"v{i:04d}" for i in range(n_val)]), y_val=y_val,
                       val_scores=s_val, test_ids=np.array([f"t{i:04d}" for i in range(n_test)]), y_test=y_test,
                       test_scores=s_test)


def test_predictions_round_trip_and_damage_is_detected(tmp_path):
    pred = fake_predictions()
    path = write_predictions(tmp_path, pred)
    assert path == tmp_path / PREDICTIONS_FILE and not list(tmp_path.glob(".*tmp"))
    back = read_predictions(tmp_path)
    assert back.classes == CLASSES and list(back.test_ids) == list(pred.test_ids)
    np.testing.assert_array_equal(back.test_scores, pred.test_scores)
    np.testing.assert_array_equal(back.y_val, pred.y_val)

    path.write_bytes(path.read_bytes()[:200])   # a truncated file
    with pytest.raises(PredictionsError, match=f"{path}: damaged"):
        read_predictions(tmp_path)
    with pytest.raises(PredictionsError, match="no predictions file"):
        read_predictions(tmp_path / "elsewhere")
    bad = fake_predictions()
    bad.test_scores = bad.test_scores[:, :2]
    with pytest.raises(PredictionsError, match="test arrays have shapes"):
        write_predictions(tmp_path, bad)
    bad = fake_predictions()
    bad.val_scores[0, 0] = np.nan
    with pytest.raises(PredictionsError, match="NaN"):
        write_predictions(tmp_path, bad)


def test_headline_metrics_match_the_metric_functions_and_carry_intervals():
    pred = fake_predictions()
    out = headline_metrics(pred, n_resamples=1000, seed=3)
    auroc = M.macro_auroc(pred.y_test, pred.test_scores, CLASSES)
    assert out["macro_auroc"] == pytest.approx(auroc.macro) and out["per_class_auroc"] == auroc.per_class
    assert out["macro_auprc"] == pytest.approx(M.macro_auprc(pred.y_test, pred.test_scores, CLASSES).macro)
    thresholds = M.choose_thresholds(pred.y_val, pred.val_scores)   # chosen on validation, never on test
    f1 = M.f1_at_thresholds(pred.y_test, pred.test_scores, thresholds, CLASSES)
    assert out["macro_f1"] == pytest.approx(f1.macro)
    for key in ("macro_auroc", "macro_auprc", "macro_f1"):
        low, high = out[f"{key}_ci"]
        assert low < out[key] < high and high - low < 0.2, (key, out[key], low, high)
        assert out["bootstrap_valid"][key] == 1000
    assert "challenge_score" not in out
    assert headline_metrics(pred, n_resamples=1000, seed=3) == out   # seeded
    assert headline_metrics(pred, n_resamples=1000, seed=4)["macro_auroc_ci"] != out["macro_auroc_ci"]
    with pytest.raises(ValueError, match=">= 1000"):
        headline_metrics(pred, n_resamples=200)


def test_a_class_without_test_positives_is_reported_and_excluded():
    pred = fake_predictions()
    pred.y_test[:, 2] = 0
    out = headline_metrics(pred, n_resamples=1000)
    assert out["excluded_classes"] == ["C"] and "C" not in out["per_class_auroc"]
    assert out["macro_auroc"] == pytest.approx(np.mean(list(out["per_class_auroc"].values())))


@pytest.fixture(scope="module")
def cinc_store(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("cinc") / "cinc2021.zarr"
    ingest("cinc2021", data_dir / "challenge-real" / "cinc2021", out)
    return out


def test_challenge_score_on_a_cinc_store(cinc_store):
    store = open_store(cinc_store)
    classes = store.tasks["scored"]
    setup = challenge_setup(store, "scored", classes)
    assert setup is not None and setup.weights_CC.shape == (len(classes), len(classes))
    assert classes[setup.normal_index] == M.CINC_NORMAL_CODE
    assert np.allclose(np.diag(setup.weights_CC), 1.0)   # a correct class scores fully
    assert challenge_setup(store, "labels", classes) is None   # only the Challenge's scored task

    pred = fake_predictions(classes=classes, n_val=150, n_test=300, signal=2.0)
    out = headline_metrics(pred, n_resamples=1000, challenge=setup)
    predicted = pred.test_scores >= M.choose_thresholds(pred.y_val, pred.val_scores)[None, :]
    assert out["challenge_score"] == pytest.approx(
        M.challenge_score(pred.y_test, predicted.astype(float), setup.weights_CC, setup.normal_index))
    low, high = out["challenge_score_ci"]
    assert low <= out["challenge_score"] <= high and 0 < out["challenge_score"] < 1
    perfect = fake_predictions(classes=classes, n_val=150, n_test=300, signal=50.0)
    assert headline_metrics(perfect, n_resamples=1000, challenge=setup)["challenge_score"] == pytest.approx(1.0)
