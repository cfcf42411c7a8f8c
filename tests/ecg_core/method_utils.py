"""Helpers of the method tests: the batch a method's ``training_step`` receives, without a data store.

Shapes: ``B`` batch, ``L`` leads, ``T`` time.
"""
from __future__ import annotations

import torch


def window_batch(B: int, T: int, seed: int = 0, *, L: int = 12,
                 start_dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """What ``WindowLoader`` yields for ``B`` windows of ``L`` leads and ``T`` samples: ``x`` standard normal
    from a generator seeded with ``seed`` (the only draw), every lead present, store 0, records ``0..B-1``."""
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(B, L, T, generator=g), "lead_mask": torch.ones(B, L, dtype=torch.bool),
            "store": torch.zeros(B, dtype=torch.int64), "record": torch.arange(B),
            "start": torch.zeros(B, dtype=start_dtype)}
