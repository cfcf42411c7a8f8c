"""Augmentations: name -> class, and the composition a method's config lists.

Each class is constructed with keyword parameters and applied to a batch with a generator,
``t(x_BLT, generator) -> x_BLT``, drawing per-sample random parameters from that generator only
(see :class:`ecg_core.transforms.ecg.Transform`). A method's config lists its augmentations as
``[{name: random_resized_crop, crop_ratio_range: [0.5, 1.0]}, {name: time_out}]``;
:func:`build_transforms` validates such a list (unknown names and parameters, bad values, windows too
short) with :class:`ecg_core.config.ConfigError` naming ``<key_prefix>[i].<param>`` and returns one
:class:`Compose`.

The registry is a plain dict (DESIGN.md practice 2). Definitions and sources: :mod:`ecg_core.transforms.ecg`.

Shapes: ``B`` batch, ``L`` leads, ``T`` time.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ecg_core.config import ConfigError
from ecg_core.transforms.ecg import (BaselineShift, BaselineWander, ChannelResize, DynamicTimeWarp, EMNoise,
                                     GaussianBlur, GaussianNoise, PowerlineNoise, RandomResizedCrop, TimeOut,
                                     Transform, TransformParamError)
from ecg_core.transforms.masks import LeadMask, TimeMask
from ecg_core.transforms.vcg import VCGRotateScale

__all__ = ["TRANSFORMS", "Compose", "Transform", "TransformParamError", "build_transforms"]

TRANSFORMS: dict[str, type[Transform]] = {
    "gaussian_noise": GaussianNoise,
    "gaussian_blur": GaussianBlur,
    "channel_resize": ChannelResize,
    "random_resized_crop": RandomResizedCrop,
    "time_out": TimeOut,
    "dynamic_time_warp": DynamicTimeWarp,
    "baseline_wander": BaselineWander,
    "powerline_noise": PowerlineNoise,
    "em_noise": EMNoise,
    "baseline_shift": BaselineShift,
    "vcg_rotate_scale": VCGRotateScale,
    "time_mask": TimeMask,
    "lead_mask": LeadMask,
}
"""Augmentation name -> class (Mehari & Strodthoff 2022's set; see :mod:`ecg_core.transforms.ecg`)."""

_SOURCE = "transform registry"


class Compose:
    """Apply ``transforms`` in order to a batch, all drawing from the one generator passed in."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)
        self.min_length = max((t.min_length for t in self.transforms), default=1)

    def __call__(self, x_BLT: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for transform in self.transforms:
            x_BLT = transform(x_BLT, generator)
        return x_BLT

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def build_transforms(specs: Sequence[Mapping[str, Any]], key_prefix: str = "augmentations",
                     window: int | None = None, source: str = _SOURCE) -> Compose:
    """One :class:`Compose` from a list of ``{name: ..., <params>}`` mappings.

    Args:
        specs: the list, as in a config.
        key_prefix: dotted key of the list in the config, for error messages
            (``method.params.augmentations``).
        window: the window length the transforms will see; checked against each one's minimum.
        source: the ``source`` of raised :class:`ConfigError` s.

    Raises:
        ConfigError: key ``<key_prefix>[i]`` (not a mapping, window too short), ``<key_prefix>[i].name``
            (missing or unknown; the message lists the known names) or ``<key_prefix>[i].<param>``
            (unknown parameter, listing the accepted ones, or an invalid value).
    """
    if isinstance(specs, (str, bytes, Mapping)) or not isinstance(specs, Sequence):
        raise ConfigError(source, key_prefix, f"expected a list of {{name: ..., <params>}} mappings, got {specs!r}")
    transforms = []
    for i, spec in enumerate(specs):
        key = f"{key_prefix}[{i}]"
        if not isinstance(spec, Mapping):
            raise ConfigError(source, key, f"expected a mapping {{name: ..., <params>}}, got {spec!r}")
        params = dict(spec)
        name = params.pop("name", None)
        if name not in TRANSFORMS:
            what = "missing transform name" if name is None else f"unknown transform {name!r}"
            raise ConfigError(source, f"{key}.name", f"{what}; known: {', '.join(sorted(TRANSFORMS))}")
        cls = TRANSFORMS[name]
        accepted = list(inspect.signature(cls.__init__).parameters)[1:]
        for param in params:
            if param not in accepted:
                raise ConfigError(source, f"{key}.{param}",
                                  f"{name} has no parameter {param!r}; it takes: {', '.join(accepted) or 'none'}")
        try:
            transform = cls(**params)
        except TransformParamError as exc:
            raise ConfigError(source, f"{key}.{exc.param}", f"{name}: {exc.reason}") from None
        if window is not None and window < transform.min_length:
            raise ConfigError(source, key, f"{name} needs windows of at least {transform.min_length} samples, "
                                           f"the window is {window}")
        transforms.append(transform)
    return Compose(transforms)
