"""Typed configs of the jobs: what each stage's ``config.yaml`` holds.

The launcher (:mod:`launcher.plan`) builds one of these per job from the grid, validates it strictly at
expansion time and writes it to ``<run_dir>/config.yaml``; the job reads it back with
:func:`ecg_core.config.from_yaml` (``JOB_CONFIGS[kind]``). Nothing else is passed to a job.

Dataset names (``dataset: demo``) are resolved to store paths by the cluster profile's ``data_roots``
before the config is written, so a run directory's config says exactly which store it used.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ecg_core.data.config import DataConfig

__all__ = [
    "JOB_CONFIGS",
    "TRACKING_MODES",
    "AggregateConfig",
    "EncoderConfig",
    "EvalConfig",
    "MethodConfig",
    "OptimConfig",
    "PretrainConfig",
    "RobustnessConfig",
    "TrackingConfig",
]

TRACKING_MODES = ("online", "offline", "disabled")

JOB_ID_ENV = "ECG_SSL_JOB_ID"
"""Set by the runner for the job it runs: the scheduler's job id (jobs never read SLURM's variables)."""


@dataclass
class TrackingConfig:
    """Where a job logs to W&B. ``metrics.jsonl`` in the run directory is always written as well."""

    project: str = "ecg-ssl"
    entity: Optional[str] = None
    mode: str = "offline"          # online | offline | disabled (env WANDB_MODE wins when set)
    group: str = ""                # the grid name (set by the planner)
    name: str = ""                 # the cell id (set by the planner)
    job_type: str = ""             # the stage (set by the planner)
    run_id: str = ""               # deterministic W&B run id (set by the planner; a requeued job resumes it)
    tags: list[str] = field(default_factory=list)


@dataclass
class EncoderConfig:
    """An entry of ``ecg_core.encoders.ENCODERS`` and its keyword arguments."""

    name: str = "xresnet1d50"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodConfig:
    """An entry of ``ecg_core.methods.METHODS`` and its hyper-parameters (validated by the method's
    own ``Config`` dataclass; unknown keys are errors)."""

    name: str = "simclr"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """AdamW with a step-based warm-up + decay schedule (``ecg_core.schedules.lr_at``)."""

    lr: float = 1e-3
    weight_decay: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    schedule: str = "cosine"       # cosine | linear | constant (after warm-up)
    min_lr_ratio: float = 0.0      # final lr = lr * min_lr_ratio
    grad_clip: float = 1.0         # max global grad norm; 0 disables clipping


@dataclass
class PretrainConfig:
    """One self-supervised pretraining run (stage ``pretrain``)."""

    method: MethodConfig = field(default_factory=MethodConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    dataset: str = "demo"          # a name in the profile's data_roots (or a store path)
    pretrain_folds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7, 8])
    data: DataConfig = field(default_factory=DataConfig)   # `stores` is filled by the planner
    steps: int = 1000
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    precision: str = "bf16"        # bf16 autocast on GPU (CPU always runs fp32) | fp32
    deterministic: bool = False    # torch.use_deterministic_algorithms (bit-exact resume tests)
    checkpoint_every: int = 500    # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3
    log_every: int = 10
    # Leakage guard (jobs/pretrain.py): records of the evaluation stores found in the pretraining stores (by
    # source identity or signal fingerprint, ecg_core.data.leakage) are excluded from pretraining with their
    # patients' other records; false keeps them but still reports the overlap (leakage.json, the report).
    leakage_guard: bool = True
    eval_stores: list[str] = field(default_factory=list)   # the grid's evaluation stores (set by the planner)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class EvalConfig:
    """One evaluation run (stages ``linear_eval``, ``frozen_attention`` and ``finetune``) of a pretrained encoder."""

    protocol: str = "linear"       # linear | frozen_attention | finetune
    pretrain_dir: str = "???"      # run directory of the pretraining job (its config and checkpoints)
    dataset: str = "demo"
    store: str = ""                # resolved store path (set by the planner)
    task: str = "labels"           # a task of the store (``store.tasks``)
    label_fraction: float = 1.0    # stratified share of the training fold used for training
    seed: int = 0
    train_folds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7, 8])
    val_folds: list[int] = field(default_factory=lambda: [9])
    test_folds: list[int] = field(default_factory=lambda: [10])
    window: int = 2500             # samples per window (the pretraining window by default)
    test_stride: int = 1250        # sliding-window stride for per-record predictions (planner: window // 2)
    batch_size: int = 64
    normalize: str = "none"
    # linear probe (frozen encoder, embeddings computed once)
    linear_epochs: int = 200
    linear_lr: float = 1e-2
    linear_weight_decay: float = 1e-4
    # finetune (whole network)
    finetune_steps: int = 500
    finetune_lr: float = 1e-3
    encoder_lr_scale: float = 0.1  # encoder lr = finetune_lr * encoder_lr_scale
    finetune_weight_decay: float = 1e-4
    checkpoint_every: int = 200    # finetune / frozen_attention: checkpoint and validate every this many steps
    early_stopping_patience: int = 0   # stop after this many validations without a better val macro AUROC (0: off)
    # frozen attention probe (frozen encoder, attention-pooling head over its time steps / tokens)
    attention_steps: int = 500
    attention_lr: float = 1e-3
    attention_heads: int = 0       # 0: the largest of 8, 4, 2, 1 that divides the encoder's sequence features
    attention_mlp_ratio: float = 2.0   # residual MLP width / features (0: none; ~34 M head parameters at 2048-d)
    # test metrics: 95 % percentile bootstrap over test records
    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 0
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class RobustnessConfig:
    """Corruption robustness of one evaluation run's trained model on the test fold (stage ``robustness``)."""

    eval_dir: str = "???"          # run directory of the evaluation job (its config and trained head/model)
    corruptions: list[str] = field(default_factory=list)   # names in ecg_core.corruptions.CORRUPTIONS; empty: all
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    seed: int = 0                  # of the corruptions' random parts (identical for every method)
    batch_size: int = 64
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class AggregateConfig:
    """The grid's aggregate job: every ``result.json`` under ``grid_dir`` into the report and W&B."""

    grid: str = "???"
    grid_dir: str = "???"          # <runs_root>/<grid>
    expected: list[str] = field(default_factory=list)   # eval run dirs the plan created (missing = failed)
    robustness: list[str] = field(default_factory=list)   # robustness run dirs the plan created
    variants: dict[str, str] = field(default_factory=dict)   # cell id -> its own grid values, for the tables
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


JOB_CONFIGS: dict[str, type] = {
    "pretrain": PretrainConfig,
    "linear_eval": EvalConfig,
    "finetune": EvalConfig,
    "frozen_attention": EvalConfig,
    "robustness": RobustnessConfig,
    "aggregate": AggregateConfig,
}
"""Stage kind -> config dataclass of its ``config.yaml``."""
