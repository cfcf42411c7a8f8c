"""Linear probe job end to end on the demo store: result.json, selection, embeddings cache."""
import dataclasses
import json
import math

import numpy as np
import pytest

from ecg_core.evaluation import RESULT_KEYS
from ecg_core.tracking import read_metrics
from jobs import linear_eval

from .conftest import PRETRAIN_RUN_ID, PRETRAIN_STEP

RHYTHM = ("AFIB", "SBRAD", "STACH")   # the demo's rate/regularity classes


def read_result(run_dir):
    return json.loads((run_dir / "result.json").read_text())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, demo_store, pretrained):
    """One complete linear evaluation (reused by the tests that only read what it wrote)."""
    from jobs.config import EvalConfig, TrackingConfig

    run_dir = tmp_path_factory.mktemp("linear") / "run"
    cfg = EvalConfig(pretrain_dir=str(pretrained), store=str(demo_store), window=500, test_stride=250, batch_size=256,
                     linear_epochs=30, tracking=TrackingConfig(mode="disabled", group="demo-grid", name="cell-a"))
    linear_eval.run(cfg, run_dir)
    return cfg, run_dir


def test_result_fields_and_the_probe_beats_chance(first_run, pretrained):
    cfg, run_dir = first_run
    result = read_result(run_dir)
    assert set(RESULT_KEYS) <= set(result)
    assert result["grid"] == "demo-grid" and result["cell_id"] == "cell-a"
    assert result["protocol"] == "linear" and result["task"] == "labels"
    assert result["method"] == "simclr" and result["encoder"] == "xresnet1d50"
    assert result["checkpoint_step"] == PRETRAIN_STEP and result["pretrain_run_id"] == PRETRAIN_RUN_ID
    assert result["pretrain_dir"] == str(pretrained)
    assert (result["n_train"], result["n_val"], result["n_test"]) == (250, 34, 32)   # folds 1-8, 9, 10
    assert result["label_fraction"] == 1.0 and result["seed"] == 0 and result["wall_s"] > 0
    assert result["excluded_classes"] == []
    per_class = result["per_class_auroc"]
    assert sorted(per_class) == ["AFIB", "LBBB", "LVH", "MI", "NORM", "RBBB", "SBRAD", "STACH"]
    assert all(0.0 <= v <= 1.0 for v in per_class.values())
    assert result["macro_auroc"] == pytest.approx(np.mean(list(per_class.values())))
    assert 0.7 < result["macro_auroc"] <= 1.0
    assert np.mean([per_class[c] for c in RHYTHM]) > 0.6
    # The selected epoch is the one with the best validation AUROC, as logged.
    lines = read_metrics(run_dir)
    assert [r["step"] for r in lines] == list(range(1, cfg.linear_epochs + 1))
    val = [r["val_macro_auroc"] for r in lines]
    assert result["selected_epoch"] == 1 + int(np.argmax(val))
    assert result["val_macro_auroc"] == pytest.approx(max(val))


def test_embeddings_are_cached_and_reused(first_run):
    cfg, run_dir = first_run
    cache = run_dir / linear_eval.CACHE_FILE
    before = cache.stat().st_mtime_ns
    reference = read_result(run_dir)
    linear_eval.run(cfg, run_dir)
    again = read_result(run_dir)
    assert cache.stat().st_mtime_ns == before and again["embeddings_cached"] is True
    assert again["macro_auroc"] == reference["macro_auroc"]
    assert again["selected_epoch"] == reference["selected_epoch"]
    assert len(read_metrics(run_dir)) == cfg.linear_epochs   # the rerun replaced the earlier epochs' lines


def test_damaged_or_foreign_cache_is_recomputed(first_run, tmp_path):
    cfg, run_dir = first_run
    reference = read_result(run_dir)
    work = tmp_path / "run"
    work.mkdir()
    data = (run_dir / linear_eval.CACHE_FILE).read_bytes()
    (work / linear_eval.CACHE_FILE).write_bytes(data[: len(data) // 2])   # a truncated file
    with pytest.warns(RuntimeWarning, match="is damaged"):
        linear_eval.run(cfg, work)
    result = read_result(work)
    assert result["embeddings_cached"] is False and result["macro_auroc"] == pytest.approx(reference["macro_auroc"])
    with np.load(work / linear_eval.CACHE_FILE) as npz:   # rewritten whole
        assert json.loads(str(npz["key"]))["window"] == 500
    linear_eval.run(dataclasses.replace(cfg, normalize="per_lead", linear_epochs=2), work)   # another setting
    assert read_result(work)["embeddings_cached"] is False
    with np.load(work / linear_eval.CACHE_FILE) as npz:
        assert json.loads(str(npz["key"]))["normalize"] == "per_lead"


def test_small_label_fraction(eval_cfg, tmp_path):
    linear_eval.run(eval_cfg(label_fraction=0.05, seed=1, linear_epochs=5), tmp_path)
    result = read_result(tmp_path)
    assert result["n_train"] == round(0.05 * 250) and result["label_fraction"] == 0.05 and result["seed"] == 1
    assert math.isfinite(result["macro_auroc"]) and 0.0 <= result["macro_auroc"] <= 1.0


def test_clear_errors(eval_cfg, tmp_path, demo_store):
    with pytest.raises(ValueError, match=rf"{demo_store}: no task 'rhythm'; the store's tasks are: labels"):
        linear_eval.run(eval_cfg(task="rhythm"), tmp_path)
    with pytest.raises(FileNotFoundError, match=f"pretrain_dir {tmp_path}: no config.yaml"):
        linear_eval.run(eval_cfg(pretrain_dir=str(tmp_path)), tmp_path / "run")
    assert not (tmp_path / "run" / "result.json").exists()
