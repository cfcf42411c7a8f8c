"""Self-supervised losses shared by the methods of :mod:`ecg_core.methods` (each tested against a naive
reference formula in ``tests/ecg_core/test_losses.py``)."""
from ecg_core.losses.byol import normalized_mse
from ecg_core.losses.infonce import info_nce
from ecg_core.losses.ntxent import nt_xent

__all__ = ["info_nce", "normalized_mse", "nt_xent"]
