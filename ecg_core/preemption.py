"""The preemption flag: a signal handler sets it, the training loop acts on it at the next step boundary.

SLURM warns a job before its time limit or a preemption with a signal (``--signal=USR2@<delay>``, sent
to every task). Saving a sharded checkpoint is a collective operation, so it cannot happen inside the
signal handler of one rank at an arbitrary point of the step. Instead (DESIGN.md practice 6):

1. the handler (installed by :mod:`launcher.runner`) only calls :func:`request_stop`;
2. at every step boundary the loop asks :func:`stop_requested_anywhere` (one tiny all-reduce, so that all
   ranks stop at the same step even when the signal reaches them at different times);
3. the loop saves a checkpoint collectively and raises :class:`Preempted`;
4. the runner catches it and requeues the job, which resumes from that checkpoint.

Nothing here reads SLURM's environment: the seam is this flag.
"""
from __future__ import annotations

import threading

import torch
import torch.distributed as dist

__all__ = ["Preempted", "clear", "request_stop", "stop_requested", "stop_requested_anywhere"]

_STOP = threading.Event()


class Preempted(Exception):
    """Raised by a training loop after it saved the checkpoint of ``step`` because a stop was requested."""

    def __init__(self, step: int, checkpoint: str | None = None, resumed_from: int | None = None) -> None:
        self.step = step
        self.checkpoint = checkpoint
        self.resumed_from = resumed_from   # where this attempt started (None: step 0)
        where = f" (checkpoint {checkpoint})" if checkpoint else ""
        super().__init__(f"stopped at step {step} for preemption/time limit{where}")


def request_stop(*_signal_args: object) -> None:
    """Ask the running loop to checkpoint and stop; usable directly as a signal handler."""
    _STOP.set()


def stop_requested() -> bool:
    """Whether a stop was requested in this process."""
    return _STOP.is_set()


def clear() -> None:
    """Forget a stop request (a fresh job in the same process, tests)."""
    _STOP.clear()


def stop_requested_anywhere() -> bool:
    """Whether any rank was asked to stop (collective when a process group with several ranks is up)."""
    local = _STOP.is_set()
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
