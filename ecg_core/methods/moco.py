"""MoCo v3: queries of one view contrasted with momentum-encoder keys of the other view, batch-wide.

Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers" (ICCV, arXiv
2104.02057), section 3 and Algorithm 1: the query network (encoder -> projector -> predictor) maps each
view to ``q``; the momentum network (EMA copy of encoder + projector, no predictor) maps each view to a
key ``k`` without gradient; loss ``ctr(q1, k2) + ctr(q2, k1)`` with ``ctr(q, k) = 2 tau * CE(q k^T / tau,
positives)`` on L2-normalised vectors, the keys of every rank as candidates (no queue, unlike v1/v2;
:func:`ecg_core.losses.info_nce`); momentum ``m`` from 0.99 to 1 along a cosine (``--moco-m-cos``,
:mod:`ecg_core.ema`). Evaluation uses the query encoder (``self.encoder``).

Defaults are the ResNet recipe of the reference code (facebookresearch/moco-v3 ``main_moco.py`` and
``moco/builder.py``), since this project's encoders are ResNets: temperature 1.0 (``--moco-t``; the ViT
recipes use 0.2), projector ``Linear -> BN -> ReLU -> Linear -> BN(affine=False)`` 4096 hidden, 256
out (``_build_mlp(2, ...)``; the ViT recipe uses 3 layers: ``projection_layers``), predictor the same
2-layer MLP, all Linear layers without bias (each is followed by batch norm), base momentum 0.99.
Augmentations: those of this project's seed-2 recipes (RandomResizedCrop [0.5, 1] + TimeOut [0.2, 0.4]).
Seed 2's own ``custom_moco_bolts.py`` is MoCo v2 (queue of 65536 keys, no predictor, fixed momentum
0.999), not ported.

Differences from the reference: the momentum update happens after optimizer step ``k`` with ``m_k``
(the reference updates before computing the keys of step ``k + 1`` with ``m_{k+1}``); both views go
through each network in one batch (batch-norm statistics over both views; the reference runs each view
separately, per GPU).

Built on :class:`ecg_core.methods.byol.BYOL`, which has the same online/target structure; only the heads
and the loss differ.

Shapes: ``B`` local batch, ``P`` projection, ``H`` hidden, ``I`` input features.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ecg_core.config import ConfigError
from ecg_core.losses import info_nce
from ecg_core.methods.base import seed_augmentations
from ecg_core.methods.byol import BYOL, _check_common

__all__ = ["MoCoV3", "MoCoV3Config", "moco_mlp"]

_SOURCE = "method registry"


@dataclass
class MoCoV3Config:
    """MoCo v3 hyper-parameters (``method.params``); defaults from the reference ResNet recipe."""

    temperature: float = 1.0            # main_moco.py --moco-t (ResNet); ViT recipes 0.2
    projection_hidden_dim: int = 4096   # --moco-mlp-dim
    projection_dim: int = 256           # --moco-dim
    projection_layers: int = 2          # builder.py: 2 for ResNet, 3 for ViT
    predictor_hidden_dim: int = 4096    # --moco-mlp-dim (2-layer predictor)
    base_momentum: float = 0.99         # --moco-m
    final_momentum: float = 1.0         # --moco-m-cos: cosine ramp to 1
    total_steps: int = 0                # length of the momentum schedule; 0: the pretraining run's `steps`
    augmentations: list[dict[str, Any]] = field(default_factory=seed_augmentations)  # each view, in order


def moco_mlp(num_layers: int, in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MoCo v3's MLP (``builder.py _build_mlp``): ``[Linear -> BN -> ReLU] * (num_layers - 1) -> Linear ->
    BN(affine=False)``, Linear layers without bias (batch norm follows each), ``x_BI -> y_BP``."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers += [nn.Linear(dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False)]
    return nn.Sequential(*layers)


class MoCoV3(BYOL):
    """MoCo v3 on ECG windows; ``encoder`` is any :data:`ecg_core.encoders.ENCODERS` entry."""

    Config = MoCoV3Config

    @classmethod
    def check_config(cls, cfg: MoCoV3Config, key_prefix: str = "method.params",
                     window: int | None = None) -> None:
        if not cfg.temperature > 0:
            raise ConfigError(_SOURCE, f"{key_prefix}.temperature", f"must be > 0, got {cfg.temperature}")
        _check_common(cfg, key_prefix, window,
                      ("projection_hidden_dim", "projection_dim", "projection_layers", "predictor_hidden_dim"))

    def build_heads(self, cfg: MoCoV3Config, in_dim: int) -> tuple[nn.Module, nn.Module]:
        projector = moco_mlp(cfg.projection_layers, in_dim, cfg.projection_hidden_dim, cfg.projection_dim)
        predictor = moco_mlp(2, cfg.projection_dim, cfg.predictor_hidden_dim, cfg.projection_dim)
        return projector, predictor

    def loss(self, p1_BP: torch.Tensor, p2_BP: torch.Tensor, z1_BP: torch.Tensor,
             z2_BP: torch.Tensor) -> torch.Tensor:
        """``ctr(q1, k2) + ctr(q2, k1)``, ``ctr = 2 tau * InfoNCE`` (Algorithm 1)."""
        tau = self.cfg.temperature
        return 2.0 * tau * (info_nce(p1_BP, z2_BP, tau) + info_nce(p2_BP, z1_BP, tau))
