"""The frozen attention probe, early stopping, the shared scoring outputs, and the robustness job that
re-scores an evaluation's trained model on corrupted test records (demo store, tiny pretrained encoder)."""
import json

import numpy as np
import pytest
import torch

from ecg_core.config import save_config
from ecg_core.evaluation import load_pretrained_encoder
from ecg_core.scoring import read_predictions
from jobs import finetune, frozen_attention, linear_eval, robustness
from jobs.config import RobustnessConfig, TrackingConfig


def read_json(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_store, pretrained):
    """A linear probe and a frozen attention probe of the same encoder (label fraction 0.5, seed 0)."""
    from jobs.config import EvalConfig

    root = tmp_path_factory.mktemp("protocols")
    common = dict(pretrain_dir=str(pretrained), store=str(demo_store), window=500, test_stride=250, batch_size=128,
                  label_fraction=0.5, linear_epochs=20, attention_steps=6, checkpoint_every=3, attention_heads=2,
                  tracking=TrackingConfig(mode="disabled", group="demo-grid", name="cell-p"))
    for name, protocol, job in (("linear", "linear", linear_eval), ("attention", "frozen_attention", frozen_attention)):
        cfg = EvalConfig(protocol=protocol, **common)
        save_config(cfg, root / name / "config.yaml")   # as the planner writes it (the robustness job reads it)
        job.run(cfg, root / name)
    return root


def test_frozen_attention_trains_only_the_head(runs, pretrained):
    result = read_json(runs / "attention" / "result.json")
    assert result["protocol"] == "frozen_attention" and result["selected_step"] in (3, 6)
    for key in ("macro_auroc", "macro_auprc", "macro_f1"):
        low, high = result[f"{key}_ci"]
        assert low <= result[key] <= high
    best = next((runs / "attention" / finetune.BEST_DIR).iterdir())
    state = torch.load(best, weights_only=True)["model"]
    encoder, _, _, _ = load_pretrained_encoder(pretrained)
    for name, value in encoder.state_dict().items():   # weights and batch-norm statistics untouched
        assert torch.equal(state[f"encoder.{name}"], value), name
    assert any(k.startswith("head.") for k in state)


def test_every_protocol_writes_its_predictions(runs):
    for name in ("linear", "attention"):
        result = read_json(runs / name / "result.json")
        pred = read_predictions(runs / name)
        assert len(pred.test_ids) == result["n_test"] and len(pred.val_ids) == result["n_val"]
        assert set(pred.classes) == set(result["per_class_auroc"]) | set(result["excluded_classes"])
        assert np.all((pred.test_scores >= 0) & (pred.test_scores <= 1))


def test_early_stopping_stops_after_patience_validations_without_improvement(eval_cfg, tmp_path):
    cfg = eval_cfg(protocol="finetune", finetune_steps=12, checkpoint_every=1, early_stopping_patience=1,
                   label_fraction=0.5)
    finetune.run(cfg, tmp_path)
    history = read_json(tmp_path / finetune.VAL_HISTORY)
    evals = {int(k): v for k, v in history["evals"].items()}
    best = history["best_step"]
    after = [s for s in evals if s > best]
    result = read_json(tmp_path / "result.json")
    assert len(after) <= 1 and result["selected_step"] == best
    # it stopped exactly when a validation failed to improve, or ran to the end while improving
    assert result["early_stopped"] == (max(evals) < 12)
    assert result["early_stopped"] == (len(after) == 1)
    if not result["early_stopped"]:
        assert sorted(evals) == list(range(1, 13))


def test_robustness_rescores_the_trained_linear_probe(runs, tmp_path):
    cfg = RobustnessConfig(eval_dir=str(runs / "linear"), corruptions=["lead_dropout", "powerline_50"],
                           severities=[1, 5], batch_size=64, tracking=TrackingConfig(mode="disabled"))
    robustness.run(cfg, tmp_path)
    out = read_json(tmp_path / robustness.ROBUSTNESS_FILE)
    clean = read_json(runs / "linear" / "result.json")["macro_auroc"]
    # severity 0 is the clean test fold through the same saved model: exactly the evaluation's number
    assert out["clean_macro_auroc"] == pytest.approx(clean, abs=1e-12)
    assert set(out["macro_auroc"]) == {"lead_dropout", "powerline_50"}
    assert list(out["macro_auroc"]["lead_dropout"]) == ["0", "1", "5"]
    values = [v for levels in out["macro_auroc"].values() for s, v in levels.items() if s != "0"]
    assert all(0.0 <= v <= 1.0 for v in values) and any(v != pytest.approx(clean) for v in values)
    assert out["corruptions"]["lead_dropout"]["5"]
    # deterministic: the same corrupted records again
    robustness.run(cfg, tmp_path / "again")
    assert read_json(tmp_path / "again" / robustness.ROBUSTNESS_FILE)["macro_auroc"] == out["macro_auroc"]


def test_robustness_of_the_attention_probe_and_errors(runs, tmp_path):
    cfg = RobustnessConfig(eval_dir=str(runs / "attention"), corruptions=["gain_error"], severities=[3],
                           tracking=TrackingConfig(mode="disabled"))
    robustness.run(cfg, tmp_path)
    out = read_json(tmp_path / robustness.ROBUSTNESS_FILE)
    assert out["clean_macro_auroc"] == pytest.approx(read_json(runs / "attention" / "result.json")["macro_auroc"],
                                                     abs=1e-12)
    with pytest.raises(ValueError, match="unknown corruption 'rain'"):
        robustness.run(RobustnessConfig(eval_dir=str(runs / "linear"), corruptions=["rain"]), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="has not finished"):
        robustness.run(RobustnessConfig(eval_dir=str(tmp_path / "nothing")), tmp_path / "y")


def test_linear_head_refuses_a_changed_checkpoint(runs, pretrained, tmp_path):
    head = linear_eval.load_head(runs / "linear", str(pretrained))
    assert head.weight.shape[0] == len(read_predictions(runs / "linear").classes)
    state = torch.load(runs / "linear" / linear_eval.HEAD_FILE, weights_only=True)
    state["checkpoint"] = "another"
    torch.save(state, tmp_path / linear_eval.HEAD_FILE)
    with pytest.raises(RuntimeError, match="another checkpoint"):
        linear_eval.load_head(tmp_path, str(pretrained))
