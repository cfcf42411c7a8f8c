"""ViT-1D: a Vision Transformer over non-overlapping time patches of a 12-lead ECG.

Definitions:

- Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words" (ICLR, arXiv 2010.11929), eqs. 1-4: patch
  embedding by a linear map of each flattened patch, positional embeddings added, pre-norm transformer
  blocks ``h + MSA(LN(h))``, ``h + MLP(LN(h))``, a final LayerNorm. In one dimension a patch is
  ``patch_size`` consecutive samples of all leads, and the linear map is a ``Conv1d`` with
  ``kernel_size = stride = patch_size``.
- Positions: fixed 1-D sine-cosine embeddings (Vaswani et al. 2017, section 3.5; the 1-D form of MAE's
  and I-JEPA's ``get_1d_sincos_pos_embed``): nothing to learn, any number of patches.
- The representation for evaluation is the mean of the final tokens (no class token), as I-JEPA
  evaluates ("average pool its output") and MAE's ``global_pool`` variant.
- Sizes (``vit1d_tiny/small/base``) are ViT-Ti/S/B (Touvron et al. 2021, DeiT; Dosovitskiy et al.
  Table 1). Seed 4 (ECG-SSL, ``ecgt_tiny``, seed-methods.md 4.3) is ``vit1d_tiny`` with 25-sample patches
  at 250 Hz, i.e. ``patch_size=50`` at this project's 500 Hz. Its 5,404,416 parameters are this module's
  5,396,544 at ``patch_size=25`` plus its 41 x 192 sin-cos table, stored there as a frozen parameter and
  computed here (5,454,144 at ``patch_size=50``: a wider patch embedding).
- Initialisation as I-JEPA's ``VisionTransformer``: truncated normal (std 0.02) weights, zero biases,
  and each block's output projections scaled by ``1 / sqrt(2 * layer)`` (``fix_init_weight``) so the
  residual stream does not grow with depth at initialisation.

Token-level entry points for masked methods (:mod:`ecg_core.methods.mae`, :mod:`ecg_core.methods.jepa`):

- :meth:`ViT1d.embed` ``x_BLT -> h_BND``: patch embedding plus positions (before the blocks);
- :meth:`ViT1d.tokens` ``(x_BLT, keep_BK=None) -> h_BKD``: the encoder run on the tokens ``keep_BK``
  only (all when ``None``), as MAE's encoder sees visible patches and I-JEPA's context encoder its context.

:class:`MaskTokenPredictor` is the narrow transformer that both MAE's decoder and I-JEPA's predictor are:
given encoded tokens at some positions, it predicts outputs at other positions from a shared learned
mask token plus that position's embedding.

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``P`` samples per patch, ``N`` patches (``T / P``),
``K`` kept tokens, ``M`` predicted positions, ``D`` encoder width, ``E`` predictor width,
``O`` predictor output features, ``H`` heads.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Block", "MaskTokenPredictor", "PatchEmbed1d", "ViT1d", "gather_tokens", "sincos_pos_embed",
           "vit1d_base", "vit1d_small", "vit1d_tiny"]


@functools.lru_cache(maxsize=32)
def _sincos_cpu(n_positions: int, dim: int) -> torch.Tensor:
    half = dim // 2
    omega_H = 1.0 / 10000.0 ** (torch.arange(half, dtype=torch.float64) / half)
    angle_NH = torch.arange(n_positions, dtype=torch.float64)[:, None] * omega_H[None, :]
    return torch.cat([angle_NH.sin(), angle_NH.cos()], dim=1).float()


def sincos_pos_embed(n_positions: int, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """float32 ``(n_positions, dim)``: ``[sin(n w_i), cos(n w_i)]`` with ``w_i = 10000^(-i / (dim/2))``.

    Computed in float64 once per size (cached) and constant: no parameter to shard or checkpoint.
    """
    if dim % 2:
        raise ValueError(f"dim must be even for sine-cosine positions, got {dim}")
    return _sincos_cpu(int(n_positions), int(dim)).to(device)


def gather_tokens(h_BND: torch.Tensor, index_BK: torch.Tensor) -> torch.Tensor:
    """``h_BND[b, index_BK[b, k]]`` as ``(B, K, D)``.

    Advanced indexing rather than ``torch.gather``: its backward (``index_put`` with accumulation) has a
    deterministic CUDA kernel, which ``gather``'s ``scatter_add`` lacks under deterministic algorithms.
    """
    batch_B1 = torch.arange(h_BND.shape[0], device=h_BND.device)[:, None]
    return h_BND[batch_B1, index_BK]


class PatchEmbed1d(nn.Module):
    """``x_BLT -> h_BND``: one linear map per ``patch_size`` samples of all leads (Conv1d, kernel = stride)."""

    def __init__(self, in_leads: int, patch_size: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv1d(in_leads, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x_BLT: torch.Tensor) -> torch.Tensor:
        # contiguous(): a new tensor, not a transposed view (FSDP2 warns about blocks returning views).
        return self.proj(x_BLT).transpose(1, 2).contiguous()


class Block(nn.Module):
    """Pre-norm transformer block (Dosovitskiy et al. eqs. 2-3): ``h + MSA(LN(h))``, then ``h + MLP(LN(h))``.

    Attention is ``F.scaled_dot_product_attention`` (flash/memory-efficient kernels on GPU); LayerNorm
    eps 1e-6 as in ViT/MAE/I-JEPA.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, h_BND: torch.Tensor) -> torch.Tensor:
        B, N, D = h_BND.shape
        qkv_3BHNd = self.qkv(self.norm1(h_BND)).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q_BHNd, k_BHNd, v_BHNd = qkv_3BHNd.unbind(0)
        a_BND = F.scaled_dot_product_attention(q_BHNd, k_BHNd, v_BHNd).transpose(1, 2).reshape(B, N, D)
        h_BND = h_BND + self.proj(a_BND)
        return h_BND + self.fc2(F.gelu(self.fc1(self.norm2(h_BND))))


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_width(dim_name: str, dim: int, heads_name: str, heads: int) -> None:
    _check_int(dim_name, dim, 2)
    _check_int(heads_name, heads, 1)
    if dim % heads:
        raise ValueError(f"{heads_name} must divide {dim_name}, got {dim_name}={dim}, {heads_name}={heads}")
    if dim % 2:
        raise ValueError(f"{dim_name} must be even (sine-cosine positions), got {dim}")


def _init_transformer(module: nn.Module, layers: nn.ModuleList) -> None:
    """I-JEPA/ViT init: trunc-normal(0.02) weights, zero biases, unit LayerNorms, rescaled block outputs."""
    if any(p.is_meta for p in module.parameters()):
        return   # built on the meta device to check a config: nothing to initialise
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for layer_id, block in enumerate(layers, start=1):
            block.proj.weight.div_(math.sqrt(2.0 * layer_id))
            block.fc2.weight.div_(math.sqrt(2.0 * layer_id))


class ViT1d(nn.Module):
    """Patch embedding + sin-cos positions, ``depth`` pre-norm blocks, final LayerNorm, mean pooling.

    Args:
        in_leads: input channels (12).
        patch_size: samples per patch ``P``; inputs must have ``T`` divisible by it (:meth:`check_window`).
        dim: token width ``D`` (= ``out_dim``).
        depth: transformer blocks.
        heads: attention heads (must divide ``dim``).
        mlp_ratio: MLP hidden width / ``dim``.
        qkv_bias: bias in the query/key/value projection (ViT, MAE and I-JEPA have one).
    """

    def __init__(self, in_leads: int = 12, patch_size: int = 50, dim: int = 192, depth: int = 12, heads: int = 3,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        _check_int("in_leads", in_leads, 1)
        _check_int("patch_size", patch_size, 1)
        _check_int("depth", depth, 1)
        _check_width("dim", dim, "heads", heads)
        if not (isinstance(mlp_ratio, (int, float)) and mlp_ratio > 0 and int(dim * mlp_ratio) >= 1):
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio!r}")
        self.patch_size = patch_size
        self.dim = dim
        self.out_dim: int = dim
        self.sequence_dim: int = dim
        self.patch_embed = PatchEmbed1d(in_leads, patch_size, dim)
        self.layers = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        _init_transformer(self, self.layers)

    def num_patches(self, T: int) -> int:
        """``N = T / P``; a ``ValueError`` when ``P`` does not divide ``T`` (a remainder would be dropped silently)."""
        self.check_window(T)
        return T // self.patch_size

    def check_window(self, window: int) -> None:
        """Raise ``ValueError`` (naming ``patch_size``) unless ``window`` is a positive multiple of the patch size.

        :func:`ecg_core.encoders.validate_encoder` calls it with the training window, so a bad pair is a
        ``ConfigError`` at ``--dry-run`` time rather than a crash in the first step.
        """
        if window < self.patch_size or window % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} must divide the window of {window} samples "
                             f"(choose data.window as a multiple of encoder.params.patch_size)")

    def blocks(self) -> list[nn.Module]:
        """Units for FSDP2 ``fully_shard``: the patch embedding, each transformer block and the final norm.

        Together they hold every parameter, so the encoder of a sharded method also runs on its own
        (``method.encoder(x)`` in evaluation), without the root's hooks gathering anything for it."""
        return [self.patch_embed, *self.layers, self.norm]

    def embed(self, x_BLT: torch.Tensor) -> torch.Tensor:
        """Patch tokens with their positions, ``(B, N, D)``, before the transformer blocks."""
        N = self.num_patches(x_BLT.shape[-1])
        h_BND = self.patch_embed(x_BLT)
        return h_BND + sincos_pos_embed(N, self.dim, h_BND.device)

    def encode(self, h_BKD: torch.Tensor) -> torch.Tensor:
        """Transformer blocks and final norm on tokens that already carry their positions."""
        for block in self.layers:
            h_BKD = block(h_BKD)
        return self.norm(h_BKD)

    def tokens(self, x_BLT: torch.Tensor, keep_BK: torch.Tensor | None = None) -> torch.Tensor:
        """Final tokens ``(B, K, D)`` of the patches ``keep_BK`` (int64 indices in ``[0, N)``, or all ``N``
        patches in order when ``None``); the other patches are not seen at all (MAE's encoder, I-JEPA's
        context encoder)."""
        h_BND = self.embed(x_BLT)
        if keep_BK is not None:
            h_BND = gather_tokens(h_BND, keep_BK)
        return self.encode(h_BND)

    def sequence(self, x_BLT: torch.Tensor) -> torch.Tensor:
        """``h_BND``: the final tokens of all patches, in order."""
        return self.tokens(x_BLT)

    def forward(self, x_BLT: torch.Tensor) -> torch.Tensor:
        """``z_BD``: mean of the final tokens of all patches."""
        return self.tokens(x_BLT).mean(dim=1)


class MaskTokenPredictor(nn.Module):
    """A narrow transformer that predicts outputs at positions it does not see (MAE decoder, I-JEPA predictor).

    Input tokens ``(B, K, D)`` at positions ``src_BK`` are mapped to width ``E`` and given their
    positional embeddings; positions ``dst_BM`` get a shared learned mask token plus their embedding;
    all ``K + M`` tokens go through ``depth`` blocks and a LayerNorm, and the ``M`` mask tokens are
    mapped to ``out_dim``. He et al. 2022 (MAE) section 3 "MAE decoder" and Assran et al. 2023 (I-JEPA)
    section 3 "Prediction"; both use fixed sin-cos positions of the decoder's own width. (MAE's decoder
    also keeps outputs at the visible positions, which its loss ignores; they are not computed here.)
    """

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, out_dim: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        _check_int("depth", depth, 1)
        _check_width("dim", dim, "heads", heads)
        self.dim = dim
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.layers = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim)
        _init_transformer(self, self.layers)
        if not self.mask_token.is_meta:
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    def blocks(self) -> list[nn.Module]:
        """Units for FSDP2 ``fully_shard``: the transformer blocks (embedding, mask token, norm and head stay
        with the root)."""
        return list(self.layers)

    def position_table(self, n_positions: int, device: torch.device) -> torch.Tensor:
        """``(n_positions, dim)`` fixed positional embeddings (1-D sin-cos); subclasses change the geometry."""
        return sincos_pos_embed(n_positions, self.dim, device)

    def forward(self, h_BKD: torch.Tensor, src_BK: torch.Tensor, dst_BM: torch.Tensor,
                n_positions: int) -> torch.Tensor:
        """Predictions ``(B, M, O)`` at ``dst_BM`` from tokens ``h_BKD`` at ``src_BK`` (positions in
        ``[0, n_positions)``)."""
        pos_NE = self.position_table(n_positions, h_BKD.device)
        src_BKE = self.embed(h_BKD) + pos_NE[src_BK]
        B, M = dst_BM.shape
        dst_BME = self.mask_token.expand(B, M, -1) + pos_NE[dst_BM]
        g_BXE = torch.cat([src_BKE, dst_BME.to(src_BKE.dtype)], dim=1)
        for block in self.layers:
            g_BXE = block(g_BXE)
        return self.head(self.norm(g_BXE[:, h_BKD.shape[1]:]))


def vit1d_tiny(in_leads: int = 12, patch_size: int = 50, dim: int = 192, depth: int = 12, heads: int = 3,
               mlp_ratio: float = 4.0, qkv_bias: bool = True) -> ViT1d:
    """ViT-Ti widths (192, 12 blocks, 3 heads), seed 4's ``ecgt_tiny``: 5,454,144 parameters at 12 leads, P 50."""
    return ViT1d(in_leads, patch_size, dim, depth, heads, mlp_ratio, qkv_bias)


def vit1d_small(in_leads: int = 12, patch_size: int = 50, dim: int = 384, depth: int = 12, heads: int = 6,
                mlp_ratio: float = 4.0, qkv_bias: bool = True) -> ViT1d:
    """ViT-S widths (384, 12 blocks, 6 heads): 21,525,120 parameters at 12 leads, P 50."""
    return ViT1d(in_leads, patch_size, dim, depth, heads, mlp_ratio, qkv_bias)


def vit1d_base(in_leads: int = 12, patch_size: int = 50, dim: int = 768, depth: int = 12, heads: int = 12,
               mlp_ratio: float = 4.0, qkv_bias: bool = True) -> ViT1d:
    """ViT-B widths (768, 12 blocks, 12 heads): 85,517,568 parameters at 12 leads, P 50."""
    return ViT1d(in_leads, patch_size, dim, depth, heads, mlp_ratio, qkv_bias)
