"""InfoNCE of Contrastive Predictive Coding: predict ``z_{t+k}`` from ``c_t`` against negatives.

Oord, Li, Vinyals 2018, "Representation Learning with Contrastive Predictive Coding" (arXiv 1807.03748),
eq. 4: ``L_N = -E[ log f_k(x_{t+k}, c_t) / sum_{x_j in X} f_k(x_j, c_t) ]`` with the log-bilinear score
of eq. 3, ``log f_k(z, c_t) = z^T W_k c_t``; ``X`` holds the positive ``z_{t+k}`` and ``N`` negatives.
Here ``pred_BTF = W_k c_t`` is computed by the caller (:mod:`ecg_core.methods.cpc`), this module scores
it against the positive and the negatives and takes the cross-entropy of the positive.

Negatives follow the seed (Mehari & Strodthoff 2022, ``tmehari/ecg-selfsupervised``
``clinical_ts/cpc.py`` ``CPCModel.cpc_loss``; seed-methods.md section 2.1): for every ``(b, t)``, ``N``
positions drawn uniformly with replacement, either from the same sequence
(``--negatives-from-same-seq-only``, the README's run) or from every sequence of the (local) batch,
always skipping position ``t + k`` — in the batch mode the seed skips ``t + k`` in the other sequences
too, "for simplicity", and so does :func:`sample_cpc_negatives`. The positive is therefore never among
its own negatives; duplicates among the negatives (and other steps that happen to encode alike) are
allowed, as in the seed. Scores are plain dot products, no temperature or normalisation (seed and
paper). Per time step the loss is the batch-mean cross-entropy; the seed *sums* these over ``t``
(``time_reduction="sum"``), ``"mean"`` averages them (the scale Adam barely notices either way).

Shapes: ``B`` batch, ``S`` encoder steps, ``T = S - k`` steps that have a target ``k`` steps ahead,
``F`` features, ``N`` negatives, ``M = B * S`` flat positions.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["TIME_REDUCTIONS", "cpc_infonce", "cpc_infonce_step", "sample_cpc_negatives"]

TIME_REDUCTIONS = ("sum", "mean")


def sample_cpc_negatives(batch: int, steps: int, offset: int, num_negatives: int, generator: torch.Generator,
                         same_sequence: bool = True) -> torch.Tensor:
    """Negatives of every ``(b, t)``, ``t < steps - offset``, as flat positions ``b' * steps + s'`` (``[B, T, N]``).

    ``s'`` is uniform over the ``steps - 1`` positions other than ``t + offset``; ``b' = b`` with
    ``same_sequence``, else uniform over the batch (seed ``cpc_loss``). Drawn on ``generator``'s device.

    Raises:
        ValueError: ``offset`` not in ``[1, steps - 1]`` (no target, or no position left for negatives).
    """
    if not 1 <= offset <= steps - 1:
        raise ValueError(f"offset k={offset} needs 1 <= k <= steps - 1 (a target k steps ahead of some c_t), "
                         f"but the sequence has {steps} steps")
    if num_negatives < 1 or batch < 1:
        raise ValueError(f"need batch >= 1 and num_negatives >= 1, got {batch} and {num_negatives}")
    T = steps - offset
    device = generator.device
    shape = (batch, T, num_negatives)
    if same_sequence:
        s_BTN = torch.randint(0, steps - 1, shape, generator=generator, device=device)
        b_BTN = torch.arange(batch, device=device).view(batch, 1, 1).expand(shape)
    else:
        flat_BTN = torch.randint(0, batch * (steps - 1), shape, generator=generator, device=device)
        b_BTN, s_BTN = flat_BTN // (steps - 1), flat_BTN % (steps - 1)
    # s' in [0, steps - 2]: shift the ones at or after the positive's position up by one, which leaves
    # every position except t + offset equally likely.
    target_T = torch.arange(T, device=device) + offset
    s_BTN = s_BTN + (s_BTN >= target_T.view(1, T, 1)).long()
    return b_BTN * steps + s_BTN


def cpc_infonce_step(pred_BTF: torch.Tensor, z_BSF: torch.Tensor, offset: int, negatives_BTN: torch.Tensor, *,
                     same_sequence: bool = True, time_reduction: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE (eq. 4) of one offset ``k``: ``pred_BTF[b, t]`` should pick ``z_BSF[b, t + k]`` among the negatives.

    Args:
        pred_BTF: predictions ``W_k c_t`` for ``t = 0 .. S - k - 1``.
        z_BSF: encodings (positives and negatives come from here; gradients flow into them as in the seed).
        offset: ``k``.
        negatives_BTN: flat positions into ``z_BSF.reshape(B * S, F)`` (:func:`sample_cpc_negatives`).
        same_sequence: every negative of row ``b`` lies in sequence ``b``; scores then need only the
            ``[B, T, S]`` products within each sequence instead of ``[B, T, B * S]``.
        time_reduction: ``"sum"`` (seed) or ``"mean"`` over ``t`` of the batch-mean cross-entropy.

    Returns:
        ``(loss, accuracy)``: float32 scalars; accuracy (no gradient) is the fraction of ``(b, t)`` whose
        positive scores at least as high as every negative (the seed's logged ``acc``).
    """
    B, S, Fz = z_BSF.shape
    T = S - offset
    if pred_BTF.shape != (B, T, Fz) or negatives_BTN.shape[:2] != (B, T):
        raise ValueError(f"shapes: pred {tuple(pred_BTF.shape)} and negatives {tuple(negatives_BTN.shape)} "
                         f"must start with (B, S - k) = ({B}, {T}) for z {tuple(z_BSF.shape)} and k={offset}")
    if time_reduction not in TIME_REDUCTIONS:
        raise ValueError(f"time_reduction must be one of {TIME_REDUCTIONS}, got {time_reduction!r}")
    # Scores and the log-sum-exp in float32: unnormalised dot products of 512-d vectors overflow
    # bf16's 8-bit mantissa long before they overflow its range.
    with torch.autocast(device_type=z_BSF.device.type, enabled=False):
        pred_BTF, z_BSF = pred_BTF.float(), z_BSF.float()
        positive_BT = (pred_BTF * z_BSF[:, offset:]).sum(dim=-1)
        if same_sequence:
            local_BTN = negatives_BTN - (torch.arange(B, device=z_BSF.device) * S).view(B, 1, 1)
            scores_BTS = torch.bmm(pred_BTF, z_BSF.transpose(1, 2))
            negative_BTN = scores_BTS.gather(2, local_BTN)
        else:
            scores_BTM = torch.matmul(pred_BTF, z_BSF.reshape(B * S, Fz).t())
            negative_BTN = scores_BTM.gather(2, negatives_BTN)
        logits_BTC = torch.cat([positive_BT.unsqueeze(-1), negative_BTN], dim=-1)   # the positive is class 0
        ce_BT = torch.logsumexp(logits_BTC, dim=-1) - positive_BT
        per_step_T = ce_BT.mean(dim=0)
        loss = per_step_T.sum() if time_reduction == "sum" else per_step_T.mean()
        with torch.no_grad():
            accuracy = (positive_BT >= negative_BTN.amax(dim=-1)).float().mean()   # ties: seed argmax picks 0
    return loss, accuracy


def cpc_infonce(preds: Sequence[torch.Tensor], z_BSF: torch.Tensor, offsets: Sequence[int],
                negatives: Sequence[torch.Tensor], *, same_sequence: bool = True,
                time_reduction: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the offsets ``k`` of :func:`cpc_infonce_step` (Oord et al. sum eq. 4 over k = 1..K; the
    mean keeps the scale independent of K). ``preds[i]`` is ``pred_BTF`` of ``offsets[i]``, ``negatives[i]``
    its ``negatives_BTN``. Returns ``(loss, accuracy)``, both averaged over the offsets."""
    if not (len(preds) == len(offsets) == len(negatives)) or not offsets:
        raise ValueError(f"need one prediction and one negatives tensor per offset, got {len(preds)}, "
                         f"{len(negatives)} for offsets {list(offsets)}")
    losses, accuracies = zip(*(cpc_infonce_step(p, z_BSF, k, n, same_sequence=same_sequence,
                                                time_reduction=time_reduction)
                               for p, k, n in zip(preds, offsets, negatives)))
    return torch.stack(losses).mean(), torch.stack(accuracies).mean()
