"""Finetuning of a pretrained encoder (stage ``finetune``): encoder + linear head trained end to end.

The same loop trains the frozen attention probe (stage ``frozen_attention``, :mod:`jobs.frozen_attention`):
there only an attention-pooling head over the frozen encoder's time steps / tokens is trained.

The protocol is :mod:`ecg_core.evaluation`'s. The network is the pretrained encoder followed by
``nn.Linear(out_dim, C)``, trained with BCE on random windows (:class:`ecg_core.data.loader.WindowLoader`)
of the label-fraction subset of the training folds, each window labelled with its record's classes.
AdamW with discriminative learning rates: the encoder's is ``finetune_lr * encoder_lr_scale``, the
head's ``finetune_lr`` (param-group ``lr_scale``), cosine decay over ``finetune_steps``.

Training runs through :func:`ecg_core.train_loop.train` in segments of ``checkpoint_every`` steps: each
segment ends with a checkpoint, after which the validation records are scored (mean of their sliding
windows' sigmoid outputs, stride ``test_stride``) and the weights are kept in ``best/`` when their
validation macro AUROC is the best so far. The validation of a step is recorded only after its checkpoint
exists, so a preempted or killed job that is run again resumes from the newest checkpoint, skips the
steps already validated, and ends with the same selection as an uninterrupted run. With
``early_stopping_patience`` > 0 training stops once that many validations in a row found no better
model (early stopping on validation macro AUROC). Finally the selected weights score the validation and
test records and :func:`ecg_core.evaluation.finish_evaluation` writes the predictions and metrics.

Writes into ``run_dir``: ``checkpoints/``, ``val_history.json`` (validation macro AUROC per evaluated step
and the selected step), ``best/step_XXXXXXX.pt`` (the selected weights), ``metrics.jsonl`` (and W&B),
``predictions.npz``, ``result.json``.

One process: it runs under the runner's process group (world size 1) or, called directly, in a 1-rank
group of its own for the duration of the call.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecg_core import distributed as D
from ecg_core.checkpoint import CheckpointError, resolve_checkpoint, step_dir_name
from ecg_core.config import to_yaml
from ecg_core.data.loader import DataConfig, StoreSource, WindowLoader
from ecg_core.encoders import encoder_sequence, sequence_dim
from ecg_core.evaluation import (
    EvalData,
    better,
    config_dict,
    embed_records,
    finish_evaluation,
    load_pretrained_encoder,
    prepare_data,
    record_scores,
)
from ecg_core.heads import AttentionPoolHead
from ecg_core.metrics import AurocResult, macro_auroc
from ecg_core.schedules import lr_at
from ecg_core.atomic import open_atomic, write_json_atomic
from ecg_core.tracking import Tracker
from ecg_core.train_loop import train
from jobs.config import EvalConfig

__all__ = ["BEST_DIR", "VAL_HISTORY", "AttentionProbe", "FinetuneModel", "Selection", "build_model", "evaluation_steps",
           "run"]

VAL_HISTORY = "val_history.json"
BEST_DIR = "best"
GRAD_CLIP = 1.0          # max global gradient norm (as in pretraining's default)
KEEP_CHECKPOINTS = 2     # the newest, and one to fall back to if it is damaged


class FinetuneModel(nn.Module):
    """The pretrained ``encoder`` (x_BLW -> z_BD) followed by a linear classification head (-> logits_BC)."""

    def __init__(self, encoder: nn.Module, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(int(encoder.out_dim), n_classes)

    def forward(self, x_BLW: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x_BLW))


class AttentionProbe(nn.Module):
    """A frozen ``encoder``'s sequence (x_BLW -> h_BSD, :func:`ecg_core.encoders.encoder_sequence`) pooled by a
    trained :class:`ecg_core.heads.AttentionPoolHead` (-> logits_BC). The encoder stays in eval mode (its
    batch-norm statistics and dropout are those of the pretrained model) and gets no gradient."""

    def __init__(self, encoder: nn.Module, n_classes: int, num_heads: int | None, mlp_ratio: float = 2.0):
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        self.head = AttentionPoolHead(sequence_dim(encoder), n_classes, num_heads=num_heads, mlp_ratio=mlp_ratio)

    def train(self, mode: bool = True) -> AttentionProbe:
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, x_BLW: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h_BSD = encoder_sequence(self.encoder, x_BLW)
        return self.head(h_BSD)


def build_model(cfg: EvalConfig, encoder: nn.Module, n_classes: int) -> nn.Module:
    """The trained network of ``cfg.protocol`` (``finetune`` or ``frozen_attention``) on ``encoder``."""
    if cfg.protocol == "frozen_attention":
        return AttentionProbe(encoder, n_classes, cfg.attention_heads or None, cfg.attention_mlp_ratio)
    if cfg.protocol == "finetune":
        return FinetuneModel(encoder, n_classes)
    raise ValueError(f"protocol {cfg.protocol!r} is not trained by this loop (finetune, frozen_attention)")


def _schedule(cfg: EvalConfig) -> tuple[int, float]:
    """(steps, base learning rate) of ``cfg.protocol``."""
    if cfg.protocol == "frozen_attention":
        return cfg.attention_steps, cfg.attention_lr
    return cfg.finetune_steps, cfg.finetune_lr


def evaluation_steps(total_steps: int, every: int) -> list[int]:
    """The steps after which the model is validated: every ``every`` steps and at the end."""
    if total_steps < 1 or every < 1:
        raise ValueError(f"finetune_steps and checkpoint_every must be >= 1, got {total_steps} and {every}")
    return sorted(set(range(every, total_steps, every)) | {total_steps})


class Selection:
    """Validation history and the best weights so far, kept in the run directory.

    Order of writes for one evaluated step: the weights (when best) into ``best/``, then
    ``val_history.json`` naming them, then stale weight files are removed; a kill at any point leaves a
    history that names an existing file.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / VAL_HISTORY
        self.best_dir = run_dir / BEST_DIR
        self.evals: dict[int, float] = {}
        self.best_step: int | None = None
        if self.path.is_file():
            try:
                state = json.loads(self.path.read_text(encoding="utf-8"))
                self.evals = {int(k): (math.nan if v is None else float(v)) for k, v in state["evals"].items()}
                self.best_step = None if state["best_step"] is None else int(state["best_step"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                warnings.warn(f"{self.path} is damaged ({type(exc).__name__}: {exc}); validation starts afresh "
                              "(steps whose weights are gone cannot be validated again)", RuntimeWarning, stacklevel=2)
                self.evals, self.best_step = {}, None

    @property
    def best_auroc(self) -> float | None:
        return None if self.best_step is None else self.evals[self.best_step]

    def weights_path(self, step: int) -> Path:
        return self.best_dir / f"{step_dir_name(step)}.pt"

    def record(self, step: int, auroc: float, model: nn.Module) -> bool:
        """Record the validation score of ``step``; keep the weights if they are the best. Returns whether."""
        is_best = better(auroc, self.best_auroc)
        if is_best:
            with open_atomic(self.weights_path(step)) as out:
                torch.save({"step": step, "val_macro_auroc": auroc,
                            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, out)
            self.best_step = step
        self.evals[step] = auroc
        write_json_atomic(self.path, {
            "evals": {str(k): (v if math.isfinite(v) else None) for k, v in sorted(self.evals.items())},
            "best_step": self.best_step,
        })
        keep = self.weights_path(self.best_step).name if self.best_step is not None else None
        for stale in self.best_dir.glob("*.pt"):
            if stale.name != keep:
                stale.unlink(missing_ok=True)
        return is_best

    def load_best(self, model: nn.Module) -> int:
        """Load the selected weights into ``model``; returns their step."""
        if self.best_step is None:
            raise RuntimeError(f"{self.path}: no validated step to select (was the run interrupted?)")
        path = self.weights_path(self.best_step)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if int(state["step"]) != self.best_step:
            raise RuntimeError(f"{path} holds step {state['step']}, {self.path} selects {self.best_step}")
        model.load_state_dict(state["model"])
        return self.best_step


def _record_probs(model: nn.Module, data: EvalData, record_ids: np.ndarray, cfg: EvalConfig,
                  device: torch.device) -> np.ndarray:
    """(R, C) mean sigmoid output of each record's sliding windows."""
    logits, index = embed_records(model, data.store, record_ids, cfg.window, cfg.test_stride, cfg.batch_size,
                                  cfg.normalize, device=device)
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return record_scores(probs, index, len(record_ids))


def _score(model: nn.Module, data: EvalData, record_ids: np.ndarray, cfg: EvalConfig,
           device: torch.device) -> AurocResult:
    """Macro AUROC of ``model`` over ``record_ids`` (mean sigmoid output of each record's sliding windows)."""
    return macro_auroc(data.targets(record_ids), _record_probs(model, data, record_ids, cfg, device), data.classes)


def _stale(selection: Selection, patience: int) -> bool:
    """Early stopping: the last ``patience`` validations found nothing better than the selected step."""
    if patience <= 0 or selection.best_step is None:
        return False
    return sum(1 for step in selection.evals if step > selection.best_step) >= patience


def _loader(cfg: EvalConfig, data: EvalData, info: D.DistInfo) -> WindowLoader:
    """Random training windows of the label subset (at least one batch per epoch however small it is)."""
    rec = data.store.records
    lengths = rec["length"].to_numpy()[[data.store.index_of(r) for r in data.train_ids]]
    windows = int(lengths[lengths >= cfg.window].sum()) // cfg.window
    source = StoreSource(path=str(data.store.path), folds=list(cfg.train_folds), records=list(map(str, data.train_ids)))
    data_cfg = DataConfig(stores=[source], window=cfg.window, batch_size=cfg.batch_size, normalize=cfg.normalize,
                          windows_per_epoch=0 if windows >= cfg.batch_size else cfg.batch_size, seed=cfg.seed)
    return WindowLoader(data_cfg, rank=info.rank, world_size=info.world_size, stores=[data.store])


def _resume_step(run_dir: Path) -> int:
    """The step of the run's newest complete checkpoint (0 without one)."""
    try:
        return int(resolve_checkpoint(run_dir).name.split("_")[1])
    except CheckpointError:
        return 0


def _finetune(cfg: EvalConfig, run_dir: Path, info: D.DistInfo) -> None:
    started = time.time()
    total_steps, base_lr = _schedule(cfg)
    steps = evaluation_steps(total_steps, cfg.checkpoint_every)
    if info.world_size != 1:
        raise RuntimeError(f"{cfg.protocol} runs in one process; this group has {info.world_size} ranks")
    data = prepare_data(cfg)
    encoder, pretrain_cfg, checkpoint_step, pretrain_run_id = load_pretrained_encoder(cfg.pretrain_dir)
    D.seed_everything(cfg.seed)   # the head's initial weights
    model = build_model(cfg, encoder, len(data.classes)).to(info.device)
    groups = [{"params": list(model.head.parameters()), "lr_scale": 1.0}]
    if cfg.protocol == "finetune":   # discriminative learning rates: the encoder's is scaled down
        groups.insert(0, {"params": list(model.encoder.parameters()), "lr_scale": cfg.encoder_lr_scale})
    optimizer = torch.optim.AdamW(groups, lr=base_lr, weight_decay=cfg.finetune_weight_decay)
    loader = _loader(cfg, data, info)
    y_all = torch.from_numpy(data.targets(data.store.records["record_id"].astype(str).tolist())).to(info.device)

    def step_fn(batch: dict[str, torch.Tensor], _step: int) -> dict[str, torch.Tensor]:
        return {"loss": F.binary_cross_entropy_with_logits(model(batch["x"]).float(), y_all[batch["record"]])}

    lr_fn = partial(lr_at, base_lr=base_lr, warmup_steps=0, total_steps=total_steps)
    selection = Selection(run_dir)
    with Tracker(cfg.tracking, run_dir, config=config_dict(cfg), enabled=info.is_main,
                 resume_step=_resume_step(run_dir)) as tracker:
        for target in steps:
            if target in selection.evals:
                continue
            if _stale(selection, cfg.early_stopping_patience):
                tracker.log({"early_stopped": 1}, step=max(selection.evals))
                break
            reached = train(model, optimizer, loader, step_fn, run_dir=run_dir, total_steps=target, lr_fn=lr_fn,
                            grad_clip=GRAD_CLIP, checkpoint_every=cfg.checkpoint_every,
                            keep_checkpoints=KEEP_CHECKPOINTS, config_yaml=to_yaml(cfg), tracker=tracker,
                            desc=f"{cfg.protocol} {pretrain_cfg.method.name}").step
            if reached != target:   # the run's checkpoints are ahead of its validation history (history lost)
                warnings.warn(f"{run_dir}: resumed at step {reached}, past step {target}, which was never "
                              "validated; it is left out of the selection", RuntimeWarning, stacklevel=2)
                continue
            val = _score(model, data, data.val_ids, cfg, info.device)
            is_best = selection.record(target, val.macro, model)
            tracker.log({"val_macro_auroc": val.macro, "val_is_best": int(is_best)}, step=target)
        best_step = selection.load_best(model)
        val_probs = _record_probs(model, data, data.val_ids, cfg, info.device)
        test_probs = _record_probs(model, data, data.test_ids, cfg, info.device)
        finish_evaluation(cfg, run_dir, data, val_probs, test_probs, tracker, pretrain_cfg=pretrain_cfg,
                          val_macro_auroc=selection.evals[best_step], checkpoint_step=checkpoint_step,
                          pretrain_run_id=pretrain_run_id, wall_s=time.time() - started, selected_step=best_step,
                          early_stopped=max(selection.evals) < total_steps)


def run(cfg: EvalConfig, run_dir: Path) -> None:
    """Finetune ``cfg.pretrain_dir``'s encoder with a linear head (or, with ``cfg.protocol`` ``frozen_attention``,
    train an attention probe on the frozen encoder); writes ``<run_dir>/result.json``.

    Raises :class:`ecg_core.preemption.Preempted` after checkpointing when a stop was requested; run it
    again (same ``run_dir``) to continue.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        info, own_group = D.info(), False
    except RuntimeError:   # called outside the runner (a notebook, a test): a 1-rank group for this call
        info, own_group = D.init_distributed(), True
    try:
        _finetune(cfg, run_dir, info)
    finally:
        if own_group:
            D.teardown()
