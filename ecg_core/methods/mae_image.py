"""MAE on ECG images: render each window as a 12-lead plot, mask image patches, reconstruct their pixels.

Seed 5 (marthajoddrell/MAE_ECG_Classification, seed-methods.md section 5): mmpretrain's MAE (He, Chen, Xie,
Li, Dollar, Girshick 2022, "Masked Autoencoders Are Scalable Vision Learners", CVPR, arXiv 2111.06377,
section 3) with a ViT-B/16 on 224 x 224 ``ecg_plot`` renders and mask ratio 0.25. Here:

- image: :func:`ecg_core.render.render_ecg_image` inside the encoder (:class:`ecg_core.encoders.vit2d.ImageViT`),
  rendered on the fly from the loader's windows instead of stored PNGs;
- masking: :func:`ecg_core.methods.mae.random_masking` over the ``N = (H / p)^2`` image patches, from the step's
  generator (``N - int(N (1 - mask_ratio))`` masked per sample);
- encoder on the visible patches only, decoder :class:`ecg_core.encoders.vit2d.MaskTokenPredictor2d` (MAE's
  narrow decoder with 2-D sin-cos positions) predicting the ``p * p`` pixels of each masked patch;
- loss: :func:`ecg_core.methods.mae.masked_patch_mse` (MSE on masked patches, per-patch normalised targets
  with ``norm_pix_loss``: the seed's ``MAEPretrainHead(norm_pix=True)``). Patches of blank paper have zero
  variance and a normalised target of 0.

Left out from the seed's pipeline: ``RandomResizedCrop`` (scale 0.2-1) and the horizontal flip (which
reverses time, not a plausible ECG), and ImageNet mean/std (the renders are already in [0, 1]).
``self.encoder`` maps signals to ``z_BD`` (render + mean-pooled tokens), so evaluation is unchanged.

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``C`` image channels, ``H`` image side, ``p`` patch side, ``P``
pixels per patch (``p * p``), ``N`` patches, ``K`` visible, ``M`` masked, ``D`` encoder width, ``O`` decoder
outputs (``C * P``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ecg_core.config import ConfigError
from ecg_core.encoders.vit2d import ImageViT, MaskTokenPredictor2d
from ecg_core.methods.base import Method
from ecg_core.methods.mae import MAE, masked_patch_mse, random_masking

__all__ = ["MAEImage", "MAEImageConfig", "patchify_image"]

_SOURCE = "method registry"


@dataclass
class MAEImageConfig:
    """Hyper-parameters (``method.params``); sources in ``experiments/mae_image.yaml``."""

    mask_ratio: float = 0.25        # seed 5 (He et al.'s default is 0.75)
    norm_pix_loss: bool = True      # seed MAEPretrainHead(norm_pix=True); He et al. Table 1c
    decoder_dim: int = 512          # seed / He et al.
    decoder_depth: int = 8          # seed / He et al.
    decoder_heads: int = 16         # seed / He et al.
    decoder_mlp_ratio: float = 4.0  # ViT/MAE blocks


def patchify_image(img_BCHW: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, N, C, P)``: row-major ``p x p`` patches (the order of :class:`ImageViT`'s patch tokens)."""
    B, C, H, W = img_BCHW.shape
    p = patch_size
    g_h, g_w = H // p, W // p
    return (img_BCHW.reshape(B, C, g_h, p, g_w, p).permute(0, 2, 4, 1, 3, 5)
            .reshape(B, g_h * g_w, C, p * p))


class MAEImage(Method):
    """Masked autoencoder on rendered ECG images; ``encoder`` must be an :class:`ImageViT` (``image_vit_*``)."""

    Config = MAEImageConfig

    def __init__(self, cfg: MAEImageConfig, encoder: torch.nn.Module, *, window: int, generator_seed: int) -> None:
        super().__init__(cfg, encoder, window=window, generator_seed=generator_seed)
        self.check_config(cfg, window=window)
        if not isinstance(encoder, ImageViT):
            raise ConfigError(_SOURCE, "encoder.name",
                              f"mae_image needs an image ViT encoder (image_vit_*), got {type(encoder).__name__}")
        n_patches = encoder.num_patches
        self.n_keep = int(n_patches * (1.0 - cfg.mask_ratio))
        if not 1 <= self.n_keep < n_patches:
            raise ConfigError(_SOURCE, "method.params.mask_ratio",
                              f"{cfg.mask_ratio} keeps {self.n_keep} of the image's {n_patches} patches; "
                              "at least one must be visible and one masked")
        self.patch_size = encoder.patch_size
        self.channels = encoder.channels
        self.decoder = MaskTokenPredictor2d(encoder.out_dim, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads,
                                            out_dim=self.channels * self.patch_size ** 2,
                                            mlp_ratio=cfg.decoder_mlp_ratio)

    @classmethod
    def check_config(cls, cfg: MAEImageConfig, key_prefix: str = "method.params", window: int | None = None) -> None:
        # Same fields and rules as the signal MAE; 2-D sin-cos positions also need a decoder width divisible by 4.
        MAE.check_config(cfg, key_prefix, window)
        if cfg.decoder_dim % 4:
            raise ConfigError(_SOURCE, f"{key_prefix}.decoder_dim",
                              f"must be divisible by 4 (2-D sine-cosine positions), got {cfg.decoder_dim}")

    def fsdp_blocks(self) -> list[torch.nn.Module]:
        return [*self.encoder.blocks(), *self.decoder.blocks()]

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x_BLT = batch["x"].float()
        img_BCHW = self.encoder.render(x_BLT)
        B = img_BCHW.shape[0]
        n_patches = self.encoder.num_patches
        keep_BK, masked_BM = random_masking(B, n_patches, self.n_keep, self.step_generator(step, x_BLT.device),
                                            x_BLT.device)
        h_BKD = self.encoder.image_tokens(img_BCHW, keep_BK)
        pred_BMO = self.decoder(h_BKD, keep_BK, masked_BM, n_patches)
        pred_BMCP = pred_BMO.reshape(B, masked_BM.shape[1], self.channels, self.patch_size ** 2)
        with torch.autocast(device_type=x_BLT.device.type, enabled=False):   # statistics and squares in fp32
            loss = masked_patch_mse(pred_BMCP, patchify_image(img_BCHW, self.patch_size), masked_BM,
                                    None, norm_pix=self.cfg.norm_pix_loss)
        return {"loss": loss}
