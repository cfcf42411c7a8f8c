"""SwAV: swapped prediction of online cluster assignments (codes) between augmented views.

Caron, Misra, Mairal, Goyal, Bojanowski, Joulin 2020, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments" (NeurIPS, arXiv 2006.09882), section 3.1: each view ``x_v`` goes through
the encoder and a projection head, is L2-normalised (``z_v``) and scored against ``K`` trainable,
unit-norm prototypes ``C`` (``s_v = z_v^T C``). The codes ``q`` of the assigned views come from
Sinkhorn-Knopp on the scores of the whole batch across ranks (eq. 3-5, :func:`ecg_core.losses.swav.sinkhorn`:
equal partition of the batch over prototypes, epsilon 0.05, 3 iterations), and each view predicts the
codes of the others (eq. 1-2, :func:`ecg_core.losses.swav.swapped_prediction_loss`, temperature 0.1).
Evaluation uses the encoder output (``self.encoder``).

Training details of the paper (and of its reference code, ``facebookresearch/swav main_swav.py``):

- Prototypes: a bias-free linear layer whose rows are projected back onto the unit sphere after every
  optimizer step (:meth:`SwAV.after_optimizer_step`; the reference code normalises before each forward,
  the same thing one step apart), and which receives no update during the first
  ``freeze_prototypes_steps`` steps (the paper: "freeze the prototypes during the first epoch"; the code:
  ``freeze_prototypes_niters``, in iterations, by setting their gradient to ``None``). Here their
  gradient is set to *zero* instead: Adam(W) then moves them by exactly 0 (its moments stay 0), and
  decoupled weight decay only scales each row, which the re-normalisation undoes (to float rounding).
  A ``None`` gradient would leave the prototypes without optimizer state until the freeze ends, and a
  DCP checkpoint written during the freeze could then not be loaded into a fresh optimizer (whose state
  :func:`torch.distributed.checkpoint.state_dict.get_state_dict` initialises for every parameter).
  The price: Adam's step count of the prototypes runs during the freeze, so its bias correction damps
  their first updates after it (about half size at first, back to full within ~1/(1-beta2) steps).
- Queue (optional, ``queue_length`` > 0): projections of past batches of the assigned views, scored
  against the current prototypes and prepended to the batch in Sinkhorn only (more samples to spread
  over ``K`` prototypes when the batch is small), filled from ``queue_start_step`` on and used once full,
  as in the reference code. ``queue_length`` counts rows over all ranks, as the reference code's
  ``--queue_length``; each rank's share is ``queue_length // world_size`` of its own past rows. The
  buffer holds every rank's share (an all-gather per step, ``A x B x P`` numbers), so it is the same on
  every rank and a DCP checkpoint of this replicated buffer restores every rank's share exactly.
- Views: ``num_views`` equal-length views of the same window with the same augmentation pipeline; the
  first 2 are assigned (``crops_for_assign = [0, 1]``). Multi-crop with shorter "local" views (section
  3.2) is not implemented: every view has the full window length.

As applied to 12-lead ECG by Mehari & Strodthoff 2022 (CBM 141:105114, seed 2, ``custom_swav_bolts.py``;
seed-methods.md 2.1): 3000 prototypes, projection ``Linear(D, 2048) -> BN -> ReLU -> Linear(2048, 128)``,
temperature 0.1, epsilon 0.05, 3 iterations, prototypes frozen for the first epoch, queue of 8 batches
from epoch 15. The seed used 6 equal-length views and divided the loss by one more than its number of
terms; here the recipe uses the paper's 2 global views and the loss averages as the paper does.
Mixed precision: on GPU FSDP2 gathers the prototypes in bf16 for compute (as the reference code's fp16
AMP did); scores, Sinkhorn and the loss are computed in float32.

Shapes: ``B`` local batch, ``L`` leads, ``T`` time, ``D`` representation, ``P`` projection, ``K``
prototypes, ``V`` views, ``A`` assigned views, ``Q`` queue rows (all ranks), ``S`` one rank's queue share,
``R`` ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from ecg_core import distributed as D
from ecg_core.config import ConfigError
from ecg_core.heads import ProjectionHead
from ecg_core.losses.swav import sinkhorn, swapped_prediction_loss
from ecg_core.methods.base import Method, seed_augmentations
from ecg_core.transforms import build_transforms

__all__ = ["Prototypes", "SwAV", "SwAVConfig"]

_SOURCE = "method registry"
_ASSIGNED_VIEWS = 2   # crops_for_assign = [0, 1] (paper and seed)


@dataclass
class SwAVConfig:
    """SwAV hyper-parameters (``method.params``); defaults from the paper and seed 2 (module docstring)."""

    num_prototypes: int = 3000             # K; seed nmb_prototypes=3000 (also the paper's ImageNet value)
    temperature: float = 0.1               # tau of eq. 2; seed and paper
    epsilon: float = 0.05                  # Sinkhorn regularisation; seed and paper
    sinkhorn_iterations: int = 3           # seed and paper
    freeze_prototypes_steps: int = 0       # no prototype update before this step (paper: one epoch)
    queue_length: int = 0                  # past projections in the assignment, all ranks together; 0 = off
    queue_start_step: int = 0              # the queue is filled from this step on, used once full
    num_views: int = 2                     # equal-length views per window (>= 2); the first 2 get codes
    projection_hidden_dim: int = 2048      # seed hidden_mlp=2048
    projection_dim: int = 128              # seed feat_dim=128
    projection_layers: int = 2             # seed: Linear -> BN -> ReLU -> Linear
    projection_batch_norm: bool = True     # seed: BatchNorm1d in the head
    augmentations: list[dict[str, Any]] = field(default_factory=seed_augmentations)  # each view, in order


class _ZeroGradient(torch.autograd.Function):
    """Identity whose backward returns a zero gradient: the tensor stays in the graph but learns nothing."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.zeros_like(grad)


class Prototypes(nn.Module):
    """``K`` prototype vectors (rows of ``weight``, ``K x P``), unit norm; ``z_NP -> scores_NK`` in float32.

    A bias-free linear layer (the paper's ``C``). Its own FSDP2 unit, so that ``after_optimizer_step``
    finds its sharded weight (whole rows per rank: FSDP2 shards dim 0).
    """

    def __init__(self, dim: int, num_prototypes: int) -> None:
        super().__init__()
        weight = torch.empty(num_prototypes, dim)
        nn.init.kaiming_uniform_(weight, a=5 ** 0.5)   # nn.Linear's initialisation, as the reference code
        self.weight = nn.Parameter(F.normalize(weight, dim=1))

    def forward(self, z_NP: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        # Frozen: a zero gradient (not None, see the module docstring), so the optimizer moves it by 0.
        weight_KP = _ZeroGradient.apply(self.weight) if frozen else self.weight
        with torch.autocast(device_type=z_NP.device.type, enabled=False):
            return F.linear(z_NP.float(), weight_KP.float())

    @torch.no_grad()
    def normalize_(self) -> None:
        """Project every prototype back onto the unit sphere (in place; FSDP2 shards hold whole rows)."""
        weight = self.weight
        local_KP = weight.to_local() if isinstance(weight, DTensor) else weight
        if local_KP.numel():
            local_KP.copy_(F.normalize(local_KP, dim=1))


class SwAV(Method):
    """SwAV on ECG windows; ``encoder`` is any :data:`ecg_core.encoders.ENCODERS` entry.

    Buffers: ``queue_AQP`` (only when ``queue_length`` > 0): projections of past batches of the assigned
    views, every rank's share (see the module docstring), checkpointed with the model.
    """

    Config = SwAVConfig

    def __init__(self, cfg: SwAVConfig, encoder: nn.Module, *, window: int, generator_seed: int) -> None:
        super().__init__(cfg, encoder, window=window, generator_seed=generator_seed)
        self.check_config(cfg, window=window)
        self.augment = build_transforms(cfg.augmentations, "method.params.augmentations", window=window)
        self.projector = ProjectionHead(encoder.out_dim, cfg.projection_hidden_dim, cfg.projection_dim,
                                        num_layers=cfg.projection_layers, batch_norm=cfg.projection_batch_norm)
        self.prototypes = Prototypes(cfg.projection_dim, cfg.num_prototypes)
        if cfg.queue_length > 0:
            self.register_buffer("queue_AQP", torch.zeros(_ASSIGNED_VIEWS, cfg.queue_length, cfg.projection_dim))

    @classmethod
    def check_config(cls, cfg: SwAVConfig, key_prefix: str = "method.params", window: int | None = None) -> None:
        for name in ("temperature", "epsilon"):
            if not getattr(cfg, name) > 0:
                raise ConfigError(_SOURCE, f"{key_prefix}.{name}", f"must be > 0, got {getattr(cfg, name)}")
        for name in ("num_prototypes", "sinkhorn_iterations", "projection_hidden_dim", "projection_dim",
                     "projection_layers"):
            if getattr(cfg, name) < 1:
                raise ConfigError(_SOURCE, f"{key_prefix}.{name}", f"must be >= 1, got {getattr(cfg, name)}")
        for name in ("freeze_prototypes_steps", "queue_length", "queue_start_step"):
            if getattr(cfg, name) < 0:
                raise ConfigError(_SOURCE, f"{key_prefix}.{name}", f"must be >= 0, got {getattr(cfg, name)}")
        if cfg.num_views < _ASSIGNED_VIEWS:
            raise ConfigError(_SOURCE, f"{key_prefix}.num_views", f"must be >= {_ASSIGNED_VIEWS}, got {cfg.num_views}")
        build_transforms(cfg.augmentations, f"{key_prefix}.augmentations", window=window, source=_SOURCE)

    def fsdp_blocks(self) -> list[nn.Module]:
        return [*self.encoder.blocks(), self.projector, self.prototypes]

    def _queue_share(self) -> tuple[int, int]:
        """(start, length) of this rank's rows in the queue."""
        share = self.cfg.queue_length // D.get_world_size()
        return D.get_rank() * share, share

    def _queue_in_use(self, step: int, batch: int) -> bool:
        # Full once it has received share / batch batches (a function of the step: nothing else to save);
        # the reference code waits for its last row to be non-zero, which is the same moment.
        if self.cfg.queue_length == 0 or step < self.cfg.queue_start_step:
            return False
        _, share = self._queue_share()
        return share > 0 and (step - self.cfg.queue_start_step) * batch >= share

    @torch.no_grad()
    def _push_to_queue(self, z_ABP: torch.Tensor) -> None:
        """Shift every rank's share by ``B`` rows and put that rank's newest projections in front."""
        world = D.get_world_size()
        share = self.cfg.queue_length // world
        if share == 0:
            return
        A, B, P = z_ABP.shape
        # Every rank's rows, rank-major (B rows per rank), so that all ranks update all shares alike.
        gathered_RABP = D.all_gather_with_grad(z_ABP.reshape(1, A * B * P).float()).reshape(world, A, B, P)
        queue_ARSP = self.queue_AQP[:, :world * share].reshape(A, world, share, P)
        shifted_ARSP = torch.cat([gathered_RABP.permute(1, 0, 2, 3), queue_ARSP], dim=2)[:, :, :share]
        self.queue_AQP[:, :world * share] = shifted_ARSP.reshape(A, world * share, P)

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x_BLT = batch["x"]
        B, V, A = x_BLT.shape[0], self.cfg.num_views, _ASSIGNED_VIEWS
        views_VBLT = self.augmented_views(x_BLT, self.step_generator(step, x_BLT.device), V)
        # All views in one batch (the reference code batches equal-size crops together: shared BN statistics).
        h_VBD = self.encoder(views_VBLT)
        p_VBP = self.projector(h_VBD)
        with torch.autocast(device_type=x_BLT.device.type, enabled=False):   # unit vectors in float32
            z_VBP = F.normalize(p_VBP.float(), dim=1)

        use_queue = self._queue_in_use(step, B)
        start, share = self._queue_share() if use_queue else (0, 0)
        if use_queue:
            queue_ASP = self.queue_AQP[:, start:start + share]
            # Queue rows are scored with the current prototypes in the same call (one FSDP gather).
            inputs_NP = torch.cat([z_VBP, queue_ASP.reshape(A * share, -1)])
        else:
            inputs_NP = z_VBP
        frozen = step < self.cfg.freeze_prototypes_steps
        scores_NK = self.prototypes(inputs_NP, frozen=frozen)
        scores_VBK = scores_NK[:V * B].reshape(V, B, -1)

        with torch.no_grad():
            codes = []
            for a in range(A):
                scores_for_codes = scores_VBK[a]
                if use_queue:
                    queue_scores_SK = scores_NK[V * B + a * share:V * B + (a + 1) * share]
                    scores_for_codes = torch.cat([queue_scores_SK, scores_for_codes])
                # Past rows first, as in the reference code; the codes of the current batch are the last B.
                codes.append(sinkhorn(scores_for_codes, self.cfg.epsilon, self.cfg.sinkhorn_iterations)[-B:])
            codes_ABK = torch.stack(codes)
        loss = swapped_prediction_loss(scores_VBK, codes_ABK, self.cfg.temperature)

        if self.cfg.queue_length > 0 and step >= self.cfg.queue_start_step:
            self._push_to_queue(z_VBP[:A * B].detach().reshape(A, B, -1))
        with torch.no_grad():
            # Logged only: share of prototypes that are some local sample's best match (collapse -> 1/K).
            best_BK = codes_ABK[0] == codes_ABK[0].amax(dim=1, keepdim=True)
            prototypes_used = best_BK.any(dim=0).float().mean()
        return {"loss": loss, "prototypes_used": prototypes_used,
                "queue_in_use": torch.tensor(float(use_queue), device=loss.device)}

    def after_optimizer_step(self, step: int) -> None:
        """Put the prototypes back on the unit sphere (also during the freeze, where weight decay shrank them)."""
        self.prototypes.normalize_()
