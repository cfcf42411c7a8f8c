"""Patient-contrastive learning: positives are other ECG windows of the same patient.

Three modes (``method.params.mode``), one network (encoder ``f`` -> projection head ``g``), all taking the
paired batches of :class:`ecg_core.data.loader.WindowLoader` (windows ``2i`` and ``2i + 1`` are a positive
pair; ``patient`` int64 names each window's patient):

- ``pclr`` -- PCLR, Diamant, Reinertsen, Song, Aguirre, Stultz, Batra 2022, "Patient contrastive learning:
  A performant, expressive, and practical approach to electrocardiogram modeling" (PLoS Comput Biol
  18(2):e1009862, arXiv 2104.04569): the pair is two *different recordings* of one patient
  (``data.pairing: patient``), and the loss is SimCLR's NT-Xent over the pairs with every other view of
  the batch as a negative (the seed's ``simclr_loss``, seed-methods.md 3.1; :func:`ecg_core.losses.nt_xent`,
  which averages the two directions where the seed sums them: a constant factor 2). As in the seed, a
  further window of the same patient elsewhere in the batch counts as a negative.
- ``supcon`` -- the same pairs, but every view of the same patient in the (global) batch is a positive:
  SupCon ``L_out`` (Khosla et al. 2020, eq. 2, :func:`ecg_core.losses.supcon.supcon_loss`) with the
  patient as label. Anchors whose patient has no other view in the batch cannot occur with paired
  batches (each window's partner shares its patient); the loss would exclude them from its mean.
- ``cmsc`` -- CLOCS "contrastive multi-segment coding", Kiyasseh, Zhu, Clifton 2021 (ICML, arXiv
  2005.13249): the pair is two *adjacent non-overlapping segments* of one recording
  (``data.pairing: adjacent``), similarities only across the two segment views, and every cross-view
  pair of the same patient is a positive (:func:`ecg_core.losses.supcon.clocs_loss`; differences from
  the seed's averaging are documented there).

Design: pairs come from the loader's plan (``DataConfig.pairing``), not from splitting one long window in
the method (what seed 4 and ssldml do for CMSC): the plan is a pure function of (seed, epoch, rank), so
resume stays exact, the encoder trains on windows of ``data.window`` samples in every mode (the length the
evaluation jobs read), and the batch layout is the same for the three modes. ``data.window`` is the
*segment* length: a ``cmsc`` pair spans ``2 * data.window`` samples of one recording. ``data.batch_size``
counts windows (``batch_size / 2`` pairs), i.e. views through the encoder, not pairs.
:attr:`PatientContrastiveConfig.data_pairing` names the pairing each mode needs; the recipe sets
``data.pairing`` to it, and the method refuses a data config (when ``build_method`` passes one) or a
batch that does not match.

Augmentations (``augmentations``, applied independently to every window, from the step's generator):
none by default -- PCLR publishes none (seed-methods.md 3.1) and CLOCS's CMSC uses none; the positive
pair itself is the "view".

Shapes: ``B`` local batch (windows), ``N = B / 2`` pairs, ``L`` leads, ``T`` time, ``D`` representation,
``P`` projection.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ecg_core.config import ConfigError
from ecg_core.heads import ProjectionHead
from ecg_core.losses import nt_xent
from ecg_core.losses.supcon import clocs_loss, supcon_loss
from ecg_core.methods.base import Method
from ecg_core.methods.simclr import check_contrastive_params
from ecg_core.transforms import build_transforms

__all__ = ["MODE_PAIRING", "PatientContrastive", "PatientContrastiveConfig"]

_SOURCE = "method registry"

MODE_PAIRING = {"pclr": "patient", "supcon": "patient", "cmsc": "adjacent"}
"""Mode -> the ``data.pairing`` its batches need (see :mod:`ecg_core.data.loader`)."""


@dataclass
class PatientContrastiveConfig:
    """Hyper-parameters (``method.params``); defaults from PCLR (seed 3, see the module docstring)."""

    mode: str = "pclr"                     # pclr | supcon | cmsc
    temperature: float = 0.1               # PCLR simclr_loss temperature; CLOCS hard-codes 0.1 too
    projection_hidden_dim: int = 320       # PCLR: Dense(320, relu) after the 320-d "embed"
    projection_dim: int = 320              # PCLR: Dense(320) "projection"
    projection_layers: int = 2             # PCLR: two Dense layers
    projection_batch_norm: bool = False    # PCLR: no BatchNorm in the head
    augmentations: list[dict[str, Any]] = field(default_factory=list)   # each window, in order; none in PCLR

    @property
    def data_pairing(self) -> str:
        """The ``data.pairing`` this mode's batches need."""
        return MODE_PAIRING.get(self.mode, "?")


class PatientContrastive(Method):
    """PCLR / SupCon-by-patient / CLOCS-CMSC on paired ECG windows; ``encoder`` is any ENCODERS entry."""

    Config = PatientContrastiveConfig

    def __init__(self, cfg: PatientContrastiveConfig, encoder: torch.nn.Module, *, window: int,
                 generator_seed: int, data: Any = None) -> None:
        super().__init__(cfg, encoder, window=window, generator_seed=generator_seed, data=data)
        self.check_config(cfg, window=window)
        pairing = getattr(data, "pairing", None)
        if data is not None and pairing != cfg.data_pairing:
            raise ConfigError(_SOURCE, "data.pairing", f"method.params.mode {cfg.mode!r} needs data.pairing: "
                              f"{cfg.data_pairing}, got {pairing!r}")
        if data is not None and data.batch_size % 2:
            raise ConfigError(_SOURCE, "data.batch_size", f"must be even (pairs of windows), got {data.batch_size}")
        self.augment = build_transforms(cfg.augmentations, "method.params.augmentations", window=window)
        self.projector = ProjectionHead(encoder.out_dim, cfg.projection_hidden_dim, cfg.projection_dim,
                                        num_layers=cfg.projection_layers, batch_norm=cfg.projection_batch_norm)

    @classmethod
    def check_config(cls, cfg: PatientContrastiveConfig, key_prefix: str = "method.params",
                     window: int | None = None) -> None:
        if cfg.mode not in MODE_PAIRING:
            raise ConfigError(_SOURCE, f"{key_prefix}.mode", f"must be one of {', '.join(MODE_PAIRING)}, "
                              f"got {cfg.mode!r}")
        check_contrastive_params(cfg, key_prefix, window)

    def fsdp_blocks(self) -> list[torch.nn.Module]:
        return [*self.encoder.blocks(), self.projector]

    def _check_pairs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's patient codes, after checking that it is laid out as ``cfg.data_pairing`` pairs."""
        need = self.cfg.data_pairing
        B = batch["x"].shape[0]
        if "patient" not in batch or B % 2:
            raise ValueError(f"patient_contrastive (mode {self.cfg.mode}) needs paired batches with a 'patient' "
                             f"entry: set data.pairing: {need} (got keys {sorted(batch)}, batch of {B})")
        patient_B = batch["patient"]
        if not torch.equal(patient_B[0::2], patient_B[1::2]):
            raise ValueError(f"windows 2i and 2i+1 of the batch are not of one patient: data.pairing must be {need}")
        if need == "adjacent" and not (torch.equal(batch["record"][0::2], batch["record"][1::2])
                                       and torch.equal(batch["start"][1::2], batch["start"][0::2] + self.window)):
            raise ValueError("cmsc needs adjacent windows of one record: data.pairing must be adjacent")
        return patient_B

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        patient_B = self._check_pairs(batch)
        x_BLT = batch["x"]
        if self.cfg.augmentations:
            x_BLT = self.augmented_views(x_BLT, self.step_generator(step, x_BLT.device), 1)
        # One encoder pass over both members of every pair: BatchNorm statistics over the whole batch.
        z_BP = self.projector(self.encoder(x_BLT))
        z1_NP, z2_NP = z_BP[0::2], z_BP[1::2]
        if self.cfg.mode == "pclr":
            loss = nt_xent(z1_NP, z2_NP, self.cfg.temperature)
        elif self.cfg.mode == "supcon":
            loss = supcon_loss(z_BP, patient_B.to(z_BP.device), self.cfg.temperature)
        else:
            loss = clocs_loss(z1_NP, z2_NP, patient_B[0::2].to(z_BP.device), self.cfg.temperature)
        with torch.no_grad():   # logged only: how close the pair members already are
            positive_similarity = F.cosine_similarity(z1_NP.float(), z2_NP.float(), dim=1).mean()
        return {"loss": loss, "positive_similarity": positive_similarity}
