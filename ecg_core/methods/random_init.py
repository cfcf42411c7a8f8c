"""Random-initialisation baseline: the encoder exactly as built from the seed, exported like a pretrained one.

The lower reference of every SSL comparison: Mehari & Strodthoff 2022 (seed 2, seed-methods.md 2.6,
"xresnet1d50, none (random init)": linear probe 0.721, finetune 0.924 macro AUROC on PTB-XL ``all``), and
the PTB-XL benchmark's from-scratch training (Strodthoff et al. 2021) when finetuned. Running it as a
"method" lets the grid's linear-probe and finetune jobs read it through the one path evaluation has,
:func:`ecg_core.checkpoint.load_encoder` on a pretraining run's checkpoint.

The "training" is one step whose loss is exactly 0 yet connected to the graph (so the loop's backward,
FSDP2's gradient reduction and the optimizer run as for any method): the encoder runs on the batch and
``loss = 0 * sum(z)``. Nothing moves: the gradients are zeros, and the recipe sets ``optim.lr: 0`` and
``optim.weight_decay: 0`` (AdamW's update and decoupled decay are both multiplied by the learning rate).
The encoder is kept in eval mode (see :meth:`RandomInit.train`) so that BatchNorm's running statistics,
which a train-mode forward would update, stay at their initial values too: the exported encoder is the
seeded initial encoder bit for bit.

Shapes: ``B`` local batch, ``L`` leads, ``T`` time, ``D`` representation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ecg_core.methods.base import Method

__all__ = ["RandomInit", "RandomInitConfig"]


@dataclass
class RandomInitConfig:
    """No hyper-parameters: ``method.params`` is empty."""


class RandomInit(Method):
    """The encoder at its random initialisation (see the module docstring)."""

    Config = RandomInitConfig

    def train(self, mode: bool = True) -> "RandomInit":
        """Set the mode as usual, but keep the encoder in eval mode: a train-mode forward would move the
        BatchNorm running statistics away from their initial values (the loop calls ``model.train()``)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        z_BD = self.encoder(batch["x"])
        # Each term is multiplied by 0 before summing, after nan_to_num (0 * inf is NaN, and the loop stops on
        # a non-finite loss), so the value is exactly 0; the gradients are exact zeros for the finite
        # activations of the loader's finite windows.
        loss = (torch.nan_to_num(z_BD.float(), nan=0.0, posinf=0.0, neginf=0.0) * 0.0).sum()
        return {"loss": loss}
