"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR, with negatives from every rank.

Chen, Kornblith, Norouzi, Hinton 2020, "A Simple Framework for Contrastive Learning of Visual
Representations" (ICML, arXiv 2002.05709), eq. 1: for a positive pair ``(i, j)`` among the ``2N``
augmented views of a batch,

    l(i, j) = -log( exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) ),

``sim(u, v) = u.v / (|u| |v|)`` (cosine similarity), and the loss is the mean of ``l`` over all ``2N``
anchors (each view of each pair is an anchor once).

Distributed: each rank holds ``N`` local pairs. The projections of every rank are all-gathered
(:func:`ecg_core.distributed.all_gather_with_grad`), so each local anchor is contrasted with the
``2 R N - 2`` other views of the global batch, and the local loss is the mean over the ``2 N`` local
anchors. The gather's backward all-reduces gradients (the gradient of the *sum* of the ranks' losses),
and FSDP averages parameter gradients over ranks, so training with ``R`` ranks of ``N`` pairs follows the
gradient of the single-process loss on all ``R N`` pairs. The seed's version (Mehari & Strodthoff,
``custom_simclr_bolts.py``) subtracts ``e`` instead of ``exp(1 / tau)`` for the self-similarity, leaving
part of it in the denominator (seed-methods.md 2.1); here the self-similarity is masked out exactly.

Shapes: ``N`` local pairs, ``R`` ranks, ``M = 2 R N`` gathered views, ``D`` projection features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ecg_core import distributed as D

__all__ = ["nt_xent"]


def nt_xent(z1_ND: torch.Tensor, z2_ND: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent (eq. 1) of the local pairs ``(z1[n], z2[n])`` against the global batch.

    Args:
        z1_ND, z2_ND: projections of the two views of the ``N`` local samples (not necessarily
            normalised; the loss uses cosine similarity). Same ``N`` on every rank.
        temperature: ``tau`` > 0.

    Returns:
        Scalar mean over the ``2 N`` local anchors, computed in float32 or wider (autocast off: logits
        divided by a small ``tau`` lose too much precision in bf16).
    """
    if z1_ND.shape != z2_ND.shape or z1_ND.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (N, D), got {tuple(z1_ND.shape)} and {tuple(z2_ND.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    N = z1_ND.shape[0]
    rank, world = D.get_rank(), D.get_world_size()
    with torch.autocast(device_type=z1_ND.device.type, enabled=False):
        dtype = torch.promote_types(z1_ND.dtype, torch.float32)   # bf16 -> fp32; fp64 (tests) stays
        z1_ND = F.normalize(z1_ND.to(dtype), dim=1)
        z2_ND = F.normalize(z2_ND.to(dtype), dim=1)
        # One collective for both views (side by side), then global rows [view 1 of rank 0..R-1 |
        # view 2 of rank 0..R-1], each block N rows.
        both_RN2D = D.all_gather_with_grad(torch.cat([z1_ND, z2_ND], dim=1))
        dim = z1_ND.shape[1]
        all_MD = torch.cat([both_RN2D[:, :dim], both_RN2D[:, dim:]], dim=0)
        local_2ND = torch.cat([z1_ND, z2_ND], dim=0)
        logits_2NM = local_2ND @ all_MD.T / temperature

        n = torch.arange(N, device=z1_ND.device)
        view1_rows = rank * N + n                 # where the local view-1 rows sit among the gathered rows
        view2_rows = world * N + rank * N + n     # and the local view-2 rows
        self_2N = torch.cat([view1_rows, view2_rows])
        positive_2N = torch.cat([view2_rows, view1_rows])   # each view's partner is the other view
        # k != i in eq. 1: the anchor's similarity with itself is not a candidate (a mask comparison
        # rather than index_put, which has no deterministic CUDA kernel guarantee).
        columns_M = torch.arange(logits_2NM.shape[1], device=z1_ND.device)
        logits_2NM = logits_2NM.masked_fill(columns_M[None, :] == self_2N[:, None], float("-inf"))
        return F.cross_entropy(logits_2NM, positive_2N)
