"""Finetuning job end to end on the demo store: result.json, validation-based selection, preemption and resume."""
import json

import pytest
import torch

from ecg_core import preemption
from ecg_core.checkpoint import step_dir_name
from ecg_core.evaluation import RESULT_KEYS
from ecg_core.preemption import Preempted
from jobs import finetune

from .conftest import PRETRAIN_RUN_ID, PRETRAIN_STEP


def read_json(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, demo_store, pretrained):
    """6 steps validated after steps 2, 4 and 6, without interruption."""
    from jobs.config import EvalConfig, TrackingConfig

    run_dir = tmp_path_factory.mktemp("finetune") / "run"
    cfg = EvalConfig(protocol="finetune", pretrain_dir=str(pretrained), store=str(demo_store), window=500,
                     test_stride=250, batch_size=128, finetune_steps=6, checkpoint_every=2, label_fraction=0.5,
                     tracking=TrackingConfig(mode="disabled", group="demo-grid", name="cell-f"))
    finetune.run(cfg, run_dir)
    return cfg, run_dir


def test_result_and_selection(straight_run):
    cfg, run_dir = straight_run
    result = read_json(run_dir / "result.json")
    assert set(RESULT_KEYS) <= set(result)
    assert result["protocol"] == "finetune" and result["grid"] == "demo-grid" and result["cell_id"] == "cell-f"
    assert result["checkpoint_step"] == PRETRAIN_STEP and result["pretrain_run_id"] == PRETRAIN_RUN_ID
    assert result["n_train"] == 125 and result["n_val"] == 34 and result["n_test"] == 32
    assert 0.0 <= result["macro_auroc"] <= 1.0
    assert all(0.0 <= v <= 1.0 for v in result["per_class_auroc"].values())
    history = read_json(run_dir / finetune.VAL_HISTORY)
    evals = {int(k): v for k, v in history["evals"].items()}
    assert sorted(evals) == [2, 4, 6]
    best = max(evals, key=lambda s: (evals[s], -s))   # highest, earliest on ties
    assert history["best_step"] == best == result["selected_step"]
    assert result["val_macro_auroc"] == pytest.approx(evals[best])
    kept = list((run_dir / finetune.BEST_DIR).iterdir())
    assert [p.name for p in kept] == [f"{step_dir_name(best)}.pt"]
    state = torch.load(kept[0], weights_only=True)
    assert state["step"] == best and any(k.startswith("encoder.") for k in state["model"])
    assert (run_dir / "checkpoints" / step_dir_name(6)).is_dir()


def test_preempted_run_resumes_from_its_checkpoint(straight_run, tmp_path, monkeypatch):
    cfg, straight_dir = straight_run
    run_dir = tmp_path / "run"
    record = finetune.Selection.record

    def record_then_preempt(self, step, auroc, model):
        is_best = record(self, step, auroc, model)
        if step == 2:
            preemption.request_stop()   # as the runner's signal handler would, during the next segment
        return is_best

    monkeypatch.setattr(finetune.Selection, "record", record_then_preempt)
    try:
        with pytest.raises(Preempted):
            finetune.run(cfg, run_dir)
    finally:
        preemption.clear()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [step_dir_name(2)]
    assert list(read_json(run_dir / finetune.VAL_HISTORY)["evals"]) == ["2"]
    assert not (run_dir / "result.json").exists()

    calls = []
    train = finetune.train

    def spy(*args, **kwargs):
        out = train(*args, **kwargs)
        calls.append((kwargs["total_steps"], out.resumed_from))
        return out

    monkeypatch.setattr(finetune, "train", spy)
    finetune.run(cfg, run_dir)
    assert calls == [(4, 2), (6, 4)]   # continued from step 2, not from 0
    resumed, straight = read_json(run_dir / "result.json"), read_json(straight_dir / "result.json")
    assert read_json(run_dir / finetune.VAL_HISTORY) == read_json(straight_dir / finetune.VAL_HISTORY)
    for key in ("macro_auroc", "per_class_auroc", "val_macro_auroc", "selected_step", "n_train"):
        assert resumed[key] == straight[key], key

    calls.clear()   # a finished run that is started again only re-scores the selected model
    finetune.run(cfg, run_dir)
    assert calls == [] and read_json(run_dir / "result.json")["macro_auroc"] == straight["macro_auroc"]


def test_evaluation_steps():
    assert finetune.evaluation_steps(6, 2) == [2, 4, 6]
    assert finetune.evaluation_steps(5, 2) == [2, 4, 5]
    assert finetune.evaluation_steps(3, 10) == [3]
    with pytest.raises(ValueError, match="finetune_steps and checkpoint_every must be >= 1"):
        finetune.evaluation_steps(0, 2)
