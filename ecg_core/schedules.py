"""Learning-rate and momentum schedules as pure functions of the global step.

DESIGN.md practice 4: a schedule holds no state, so a resumed run restores ``step`` and gets the same
values as an uninterrupted one (nanoGPT ``get_lr``; torchtitan ``lr_scheduler.py``, whose linear
warm-up ``(step + 1) / (warmup + 1)`` is used here so that step 0 already trains a little).
"""

from __future__ import annotations

import math
from typing import Callable

from torch.optim import Optimizer

__all__ = ["SCHEDULES", "lr_at", "cosine_ramp", "set_lr"]


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _linear(progress: float) -> float:
    return 1.0 - progress


def _constant(_progress: float) -> float:
    return 1.0


# Decay shape after warm-up: fraction of (base_lr - min_lr) left at ``progress`` in [0, 1].
SCHEDULES: dict[str, Callable[[float], float]] = {"cosine": _cosine, "linear": _linear, "constant": _constant}


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, schedule: str = "cosine",
          min_lr_ratio: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Linear warm-up from ``base_lr / (warmup_steps + 1)`` at step 0 to ``base_lr`` at ``warmup_steps``,
    then decay to ``min_lr_ratio * base_lr`` at ``total_steps`` following ``schedule`` ("cosine",
    "linear" or "constant", which stays at ``base_lr``); steps beyond ``total_steps`` keep the final
    value.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    decay_steps = total_steps - warmup_steps
    progress = 1.0 if decay_steps == 0 else min(1.0, (step - warmup_steps) / decay_steps)
    min_lr = base_lr * min_lr_ratio
    return min_lr + (base_lr - min_lr) * SCHEDULES[schedule](progress)


def cosine_ramp(step: int, total_steps: int, start: float, end: float) -> float:
    """``start`` at step 0 to ``end`` at ``total_steps`` along half a cosine, ``end`` afterwards.

    BYOL's target momentum ``tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2`` (Grill et al. 2020,
    section 3.2) is ``cosine_ramp(k, K, tau_base, 1.0)``; it also serves weight-decay or temperature ramps.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    progress = min(1.0, step / total_steps)
    return end + (start - end) * _cosine(progress)


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Set every parameter group's ``lr`` to ``lr`` times its ``lr_scale`` (default 1).

    ``lr_scale`` lets one schedule drive groups with different rates, e.g. a smaller encoder rate
    when finetuning.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
