"""A small, deterministic, labelled 12-lead demo ECG dataset written as real WFDB records.

``python -m ecg_core.data.demo`` builds it (and, without ``--generate-only``, ingests it into a store);
:func:`generate_demo` is the library entry point. Everything follows from one integer seed.

Signal model
------------
Each heart beat is a sum of Gaussian waves (P, Q, R, S, T, plus ST/R'/notch/infarct waves for the
abnormal classes), in the spirit of the dynamical model of McSharry, Clifford, Tarassenko and Smith,
"A dynamical model for generating synthetic electrocardiogram signals", IEEE Trans. Biomed. Eng.
50(3):289-294, 2003, whose trajectory is ``z(theta) = sum_i a_i exp(-(theta - theta_i)^2 / (2 b_i^2))``.
As in the three-dimensional extension of Sameni, Clifford, Jutten and Shamsollahi, "Multichannel ECG
and noise modeling: application to maternal and fetal ECG signals", EURASIP J. Adv. Signal Process.
2007:043407, every wave has its own direction, so the sum is a cardiac dipole (a vectorcardiogram)
``d(t) = sum_beats sum_waves a_w u_w exp(-(t - t_beat - mu_w)^2 / (2 sigma_w^2))`` with amplitude
``a_w`` and unit vector ``u_w`` in the Frank axes (x to the patient's left, y to the feet, z to the
back). Wave centres and widths are written in seconds relative to the R peak; the repolarisation
waves scale with the square root of the preceding RR interval (Bazett, Heart 7:353-370, 1920), as
McSharry et al. scale their angles with the heart rate.

The dipole is projected onto the eight independent leads I, II, V1-V6 with the Dower transform
(Dower, Machado and Osborne, "On deriving the electrocardiogram from vectorcardiographic leads",
Clin. Cardiol. 3:87-95, 1980). Its pseudo-inverse is the inverse Dower matrix of Edenbrandt and
Pahlm, "Vectorcardiogram synthesized from a 12-lead ECG: superiority of the inverse Dower matrix",
J. Electrocardiol. 21(4):361-367, 1988 (both tables are below; the tests check they agree). Noise
(baseline wander, powerline hum, white noise) is added per independent lead, the leads are quantised
to 1 uV, and III, aVR, aVL, aVF are derived from the quantised I and II with Einthoven's and
Goldberger's relations, so they hold exactly (III) or to half a microvolt (augmented leads).

Classes (:data:`DEMO_CLASSES`)
------------------------------
Each record has one rhythm (sinus at 62-96 bpm, SBRAD 40-57 bpm, STACH 104-150 bpm, or AFIB:
irregular RR, no P waves, 4-9 Hz fibrillatory waves) and at most one morphology (LBBB, RBBB, MI,
LVH). Labels follow PTB-XL's convention: ``NORM`` is a normal ECG (sinus 60-100 bpm, no morphology
finding); other records list their rhythm label if not sinus at a normal rate and their morphology
label. Rates keep a few bpm away from the 60/100 bpm thresholds so that every label is unambiguous.
Each patient has a stable "anatomy" (electrical axis, heart rotation, amplitude, intervals, noise
site) and a primary condition; morphology is a property of the patient, while the rhythm can change
between a patient's recordings (for example paroxysmal AF).

Files
-----
``out_dir/gNN/PXXXX_KK.hea|.dat``: WFDB format 16, 12 leads in the canonical order :data:`DEMO_LEADS`,
``adc_gain`` 1000 per mV, baseline 0 (1 uV per count), units mV. Metadata are header comments
``# Key: value`` with the keys of :data:`HEADER_KEYS`. ``out_dir/RECORDS`` lists the records as
PhysioNet does. Folds 1-10 are assigned per patient (1-8 train, 9 validation, 10 test, as PTB-XL's
``strat_fold``), stratified by the patient's primary condition.

The ``.hea``/``.dat`` files hold integer samples with explicit format, gain and baseline, so the values
read back are exact; :func:`write_wfdb_record` writes byte for byte what ``wfdb.wrsamp`` writes for them
(tested), at a fraction of its per-record cost.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ecg_core.data.ingest import INT16_MAX, WFDB_META_KEYS
from ecg_core.data.leads import LEADS

# Canonical 12-lead order (PTB-XL, CinC Challenges).
DEMO_LEADS = LEADS

RHYTHM_CLASSES = ("SBRAD", "STACH", "AFIB")
MORPHOLOGY_CLASSES = ("LBBB", "RBBB", "MI", "LVH")
DEMO_CLASSES = ("NORM", *RHYTHM_CLASSES, *MORPHOLOGY_CLASSES)
SINUS = "SR"  # rhythm of a record that is sinus at a normal rate (carries no rhythm label)

# Table column -> key of the ``# Key: value`` header comment that carries it: the generic ``wfdb``
# ingest format's metadata convention, which the demo follows like any other WFDB source.
HEADER_KEYS = WFDB_META_KEYS

TRAIN_FOLDS = (1, 2, 3, 4, 5, 6, 7, 8)
VAL_FOLD = 9
TEST_FOLD = 10
N_FOLDS = 10

ADC_GAIN = 1000  # digital counts per mV: 1 uV per count
UNITS = "mV"
WFDB_FMT = "16"
RECORDS_FILE = "RECORDS"
PATIENTS_PER_FOLDER = 50

# Dower et al. 1980: leads (rows I, II, V1-V6) from the Frank dipole (columns x, y, z), mV per mV.
DOWER_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
DOWER = np.array([
    [0.632, -0.235, 0.059],
    [0.235, 1.066, -0.132],
    [-0.515, 0.157, -0.917],
    [0.044, 0.164, -1.387],
    [0.882, 0.098, -1.277],
    [1.213, 0.127, -0.601],
    [1.125, 0.127, -0.086],
    [0.831, 0.076, 0.230],
])
# Edenbrandt & Pahlm 1988: the inverse Dower matrix, dipole (rows x, y, z) from leads I, II, V1-V6.
INVERSE_DOWER = np.array([
    [0.156, -0.010, -0.172, -0.074, 0.122, 0.231, 0.239, 0.194],
    [-0.227, 0.887, 0.057, -0.019, -0.106, -0.022, 0.041, 0.048],
    [0.022, 0.102, -0.229, -0.310, -0.246, -0.063, 0.055, 0.108],
])

# Record rhythm given the patient's primary condition: (rhythms, probabilities).
_RHYTHM_MIX = {
    "NORM": ((SINUS, "SBRAD", "STACH"), (0.9, 0.05, 0.05)),
    "SBRAD": (("SBRAD", SINUS), (0.8, 0.2)),
    "STACH": (("STACH", SINUS), (0.8, 0.2)),
    "AFIB": (("AFIB", SINUS), (0.8, 0.2)),
}
_MORPHOLOGY_RHYTHM_MIX = ((SINUS, "SBRAD", "STACH", "AFIB"), (0.8, 0.06, 0.06, 0.08))
# Heart rate range (bpm) per rhythm; kept clear of the 60 and 100 bpm label thresholds.
_RATE_RANGE = {SINUS: (62.0, 96.0), "SBRAD": (40.0, 57.0), "STACH": (104.0, 150.0), "AFIB": (68.0, 135.0)}
# Normal(centre, spread) of a record's rate before clipping to the range (sinus: around the patient's rate).
_RATE_DRAW = {SINUS: (0.0, 4.0), "SBRAD": (49.0, 4.0), "STACH": (120.0, 12.0), "AFIB": (100.0, 18.0)}

_RHYTHM_TEXT = {
    SINUS: ("sinus rhythm", "normal sinus rhythm", "regular sinus rhythm"),
    "SBRAD": ("sinus bradycardia", "marked sinus bradycardia", "sinus rhythm, bradycardic"),
    "STACH": ("sinus tachycardia", "sinus rhythm, tachycardic", "sinus tachycardia, regular"),
    "AFIB": ("atrial fibrillation", "atrial fibrillation with irregular ventricular response",
             "af, irregularly irregular rhythm"),
}
_MORPHOLOGY_TEXT = {
    "LBBB": ("left bundle branch block", "complete left bundle branch block", "lbbb"),
    "RBBB": ("right bundle branch block", "complete right bundle branch block", "rbbb"),
    "MI:inferior": ("inferior myocardial infarction", "inferior infarct, age undetermined",
                    "q waves and st elevation in ii, iii, avf, consistent with inferior mi"),
    "MI:anterior": ("anterior myocardial infarction", "anteroseptal infarct, age undetermined",
                    "q waves and st elevation in v1-v4, consistent with anterior mi"),
    "LVH": ("left ventricular hypertrophy", "voltage criteria for left ventricular hypertrophy",
            "lvh with high qrs voltage"),
}
_NORMAL_TEXT = ("normal ecg", "within normal limits", "normal qrs, st and t")
_OTHERWISE_NORMAL_TEXT = ("otherwise normal ecg", "no other abnormality", "qrs, st and t otherwise normal")


@dataclass(frozen=True)
class Patient:
    """The stable "anatomy" and condition of one patient, shared by all their records."""

    index: int
    patient_id: str
    primary: str  # one of DEMO_CLASSES: the condition the patient was drawn for
    morphology: str | None  # LBBB, RBBB, MI, LVH or None (fixed for the patient)
    mi_site: str  # "inferior" or "anterior" (MI only)
    lvh_strain: bool  # LVH with repolarisation ("strain") changes
    sex: str
    age: int
    axis_deg: float  # frontal-plane angle of the main QRS force (0 = leftward, 90 = to the feet)
    tilt_deg: float  # angle of the main QRS force out of the frontal plane, positive to the back
    rotation_deg: float  # rotation of the heart about the vertical axis (shifts the precordial transition)
    amplitude: float  # overall voltage scale
    qrs_scale: float  # QRS duration scale
    p_scale: float
    t_scale: float
    pr_s: float  # P-wave centre before the R peak at RR = 1 s
    qt_s: float  # T-wave centre after the R peak at RR = 1 s
    sinus_rate: float  # the patient's resting sinus rate (bpm) for normal-rate recordings
    powerline_hz: float
    white_uv: float  # white-noise standard deviation
    hum_uv: float  # powerline amplitude
    wander_mv: float  # baseline-wander amplitude


@dataclass(frozen=True)
class _Waves:
    """One record's wave table: W Gaussian waves of the dipole."""

    mu_W: np.ndarray  # centre relative to the R peak (s) at RR = 1 s
    sigma_W: np.ndarray  # width (s) at RR = 1 s
    rate_exp_W: np.ndarray  # centre and width scale with RR ** rate_exp (0: QRS, 0.5: repolarisation)
    vec_W3: np.ndarray  # amplitude (mV) times direction in Frank axes
    resp_W: np.ndarray  # 1 where the respiratory amplitude modulation applies


def _vec(frontal_deg: float, tilt_deg: float, amp: float) -> np.ndarray:
    """``amp`` times the unit vector at ``frontal_deg`` in the frontal plane, tilted ``tilt_deg`` back."""
    a, b = np.deg2rad(frontal_deg), np.deg2rad(tilt_deg)
    return amp * np.array([np.cos(b) * np.cos(a), np.cos(b) * np.sin(a), np.sin(b)])


def _rot_y(deg: float) -> np.ndarray:
    """Rotation about the vertical (y) axis; positive turns the x axis towards the back (z)."""
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])


def _wave_table(p: Patient, rhythm: str, axis_jitter: float, amp_jitter: float) -> _Waves:
    """Gaussian waves (centre, width, rate exponent, dipole vector) of one record's beats."""
    ax = p.axis_deg + axis_jitter
    tilt = p.tilt_deg
    amp = p.amplitude * amp_jitter
    w = p.qrs_scale
    r_amp, s_amp, t_amp = 1.6, 0.4, 1.0
    t_dir = (ax - 10.0, -20.0)  # normal T: concordant with the QRS, somewhat anterior
    waves: list[tuple[float, float, float, np.ndarray, float]] = []
    if rhythm != "AFIB":
        waves.append((-p.pr_s, 0.024, 0.2, _vec(55.0, -10.0, 0.13 * p.p_scale), 0.0))

    m = p.morphology
    if m == "LVH":
        r_amp, s_amp, w, tilt = r_amp * 1.6, s_amp * 2.0, w * 1.12, tilt + 10.0
        if p.lvh_strain:
            t_dir, t_amp = (ax + 180.0, 10.0), 0.9
            waves.append((0.15, 0.05, 0.5, _vec(ax + 180.0, 0.0, 0.08), 0.0))  # lateral ST depression
    if m == "LBBB":
        # Septum activated from the left: no septal q; slow, notched, posterior-leftward activation
        # (broad notched R in I, aVL, V5-V6; QS in V1-V3), QRS ~140-170 ms, discordant ST-T.
        axl = ax - 25.0
        waves.append((-0.035 * w, 0.020 * w, 0.0, _vec(axl, 40.0, 1.3), 1.0))
        waves.append((0.030 * w, 0.022 * w, 0.0, _vec(axl - 10.0, 55.0, 1.4), 1.0))
        waves.append((0.14, 0.05, 0.5, _vec(axl + 180.0, -45.0, 0.12), 0.0))
        t_dir, t_amp = (axl + 180.0, -45.0), 1.1
    else:
        if not (m == "MI" and p.mi_site == "anterior"):
            waves.append((-0.028 * w, 0.009 * w, 0.0, _vec(195.0, -35.0, 0.15), 1.0))  # septal q
        r_ax, r_gain = ax, 1.0
        if m == "MI" and p.mi_site == "inferior":
            r_ax, r_gain = ax - 35.0, 0.85
            waves.append((-0.022, 0.013, 0.0, _vec(-90.0, 0.0, 0.45), 1.0))  # pathological inferior q
            waves.append((0.13, 0.06, 0.5, _vec(90.0, -10.0, 0.2), 0.0))  # inferior ST elevation
        if m == "MI" and p.mi_site == "anterior":
            waves.append((-0.022, 0.013, 0.0, _vec(0.0, 90.0, 0.45), 1.0))  # QS in V1-V3
            waves.append((0.13, 0.06, 0.5, _vec(0.0, -70.0, 0.2), 0.0))  # anterior ST elevation
        waves.append((0.0, 0.011 * w, 0.0, _vec(r_ax, tilt, r_amp * r_gain), 1.0))
        s_sigma = 0.010 * w
        if m == "RBBB":
            # Delayed right-ventricular activation: a late rightward-anterior force (rsR' in V1,
            # broad S in I and V6), QRS ~130-160 ms, T opposite to the terminal force.
            s_sigma = 0.014 * w
            waves.append((0.068 * w, 0.019 * w, 0.0, _vec(170.0, -55.0, 0.6), 1.0))
            t_dir = (ax, 15.0)
        waves.append((0.026 * w, s_sigma, 0.0, _vec(-135.0, 30.0, s_amp), 1.0))
    # Asymmetric T: a broad early Gaussian and a narrower late one (slow rise, faster fall).
    t_amp *= p.t_scale
    waves.append((0.27 * p.qt_s / 0.3, 0.06, 0.5, _vec(*t_dir, 0.2 * t_amp), 0.5))
    waves.append((0.33 * p.qt_s / 0.3, 0.035, 0.5, _vec(*t_dir, 0.17 * t_amp), 0.5))

    mu, sigma, rate_exp, vec, resp = (np.array(col) for col in zip(*waves))
    vec = amp * (np.asarray(vec) @ _rot_y(p.rotation_deg).T)
    return _Waves(mu, sigma, rate_exp, vec, resp)


def _beat_times(rhythm: str, rate_bpm: float, rng: np.random.Generator, duration_s: float,
                resp_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """R-peak times (s) covering [-1, duration + 0.5) and each beat's preceding RR interval (s).

    Sinus rhythm has respiratory sinus arrhythmia (RR modulated at the breathing rate); AF has
    independent, irregular RR intervals.
    """
    rr0 = 60.0 / rate_bpm
    n = int(np.ceil((duration_s + 1.5) / (0.75 * rr0))) + 2
    if rhythm == "AFIB":
        # Irregularly irregular: independent log-normal RR intervals (CV ~ 0.15-0.30), refractory floor.
        cv = rng.uniform(0.15, 0.3)
        rr = rr0 * np.exp(rng.normal(-0.5 * cv * cv, cv, n))
        rr = np.maximum(rr, 0.3)
    else:
        rsa = rng.uniform(0.015, 0.04)
        phase = rng.uniform(0.0, 2.0 * np.pi)
        k = np.arange(n)
        rr = rr0 * (1.0 + rsa * np.sin(2.0 * np.pi * resp_hz * k * rr0 + phase) + rng.normal(0.0, 0.006, n))
    t = -1.0 + rng.uniform(0.0, rr0) + np.concatenate([[0.0], np.cumsum(rr[:-1])])
    rr_prev = np.concatenate([[rr0], rr[:-1]])
    keep = t < duration_s + 0.5
    return t[keep], rr_prev[keep]


def _render_dipole(t_N: np.ndarray, rr_N: np.ndarray, waves: _Waves, amp_NW: np.ndarray, fs: float,
                   n_samples: int) -> np.ndarray:
    """Sum the Gaussian waves of all beats into the dipole (3, T); each beat drawn on a 1.2 s window."""
    pre, length = round(0.4 * fs), round(1.2 * fs)
    idx_NL = np.floor(t_N * fs).astype(np.int64)[:, None] - pre + np.arange(length)[None, :]
    tau_NL = idx_NL / fs - t_N[:, None]
    scale_NW = rr_N[:, None] ** waves.rate_exp_W[None, :]
    mu_NW, sigma_NW = waves.mu_W[None, :] * scale_NW, waves.sigma_W[None, :] * scale_NW
    g_NWL = np.exp(-0.5 * ((tau_NL[:, None, :] - mu_NW[:, :, None]) / sigma_NW[:, :, None]) ** 2)
    d_NL3 = np.einsum("nwl,nw,wc->nlc", g_NWL, amp_NW, waves.vec_W3)
    ok = (idx_NL >= 0) & (idx_NL < n_samples)
    idx = idx_NL[ok]
    return np.stack([np.bincount(idx, weights=d_NL3[..., c][ok], minlength=n_samples) for c in range(3)])


def _fibrillation(rng: np.random.Generator, t_T: np.ndarray, fs: float) -> np.ndarray:
    """Atrial fibrillatory waves (3, T): two frequency- and amplitude-modulated 4-9 Hz components."""
    out = np.zeros((3, t_T.size))
    for direction in (_vec(60.0, -40.0, 1.0), _vec(150.0, 20.0, 0.6)):
        f0 = rng.uniform(4.5, 8.0)
        f_T = f0 + 0.8 * np.sin(2.0 * np.pi * rng.uniform(0.05, 0.2) * t_T + rng.uniform(0, 2 * np.pi))
        phase_T = 2.0 * np.pi * np.cumsum(f_T) / fs + rng.uniform(0, 2 * np.pi)
        env_T = 1.0 + 0.4 * np.sin(2.0 * np.pi * rng.uniform(0.1, 0.4) * t_T + rng.uniform(0, 2 * np.pi))
        out += rng.uniform(0.04, 0.09) * direction[:, None] * (env_T * np.sin(phase_T))[None, :]
    return out


def _noise(p: Patient, rng: np.random.Generator, t_T: np.ndarray, resp_hz: float) -> np.ndarray:
    """Electrode-level noise (8, T) in mV for the independent leads: wander, powerline hum, white noise.

    Each lead gets its own amplitude and phase per component; ``a sin(wt + phi)`` is expanded as
    ``a cos(phi) sin(wt) + a sin(phi) cos(wt)`` so that each frequency's sinusoid is computed once.
    """
    n_leads = len(DOWER_LEADS)
    freqs_K = np.array([resp_hz, rng.uniform(0.03, 0.1), rng.uniform(0.1, 0.5), p.powerline_hz])
    phases_LK = rng.uniform(0.0, 2.0 * np.pi, (n_leads, 4))
    amps_LK = rng.uniform(0.2, 1.0, (n_leads, 4)) * np.array([p.wander_mv, 0.8 * p.wander_mv,
                                                              0.3 * p.wander_mv, 1e-3 * p.hum_uv])
    angle_KT = 2.0 * np.pi * freqs_K[:, None] * t_T[None, :]
    sinusoids = ((amps_LK * np.cos(phases_LK)) @ np.sin(angle_KT)
                 + (amps_LK * np.sin(phases_LK)) @ np.cos(angle_KT))
    return sinusoids + rng.normal(0.0, 1e-3 * p.white_uv, (n_leads, t_T.size))


def synthesise_record(p: Patient, rhythm: str, rng: np.random.Generator, fs: int,
                      n_samples: int) -> tuple[np.ndarray, float]:
    """One record of patient ``p``: its samples (T, 12) in uV (leads as :data:`DEMO_LEADS`) and rate (bpm)."""
    lo, hi = _RATE_RANGE[rhythm]
    centre, spread = _RATE_DRAW[rhythm]
    rate = float(np.clip(rng.normal(p.sinus_rate if rhythm == SINUS else centre, spread), lo, hi))
    duration = n_samples / fs
    resp_hz = rng.uniform(0.2, 0.33)
    t_N, rr_N = _beat_times(rhythm, rate, rng, duration, resp_hz)
    waves = _wave_table(p, rhythm, axis_jitter=rng.normal(0.0, 3.0),
                        amp_jitter=float(np.exp(rng.normal(0, 0.04))))
    # Breathing moves the heart: QRS amplitude swings a few per cent at the respiratory rate.
    resp_N = 1.0 + rng.uniform(0.02, 0.06) * np.sin(2.0 * np.pi * resp_hz * t_N + rng.uniform(0, 2 * np.pi))
    amp_NW = 1.0 + (resp_N[:, None] - 1.0) * waves.resp_W[None, :]
    t_T = np.arange(n_samples) / fs
    dipole_3T = _render_dipole(t_N, rr_N, waves, amp_NW, fs, n_samples)
    if rhythm == "AFIB":
        dipole_3T += p.amplitude * _fibrillation(rng, t_T, fs)
    leads_8T = DOWER @ dipole_3T + _noise(p, rng, t_T, resp_hz)
    uv_8T = np.rint(leads_8T * ADC_GAIN).astype(np.int64)
    lead_i, lead_ii = uv_8T[0], uv_8T[1]
    limb_4T = np.stack([lead_ii - lead_i,  # III = II - I (Einthoven)
                        np.rint(-(lead_i + lead_ii) / 2.0),  # aVR (Goldberger)
                        np.rint(lead_i - lead_ii / 2.0),  # aVL
                        np.rint(lead_ii - lead_i / 2.0)]).astype(np.int64)  # aVF
    x_12T = np.concatenate([uv_8T[:2], limb_4T, uv_8T[2:]])
    in_window = t_N[(t_N >= 0.0) & (t_N < duration)]
    measured = 60.0 / float(np.mean(np.diff(in_window))) if in_window.size > 1 else rate
    return np.clip(x_12T, -INT16_MAX, INT16_MAX).astype(np.int16).T, measured


def _draw_patients(seed: int, n_patients: int) -> list[Patient]:
    """Patients with balanced primary conditions (each class about n_patients / 8 times)."""
    rng = np.random.default_rng([seed, 0])
    primaries = rng.permutation(np.resize(np.arange(len(DEMO_CLASSES)), n_patients))
    patients = []
    for i, primary_idx in enumerate(primaries):
        primary = DEMO_CLASSES[int(primary_idx)]
        r = np.random.default_rng([seed, 1, i])
        morphology = primary if primary in MORPHOLOGY_CLASSES else None
        older = primary in ("AFIB", "MI", "LVH", "LBBB")
        sex = "M" if r.random() < (0.65 if primary in ("MI", "LVH") else 0.5) else "F"
        age = int(np.clip(np.rint(r.normal(66.0 if older else 52.0, 12.0)), 18, 92))
        rate_lo, rate_hi = _RATE_RANGE[SINUS]
        patients.append(Patient(
            index=i, patient_id=f"P{i:04d}", primary=primary, morphology=morphology,
            mi_site="inferior" if r.random() < 0.5 else "anterior", lvh_strain=bool(r.random() < 0.5),
            sex=sex, age=age,
            axis_deg=float(np.clip(r.normal(30.0, 18.0), -30.0, 80.0)),
            tilt_deg=float(r.normal(35.0, 7.0)),
            rotation_deg=float(r.normal(0.0, 10.0)),
            amplitude=float(np.exp(r.normal(0.0, 0.13)) * (0.9 if sex == "F" else 1.0)),
            qrs_scale=float(r.uniform(0.9, 1.1)),
            p_scale=float(np.exp(r.normal(0.0, 0.15))),
            t_scale=float(np.exp(r.normal(0.0, 0.15))),
            pr_s=float(r.uniform(0.13, 0.18)),
            qt_s=float(r.uniform(0.28, 0.32)),
            sinus_rate=float(r.uniform(rate_lo + 3.0, rate_hi - 6.0)),
            powerline_hz=50.0 if r.random() < 0.7 else 60.0,
            white_uv=float(r.uniform(4.0, 12.0)),
            hum_uv=float(r.uniform(2.0, 20.0)),
            wander_mv=float(r.uniform(0.03, 0.15)),
        ))
    return patients


def assign_folds(primaries: Sequence[str], seed: int) -> np.ndarray:
    """Fold 1-10 per patient, stratified by primary condition.

    Within each condition, patients go to the fold holding fewest patients of that condition; the
    test and validation folds are filled first when a condition cannot cover all ten folds (so any
    condition with at least two patients reaches folds 9 and 10), remaining ties go to the fold with
    fewest patients overall, then at random.
    """
    rng = np.random.default_rng([seed, 3])
    folds = np.zeros(len(primaries), dtype=np.int64)
    total = np.zeros(N_FOLDS + 1, dtype=np.int64)
    for cls in DEMO_CLASSES:
        members = [i for i, c in enumerate(primaries) if c == cls]
        in_class = np.zeros(N_FOLDS + 1, dtype=np.int64)
        for i in members:
            tie = rng.permutation(N_FOLDS)
            fold = min(range(1, N_FOLDS + 1), key=lambda f: (
                in_class[f], in_class[f] == 0 and f not in (TEST_FOLD, VAL_FOLD), total[f], tie[f - 1]))
            folds[i] = fold
            in_class[fold] += 1
            total[fold] += 1
    return folds


def record_labels(rhythm: str, morphology: str | None) -> list[str]:
    """PTB-XL-style labels of a record: NORM only for normal-rate sinus rhythm without morphology finding."""
    labels = ([rhythm] if rhythm != SINUS else []) + ([morphology] if morphology else [])
    return labels or ["NORM"]


def _report(p: Patient, rhythm: str, rate: float, rng: np.random.Generator) -> str:
    """A free-text report from a few templates and synonyms (lower case, one line, like PTB-XL's)."""
    rhythm_txt = str(rng.choice(_RHYTHM_TEXT[rhythm]))
    key = f"MI:{p.mi_site}" if p.morphology == "MI" else p.morphology
    bpm = round(rate)
    template = int(rng.integers(3))
    if key is None:  # no morphology finding
        other = str(rng.choice(_NORMAL_TEXT if rhythm == SINUS else _OTHERWISE_NORMAL_TEXT))
        return (f"{rhythm_txt}, rate {bpm} bpm. {other}", f"{rhythm_txt} at {bpm}/min, {other}",
                f"{other}; {rhythm_txt}, ventricular rate {bpm} bpm")[template]
    finding = str(rng.choice(_MORPHOLOGY_TEXT[key]))
    return (f"{rhythm_txt}, {finding}, rate {bpm} bpm",
            f"{rhythm_txt} with {finding}. ventricular rate {bpm}/min",
            f"{finding}; {rhythm_txt} at {bpm} bpm")[template]


def header_comments(meta: dict) -> list[str]:
    """``Key: value`` comment lines (without ``#``) for the metadata columns named in :data:`HEADER_KEYS`."""
    values = dict(meta)
    values["labels"] = ",".join(meta["labels"])
    return [f"{key}: {values[col]}" for col, key in HEADER_KEYS.items()]


def write_wfdb_record(stem: Path, d_signal_TL: np.ndarray, fs: int, sig_name: Sequence[str],
                      comments: Sequence[str]) -> None:
    """Write ``stem.hea`` and ``stem.dat`` with ``wfdb.wrsamp``: format 16, 1000 counts per mV, baseline 0.

    wfdb spends ~30-40 ms per record on header bookkeeping (most of the demo's build time); the library
    is the reference writer of the format, so the demo pays that rather than writing headers itself.
    """
    import wfdb

    n = len(sig_name)
    with warnings.catch_warnings():
        # wfdb 4.3.1 calls DataFrame methods with inplace=True, deprecated in pandas 3.1; harmless here.
        warnings.filterwarnings("ignore", message="The inplace keyword in DataFrame")
        wfdb.wrsamp(stem.name, fs=fs, units=[UNITS] * n, sig_name=list(sig_name),
                    d_signal=np.asarray(d_signal_TL, dtype=np.int64), fmt=[WFDB_FMT] * n,
                    adc_gain=[float(ADC_GAIN)] * n, baseline=[0] * n, comments=list(comments),
                    write_dir=str(stem.parent))


def generate_demo(out_dir: Path, *, seed: int = 0, n_patients: int = 120,
                  records_per_patient: tuple[int, int] = (1, 4), fs: int = 500,
                  duration_s: float = 10.0) -> pd.DataFrame:
    """Write the demo dataset into ``out_dir`` and return one row per record.

    Columns: ``record_id`` (WFDB record name), ``path`` (as listed in ``RECORDS``), ``patient_id``,
    ``fold``, ``labels`` (list of :data:`DEMO_CLASSES`), ``report``, ``age``, ``sex``, ``rhythm``
    (``SR`` or a rhythm class), ``heart_rate`` (bpm measured from the beats in the record).
    ``records_per_patient`` is an inclusive range. Same arguments give byte-identical files.
    """
    lo, hi = records_per_patient
    if n_patients < 1 or not 1 <= lo <= hi or fs < 1 or duration_s <= 0:
        raise ValueError("need n_patients >= 1, 1 <= records_per_patient[0] <= [1], fs >= 1, duration_s > 0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_samples = round(duration_s * fs)
    patients = _draw_patients(seed, n_patients)
    folds = assign_folds([p.primary for p in patients], seed)
    rows = []
    for p, fold in zip(patients, folds):
        r = np.random.default_rng([seed, 2, p.index])
        n_records = int(r.integers(lo, hi + 1))
        rhythms, probs = _RHYTHM_MIX.get(p.primary, _MORPHOLOGY_RHYTHM_MIX)
        folder = f"g{p.index // PATIENTS_PER_FOLDER:02d}"
        (out_dir / folder).mkdir(exist_ok=True)
        for k in range(n_records):
            rr = np.random.default_rng([seed, 4, p.index, k])
            drawn = str(rr.choice(rhythms, p=probs))
            # A patient drawn for a rhythm class shows it in their first record, so that every class is
            # present in every fold that holds one patient drawn for it.
            rhythm = rhythms[0] if k == 0 and p.primary in _RHYTHM_MIX else drawn
            x_TL, rate = synthesise_record(p, rhythm, rr, fs, n_samples)
            name = f"{p.patient_id}_{k + 1:02d}"
            meta = {"patient_id": p.patient_id, "fold": int(fold), "age": p.age, "sex": p.sex,
                    "labels": record_labels(rhythm, p.morphology), "report": _report(p, rhythm, rate, rr)}
            write_wfdb_record(out_dir / folder / name, x_TL, fs, DEMO_LEADS, header_comments(meta))
            rows.append({"record_id": name, "path": f"{folder}/{name}", **meta,
                         "rhythm": rhythm, "heart_rate": round(rate, 1)})
    table = pd.DataFrame(rows, columns=["record_id", "path", "patient_id", "fold", "labels", "report",
                                        "age", "sex", "rhythm", "heart_rate"])
    (out_dir / RECORDS_FILE).write_text("".join(f"{path}\n" for path in table["path"]), encoding="ascii")
    return table


def summary_text(table: pd.DataFrame, where: Path) -> str:
    """One paragraph: records, patients, class counts, fold sizes."""
    counts = Counter(label for labels in table["labels"] for label in labels)
    classes = ", ".join(f"{c} {counts.get(c, 0)}" for c in DEMO_CLASSES)
    per_fold = table.groupby("fold").agg(patients=("patient_id", "nunique"), records=("record_id", "size"))
    folds = ", ".join(f"{f}: {r.patients}/{r.records}" for f, r in per_fold.iterrows())
    return (f"Wrote {len(table)} WFDB records of {table['patient_id'].nunique()} patients to {where} "
            f"(12 leads, format {WFDB_FMT}, 1 uV per count). Records per class: {classes}. "
            f"Patients/records per fold: {folds} (folds 1-8 train, {VAL_FOLD} validation, {TEST_FOLD} test).")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ecg_core.data.demo",
        description="Build the synthetic 12-lead demo ECG dataset (WFDB files, labels and folds in the "
                    "header comments) and ingest it into a store. Deterministic from --seed.",
        epilog="Output: WORKDIR/wfdb (WFDB records and RECORDS) and, unless --generate-only, "
               "WORKDIR/demo.zarr.")
    p.add_argument("--workdir", type=Path, default=Path("build/demo"),
                   help="directory for the WFDB files and the store (default: build/demo)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed; same seed gives identical files (default: 0)")
    p.add_argument("--patients", type=int, default=120,
                   help="number of patients (default: 120, about 300 records)")
    p.add_argument("--generate-only", action="store_true",
                   help="only write WORKDIR/wfdb and print a summary; do not ingest")
    return p


def _clear_previous(wfdb_dir: Path) -> None:
    """Remove an earlier demo build (only .hea/.dat files and RECORDS; anything else is left and reported)."""
    if not wfdb_dir.exists():
        return
    files = [f for f in wfdb_dir.rglob("*") if f.is_file()]
    foreign = [f for f in files if f.suffix not in (".hea", ".dat") and f.name != RECORDS_FILE]
    if foreign:
        raise SystemExit(f"{wfdb_dir} holds files that are not demo records (e.g. {foreign[0]}); "
                         "choose another --workdir or remove them")
    for f in files:
        f.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    wfdb_dir = args.workdir / "wfdb"
    _clear_previous(wfdb_dir)
    table = generate_demo(wfdb_dir, seed=args.seed, n_patients=args.patients)
    print(summary_text(table, wfdb_dir))
    if args.generate_only:
        return 0
    from ecg_core.data.ingest import main as ingest_main

    # The ingest prints the store's summary.
    store_path = args.workdir / "demo.zarr"
    return ingest_main(["--format", "wfdb", "--input", str(wfdb_dir), "--output", str(store_path),
                        "--overwrite"])


if __name__ == "__main__":
    sys.exit(main())
