"""BYOL's regression loss: mean squared error between L2-normalised prediction and target projection.

Grill et al. 2020, "Bootstrap Your Own Latent" (NeurIPS, arXiv 2006.07733), eq. 2:

    L(q, z') = || q / |q| - z' / |z'| ||_2^2 = 2 - 2 <q, z'> / (|q| |z'|),

averaged over the batch. The method symmetrises it over the two views (``L + L~``, section 3.1) and
stops the gradient through ``z'`` (the target network runs without autograd).

Per-sample loss: nothing to gather across ranks; FSDP's gradient averaging over ranks makes ``R`` ranks
of ``N`` samples follow the gradient of the mean over all ``R N`` samples.

Shapes: ``N`` samples, ``D`` projection features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["normalized_mse"]


def normalized_mse(p_ND: torch.Tensor, z_ND: torch.Tensor) -> torch.Tensor:
    """Mean over ``N`` of ``|| p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)`` (BYOL eq. 2), in [0, 4].

    Computed in float32 or wider with autocast off (cosine of bf16 vectors near 1 loses the signal).
    A zero vector normalises to zero (``F.normalize``'s eps), giving 2 for its row. Gradients flow into
    both arguments; pass a detached ``z`` for BYOL's stop-gradient.
    """
    if p_ND.shape != z_ND.shape or p_ND.dim() != 2:
        raise ValueError(f"p and z must both be (N, D), got {tuple(p_ND.shape)} and {tuple(z_ND.shape)}")
    with torch.autocast(device_type=p_ND.device.type, enabled=False):
        dtype = torch.promote_types(torch.promote_types(p_ND.dtype, z_ND.dtype), torch.float32)
        p_ND = F.normalize(p_ND.to(dtype), dim=1)
        z_ND = F.normalize(z_ND.to(dtype), dim=1)
        return (2.0 - 2.0 * (p_ND * z_ND).sum(dim=1)).mean()
