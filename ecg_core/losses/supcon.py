"""Contrastive losses with several positives per anchor, given by labels (here: patient identity).

:func:`supcon_loss` -- Khosla et al. 2020, "Supervised Contrastive Learning" (NeurIPS, arXiv 2004.11362),
eq. 2 ("L_out", the variant the paper recommends): for anchor ``i`` of the views ``I`` of the batch,
``A(i) = I \\ {i}`` and ``P(i) = {p in A(i) : label_p = label_i}``,

    L_i = -1 / |P(i)| * sum_{p in P(i)} log( exp(z_i . z_p / tau) / sum_{a in A(i)} exp(z_i . z_a / tau) ),

with ``z`` L2-normalised, and the loss is the mean of ``L_i`` over the anchors. With the patient as label
this is the patient-contrastive objective "all ECGs of one patient are positives" (PCLR, Diamant et al.
2022, generalised from pairs to every same-patient view of the batch). An anchor without any positive
(``P(i)`` empty: its patient appears once in the global batch) has no defined ``L_i`` (eq. 2 divides by
``|P(i)| = 0``; the reference code returns NaN): such anchors are **excluded from the mean**, and when
no anchor of the global batch has a positive the loss is an exact, graph-connected 0.

:func:`clocs_loss` -- Kiyasseh, Zhu, Clifton 2021, "CLOCS: Contrastive Learning of Cardiac Signals
Across Space, Time, and Patients" (ICML, arXiv 2005.13249), the CMSC/CMLC objective: two views ``A``,
``B`` of each sample (for CMSC two adjacent non-overlapping segments of one recording); similarities
are taken only *across* views, ``s(i, k) = cos(zA_i, zB_k) / tau``, and every cross-view pair of the same
patient (``i = k`` and ``i != k`` with equal labels) is a positive:

    L_{A->B} = E_{(i, k): label_i = label_k} [ -log( exp s(i, k) / sum_j exp s(i, j) ) ],

and symmetrically ``L_{B->A}`` with ``s(k, i)`` normalised over the column; loss ``(L_{A->B} + L_{B->A}) / 2``.
The seed (``obtain_contrastive_loss`` of the CLOCS repository, trial ``CMSC``) averages four separately
normalised groups -- diagonal A->B, diagonal B->A, upper off-diagonal same-patient entries over row sums,
lower ones over column sums -- so the one same-instance pair weighs as much as all other same-patient
pairs together, and each off-diagonal pair enters in one direction only (its comment: "technically need
to add 1 more term for symmetry"). Here every positive pair counts once in each direction, the paper's
expectation over positive pairs; without repeated patients in the batch both agree exactly.

Distributed: the local projections and labels are all-gathered (:func:`ecg_core.distributed.all_gather_with_grad`;
labels are integers, gathered without gradient), so local anchors see positives and negatives of every
rank. Each rank returns ``R * (sum of its anchors' terms) / (number of terms in the global batch)``, counted
from the gathered labels: the mean over ranks (what FSDP's gradient averaging follows) is the loss of the
global batch even when ranks hold different numbers of anchors with positives. With balanced pairs
(every local anchor has a positive, as the paired loader gives) this is exactly the local mean.

Shapes: ``N`` local views (rows), ``R`` ranks, ``M = R N`` gathered views, ``D`` projection features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ecg_core import distributed as D

__all__ = ["clocs_loss", "supcon_loss"]


def _check(temperature: float, labels_N: torch.Tensor, n: int) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if labels_N.shape != (n,) or labels_N.dtype.is_floating_point or labels_N.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of shape ({n},), got {labels_N.dtype} "
                         f"{tuple(labels_N.shape)}")


def _group_sizes(labels_M: torch.Tensor) -> torch.Tensor:
    """For each gathered view, how many gathered views (itself included) share its label."""
    _, inverse_M, counts = torch.unique(labels_M, return_inverse=True, return_counts=True)
    return counts[inverse_M]


def supcon_loss(z_ND: torch.Tensor, labels_N: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon ``L_out`` (Khosla et al. 2020, eq. 2) of the local views against the global batch.

    Args:
        z_ND: projections of the ``N`` local views (not necessarily normalised). Same ``N`` on every rank.
        labels_N: integer labels (e.g. patient codes); views with equal labels are positives.
        temperature: ``tau`` > 0.

    Returns:
        Scalar: the mean of ``L_i`` over the anchors having at least one positive (see the module
        docstring for the rank scaling), computed in float32 or wider with autocast off.
    """
    if z_ND.dim() != 2:
        raise ValueError(f"z must be (N, D), got {tuple(z_ND.shape)}")
    N = z_ND.shape[0]
    _check(temperature, labels_N, N)
    rank, world = D.get_rank(), D.get_world_size()
    with torch.autocast(device_type=z_ND.device.type, enabled=False):
        dtype = torch.promote_types(z_ND.dtype, torch.float32)   # bf16 -> fp32; fp64 (tests) stays
        z_ND = F.normalize(z_ND.to(dtype), dim=1)
        all_MD = D.all_gather_with_grad(z_ND)
        labels_M = D.all_gather_with_grad(labels_N.to(z_ND.device))   # integers: no gradient flows
        logits_NM = z_ND @ all_MD.T / temperature
        columns_M = torch.arange(all_MD.shape[0], device=z_ND.device)
        self_NM = columns_M[None, :] == (rank * N + torch.arange(N, device=z_ND.device))[:, None]
        # a in A(i): every view but the anchor itself (masked, so log-softmax runs over A(i) only).
        log_prob_NM = torch.log_softmax(logits_NM.masked_fill(self_NM, float("-inf")), dim=1)
        positive_NM = (labels_N.to(z_ND.device)[:, None] == labels_M[None, :]) & ~self_NM
        n_positive_N = positive_NM.sum(dim=1)
        # masked_fill, not a product: the anchor's own column holds -inf, and -inf * 0 is NaN.
        mean_log_prob_N = log_prob_NM.masked_fill(~positive_NM, 0.0).sum(dim=1) / n_positive_N.clamp_min(1)
        has_positive_N = n_positive_N > 0
        n_anchors = int((_group_sizes(labels_M) > 1).sum())   # anchors with a positive, over all ranks
        if n_anchors == 0:   # the same on every rank: all take this branch
            return z_ND.sum() * 0.0
        return -(mean_log_prob_N * has_positive_N).sum() * world / n_anchors


def clocs_loss(zA_ND: torch.Tensor, zB_ND: torch.Tensor, labels_N: torch.Tensor, temperature: float) -> torch.Tensor:
    """CLOCS CMSC loss (Kiyasseh et al. 2021; see the module docstring) of the local pairs ``(zA[n], zB[n])``.

    Args:
        zA_ND, zB_ND: projections of the two views (e.g. adjacent segments) of the ``N`` local samples.
        labels_N: integer patient codes; every cross-view pair with equal labels is a positive (the
            sample's own pair always is).
        temperature: ``tau`` > 0 (the seed hard-codes 0.1).

    Returns:
        Scalar mean over all positive cross-view pairs, both directions, in float32 or wider.
    """
    if zA_ND.shape != zB_ND.shape or zA_ND.dim() != 2:
        raise ValueError(f"zA and zB must both be (N, D), got {tuple(zA_ND.shape)} and {tuple(zB_ND.shape)}")
    N = zA_ND.shape[0]
    _check(temperature, labels_N, N)
    world = D.get_world_size()
    with torch.autocast(device_type=zA_ND.device.type, enabled=False):
        dtype = torch.promote_types(zA_ND.dtype, torch.float32)
        zA_ND = F.normalize(zA_ND.to(dtype), dim=1)
        zB_ND = F.normalize(zB_ND.to(dtype), dim=1)
        both_M2D = D.all_gather_with_grad(torch.cat([zA_ND, zB_ND], dim=1))   # one collective for both views
        dim = zA_ND.shape[1]
        allA_MD, allB_MD = both_M2D[:, :dim], both_M2D[:, dim:]
        labels_N = labels_N.to(zA_ND.device)
        labels_M = D.all_gather_with_grad(labels_N)
        positive_NM = labels_N[:, None] == labels_M[None, :]
        # A -> B: local A rows against every B column (normalised over the row); B -> A likewise (the
        # seed's column sums of the same matrix).
        log_prob_ab_NM = torch.log_softmax(zA_ND @ allB_MD.T / temperature, dim=1)
        log_prob_ba_NM = torch.log_softmax(zB_ND @ allA_MD.T / temperature, dim=1)
        total = (log_prob_ab_NM + log_prob_ba_NM).masked_fill(~positive_NM, 0.0).sum()
        n_pairs = int(_group_sizes(labels_M).sum())   # positive (i, k) pairs of the global batch, one direction
        return -total * world / (2 * n_pairs)
