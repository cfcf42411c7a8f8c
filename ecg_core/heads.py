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
    Representations from Video", arXiv 2404.08471, section 4 and appendix: a cross-attention block with one
    learnable query token over the frozen encoder's tokens, its output added back to the query, a two-layer
    GELU MLP, a LayerNorm and a linear classifier), used here over the time steps of a CNN or the tokens of a
    ViT:

    ``q = query + MHA(query, LN(h), LN(h))``; ``q = q + MLP(LN(q))``; ``logits = Linear(LN(q))``.

    Pooling by attention is invariant to the order of the time steps (their positions are in the features,
    if anywhere); the attention weights of the last call are kept in ``last_attention`` (``(B, S)``, averaged
    over heads, detached; each row sums to 1).

    Initialisation: the query is truncated-normal (std 0.02, V-JEPA's ``query_tokens``); the attention has
    ``nn.MultiheadAttention``'s own initialisation and the linear layers PyTorch's default, the classifier
    included, as V-JEPA's ``AttentiveClassifier.linear``. The classifier is deliberately *not* zero-initialised:
    with zero weights the gradient that reaches the query, the attention and the MLP is zero until the
    classifier has moved, so the first steps would train a linear probe on the initial (random-query) pooling
    only; its default scale keeps the initial logits ``O(1)`` at any width (the input is LayerNorm'd).

    Args:
        in_dim: features ``D`` of the sequence (:func:`ecg_core.encoders.sequence_dim`).
        n_classes: logits ``C``.
        num_heads: attention heads; must divide ``in_dim``. ``None``: the largest of 8, 4, 2, 1 that does.
        mlp_ratio: hidden width of the residual MLP over ``in_dim`` (2 by default; V-JEPA uses 4). ``0``
            leaves the MLP out (attention pooling, LayerNorm, linear).
    """

    def __init__(self, in_dim: int, n_classes: int, num_heads: int | None = 4, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("n_classes", n_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if num_heads is None:
            num_heads = next(h for h in (8, 4, 2, 1) if in_dim % h == 0)
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be an integer >= 1, got {num_heads!r}")
        if in_dim % num_heads:
            raise ValueError(f"attention_heads ({num_heads}) must divide the encoder's sequence features ({in_dim})")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be a number >= 0, got {mlp_ratio!r}")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(in_dim)
        self.query = nn.Parameter(torch.zeros(1, 1, in_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.attention = nn.MultiheadAttention(in_dim, num_heads, batch_first=True)
        self.mlp: nn.Module | None = None
        if mlp_ratio > 0:
            hidden = max(1, int(in_dim * mlp_ratio))
            self.mlp = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(),
                                     nn.Linear(hidden, in_dim))
        self.out_norm = nn.LayerNorm(in_dim)
        self.classifier = nn.Linear(in_dim, n_classes)
        self.last_attention: torch.Tensor | None = None

    def forward(self, h_BSD: torch.Tensor) -> torch.Tensor:
        kv_BSD = self.norm(h_BSD)
        q_B1D = self.query.expand(h_BSD.shape[0], -1, -1)
        pooled_B1D, weights_B1S = self.attention(q_B1D, kv_BSD, kv_BSD, need_weights=True)
        self.last_attention = weights_B1S[:, 0].detach()
        z_BD = pooled_B1D[:, 0] + q_B1D[:, 0]
        if self.mlp is not None:
            z_BD = z_BD + self.mlp(z_BD)
        return self.classifier(self.out_norm(z_BD))
