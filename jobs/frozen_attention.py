"""Frozen attention probe of a pretrained encoder (stage ``frozen_attention``).

The encoder is frozen (eval mode, no gradient); an attention-pooling head (:class:`ecg_core.heads.AttentionPoolHead`:
one learned query attending over the encoder's time steps or tokens, then a linear classifier; the
"attentive probe" of Bardes et al. 2024, V-JEPA) is trained on random windows of the label-fraction subset
for ``attention_steps`` steps at ``attention_lr``, validated every ``checkpoint_every`` steps and selected by
validation macro AUROC, exactly as finetuning is (:mod:`jobs.finetune`, which runs it): a linear probe sees
only the pooled embedding, this protocol lets the head choose where in the window to look without
changing the pretrained weights. Resumable; writes what :mod:`jobs.finetune` writes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from jobs import finetune
from jobs.config import EvalConfig

__all__ = ["run"]


def run(cfg: EvalConfig, run_dir: Path) -> None:
    """Train and score the attention probe of ``cfg.pretrain_dir``'s frozen encoder into ``run_dir``."""
    finetune.run(dataclasses.replace(cfg, protocol="frozen_attention"), run_dir)
