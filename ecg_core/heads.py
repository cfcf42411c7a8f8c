"""Heads: the projection MLP of contrastive/self-distillation methods, the evaluation's attention-pooling probe.

Shapes: ``B`` batch, ``D`` input features, ``P`` output features.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["AttentionPoolHead", "ProjectionHead"]


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


class AttentionPoolHead(nn.Module):
    """Attention-pooling classifier over a sequence of frozen features, ``h_BSD -> logits_BC``.

    The attentive probe of V-JEPA (Bardes et al. 2024, "Revisiting Feature Prediction for Learning Visual
    Representations from Video", section 4: a cross-attention block with one learnable query token over the
    frozen encoder's tokens, then a linear classifier), used here over the time steps of a CNN or the tokens
    of a ViT: LayerNorm on the features, one learned query attending to them with ``num_heads`` heads
    (torch's ``nn.MultiheadAttention``), a residual MLP on the pooled vector, LayerNorm, linear layer.
    Pooling by attention is invariant to the order of the time steps (their positions are in the features);
    the attention weights of the last call are kept in ``last_attention`` (``(B, S)``, averaged over heads).
    """

    def __init__(self, in_dim: int, n_classes: int, num_heads: int = 4, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("n_classes", n_classes), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if in_dim % num_heads:
            raise ValueError(f"attention_heads ({num_heads}) must divide the encoder's sequence features ({in_dim})")
        self.norm = nn.LayerNorm(in_dim)
        self.query = nn.Parameter(torch.zeros(1, 1, in_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.attention = nn.MultiheadAttention(in_dim, num_heads, batch_first=True)
        hidden = max(1, int(in_dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, in_dim))
        self.out_norm = nn.LayerNorm(in_dim)
        self.classifier = nn.Linear(in_dim, n_classes)
        self.last_attention: torch.Tensor | None = None

    def forward(self, h_BSD: torch.Tensor) -> torch.Tensor:
        kv_BSD = self.norm(h_BSD)
        q_B1D = self.query.expand(h_BSD.shape[0], -1, -1)
        pooled_B1D, weights_B1S = self.attention(q_B1D, kv_BSD, kv_BSD, need_weights=True)
        self.last_attention = weights_B1S[:, 0].detach()
        z_BD = pooled_B1D[:, 0] + q_B1D[:, 0]
        z_BD = z_BD + self.mlp(z_BD)
        return self.classifier(self.out_norm(z_BD))
