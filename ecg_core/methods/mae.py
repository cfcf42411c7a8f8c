"""MAE: mask most time patches of an ECG window, encode the visible ones, reconstruct the masked ones.

He, Chen, Xie, Li, Dollar, Girshick 2022, "Masked Autoencoders Are Scalable Vision Learners" (CVPR,
arXiv 2111.06377), section 3, on 1-D patches: a window ``x_BLT`` is cut into ``N = T / P`` patches of
``P`` samples of all leads (:class:`ecg_core.encoders.vit1d.ViT1d`'s patch embedding);

- masking: per sample, a uniformly random subset of ``N - int(N (1 - mask_ratio))`` patches is masked
  (the paper's shuffle-and-keep-the-first, ``len_keep = int(N (1 - r))``), from the step's generator;
- encoder: the ViT-1D on the visible patches only (no mask tokens in the encoder);
- decoder: a narrow transformer (:class:`ecg_core.encoders.vit1d.MaskTokenPredictor`) over the encoded
  visible tokens plus a shared mask token at every masked position, each with the decoder's own sin-cos
  positional embedding, and a linear map to the ``L * P`` samples of a patch;
- loss: mean squared error on the masked patches only (section 3, "Reconstruction target"), optionally
  against per-patch normalised targets (``norm_pix_loss``: each target patch minus its mean, divided by
  its standard deviation, which the paper reports improves representations, Table 1c). Leads absent from
  a record (``lead_mask`` False: zero-filled by the loader) are left out of the loss and of the patch
  statistics: there is nothing to reconstruct there.

Seed 5 (seed-methods.md section 5) ran mmpretrain's MAE on rendered ECG *images* with ViT-B, a
512-wide 8-block 16-head decoder, per-patch normalised L2 targets and mask ratio 0.25; this port keeps
its model sizes and loss and uses the paper's mask ratio 0.75 (He et al. Fig. 5; also what ST-MEM,
Na et al. 2024, uses on 12-lead ECG signals), see ``experiments/mae.yaml``. ``self.encoder`` (the
ViT-1D) is what evaluation uses (mean-pooled tokens of all patches).

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``P`` samples per patch, ``N`` patches, ``K`` visible
patches, ``M`` masked patches (``N - K``), ``D`` encoder width, ``O`` decoder outputs (``L * P``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ecg_core.config import ConfigError
from ecg_core.encoders.vit1d import MaskTokenPredictor, ViT1d, gather_tokens
from ecg_core.methods.base import Method

__all__ = ["MAE", "MAEConfig", "masked_patch_mse", "patchify", "random_masking"]

_SOURCE = "method registry"


@dataclass
class MAEConfig:
    """MAE hyper-parameters (``method.params``); sources in the module docstring and ``experiments/mae.yaml``."""

    mask_ratio: float = 0.75        # He et al. 2022 (seed 5 used 0.25 on images)
    norm_pix_loss: bool = True      # He et al. Table 1c; seed 5 MAEPretrainHead(norm_pix=True)
    decoder_dim: int = 512          # He et al. default decoder; seed 5 decoder 512-d
    decoder_depth: int = 8          # He et al. / seed 5: 8 blocks
    decoder_heads: int = 16         # He et al. / seed 5: 16 heads
    decoder_mlp_ratio: float = 4.0  # ViT/MAE blocks


def patchify(x_BLT: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, N, L, P)``: patch ``n`` is samples ``[n P, (n + 1) P)`` of every lead (the encoder's patches)."""
    B, L, T = x_BLT.shape
    return x_BLT.reshape(B, L, T // patch_size, patch_size).transpose(1, 2)


def random_masking(batch: int, n_patches: int, n_keep: int, generator: torch.Generator,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """He et al.'s per-sample random masking: ``(keep_BK, masked_BM)`` int64 patch indices, ``K = n_keep``.

    Each row is a uniformly random permutation of ``range(n_patches)`` (argsort of uniform noise) split into
    its first ``n_keep`` (visible) and the remaining ``n_patches - n_keep`` (masked) entries: exactly the
    same number of masked patches in every sample, and the two sets partition the patches.
    """
    noise_BN = torch.rand(batch, n_patches, generator=generator, device=device)
    order_BN = noise_BN.argsort(dim=1)
    return order_BN[:, :n_keep], order_BN[:, n_keep:]


def masked_patch_mse(pred_BMLP: torch.Tensor, target_BNLP: torch.Tensor, masked_BM: torch.Tensor,
                     lead_mask_BL: torch.Tensor | None = None, norm_pix: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """MAE's reconstruction loss (He et al. section 3) on the masked patches only, in float32.

    ``pred_BMLP[b, m]`` is the prediction of patch ``masked_BM[b, m]`` of ``target_BNLP[b]``; the targets
    of the other (visible) patches are never read. With ``norm_pix`` each target patch is standardised
    by the mean and unbiased variance of its values over the present leads, ``(t - mean) / sqrt(var + eps)``
    (MAE's ``norm_pix_loss``). The error of a patch is the mean squared error over its present leads'
    samples; the loss is the mean over all masked patches of the batch. Absent leads (``lead_mask_BL``
    False) count nowhere; a sample without any present lead contributes 0.
    """
    B, M, L, P = pred_BMLP.shape
    target_BMLP = gather_tokens(target_BNLP, masked_BM).float()
    pred_BMLP = pred_BMLP.float()
    if lead_mask_BL is None:
        lead_mask_BL = torch.ones(B, L, dtype=torch.bool, device=pred_BMLP.device)
    w_B11L1 = lead_mask_BL.to(torch.float32)[:, None, :, None]
    n_B11 = (lead_mask_BL.sum(dim=1).to(torch.float32) * P)[:, None, None]   # present values per patch
    if norm_pix:
        mean_BM = (target_BMLP * w_B11L1).sum(dim=(2, 3)) / n_B11.squeeze(-1).clamp_min(1.0)
        centred_BMLP = (target_BMLP - mean_BM[..., None, None]) * w_B11L1
        var_BM = centred_BMLP.square().sum(dim=(2, 3)) / (n_B11.squeeze(-1) - 1.0).clamp_min(1.0)
        target_BMLP = centred_BMLP / (var_BM[..., None, None] + eps).sqrt()
    err_BM = ((pred_BMLP - target_BMLP).square() * w_B11L1).sum(dim=(2, 3)) / n_B11.squeeze(-1).clamp_min(1.0)
    return err_BM.mean()


class MAE(Method):
    """Masked autoencoder on ECG windows; ``encoder`` must be a ViT-1D (``vit1d_*`` in ``ENCODERS``)."""

    Config = MAEConfig

    def __init__(self, cfg: MAEConfig, encoder: torch.nn.Module, *, window: int, generator_seed: int) -> None:
        super().__init__(cfg, encoder, window=window, generator_seed=generator_seed)
        self.check_config(cfg, window=window)
        if not isinstance(encoder, ViT1d):
            raise ConfigError(_SOURCE, "encoder.name",
                              f"mae needs a ViT-1D encoder (vit1d_*), got {type(encoder).__name__}")
        n_patches = encoder.num_patches(window)
        self.n_keep = int(n_patches * (1.0 - cfg.mask_ratio))
        if not 1 <= self.n_keep < n_patches:
            raise ConfigError(_SOURCE, "method.params.mask_ratio",
                              f"{cfg.mask_ratio} keeps {self.n_keep} of the window's {n_patches} patches; "
                              "at least one must be visible and one masked")
        self.patch_size = encoder.patch_size
        self.in_leads = encoder.patch_embed.proj.in_channels
        self.decoder = MaskTokenPredictor(encoder.out_dim, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads,
                                          out_dim=self.in_leads * self.patch_size, mlp_ratio=cfg.decoder_mlp_ratio)

    @classmethod
    def check_config(cls, cfg: MAEConfig, key_prefix: str = "method.params", window: int | None = None) -> None:
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise ConfigError(_SOURCE, f"{key_prefix}.mask_ratio", f"must be in (0, 1), got {cfg.mask_ratio}")
        for name in ("decoder_dim", "decoder_depth", "decoder_heads"):
            if getattr(cfg, name) < 1:
                raise ConfigError(_SOURCE, f"{key_prefix}.{name}", f"must be >= 1, got {getattr(cfg, name)}")
        if cfg.decoder_dim % cfg.decoder_heads or cfg.decoder_dim % 2:
            raise ConfigError(_SOURCE, f"{key_prefix}.decoder_heads",
                              f"decoder_dim {cfg.decoder_dim} must be even and divisible by decoder_heads "
                              f"{cfg.decoder_heads}")
        if not cfg.decoder_mlp_ratio > 0:
            raise ConfigError(_SOURCE, f"{key_prefix}.decoder_mlp_ratio", f"must be > 0, got {cfg.decoder_mlp_ratio}")

    def fsdp_blocks(self) -> list[torch.nn.Module]:
        return [*self.encoder.blocks(), *self.decoder.blocks()]

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x_BLT = batch["x"].float()
        B, _, T = x_BLT.shape
        n_patches = self.encoder.num_patches(T)
        n_keep = int(n_patches * (1.0 - self.cfg.mask_ratio))
        keep_BK, masked_BM = random_masking(B, n_patches, n_keep, self.step_generator(step, x_BLT.device),
                                            x_BLT.device)
        h_BKD = self.encoder.tokens(x_BLT, keep_BK)
        pred_BMO = self.decoder(h_BKD, keep_BK, masked_BM, n_patches)
        pred_BMLP = pred_BMO.reshape(B, masked_BM.shape[1], self.in_leads, self.patch_size)
        with torch.autocast(device_type=x_BLT.device.type, enabled=False):   # statistics and squares in fp32
            loss = masked_patch_mse(pred_BMLP, patchify(x_BLT, self.patch_size), masked_BM,
                                    batch.get("lead_mask"), norm_pix=self.cfg.norm_pix_loss)
        return {"loss": loss}
