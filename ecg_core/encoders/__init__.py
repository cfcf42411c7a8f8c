"""Encoders: name -> builder, each mapping an ECG batch ``x_BLT`` to a representation ``z_BD``.

Every builder is called as ``ENCODERS[name](in_leads=12, **params)`` and returns an ``nn.Module`` with

- ``forward(x_BLT) -> z_BD`` (float32 input in mV or normalised; any length the network can pool),
- ``out_dim: int`` (``D``),
- ``blocks() -> list[nn.Module]``: the sub-modules to shard individually with FSDP2 ``fully_shard``
  before the root (:func:`ecg_core.distributed.shard_model`); none of them returns a view of its input;
- ``sequence(x_BLT) -> h_BSD`` and ``sequence_dim: int`` (``D`` of ``h``): the ``S`` time steps or tokens
  right before the global pooling of ``forward``, so that ``forward`` is a pooling of ``sequence`` over
  ``S`` (what the ``frozen_attention`` evaluation pools with a trained
  :class:`ecg_core.heads.AttentionPoolHead` instead). Built-in encoders:

  - xresnet1d*, resnet1d*: the last stage's output ``h_BCT`` transposed; ``forward`` is its mean over time,
    with ``pool="concat"`` concatenated with its max (``out_dim = 2 * sequence_dim``);
  - pclr_cnn: the activated last unit (after ``out_norm``); ``forward`` is its mean;
  - seed_cnn: the last block's output; with ``per_lead`` the per-lead sequences averaged over the leads at
    every step; ``forward`` is its mean (up to rounding, see :class:`~ecg_core.encoders.seed_cnns.SeedCNN`);
  - vit1d_*: the final (LayerNorm'd) patch tokens, ``S = T / patch_size``; ``forward`` is their mean;
  - image_vit_*: the final tokens of the rendered image's patches (row-major), ``S = (image_size /
    patch_size)^2`` whatever ``T``; ``forward`` is their mean;
  - cpc_encoder: the context states ``c_t`` of ``g_ar``; ``forward`` is their last step, mean, or mean, max
    and last step concatenated (``pool``: ``"last"``, ``"mean"``, ``"concat"``, ``out_dim = 3 * sequence_dim``).

  Both ``sequence`` and ``sequence_dim`` or neither (:func:`has_sequence`): an encoder without them (a user's
  plug-in) still works in the probe as a sequence of one step, its ``forward`` output
  (:func:`encoder_sequence`, :func:`sequence_dim`), with a warning.

The registry is a plain dict (DESIGN.md practice 2): no decorators, nothing registers at import.
A grid/recipe names an encoder as ``encoder: {name: xresnet1d50, params: {base_width: 32}}``
(:class:`jobs.config.EncoderConfig`); :func:`validate_encoder` checks it at ``--dry-run`` time and
:func:`build_encoder` builds it.

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``S`` time steps or tokens, ``D`` features.
"""
from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ecg_core.config import ConfigError
from ecg_core.encoders.cpc import cpc_encoder
from ecg_core.encoders.resnet1d import resnet1d18, resnet1d34
from ecg_core.encoders.seed_cnns import pclr_cnn, seed_cnn
from ecg_core.encoders.vit1d import vit1d_base, vit1d_small, vit1d_tiny
from ecg_core.encoders.vit2d import image_vit_base, image_vit_tiny
from ecg_core.encoders.xresnet1d import xresnet1d18, xresnet1d34, xresnet1d50, xresnet1d50_seed, xresnet1d101

__all__ = ["ENCODERS", "build_encoder", "count_parameters", "encoder_sequence", "has_sequence", "sequence_dim",
           "validate_encoder"]

ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "xresnet1d18": xresnet1d18,
    "xresnet1d34": xresnet1d34,
    "xresnet1d50": xresnet1d50,
    "xresnet1d101": xresnet1d101,
    "xresnet1d50_seed": xresnet1d50_seed,
    "cpc_encoder": cpc_encoder,
    "vit1d_tiny": vit1d_tiny,
    "vit1d_small": vit1d_small,
    "vit1d_base": vit1d_base,
    "image_vit_tiny": image_vit_tiny,
    "image_vit_base": image_vit_base,
    "resnet1d18": resnet1d18,
    "resnet1d34": resnet1d34,
    "pclr_cnn": pclr_cnn,
    "seed_cnn": seed_cnn,
}
"""Encoder name -> builder ``(in_leads=12, **params) -> nn.Module`` (see the module docstring)."""


def has_sequence(encoder: nn.Module) -> bool:
    """Whether ``encoder`` provides the sequence protocol: a ``sequence`` method and an int ``sequence_dim``.

    Raises:
        TypeError: it has one of the two without the other (the probe would be built for the wrong width).
    """
    method = getattr(encoder, "sequence", None)
    has_method = callable(method) and not isinstance(method, nn.Module)   # a sub-module named "sequence" is not it
    dim = getattr(encoder, "sequence_dim", None)
    has_dim = isinstance(dim, int) and not isinstance(dim, bool)
    if has_method != has_dim:
        raise TypeError(f"{type(encoder).__name__} has {'sequence()' if has_method else 'sequence_dim'} but not "
                        f"{'sequence_dim' if has_method else 'sequence()'}: an encoder provides both or neither")
    return has_method


def encoder_sequence(encoder: nn.Module, x_BLT: torch.Tensor) -> torch.Tensor:
    """``h_BSD`` of ``encoder``: its ``sequence(x_BLT)``, or ``encoder(x_BLT)`` as a sequence of one step
    (``(B, 1, out_dim)``) when it has none (an encoder plugged in from elsewhere), with a ``RuntimeWarning``
    once per class. ``D`` is :func:`sequence_dim`.

    ``sequence`` is called as a method, not through ``nn.Module.__call__``: hooks registered on ``encoder``
    itself do not run (those of its sub-modules, e.g. FSDP2's on :meth:`blocks`, do)."""
    if has_sequence(encoder):
        return encoder.sequence(x_BLT)
    if type(encoder) not in _WARNED:
        _WARNED.add(type(encoder))
        warnings.warn(f"{type(encoder).__name__} has no sequence(): the attention probe sees its pooled output as a "
                      "sequence of one step", RuntimeWarning, stacklevel=2)
    return encoder(x_BLT)[:, None, :]


def sequence_dim(encoder: nn.Module) -> int:
    """The feature size ``D`` of :func:`encoder_sequence`: ``encoder.sequence_dim``, or ``encoder.out_dim`` for
    an encoder without the sequence protocol."""
    return int(encoder.sequence_dim if has_sequence(encoder) else encoder.out_dim)


_WARNED: set[type] = set()

_SOURCE = "encoder registry"   # ConfigError source: these checks see the merged config, not one file


def validate_encoder(cfg: Any, key_prefix: str = "encoder", in_leads: int = 12, window: int | None = None) -> None:
    """Check that ``cfg.name`` is an encoder and ``cfg.params`` builds it, without keeping the model.

    ``window`` (samples per input, when known) is also checked by encoders that constrain it through a
    ``check_window(window)`` method (ViT-1D: a multiple of the patch size).

    Raises:
        ConfigError: ``<key_prefix>.name`` for an unknown name (listing the known ones),
            ``<key_prefix>.params.<key>`` for a parameter the builder does not accept or a value it
            rejects, ``<key_prefix>.params`` when no single key is to blame.
    """
    name, params = cfg.name, dict(cfg.params or {})
    if name not in ENCODERS:
        raise ConfigError(_SOURCE, f"{key_prefix}.name",
                          f"unknown encoder {name!r}; known: {', '.join(sorted(ENCODERS))}")
    builder = ENCODERS[name]
    signature = inspect.signature(builder)
    accepted = [p for p in signature.parameters if p != "in_leads"]
    for key in params:
        if key == "in_leads" or key not in signature.parameters:
            raise ConfigError(_SOURCE, f"{key_prefix}.params.{key}",
                              f"{name} takes no parameter {key!r}; it takes: {', '.join(accepted)}")
    try:
        signature.bind(in_leads=in_leads, **params)
    except TypeError as exc:
        raise ConfigError(_SOURCE, f"{key_prefix}.params", f"{name}: {exc}") from None
    # Build once on the meta device: no memory, no compute, but every value check of the builder runs.
    import torch

    try:
        with torch.device("meta"):
            model = builder(in_leads=in_leads, **params)
            if window is not None and hasattr(model, "check_window"):
                model.check_window(window)
    except (TypeError, ValueError) as exc:
        # Builders name the offending argument first in their messages ("base_width must be ...").
        bad = next((k for k in params if str(exc).startswith(k)), None)
        key = f"{key_prefix}.params.{bad}" if bad else f"{key_prefix}.params"
        raise ConfigError(_SOURCE, key, f"{name}: {exc}") from None


def build_encoder(cfg: Any, in_leads: int = 12, window: int | None = None) -> nn.Module:
    """``ENCODERS[cfg.name](in_leads=in_leads, **cfg.params)``, after :func:`validate_encoder`."""
    validate_encoder(cfg, in_leads=in_leads, window=window)
    return ENCODERS[cfg.name](in_leads=in_leads, **dict(cfg.params or {}))


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (trainable or not; FSDP2-sharded DTensors count their global size)."""
    return sum(p.numel() for p in module.parameters())
