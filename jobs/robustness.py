"""Corruption robustness of a trained evaluation model (stage ``robustness``).

Chained after an evaluation run (``evaluation.robustness`` in the grid), this job takes the model that
run trained and selected (the linear probe's ``head.pt`` on the frozen pretrained encoder, or the
selected finetuned / attention-probe weights in ``best/``), corrupts every test record with each
corruption of :mod:`ecg_core.corruptions` at each severity (1-5; severity 0 is the clean signal), scores
the corrupted records exactly as the evaluation scored the clean ones (sliding windows of the evaluation's
window and stride, normalisation, mean of the windows' sigmoid outputs) and reports the test macro
AUROC per corruption and severity.

The corruptions' random parts are seeded by ``(seed, record id)`` only, so every method of a grid is
scored on identical corrupted records. Corruptions are defined on microvolts; the store gives millivolts,
converted on the way in and out.

Writes into ``run_dir``: ``robustness.json`` (also in W&B as a table), ``result.json`` is not written (the
aggregate reads ``robustness.json``).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ecg_core.config import from_yaml
from ecg_core.evaluation import (
    RESULT_FILE,
    config_dict,
    default_device,
    embed_records,
    load_pretrained_encoder,
    prepare_data,
    record_scores,
)
from ecg_core.metrics import macro_auroc
from ecg_core.atomic import write_json_atomic
from ecg_core.tracking import Tracker
from jobs.config import EvalConfig, RobustnessConfig

__all__ = ["ROBUSTNESS_FILE", "load_scorer", "run"]

ROBUSTNESS_FILE = "robustness.json"


def eval_config(eval_dir: Path) -> EvalConfig:
    """The config of a finished evaluation run (an error naming the directory if it has not finished)."""
    if not (Path(eval_dir) / RESULT_FILE).is_file():
        raise FileNotFoundError(f"{eval_dir}: no {RESULT_FILE}; the evaluation run has not finished")
    return from_yaml(EvalConfig, Path(eval_dir) / "config.yaml")


def load_scorer(eval_dir: Path, cfg: EvalConfig, n_classes: int) -> nn.Module:
    """The trained model of the finished evaluation run ``eval_dir`` (config ``cfg``, ``n_classes`` outputs),
    mapping windows ``x_BLW`` to logits."""
    eval_dir = Path(eval_dir)
    encoder, _, _, _ = load_pretrained_encoder(cfg.pretrain_dir)
    if cfg.protocol == "linear":
        from jobs.linear_eval import load_head

        return nn.Sequential(encoder, load_head(eval_dir, cfg.pretrain_dir))
    if cfg.protocol in ("finetune", "frozen_attention"):
        from jobs.finetune import Selection, build_model

        model = build_model(cfg, encoder, n_classes)
        Selection(eval_dir).load_best(model)
        return model
    raise ValueError(f"{eval_dir}: protocol {cfg.protocol!r} has no trained model to corrupt")


def _record_seed(seed: int, name: str, record_id: str) -> int:
    digest = hashlib.sha256(f"{seed}\0{name}\0{record_id}".encode()).hexdigest()
    return int(digest[:15], 16)


def run(cfg: RobustnessConfig, run_dir: Path) -> None:
    """Score the evaluation run ``cfg.eval_dir``'s model on corrupted test records into ``run_dir``."""
    from ecg_core.corruptions import CORRUPTIONS, apply

    started = time.time()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    names = list(cfg.corruptions) or list(CORRUPTIONS)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruption {unknown[0]!r}; known: {', '.join(CORRUPTIONS)}")
    bad = [s for s in cfg.severities if not 1 <= int(s) <= 5]
    if bad:
        raise ValueError(f"severities are 1..5, got {bad}")
    eval_cfg = eval_config(Path(cfg.eval_dir))
    data = prepare_data(eval_cfg)
    model = load_scorer(Path(cfg.eval_dir), eval_cfg, len(data.classes))
    fs = float(data.store.fs)
    device = default_device()
    model.to(device)
    y_test = data.targets(data.test_ids)

    def auroc(transform: Any) -> float:
        logits, index = embed_records(model, data.store, data.test_ids, eval_cfg.window, eval_cfg.test_stride,
                                      cfg.batch_size, eval_cfg.normalize, device=device, transform=transform)
        probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        return macro_auroc(y_test, record_scores(probs, index, len(data.test_ids)), data.classes).macro

    def corrupt(name: str, severity: int):
        def transform(x_LT_mV: np.ndarray, record_id: str) -> np.ndarray:
            x_uV = x_LT_mV.astype(np.float32) * np.float32(1000.0)
            out = apply(name, x_uV, severity, fs, seed=_record_seed(cfg.seed, name, record_id))
            return out / np.float32(1000.0)
        return transform

    result: dict[str, Any] = {"eval_dir": str(cfg.eval_dir), "protocol": eval_cfg.protocol, "task": eval_cfg.task,
                              "label_fraction": eval_cfg.label_fraction, "seed": eval_cfg.seed,
                              "corruption_seed": cfg.seed, "n_test": len(data.test_ids)}
    with Tracker(cfg.tracking, run_dir, config=config_dict(cfg), resume_step=0) as tracker:
        clean = auroc(None)
        table: dict[str, dict[str, float]] = {}
        described: dict[str, dict[str, str]] = {}
        for step, name in enumerate(names, start=1):
            table[name] = {"0": clean}
            described[name] = {}
            for severity in sorted(int(s) for s in cfg.severities):
                table[name][str(severity)] = auroc(corrupt(name, severity))
                described[name][str(severity)] = CORRUPTIONS[name].describe(severity)
            tracker.log({f"robustness/{name}/{s}": v for s, v in table[name].items()}, step=step)
        result.update(clean_macro_auroc=clean, macro_auroc=table, corruptions=described,
                      wall_s=round(time.time() - started, 3))
        write_json_atomic(run_dir / ROBUSTNESS_FILE, result)
        worst = {name: min(v.values()) for name, v in table.items()}
        tracker.summary({"clean_macro_auroc": clean, **{f"worst_macro_auroc/{n}": v for n, v in worst.items()}})
