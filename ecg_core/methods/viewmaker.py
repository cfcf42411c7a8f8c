"""Viewmaker SimCLR: a network learns the augmentations, adversarially, under an L1 distortion budget.

A. Tamkin, M. Wu, N. Goodman, "Viewmaker Networks: Learning Views for Unsupervised Representation
Learning", ICLR 2021 (arXiv 2010.07432), section 3 and eq. 1: a generator ``V`` maps an input and
random noise to a perturbation ``delta`` that is projected onto the L1 sphere of radius ``epsilon``
(per sample, ``mean |delta| = epsilon``, section 3.1 "distortion budget"); the view is ``x + delta``.
The encoder minimises the contrastive loss between two views of each input, ``V`` maximises it.

As applied to 12-lead ECG by seed 1 (Wu & Wantlin, ``ChenweWu/viewmaker_simclr`` on the 3KG code;
seed-methods.md 1.2-1.3), whose working variant (``systems/simclr_vm_test.py``) trains encoder and
viewmaker with one Adam optimiser through a gradient-reversal layer placed between them
(:func:`ecg_core.layers.grad_reverse`): the encoder and projector receive the gradient of the loss,
the viewmaker its negative. Viewmaker network (``systems/models/encoders/viewmaker_1d.py``, a 1-D port
of the Johnson et al. 2016 style-transfer net Tamkin uses): see :class:`Viewmaker1d`.

Variants (``per_lead``): the seed's viewmaker sees one lead at a time (``num_channels=1``; each lead of
each view gets its own noise and its own budget, ``mean_t |delta| = epsilon`` per lead); with
``per_lead: false`` one 12-channel viewmaker perturbs all leads jointly under one budget per sample
(the kwantlin fork's ECG viewmaker). The encoder always sees the 12 leads together (the seed also
encoded leads separately and averaged their embeddings; here the encoder is any entry of
:data:`ecg_core.encoders.ENCODERS`, as for every method).

Differences from the seed, all deliberate:

- loss: SimCLR's NT-Xent (:func:`ecg_core.losses.nt_xent`, negatives from all ranks) instead of the
  seed's patient-supervised SupCon, whose "patient" is the recording (positives = crops of the same
  record), so that the comparison with other methods is on the same loss as SimCLR;
- budget: exactly ``epsilon`` (the seed divides by ``mean |delta| + 1e-4``, slightly under budget), in
  the units of the input (mV unless ``data.normalize`` is set; the seed's records were divided by their
  peak-to-peak range, so its ``epsilon`` was relative to that range: see the recipe);
- the viewmaker's upsampling restores the exact length of the corresponding downsampling stage, so any
  window length works (nearest x2 upsampling gives the same whenever the window is a multiple of 4);
- optional ordinary augmentations before (``augmentations``, where the seed's dataset transforms sit)
  and after the viewmaker (``post_augmentations``; the budget holds before them); none by default.

Shapes: ``B`` local batch, ``L`` leads, ``T`` time, ``N`` rows fed to the viewmaker (``2B L`` per lead,
``2B`` otherwise), ``C`` viewmaker channels, ``D`` representation, ``P`` projection.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecg_core.config import ConfigError
from ecg_core.heads import ProjectionHead
from ecg_core.layers import grad_reverse
from ecg_core.losses import nt_xent
from ecg_core.methods.base import Method
from ecg_core.transforms import build_transforms

__all__ = ["Viewmaker", "Viewmaker1d", "ViewmakerConfig", "l1_budget", "reflect_pad"]

_SOURCE = "method registry"
MIN_WINDOW = 16   # two stride-2 stages still leave 4 samples for the reflection padding


@dataclass
class ViewmakerConfig:
    """Viewmaker hyper-parameters (``method.params``); sources in the module docstring and the recipe."""

    temperature: float = 0.1               # seed --temp (utils/parsing.py)
    budget: float = 0.03                   # epsilon, L1 budget in input units (mV); see experiments/viewmaker.yaml
    per_lead: bool = True                  # seed: viewmaker_1d(num_channels=1) on each lead
    viewmaker_width: int = 32              # seed: 32-64-128 channels
    num_res_blocks: int = 3                # seed: num_res_blocks=3
    projection_hidden_dim: int = 128       # seed MLP: Linear(in, 128) -> BN -> Linear(128, 128)
    projection_dim: int = 128              # seed --embedding_dim
    projection_layers: int = 2
    projection_batch_norm: bool = True     # seed MLP has a BatchNorm1d
    augmentations: list[dict[str, Any]] = field(default_factory=list)        # before the viewmaker
    post_augmentations: list[dict[str, Any]] = field(default_factory=list)   # after it


def l1_budget(y_NCT: torch.Tensor, budget: float) -> torch.Tensor:
    """``delta = tanh(y) * budget / mean|tanh(y)|`` per row: ``mean_{C,T} |delta| = budget`` exactly.

    Tamkin et al. 2021 section 3.1 (projection onto the L1 sphere); computed in float32 or wider.
    """
    with torch.autocast(device_type=y_NCT.device.type, enabled=False):
        delta_NCT = torch.tanh(y_NCT.to(torch.promote_types(y_NCT.dtype, torch.float32)))
        magnitude_N11 = delta_NCT.abs().mean(dim=(1, 2), keepdim=True)
        # tanh(y) is 0 only if y is; the floor only guards that degenerate case against 0 / 0.
        return delta_NCT * (budget / magnitude_N11.clamp_min(1e-12))


def reflect_pad(x_NCT: torch.Tensor, pad: int) -> torch.Tensor:
    """``F.pad(x, (pad, pad), mode="reflect")`` from slices and flips.

    The same values; but ``ReflectionPad1d``'s CUDA backward accumulates with atomics, so it is not
    bit-reproducible and raises under ``torch.use_deterministic_algorithms`` (the exact-resume mode),
    while the backward of slices, flips and a concatenation is plain copies and sums.
    """
    if pad == 0:
        return x_NCT
    left_NCP = x_NCT[..., 1:pad + 1].flip(-1)
    right_NCP = x_NCT[..., -pad - 1:-1].flip(-1)
    return torch.cat([left_NCP, x_NCT, right_NCP], dim=-1)


class _Conv(nn.Module):
    """Reflection padding ``k // 2`` then ``Conv1d`` (the seed's ``ConvLayer``)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.pad = kernel_size // 2
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, stride)

    def forward(self, x_NCT: torch.Tensor) -> torch.Tensor:
        return self.conv(reflect_pad(x_NCT, self.pad))


class _Residual(nn.Module):
    """``x + IN(conv(ReLU(IN(conv(x)))))`` (the seed's ``ResidualBlock``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _Conv(channels, channels, 3)
        self.in1 = nn.InstanceNorm1d(channels, affine=True)
        self.conv2 = _Conv(channels, channels, 3)
        self.in2 = nn.InstanceNorm1d(channels, affine=True)

    def forward(self, x_NCT: torch.Tensor) -> torch.Tensor:
        return x_NCT + self.in2(self.conv2(F.relu(self.in1(self.conv1(x_NCT)))))


class Viewmaker1d(nn.Module):
    """The seed's 1-D viewmaker network: ``(x_NCT, generator) -> y_NCT``, the raw (unbounded) perturbation.

    One ``U(0, 1)`` noise channel is appended to the input and one more before each residual block, all
    drawn from ``generator``. Layers (``w = width``, IN = affine InstanceNorm, reflection padding):
    ``conv k9 -> w``, ``conv k3 s2 -> 2w``, ``conv k3 s2 -> 4w`` (each IN + ReLU); ``num_res_blocks``
    residual blocks of ``4w + i`` channels; nearest upsampling + ``conv k3 -> 2w``, upsampling +
    ``conv k3 -> w`` (IN + ReLU); ``conv k9 -> channels``. :func:`l1_budget` turns ``y`` into ``delta``.
    """

    def __init__(self, channels: int, width: int = 32, num_res_blocks: int = 3) -> None:
        super().__init__()
        self.channels = channels
        self.down = nn.ModuleList([_Conv(channels + 1, width, 9), _Conv(width, 2 * width, 3, 2),
                                   _Conv(2 * width, 4 * width, 3, 2)])
        self.down_norms = nn.ModuleList([nn.InstanceNorm1d(c, affine=True) for c in (width, 2 * width, 4 * width)])
        self.res = nn.ModuleList([_Residual(4 * width + i + 1) for i in range(num_res_blocks)])
        self.up = nn.ModuleList([_Conv(4 * width + num_res_blocks, 2 * width, 3), _Conv(2 * width, width, 3)])
        self.up_norms = nn.ModuleList([nn.InstanceNorm1d(c, affine=True) for c in (2 * width, width)])
        self.out = _Conv(width, channels, 9)

    @staticmethod
    def _with_noise(y_NCT: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        N, _, T = y_NCT.shape
        noise_N1T = torch.rand((N, 1, T), generator=generator, device=generator.device)
        return torch.cat([y_NCT, noise_N1T.to(device=y_NCT.device, dtype=y_NCT.dtype)], dim=1)

    def forward(self, x_NCT: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        y_NCT = self._with_noise(x_NCT, generator)
        lengths = []
        for conv, norm in zip(self.down, self.down_norms):
            lengths.append(y_NCT.shape[-1])
            y_NCT = F.relu(norm(conv(y_NCT)))
        for block in self.res:
            y_NCT = block(self._with_noise(y_NCT, generator))
        # Back to the lengths before each stride-2 stage (= nearest x2 when they are even).
        for conv, norm, length in zip(self.up, self.up_norms, reversed(lengths[1:])):
            y_NCT = F.relu(norm(conv(F.interpolate(y_NCT, size=length, mode="nearest"))))
        return self.out(y_NCT)


class Viewmaker(Method):
    """Adversarial viewmaker + SimCLR on ECG windows; ``encoder`` is any :data:`ecg_core.encoders.ENCODERS` entry."""

    Config = ViewmakerConfig

    def __init__(self, cfg: ViewmakerConfig, encoder: nn.Module, *, window: int, generator_seed: int) -> None:
        super().__init__(cfg, encoder, window=window, generator_seed=generator_seed)
        self.check_config(cfg, window=window)
        self.augment = build_transforms(cfg.augmentations, "method.params.augmentations", window=window)
        self.post_augment = build_transforms(cfg.post_augmentations, "method.params.post_augmentations",
                                             window=window)
        self.viewmaker = Viewmaker1d(1 if cfg.per_lead else 12, cfg.viewmaker_width, cfg.num_res_blocks)
        self.projector = ProjectionHead(encoder.out_dim, cfg.projection_hidden_dim, cfg.projection_dim,
                                        num_layers=cfg.projection_layers, batch_norm=cfg.projection_batch_norm)

    @classmethod
    def check_config(cls, cfg: ViewmakerConfig, key_prefix: str = "method.params",
                     window: int | None = None) -> None:
        for name in ("temperature", "budget"):
            if not getattr(cfg, name) > 0:
                raise ConfigError(_SOURCE, f"{key_prefix}.{name}", f"must be > 0, got {getattr(cfg, name)}")
        for name in ("viewmaker_width", "projection_hidden_dim", "projection_dim", "projection_layers"):
            if getattr(cfg, name) < 1:
                raise ConfigError(_SOURCE, f"{key_prefix}.{name}", f"must be >= 1, got {getattr(cfg, name)}")
        if not 0 <= cfg.num_res_blocks <= 5:   # the seed allocates at most 5
            raise ConfigError(_SOURCE, f"{key_prefix}.num_res_blocks", f"must be in 0..5, got {cfg.num_res_blocks}")
        if window is not None and window < MIN_WINDOW:
            raise ConfigError(_SOURCE, key_prefix, f"the viewmaker needs windows of at least {MIN_WINDOW} "
                                                   f"samples, the window is {window}")
        build_transforms(cfg.augmentations, f"{key_prefix}.augmentations", window=window, source=_SOURCE)
        build_transforms(cfg.post_augmentations, f"{key_prefix}.post_augmentations", window=window, source=_SOURCE)

    def fsdp_blocks(self) -> list[nn.Module]:
        return [*self.encoder.blocks(), self.projector, self.viewmaker]

    def make_views(self, x_BLT: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs_2BLT, views_2BLT)``: the two inputs of each window (after ``augmentations``) and
        their viewmaker views ``input + delta`` (after ``post_augmentations``), before gradient reversal."""
        B, L, T = x_BLT.shape
        dev = x_BLT.device
        inputs_2BLT = self.augmented_views(x_BLT, generator)   # ordinary augmentations
        rows_NCT = inputs_2BLT.reshape(2 * B * L, 1, T) if self.cfg.per_lead else inputs_2BLT
        delta_NCT = l1_budget(self.viewmaker(rows_NCT, generator), self.cfg.budget)
        with torch.autocast(device_type=dev.type, enabled=False):
            # The budget is met in float32 on the float32 signal; bf16 would round x + delta to ~1/256.
            views_2BLT = (rows_NCT + delta_NCT).reshape(2 * B, L, T)
            views_2BLT = self.post_augment(views_2BLT, generator)
        return inputs_2BLT, views_2BLT

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x_BLT = batch["x"]
        B = x_BLT.shape[0]
        _, views_2BLT = self.make_views(x_BLT, self.step_generator(step, x_BLT.device))
        # Encoder and projector descend the loss, the viewmaker (upstream of this layer) ascends it.
        h_2BD = self.encoder(grad_reverse(views_2BLT))
        z_2BP = self.projector(h_2BD)
        z1_BP, z2_BP = z_2BP[:B], z_2BP[B:]
        loss = nt_xent(z1_BP, z2_BP, self.cfg.temperature)
        with torch.no_grad():   # logged only: how hard the viewmaker's pairs are
            positive_similarity = F.cosine_similarity(z1_BP.float(), z2_BP.float(), dim=1).mean()
        return {"loss": loss, "positive_similarity": positive_similarity}
