"""The Method protocol every self-supervised method implements (DESIGN.md, "Interfaces to keep stable").

A method is an ``nn.Module`` holding ``encoder`` (what evaluation exports: state keys ``encoder.*``) and
whatever else it trains (projector, predictor, teacher ...). The pretraining job builds it with
:func:`ecg_core.methods.build_method`, shards ``fsdp_blocks()`` and then the method itself with FSDP2,
and runs :func:`ecg_core.train_loop.train` with ``training_step`` as the step function and
``after_optimizer_step`` as the after-step hook.

Randomness: the augmentations of step ``s`` on rank ``r`` come from a generator seeded with a hash of
``(generator_seed, r, s)`` (:meth:`Method.step_generator`), created afresh at every step. A resumed run
therefore draws exactly the augmentations an uninterrupted one would have, with nothing to save in the
checkpoint, and ranks draw different ones.

Shapes: ``B`` batch, ``L`` leads, ``T`` time.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ecg_core import distributed as D

__all__ = ["Method", "seed_augmentations", "step_seed"]


def seed_augmentations() -> list[dict[str, Any]]:
    """RandomResizedCrop [0.5, 1] + TimeOut [0.2, 0.4]: the pretraining pair of Mehari & Strodthoff 2022
    (seed 2, the README's pretraining command), the default ``augmentations`` of the view-based methods."""
    return [{"name": "random_resized_crop", "crop_ratio_range": [0.5, 1.0]},
            {"name": "time_out", "crop_ratio_range": [0.2, 0.4]}]


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed mixing ``(seed, rank, step)`` (numpy's SeedSequence hash: nearby inputs give
    unrelated streams, unlike ``seed + step``, which would make step 1 of seed 0 replay step 0 of seed 1)."""
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, int(rank), int(step)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


class Method(nn.Module):
    """Base class of the SSL methods of :data:`ecg_core.methods.METHODS`.

    Subclasses set ``Config`` (their hyper-parameter dataclass, filled from ``method.params``) and
    implement :meth:`forward`; they may override :meth:`check_config`, :meth:`after_optimizer_step` and
    :meth:`fsdp_blocks`.

    Args:
        cfg: an instance of ``Config``.
        encoder: a module of :data:`ecg_core.encoders.ENCODERS` (``x_BLT -> z_BD``, ``out_dim``, ``blocks()``).
        window: samples per training window (the loader's ``data.window``).
        generator_seed: base seed of the per-step augmentation generators.
        data: the run's :class:`ecg_core.data.config.DataConfig` (``stores[i].path``, ``folds``, ...), stored
            as ``self.data_cfg``; :func:`~ecg_core.methods.build_method` passes it to methods whose
            ``__init__`` takes a ``data`` argument (those that read the stores themselves, e.g. the
            supervised baseline's labels). None when not given; SSL methods ignore it.
    """

    Config: ClassVar[type]

    def __init__(self, cfg: Any, encoder: nn.Module, *, window: int, generator_seed: int, data: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.window = int(window)
        self.generator_seed = int(generator_seed)
        self.data_cfg = data

    @classmethod
    def check_config(cls, cfg: Any, key_prefix: str = "method.params", window: int | None = None) -> None:
        """Value checks beyond types (``cfg`` is already a ``Config``); raise ``ConfigError`` naming
        ``<key_prefix>.<field>``. ``window`` is the training window when known."""

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """Loss (key ``loss``) and other scalars to log for one batch of the loader.

        Goes through ``self(...)``, i.e. ``nn.Module.__call__``, and not straight to :meth:`forward`:
        FSDP2 gathers the root's own parameters and sets up gradient reduction in hooks of the root's
        ``__call__``, which a direct method call would bypass.
        """
        return self(batch, step)

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_optimizer_step(self, step: int) -> None:
        """Called after each optimizer step (EMA/teacher/prototype updates); nothing by default."""

    def fsdp_blocks(self) -> list[nn.Module]:
        """Modules to ``fully_shard`` individually before the method itself: the encoder's blocks by default."""
        return list(self.encoder.blocks())

    def step_generator(self, step: int, device: torch.device) -> torch.Generator:
        """The augmentation generator of ``step`` on this rank, on ``device`` (CPU or CUDA)."""
        generator = torch.Generator(device=device)
        generator.manual_seed(step_seed(self.generator_seed, D.get_rank(), step))
        return generator

    def augmented_views(self, x_BLT: torch.Tensor, generator: torch.Generator, count: int = 2) -> torch.Tensor:
        """``count`` augmented views of every window, view-major ``(count * B, L, T)``: ``self.augment``
        (the method's :class:`ecg_core.transforms.Compose`) applied ``count`` times in turn, drawing from
        ``generator`` in that order. In float32 outside autocast (interpolation weights and noise levels are
        tiny numbers) and without autograd (nothing upstream of the views is trained)."""
        with torch.no_grad(), torch.autocast(device_type=x_BLT.device.type, enabled=False):
            x_BLT = x_BLT.float()
            return torch.cat([self.augment(x_BLT, generator) for _ in range(count)])
