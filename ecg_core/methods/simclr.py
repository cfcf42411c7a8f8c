"""SimCLR: two augmented views of each window, pulled together against every other view of the batch.

Chen, Kornblith, Norouzi, Hinton 2020, "A Simple Framework for Contrastive Learning of Visual
Representations" (ICML, arXiv 2002.05709), Algorithm 1: ``x -> (t(x), t'(x)) -> encoder f -> h ->
projection head g -> z``; loss NT-Xent (eq. 1, :func:`ecg_core.losses.nt_xent`) on ``z``, with
negatives from all ranks; evaluation uses ``h`` (``self.encoder``).

As applied to 12-lead ECG by Mehari & Strodthoff 2022 (CBM 141:105114, seed 2, seed-methods.md 2.1):
defaults are that code's: temperature 0.5, projection ``Linear(512, 512) -> ReLU -> Linear(512, 16)``
without BatchNorm, augmentations RandomResizedCrop [0.5, 1] + TimeOut [0.2, 0.4] (the README's
pretraining command, the paper's best pair). Differences: both views go through the encoder in one
batch (BatchNorm statistics over both views, as in the SimCLR reference code; the seed ran the views
separately), and the self-similarity is masked exactly (see :mod:`ecg_core.losses.ntxent`).

Shapes: ``B`` local batch, ``L`` leads, ``T`` time, ``D`` representation, ``P`` projection.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ecg_core.config import ConfigError
from ecg_core.heads import ProjectionHead
from ecg_core.losses import nt_xent
from ecg_core.methods.base import Method, seed_augmentations
from ecg_core.transforms import build_transforms

__all__ = ["SimCLR", "SimCLRConfig"]

_SOURCE = "method registry"


def check_contrastive_params(cfg: Any, key_prefix: str, window: int | None) -> None:
    """Checks shared by SimCLR and patient-contrastive learning: temperature, projection head, augmentations."""
    if not cfg.temperature > 0:
        raise ConfigError(_SOURCE, f"{key_prefix}.temperature", f"must be > 0, got {cfg.temperature}")
    for name in ("projection_hidden_dim", "projection_dim", "projection_layers"):
        if getattr(cfg, name) < 1:
            raise ConfigError(_SOURCE, f"{key_prefix}.{name}", f"must be >= 1, got {getattr(cfg, name)}")
    build_transforms(cfg.augmentations, f"{key_prefix}.augmentations", window=window, source=_SOURCE)


@dataclass
class SimCLRConfig:
    """SimCLR hyper-parameters (``method.params``); defaults from seed 2 (see the module docstring)."""

    temperature: float = 0.5               # tau of eq. 1; seed bolts_config.yaml loss.temperature
    projection_hidden_dim: int = 512       # seed Projection(hidden_dim=512)
    projection_dim: int = 16               # seed bolts_config.yaml model.out_dim
    projection_layers: int = 2             # linear layers of the head
    projection_batch_norm: bool = False    # seed: no BatchNorm in the head
    augmentations: list[dict[str, Any]] = field(default_factory=seed_augmentations)  # each view, in order


class SimCLR(Method):
    """SimCLR on ECG windows; ``encoder`` is any :data:`ecg_core.encoders.ENCODERS` entry."""

    Config = SimCLRConfig

    def __init__(self, cfg: SimCLRConfig, encoder: torch.nn.Module, *, window: int, generator_seed: int) -> None:
        super().__init__(cfg, encoder, window=window, generator_seed=generator_seed)
        self.check_config(cfg, window=window)
        self.augment = build_transforms(cfg.augmentations, "method.params.augmentations", window=window)
        self.projector = ProjectionHead(encoder.out_dim, cfg.projection_hidden_dim, cfg.projection_dim,
                                        num_layers=cfg.projection_layers, batch_norm=cfg.projection_batch_norm)

    @classmethod
    def check_config(cls, cfg: SimCLRConfig, key_prefix: str = "method.params", window: int | None = None) -> None:
        check_contrastive_params(cfg, key_prefix, window)

    def fsdp_blocks(self) -> list[torch.nn.Module]:
        return [*self.encoder.blocks(), self.projector]

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x_BLT = batch["x"]
        B = x_BLT.shape[0]
        views_2BLT = self.augmented_views(x_BLT, self.step_generator(step, x_BLT.device))
        h_2BD = self.encoder(views_2BLT)
        z_2BP = self.projector(h_2BD)
        z1_BP, z2_BP = z_2BP[:B], z_2BP[B:]
        loss = nt_xent(z1_BP, z2_BP, self.cfg.temperature)
        with torch.no_grad():   # logged only: 1 for identical views, what the loss pushes towards
            positive_similarity = F.cosine_similarity(z1_BP.float(), z2_BP.float(), dim=1).mean()
        return {"loss": loss, "positive_similarity": positive_similarity}
