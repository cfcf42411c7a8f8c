"""Small autograd building blocks shared by the methods.

:func:`grad_reverse` is the gradient-reversal layer of Ganin & Lempitsky, "Unsupervised Domain
Adaptation by Backpropagation" (ICML 2015, section 3.2, eq. 13: ``R(x) = x`` forward,
``dR/dx = -I`` backward). Placed between a generator and a critic trained by one optimizer on one loss,
it makes the critic minimise the loss while everything upstream of the layer maximises it: the
adversarial viewmaker of Tamkin et al. 2021 as seed 1 trains it (:mod:`ecg_core.methods.viewmaker`).
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["GradReverse", "grad_reverse"]


class GradReverse(torch.autograd.Function):
    """Identity forward; the incoming gradient multiplied by ``-scale`` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = float(scale)
        # A view, not the tensor itself: autograd needs a distinct output to attach this node's backward.
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output * -ctx.scale, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``x`` unchanged; in the backward pass the gradient to ``x`` is ``-scale`` times the incoming one."""
    return GradReverse.apply(x, scale)
