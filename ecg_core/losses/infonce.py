"""InfoNCE of queries against keys, with the keys of every rank as candidates: MoCo v3's ``ctr``.

Oord et al. 2018 (CPC, arXiv 1807.03748) eq. 4; in the form of Chen, Xie, He 2021, "An Empirical Study
of Training Self-Supervised Vision Transformers" (MoCo v3, ICCV, arXiv 2104.02057), eq. 1 and
Algorithm 1: for the query ``q_n`` of sample ``n`` and the keys ``k`` of all samples of the global batch,

    L_q = -log( exp(q . k+ / tau) / sum_k exp(q . k / tau) ),

with ``q`` and ``k`` L2-normalised and ``k+`` the key of the same sample (another view). The loss is the
mean over the local queries. MoCo v3 multiplies it by ``2 tau`` (Algorithm 1, ``ctr``) to reduce the
loss's sensitivity to tau; that factor is the method's business (:mod:`ecg_core.methods.moco`).

Distributed: each rank holds ``N`` queries and their ``N`` keys. The keys of every rank are all-gathered
(rank ``r``'s rows come at ``r N ... r N + N - 1``), so the positive of local query ``n`` is column
``r N + n``, and the negatives are the other ``R N - 1`` keys of the global batch. MoCo's keys come from
the momentum encoder without autograd; for keys that do require grad the gather passes gradients back
to their rank (:func:`ecg_core.distributed.all_gather_with_grad`).

Shapes: ``N`` local samples, ``R`` ranks, ``M = R N`` gathered keys, ``D`` features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ecg_core import distributed as D

__all__ = ["info_nce"]


def info_nce(q_ND: torch.Tensor, k_ND: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of ``q_ND @ k_MD.T / temperature`` (both normalised) with the positives at the rank offset.

    Args:
        q_ND: the local queries (not necessarily normalised).
        k_ND: the local keys, row ``n`` the positive of query ``n``; same ``N`` on every rank.
        temperature: ``tau`` > 0.

    Returns:
        Scalar mean over the ``N`` local queries, in float32 or wider (autocast off: logits over a small
        tau lose too much precision in bf16). Between 0 and ``log(M)`` plus the margin by which
        negatives beat the positive.
    """
    if q_ND.shape != k_ND.shape or q_ND.dim() != 2:
        raise ValueError(f"q and k must both be (N, D), got {tuple(q_ND.shape)} and {tuple(k_ND.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    N = q_ND.shape[0]
    with torch.autocast(device_type=q_ND.device.type, enabled=False):
        dtype = torch.promote_types(torch.promote_types(q_ND.dtype, k_ND.dtype), torch.float32)
        q_ND = F.normalize(q_ND.to(dtype), dim=1)
        k_ND = F.normalize(k_ND.to(dtype), dim=1)
        k_MD = D.all_gather_with_grad(k_ND)
        logits_NM = q_ND @ k_MD.T / temperature
        positive_N = D.get_rank() * N + torch.arange(N, device=q_ND.device)
        return F.cross_entropy(logits_NM, positive_N)
