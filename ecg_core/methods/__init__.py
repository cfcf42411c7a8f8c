"""Self-supervised methods: name -> :class:`Method` subclass, their config validation and construction.

DESIGN.md practices 2 and 3: one plain ``METHODS`` dict (no decorators, nothing registers at import);
one small file per method, built from the shared encoders, heads, losses and transforms.

A pretraining config names a method and its hyper-parameters as ``method: {name: simclr, params:
{temperature: 0.5, ...}}`` (:class:`jobs.config.MethodConfig`). ``params`` is validated against the
method's own ``Config`` dataclass with the project's strict config machinery (unknown keys and wrong
types are :class:`ecg_core.config.ConfigError` s naming ``method.params.<key>``), then by the method's
``check_config`` (values, augmentation lists).
"""
from __future__ import annotations

import inspect
from typing import Any

from ecg_core.config import ConfigError, from_dict
from ecg_core.encoders import build_encoder
from ecg_core.methods.base import Method, step_seed
from ecg_core.methods.byol import BYOL
from ecg_core.methods.cpc import CPC
from ecg_core.methods.jepa import JEPA
from ecg_core.methods.mae import MAE
from ecg_core.methods.mae_image import MAEImage
from ecg_core.methods.meclip import MECLIP
from ecg_core.methods.moco import MoCoV3
from ecg_core.methods.patient_contrastive import PatientContrastive
from ecg_core.methods.random_init import RandomInit
from ecg_core.methods.simclr import SimCLR
from ecg_core.methods.supervised import Supervised
from ecg_core.methods.swav import SwAV
from ecg_core.methods.viewmaker import Viewmaker

__all__ = ["METHODS", "Method", "build_method", "step_seed", "validate_method"]

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "byol": BYOL,
    "moco": MoCoV3,
    "patient_contrastive": PatientContrastive,
    "cpc": CPC,
    "mae": MAE,
    "mae_image": MAEImage,
    "jepa": JEPA,
    "supervised": Supervised,
    "random_init": RandomInit,
    "swav": SwAV,
    "viewmaker": Viewmaker,
    "meclip": MECLIP,
}
"""Method name -> class; ``cls.Config`` is its hyper-parameter dataclass."""

_SOURCE = "method registry"


def validate_method(cfg: Any, window: int | None = None) -> Any:
    """``cfg.params`` as an instance of ``METHODS[cfg.name].Config``, checked.

    Args:
        cfg: a :class:`jobs.config.MethodConfig` (``name``, ``params``).
        window: the training window in samples, when known (checks that every augmentation fits).

    Raises:
        ConfigError: key ``method.name`` (unknown method; the message lists the known ones) or
            ``method.params.<key>`` (unknown key, wrong type, invalid value).
    """
    if cfg.name not in METHODS:
        raise ConfigError(_SOURCE, "method.name", f"unknown method {cfg.name!r}; known: {', '.join(sorted(METHODS))}")
    cls = METHODS[cfg.name]
    try:
        config = from_dict(cls.Config, [(_SOURCE, dict(cfg.params or {}))])
    except ConfigError as exc:
        key = f"method.params.{exc.key}" if exc.key else "method.params"
        raise ConfigError(_SOURCE, key, exc.reason) from None
    cls.check_config(config, key_prefix="method.params", window=window)
    return config


def build_method(pretrain_cfg: Any, generator_seed: int) -> Method:
    """The method of a :class:`jobs.config.PretrainConfig`, with its encoder, on the CPU.

    Call it with the same torch seed on every rank (FSDP2 does not broadcast initial weights);
    ``generator_seed`` seeds the per-step augmentation generators (mixed with rank and step).
    The data config (``pretrain_cfg.data``) goes to methods whose ``__init__`` takes ``data`` (the supervised
    baseline reads its labels from the stores); methods written without that argument are built as before.
    Likewise ``total_steps=pretrain_cfg.steps`` to methods whose ``__init__`` takes ``total_steps`` (EMA schedules).
    """
    window = pretrain_cfg.data.window
    config = validate_method(pretrain_cfg.method, window=window)
    encoder = build_encoder(pretrain_cfg.encoder, window=window)
    cls = METHODS[pretrain_cfg.method.name]
    params = inspect.signature(cls.__init__).parameters.values()
    takes_data = any(p.name == "data" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    extra = {"data": pretrain_cfg.data} if takes_data else {}
    if "total_steps" in inspect.signature(cls.__init__).parameters:
        extra["total_steps"] = pretrain_cfg.steps
    return cls(config, encoder, window=window, generator_seed=generator_seed, **extra)
