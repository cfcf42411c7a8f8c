"""Image ViT on rendered ECG plots: ``x_BLT`` -> paper-style image (:mod:`ecg_core.render`) -> ViT -> ``z_BD``.

Seed 5 (seed-methods.md section 5) pretrains mmpretrain's MAE ViT-B/16 (768-d, 12 blocks, 12 heads) on 224 x 224
renders of 12-lead ECGs. :class:`ImageViT` is that encoder with the rendering inside, so it maps signals to
representations like every other encoder (linear probes and finetuning run on signals unchanged):

- rendering: :func:`ecg_core.render.render_ecg_image` (1 channel; the seed's RGB PNGs of a black trace on a
  grid carry no colour information the model needs);
- patch embedding: ``Conv2d(1, D, kernel = stride = patch_size)`` (Dosovitskiy et al. 2021 eq. 1), tokens in
  row-major order;
- positions: fixed 2-D sine-cosine embeddings as MAE's ``get_2d_sincos_pos_embed`` (He et al. 2022): half of
  the width encodes the patch row, half the patch column, each with the 1-D table of
  :func:`ecg_core.encoders.vit1d.sincos_pos_embed`;
- blocks, final norm, mean pooling and initialisation: those of :class:`ecg_core.encoders.vit1d.ViT1d`
  (shared :class:`~ecg_core.encoders.vit1d.Block`); :class:`MaskTokenPredictor2d` is
  :class:`~ecg_core.encoders.vit1d.MaskTokenPredictor` (MAE's decoder) with the 2-D table.

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``C`` image channels (1), ``H`` image size, ``G`` patches per
side, ``N`` patches (``G * G``), ``K`` kept tokens, ``D`` width.
"""
from __future__ import annotations

import torch
from torch import nn

from ecg_core.encoders.vit1d import (Block, MaskTokenPredictor, _check_int, _check_width, _init_transformer,
                                     gather_tokens, sincos_pos_embed)
from ecg_core.render import check_layout, render_ecg_image

__all__ = ["ImageViT", "MaskTokenPredictor2d", "PatchEmbed2d", "image_vit_base", "image_vit_tiny",
           "sincos_pos_embed_2d"]


def sincos_pos_embed_2d(grid: int, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """float32 ``(grid * grid, dim)``, row-major: ``[emb_row(i) | emb_col(j)]`` for patch ``(i, j)``, each half a
    1-D sin-cos table of width ``dim / 2`` (MAE's ``get_2d_sincos_pos_embed``; ``dim`` divisible by 4)."""
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 for 2-D sine-cosine positions, got {dim}")
    e_GE = sincos_pos_embed(grid, dim // 2, device)
    row_NE = e_GE[:, None, :].expand(grid, grid, dim // 2).reshape(grid * grid, dim // 2)
    col_NE = e_GE[None, :, :].expand(grid, grid, dim // 2).reshape(grid * grid, dim // 2)
    return torch.cat([row_NE, col_NE], dim=1)


class MaskTokenPredictor2d(MaskTokenPredictor):
    """:class:`~ecg_core.encoders.vit1d.MaskTokenPredictor` with 2-D sin-cos positions over a ``grid x grid``
    patch grid (MAE's decoder, He et al. 2022 section 3, ``decoder_pos_embed`` 2-D); positions are row-major."""

    def position_table(self, n_positions: int, device: torch.device) -> torch.Tensor:
        grid = int(round(n_positions ** 0.5))
        if grid * grid != n_positions:
            raise ValueError(f"n_positions must be a square patch grid, got {n_positions}")
        return sincos_pos_embed_2d(grid, self.dim, device)


class PatchEmbed2d(nn.Module):
    """``img_BCHW -> h_BND``: one linear map per ``patch_size x patch_size`` pixel patch (Conv2d, kernel = stride)."""

    def __init__(self, channels: int, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        return self.proj(img_BCHW).flatten(2).transpose(1, 2).contiguous()


class ImageViT(nn.Module):
    """Render, patch-embed with 2-D sin-cos positions, ``depth`` shared pre-norm blocks, LayerNorm, mean-pool.

    Args:
        in_leads: leads of the input signal (12; one panel each).
        image_size: rendered image side ``H`` in pixels (divisible by ``patch_size``).
        patch_size: pixels per patch side.
        dim, depth, heads, mlp_ratio, qkv_bias: transformer sizes (as :class:`~ecg_core.encoders.vit1d.ViT1d`).
        layout, amplitude_mv, grid_mv: rendering (:func:`ecg_core.render.render_ecg_image`).
    """

    def __init__(self, in_leads: int = 12, image_size: int = 224, patch_size: int = 16, dim: int = 768,
                 depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 layout: str = "6x2", amplitude_mv: float = 1.5, grid_mv: float = 0.5) -> None:
        super().__init__()
        _check_int("image_size", image_size, 2)
        _check_int("patch_size", patch_size, 1)
        _check_int("depth", depth, 1)
        _check_width("dim", dim, "heads", heads)
        if image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide image_size {image_size}")
        if dim % 4:
            raise ValueError(f"dim must be divisible by 4 (2-D sine-cosine positions), got {dim}")
        if not amplitude_mv > 0:
            raise ValueError(f"amplitude_mv must be > 0, got {amplitude_mv}")
        if not grid_mv >= 0:
            raise ValueError(f"grid_mv must be >= 0, got {grid_mv}")
        check_layout(layout, in_leads, image_size)
        self.in_leads = in_leads
        self.image_size = image_size
        self.patch_size = patch_size
        self.channels = 1
        self.grid = image_size // patch_size
        self.dim = dim
        self.out_dim: int = dim
        self.sequence_dim: int = dim
        self.layout, self.amplitude_mv, self.grid_mv = layout, float(amplitude_mv), float(grid_mv)
        self.patch_embed = PatchEmbed2d(self.channels, patch_size, dim)
        self.layers = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        _init_transformer(self, self.layers)
        if not self.patch_embed.proj.weight.is_meta:   # _init_transformer covers Linear/Conv1d only
            nn.init.trunc_normal_(self.patch_embed.proj.weight, std=0.02)
            nn.init.zeros_(self.patch_embed.proj.bias)

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def check_window(self, window: int) -> None:
        """``ValueError`` unless the layout leaves at least 2 samples per panel of a ``window``-sample input."""
        check_layout(self.layout, self.in_leads, self.image_size, window)

    def blocks(self) -> list[nn.Module]:
        """FSDP2 units: patch embedding, each block, final norm (every parameter, as ViT1d)."""
        return [self.patch_embed, *self.layers, self.norm]

    def render(self, x_BLT: torch.Tensor) -> torch.Tensor:
        """The image ``(B, 1, H, H)`` this encoder sees (float32, no gradient)."""
        return render_ecg_image(x_BLT, self.image_size, self.layout, self.amplitude_mv, self.grid_mv)

    def pos_embed(self, device: torch.device | str | None = None) -> torch.Tensor:
        return sincos_pos_embed_2d(self.grid, self.dim, device)

    def image_tokens(self, img_BCHW: torch.Tensor, keep_BK: torch.Tensor | None = None) -> torch.Tensor:
        """Final tokens ``(B, K, D)`` of the image patches ``keep_BK`` (all ``N`` in row-major order when None)."""
        h_BND = self.patch_embed(img_BCHW)
        h_BND = h_BND + self.pos_embed(h_BND.device)
        if keep_BK is not None:
            h_BND = gather_tokens(h_BND, keep_BK)
        for block in self.layers:
            h_BND = block(h_BND)
        return self.norm(h_BND)

    def sequence(self, x_BLT: torch.Tensor) -> torch.Tensor:
        """``h_BND``: the final tokens of all patches of the rendered ``x_BLT`` (row-major)."""
        return self.image_tokens(self.render(x_BLT))

    def forward(self, x_BLT: torch.Tensor) -> torch.Tensor:
        """``z_BD``: mean of the final tokens of all patches of the rendered ``x_BLT``."""
        return self.image_tokens(self.render(x_BLT)).mean(dim=1)


def image_vit_tiny(in_leads: int = 12, image_size: int = 224, patch_size: int = 16, dim: int = 192, depth: int = 12,
                   heads: int = 3, mlp_ratio: float = 4.0, qkv_bias: bool = True, layout: str = "6x2",
                   amplitude_mv: float = 1.5, grid_mv: float = 0.5) -> ImageViT:
    """ViT-Ti/16 widths (192, 12 blocks, 3 heads) on rendered ECG images."""
    return ImageViT(in_leads, image_size, patch_size, dim, depth, heads, mlp_ratio, qkv_bias, layout, amplitude_mv,
                    grid_mv)


def image_vit_base(in_leads: int = 12, image_size: int = 224, patch_size: int = 16, dim: int = 768, depth: int = 12,
                   heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, layout: str = "6x2",
                   amplitude_mv: float = 1.5, grid_mv: float = 0.5) -> ImageViT:
    """ViT-B/16 widths (768, 12 blocks, 12 heads), seed 5's MAEViT arch 'b', on rendered ECG images."""
    return ImageViT(in_leads, image_size, patch_size, dim, depth, heads, mlp_ratio, qkv_bias, layout, amplitude_mv,
                    grid_mv)
