"""Exponential moving average (EMA) of a network: the target/teacher of BYOL, MoCo v3 and JEPA-style methods.

After each optimizer step the target parameters ``xi`` follow the online parameters ``theta``:

    xi <- m xi + (1 - m) theta                                  (Grill et al. 2020, BYOL, section 3.1)

with the momentum ``m`` rising from ``base`` to ``final`` (usually 1) along half a cosine over the run:

    m_k = 1 - (1 - base) (cos(pi k / K) + 1) / 2                (BYOL section 3.2; MoCo v3 ``--moco-m-cos``)

:func:`momentum_at` is that schedule as a pure function of the step (nothing to checkpoint besides the
step, DESIGN.md practice 4), :func:`ema_update` the in-place update and :func:`make_target` the frozen
copy a method keeps as a submodule, so that the target weights are part of the method's state and
therefore of every DCP checkpoint.

FSDP2: when the method is sharded with ``fully_shard``, target and online parameters are ``DTensor`` s.
Each rank updates only its local shards (``DTensor.to_local()``: a view of the shard storage that FSDP2
all-gathers at the next forward), so the update needs no communication. That is exact because the
target and online networks are built alike and sharded alike (same block structure, hence the same
local shapes on every rank); :func:`ema_update` checks names and local shapes.

Buffers (batch-norm running statistics and counters) are *copied* from the online network, not
averaged: the target always runs in training mode, where batch norm normalises with the statistics of
the current batch, so its running statistics never enter a loss; copying keeps the target a function of
the online network's history alone, works for integer buffers (``num_batches_tracked``) where an average
would not, and is what the online network itself would use in evaluation mode.

Shapes: none (whole parameter tensors, or their local shards).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from ecg_core.schedules import cosine_ramp

__all__ = ["ema_update", "make_target", "momentum_at"]


def momentum_at(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """EMA momentum of step ``step`` of ``total_steps``: ``base`` at step 0, ``final`` at ``total_steps``
    and after, along half a cosine (BYOL's ``tau_k``, section 3.2; :func:`ecg_core.schedules.cosine_ramp`)."""
    for name, value in (("base", base), ("final", final)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} momentum must be in [0, 1], got {value}")
    return cosine_ramp(step, total_steps, base, final)


def make_target(online: nn.Module) -> nn.Module:
    """A deep copy of ``online`` whose parameters do not require grad (updated only by :func:`ema_update`).

    Call it before sharding: the copy then starts equal to the online network (BYOL and MoCo v3
    initialise the target as a copy) and is sharded like it.
    """
    target = copy.deepcopy(online)
    target.requires_grad_(False)
    return target


def _local(t: torch.Tensor) -> torch.Tensor:
    # FSDP2 parameters are DTensors whose local tensor is this rank's shard; updating it in place is
    # what the optimizer does too.
    return t.to_local() if isinstance(t, DTensor) else t


def _pairs(target: list[tuple[str, torch.Tensor]], online: list[tuple[str, torch.Tensor]],
           what: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if len(target) != len(online):
        raise ValueError(f"target has {len(target)} {what}, online {len(online)}: not the same architecture")
    targets, onlines = [], []
    for (t_name, t), (o_name, o) in zip(target, online):
        t_local, o_local = _local(t), _local(o)
        if t_name != o_name or t_local.shape != o_local.shape:
            raise ValueError(f"target {what[:-1]} {t_name} {tuple(t_local.shape)} does not match online "
                             f"{o_name} {tuple(o_local.shape)} (build and shard both networks alike)")
        targets.append(t_local)
        onlines.append(o_local)
    return targets, onlines


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place: every target parameter ``xi <- momentum * xi + (1 - momentum) * theta``; buffers copied.

    Works on plain tensors and on FSDP2 ``DTensor`` parameters (local shards). ``momentum = 1`` leaves
    the parameters untouched (bitwise); ``momentum = 0`` copies the online ones.

    Args:
        target: the EMA network (e.g. from :func:`make_target`).
        online: the trained network of the same architecture, sharded the same way.
        momentum: ``m`` in [0, 1], e.g. from :func:`momentum_at`.
    """
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    targets, onlines = _pairs(list(target.named_parameters()), list(online.named_parameters()), "parameters")
    if targets and momentum < 1.0:
        # lerp(xi, theta, 1 - m) = xi + (1 - m)(theta - xi): one fused pass over all tensors.
        torch._foreach_lerp_(targets, onlines, 1.0 - momentum)
    t_buffers, o_buffers = _pairs(list(target.named_buffers()), list(online.named_buffers()), "buffers")
    for t, o in zip(t_buffers, o_buffers):
        t.copy_(o)
