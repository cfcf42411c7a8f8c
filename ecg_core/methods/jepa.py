"""JEPA: predict the representations of masked time blocks of an ECG from a context block (1-D I-JEPA).

Assran, Duval, Misra, Bojanowski, Vincent, Rabbat, LeCun, Ballas 2023, "Self-Supervised Learning from
Images with a Joint-Embedding Predictive Architecture" (CVPR, arXiv 2301.08243), section 3, in one
dimension as seed 4 (achilsowa/ecg-ssl, ``ssls/jepa``, seed-methods.md section 4.3) applies it to ECG:

- the window is cut into ``N`` patches (:class:`ecg_core.encoders.vit1d.ViT1d`, seed: 40 patches of
  0.1 s); per step a target block length ``k = int(N s)``, ``s ~ U(target_scale)``, and a context block
  length ``c = int(N s')``, ``s' ~ U(context_scale)``, are drawn (one size per batch, as I-JEPA's
  collator); every sample gets ``num_target_blocks`` target blocks of ``k`` consecutive patches at
  uniformly random positions (they may overlap each other) and one context block of ``c`` patches with
  every target patch removed (I-JEPA ``allow_overlap=False``) (:func:`sample_jepa_masks`);
- the context encoder ``f_theta`` (trained) sees only the context patches; the target encoder
  ``f_theta_bar``, an exponential moving average of it, sees all patches, and its outputs are
  layer-normalised (no affine) to give the targets ``s_y`` (I-JEPA ``F.layer_norm(h, (D,))``);
- the predictor ``g_phi`` (:class:`ecg_core.encoders.vit1d.MaskTokenPredictor`, narrower or wider than
  the encoder) maps the context tokens plus a mask token with the positional embedding of each target
  patch to predictions ``s_hat_y``, one predictor pass per target block;
- loss (eq. 1, with seed 4's ``loss_exp``): the mean over blocks, patches and features of
  ``|s_hat_y - sg(s_y)|`` (``loss: l1``, seed) or its square (``loss: l2``, I-JEPA's L2 form);
- after each optimizer step ``theta_bar <- m theta_bar + (1 - m) theta`` with ``m`` going linearly from
  ``ema_momentum[0]`` to ``ema_momentum[1]`` over the run (I-JEPA's momentum scheduler; needs the run's
  step count, ``total_steps``; without it ``m`` stays at the base value).

``self.encoder`` -- what evaluation exports -- is the EMA **target** encoder, as I-JEPA evaluates ("we use
the target-encoder for evaluation and average pool its output"); the trained one is ``context_encoder``.

Differences from the seed, on purpose:

- The seed's encoder calls ``apply_zero_masks(x, masks_enc)`` (``learnable_mask=True``), which zeroes the
  *kept* (context) tokens, across the union of the batch's indices, in place, so its context encoder sees
  almost no signal (seed-methods.md 4.3). Here the context encoder runs on the context tokens only, with
  their content, which is the paper's intent; nothing is zeroed.
- I-JEPA's collator retries the context block until more than ``min_keep`` patches survive, and after 20
  failures starts ignoring target blocks, which breaks the disjointness of context and targets. Here 20
  context positions are tried at once and, should none keep ``min_context`` patches, the context is the
  whole window minus the targets (a context block of scale 1); construction checks that this always has
  ``min_context`` patches, so context and targets are disjoint and the context non-empty in every sample.
- The batch's contexts are brought to the smallest context size by dropping random patches of the larger
  ones (the seed keeps the first indices, dropping the end of the window more often).
- No variance regulariser (seed ``reg_coeff`` 0) and no weight-decay schedule (the project's AdamW has a
  fixed decay).

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``N`` patches, ``C`` context patches, ``M`` target blocks,
``K`` patches per target block, ``R`` context tries, ``D`` encoder width, ``X`` = ``B * M`` predictor rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ecg_core.config import ConfigError
from ecg_core.ema import ema_update, make_target
from ecg_core.encoders.vit1d import MaskTokenPredictor, ViT1d, gather_tokens
from ecg_core.methods.base import Method

__all__ = ["JEPA", "JEPAConfig", "LOSSES", "block_length", "jepa_loss", "sample_jepa_masks"]

_SOURCE = "method registry"
LOSSES = ("l1", "l2")
CONTEXT_TRIES = 20   # I-JEPA's collator timeout: context positions tried before falling back


@dataclass
class JEPAConfig:
    """JEPA hyper-parameters (``method.params``); defaults are seed 4's ``configs/jepa.yaml`` (module docstring)."""

    num_target_blocks: int = 4                                                   # seed mask.num_pred_masks 4
    target_scale: list[float] = field(default_factory=lambda: [0.15, 0.2])      # seed pred_mask_scale
    context_scale: list[float] = field(default_factory=lambda: [0.85, 1.0])     # seed enc_mask_scale
    min_context: int = 6              # seed min_keep 5 with I-JEPA's strict "> min_keep": at least 6 patches
    predictor_dim: int = 384          # seed pred_emb_dim 384
    predictor_depth: int = 12         # seed pred_depth 12
    predictor_heads: int = 3          # seed: the encoder's heads (ecgt_tiny: 3)
    loss: str = "l1"                  # seed loss_exp 1
    ema_momentum: list[float] = field(default_factory=lambda: [0.996, 1.0])     # seed ema [0.996, 1.0]


def block_length(n_patches: int, scale: float) -> int:
    """Patches in a block of relative size ``scale``: ``max(1, int(n_patches * scale))`` (I-JEPA's
    ``int(num_patches * s)`` at aspect ratio 1)."""
    return max(1, int(n_patches * scale))


def sample_jepa_masks(batch: int, n_patches: int, *, num_target_blocks: int, target_scale: tuple[float, float],
                      context_scale: tuple[float, float], min_context: int, generator: torch.Generator,
                      device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """I-JEPA multi-block masks in 1-D: ``(context_BC, targets_BMK)`` int64 patch indices.

    ``targets_BMK[b, m]`` are the ``K`` consecutive patches of target block ``m`` of sample ``b`` (one
    block length ``K`` for the batch); ``context_BC[b]`` are ``C`` increasing patch indices of one
    context block minus every target patch of that sample. Context and targets are always disjoint, and
    ``C >= max(min_context, 1)`` whenever ``n_patches - num_target_blocks * K`` is at least that (which
    :class:`JEPA` checks at construction; see the module docstring for how the context is chosen). All
    randomness comes from ``generator``.
    """
    M = num_target_blocks
    u_2 = torch.rand(2, generator=generator, device=device).tolist()
    K = block_length(n_patches, target_scale[0] + u_2[0] * (target_scale[1] - target_scale[0]))
    c = block_length(n_patches, context_scale[0] + u_2[1] * (context_scale[1] - context_scale[0]))
    pos_N = torch.arange(n_patches, device=device)
    start_BM = torch.randint(0, n_patches - K + 1, (batch, M), generator=generator, device=device)
    targets_BMK = start_BM[..., None] + torch.arange(K, device=device)
    end_BM = start_BM + K
    covered_BN = ((pos_N >= start_BM[..., None]) & (pos_N < end_BM[..., None])).any(dim=1)   # any target block
    # CONTEXT_TRIES context block positions per sample at once; the first that keeps min_context patches wins.
    start_BR = torch.randint(0, n_patches - c + 1, (batch, CONTEXT_TRIES), generator=generator, device=device)
    in_block_BRN = (pos_N >= start_BR[..., None]) & (pos_N < start_BR[..., None] + c)
    context_BRN = in_block_BRN & ~covered_BN[:, None, :]
    ok_BR = context_BRN.sum(dim=-1) >= max(min_context, 1)
    first_B = ok_BR.to(torch.int8).argmax(dim=1)             # index of the first True (0 when none)
    context_BN = context_BRN[torch.arange(batch, device=device), first_B]
    context_BN = torch.where(ok_BR.any(dim=1)[:, None], context_BN, ~covered_BN)
    # One context size for the batch: keep a random subset of size C of each sample's context, in order.
    C = int(context_BN.sum(dim=1).min())
    score_BN = torch.rand(batch, n_patches, generator=generator, device=device).masked_fill(~context_BN, 2.0)
    context_BC = score_BN.topk(C, dim=1, largest=False).indices.sort(dim=1).values
    return context_BC, targets_BMK


def jepa_loss(pred_XKD: torch.Tensor, target_XKD: torch.Tensor, loss: str = "l1") -> torch.Tensor:
    """Mean over rows, patches and features of ``|pred - target|`` (``"l1"``) or ``(pred - target)^2``
    (``"l2"``), in float32; ``target`` is treated as a constant (stop-gradient)."""
    diff = pred_XKD.float() - target_XKD.detach().float()
    if loss == "l1":
        return diff.abs().mean()
    if loss == "l2":
        return diff.square().mean()
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


class JEPA(Method):
    """1-D I-JEPA; ``encoder`` must be a ViT-1D (``vit1d_*``). ``self.encoder`` is the EMA target encoder."""

    Config = JEPAConfig

    def __init__(self, cfg: JEPAConfig, encoder: torch.nn.Module, *, window: int, generator_seed: int,
                 total_steps: int | None = None) -> None:
        self.check_config(cfg, window=window)
        if not isinstance(encoder, ViT1d):
            raise ConfigError(_SOURCE, "encoder.name",
                              f"jepa needs a ViT-1D encoder (vit1d_*), got {type(encoder).__name__}")
        # The target starts as an exact copy of the context encoder (I-JEPA: copy.deepcopy(encoder)) and is
        # only ever changed by the EMA update: no gradients, so the optimizer skips it.
        target = make_target(encoder)
        super().__init__(cfg, target, window=window, generator_seed=generator_seed)
        self.context_encoder = encoder
        self.total_steps = total_steps
        n_patches = encoder.num_patches(window)
        k_max = block_length(n_patches, cfg.target_scale[1])
        if n_patches - cfg.num_target_blocks * k_max < cfg.min_context:
            raise ConfigError(_SOURCE, "method.params.num_target_blocks",
                              f"{cfg.num_target_blocks} target blocks of up to {k_max} of the window's {n_patches} "
                              f"patches can leave fewer than min_context={cfg.min_context} context patches; use "
                              "fewer or smaller target blocks, a smaller patch_size or a longer window")
        self.predictor = MaskTokenPredictor(encoder.out_dim, cfg.predictor_dim, cfg.predictor_depth,
                                            cfg.predictor_heads, out_dim=encoder.out_dim)

    @classmethod
    def check_config(cls, cfg: JEPAConfig, key_prefix: str = "method.params", window: int | None = None) -> None:
        def fail(name: str, reason: str) -> None:
            raise ConfigError(_SOURCE, f"{key_prefix}.{name}", reason)

        for name in ("num_target_blocks", "min_context", "predictor_dim", "predictor_depth", "predictor_heads"):
            if getattr(cfg, name) < 1:
                fail(name, f"must be >= 1, got {getattr(cfg, name)}")
        if cfg.predictor_dim % cfg.predictor_heads or cfg.predictor_dim % 2:
            fail("predictor_heads", f"predictor_dim {cfg.predictor_dim} must be even and divisible by "
                                    f"predictor_heads {cfg.predictor_heads}")
        for name in ("target_scale", "context_scale"):
            lo_hi = list(getattr(cfg, name))
            if len(lo_hi) != 2 or not 0.0 < lo_hi[0] <= lo_hi[1] <= 1.0:
                fail(name, f"must be [low, high] with 0 < low <= high <= 1, got {lo_hi}")
        if cfg.loss not in LOSSES:
            fail("loss", f"must be one of {LOSSES}, got {cfg.loss!r}")
        momentum = list(cfg.ema_momentum)
        if len(momentum) != 2 or not all(0.0 <= m <= 1.0 for m in momentum):
            fail("ema_momentum", f"must be [base, final] in [0, 1], got {momentum}")

    def fsdp_blocks(self) -> list[torch.nn.Module]:
        # Target and context encoders are sharded alike, so their local shards have equal shapes (EMA).
        return [*self.context_encoder.blocks(), *self.encoder.blocks(), *self.predictor.blocks()]

    def momentum(self, step: int) -> float:
        """EMA momentum after optimizer step ``step``: linear from ``ema_momentum[0]`` to ``[1]`` over the run.

        Linear as I-JEPA's ``momentum_scheduler`` (``ema[0] + i (ema[1] - ema[0]) / total``), not BYOL's
        cosine (:func:`ecg_core.ema.momentum_at`); a pure function of the step, so resuming needs nothing else.
        """
        base, final = self.cfg.ema_momentum
        if not self.total_steps:
            return float(base)
        return float(base + (final - base) * min(1.0, step / self.total_steps))

    def after_optimizer_step(self, step: int) -> None:
        ema_update(self.encoder, self.context_encoder, self.momentum(step))

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x_BLT = batch["x"].float()
        B, _, T = x_BLT.shape
        n_patches = self.encoder.num_patches(T)
        cfg = self.cfg
        context_BC, targets_BMK = sample_jepa_masks(
            B, n_patches, num_target_blocks=cfg.num_target_blocks, target_scale=tuple(cfg.target_scale),
            context_scale=tuple(cfg.context_scale), min_context=cfg.min_context,
            generator=self.step_generator(step, x_BLT.device), device=x_BLT.device)
        M, K = targets_BMK.shape[1:]
        targets_XK = targets_BMK.reshape(B * M, K)              # row b * M + m: block m of sample b
        with torch.no_grad():
            h_BND = self.encoder.tokens(x_BLT)                 # target encoder on every patch
            with torch.autocast(device_type=x_BLT.device.type, enabled=False):
                h_BND = F.layer_norm(h_BND.float(), (h_BND.shape[-1],))
            target_XKD = gather_tokens(h_BND, targets_BMK.reshape(B, M * K)).reshape(B * M, K, -1)
        z_BCD = self.context_encoder.tokens(x_BLT, context_BC)
        pred_XKD = self.predictor(z_BCD.repeat_interleave(M, dim=0), context_BC.repeat_interleave(M, dim=0),
                                  targets_XK, n_patches)
        with torch.autocast(device_type=x_BLT.device.type, enabled=False):
            loss = jepa_loss(pred_XKD, target_XKD, cfg.loss)
        return {"loss": loss, "context_patches": torch.tensor(float(context_BC.shape[1]), device=x_BLT.device)}
