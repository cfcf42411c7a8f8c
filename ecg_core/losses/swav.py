"""SwAV's online codes (Sinkhorn-Knopp, computed across ranks) and its swapped-prediction loss.

Caron, Misra, Mairal, Goyal, Bojanowski, Joulin 2020, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments" (NeurIPS, arXiv 2006.09882).

Codes (section 3.1, eqs. 3-5; the paper's Algorithm 1 / ``distributed_sinkhorn`` of its reference code):
given the scores ``s = z^T c`` of ``B`` samples against ``K`` prototypes, the codes are the transport plan

    Q* = Diag(u) exp(s / epsilon) Diag(v)   (K x B)

whose rows sum to ``1/K`` (each prototype receives an equal share of the batch: the equal-partition
constraint that prevents collapse onto one prototype) and whose columns sum to ``1/B``. ``u`` and ``v``
come from a few alternating row/column normalisations (Sinkhorn-Knopp; 3 iterations in the paper). The
returned codes are ``B * Q*`` transposed (``B x K``), so each sample's code is a distribution over
prototypes. With ``R`` ranks the batch is the union of every rank's rows: the total mass and the row sums
(sums over the batch) are all-reduced, the column sums are per sample and stay local, and ``B`` is the
global batch. All of it runs without gradients (the codes are targets) and in float32 or wider.

Loss (eq. 1-2, "swapped prediction"): the code ``q`` of one view is predicted from another view ``v``
through ``p_v = softmax(z_v^T C / tau)``, ``l(z_v, q) = -sum_k q_k log p_v,k``. With ``V`` views of which the
first ``A`` have codes, each assigned view ``a`` is predicted from every other view, averaged over those
``V - 1`` views, then over the ``A`` assigned views and over the batch (the reference code's
``subloss / (sum(nmb_crops) - 1)`` and ``loss / len(crops_for_assign)``). The ECG seed (Mehari &
Strodthoff, ``custom_swav_bolts.py``) divides by one more than the number of terms (seed-methods.md
2.1); this module averages as the paper does.

Shapes: ``B`` local samples, ``K`` prototypes, ``V`` views, ``A`` assigned views (codes), ``R`` ranks.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ecg_core import distributed as D

__all__ = ["sinkhorn", "swapped_prediction_loss"]


def _all_reduce(t: torch.Tensor, op: Any = None) -> torch.Tensor:
    """In-place all-reduce (sum unless ``op``) over every rank; identity in a 1-rank world or without a group."""
    if D.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op is None else op)
    return t


@torch.no_grad()
def sinkhorn(scores_BK: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """SwAV codes of the local rows ``scores_BK``, equipartitioned over the batch of every rank.

    Args:
        scores_BK: prototype scores ``z^T c`` of this rank's ``B`` samples (cosine similarities in SwAV).
            Every rank calls this together (collective); ``B`` may differ between ranks.
        epsilon: entropic regularisation (0.05 in the paper); smaller gives harder codes.
        iterations: Sinkhorn-Knopp row/column normalisation rounds (3 in the paper).

    Returns:
        ``q_BK``: codes of the local samples, each row a distribution over the ``K`` prototypes (rows sum
        to 1); over all ranks, every prototype receives ``B_total / K`` of the mass after the row step of
        each iteration (exactly so before the final column step). No gradient; float32 (float64 stays).
    """
    if scores_BK.dim() != 2 or scores_BK.numel() == 0:
        raise ValueError(f"scores must be a non-empty (B, K), got shape {tuple(scores_BK.shape)}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    with torch.autocast(device_type=scores_BK.device.type, enabled=False):
        dtype = torch.promote_types(scores_BK.dtype, torch.float32)   # bf16 -> fp32; fp64 (tests) stays
        logits_KB = scores_BK.detach().to(dtype).T / epsilon
        K = logits_KB.shape[0]
        # Subtracting the global maximum changes nothing after the first normalisation (a common factor)
        # but keeps exp() finite for large scores (the paper's exp(s / 0.05) relies on |s| <= 1). The spread
        # of scores / epsilon must still stay within float32's exp range (~87; SwAV's cosines give 40):
        # beyond it whole rows underflow to 0 and the codes become NaN, as in the reference code.
        top = _all_reduce(logits_KB.max().reshape(1), dist.ReduceOp.MAX)
        Q_KB = torch.exp(logits_KB - top)
        B_total = _all_reduce(torch.tensor([float(Q_KB.shape[1])], dtype=dtype, device=Q_KB.device))
        Q_KB /= _all_reduce(Q_KB.sum().reshape(1))
        for _ in range(iterations):
            # Rows: each prototype's total over the global batch -> 1/K (equal partition).
            Q_KB /= _all_reduce(Q_KB.sum(dim=1, keepdim=True))
            Q_KB /= K
            # Columns: each sample's total -> 1/B_total (a sample is local, so no collective).
            Q_KB /= Q_KB.sum(dim=0, keepdim=True)
            Q_KB /= B_total
        return (Q_KB * B_total).T


def swapped_prediction_loss(scores_VBK: torch.Tensor, codes_ABK: torch.Tensor, temperature: float = 0.1
                            ) -> torch.Tensor:
    """SwAV's swapped prediction (eq. 1-2): the codes of each of the first ``A`` views predicted from the others.

    Args:
        scores_VBK: prototype scores of the ``V`` views of the ``B`` local samples (with gradient).
        codes_ABK: codes (targets, e.g. :func:`sinkhorn`) of views ``0 .. A-1``; ``1 <= A <= V``, ``V >= 2``.
        temperature: ``tau`` of the softmax over prototypes (0.1 in the paper).

    Returns:
        Scalar: mean over assigned views ``a`` of the mean over views ``v != a`` of the batch-mean
        cross-entropy ``-sum_k q_a,k log softmax(s_v / tau)_k``; float32 or wider (autocast off).
        Averaged over local samples: with FSDP's gradient averaging over ranks, ``R`` ranks of ``B``
        samples follow the gradient of the loss of all ``R B`` samples.
    """
    if scores_VBK.dim() != 3 or codes_ABK.dim() != 3:
        raise ValueError(f"scores must be (V, B, K) and codes (A, B, K), got {tuple(scores_VBK.shape)} "
                         f"and {tuple(codes_ABK.shape)}")
    V, A = scores_VBK.shape[0], codes_ABK.shape[0]
    if codes_ABK.shape[1:] != scores_VBK.shape[1:] or not 1 <= A <= V or V < 2:
        raise ValueError(f"need codes (A, B, K) for A <= V of the scores' views and V >= 2, got scores "
                         f"{tuple(scores_VBK.shape)} and codes {tuple(codes_ABK.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with torch.autocast(device_type=scores_VBK.device.type, enabled=False):
        dtype = torch.promote_types(scores_VBK.dtype, torch.float32)
        log_p_VBK = F.log_softmax(scores_VBK.to(dtype) / temperature, dim=2)
        codes_ABK = codes_ABK.detach().to(dtype)
        total = log_p_VBK.new_zeros(())
        for a in range(A):
            # Cross-entropy of code a against every other view's prediction, at once over views.
            ce_VB = -(codes_ABK[a].unsqueeze(0) * log_p_VBK).sum(dim=2)
            others_V = torch.arange(V, device=scores_VBK.device) != a
            total = total + ce_VB[others_V].mean()
        return total / A
