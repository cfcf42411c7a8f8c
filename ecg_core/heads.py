"""Heads shared by the methods: the projection MLP of contrastive/self-distillation methods.

Shapes: ``B`` batch, ``D`` input features, ``P`` output features.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ProjectionHead"]


class ProjectionHead(nn.Module):
    """MLP ``in_dim -> hidden_dim -> ... -> out_dim`` (``num_layers`` linear layers), ``z_BD -> p_BP``.

    SimCLR's projection head ``g`` (Chen et al. 2020, section 2.1: "a MLP with one hidden layer";
    SimCLRv2, Chen et al. 2020b, arXiv 2006.10029, uses deeper ones with BatchNorm). Hidden layers are
    ``Linear -> [BatchNorm1d] -> ReLU`` (the Linear has no bias when BatchNorm follows: its shift would
    cancel); the last layer is a plain ``Linear``. With ``batch_norm=False`` and ``num_layers=2`` this is
    the seed's ``Projection`` (Mehari & Strodthoff: ``Linear(512, 512) -> ReLU -> Linear(512, out)``).
    ``num_layers=1`` is a single linear map.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2,
                 batch_norm: bool = True) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim),
                            ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, z_BD: torch.Tensor) -> torch.Tensor:
        return self.net(z_BD)
