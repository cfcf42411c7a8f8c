"""CLIP's symmetric contrastive loss between two modalities, with MECLIP's same-report handling.

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision" (ICML, arXiv
2103.00020), Figure 3: logits ``s_ij = exp(t) <a_i, b_j>`` between L2-normalised embeddings of the two
modalities, loss = mean of the cross-entropies of rows (a -> b) and columns (b -> a) with the diagonal as target.

Seed 4 (ECG-SSL, ``ssls/meclip/objective.py``, seed-methods.md 4.4) adds two modes for batches in which
several ECGs share a report (``id_N``, the report identity, e.g. a hash of the normalised text). With
``same_ij = [id_i == id_j]``, for an anchor row ``r`` with logits ``s_r.`` over the ``N`` columns::

    clip:                ell_r = -log exp(s_rr) / sum_j exp(s_rj)
    mutually_exclusive:  ell_r = -log exp(s_rr) / (exp(s_rr) + sum_{j: not same_rj} exp(s_rj))
    off_diagonal:        ell_r = 1/|P_r| sum_{p in P_r} -log exp(s_rp) / (exp(s_rp) + sum_{j: not same_rj} exp(s_rj)),
                         P_r = {p: same_rp} (r included)

i.e. mutually exclusive removes the other same-report pairs from the negatives (the seed sets their logits
to -1e9), and off-diagonal also counts each of them as a positive, with its own cross-entropy term in which
the other same-report entries are masked. The seed adds these terms unnormalised; here each anchor's terms
are averaged over its positives (SupCon's L_out normalisation, Khosla et al. 2020 eq. 2), so that an anchor
weighs the same whatever the number of duplicates of its report (with a plain sum, the very frequent normal
reports of PTB-XL would dominate). Without duplicates the three modes are equal.

The loss is the mean over the anchors ``rows`` (default: all ``N``) of ``(ell^{a->b} + ell^{b->a}) / 2``,
CLIP's average (the seed sums the two directions, a factor 2). Distributed use: gather ``a``, ``b`` and the
identities from all ranks and pass this rank's rows as ``rows``; summing over ranks the gradient of each
rank's mean gives the gradient of the global mean times the world size, which FSDP's averaging undoes.

Computed in float32. Masked logits are -1e9, not -inf, so that an anchor without negatives has loss 0 and
finite gradients (``logsumexp`` of only -inf entries has a NaN gradient).

Shapes: ``N`` gathered batch, ``R`` anchor rows, ``P`` embedding width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["CLIP_MODES", "clip_loss"]

CLIP_MODES = ("clip", "mutually_exclusive", "off_diagonal")
_MASKED = -1e9


def _direction(s_RN: torch.Tensor, rows_R: torch.Tensor, same_RN: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-anchor loss ``ell_R`` of one direction (see the module docstring)."""
    diag_RN = torch.zeros_like(same_RN)
    diag_RN[torch.arange(len(rows_R), device=rows_R.device), rows_R] = True
    if mode == "clip":
        negative_RN, positive_RN = ~diag_RN, diag_RN
    else:
        negative_RN = ~same_RN
        positive_RN = diag_RN if mode == "mutually_exclusive" else same_RN
    # -log exp(s_rp) / (exp(s_rp) + sum_neg exp(s_rj)) = softplus(logsumexp_neg(s_r.) - s_rp)
    lse_neg_R1 = torch.logsumexp(s_RN.masked_fill(~negative_RN, _MASKED), dim=1, keepdim=True)
    ell_RN = F.softplus(lse_neg_R1 - s_RN) * positive_RN
    return ell_RN.sum(dim=1) / positive_RN.sum(dim=1)


def clip_loss(a_NP: torch.Tensor, b_NP: torch.Tensor, logit_scale: torch.Tensor | float,
              id_N: torch.Tensor | None = None, mode: str = "clip",
              rows: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric CLIP loss of L2-normalised ``a_NP`` (e.g. ECG) and ``b_NP`` (text), paired by row.

    Args:
        a_NP, b_NP: embeddings of the two modalities, row ``i`` of each from the same sample (normalised here).
        logit_scale: the multiplier ``exp(t)`` of the cosine similarities (a tensor to learn it, or a float).
        id_N: int64 identity of each pair's report (equal ids = same report); needed by the two seed modes.
        mode: one of :data:`CLIP_MODES`.
        rows: indices of the anchor rows whose losses are averaged (this rank's rows); all when None.

    Returns:
        Scalar float32 loss.
    """
    if mode not in CLIP_MODES:
        raise ValueError(f"mode must be one of {CLIP_MODES}, got {mode!r}")
    if a_NP.shape != b_NP.shape or a_NP.dim() != 2:
        raise ValueError(f"a_NP and b_NP must be equal (N, P) matrices, got {tuple(a_NP.shape)}, {tuple(b_NP.shape)}")
    N = a_NP.shape[0]
    if mode != "clip" and id_N is None:
        raise ValueError(f"mode {mode!r} needs the report identities id_N")
    rows_R = torch.arange(N, device=a_NP.device) if rows is None else rows.to(a_NP.device)
    with torch.autocast(device_type=a_NP.device.type, enabled=False):
        a_NP = F.normalize(a_NP.float(), dim=1)
        b_NP = F.normalize(b_NP.float(), dim=1)
        scale = logit_scale.float() if torch.is_tensor(logit_scale) else float(logit_scale)
        if id_N is None:
            same_RN = torch.zeros(len(rows_R), N, dtype=torch.bool, device=a_NP.device)
        else:
            id_N = id_N.to(a_NP.device)
            same_RN = id_N[rows_R][:, None] == id_N[None, :]
        s_ab_RN = scale * a_NP[rows_R] @ b_NP.T   # anchor ECG, candidates all texts
        s_ba_RN = scale * b_NP[rows_R] @ a_NP.T   # anchor text, candidates all ECGs
        ell_R = (_direction(s_ab_RN, rows_R, same_RN, mode) + _direction(s_ba_RN, rows_R, same_RN, mode)) / 2
        return ell_R.mean()
