"""Process group, sharding, seeding and collectives: the one module that knows about ranks.

DESIGN.md practice 7: nothing else in ``ecg_core/`` or ``jobs/`` reads rank or world size, and nothing
reads ``SLURM_*``. The launcher side sets the standard torch.distributed variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) with submitit's
``TorchDistributedEnvironment().export()`` or torchrun; :func:`init_distributed` reads only those.
Without them it creates a 1-rank gloo group on an in-memory ``HashStore`` (no port, see
``../shared/reference/platform-facts.md``), so that collectives, FSDP2 and DCP run through the same
code path in a single process as on a cluster.

FSDP2 usage follows torchtitan (``torchtitan/models/*/parallelize.py``): ``fully_shard`` on every
block, then on the root; bf16 parameters with fp32 gradient reduction on GPU only. Measured on this
machine (platform-facts.md): FSDP2 + AdamW run on CPU with gloo, also under
``torch.use_deterministic_algorithms(True)``; ``fully_shard`` does not broadcast weights, hence
:func:`seed_everything` before the model is built.

Shapes: ``B`` local batch, ``R`` world size, ``*`` any trailing dimensions.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo", "init_distributed", "teardown", "info", "get_rank", "get_world_size", "is_main", "barrier",
    "broadcast_object", "all_gather_object", "all_ranks_true", "all_gather_with_grad", "shard_model",
    "autocast", "seed_everything", "set_deterministic",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the group size, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_INFO: DistInfo | None = None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(prefer_cuda: bool = True, timeout: timedelta | None = None) -> DistInfo:
    """Join (or create) the default process group and pick this process's device.

    Reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (and, for ``world_size > 1``, ``MASTER_ADDR``/
    ``MASTER_PORT`` through torch's ``env://``). Absent or ``WORLD_SIZE=1``: a 1-rank group on a
    ``dist.HashStore()``. NCCL on CUDA (one GPU per local rank), gloo on CPU. Calling it again while
    the group is up returns the same :class:`DistInfo`; :func:`teardown` ends the group.
    """
    global _INFO
    if _INFO is not None and dist.is_initialized():
        return _INFO
    if dist.is_initialized():
        raise RuntimeError("a default process group exists that init_distributed did not create; "
                           "call teardown() or destroy it first")
    rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
    if (rank is None) != (world_size is None):
        raise RuntimeError(f"RANK and WORLD_SIZE must be set together (RANK={rank}, WORLD_SIZE={world_size})")
    rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise RuntimeError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    local_rank = _env_int("LOCAL_RANK")

    use_cuda = prefer_cuda and torch.cuda.is_available()
    if use_cuda:
        # Without LOCAL_RANK (a hand-made env), assume ranks fill the node's GPUs in order.
        local_rank = local_rank if local_rank is not None else rank % torch.cuda.device_count()
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        local_rank = local_rank if local_rank is not None else rank
        device = torch.device("cpu")
        backend = "gloo"

    kwargs: dict[str, Any] = {"backend": backend, "rank": rank, "world_size": world_size}
    if timeout is not None:
        kwargs["timeout"] = timeout
    if use_cuda:
        kwargs["device_id"] = device   # eager NCCL communicator: errors surface here, not at the 1st collective
    if world_size == 1:
        kwargs["store"] = dist.HashStore()   # no port to pick, no rendezvous (platform-facts.md)
    else:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise RuntimeError(f"WORLD_SIZE={world_size} but {name} is not set: launch through submitit's "
                                   "TorchDistributedEnvironment or torchrun, which set it")
        kwargs["init_method"] = "env://"
    dist.init_process_group(**kwargs)
    _INFO = DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device, backend=backend)
    return _INFO


def teardown() -> None:
    """Destroy the default process group (if any), so a later :func:`init_distributed` starts afresh."""
    global _INFO
    if dist.is_initialized():
        dist.destroy_process_group()
    _INFO = None


def info() -> DistInfo:
    """The :class:`DistInfo` of the running group; raises if :func:`init_distributed` was not called."""
    if _INFO is None or not dist.is_initialized():
        raise RuntimeError("no process group: call ecg_core.distributed.init_distributed() first")
    return _INFO


def get_rank() -> int:
    """This process's rank; 0 without a process group (e.g. an evaluation script)."""
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of ranks; 1 without a process group."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and without a process group): the rank that logs and writes shared files."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for all ranks; a no-op without a process group."""
    if dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects); identity without a group."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """The list of every rank's ``obj``, in rank order."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo needs CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_ranks_true(flag: bool) -> bool:
    """True iff ``flag`` is true on every rank: lets ranks take the same branch after a local check."""
    if get_world_size() == 1:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns each rank the gradient of its own rows.

    Each rank's loss uses every rank's rows, so the gradient of the summed losses with respect to
    rank ``r``'s rows is the sum over ranks of the gradient slice ``r``: all-reduce, then slice
    (SimCLR's GatherLayer; lightly ``lightly/utils/dist.py``). Gloo has no reduce-scatter, which is why
    this is an all-reduce and not ``torch.distributed.nn.functional.all_gather``.
    """

    @staticmethod
    def forward(ctx: Any, x_B: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x_B = x_B.contiguous()
        parts = [torch.empty_like(x_B) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x_B)
        ctx.rank, ctx.batch = dist.get_rank(), x_B.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad_RB: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad_RB = grad_RB.contiguous()
        dist.all_reduce(grad_RB, op=dist.ReduceOp.SUM)
        return grad_RB[ctx.rank * ctx.batch:(ctx.rank + 1) * ctx.batch]


def all_gather_with_grad(x_B: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x_B`` (same shape on all ranks) into ``x_RB``, differentiably.

    Gradients reaching the result flow back to the local rows as the gradient of the *sum* of all
    ranks' losses (FSDP then averages parameter gradients over ranks). Identity in a 1-rank world.
    """
    if get_world_size() == 1:
        return x_B
    return _AllGatherWithGrad.apply(x_B)


def shard_model(model: nn.Module, blocks: list[nn.Module], mesh: Any = None,
                mixed_precision: bool = True) -> nn.Module:
    """Apply FSDP2 ``fully_shard`` to each of ``blocks`` and then to ``model`` (the root); returns ``model``.

    Blocks are the units whose parameters are gathered together (e.g. the residual stages of an
    encoder, a projector): memory holds one block's full parameters at a time. On CUDA with
    ``mixed_precision`` the parameters are cast to bf16 for compute and gradients are reduced in fp32
    (torchtitan's default policy); on CPU everything stays fp32 (bf16 matmuls are slow there and
    exactness of the CPU resume tests relies on fp32). Every rank must have built ``model`` with the
    same initial weights (:func:`seed_everything`) or load them afterwards.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized():
        raise RuntimeError("shard_model needs a process group: call init_distributed() first")
    if mesh is None:
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
        mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    kwargs: dict[str, Any] = {"mesh": mesh}
    root_kwargs: dict[str, Any] = {"mesh": mesh}
    if mixed_precision and mesh.device_type == "cuda":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        # The root receives the raw batch: keep it fp32 there so that data augmentations (which run in the
        # method's forward, before the blocks) see full-precision signals; each block casts its own input.
        root_kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                                        cast_forward_inputs=False)
    for block in blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **root_kwargs)
    return model


def autocast(dist_info: DistInfo, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (ops such as softmax and norms stay in fp32); a no-op on CPU."""
    if enabled and dist_info.device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _derived_seed(seed: int, rank: int) -> int:
    # SeedSequence mixes (seed, rank) so that rank streams are unrelated, unlike seed + rank, which
    # would make rank 1 of seed 0 replay rank 0 of seed 1.
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_everything(seed: int, rank: int | None = None) -> int:
    """Seed python ``random``, numpy's global generator and torch (CPU and all GPUs); returns the seed used.

    Call it twice: ``seed_everything(seed)`` before building the model, so every rank holds the same
    initial weights (FSDP2 does not broadcast them), and ``seed_everything(seed, rank)`` after, so
    that dropout and augmentations differ between ranks while staying reproducible per rank.
    """
    used = int(seed) if rank is None else _derived_seed(int(seed), int(rank))
    random.seed(used)
    np.random.seed(used % 2**32)   # numpy's legacy global seed takes 32 bits
    torch.manual_seed(used)        # also seeds every CUDA device
    return used


def set_deterministic() -> None:
    """Ask torch for deterministic kernels (errors on an op that has none), as the exact-resume tests need.

    ``CUBLAS_WORKSPACE_CONFIG`` must be set before cuBLAS starts for deterministic GEMMs on CUDA; an
    existing value is kept.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
