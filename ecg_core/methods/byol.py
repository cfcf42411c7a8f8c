"""BYOL: an online network predicts a slowly moving target network's projection of another view.

Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning" (NeurIPS,
arXiv 2006.07733), section 3.1 and Algorithm 1: two views ``v, v'`` of each window; the online network
(encoder ``f_theta`` -> projector ``g_theta`` -> predictor ``q_theta``) predicts the target network's
(``f_xi`` -> ``g_xi``, no predictor) projection of the other view; loss eq. 2, ``2 - 2 cos(q, sg(z'))``,
symmetrised over the views (``L + L~``, :func:`ecg_core.losses.normalized_mse`); the target follows the
online weights by EMA, ``xi <- tau xi + (1 - tau) theta``, with ``tau`` from 0.996 to 1 along a cosine
over the run (section 3.2, :mod:`ecg_core.ema`). Evaluation uses ``f_theta`` (``self.encoder``).

As applied to 12-lead ECG by Mehari & Strodthoff 2022 (seed 2, ``custom_byol_bolts.py``,
seed-methods.md 2.1): projector and predictor are ``Linear(no bias) -> BatchNorm -> ReLU -> Linear`` with
512 hidden units and 16 outputs (``bolts_config.yaml`` ``model.out_dim``), tau_base 0.996, augmentations
RandomResizedCrop [0.5, 1] + TimeOut [0.2, 0.4] (the README's pretraining command). Differences from the
seed, which follow the paper's intent:

- the seed's EMA updates only parameters whose name contains ``weight`` (target biases stay at their
  initial values); here every parameter is averaged (BYOL section 3.1 updates all of ``xi``);
- the seed's target is a copy of the whole online arm, predictor included (unused); here it is encoder
  + projector only;
- the seed computes ``tau`` for the next step after the update; here the update after step ``k`` uses
  ``tau_k`` (BYOL section 3.2);
- the seed's loss is ``-2 cos`` per direction (no constant); here ``2 - 2 cos`` (eq. 2), same gradient;
- both views go through each network in one batch (batch-norm statistics over both views, as in this
  project's SimCLR); the seed ran them separately.

The target weights are parameters with ``requires_grad=False`` of submodules ``target_encoder`` and
``target_projector``: part of the module state (and of every checkpoint), skipped by the optimizer
(no gradients), sharded by FSDP2 exactly like their online twins.

Shapes: ``B`` local batch, ``L`` leads, ``T`` time, ``D`` representation, ``P`` projection.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecg_core.config import ConfigError
from ecg_core.ema import ema_update, make_target, momentum_at
from ecg_core.heads import ProjectionHead
from ecg_core.losses import normalized_mse
from ecg_core.methods.base import Method, seed_augmentations
from ecg_core.transforms import build_transforms

__all__ = ["BYOL", "BYOLConfig"]

_SOURCE = "method registry"


@dataclass
class BYOLConfig:
    """BYOL hyper-parameters (``method.params``); defaults from seed 2 and the paper (module docstring)."""

    projection_hidden_dim: int = 512    # seed SiameseArm hidden_size=512
    projection_dim: int = 16            # seed bolts_config.yaml model.out_dim
    predictor_hidden_dim: int = 512     # seed MLP(out_dim, 512, out_dim)
    base_momentum: float = 0.996        # tau_base: paper section 3.2, seed initial_tau
    final_momentum: float = 1.0         # paper: tau -> 1 at the end of training
    total_steps: int = 0                # length of the momentum schedule; 0: the pretraining run's `steps`
    augmentations: list[dict[str, Any]] = field(default_factory=seed_augmentations)  # each view, in order


def _check_common(cfg: Any, key_prefix: str, window: int | None, dims: tuple[str, ...]) -> None:
    """Checks shared by BYOL and MoCo v3 (dimensions, momenta, schedule length, augmentations)."""
    for name in dims:
        if getattr(cfg, name) < 1:
            raise ConfigError(_SOURCE, f"{key_prefix}.{name}", f"must be >= 1, got {getattr(cfg, name)}")
    for name in ("base_momentum", "final_momentum"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ConfigError(_SOURCE, f"{key_prefix}.{name}", f"must be in [0, 1], got {getattr(cfg, name)}")
    if cfg.total_steps < 0:
        raise ConfigError(_SOURCE, f"{key_prefix}.total_steps",
                          f"must be >= 0 (0: the pretraining run's steps), got {cfg.total_steps}")
    build_transforms(cfg.augmentations, f"{key_prefix}.augmentations", window=window, source=_SOURCE)


class BYOL(Method):
    """BYOL on ECG windows; ``encoder`` is any :data:`ecg_core.encoders.ENCODERS` entry.

    Also the frame of :class:`ecg_core.methods.moco.MoCoV3`, which differs only in its heads
    (:meth:`build_heads`) and its loss (:meth:`loss`).

    Args (beyond :class:`Method`'s):
        total_steps: the pretraining run's step count (``build_method`` passes ``steps``); the momentum
            schedule's length unless ``cfg.total_steps`` > 0.
    """

    Config = BYOLConfig

    def __init__(self, cfg: Any, encoder: nn.Module, *, window: int, generator_seed: int,
                 total_steps: int | None = None) -> None:
        super().__init__(cfg, encoder, window=window, generator_seed=generator_seed)
        self.check_config(cfg, window=window)
        self.total_steps = int(cfg.total_steps) if cfg.total_steps > 0 else int(total_steps or 0)
        if self.total_steps < 1:
            raise ValueError(f"{type(self).__name__} needs the run's step count for its momentum schedule: "
                             "pass total_steps (build_method does) or set method.params.total_steps")
        self.augment = build_transforms(cfg.augmentations, "method.params.augmentations", window=window)
        self.projector, self.predictor = self.build_heads(cfg, encoder.out_dim)
        # Targets start as copies of the online networks (BYOL section 3.1, MoCo v3 Algorithm 1).
        self.target_encoder = make_target(self.encoder)
        self.target_projector = make_target(self.projector)

    @classmethod
    def check_config(cls, cfg: BYOLConfig, key_prefix: str = "method.params", window: int | None = None) -> None:
        _check_common(cfg, key_prefix, window, ("projection_hidden_dim", "projection_dim", "predictor_hidden_dim"))

    def build_heads(self, cfg: BYOLConfig, in_dim: int) -> tuple[nn.Module, nn.Module]:
        """Projector ``g`` and predictor ``q``: seed 2's MLP (Linear -> BN -> ReLU -> Linear), as in BYOL 3.3."""
        projector = ProjectionHead(in_dim, cfg.projection_hidden_dim, cfg.projection_dim, num_layers=2,
                                   batch_norm=True)
        predictor = ProjectionHead(cfg.projection_dim, cfg.predictor_hidden_dim, cfg.projection_dim,
                                   num_layers=2, batch_norm=True)
        return projector, predictor

    def loss(self, p1_BP: torch.Tensor, p2_BP: torch.Tensor, z1_BP: torch.Tensor,
             z2_BP: torch.Tensor) -> torch.Tensor:
        """Symmetrised eq. 2: each view's prediction against the target projection of the other view."""
        return normalized_mse(p1_BP, z2_BP) + normalized_mse(p2_BP, z1_BP)

    def fsdp_blocks(self) -> list[nn.Module]:
        # Target blocks mirror the online ones so that both are sharded alike (equal local shapes for the
        # shard-local EMA update).
        return [*self.encoder.blocks(), self.projector, self.predictor,
                *self.target_encoder.blocks(), self.target_projector]

    def momentum(self, step: int) -> float:
        """EMA momentum applied after optimizer step ``step`` (pure function of the step)."""
        return momentum_at(step, self.total_steps, self.cfg.base_momentum, self.cfg.final_momentum)

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x_BLT = batch["x"]
        B = x_BLT.shape[0]
        views_2BLT = self.augmented_views(x_BLT, self.step_generator(step, x_BLT.device))
        p_2BP = self.predictor(self.projector(self.encoder(views_2BLT)))
        with torch.no_grad():   # stop-gradient: the target learns only through the EMA
            z_2BP = self.target_projector(self.target_encoder(views_2BLT))
        loss = self.loss(p_2BP[:B], p_2BP[B:], z_2BP[:B], z_2BP[B:])
        with torch.no_grad():   # logged only: what the loss pushes towards 1
            similarity = 0.5 * (F.cosine_similarity(p_2BP[:B].float(), z_2BP[B:].float(), dim=1).mean()
                                + F.cosine_similarity(p_2BP[B:].float(), z_2BP[:B].float(), dim=1).mean())
        return {"loss": loss, "prediction_similarity": similarity,
                "momentum": torch.tensor(self.momentum(step), device=x_BLT.device)}

    def after_optimizer_step(self, step: int) -> None:
        momentum = self.momentum(step)
        ema_update(self.target_encoder, self.encoder, momentum)
        ema_update(self.target_projector, self.projector, momentum)
