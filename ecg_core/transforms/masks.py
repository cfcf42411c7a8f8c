"""3KG's masking augmentations: a cyclic time window per lead, and whole leads.

B. Gopal et al., "3KG: Contrastive Learning of 12-Lead Electrocardiograms using Physiologically-Inspired
Augmentations", ML4H 2021 (arXiv 2106.04452), section 3.2, as coded in seed 1
(``vs:dataprocessing/transforms/random.py`` ``RandomTimeMask`` and ``RandomChannelMask``;
seed-methods.md 1.5). The seed loops over samples and leads with numpy's global RNG; here the masks are
drawn for the whole batch at once from the generator passed in, with the same distributions.

Shapes: ``B`` batch, ``L`` leads, ``T`` time.
"""
from __future__ import annotations

import torch

from ecg_core.transforms.ecg import Transform, TransformParamError, _rand, _real

__all__ = ["LeadMask", "TimeMask"]


def _ratio(name: str, value: object) -> float:
    ratio = _real(name, value, 0.0)
    if ratio > 1.0:
        raise TransformParamError(name, f"must be in [0, 1], got {value!r}")
    return ratio


class TimeMask(Transform):
    """Zero ``floor(ratio T)`` consecutive samples in each lead of each sample, independently, at a start
    uniform in ``0 .. T - 1``; a window running past the end continues at the start (wraps around).

    Seed: ``RandomTimeMask(p)``; ``ratio`` 0.5 = 3KG's benchmark setting (the kwantlin fork's
    ``create_3kg_aug``; the seed CLI default ``--tmask_p 0`` turns it off). ``ratio = 0`` is the identity.
    """

    def __init__(self, ratio: float = 0.5) -> None:
        super().__init__(ratio=ratio)
        self.ratio = _ratio("ratio", ratio)

    def mask(self, B: int, L: int, T: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """``mask_BLT``, True where the signal is zeroed (draws one start per sample and lead)."""
        n = int(self.ratio * T)
        start_BL = torch.minimum((_rand((B, L), generator, device) * T).long(), torch.tensor(T - 1, device=device))
        t_T = torch.arange(T, device=device)
        # Sample t is masked if it lies within n steps after the start, counting cyclically.
        return (t_T[None, None, :] - start_BL[:, :, None]) % T < n

    def apply(self, x_BLT, generator):
        if int(self.ratio * x_BLT.shape[-1]) == 0:
            return x_BLT
        mask_BLT = self.mask(*x_BLT.shape, generator, x_BLT.device)
        return x_BLT.masked_fill(mask_BLT, 0.0)


class LeadMask(Transform):
    """Zero ``floor(ratio L)`` whole leads per sample, chosen uniformly without replacement.

    Seed: ``RandomChannelMask(p)`` (defined there, not exposed on its CLI, so there is no seed default);
    ``ratio`` 0.25 (3 of 12 leads) is this project's choice. ``ratio = 0`` is the identity.
    """

    def __init__(self, ratio: float = 0.25) -> None:
        super().__init__(ratio=ratio)
        self.ratio = _ratio("ratio", ratio)

    def mask(self, B: int, L: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """``mask_BL``, True for the zeroed leads: those whose random key ranks among the ``k`` smallest."""
        k = int(self.ratio * L)
        keys_BL = _rand((B, L), generator, device)
        rank_BL = keys_BL.argsort(dim=1, stable=True).argsort(dim=1, stable=True)
        return rank_BL < k

    def apply(self, x_BLT, generator):
        B, L, _ = x_BLT.shape
        if int(self.ratio * L) == 0:
            return x_BLT
        mask_BL = self.mask(B, L, generator, x_BLT.device)
        return x_BLT.masked_fill(mask_BL[:, :, None], 0.0)
