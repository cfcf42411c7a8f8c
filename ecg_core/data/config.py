"""What a training job reads (:class:`DataConfig`), as plain dataclasses without heavy imports.

Kept apart from :mod:`ecg_core.data.loader` (which needs torch, zarr and pandas) so that the launcher can
validate configs and print ``--help`` without importing them. The loader re-exports both names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DataConfig", "StoreSource"]


@dataclass
class StoreSource:
    """One store of the training mixture."""

    path: str = "???"
    weight: float = 1.0               # relative share of the windows drawn from this store
    folds: list[int] = field(default_factory=list)   # only records of these folds (empty: all records)
    records: list[str] = field(default_factory=list)  # only these record ids (empty: all; with folds: both)
    exclude: list[str] = field(default_factory=list)  # never these record ids (the leakage guard's exclusions)


@dataclass
class DataConfig:
    """What a training job reads. Window length and block sizes are in samples at the stores' rate."""

    stores: list[StoreSource] = field(default_factory=list)
    window: int = 2500
    batch_size: int = 64
    normalize: str = "none"           # "none" or "per_lead" (zero mean, unit std per lead and window)
    windows_per_epoch: int = 0        # 0: one pass over the data (sum of eligible record lengths / window)
    block_len: int = 524288           # samples per block (a multiple of the store's chunk length is best)
    blocks_per_unit: int = 4          # blocks mixed in one unit (the shuffle buffer)
    num_workers: int = 0
    start_method: str = "fork"        # DataLoader worker start method: fork, spawn or forkserver
    prefetch_factor: int = 2
    seed: int = 0
    # Positive pairs for patient-contrastive methods (see ecg_core.data.loader): "none" (independent windows),
    # "patient" (each window followed by one from another record of its patient) or "adjacent" (each window
    # followed by the next non-overlapping window of its record).
    pairing: str = "none"
