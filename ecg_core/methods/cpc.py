"""CPC: predict the encodings of future time steps from the context so far, against negatives.

Oord, Li, Vinyals 2018, "Representation Learning with Contrastive Predictive Coding" (arXiv 1807.03748),
section 2: an encoder ``z_t = g_enc(x_t)``, an autoregressive context ``c_t = g_ar(z_<=t)``, a linear
predictor ``W_k`` per offset ``k`` (eq. 3: ``log f_k(x_{t+k}, c_t) = z_{t+k}^T W_k c_t``) and the InfoNCE
loss of eq. 4 (:func:`ecg_core.losses.cpc.cpc_infonce`), averaged over the offsets. ``g_enc`` + ``g_ar`` are
the encoder :func:`ecg_core.encoders.cpc.cpc_encoder` (``self.encoder``, what evaluation exports,
pooling the context sequence); the predictors belong to the method only.

As applied to 12-lead ECG by Mehari & Strodthoff 2022 (seed 2, seed-methods.md section 2.1;
``tmehari/ecg-selfsupervised`` ``clinical_ts/cpc.py`` ``CPCModel.cpc_loss``, ``main_cpc_lightning.py``
with the README's pretraining flags): a single offset ``k = 12`` with one bias-free ``Linear(512, 512)``
(``prediction_steps=[12]``; Oord et al. use ``k = 1 .. K``, e.g. ``[1, 2, ..., 12]``, one ``W_k`` each),
128 negatives per ``(b, t)`` from the same sequence, plain dot-product scores, batch-mean cross-entropy
summed over ``t``. No data augmentation: CPC's views are past and future of the same window.

Differences from the seed: the negatives of all ``t`` are drawn in one call and scored from one
``[B, T, S]`` product instead of a Python loop over ``t`` (same distribution, see
:mod:`ecg_core.losses.cpc`); the scores and the softmax run in float32 under bf16 autocast (the seed ran
them in fp16).

Shapes: ``B`` batch, ``L`` leads, ``T`` time samples, ``S`` encoder steps, ``F`` encoder features,
``H`` context features.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ecg_core.config import ConfigError
from ecg_core.encoders.cpc import CPCEncoder
from ecg_core.losses.cpc import TIME_REDUCTIONS, cpc_infonce, sample_cpc_negatives
from ecg_core.methods.base import Method

__all__ = ["CPC", "CPCConfig"]

_SOURCE = "method registry"


@dataclass
class CPCConfig:
    """CPC hyper-parameters (``method.params``); defaults are the seed's (see the module docstring)."""

    prediction_steps: list[int] = field(default_factory=lambda: [12])   # offsets k; seed --steps-predicted 12
    num_negatives: int = 128                # per (b, t); seed --n-false-negatives 128
    negatives_from_same_sequence: bool = True   # seed README --negatives-from-same-seq-only; false: whole batch
    time_reduction: str = "sum"             # over t of the batch-mean cross-entropy; seed: loss += per t
    predictor_bias: bool = False            # seed: --bias off ("original CPC: no bias")
    predictor_mlp: bool = False             # seed --mlp: Linear(H, H) -> ReLU -> Linear(H, F) instead of W_k


class CPC(Method):
    """CPC on ECG windows; ``encoder`` must be a ``cpc_encoder`` (it has to give one ``z_t`` per step)."""

    Config = CPCConfig

    def __init__(self, cfg: CPCConfig, encoder: nn.Module, *, window: int, generator_seed: int) -> None:
        super().__init__(cfg, encoder, window=window, generator_seed=generator_seed)
        self.check_config(cfg, window=window)
        if not isinstance(encoder, CPCEncoder):
            raise ConfigError(_SOURCE, "encoder.name", f"cpc needs per-step encodings: use cpc_encoder, "
                                                       f"got a {type(encoder).__name__}")
        self.check_steps(cfg, encoder, window)
        H, Fz = encoder.context_dim, encoder.feature_dim
        self.predictors = nn.ModuleList([self._predictor(H, Fz, cfg) for _ in cfg.prediction_steps])

    @staticmethod
    def _predictor(H: int, Fz: int, cfg: CPCConfig) -> nn.Module:
        if cfg.predictor_mlp:
            return nn.Sequential(nn.Linear(H, H), nn.ReLU(inplace=True), nn.Linear(H, Fz, bias=cfg.predictor_bias))
        return nn.Linear(H, Fz, bias=cfg.predictor_bias)

    @classmethod
    def check_config(cls, cfg: CPCConfig, key_prefix: str = "method.params", window: int | None = None) -> None:
        key = f"{key_prefix}.prediction_steps"
        steps = cfg.prediction_steps
        if not steps:
            raise ConfigError(_SOURCE, key, "needs at least one offset k")
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in steps):
            raise ConfigError(_SOURCE, key, f"offsets must be integers >= 1, got {steps}")
        if len(set(steps)) != len(steps):
            raise ConfigError(_SOURCE, key, f"offsets must be distinct, got {steps}")
        # Without the encoder only the input resolution is known: an encoder step is at least one sample,
        # so k must stay below the window in samples; __init__ checks the encoder's actual step count.
        if window is not None and max(steps) > window - 1:
            raise ConfigError(_SOURCE, key, f"k={max(steps)} steps ahead does not fit in data.window={window} "
                                            f"samples (k <= S - 1, S <= window encoder steps)")
        if cfg.num_negatives < 1:
            raise ConfigError(_SOURCE, f"{key_prefix}.num_negatives", f"must be >= 1, got {cfg.num_negatives}")
        if cfg.time_reduction not in TIME_REDUCTIONS:
            raise ConfigError(_SOURCE, f"{key_prefix}.time_reduction",
                              f"must be one of {', '.join(TIME_REDUCTIONS)}, got {cfg.time_reduction!r}")

    @staticmethod
    def check_steps(cfg: CPCConfig, encoder: CPCEncoder, window: int, key_prefix: str = "method.params") -> None:
        """Every offset needs a target inside the encoded window: ``k <= S - 1`` for ``S`` encoder steps."""
        S = encoder.num_steps(window)
        k = max(cfg.prediction_steps)
        if k > S - 1:
            raise ConfigError(_SOURCE, f"{key_prefix}.prediction_steps",
                              f"k={k} steps ahead needs at least {k + 1} encoder steps, but data.window={window} "
                              f"samples give S={S} (the encoder takes {encoder.downsampling()} samples per step); "
                              f"use k <= {S - 1} or a longer window")

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x_BLT = batch["x"]
        generator = self.step_generator(step, x_BLT.device)
        z_BSF, c_BSH = self.encoder(x_BLT, sequences=True)
        B, S, _ = z_BSF.shape
        preds, negatives = [], []
        for k, predictor in zip(self.cfg.prediction_steps, self.predictors):
            preds.append(predictor(c_BSH[:, :S - k]))       # W_k c_t for every t with a target t + k
            negatives.append(sample_cpc_negatives(B, S, k, self.cfg.num_negatives, generator,
                                                  same_sequence=self.cfg.negatives_from_same_sequence))
        loss, accuracy = cpc_infonce(preds, z_BSF, self.cfg.prediction_steps, negatives,
                                     same_sequence=self.cfg.negatives_from_same_sequence,
                                     time_reduction=self.cfg.time_reduction)
        return {"loss": loss, "accuracy": accuracy}
