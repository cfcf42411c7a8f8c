"""The evaluation protocol that both evaluation jobs (:mod:`jobs.linear_eval`, :mod:`jobs.finetune`) share.

Shapes: ``L`` leads (12), ``T`` samples of a record, ``W`` window length, ``N`` windows, ``R`` records,
``D`` embedding size, ``C`` classes of the task, ``K`` any output size.

The protocol is the PTB-XL benchmark's (Strodthoff et al. 2021, "Deep learning for ECG analysis:
benchmarks and insights from PTB-XL"):

- only records with at least one label of the task take part (the benchmark's ``select_data``);
- training records are a stratified ``label_fraction`` of the training folds (:func:`label_subset`), which
  depends only on the store's record table, the fraction and the seed, so every method of a grid is
  trained and scored on the same records; validation and test folds are used whole;
- a record is scored by sliding windows of the pretraining window length (:func:`sliding_windows`), its
  score being the mean of its windows' sigmoid outputs (:func:`record_scores`);
- the metric is macro AUROC over records (:func:`ecg_core.metrics.macro_auroc`); the epoch or step is
  chosen by validation macro AUROC, and the test figure reported is that of the chosen model.

Each evaluation run writes ``result.json`` (:func:`write_result`, keys :data:`RESULT_KEYS`), which the
aggregate job reads.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn

from ecg_core import distributed as D
from ecg_core.atomic import write_text_atomic
from ecg_core.checkpoint import COMPLETE, CheckpointError, load_encoder, resolve_checkpoint
from ecg_core.config import from_yaml, to_yaml
from ecg_core.data.leakage import check_patient_separation
from ecg_core.data.loader import normalize_windows
from ecg_core.data.store import EcgStore, open_store
from ecg_core.data.stratify import NO_LABEL, cover_and_trim, label_matrix, two_part_split
from ecg_core.encoders import build_encoder
from ecg_core.metrics import AurocResult
from jobs.config import EvalConfig, PretrainConfig

__all__ = [
    "EvalData", "RESULT_KEYS", "better", "checkpoint_fingerprint", "config_dict", "default_device",
    "embed_records", "finish_evaluation", "label_subset", "load_pretrained_encoder", "make_result", "multi_hot",
    "prepare_data", "pretrained_checkpoint", "record_scores", "sliding_windows", "task_classes", "window_starts",
    "write_result",
]

RESULT_KEYS = (
    "grid", "cell_id", "method", "encoder", "protocol", "task", "label_fraction", "seed", "macro_auroc",
    "per_class_auroc", "excluded_classes", "n_train", "n_val", "n_test", "checkpoint_step", "pretrain_run_id",
    "pretrain_dir", "val_macro_auroc", "wall_s",
)
"""Keys every ``result.json`` has (jobs may add more, e.g. the selected epoch or step)."""

RESULT_FILE = "result.json"


# ------------------------------------------------------------------------------------------------
# Labels
# ------------------------------------------------------------------------------------------------

def task_classes(store: EcgStore, task: str) -> list[str]:
    """The class names of ``task`` in ``store`` (ValueError naming the store and its tasks if unknown)."""
    if task not in store.tasks:
        known = ", ".join(sorted(store.tasks)) or "none"
        raise ValueError(f"{store.path}: no task {task!r}; the store's tasks are: {known}")
    return list(store.tasks[task])


def _label_lists(records_df: pd.DataFrame, task: str) -> list[list[Any]]:
    """The labels of each record for ``task`` as Python lists (the store keeps arrays of class names)."""
    column = f"y_{task}"
    if column not in records_df.columns:
        known = sorted(c[2:] for c in records_df.columns if c.startswith("y_"))
        raise ValueError(f"the record table has no label column {column!r}; tasks with labels: {known}")
    out = []
    for value in records_df[column]:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out.append([])
        else:
            out.append(list(np.asarray(value).ravel().tolist()))
    return out


def multi_hot(records_df: pd.DataFrame, task: str, classes: Sequence[str] | int) -> np.ndarray:
    """float32 (R, C) targets of ``task``: 1 where the record has the class.

    ``classes`` is the task's class names (``store.tasks[task]``), labels being names as the store keeps
    them; or a class count, labels then being integer class indices.
    """
    names = None if isinstance(classes, (int, np.integer)) else [str(c) for c in classes]
    n_classes = int(classes) if names is None else len(names)
    index = {c: i for i, c in enumerate(names or [])}
    y_RC = np.zeros((len(records_df), n_classes), dtype=np.float32)
    for r, labels in enumerate(_label_lists(records_df, task)):
        for label in labels:
            if names is None or (isinstance(label, (int, np.integer)) and not isinstance(label, bool)):
                c = int(label)
                if not 0 <= c < n_classes:
                    raise ValueError(f"task {task!r}: class index {c} outside 0..{n_classes - 1}")
            elif str(label) in index:
                c = index[str(label)]
            else:
                raise ValueError(f"task {task!r}: label {label!r} is not one of its classes {names}")
            y_RC[r, c] = 1.0
    return y_RC


def label_subset(records_df: pd.DataFrame, task: str, fraction: float, seed: int) -> np.ndarray:
    """The record ids of a stratified ``fraction`` of ``records_df`` (the training records), sorted.

    Multi-label iterative stratification (Sechidis, Tsoumakas & Vlahavas 2011, "On the stratification of
    multi-label data", Algorithm 1) with two parts, the subset (``round(fraction * R)`` records) and the
    rest: the rarest remaining label is dealt first, each of its records going to the part that still
    wants most of that label (then most records; then a seeded coin). Records without a label form a
    stratum of their own. Afterwards every class that the pool has but the subset lacks gets one record
    (the one covering most missing classes), and records whose classes are all represented more than
    once are returned to the pool, most over-represented first, until the size is reached again (or
    records of the most under-represented classes added, when the greedy dealing fell short); when the
    subset is too small to hold every class it stays larger than asked for.

    Deterministic in ``(fraction, seed)`` and independent of the row order of ``records_df``, so every
    method evaluated with the same arguments trains on the same records. ``fraction`` 1.0 gives all.
    The stratification itself is :mod:`ecg_core.data.stratify` (shared with the ingest's CinC folds).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    ids = records_df["record_id"].astype(str).to_numpy()
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    if len(set(ids)) != len(ids):
        raise ValueError("record ids are not unique")
    n = len(ids)
    target = max(1, int(round(fraction * n))) if n else 0
    if target >= n:
        return ids
    lists = _label_lists(records_df, task)
    strata, y_RS = label_matrix([lists[i] for i in order])
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EC1D5]))
    chosen = two_part_split(y_RS, target, rng)
    real = np.array([s != NO_LABEL for s in strata])
    chosen = cover_and_trim(y_RS, chosen, target, real, fraction, rng)
    return ids[np.sort(np.flatnonzero(chosen))]


# ------------------------------------------------------------------------------------------------
# Splits of one evaluation run
# ------------------------------------------------------------------------------------------------

@dataclass
class EvalData:
    """The store, the task's classes and the record ids of each part of one evaluation run."""

    store: EcgStore
    task: str
    classes: list[str]
    train_ids: np.ndarray    # the label-fraction subset of the training folds
    val_ids: np.ndarray
    test_ids: np.ndarray

    def targets(self, record_ids: Sequence[str]) -> np.ndarray:
        """float32 (R, C) multi-hot targets of ``record_ids``."""
        rows = [self.store.index_of(r) for r in record_ids]
        return multi_hot(self.store.records.iloc[rows], self.task, self.classes)


def prepare_data(cfg: EvalConfig) -> EvalData:
    """Open the store of ``cfg`` and split its labelled records into train subset / validation / test.

    ``cfg.store`` is the store path (set by the planner); without one, ``cfg.dataset`` is tried as a path.
    """
    path = cfg.store or cfg.dataset
    if not cfg.store and not Path(path).is_dir():
        raise ValueError(f"no store path: `store` is empty and dataset {cfg.dataset!r} is not a store directory "
                         "(the planner resolves dataset names through the cluster profile's data_roots)")
    store = open_store(path)
    classes = task_classes(store, cfg.task)
    parts = {"train_folds": set(cfg.train_folds), "val_folds": set(cfg.val_folds), "test_folds": set(cfg.test_folds)}
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if parts[a] & parts[b]:
                raise ValueError(f"{a} and {b} share folds {sorted(parts[a] & parts[b])}: evaluation would "
                                 "score records it trained or selected on")
    check_patient_separation(store, cfg.train_folds, cfg.val_folds, cfg.test_folds)   # LeakageError if not
    rec = store.records
    labelled = np.array([len(labels) > 0 for labels in _label_lists(rec, cfg.task)], dtype=bool)
    split: dict[str, pd.DataFrame] = {}
    for name, folds in parts.items():
        rows = rec[labelled & rec["fold"].isin(folds).to_numpy()]
        if rows.empty:
            raise ValueError(f"{store.path}: no record labelled for task {cfg.task!r} in {name} {sorted(folds)}")
        split[name] = rows
    train_ids = label_subset(split["train_folds"], cfg.task, cfg.label_fraction, cfg.seed)
    return EvalData(store=store, task=cfg.task, classes=classes, train_ids=train_ids,
                    val_ids=np.sort(split["val_folds"]["record_id"].astype(str).to_numpy()),
                    test_ids=np.sort(split["test_folds"]["record_id"].astype(str).to_numpy()))


# ------------------------------------------------------------------------------------------------
# Windows, embeddings, record scores
# ------------------------------------------------------------------------------------------------

def window_starts(length: int, window: int, stride: int) -> np.ndarray:
    """Start samples of the sliding windows of a record of ``length`` samples.

    Every ``stride`` samples, plus one window aligned to the record's end when the stride does not land
    there, so that the end is scored too (and every sample when ``stride <= window``); a record shorter
    than ``window`` gives one window at 0.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got window={window}, stride={stride}")
    if length <= window:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, length - window + 1, stride, dtype=np.int64)
    if starts[-1] != length - window:
        starts = np.append(starts, length - window)
    return starts


def sliding_windows(signal_LT: np.ndarray, window: int, stride: int) -> np.ndarray:
    """float32 (N, L, W) windows of one record (see :func:`window_starts`); a record shorter than
    ``window`` is zero-padded on the right."""
    x_LT = np.asarray(signal_LT, dtype=np.float32)
    if x_LT.ndim != 2:
        raise ValueError(f"signal must be (leads, time), got shape {x_LT.shape}")
    n_leads, length = x_LT.shape
    starts = window_starts(length, window, stride)
    if length < window:
        out = np.zeros((1, n_leads, window), dtype=np.float32)
        out[0, :, :length] = x_LT
        return out
    views_LNW = np.lib.stride_tricks.sliding_window_view(x_LT, window, axis=1)[:, starts]
    return np.ascontiguousarray(views_LNW.transpose(1, 0, 2))


def default_device() -> torch.device:
    """The process group's device when one is up (the runner's), else CUDA when available, else CPU."""
    try:
        return D.info().device
    except RuntimeError:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


RecordTransform = Callable[[np.ndarray, str], np.ndarray]
"""``(x_LT in mV, record_id) -> x_LT``: applied to a whole record before it is cut into windows."""


def _window_batches(store: EcgStore, record_ids: Sequence[str], window: int, stride: int, batch_size: int,
                    transform: RecordTransform | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(x_NLW, record_index_N)`` batches of exactly ``batch_size`` windows (the last may be smaller)."""
    pending: list[np.ndarray] = []
    pending_index: list[np.ndarray] = []
    have = 0
    for r, record_id in enumerate(record_ids):
        x_LT = store.read(str(record_id))
        if transform is not None:
            x_LT = np.asarray(transform(x_LT, str(record_id)), dtype=np.float32)
        x_NLW = sliding_windows(x_LT, window, stride)
        pending.append(x_NLW)
        pending_index.append(np.full(len(x_NLW), r, dtype=np.int64))
        have += len(x_NLW)
        if have >= batch_size:
            x_all, index_all = np.concatenate(pending), np.concatenate(pending_index)
            cut = have - have % batch_size
            for a in range(0, cut, batch_size):
                yield x_all[a:a + batch_size], index_all[a:a + batch_size]
            pending, pending_index, have = [x_all[cut:]], [index_all[cut:]], have - cut
    if have:
        yield np.concatenate(pending), np.concatenate(pending_index)


@torch.no_grad()
def embed_records(encoder: nn.Module, store: EcgStore, record_ids: Sequence[str], window: int, stride: int,
                  batch_size: int, normalize: str = "none", device: torch.device | None = None,
                  transform: RecordTransform | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of ``encoder`` for every sliding window of ``record_ids``: ``(emb_ND float32, record_index_N)``.

    ``record_index_N[i]`` is the position in ``record_ids`` of window ``i``'s record. Runs in eval mode
    without gradients, in batches of ``batch_size`` windows, normalised as in training
    (:func:`ecg_core.data.loader.normalize_windows`); the module's previous train/eval mode is restored.
    Any module mapping ``x_BLW`` to ``(B, K)`` works (an encoder, or encoder + head when finetuning).
    ``transform`` changes each whole record first (the robustness job's corruptions).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = device or _module_device(encoder)
    was_training = encoder.training
    encoder.eval()
    outputs: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    try:
        for x_NLW, index_N in _window_batches(store, record_ids, window, stride, batch_size, transform):
            x = normalize_windows(torch.from_numpy(x_NLW).to(device), normalize)
            outputs.append(encoder(x).float().cpu().numpy())
            indices.append(index_N)
    finally:
        encoder.train(was_training)
    if not outputs:
        raise ValueError("no records to embed")
    return np.concatenate(outputs), np.concatenate(indices)


def record_scores(window_scores_NK: np.ndarray, record_index_N: np.ndarray, n_records: int | None = None) -> np.ndarray:
    """float64 (R, K): the mean of each record's window scores (R = ``n_records`` or max index + 1)."""
    scores = np.asarray(window_scores_NK, dtype=np.float64)
    index = np.asarray(record_index_N, dtype=np.int64)
    if scores.ndim != 2 or index.shape != (len(scores),):
        raise ValueError(f"window scores {scores.shape} and record index {index.shape} do not match")
    n = int(n_records) if n_records is not None else int(index.max()) + 1
    counts = np.bincount(index, minlength=n)
    if len(counts) > n or (counts == 0).any():
        raise ValueError(f"record index must cover each of the {n} records at least once (and no other)")
    sums = np.zeros((n, scores.shape[1]), dtype=np.float64)
    np.add.at(sums, index, scores)
    return sums / counts[:, None]


def better(value: float, best: float | None) -> bool:
    """Model selection: whether a validation score ``value`` beats ``best`` (None: nothing yet).

    Higher wins, the earlier one on ties; a NaN score (no scorable validation class) loses to any
    number, and among NaNs the later wins, so that without a usable validation set the last model is used.
    """
    if best is None:
        return True
    if math.isnan(value):
        return math.isnan(best)
    return math.isnan(best) or value > best


# ------------------------------------------------------------------------------------------------
# The pretrained encoder
# ------------------------------------------------------------------------------------------------

def pretrained_checkpoint(pretrain_dir: str | os.PathLike[str]) -> Path:
    """The newest complete checkpoint of a pretraining run directory (CheckpointError naming the directory)."""
    try:
        return resolve_checkpoint(pretrain_dir)
    except CheckpointError as exc:
        raise CheckpointError(f"pretrain_dir {pretrain_dir} has no usable checkpoint: {exc}") from exc


def checkpoint_fingerprint(checkpoint: Path) -> str:
    """SHA-256 of a checkpoint's ``COMPLETE`` marker (its step, time and metadata hash): which weights these are."""
    return hashlib.sha256((Path(checkpoint) / COMPLETE).read_bytes()).hexdigest()


def load_pretrained_encoder(pretrain_dir: str | os.PathLike[str]) -> tuple[nn.Module, PretrainConfig, int, str]:
    """Rebuild a pretraining run's encoder and load its newest checkpoint's weights (on the CPU).

    Returns ``(encoder, pretrain_cfg, checkpoint_step, pretrain_run_id)``; the run id is the pretraining
    config's ``tracking.run_id``, or the directory's name when that is empty.
    """
    pretrain_dir = Path(pretrain_dir)
    config_path = pretrain_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"pretrain_dir {pretrain_dir}: no config.yaml (not a pretraining run directory?)")
    pretrain_cfg = from_yaml(PretrainConfig, config_path)
    checkpoint = pretrained_checkpoint(pretrain_dir)
    encoder = build_encoder(pretrain_cfg.encoder)
    load_encoder(checkpoint, encoder, prefix="encoder.")
    match = re.fullmatch(r"step_(\d+)", checkpoint.name)
    step = int(match.group(1)) if match else int(json.loads((checkpoint / COMPLETE).read_text())["step"])
    return encoder, pretrain_cfg, step, pretrain_cfg.tracking.run_id or pretrain_dir.name


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------

def config_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain YAML data (what the tracker records)."""
    return yaml.safe_load(to_yaml(cfg))


def make_result(cfg: EvalConfig, *, protocol: str, pretrain_cfg: PretrainConfig, data: EvalData,
                test: AurocResult, val_macro_auroc: float, checkpoint_step: int, pretrain_run_id: str,
                wall_s: float, **extra: Any) -> dict[str, Any]:
    """The ``result.json`` content of an evaluation run (:data:`RESULT_KEYS` plus ``extra``)."""
    return {
        "grid": cfg.tracking.group, "cell_id": cfg.tracking.name, "method": pretrain_cfg.method.name,
        "encoder": pretrain_cfg.encoder.name, "protocol": protocol, "task": cfg.task,
        "label_fraction": float(cfg.label_fraction), "seed": int(cfg.seed), "macro_auroc": test.macro,
        "per_class_auroc": dict(test.per_class), "excluded_classes": list(test.excluded),
        "n_train": len(data.train_ids), "n_val": len(data.val_ids), "n_test": len(data.test_ids),
        "checkpoint_step": int(checkpoint_step), "pretrain_run_id": pretrain_run_id,
        "pretrain_dir": str(cfg.pretrain_dir), "val_macro_auroc": val_macro_auroc, "wall_s": round(float(wall_s), 3),
        **extra,
    }


def finish_evaluation(cfg: EvalConfig, run_dir: str | os.PathLike[str], data: EvalData, val_scores_RC: np.ndarray,
                      test_scores_RC: np.ndarray, tracker: Any, *, pretrain_cfg: PretrainConfig,
                      val_macro_auroc: float, checkpoint_step: int, pretrain_run_id: str, wall_s: float,
                      **extra: Any) -> dict[str, Any]:
    """The end of every evaluation protocol: predictions, headline metrics with bootstrap intervals, result.

    Writes ``predictions.npz`` and ``result.json`` (rank 0) and the tracker's summary; returns the result.
    See :mod:`ecg_core.scoring` for the metrics.
    """
    from ecg_core.scoring import Predictions, challenge_setup, headline_metrics, write_predictions

    pred = Predictions(classes=list(data.classes), val_ids=np.asarray(data.val_ids, dtype=str),
                       y_val=data.targets(data.val_ids), val_scores=np.asarray(val_scores_RC, dtype=np.float64),
                       test_ids=np.asarray(data.test_ids, dtype=str), y_test=data.targets(data.test_ids),
                       test_scores=np.asarray(test_scores_RC, dtype=np.float64))
    metrics = headline_metrics(pred, n_resamples=cfg.bootstrap_resamples, seed=cfg.bootstrap_seed,
                               challenge=challenge_setup(data.store, data.task, data.classes))
    test = AurocResult(macro=metrics["macro_auroc"] if metrics["macro_auroc"] is not None else math.nan,
                       per_class=metrics["per_class_auroc"], excluded=metrics["excluded_classes"])
    others = {k: v for k, v in metrics.items() if k not in ("macro_auroc", "per_class_auroc", "excluded_classes")}
    result = make_result(cfg, protocol=cfg.protocol, pretrain_cfg=pretrain_cfg, data=data, test=test,
                         val_macro_auroc=val_macro_auroc, checkpoint_step=checkpoint_step,
                         pretrain_run_id=pretrain_run_id, wall_s=wall_s, **others, **extra)
    if D.is_main():
        write_predictions(run_dir, pred)
        write_result(run_dir, result)
    headline = {f"test_{k}": metrics.get(k) for k in ("macro_auroc", "macro_auprc", "macro_f1", "challenge_score")
                if metrics.get(k) is not None}
    tracker.summary({**headline, "val_macro_auroc": val_macro_auroc,
                     **{f"test_auroc/{c}": v for c, v in test.per_class.items()},
                     **{k: v for k, v in extra.items() if isinstance(v, (int, float))}})
    return result


def _json_ready(value: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN), NumPy scalars/arrays and paths -> plain values."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return str(value)
    return value


def write_result(run_dir: str | os.PathLike[str], result: dict[str, Any]) -> Path:
    """Write ``result`` to ``<run_dir>/result.json`` atomically (:func:`ecg_core.atomic.write_text_atomic`).

    Every key of :data:`RESULT_KEYS` must be present; NaN values are written as ``null``.
    """
    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:
        raise ValueError(f"result lacks keys {missing}")
    target = Path(run_dir) / RESULT_FILE
    write_text_atomic(target, json.dumps(_json_ready(result), indent=1, allow_nan=False) + "\n")
    return target
