"""Severity-levelled corruptions of 12-lead ECG records, for robustness benchmarks of ECG classifiers.

The benchmark design follows ImageNet-C (D. Hendrycks, T. Dietterich, "Benchmarking neural network
robustness to common corruptions and perturbations", ICLR 2019): a fixed set of named corruption types,
each at severities 1..5, applied to clean test records; a classifier's accuracy is then reported per
corruption and severity. Severity 0 is the identity.

Every corruption works on one record ``x_LT`` (float array, 12 leads in the canonical order
:data:`ecg_core.data.leads.LEADS`, ``T`` samples) at sampling rate ``fs`` (any rate >= 100 Hz) and returns
a new array of the same shape and dtype; the input is never modified. Randomness comes only from the
``numpy.random.Generator`` passed in, so a call is a pure function of (record, severity, fs, generator
state). :func:`apply` seeds that generator from ``(seed, name, severity)``.

Nothing here depends on the voltage unit (the store keeps microvolts, :meth:`EcgStore.read` returns
millivolts): additive noise is sized relative to the record's own power, the other corruptions are
relative (gains, lead operations, time scaling).

Additive noise (``baseline_wander``, ``powerline_50``, ``powerline_60``, ``emg_noise``,
``electrode_motion``, ``baseline_shift``)
---------------------------------------------------------------------------------------------------------
Severity sets a signal-to-noise ratio, by default :data:`SNR_DB` = 24, 18, 12, 6, 0 dB for severities 1..5:
the levels of the MIT-BIH Noise Stress Test Database test records (``118e24`` ... ``118e00``; G. B. Moody,
W. K. Muldrow, R. G. Mark, "A noise stress test for arrhythmia detectors", Computers in Cardiology 11:381-384,
1984; its ``nst`` program measures signal power from QRS amplitudes, not from variance as here, so the
numbers are comparable in spirit, not identical). With ``n`` the added noise and the means over the
record's *present* leads (leads that are not identically zero; a zero lead is a missing lead in this
project's stores and stays zero)::

    SNR = 10 log10( mean_l var(x_l) / mean_l mean_t n_l(t)^2 )

holds exactly (to float rounding) at every call, so the SNR strictly decreases with severity on every
record. The reference is the record's mean lead power rather than each lead's own power because real
noise is produced at the electrodes and does not know how large a lead's ECG is: every noise model below
draws one noise waveform per *electrode* (RA, LA, LL, V1..V6) and projects it to the 12 leads with the
lead definitions (Einthoven I = LA - RA, II = LL - RA, III = LL - LA; Goldberger aVR = RA - (LA + LL)/2,
aVL = LA - (RA + LL)/2, aVF = LL - (RA + LA)/2; Wilson V_k = V_k - (RA + LA + LL)/3), so the corrupted
record still satisfies III = II - I and the Goldberger relations exactly in its noise, and a source common
to all electrodes cancels as it does in a differential amplifier. A record whose present leads all have zero
variance has no defined SNR and is returned unchanged.

The noise models are the categories of Friesen et al., "A comparison of the noise sensitivity of nine QRS
detection algorithms", IEEE Trans. Biomed. Eng. 37(1):85-98, 1990 (power-line interference, muscle
contraction, baseline drift with respiration, electrode motion, abrupt baseline shifts), and the three
noise types of the Noise Stress Test Database ('bw' baseline wander, 'ma' muscle artefact, 'em' electrode
motion); each class documents its waveform.

Other corruptions and their distortion measure (strictly increasing in severity, see ``level``)
---------------------------------------------------------------------------------------------------------
==========================  ==========================================  ===========================================
corruption                  ``measure``                                 severity 1, 2, 3, 4, 5
==========================  ==========================================  ===========================================
``lead_dropout``            ``leads_zeroed``                            1, 2, 4, 6, 9
``lead_reversal``           ``leads_changed`` (cumulative cable swaps)  5, 7, 8, 9, 12
``gain_error``              ``relative_error`` ``|x' - x| / |x|``       0.05, 0.10, 0.20, 0.35, 0.50 (exact)
``sampling_rate_mismatch``  ``abs_log_time_factor`` ``|ln r|``          ln 1.02, ln 1.05, ln 1.10, ln 1.20, ln 1.35
==========================  ==========================================  ===========================================

Shapes: ``L`` leads (12), ``T`` time samples, ``E`` electrodes (9), ``K`` sinusoid components.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import numpy as np
from scipy.signal import lfilter, resample_poly

from ecg_core.data.leads import LEADS

__all__ = [
    "CORRUPTIONS", "ELECTRODES", "LEAD_FROM_ELECTRODE", "MIN_FS", "SEVERITIES", "SNR_DB", "BaselineShift",
    "BaselineWander", "Corruption", "ElectrodeMotion", "EmgNoise", "GainError", "LeadDropout", "LeadReversal",
    "PowerlineNoise", "SamplingRateMismatch", "apply", "misplacement_matrix", "name_key",
]

SEVERITIES = (0, 1, 2, 3, 4, 5)
MAX_SEVERITY = 5
MIN_FS = 100.0
SNR_DB: tuple[float, ...] = (24.0, 18.0, 12.0, 6.0, 0.0)

# ------------------------------------------------------------------------------------------------
# Electrodes and lead definitions
# ------------------------------------------------------------------------------------------------

# The nine recording electrodes; the right-leg (RL) electrode is the amplifier's reference/driven ground
# and enters no lead.
ELECTRODES: tuple[str, ...] = ("RA", "LA", "LL", "V1", "V2", "V3", "V4", "V5", "V6")
_CABLES: tuple[str, ...] = (*ELECTRODES, "RL")
_WCT = {"RA": -1.0 / 3.0, "LA": -1.0 / 3.0, "LL": -1.0 / 3.0}   # minus Wilson's central terminal

# Each lead as weights on the potentials picked up by the electrode cables.
_LEAD_DEFS: dict[str, dict[str, float]] = {
    "I": {"LA": 1.0, "RA": -1.0},
    "II": {"LL": 1.0, "RA": -1.0},
    "III": {"LL": 1.0, "LA": -1.0},
    "aVR": {"RA": 1.0, "LA": -0.5, "LL": -0.5},
    "aVL": {"LA": 1.0, "RA": -0.5, "LL": -0.5},
    "aVF": {"LL": 1.0, "RA": -0.5, "LA": -0.5},
    **{f"V{k}": {f"V{k}": 1.0, **_WCT} for k in range(1, 7)},
}


def _lead_matrix() -> np.ndarray:
    d_LE = np.zeros((len(LEADS), len(ELECTRODES)))
    for i, lead in enumerate(LEADS):
        for electrode, weight in _LEAD_DEFS[lead].items():
            d_LE[i, ELECTRODES.index(electrode)] += weight
    d_LE.setflags(write=False)
    return d_LE


LEAD_FROM_ELECTRODE: np.ndarray = _lead_matrix()
"""(12, 9): lead voltages = ``LEAD_FROM_ELECTRODE @ electrode potentials`` (rows in :data:`LEADS` order)."""


def _project(e_EN: np.ndarray) -> np.ndarray:
    """(12, N) ``LEAD_FROM_ELECTRODE @ e_EN`` written out (Einthoven, Goldberger, Wilson), without BLAS.

    The noise generators call this on every record; a BLAS matrix product of this size can wake a
    multi-threaded BLAS, whose spinning worker threads cost more CPU than the product itself.
    """
    ra, la, ll = e_EN[0], e_EN[1], e_EN[2]
    out = np.empty((len(LEADS), e_EN.shape[1]))
    i, ii, iii = out[LEADS.index("I")], out[LEADS.index("II")], out[LEADS.index("III")]
    np.subtract(la, ra, out=i)
    np.subtract(ll, ra, out=ii)
    np.subtract(ll, la, out=iii)
    avr, avl, avf = out[LEADS.index("aVR")], out[LEADS.index("aVL")], out[LEADS.index("aVF")]
    np.add(i, ii, out=avr)
    avr *= -0.5                    # RA - (LA + LL)/2 = -(I + II)/2
    np.multiply(ii, -0.5, out=avl)
    avl += i                       # LA - (RA + LL)/2 = I - II/2
    np.multiply(i, -0.5, out=avf)
    avf += ii                      # LL - (RA + LA)/2 = II - I/2
    wct = (ra + la + ll) / 3.0
    first_v = LEADS.index("V1")
    np.subtract(e_EN[ELECTRODES.index("V1"):], wct, out=out[first_v: first_v + 6])
    return out


def _combine_rows(m_RC: np.ndarray, a_CT: np.ndarray) -> np.ndarray:
    """``m_RC @ a_CT`` for a sparse ``m`` without BLAS; terms with weight +-1 are exact copies/negations."""
    out = np.zeros((m_RC.shape[0], a_CT.shape[1]))
    for r, c in zip(*np.nonzero(m_RC)):
        weight = m_RC[r, c]
        if weight == 1.0:
            out[r] += a_CT[c]
        elif weight == -1.0:
            out[r] -= a_CT[c]
        else:
            out[r] += weight * a_CT[c]
    return out


# The independent leads: every lead is a combination of I, II and V1..V6.
_BASIS = tuple(LEADS.index(lead) for lead in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6"))


@functools.lru_cache(maxsize=64)
def misplacement_matrix(swaps: tuple[tuple[str, str], ...]) -> np.ndarray:
    """(12, 12) matrix ``M`` with ``x' = M @ x`` for a record taken with electrode cables exchanged.

    ``swaps`` are pairs of cable names from RA, LA, LL, RL, V1..V6 applied in order; each exchanges the
    sites the two cables sit on (so ``(("LA", "RA"), ("LA", "LL"))`` leaves RA on the LA site, LA on the
    LL site and LL on the RA site). A recorded lead is its definition evaluated on the potentials at the
    sites its cables actually sit on. The right-leg site is taken to have the left leg's potential,
    the approximation of Batchvarov, Malik and Camm, "Incorrect electrode cable connection during
    electrocardiographic recording", Europace 9(11):1081-1090, 2007, which makes a cable moved to the right
    leg record LL; a limb cable moved this way also moves Wilson's central terminal, which is why neutral-
    cable reversals change the precordial leads too (by V' = V + (WCT - WCT')).

    Each recorded lead is written in the original leads: exactly +-1 on one lead where it equals (minus) an
    original lead, otherwise the exact combination of the independent leads I, II, V1..V6. For example the
    LA/RA reversal gives I' = -I, II' = III, III' = II, aVR' = aVL, aVL' = aVR, aVF' = aVF and unchanged
    precordial leads; LA/LL gives I' = II, II' = I, III' = -III, aVL' = aVF, aVF' = aVL, aVR' = aVR; RA/LL gives
    I' = -III, II' = -II, III' = -I, aVR' = aVF, aVF' = aVR, aVL' = aVL (Batchvarov et al., table 1).
    """
    site = {cable: cable for cable in _CABLES}
    for a, b in swaps:
        if a not in site or b not in site or a == b:
            raise ValueError(f"misplacement: a swap needs two different cables of {', '.join(_CABLES)}; "
                             f"got {a!r}, {b!r}")
        site[a], site[b] = site[b], site[a]
    d_LE = LEAD_FROM_ELECTRODE
    basis_EB = d_LE[list(_BASIS)].T
    m_LL = np.zeros((len(LEADS), len(LEADS)))
    for i, lead in enumerate(LEADS):
        w_E = np.zeros(len(ELECTRODES))
        for cable, weight in _LEAD_DEFS[lead].items():
            where = "LL" if site[cable] == "RL" else site[cable]
            w_E[ELECTRODES.index(where)] += weight
        if not np.any(np.abs(w_E) > 1e-12):
            continue   # the lead's cables all pick up the same potential: a flat line
        match = [(j, sign) for j in range(len(LEADS)) for sign in (1.0, -1.0)
                 if np.allclose(w_E, sign * d_LE[j], rtol=0.0, atol=1e-12)]
        if match:
            j, sign = match[0]
            m_LL[i, j] = sign
            continue
        coef_B = np.linalg.lstsq(basis_EB, w_E, rcond=None)[0]
        coef_B = np.round(coef_B * 6.0) / 6.0   # the exact weights are multiples of 1/6 (halves and thirds)
        assert np.allclose(basis_EB @ coef_B, w_E, rtol=0.0, atol=1e-12), "a lead outside span(I, II, V1..V6)"
        m_LL[i, list(_BASIS)] = coef_B
    m_LL.setflags(write=False)
    return m_LL


# ------------------------------------------------------------------------------------------------
# Base class and argument checks
# ------------------------------------------------------------------------------------------------

def _check_table(name: str, field: str, table: tuple[float, ...], increasing: bool) -> None:
    values = [float(v) for v in table]
    if len(values) != MAX_SEVERITY or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name}: {field} needs {MAX_SEVERITY} finite values (severities 1..5), got {table!r}")
    if not all((b > a) if increasing else (b < a) for a, b in itertools.pairwise(values)):
        order = "increasing" if increasing else "decreasing"
        raise ValueError(f"{name}: {field} must be strictly {order} with severity, got {table!r}")


@dataclass(frozen=True)
class Corruption:
    """One corruption type. Subclasses are frozen dataclasses whose fields are the per-severity tables.

    ``corruption(x_LT, severity, fs, rng)`` checks its arguments, returns a copy of ``x_LT`` at severity 0
    and otherwise the corrupted record (same shape and dtype; computed in float64). ``level(severity)`` is
    the nominal value of the corruption's distortion measure ``measure`` (SNR in dB for additive noise,
    strictly decreasing; otherwise strictly increasing), ``describe(severity)`` a one-line description.
    """

    name: ClassVar[str] = "corruption"
    measure: ClassVar[str] = ""

    def __call__(self, x_LT: np.ndarray, severity: int, fs: float, rng: np.random.Generator) -> np.ndarray:
        severity = self._severity(severity)
        if not isinstance(x_LT, np.ndarray) or x_LT.ndim != 2 or x_LT.shape[0] != len(LEADS) or x_LT.shape[1] < 2:
            shape = getattr(x_LT, "shape", type(x_LT).__name__)
            raise ValueError(f"{self.name}: expected x_LT of shape (12, T) with T >= 2, got {shape}")
        if not np.issubdtype(x_LT.dtype, np.floating):
            raise ValueError(f"{self.name}: expected a floating-point array, got dtype {x_LT.dtype}")
        if isinstance(fs, bool) or not isinstance(fs, (int, float, np.integer, np.floating)) \
                or not math.isfinite(fs) or fs < MIN_FS:
            raise ValueError(f"{self.name}: fs must be a finite sampling rate >= {MIN_FS:g} Hz, got {fs!r}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"{self.name}: rng must be a numpy.random.Generator, got {type(rng).__name__}")
        if severity == 0:
            return x_LT.copy()
        y_LT = self._corrupt(x_LT.astype(np.float64), severity, float(fs), rng)
        return y_LT.astype(x_LT.dtype, copy=False)

    def _severity(self, severity: int) -> int:
        if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) \
                or not 0 <= severity <= MAX_SEVERITY:
            raise ValueError(f"{self.name}: severity must be an integer 0..{MAX_SEVERITY}, got {severity!r}")
        return int(severity)

    def _corrupt(self, x_LT: np.ndarray, severity: int, fs: float, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def level(self, severity: int) -> float:
        """Nominal distortion measure at ``severity`` (0 is the identity)."""
        raise NotImplementedError

    def describe(self, severity: int) -> str:
        """One line saying what ``severity`` does."""
        severity = self._severity(severity)
        if severity == 0:
            return f"{self.name} severity 0: identity"
        return f"{self.name} severity {severity}: {self._describe(severity)}"

    def _describe(self, severity: int) -> str:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# Additive noise
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _AdditiveNoise(Corruption):
    """Noise drawn per electrode, projected to the leads, scaled to the severity's SNR (module docstring)."""

    snr_db: tuple[float, ...] = SNR_DB
    measure: ClassVar[str] = "snr_db"

    def __post_init__(self) -> None:
        _check_table(self.name, "snr_db", self.snr_db, increasing=False)

    def level(self, severity: int) -> float:
        severity = self._severity(severity)
        return math.inf if severity == 0 else float(self.snr_db[severity - 1])

    def _lead_noise(self, n_samples: int, fs: float, rng: np.random.Generator) -> np.ndarray:
        """(L, T) noise in the leads, any scale: the electrodes' noise projected with LEAD_FROM_ELECTRODE."""
        raise NotImplementedError

    def _corrupt(self, x_LT: np.ndarray, severity: int, fs: float, rng: np.random.Generator) -> np.ndarray:
        present_L = np.any(x_LT != 0, axis=1)
        p_signal = float(x_LT.var(axis=1)[present_L].mean()) if present_L.any() else 0.0
        if p_signal <= 0:
            return x_LT   # nothing to measure an SNR against (documented above)
        n_LT = self._lead_noise(x_LT.shape[1], fs, rng)
        if not present_L.all():
            n_LT[~present_L] = 0.0
        p_noise = float(np.einsum("lt,lt->l", n_LT, n_LT)[present_L].mean()) / x_LT.shape[1]
        if not p_noise > 0:
            raise ValueError(f"{self.name}: the noise model has no power on a record of {x_LT.shape[1]} samples "
                             f"at {fs:g} Hz (too short for it)")
        scale = math.sqrt(p_signal / (p_noise * 10.0 ** (self.snr_db[severity - 1] / 10.0)))
        n_LT *= scale
        n_LT += x_LT
        return n_LT


def _cis(freq_K: np.ndarray, n_samples: int, fs: float) -> np.ndarray:
    """(K, T) complex ``exp(2 pi i f_k n / fs)`` for n = 0..T-1.

    Written as ``exp(i w (b B)) * exp(i w r)`` with ``n = b B + r`` and ``B ~ sqrt(T)``: one outer product of two
    short vectors instead of T trigonometric evaluations per frequency (exact to float rounding).
    """
    block = max(1, math.isqrt(n_samples))
    omega_K1 = (2.0 * np.pi / fs) * np.asarray(freq_K, dtype=np.float64)[:, None]
    coarse_KB = np.exp(1j * omega_K1 * (block * np.arange(-(-n_samples // block)))[None, :])
    fine_KR = np.exp(1j * omega_K1 * np.arange(block)[None, :])
    return (coarse_KB[:, :, None] * fine_KR[:, None, :]).reshape(len(omega_K1), -1)[:, :n_samples]


def _knots(z_EK: np.ndarray, n_samples: int, fs: float, step_s: float) -> np.ndarray:
    """(E, T): values ``z_EK`` at knots every ``step_s`` seconds from t = 0, linearly interpolated."""
    pos_T = np.arange(n_samples) / (fs * step_s)
    knots_K = np.arange(z_EK.shape[1], dtype=np.float64)
    out_ET = np.empty((z_EK.shape[0], n_samples))
    for e, z_K in enumerate(z_EK):   # one C-level interpolation per electrode
        out_ET[e] = np.interp(pos_T, knots_K, z_K)
    return out_ET


def _n_knots(n_samples: int, fs: float, step_s: float) -> int:
    return int((n_samples - 1) / (fs * step_s)) + 2


@dataclass(frozen=True)
class BaselineWander(_AdditiveNoise):
    """Respiration-like baseline wander: a sum of low-frequency sinusoids, all at most ``max_hz``.

    One respiratory frequency per record, uniform in ``respiration_hz`` (9-24 breaths/min), plus
    ``n_drift`` slower drift components uniform in ``drift_hz``; each electrode gets its own Gaussian sine
    and cosine weights per component (a Rayleigh amplitude and uniform phase), since breathing moves the
    heart and changes each electrode's skin contact differently. This is the NSTDB 'bw' noise type and the
    baseline drift of Friesen et al. 1990 (a sinusoid at respiratory frequency).
    """

    respiration_hz: tuple[float, float] = (0.15, 0.4)
    drift_hz: tuple[float, float] = (0.02, 0.15)
    n_drift: int = 2
    max_hz: float = 0.5
    name: ClassVar[str] = "baseline_wander"

    def __post_init__(self) -> None:
        super().__post_init__()
        for field, (lo, hi) in (("respiration_hz", self.respiration_hz), ("drift_hz", self.drift_hz)):
            if not 0 < lo <= hi <= self.max_hz:
                raise ValueError(f"{self.name}: {field} must satisfy 0 < low <= high <= {self.max_hz:g} Hz")

    def _lead_noise(self, n_samples: int, fs: float, rng: np.random.Generator) -> np.ndarray:
        freq_K = np.concatenate([[rng.uniform(*self.respiration_hz)], rng.uniform(*self.drift_hz, self.n_drift)])
        shape = (len(ELECTRODES), len(freq_K))
        sin_LK, cos_LK = _project(rng.standard_normal(shape)), _project(rng.standard_normal(shape))
        cis_KT = _cis(freq_K, n_samples, fs)
        # Projecting the per-electrode weights first is the same sum, with 12 x K instead of E x T work.
        n_LT = np.zeros((len(LEADS), n_samples))
        for k in range(len(freq_K)):
            n_LT += sin_LK[:, k, None] * cis_KT[k].imag
            n_LT += cos_LK[:, k, None] * cis_KT[k].real
        return n_LT

    def _describe(self, severity: int) -> str:
        return (f"respiration-like sinusoids ({self.respiration_hz[0]:g}-{self.respiration_hz[1]:g} Hz) plus "
                f"{self.n_drift} drifts ({self.drift_hz[0]:g}-{self.drift_hz[1]:g} Hz), SNR "
                f"{self.snr_db[severity - 1]:g} dB")


def _alias(freq: float, fs: float) -> float:
    """The frequency in [0, fs/2] at which a sampled sinusoid of ``freq`` Hz appears."""
    return abs((freq + fs / 2.0) % fs - fs / 2.0)


@dataclass(frozen=True)
class PowerlineNoise(_AdditiveNoise):
    """Mains interference: a ``frequency`` Hz sinusoid (50 or 60) with small odd harmonics.

    The mains field couples into every electrode in phase; what reaches a lead is the part that impedance
    imbalance turns into a differential signal, so each electrode gets its own Gaussian (signed) weight of
    one common waveform ``cos(2 pi f t + phi) + sum_h r_h cos(2 pi h f t + phi_h)`` with random phases and the
    harmonic amplitude ratios ``harmonics`` ((3, 0.1), (5, 0.05) by default). Friesen et al. 1990 model
    power-line interference as a 60 Hz sinusoid with harmonics. A component above the Nyquist frequency
    appears at its alias frequency, as a sampler without anti-aliasing filter would record it (at 500 Hz
    only the fifth harmonic of 60 Hz, at 200 Hz; at 100 Hz the 60 Hz fundamental itself, at 40 Hz); a
    component exactly at Nyquist (50 Hz at fs = 100 Hz) uses phase 0, so that it is not sampled at its
    zeros.
    """

    frequency: float = 50.0
    harmonics: tuple[tuple[int, float], ...] = ((3, 0.1), (5, 0.05))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.frequency > 0:
            raise ValueError(f"powerline: frequency must be > 0 Hz, got {self.frequency!r}")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"powerline_{self.frequency:g}"

    def _lead_noise(self, n_samples: int, fs: float, rng: np.random.Generator) -> np.ndarray:
        orders = [1, *(h for h, _ in self.harmonics)]
        amps = np.array([1.0, *(r for _, r in self.harmonics)])
        freq_K = np.array([_alias(h * self.frequency, fs) for h in orders])
        phase_K = np.where(np.isclose(freq_K, fs / 2.0), 0.0, rng.uniform(0.0, 2.0 * np.pi, len(orders)))
        wave_T = ((amps * np.exp(1j * phase_K))[:, None] * _cis(freq_K, n_samples, fs)).real.sum(axis=0)
        return _project(rng.standard_normal((len(ELECTRODES), 1))) * wave_T[None, :]

    def _describe(self, severity: int) -> str:
        return f"{self.frequency:g} Hz mains hum with odd harmonics, SNR {self.snr_db[severity - 1]:g} dB"


def _band_limited_noise(shape: tuple[int, int], fs: float, band: tuple[float, float],
                        rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with a flat spectrum in ``band`` (Hz, upper edge clipped to Nyquist) and none outside.

    The discrete Fourier coefficients of white Gaussian noise are independent complex Gaussians, so the
    ideal band-pass of white noise is drawn directly in the frequency domain (only the in-band
    coefficients, then one inverse FFT); the spectrum outside the band is exactly zero.
    """
    n_samples = shape[1]
    freq = np.fft.rfftfreq(n_samples, 1.0 / fs)
    keep = np.flatnonzero((freq >= band[0]) & (freq <= min(band[1], fs / 2.0)))
    spec = np.zeros((shape[0], len(freq)), dtype=np.complex128)
    if len(keep):   # a contiguous range of bins: write real and imaginary parts in place
        spec.view(np.float64).reshape(shape[0], len(freq), 2)[:, keep[0]: keep[-1] + 1] = \
            rng.standard_normal((shape[0], len(keep), 2))
    return np.fft.irfft(spec, n=n_samples, axis=1)


@dataclass(frozen=True)
class EmgNoise(_AdditiveNoise):
    """Muscle artefact: band-limited Gaussian noise (``band_hz``, 20-150 Hz clipped to Nyquist) in bursts.

    Friesen et al. 1990 model muscle contraction as zero-mean band-limited Gaussian noise; the NSTDB 'ma'
    record is such noise recorded from active volunteers. Muscle activity comes in bursts, so each
    electrode's noise is multiplied by an envelope with independent log-normal values ``exp(burst_sigma * z)``
    (``z`` standard Gaussian) at knots every ``burst_s`` seconds, linearly interpolated (the envelope varies
    at a few Hz at most, so the noise power stays in the band).
    """

    band_hz: tuple[float, float] = (20.0, 150.0)
    burst_s: float = 0.25
    burst_sigma: float = 1.0
    name: ClassVar[str] = "emg_noise"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.band_hz[0] < self.band_hz[1] or not self.band_hz[0] < MIN_FS / 2:
            raise ValueError(f"{self.name}: band_hz must satisfy 0 <= low < high and low < {MIN_FS / 2:g} Hz")
        if not self.burst_s > 0 or not self.burst_sigma >= 0:
            raise ValueError(f"{self.name}: burst_s must be > 0 and burst_sigma >= 0")

    def _lead_noise(self, n_samples: int, fs: float, rng: np.random.Generator) -> np.ndarray:
        n_E = len(ELECTRODES)
        noise_ET = _band_limited_noise((n_E, n_samples), fs, self.band_hz, rng)
        z_EK = rng.standard_normal((n_E, _n_knots(n_samples, fs, self.burst_s)))
        noise_ET *= _knots(np.exp(self.burst_sigma * z_EK), n_samples, fs, self.burst_s)
        return _project(noise_ET)

    def _describe(self, severity: int) -> str:
        return (f"bursty muscle noise in {self.band_hz[0]:g}-{self.band_hz[1]:g} Hz (clipped to Nyquist), SNR "
                f"{self.snr_db[severity - 1]:g} dB")


def _unit_power(a: np.ndarray) -> np.ndarray:
    p = float(np.mean(np.square(a)))
    return a / math.sqrt(p) if p > 0 else a


def _events(n_events: int, n_samples: int, first: int, rng: np.random.Generator
            ) -> list[tuple[int, int, float]]:
    """``n_events`` (electrode index, sample in [first, T), standard Gaussian amplitude) triples."""
    electrode = rng.integers(0, len(ELECTRODES), n_events)
    when = rng.integers(first, n_samples, n_events)
    amp = rng.standard_normal(n_events)
    return list(zip(electrode.tolist(), when.tolist(), amp.tolist()))


@dataclass(frozen=True)
class ElectrodeMotion(_AdditiveNoise):
    """Electrode motion artefact: a slow random walk plus step-like transients that decay back.

    The NSTDB 'em' record (Moody, Muldrow and Mark 1984) was taken from electrodes placed on an active
    volunteer's limbs where the ECG is not visible; it is mainly electrode motion artefact, which moves
    the electrode-skin half-cell potential, with some baseline wander and muscle noise, and it is the
    hardest of the three for QRS detectors because its spectrum overlaps the ECG's. Friesen et al. 1990
    describe the artefact as transient baseline changes from electrode-skin impedance changes, decaying
    exponentially. Model per electrode, each part scaled to equal power:

    - a leaky random walk (Ornstein-Uhlenbeck process, time constant ``walk_tau_s``, started in its
      stationary state): white noise through ``1 / (1 - a z^-1)``, ``a = exp(-step / tau)``, drawn at knots
      every ``walk_step_s`` seconds and linearly interpolated (the walk's power is far below 1 Hz; the
      knots keep the cost independent of ``fs``);
    - ``1 + Poisson(rate_hz * duration)`` transients at random electrodes and times: a Gaussian step that
      recovers exponentially with one time constant per record, uniform in ``recovery_s``.
    """

    walk_tau_s: float = 2.0
    walk_step_s: float = 0.02
    rate_hz: float = 0.3
    recovery_s: tuple[float, float] = (0.2, 1.0)
    name: ClassVar[str] = "electrode_motion"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.walk_tau_s > 0 and self.walk_step_s > 0 and self.rate_hz >= 0
                and 0 < self.recovery_s[0] <= self.recovery_s[1]):
            raise ValueError(f"{self.name}: need walk_tau_s > 0, walk_step_s > 0, rate_hz >= 0 and "
                             "0 < recovery_s[0] <= recovery_s[1]")

    def _lead_noise(self, n_samples: int, fs: float, rng: np.random.Generator) -> np.ndarray:
        n_E, n_knots = len(ELECTRODES), _n_knots(n_samples, fs, self.walk_step_s)
        a_walk = math.exp(-self.walk_step_s / self.walk_tau_s)
        start_E = rng.standard_normal(n_E) * a_walk / math.sqrt(1.0 - a_walk**2)
        walk_EK = lfilter([1.0], [1.0, -a_walk], rng.standard_normal((n_E, n_knots)), axis=1, zi=start_E[:, None])[0]
        n_events = 1 + int(rng.poisson(self.rate_hz * n_samples / fs))
        decay_T = np.exp(-np.arange(n_samples) / (fs * rng.uniform(*self.recovery_s)))
        transient_ET = np.zeros((n_E, n_samples))
        for electrode, when, amp in _events(n_events, n_samples, 0, rng):
            transient_ET[electrode, when:] += amp * decay_T[: n_samples - when]
        return _project(_unit_power(_knots(walk_EK, n_samples, fs, self.walk_step_s)) + _unit_power(transient_ET))

    def _describe(self, severity: int) -> str:
        return (f"electrode motion: random walk (tau {self.walk_tau_s:g} s) plus decaying steps "
                f"(~{self.rate_hz:g}/s), SNR {self.snr_db[severity - 1]:g} dB")


@dataclass(frozen=True)
class BaselineShift(_AdditiveNoise):
    """Abrupt baseline shifts: ``1 + Poisson(rate_hz * duration)`` DC steps at random times and electrodes.

    Each step is a Gaussian jump of one electrode's potential that persists to the end of the record
    (projected to the leads like every electrode noise here), as when an electrode's contact changes
    suddenly (Friesen et al. 1990, "abrupt baseline shift"). Steps fall at samples 1..T-1, so each is a
    real step, never a constant offset.
    """

    rate_hz: float = 0.1
    name: ClassVar[str] = "baseline_shift"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.rate_hz >= 0:
            raise ValueError(f"{self.name}: rate_hz must be >= 0, got {self.rate_hz!r}")

    def _lead_noise(self, n_samples: int, fs: float, rng: np.random.Generator) -> np.ndarray:
        n_events = 1 + int(rng.poisson(self.rate_hz * n_samples / fs))
        n_LT = np.zeros((len(LEADS), n_samples))
        for electrode, when, amp in _events(n_events, n_samples, 1, rng):
            n_LT[:, when:] += amp * LEAD_FROM_ELECTRODE[:, electrode, None]
        return n_LT

    def _describe(self, severity: int) -> str:
        return f"abrupt DC steps (~{self.rate_hz:g}/s, at least one), SNR {self.snr_db[severity - 1]:g} dB"


# ------------------------------------------------------------------------------------------------
# Lead and amplifier faults, time-base errors
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LeadDropout(Corruption):
    """``n_leads[severity - 1]`` leads set to zero for the whole record (the project's mark of a missing lead).

    The leads are drawn at random among the record's present (not all-zero) leads first, so exactly that
    many leads change whenever the record has enough present leads. Measure: number of leads zeroed.
    """

    n_leads: tuple[int, ...] = (1, 2, 4, 6, 9)
    name: ClassVar[str] = "lead_dropout"
    measure: ClassVar[str] = "leads_zeroed"

    def __post_init__(self) -> None:
        _check_table(self.name, "n_leads", self.n_leads, increasing=True)
        if not all(float(k).is_integer() and 1 <= k <= len(LEADS) for k in self.n_leads):
            raise ValueError(f"{self.name}: n_leads must be integers in 1..{len(LEADS)}, got {self.n_leads!r}")

    def level(self, severity: int) -> float:
        severity = self._severity(severity)
        return 0.0 if severity == 0 else float(self.n_leads[severity - 1])

    def _corrupt(self, x_LT: np.ndarray, severity: int, fs: float, rng: np.random.Generator) -> np.ndarray:
        present_L = np.any(x_LT != 0, axis=1)
        order = np.concatenate([rng.permutation(np.flatnonzero(present_L)),
                                rng.permutation(np.flatnonzero(~present_L))])
        x_LT[order[: int(self.n_leads[severity - 1])]] = 0.0
        return x_LT

    def _describe(self, severity: int) -> str:
        return f"{int(self.n_leads[severity - 1])} random leads set to zero"


@dataclass(frozen=True)
class LeadReversal(Corruption):
    """Electrode cable misplacements; severity ``s`` applies the first ``s`` swaps of ``swaps`` in order.

    Default (cumulative; leads changed in brackets, the measure ``level``):

    1. LA/RA reversal, the most common one: I' = -I, II' = III, III' = II, aVR' = aVL, aVL' = aVR, aVF' = aVF,
       precordial leads unchanged (5 leads);
    2. + V1/V2 cables swapped (7);
    3. + LA/LL swap: the three limb cables rotated (RA on the LA site, LA on LL, LL on RA): I' = III,
       II' = -I, III' = -II, aVR' = aVL, aVL' = aVF, aVF' = aVR (8);
    4. + V2/V3 swap: V1, V2, V3 cables rotated (V1 on the V2 site, V2 on V3, V3 on V1) (9);
    5. + RA/RL (neutral) swap: RA now records the right leg, i.e. (Batchvarov et al. 2007) the left leg's
       potential, as does LA, so I' is a flat line, II' = III' = aVF' = -II, aVR' = aVL' = II/2, and
       Wilson's terminal moves so every precordial lead changes, V' = V - III/3 (12).

    The matrices come from :func:`misplacement_matrix` (Einthoven/Goldberger/Wilson definitions evaluated
    on the swapped sites; Batchvarov, Malik and Camm, Europace 2007). Deterministic: ``rng`` is not used.
    """

    swaps: tuple[tuple[str, str], ...] = (("LA", "RA"), ("V1", "V2"), ("LA", "LL"), ("V2", "V3"), ("RA", "RL"))
    name: ClassVar[str] = "lead_reversal"
    measure: ClassVar[str] = "leads_changed"

    def __post_init__(self) -> None:
        if len(self.swaps) != MAX_SEVERITY:
            raise ValueError(f"{self.name}: swaps needs {MAX_SEVERITY} cable pairs (one per severity)")
        _check_table(self.name, "leads changed per severity", tuple(self.level(s) for s in range(1, 6)), True)

    def matrix(self, severity: int) -> np.ndarray:
        """(12, 12) read-only ``M`` with ``x' = M @ x`` at ``severity`` (the identity at 0)."""
        return misplacement_matrix(tuple(tuple(pair) for pair in self.swaps[: self._severity(severity)]))

    def level(self, severity: int) -> float:
        m_LL = self.matrix(severity)
        return float(np.sum(np.any(m_LL != np.eye(len(LEADS)), axis=1)))

    def _corrupt(self, x_LT: np.ndarray, severity: int, fs: float, rng: np.random.Generator) -> np.ndarray:
        return _combine_rows(self.matrix(severity), x_LT)

    def _describe(self, severity: int) -> str:
        done = ", ".join(f"{a}/{b}" for a, b in self.swaps[:severity])
        return f"cable swaps {done} ({int(self.level(severity))} leads changed)"


@dataclass(frozen=True)
class GainError(Corruption):
    """Per-lead amplifier gain error: lead ``l`` is multiplied by ``1 + s_l * delta`` with random signs ``s_l``.

    ``delta = rel_error[severity - 1]`` (5, 10, 20, 35, 50 %). Every lead is off by exactly ``delta`` in
    relative terms, so the record's relative error ``|x' - x| / |x|`` (Frobenius norms) is exactly ``delta``
    whatever the signal: the measure is strictly monotone on every record. Severity 5 is the kind of error a
    wrong calibration pulse or a 5 vs 10 mm/mV mix-up produces.
    """

    rel_error: tuple[float, ...] = (0.05, 0.10, 0.20, 0.35, 0.50)
    name: ClassVar[str] = "gain_error"
    measure: ClassVar[str] = "relative_error"

    def __post_init__(self) -> None:
        _check_table(self.name, "rel_error", self.rel_error, increasing=True)
        if not (0 < self.rel_error[0] and self.rel_error[-1] < 1):
            raise ValueError(f"{self.name}: rel_error must lie in (0, 1), got {self.rel_error!r}")

    def level(self, severity: int) -> float:
        severity = self._severity(severity)
        return 0.0 if severity == 0 else float(self.rel_error[severity - 1])

    def _corrupt(self, x_LT: np.ndarray, severity: int, fs: float, rng: np.random.Generator) -> np.ndarray:
        sign_L = rng.choice(np.array([-1.0, 1.0]), size=len(LEADS))
        return x_LT * (1.0 + sign_L * self.rel_error[severity - 1])[:, None]

    def _describe(self, severity: int) -> str:
        return f"each lead's gain off by +-{100 * self.rel_error[severity - 1]:g} % (random sign per lead)"


@dataclass(frozen=True)
class SamplingRateMismatch(Corruption):
    """The record played at the wrong rate: every duration multiplied by ``r = (1 + delta)^(+-1)``.

    ``delta = rate_error[severity - 1]`` (2, 5, 10, 20, 35 %); the sign is random. This is what a pipeline
    produces when a record taken at ``fs`` is declared at ``fs / r`` and resampled from the declared rate
    to ``fs``: RR intervals and QRS widths grow by ``r``, the heart rate falls by ``r``. Implemented with
    ``scipy.signal.resample_poly`` by the rational ``up / down = r`` (``limit_denominator(1000)``; line
    padding at the ends), then the first ``T`` samples are kept; when the result is shorter than ``T``
    (compression) it is completed by mirror reflection of its end (continuous, no step). Measure:
    ``|ln r| = ln(1 + delta)``.
    """

    rate_error: tuple[float, ...] = (0.02, 0.05, 0.10, 0.20, 0.35)
    name: ClassVar[str] = "sampling_rate_mismatch"
    measure: ClassVar[str] = "abs_log_time_factor"

    def __post_init__(self) -> None:
        _check_table(self.name, "rate_error", self.rate_error, increasing=True)
        if not (0 < self.rate_error[0] and self.rate_error[-1] <= 1):
            raise ValueError(f"{self.name}: rate_error must lie in (0, 1], got {self.rate_error!r}")

    def level(self, severity: int) -> float:
        severity = self._severity(severity)
        return 0.0 if severity == 0 else math.log1p(self.rate_error[severity - 1])

    def _corrupt(self, x_LT: np.ndarray, severity: int, fs: float, rng: np.random.Generator) -> np.ndarray:
        ratio = Fraction(1.0 + self.rate_error[severity - 1]).limit_denominator(1000)
        if rng.random() < 0.5:
            ratio = 1 / ratio
        n_samples = x_LT.shape[1]
        y_LT = resample_poly(x_LT, ratio.numerator, ratio.denominator, axis=1, padtype="line")[:, :n_samples]
        if y_LT.shape[1] < n_samples:
            y_LT = np.pad(y_LT, ((0, 0), (0, n_samples - y_LT.shape[1])), mode="symmetric")
        return y_LT

    def _describe(self, severity: int) -> str:
        d = self.rate_error[severity - 1]
        return f"time axis scaled by {1 + d:g} or 1/{1 + d:g} (random), heart rate changed accordingly"


# ------------------------------------------------------------------------------------------------
# Registry and seeded application
# ------------------------------------------------------------------------------------------------

CORRUPTIONS: dict[str, Corruption] = {
    "baseline_wander": BaselineWander(),
    "powerline_50": PowerlineNoise(frequency=50.0),
    "powerline_60": PowerlineNoise(frequency=60.0),
    "emg_noise": EmgNoise(),
    "electrode_motion": ElectrodeMotion(),
    "baseline_shift": BaselineShift(),
    "lead_dropout": LeadDropout(),
    "lead_reversal": LeadReversal(),
    "gain_error": GainError(),
    "sampling_rate_mismatch": SamplingRateMismatch(),
}


def name_key(name: str) -> int:
    """Stable 64-bit integer of a corruption name: the first 8 bytes (little-endian) of its UTF-8 SHA-256.

    Unlike Python's ``hash()``, the same in every process and on every machine.
    """
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def apply(name: str, x_LT: np.ndarray, severity: int, fs: float, seed: int) -> np.ndarray:
    """``CORRUPTIONS[name](x_LT, severity, fs, rng)`` with
    ``rng = np.random.default_rng(np.random.SeedSequence([seed, name_key(name), severity]))``.

    So a (record, corruption, severity, seed) always gives the same result, and the corruptions and
    severities of one seed draw independent random numbers. ``seed`` is a non-negative integer.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(sorted(CORRUPTIONS))}")
    corruption = CORRUPTIONS[name]
    severity = corruption._severity(severity)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name}: seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), name_key(name), severity]))
    return corruption(x_LT, severity, fs, rng)
