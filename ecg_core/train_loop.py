"""The one training loop every job with an optimizer uses (SSL pretraining of every method, finetuning).

What differs between methods lives in ``step_fn`` (forward + loss) and ``after_step`` (EMA/teacher
updates); the loop owns what must be identical everywhere (DESIGN.md practice 4, torchtitan's
``Trainer.train``, nanoGPT's ``get_lr``):

- resume: the newest loadable checkpoint of ``run_dir`` restores model, optimizer, sampler position and
  per-rank RNG (:class:`ecg_core.checkpoint.Checkpointer`); the learning rate is a pure function of the
  step, so nothing else needs restoring. A damaged newest checkpoint falls back to the previous one with a
  warning; checkpoints that exist but all fail to load raise (never a silent restart at step 0).
- one step: lr from ``lr_fn(step)`` -> ``step_fn`` under bf16 autocast on GPU -> non-finite check on every
  rank (:func:`ecg_core.checkpoint.assert_finite`: a diverged state is never saved) -> backward ->
  gradient clipping -> optimizer step -> ``after_step``.
- checkpoints every ``checkpoint_every`` steps and at the end, and at the next step boundary after a
  preemption/time-limit signal (:mod:`ecg_core.preemption`), after which :class:`Preempted` is raised.
- logging: ``loss`` and every other scalar ``step_fn`` returns, the learning rate, the gradient norm and
  the throughput (samples/s over all ranks) to the tracker every ``log_every`` steps; a progress bar on
  rank 0.

Shapes: none here; batches are whatever the loader yields and ``step_fn`` consumes.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from tqdm import tqdm

from ecg_core import distributed as D
from ecg_core.checkpoint import Checkpointer, assert_finite
from ecg_core.preemption import Preempted, stop_requested_anywhere
from ecg_core.schedules import set_lr

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    """How a call to :func:`train` ended."""

    step: int                     # steps done in all (== total_steps unless preempted)
    resumed_from: Optional[int]   # checkpoint step this call resumed from (None: started at 0)
    samples_seen: int             # samples processed by all ranks in this call
    wall_s: float                 # seconds spent in the loop in this call
    samples_per_s: float          # samples_seen / wall_s
    checkpoint: Optional[str]     # the last checkpoint written


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict) and "x" in batch:
        return int(batch["x"].shape[0])
    if isinstance(batch, (list, tuple)) and batch and hasattr(batch[0], "shape"):
        return int(batch[0].shape[0])
    return 0


def _to_device(batch: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return batch
    if isinstance(batch, dict):
        return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    return batch


def _scalar(value: torch.Tensor | float) -> float:
    return float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)


def _grad_norm(model: nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    # clip_grad_norm_ handles FSDP2's DTensor gradients (the norm is reduced over the mesh); with
    # max_norm = inf it only measures.
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf, foreach=True)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[Any],
    step_fn: Callable[[Any, int], dict[str, torch.Tensor]],
    *,
    run_dir: str | os.PathLike[str],
    total_steps: int,
    lr_fn: Callable[[int], float],
    grad_clip: float = 0.0,
    checkpoint_every: int,
    keep_checkpoints: int = 3,
    config_yaml: str,
    tracker: Any = None,
    log_every: int = 10,
    after_step: Optional[Callable[[int], None]] = None,
    desc: str = "train",
    autocast: bool = True,
) -> TrainResult:
    """Train ``model`` for ``total_steps`` optimizer steps in all, resuming from ``run_dir`` if it holds a
    checkpoint; collective (every rank calls it).

    Args:
        model: the module whose state is checkpointed (already on its device, FSDP2-sharded or not).
        optimizer: its optimizer; a param group's ``lr_scale`` multiplies the scheduled lr.
        loader: endless iterable of batches with ``state_dict()``/``load_state_dict()``
            (:class:`ecg_core.data.loader.WindowLoader`).
        step_fn: ``step_fn(batch, step) -> {"loss": tensor, <other scalars>}``; batch tensors are moved
            to the device first.
        run_dir: the job's run directory (checkpoints in ``<run_dir>/checkpoints``).
        total_steps: the step count to reach.
        lr_fn: learning rate of step ``step`` (pure; e.g. ``ecg_core.schedules.lr_at``).
        grad_clip: max global gradient norm (0: no clipping; the norm is still logged).
        checkpoint_every: steps between checkpoints (a final one is always written).
        keep_checkpoints: how many checkpoints to keep.
        config_yaml: the resolved config, stored in every checkpoint.
        tracker: an :class:`ecg_core.tracking.Tracker` (``log(metrics, step)``; optional ``rewind(step)``
            is called after a resume so repeated steps are not logged twice), or None.
        log_every: steps between log lines.
        after_step: called with the finished step's index after each optimizer step (EMA updates).
        desc: progress-bar label.
        autocast: bf16 autocast on GPU (no effect on CPU).

    Raises:
        Preempted: a stop was requested (signal); the checkpoint of the current step was written first.
        NonFiniteLossError: the loss became NaN/inf on some rank; nothing of that state was saved.
        CheckpointError: checkpoints exist but none can be loaded.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    info = D.info()
    checkpointer = Checkpointer(run_dir, keep=keep_checkpoints)
    restored = checkpointer.load(model, optimizer)
    step, resumed_from = 0, None
    if restored is not None:
        step = resumed_from = int(restored["step"])
        loader.load_state_dict(restored["sampler_state"])  # type: ignore[attr-defined]
        if tracker is not None and hasattr(tracker, "rewind"):
            tracker.rewind(step)
    last_ckpt: Optional[str] = str(restored["path"]) if restored is not None else None
    saved_step = step if restored is not None else -1

    def save(at: int) -> str:
        path = checkpointer.save(at, model, optimizer, {"step": at}, loader.state_dict(),  # type: ignore[attr-defined]
                                 config_yaml)
        return str(path)

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc=desc, unit="step", disable=not info.is_main,
               dynamic_ncols=True, file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    start = time.perf_counter()
    window_t, window_samples, samples = start, 0, 0
    iterator = iter(loader)
    try:
        while step < total_steps:
            if stop_requested_anywhere():
                if saved_step != step:
                    last_ckpt = save(step)
                    saved_step = step
                raise Preempted(step, last_ckpt, resumed_from)
            batch = _to_device(next(iterator), info.device)
            lr = lr_fn(step)
            set_lr(optimizer, lr)
            with D.autocast(info, enabled=autocast):
                out = step_fn(batch, step)
            loss = out["loss"]
            assert_finite(loss, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = _grad_norm(model, grad_clip)
            optimizer.step()
            if after_step is not None:
                after_step(step)
            step += 1
            n = _batch_size(batch) * info.world_size
            samples += n
            window_samples += n
            if step % log_every == 0 or step == total_steps:
                now = time.perf_counter()
                rate = window_samples / max(now - window_t, 1e-9)
                metrics = {k: _scalar(v) for k, v in out.items()}
                metrics.update(lr=lr, grad_norm=grad_norm, samples_per_s=rate)
                if tracker is not None:
                    tracker.log(metrics, step=step)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", samples_s=f"{rate:.0f}", refresh=False)
                window_t, window_samples = now, 0
            bar.update(1)
            if step % checkpoint_every == 0 or step == total_steps:
                saving = time.perf_counter()
                last_ckpt = save(step)
                saved_step = step
                window_t += time.perf_counter() - saving   # throughput counts training time, not saving
    finally:
        bar.close()
        close = getattr(iterator, "close", None)
        if close is not None:
            close()   # stop the loader's reader threads/workers now
    wall = time.perf_counter() - start
    return TrainResult(step=step, resumed_from=resumed_from, samples_seen=samples, wall_s=wall,
                       samples_per_s=samples / max(wall, 1e-9), checkpoint=last_ckpt)
