"""Helpers of the method tests: recipes, the batch a method's ``training_step`` receives without a data store,
CPU training steps (plain and FSDP2-sharded), config errors, and a few checks that several method and encoder
test files share.

Shapes: ``B`` batch, ``L`` leads, ``T`` time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from ecg_core import distributed as D
from ecg_core.config import ConfigError, load_config
from ecg_core.methods import Method
from jobs.config import PretrainConfig

ROOT = Path(__file__).resolve().parents[2]

Batch = dict[str, torch.Tensor]


def recipe(name: str) -> Path:
    """The recipe of method ``name``: ``experiments/<name>.yaml``."""
    return ROOT / "experiments" / f"{name}.yaml"


def recipe_config(name: str, *overrides: str) -> PretrainConfig:
    """The recipe of method ``name`` with the dotted ``overrides`` applied in order (a test file's
    ``tiny_config`` is this with its CPU-cheap overrides first)."""
    return load_config(PretrainConfig, [recipe(name)], list(overrides))


def window_batch(B: int, T: int, seed: int = 0, *, L: int = 12, scale: float = 1.0,
                 start_dtype: torch.dtype = torch.float32) -> Batch:
    """What ``WindowLoader`` yields for ``B`` windows of ``L`` leads and ``T`` samples: ``x`` standard normal
    times ``scale`` from a generator seeded with ``seed`` (the only draw), every lead present, store 0,
    records ``0..B-1``."""
    g = torch.Generator().manual_seed(seed)
    return {"x": scale * torch.randn(B, L, T, generator=g), "lead_mask": torch.ones(B, L, dtype=torch.bool),
            "store": torch.zeros(B, dtype=torch.int64), "record": torch.arange(B),
            "start": torch.zeros(B, dtype=start_dtype)}


def config_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> ConfigError:
    """The ``ConfigError`` that ``fn(*args, **kwargs)`` raises (the test fails if it raises none)."""
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return info.value


def assert_scalars(out: Batch, keys: set[str] | None = None) -> None:
    """Every value of a ``training_step`` output is a scalar; with ``keys``, those are exactly its keys."""
    assert keys is None or set(out) == keys
    assert all(v.shape == () for v in out.values())


def train_steps(method: Method, batch_at: Callable[[int], Batch], steps: Iterable[int], *, lr: float = 1e-3,
                weight_decay: float = 0.01, optimizer: torch.optim.Optimizer | None = None,
                each: Callable[[int, Batch], None] | None = None) -> list[float]:
    """One step per ``step`` of ``steps`` as the training loop takes it: ``training_step(batch_at(step), step)``,
    backward, ``optimizer.step()`` and ``after_optimizer_step(step)``; then ``each(step, output)`` if given (a
    test's checks of the step). ``optimizer`` defaults to a new ``AdamW(lr, weight_decay)`` (torch's default
    decay). Returns the losses."""
    if optimizer is None:
        optimizer = torch.optim.AdamW(method.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    for step in steps:
        out = method.training_step(batch_at(step), step)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        method.after_optimizer_step(step)
        losses.append(out["loss"].item())
        if each is not None:
            each(step, out)
    return losses


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 ``DTensor`` (a collective); a plain tensor as is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded copies of ``module.state_dict()`` (FSDP2 parameters are DTensors)."""
    return {k: full(v).detach().clone() for k, v in module.state_dict().items()}


def plain_and_sharded(build: Callable[[], Method]) -> tuple[Method, Method]:
    """``build()`` twice after ``torch.manual_seed(0)``: as is, and FSDP2-sharded over its ``fsdp_blocks()``
    (needs a process group; every parameter must then be a ``DTensor``)."""
    torch.manual_seed(0)
    plain = build()
    torch.manual_seed(0)
    sharded = build()
    D.shard_model(sharded, sharded.fsdp_blocks())
    assert all(isinstance(p, DTensor) for p in sharded.parameters())
    return plain, sharded


def assert_step_depends_only_on_seed_and_step(method: Method, make_batch: Callable[[], Batch],
                                              other_generator_seed: int | None = None) -> Batch:
    """``training_step`` at step 5 gives the same loss whatever the global RNG state, and another at step 6 (and,
    with ``other_generator_seed``, at step 5 once ``method.generator_seed`` is set to it); returns the first
    step-5 output."""
    torch.manual_seed(1)
    out = method.training_step(make_batch(), 5)
    torch.manual_seed(2)                     # the global RNG state must not matter
    assert torch.equal(out["loss"], method.training_step(make_batch(), 5)["loss"])
    assert not torch.equal(out["loss"], method.training_step(make_batch(), 6)["loss"])
    if other_generator_seed is not None:
        method.generator_seed = other_generator_seed
        assert not torch.equal(out["loss"], method.training_step(make_batch(), 5)["loss"])
    return out


def assert_blocks_partition(encoder: nn.Module) -> None:
    """``encoder.blocks()`` are proper submodules that hold every parameter of the encoder exactly once."""
    blocks = encoder.blocks()
    submodules = set(encoder.modules())
    assert blocks and all(b in submodules and b is not encoder for b in blocks)
    ids = [id(p) for b in blocks for p in b.parameters()]
    assert len(ids) == len(set(ids)), "a parameter belongs to two blocks"
    assert set(ids) == {id(p) for p in encoder.parameters()}, "a parameter belongs to no block"
