"""ECG augmentations of Mehari & Strodthoff 2022, vectorised over the batch with per-sample parameters.

Source of every definition: T. Mehari, N. Strodthoff, "Self-supervised representation learning from
12-lead ECG data", Computers in Biology and Medicine 141 (2022) 105114 (arXiv 2103.12676), appendix
"Transformations", and its code ``clinical_ts/timeseries_transformations.py`` (seed 2, read as described
in ``../shared/reference/seed-methods.md`` section 2.3). The physiological noise models follow the
references that code cites: https://www.ncbi.nlm.nih.gov/pmc/articles/PMC5361052/ (baseline wander) and
https://ieeexplore.ieee.org/document/43620 (powerline, electromyographic noise, baseline shifts).
Default parameters are those the seed's
pretraining scripts pass (its ``t_params`` / argparse defaults), which sometimes differ from its class
defaults; each class says which.

Differences from the seed, all deliberate:

- every random quantity is drawn per sample from the ``torch.Generator`` passed in, never from a global
  RNG, so that a step's augmentations are a pure function of the generator's seed (exact resume);
- frequencies and durations are in Hz and seconds with the sampling rate ``fs`` as a parameter
  (default 500 Hz, the stores' rate; the seed ran at 100 Hz), so the same physical noise is produced at
  any rate; crop ratios, DTW radii and kernels are in samples, as in the seed;
- ranges of uniform integers include every valid position (the seed's ``randint(0, T - n - 1)`` never
  places a crop or time-out flush with the end of the window).

Shapes: ``B`` batch, ``L`` leads, ``T`` time (samples), ``K`` sinusoid components, ``S`` segments,
``N`` interior output positions of a resized crop (``T - 2``), ``P`` padded time.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "BaselineShift", "BaselineWander", "ChannelResize", "DynamicTimeWarp", "EMNoise", "GaussianBlur",
    "GaussianNoise", "PowerlineNoise", "RandomResizedCrop", "TimeOut", "Transform", "TransformParamError",
]


class TransformParamError(ValueError):
    """A constructor argument of a transform is invalid; ``param`` names it (for config error keys)."""

    def __init__(self, param: str, reason: str) -> None:
        self.param = param
        self.reason = reason
        super().__init__(f"{param}: {reason}")


# ------------------------------------------------------------------------------------------------
# Parameter checks (raise TransformParamError naming the parameter)
# ------------------------------------------------------------------------------------------------

def _real(name: str, value: Any, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TransformParamError(name, f"expected a finite number, got {value!r}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise TransformParamError(name, f"must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TransformParamError(name, f"expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _range(name: str, value: Any, low: float, high: float | None = None) -> tuple[float, float]:
    """A ``[lo, hi]`` pair with ``low <= lo <= hi (<= high)``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise TransformParamError(name, f"expected a pair [low, high], got {value!r}")
    lo, hi = (_real(name, v) for v in value)
    if not low <= lo <= hi or (high is not None and hi > high):
        bounds = f"{low} <= low <= high" + (f" <= {high}" if high is not None else "")
        raise TransformParamError(name, f"expected {bounds}, got {list(value)!r}")
    return lo, hi


# ------------------------------------------------------------------------------------------------
# Random draws: on the generator's device (CPU or CUDA generator), then moved to the data's device
# ------------------------------------------------------------------------------------------------

def _rand(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """U[0, 1) float32 of ``shape``."""
    return torch.rand(shape, generator=gen, device=gen.device).to(device)


def _randn(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=gen, device=gen.device).to(device)


def _uniform(low: float, high: float, shape: tuple[int, ...], gen: torch.Generator,
             device: torch.device) -> torch.Tensor:
    return low + (high - low) * _rand(shape, gen, device)


def _randint_B(high_B: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per sample an integer uniform in ``[0, high_B]`` (inclusive; ``high_B`` long, >= 0)."""
    u_B = _rand(tuple(high_B.shape), gen, high_B.device)
    return torch.minimum((u_B * (high_B + 1)).long(), high_B)


def _sample_time(x_BLT: torch.Tensor, src_BT: torch.Tensor) -> torch.Tensor:
    """``x`` read at fractional time indices ``src_BT`` (one per sample, all leads), linear interpolation.

    Integer ``src`` reproduces samples exactly (weights exactly 0 and 1 in ``(1 - w) x0 + w x1``), so
    identity warps are exact. Time maps are computed in float64: positions up to ~10^5 keep ~1e-11 of
    sub-sample precision (float32 would keep ~1e-3).
    """
    B, L, T = x_BLT.shape
    src_BT = src_BT.double().clamp(0, T - 1)
    i0_BT = src_BT.floor().long().clamp(max=max(T - 2, 0))
    w_B1T = (src_BT - i0_BT).to(x_BLT.dtype)[:, None, :]
    i0_BLT = i0_BT[:, None, :].expand(B, L, src_BT.shape[1])
    x0_BLT = x_BLT.gather(2, i0_BLT)
    x1_BLT = x_BLT.gather(2, (i0_BLT + 1).clamp(max=T - 1))
    return (1 - w_B1T) * x0_BLT + w_B1T * x1_BLT


def _sinusoids_KT(omega_K: torch.Tensor, T: int, fs: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos(omega_k t)`` and ``sin(omega_k t)`` at ``t = 0, 1/fs, ...`` (float64 phases, float32 out)."""
    t_T = torch.arange(T, dtype=torch.float64, device=omega_K.device) / fs
    phase_KT = omega_K.double()[:, None] * t_T[None, :]
    return phase_KT.cos().float(), phase_KT.sin().float()


class Transform:
    """Base class: constructed with keyword parameters, applied to a batch with a generator.

    ``t(x_BLT, generator) -> x_BLT`` draws an independent set of random parameters for every sample
    (in one vectorised call, no Python loop over samples) from ``generator`` only, so the result is a
    pure function of the input and the generator state. A 2-D ``(L, T)`` input is treated as a batch of
    one. Subclasses implement :meth:`apply`; ``min_length`` is the shortest window they accept.
    """

    name: str = ""
    min_length: int = 1

    def __init__(self, **params: Any) -> None:
        self.params = params

    def __call__(self, x_BLT: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x_BLT.dim() == 2:
            return self(x_BLT[None], generator)[0]
        if x_BLT.dim() != 3:
            raise ValueError(f"{type(self).__name__}: expected (B, L, T) or (L, T), got shape {tuple(x_BLT.shape)}")
        if x_BLT.shape[-1] < self.min_length:
            raise ValueError(f"{type(self).__name__}: windows of {x_BLT.shape[-1]} samples are shorter than "
                             f"the {self.min_length} this transform needs")
        return self.apply(x_BLT, generator)

    def apply(self, x_BLT: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


# ------------------------------------------------------------------------------------------------
# Amplitude and noise transforms
# ------------------------------------------------------------------------------------------------

class GaussianNoise(Transform):
    """Additive white noise ``x + scale * N(0, 1)``, independent per sample, lead and time step.

    Seed: ``TGaussianNoise``; ``scale`` 0.005 = the pretraining scripts' ``--gaussian_scale`` default.
    ``scale = 0`` is the identity.
    """

    def __init__(self, scale: float = 0.005) -> None:
        super().__init__(scale=scale)
        self.scale = _real("scale", scale, 0.0)

    def apply(self, x_BLT, generator):
        if self.scale == 0.0:
            return x_BLT
        return x_BLT + self.scale * _randn(tuple(x_BLT.shape), generator, x_BLT.device).to(x_BLT.dtype)


class ChannelResize(Transform):
    """Per-lead amplitude scaling by ``exp(U(log a, log b))`` (log-uniform in ``magnitude_range = [a, b]``).

    Seed: ``TChannelResize``; ``[0.5, 2]`` = the scripts' ``--magnitude_range`` default (the class default
    is [0.33, 3]). ``[1, 1]`` is the identity.
    """

    def __init__(self, magnitude_range: Sequence[float] = (0.5, 2.0)) -> None:
        super().__init__(magnitude_range=list(magnitude_range) if isinstance(magnitude_range, Sequence)
                         else magnitude_range)
        lo, hi = _range("magnitude_range", magnitude_range, 0.0)
        if lo <= 0.0:
            raise TransformParamError("magnitude_range", f"factors must be > 0, got {lo}")
        self.log_lo, self.log_hi = math.log(lo), math.log(hi)

    def apply(self, x_BLT, generator):
        B, L, _ = x_BLT.shape
        factor_BL1 = _uniform(self.log_lo, self.log_hi, (B, L, 1), generator, x_BLT.device).exp()
        return x_BLT * factor_BL1.to(x_BLT.dtype)


class GaussianBlur(Transform):
    """Per-lead smoothing by a fixed kernel (zero padding at the ends), no randomness.

    Seed: ``TGaussianBlur1d``, kernel ``[0.1, 0.2, 0.4, 0.2, 0.1]``. ``kernel = [1]`` is the identity.
    """

    def __init__(self, kernel: Sequence[float] = (0.1, 0.2, 0.4, 0.2, 0.1)) -> None:
        super().__init__(kernel=list(kernel) if isinstance(kernel, Sequence) else kernel)
        if isinstance(kernel, (str, bytes)) or not isinstance(kernel, Sequence) or len(kernel) % 2 == 0:
            raise TransformParamError("kernel", f"expected a list of odd length (centred kernel), got {kernel!r}")
        self.kernel = [_real("kernel", k) for k in kernel]

    def apply(self, x_BLT, generator):
        # A weighted sum of shifted copies: a 1-channel conv1d over B * L rows is ~30x slower on CPU.
        T, half = x_BLT.shape[-1], len(self.kernel) // 2
        padded_BLP = F.pad(x_BLT, (half, half))
        y_BLT = torch.zeros_like(x_BLT)
        for k, weight in enumerate(self.kernel):
            y_BLT = y_BLT + weight * padded_BLP[..., k:k + T]
        return y_BLT


class BaselineWander(Transform):
    """Low-frequency baseline wander, the same curve added to every lead.

    ``C * sum_{k=0}^{K-1} a_k cos(2 pi k fdelta t + phi_k)``, ``K = round(fc / fdelta)`` (50),
    ``a_k ~ U(0, 1)``, ``phi_k ~ U(0, 2 pi)``, ``C ~ U(0, c_max)``; frequencies up to ``fc`` = 0.5 Hz.
    Seed: ``TBaselineWander`` / ``Tnoise_baseline_wander``, ``c_max`` 0.1 (``bw_cmax``). ``c_max = 0`` is
    the identity.
    """

    def __init__(self, c_max: float = 0.1, fs: float = 500.0, fc: float = 0.5, fdelta: float = 0.01) -> None:
        super().__init__(c_max=c_max, fs=fs, fc=fc, fdelta=fdelta)
        self.c_max = _real("c_max", c_max, 0.0)
        self.fs = _real("fs", fs, 0.0, strict=True)
        self.fc = _real("fc", fc, 0.0, strict=True)
        self.fdelta = _real("fdelta", fdelta, 0.0, strict=True)
        self.K = int(self.fc / self.fdelta + 0.5)
        if self.K < 1:
            raise TransformParamError("fdelta", f"fc / fdelta must be >= 0.5 (at least one component), got "
                                      f"{self.fc} / {self.fdelta}")

    def apply(self, x_BLT, generator):
        if self.c_max == 0.0:
            return x_BLT
        B, _, T = x_BLT.shape
        dev = x_BLT.device
        a_BK = _rand((B, self.K), generator, dev)
        phi_BK = 2 * math.pi * _rand((B, self.K), generator, dev)
        c_B1 = _uniform(0.0, self.c_max, (B, 1), generator, dev)
        omega_K = 2 * math.pi * self.fdelta * torch.arange(self.K, device=dev)
        cos_KT, sin_KT = _sinusoids_KT(omega_K, T, self.fs)
        # sum_k a cos(w t + phi) = sum_k (a cos phi) cos(w t) - (a sin phi) sin(w t): two (B,K)@(K,T) products
        wander_BT = c_B1 * ((a_BK * phi_BK.cos()) @ cos_KT - (a_BK * phi_BK.sin()) @ sin_KT)
        return x_BLT + wander_BT[:, None, :].to(x_BLT.dtype)


class PowerlineNoise(Transform):
    """Mains interference ``C * g_l * sum_{k=1}^{harmonics} a_k cos(2 pi k fn t + phi)``.

    One phase ``phi ~ U(0, 2 pi)`` and amplitudes ``a_k ~ U(0, 1)`` per sample, a gain ``g_l ~ U(-1, 1)``
    per lead, ``C ~ U(0, c_max)``. Seed: ``noise_powerline``, ``c_max`` 0.2 (``pl_cmax``), 50 Hz, 3
    harmonics. The seed multiplies by ``C`` twice (amplitude ``C**2``); this applies it once, as its
    docstring and the paper describe. ``c_max = 0`` is the identity.
    """

    def __init__(self, c_max: float = 0.2, fs: float = 500.0, fn: float = 50.0, harmonics: int = 3) -> None:
        super().__init__(c_max=c_max, fs=fs, fn=fn, harmonics=harmonics)
        self.c_max = _real("c_max", c_max, 0.0)
        self.fs = _real("fs", fs, 0.0, strict=True)
        self.fn = _real("fn", fn, 0.0, strict=True)
        self.harmonics = _int("harmonics", harmonics, 1)

    def apply(self, x_BLT, generator):
        if self.c_max == 0.0:
            return x_BLT
        B, L, T = x_BLT.shape
        dev = x_BLT.device
        phi_B1 = 2 * math.pi * _rand((B, 1), generator, dev)
        a_BK = _rand((B, self.harmonics), generator, dev)
        c_B1 = _uniform(0.0, self.c_max, (B, 1), generator, dev)
        gain_BL1 = _uniform(-1.0, 1.0, (B, L, 1), generator, dev)
        omega_K = 2 * math.pi * self.fn * torch.arange(1, self.harmonics + 1, device=dev)
        cos_KT, sin_KT = _sinusoids_KT(omega_K, T, self.fs)
        mains_BT = c_B1 * (phi_B1.cos() * (a_BK @ cos_KT) - phi_B1.sin() * (a_BK @ sin_KT))
        return x_BLT + (gain_BL1 * mains_BT[:, None, :]).to(x_BLT.dtype)


class EMNoise(Transform):
    """Electromyographic (high-frequency) noise: ``x + C * N(0, 1)`` with one ``C ~ U(0, c_max)`` per sample.

    Seed: ``TEMNoise`` / ``Tnoise_electromyographic``, ``c_max`` 0.5 (``em_cmax``). ``c_max = 0`` is the
    identity.
    """

    def __init__(self, c_max: float = 0.5) -> None:
        super().__init__(c_max=c_max)
        self.c_max = _real("c_max", c_max, 0.0)

    def apply(self, x_BLT, generator):
        if self.c_max == 0.0:
            return x_BLT
        B = x_BLT.shape[0]
        c_B11 = _uniform(0.0, self.c_max, (B, 1, 1), generator, x_BLT.device)
        noise_BLT = _randn(tuple(x_BLT.shape), generator, x_BLT.device)
        return x_BLT + (c_B11 * noise_BLT).to(x_BLT.dtype)


class BaselineShift(Transform):
    """Abrupt baseline shifts: a piecewise-constant offset added to every lead with a per-lead gain.

    Per sample: ``n ~ U{0..S}`` segments, ``S = round(max_segments_per_second * T / fs)``; each has a
    centre ``~ U{0..T-1}``, a duration ``~ N(mean_segment_length, (0.2 mean_segment_length)^2)`` seconds
    and a level ``~ U(-1, 1)`` (a later segment overwrites an earlier one where they overlap). The
    offset is scaled by ``C ~ U(0, c_max)`` and by a per-lead gain ``+-1 * N(1, 1)`` with a random sign.
    Seed: ``TBaselineShift`` / ``Tnoise_baseline_shift``, ``c_max`` 1 (``bs_cmax``), 3 s, 0.3 per
    second; its gain expression ``2*randint(2)-1*normal(1,1)`` has an operator-precedence slip, this is
    the random-sign gain that the numpy version of the same function draws. ``c_max = 0`` is the
    identity, and so is a window too short for one segment (``S = 0``).
    """

    def __init__(self, c_max: float = 1.0, fs: float = 500.0, mean_segment_length: float = 3.0,
                 max_segments_per_second: float = 0.3) -> None:
        super().__init__(c_max=c_max, fs=fs, mean_segment_length=mean_segment_length,
                         max_segments_per_second=max_segments_per_second)
        self.c_max = _real("c_max", c_max, 0.0)
        self.fs = _real("fs", fs, 0.0, strict=True)
        self.mean_segment_length = _real("mean_segment_length", mean_segment_length, 0.0, strict=True)
        self.max_segments_per_second = _real("max_segments_per_second", max_segments_per_second, 0.0)

    def apply(self, x_BLT, generator):
        B, L, T = x_BLT.shape
        S = int(self.max_segments_per_second * T / self.fs + 0.5)
        if self.c_max == 0.0 or S == 0:
            return x_BLT
        dev = x_BLT.device
        n_B = _randint_B(torch.full((B,), S, device=dev), generator)
        mid_BS = torch.minimum((_rand((B, S), generator, dev) * T).long(), torch.tensor(T - 1, device=dev))
        half_BS = 0.5 * self.fs * self.mean_segment_length * (1.0 + 0.2 * _randn((B, S), generator, dev))
        level_BS = _uniform(-1.0, 1.0, (B, S), generator, dev)
        c_B11 = _uniform(0.0, self.c_max, (B, 1, 1), generator, dev)
        sign_BL = 2.0 * (_rand((B, L), generator, dev) < 0.5).float() - 1.0
        gain_BL1 = (sign_BL * (1.0 + _randn((B, L), generator, dev)))[:, :, None]

        # Segment s covers [left, right] (the seed's int() truncation toward zero), if s < n.
        left_BS1 = torch.trunc(mid_BS - half_BS).clamp(min=0)[:, :, None]
        right_BS1 = torch.trunc(mid_BS + half_BS).clamp(max=T - 1)[:, :, None]
        t_11T = torch.arange(T, device=dev, dtype=left_BS1.dtype)[None, None, :]
        active_BS1 = (torch.arange(S, device=dev)[None, :] < n_B[:, None])[:, :, None]
        cover_BST = active_BS1 & (t_11T >= left_BS1) & (t_11T <= right_BS1)
        # Index (1-based) of the last segment covering each time step, 0 where none does.
        last_BT = (cover_BST * torch.arange(1, S + 1, device=dev)[None, :, None]).amax(dim=1)
        offset_BT = torch.cat([torch.zeros(B, 1, device=dev), level_BS], dim=1).gather(1, last_BT)
        return x_BLT + (c_B11 * gain_BL1 * offset_BT[:, None, :]).to(x_BLT.dtype)


# ------------------------------------------------------------------------------------------------
# Time-axis transforms
# ------------------------------------------------------------------------------------------------

class TimeOut(Transform):
    """Zero a contiguous segment of ``floor(r T)`` samples, ``r ~ U(crop_ratio_range)``, in every lead.

    Seed: ``TTimeOut``; ``[0.2, 0.4]`` = the scripts' ``--to_crop_ratio_range`` default (the class default
    is [0, 0.5]). ``[0, 0]`` is the identity.
    """

    def __init__(self, crop_ratio_range: Sequence[float] = (0.2, 0.4)) -> None:
        super().__init__(crop_ratio_range=list(crop_ratio_range) if isinstance(crop_ratio_range, Sequence)
                         else crop_ratio_range)
        self.lo, self.hi = _range("crop_ratio_range", crop_ratio_range, 0.0, 1.0)

    def apply(self, x_BLT, generator):
        B, _, T = x_BLT.shape
        dev = x_BLT.device
        n_B = (_uniform(self.lo, self.hi, (B,), generator, dev) * T).long().clamp(0, T)
        start_B = _randint_B(T - n_B, generator)
        t_1T = torch.arange(T, device=dev)[None, :]
        out_BT = (t_1T >= start_B[:, None]) & (t_1T < (start_B + n_B)[:, None])
        return torch.where(out_BT[:, None, :], torch.zeros((), dtype=x_BLT.dtype, device=dev), x_BLT)


class RandomResizedCrop(Transform):
    """Crop ``floor(r T)`` consecutive samples (``r ~ U(crop_ratio_range)``, random start), stretch to ``T``.

    With ``jitter`` (the seed's ``TRandomResizedCrop``), the crop's samples are placed at sorted random
    output positions (first and last fixed at ``0`` and ``T - 1``) and the gaps are filled by linear
    interpolation: an irregular stretch. Without, they are evenly spaced (plain linear resampling).
    ``[0.5, 1]`` = the scripts' ``--rr_crop_ratio_range`` default. ``[1, 1]`` is the identity.
    """

    min_length = 3

    def __init__(self, crop_ratio_range: Sequence[float] = (0.5, 1.0), jitter: bool = True) -> None:
        super().__init__(crop_ratio_range=list(crop_ratio_range) if isinstance(crop_ratio_range, Sequence)
                         else crop_ratio_range, jitter=jitter)
        self.lo, self.hi = _range("crop_ratio_range", crop_ratio_range, 0.0, 1.0)
        if not isinstance(jitter, bool):
            raise TransformParamError("jitter", f"expected true or false, got {jitter!r}")
        self.jitter = jitter

    def apply(self, x_BLT, generator):
        B, _, T = x_BLT.shape
        dev = x_BLT.device
        n_B = (_uniform(self.lo, self.hi, (B,), generator, dev) * T).long().clamp(2, T)
        start_B = _randint_B(T - n_B, generator)
        t_T = torch.arange(T, device=dev, dtype=torch.float64)
        if not self.jitter:
            # Output j reads crop position j (n - 1) / (T - 1).
            src_BT = start_B[:, None] + t_T[None, :] * ((n_B - 1) / (T - 1))[:, None]
            return _sample_time(x_BLT, src_BT)
        # n - 2 interior anchors chosen uniformly among output positions 1..T-2: the positions whose
        # random key ranks below n - 2 (stable sorts: ties in the keys break by position, reproducibly).
        keys_BN = _rand((B, T - 2), generator, dev)
        rank_BN = keys_BN.argsort(dim=1, stable=True).argsort(dim=1, stable=True)
        ends_B1 = torch.ones(B, 1, dtype=torch.bool, device=dev)
        anchor_BT = torch.cat([ends_B1, rank_BN < (n_B - 2)[:, None], ends_B1], dim=1)
        # Anchor k (k-th True) holds crop sample k; between anchors, interpolate linearly.
        k_BT = anchor_BT.long().cumsum(dim=1) - 1                     # crop index of the anchor at/before t
        left_BT = torch.where(anchor_BT, t_T, -1.0).cummax(dim=1).values
        right_BT = torch.where(anchor_BT, t_T, float(T)).flip(1).cummin(dim=1).values.flip(1)
        frac_BT = (t_T - left_BT) / (right_BT - left_BT).clamp(min=1)
        return _sample_time(x_BLT, start_B[:, None] + k_BT + frac_BT)


class DynamicTimeWarp(Transform):
    """``warps`` local time warps, each squeezing ``2 step radius + 1`` samples around a random centre
    into ``2 radius + 1`` and stretching the ``radius`` samples on either side by ``step`` to fill the gap.

    Seed: ``TDynamicTimeWarp`` (``squeeze``, ``refill`` and interpolation over ``inf`` markers), defaults
    ``warps`` 3, ``radius`` 10, ``step`` 2 (in samples; at the seed's 100 Hz). That procedure is exactly
    ``x(phi(t))`` with linear interpolation for the piecewise-linear time map, with ``a = c - r(s + 1)``:
    ``phi(t) = a + (t - a) / s`` on ``[a, c - r]``, ``c + s (t - c)`` on ``[c - r, c + r]``,
    ``c + r s + (t - c - r) / s`` on ``[c + r, c + r (s + 1)]``, ``t`` elsewhere; the centre
    ``c ~ U{r(s+1) .. T - r(s+1) - s - 1}``. Warps are applied one after another, as in the seed.
    ``warps = 0`` or ``step = 1`` is the identity.
    """

    def __init__(self, warps: int = 3, radius: int = 10, step: int = 2) -> None:
        super().__init__(warps=warps, radius=radius, step=step)
        self.warps = _int("warps", warps, 0)
        self.radius = _int("radius", radius, 1)
        self.step = _int("step", step, 1)
        self.min_center = self.radius * (self.step + 1)
        self.min_length = 2 * self.min_center + self.step + 1 if self.warps else 1

    def time_map(self, center_B: torch.Tensor, T: int) -> torch.Tensor:
        """``phi_BT``: the source time of each output sample for one warp centred at ``center_B``."""
        r, s = self.radius, self.step
        t_1T = torch.arange(T, device=center_B.device, dtype=torch.float64)[None, :]
        c_B1 = center_B.double()[:, None]
        a_B1, b_B1, e_B1 = c_B1 - r * (s + 1), c_B1 + r, c_B1 + r * (s + 1)
        phi_BT = t_1T.expand(center_B.shape[0], T)
        phi_BT = torch.where((t_1T >= a_B1) & (t_1T < c_B1 - r), a_B1 + (t_1T - a_B1) / s, phi_BT)
        phi_BT = torch.where((t_1T >= c_B1 - r) & (t_1T <= b_B1), c_B1 + s * (t_1T - c_B1), phi_BT)
        phi_BT = torch.where((t_1T > b_B1) & (t_1T <= e_B1), c_B1 + r * s + (t_1T - b_B1) / s, phi_BT)
        return phi_BT

    def apply(self, x_BLT, generator):
        B, _, T = x_BLT.shape
        span = torch.full((B,), T - 2 * self.min_center - self.step - 1, device=x_BLT.device)
        for _ in range(self.warps):   # a loop over warps (3), not over samples
            center_B = self.min_center + _randint_B(span, generator)
            x_BLT = _sample_time(x_BLT, self.time_map(center_B, T))
        return x_BLT
