"""Supervised baseline: the encoder and a linear head trained on a store task's multi-hot labels.

Strodthoff, Wagner, Schaeffter & Samek 2021, "Deep Learning for ECG Analysis: Benchmarks and Insights from
PTB-XL" (IEEE JBHI 25(5):1519-1528): xresnet1d50 + linear output layer trained end to end with the binary
cross-entropy of each of the task's C statements (multi-label, one sigmoid per class)::

    loss(window) = -1/C sum_c [ y_c log sigmoid(s_c) + (1 - y_c) log(1 - sigmoid(s_c)) ]      (BCE)

averaged over the labelled windows of the batch. It is the "no pretraining" reference every SSL method is
compared against (Mehari & Strodthoff 2022, seed 2, seed-methods.md 2.6: xresnet1d50 from random init,
finetuned on PTB-XL ``all``), here trained through the same loop and exported through the same checkpoint
path as the SSL methods, so that the linear probe and finetuning of a grid evaluate it like any of them.

Which windows train: the loader draws windows from every record of ``data.stores[i]`` (its ``folds`` and
``records`` filters). This method only gives a window weight 1 when its record is labelled for ``task`` and
belongs to the stratified ``label_fraction`` subset (:func:`ecg_core.evaluation.label_subset`, seed
``label_seed``) of the store's labelled records within those filters; every other window has weight 0 (it
still goes through the encoder, so BatchNorm sees it, but adds nothing to the loss). This keeps the loader,
its sampler state and the pretraining job identical for every method; the cost is compute spent on
unselected windows at small fractions. With the planner's ``folds`` (the grid's ``pretrain_folds``, 1-8 by
default) equal to the evaluation's ``train_folds``, the subset at ``(label_fraction, label_seed)`` is
exactly the set of records the evaluation jobs at that fraction and seed train on. A store without a
``folds`` filter is refused: the encoder would learn the labels of the validation and test folds.

The loss is the weighted mean over this rank's windows (sum of weights clamped to 1, so a batch without a
labelled window gives an exact 0 with zero gradients); FSDP2 then averages gradients over ranks.

Labels live in non-persistent buffers built at construction from the stores' record tables (the loader's
``store``/``record`` give the row), so checkpoints hold only the trained weights.

Shapes: ``B`` local batch, ``L`` leads, ``T`` time, ``D`` representation, ``C`` classes of the task,
``R`` records of all stores (row ``store_offset_S[s] + record``), ``S`` stores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecg_core.config import ConfigError
from ecg_core.methods.base import Method

__all__ = ["Supervised", "SupervisedConfig", "label_tables"]

_SOURCE = "method registry"


@dataclass
class SupervisedConfig:
    """Supervised-baseline hyper-parameters (``method.params``)."""

    task: str = "all"              # a task of the stores (label column y_<task>); PTB-XL benchmark: all (71)
    label_fraction: float = 1.0    # stratified share of the labelled training records that trains
    label_seed: int = 0            # seed of that stratified subset (the evaluation's `seed` picks the same one)


def label_tables(data: Any, cfg: SupervisedConfig, window: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The targets and weights of every record of ``data.stores``: ``(classes, y_RC, w_R, offset_S)``.

    ``y_RC`` float32 multi-hot targets of ``cfg.task`` (zeros for unlabelled records), ``w_R`` float32 1 for
    the records that train (labelled, inside the store's ``folds``/``records`` filters, in the
    ``label_fraction`` subset), 0 otherwise; ``offset_S`` int64 first row of each store.

    Raises:
        ValueError: no data config or stores, a store without ``folds`` or lacking the task, or no training
            record of at least ``window`` samples. The classes are the union of the stores' class names
            for the task (first store's order first).
    """
    from ecg_core.data.store import open_store
    from ecg_core.evaluation import label_subset, multi_hot, task_classes

    if data is None or not data.stores:
        raise ValueError("the supervised method needs the run's data config with at least one store "
                         "(build it with ecg_core.methods.build_method)")
    for i, src in enumerate(data.stores):
        if not src.folds:
            raise ValueError(f"data.stores[{i}] ({src.path}): the supervised method needs the training folds "
                             "(`folds`; the planner sets them from pretrain_folds): without them it would train "
                             "on the labels of the validation and test folds")
    stores = [open_store(src.path) for src in data.stores]
    # One head over the union of the stores' class names, in the first store's order and then the order
    # in which later stores add classes (a store's vocabulary only holds the classes its records carry).
    classes: list[str] = []
    for store in stores:
        classes += [c for c in task_classes(store, cfg.task) if c not in classes]
    ys, ws, offsets, usable = [], [], [0], 0
    for src, store in zip(data.stores, stores):
        rec = store.records
        y_RC = multi_hot(rec, cfg.task, classes)
        pool = y_RC.any(axis=1) & rec["fold"].isin(src.folds).to_numpy()
        if src.records:
            pool &= rec["record_id"].astype(str).isin(set(map(str, src.records))).to_numpy()
        chosen = label_subset(rec[pool], cfg.task, cfg.label_fraction, cfg.label_seed) if pool.any() else []
        w_R = rec["record_id"].astype(str).isin(set(chosen)).to_numpy().astype(np.float32)
        usable += int((w_R[rec["length"].to_numpy() >= window] > 0).sum())
        ys.append(y_RC)
        ws.append(w_R)
        offsets.append(offsets[-1] + len(rec))
    if usable == 0:
        raise ValueError(f"no record labelled for task {cfg.task!r} with at least {window} samples in the "
                         "stores' folds: the supervised loss would always be 0")
    return classes, np.concatenate(ys), np.concatenate(ws), np.asarray(offsets[:-1], dtype=np.int64)


class Supervised(Method):
    """Encoder + linear head trained with BCE on ``cfg.task`` (see the module docstring)."""

    Config = SupervisedConfig

    def __init__(self, cfg: SupervisedConfig, encoder: nn.Module, *, window: int, generator_seed: int,
                 data: Any = None) -> None:
        super().__init__(cfg, encoder, window=window, generator_seed=generator_seed, data=data)
        self.check_config(cfg, window=window)
        classes, y_RC, w_R, offset_S = label_tables(data, cfg, window)
        self.classes = classes
        self.head = nn.Linear(encoder.out_dim, len(classes))
        # Non-persistent: derived from the stores and the config, rebuilt identically on resume; they
        # move with .to(device) and stay out of checkpoints (and out of FSDP2's sharding: buffers).
        self.register_buffer("targets_RC", torch.from_numpy(y_RC), persistent=False)
        self.register_buffer("weight_R", torch.from_numpy(w_R), persistent=False)
        self.register_buffer("store_offset_S", torch.from_numpy(offset_S), persistent=False)

    @classmethod
    def check_config(cls, cfg: SupervisedConfig, key_prefix: str = "method.params", window: int | None = None) -> None:
        if not cfg.task:
            raise ConfigError(_SOURCE, f"{key_prefix}.task", "must name a task of the store (e.g. all, labels)")
        if not 0.0 < cfg.label_fraction <= 1.0:
            raise ConfigError(_SOURCE, f"{key_prefix}.label_fraction", f"must be in (0, 1], got {cfg.label_fraction}")

    def fsdp_blocks(self) -> list[nn.Module]:
        return [*self.encoder.blocks(), self.head]

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        row_B = self.store_offset_S[batch["store"]] + batch["record"]
        y_BC, w_B = self.targets_RC[row_B], self.weight_R[row_B]
        logits_BC = self.head(self.encoder(batch["x"]))
        # BCE in float32 (log-sigmoid of bf16 logits loses the small probabilities of rare classes).
        with torch.autocast(device_type=logits_BC.device.type, enabled=False):
            bce_B = F.binary_cross_entropy_with_logits(logits_BC.float(), y_BC, reduction="none").mean(dim=1)
            loss = (w_B * bce_B).sum() / w_B.sum().clamp_min(1.0)
        return {"loss": loss, "labelled_windows": w_B.mean()}
