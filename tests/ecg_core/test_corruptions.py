"""Severity-levelled corruptions: identity at severity 0, the severity tables measured on real demo records,
the defining property of each corruption (spectra, lead identities, zeroed leads, gains, time scale),
determinism of the seeded entry point, and one-line errors.

Shapes: ``L`` leads, ``T`` time samples.
"""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.signal import find_peaks

from ecg_core import corruptions as C
from ecg_core.corruptions import (
    CORRUPTIONS,
    LEAD_FROM_ELECTRODE,
    SNR_DB,
    apply,
    misplacement_matrix,
    name_key,
)
from ecg_core.data.leads import LEADS
from ecg_core.data.store import open_store

ADDITIVE = ["baseline_wander", "powerline_50", "powerline_60", "emg_noise", "electrode_motion", "baseline_shift"]
OTHERS = ["lead_dropout", "lead_reversal", "gain_error", "sampling_rate_mismatch"]
SEVERITIES = [1, 2, 3, 4, 5]
IDX = {lead: i for i, lead in enumerate(LEADS)}


@pytest.fixture(scope="module")
def real(demo_store):
    """Four real-looking demo records (float32 (12, T), mV) of different patients, and the store's rate."""
    store = open_store(demo_store)
    ids = list(store.records["record_id"])[::80][:4]
    records = [store.read(rid) for rid in ids]
    assert all(x.shape == (12, 5000) and np.all(np.any(x != 0, axis=1)) for x in records)
    return records, store.fs


def snr_db(x_LT, y_LT):
    """The module's SNR: mean over present leads of var(x) over mean over present leads of mean((y - x)^2)."""
    x = x_LT.astype(np.float64)
    n = y_LT.astype(np.float64) - x
    present = np.any(x != 0, axis=1)
    return 10 * np.log10(x[present].var(axis=1).mean() / np.mean(n[present] ** 2))


def band_fraction(n_LT, fs, lo, hi):
    """Share of the (Hann-windowed periodogram) power of ``n_LT``, summed over leads, in [lo, hi) Hz."""
    p = (np.abs(np.fft.rfft(n_LT * np.hanning(n_LT.shape[1]), axis=1)) ** 2).sum(axis=0)
    f = np.fft.rfftfreq(n_LT.shape[1], 1.0 / fs)
    return p[(f >= lo) & (f < hi)].sum() / p.sum()


def test_registry_names_and_classes():
    assert sorted(CORRUPTIONS) == sorted(ADDITIVE + OTHERS)
    for name, corruption in CORRUPTIONS.items():
        assert corruption.name == name
        assert corruption.measure
    assert CORRUPTIONS["powerline_50"].frequency == 50.0 and CORRUPTIONS["powerline_60"].frequency == 60.0


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_severity_zero_is_the_identity_and_a_copy(name, real):
    (x, *_), fs = real
    for arr in (x, x.astype(np.float64)):
        y = apply(name, arr, 0, fs, seed=3)
        assert y is not arr and y.dtype == arr.dtype and np.array_equal(y, arr)
        y[0, 0] += 1.0
        assert not np.array_equal(y, arr)   # a copy: the caller's record is not aliased


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_every_severity_keeps_shape_dtype_input_and_changes_the_record(name, real):
    (x, *_), fs = real
    before = x.copy()
    for severity in SEVERITIES:
        y = apply(name, x, severity, fs, seed=1)
        assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
        assert not np.array_equal(y, x)
        assert np.array_equal(x, before)
        y64 = apply(name, x.astype(np.float64), severity, fs, seed=1)
        assert y64.dtype == np.float64 and np.allclose(y64, y, atol=1e-4)


def test_levels_are_strictly_monotone_and_descriptions_one_line():
    for name, corruption in CORRUPTIONS.items():
        levels = [corruption.level(s) for s in SEVERITIES]
        step = np.diff(levels)
        assert (step < 0).all() if name in ADDITIVE else (step > 0).all(), (name, levels)
        for severity in [0, *SEVERITIES]:
            text = corruption.describe(severity)
            assert text.startswith(f"{name} severity {severity}: ") and "\n" not in text
    assert [CORRUPTIONS["emg_noise"].level(s) for s in SEVERITIES] == list(SNR_DB) == [24, 18, 12, 6, 0]


@pytest.mark.parametrize("name", ADDITIVE)
def test_additive_snr_is_the_table_value_and_strictly_decreasing(name, real):
    records, fs = real
    measured = np.array([[snr_db(x, apply(name, x, s, fs, seed=i)) for s in SEVERITIES]
                         for i, x in enumerate(records)])
    np.testing.assert_allclose(measured, np.tile(SNR_DB, (len(records), 1)), atol=0.01)
    assert (np.diff(measured.mean(axis=0)) < 0).all()
    # the same at other sampling rates (fs is only a number to the corruption)
    for fs_other in (100.0, 257.0, 1000.0):
        assert snr_db(records[0], apply(name, records[0], 4, fs_other, seed=0)) == pytest.approx(6.0, abs=0.01)


@pytest.mark.parametrize("name", ADDITIVE)
def test_additive_noise_is_electrode_noise_and_keeps_missing_leads_zero(name, real):
    (x, *_), fs = real
    x = x.copy()
    x[IDX["V4"]] = 0.0   # a missing lead
    n = apply(name, x, 5, fs, seed=2).astype(np.float64) - x
    assert np.all(n[IDX["V4"]] == 0)
    # Einthoven and Goldberger relations hold in the added noise (to float32 rounding of the record)
    tol = 1e-5 * np.abs(x).max() + 1e-6
    i, ii, iii = n[IDX["I"]], n[IDX["II"]], n[IDX["III"]]
    assert np.abs(iii - (ii - i)).max() < tol
    assert np.abs(n[IDX["aVR"]] + (i + ii) / 2).max() < tol
    assert np.abs(n[IDX["aVL"]] - (i - ii / 2)).max() < tol
    assert np.abs(n[IDX["aVF"]] - (ii - i / 2)).max() < tol


def test_flat_record_has_no_snr_and_is_returned_unchanged():
    x = np.zeros((12, 1000), dtype=np.float32)
    for name in ADDITIVE:
        assert np.array_equal(apply(name, x, 5, 500.0, seed=0), x)


@pytest.mark.parametrize("name,freq", [("powerline_50", 50.0), ("powerline_60", 60.0)])
def test_powerline_spectrum_peaks_at_mains_frequency(name, freq, real):
    records, fs = real
    for fs_used in (fs, 250.0, 1000.0, 130.0):
        for seed, x in enumerate(records[:2]):
            n = apply(name, x, 2, fs_used, seed=seed).astype(np.float64) - x
            p = (np.abs(np.fft.rfft(n, axis=1)) ** 2).sum(axis=0)
            f = np.fft.rfftfreq(n.shape[1], 1.0 / fs_used)
            assert abs(f[p.argmax()] - freq) <= f[1], (fs_used, f[p.argmax()])
            assert band_fraction(n, fs_used, freq - 1, freq + 1) > 0.7
    # at 100 Hz, 60 Hz lies above Nyquist and appears at its alias, 40 Hz (documented)
    n = apply("powerline_60", records[0], 2, 100.0, seed=0).astype(np.float64) - records[0]
    p = (np.abs(np.fft.rfft(n, axis=1)) ** 2).sum(axis=0)
    assert np.fft.rfftfreq(n.shape[1], 0.01)[p.argmax()] == pytest.approx(40.0)


def test_emg_noise_power_lies_above_20_hz(real):
    records, fs = real
    for fs_used in (fs, 100.0):
        for seed, x in enumerate(records):
            n = apply("emg_noise", x, 3, fs_used, seed=seed).astype(np.float64) - x
            assert band_fraction(n, fs_used, 20.0, np.inf) > 0.95
    # bursty: the local power varies strongly across the record
    n = apply("emg_noise", records[0], 3, fs, seed=0).astype(np.float64) - records[0]
    local = (n[IDX["II"]] ** 2).reshape(20, -1).mean(axis=1)   # 20 windows of 0.5 s
    assert local.max() > 4 * local.min()


def test_baseline_wander_power_lies_below_1_hz_and_electrode_motion_is_low_frequency(real):
    records, fs = real
    for seed, x in enumerate(records):
        n = apply("baseline_wander", x, 4, fs, seed=seed).astype(np.float64) - x
        assert band_fraction(n, fs, 0.0, 1.0) > 0.99
        n = apply("electrode_motion", x, 4, fs, seed=seed).astype(np.float64) - x
        assert band_fraction(n, fs, 0.0, 5.0) > 0.8


def test_baseline_shift_is_piecewise_constant_with_a_few_steps(real):
    records, fs = real
    for seed, x in enumerate(records):
        n = apply("baseline_shift", x, 3, fs, seed=seed).astype(np.float64) - x
        tol = 1e-4 * np.abs(n).max()
        assert np.abs(n[:, 0]).max() < tol   # steps start after the first sample: no mere offset
        jumps = np.flatnonzero(np.abs(np.diff(n, axis=1)).max(axis=0) > tol)
        assert 1 <= len(jumps) <= 8   # 1 + Poisson(0.1/s * 10 s) steps


def test_lead_reversal_la_ra_identities_hold_exactly(real):
    (x, *_), fs = real
    y = apply("lead_reversal", x, 1, fs, seed=0)
    assert np.array_equal(y[IDX["I"]], -x[IDX["I"]])
    assert np.array_equal(y[IDX["II"]], x[IDX["III"]]) and np.array_equal(y[IDX["III"]], x[IDX["II"]])
    assert np.array_equal(y[IDX["aVR"]], x[IDX["aVL"]]) and np.array_equal(y[IDX["aVL"]], x[IDX["aVR"]])
    assert np.array_equal(y[IDX["aVF"]], x[IDX["aVF"]])
    assert np.array_equal(y[6:], x[6:])


def test_lead_reversal_changes_the_documented_number_of_leads(real):
    records, fs = real
    corruption = CORRUPTIONS["lead_reversal"]
    for x in records:
        changed = [int((np.abs(apply("lead_reversal", x, s, fs, seed=0) - x).max(axis=1) > 1e-3).sum())
                   for s in SEVERITIES]
        assert changed == [corruption.level(s) for s in SEVERITIES] == [5, 7, 8, 9, 12]
    x = records[0]
    y3 = apply("lead_reversal", x, 3, fs, seed=0)   # limb cables rotated, V1/V2 swapped
    for new, old, sign in [("I", "III", 1), ("II", "I", -1), ("III", "II", -1), ("aVR", "aVL", 1),
                           ("aVL", "aVF", 1), ("aVF", "aVR", 1), ("V1", "V2", 1), ("V2", "V1", 1)]:
        assert np.array_equal(y3[IDX[new]], sign * x[IDX[old]]), new
    y5 = apply("lead_reversal", x, 5, fs, seed=0)   # + V2/V3 and the RA cable on the right leg
    ii, iii = x[IDX["II"]].astype(np.float64), x[IDX["III"]].astype(np.float64)
    assert np.all(y5[IDX["I"]] == 0)
    for lead in ("II", "III", "aVF"):
        assert np.array_equal(y5[IDX[lead]], -x[IDX["II"]])
    np.testing.assert_allclose(y5[IDX["aVR"]], ii / 2, atol=1e-6)
    np.testing.assert_allclose(y5[IDX["V6"]], x[IDX["V6"]] - iii / 3, atol=1e-5)
    np.testing.assert_allclose(y5[IDX["V1"]], x[IDX["V2"]] - iii / 3, atol=1e-5)


def test_lead_projection_and_row_combination_equal_the_matrix_products():
    rng = np.random.default_rng(4)
    e_ET = rng.standard_normal((9, 300))
    np.testing.assert_allclose(C._project(e_ET), LEAD_FROM_ELECTRODE @ e_ET, atol=1e-12)
    x_LT = rng.standard_normal((12, 300))
    for severity in SEVERITIES:
        m = CORRUPTIONS["lead_reversal"].matrix(severity)
        np.testing.assert_allclose(C._combine_rows(m, x_LT), m @ x_LT, atol=1e-12)


def test_misplacement_matrices_match_swapped_electrode_potentials():
    """Against a direct simulation: random electrode potentials, leads computed before and after moving
    cables (the right-leg site reads the left leg); plus the LA/LL and RA/LL tables of Batchvarov et al."""
    rng = np.random.default_rng(0)
    phi_ET = rng.standard_normal((9, 50))
    x_LT = LEAD_FROM_ELECTRODE @ phi_ET
    e = {name: i for i, name in enumerate(C.ELECTRODES)}
    # LA/LL swap: the LA cable reads LL, the LL cable reads LA
    swapped = phi_ET.copy()
    swapped[[e["LA"], e["LL"]]] = phi_ET[[e["LL"], e["LA"]]]
    np.testing.assert_allclose(misplacement_matrix((("LA", "LL"),)) @ x_LT, LEAD_FROM_ELECTRODE @ swapped, atol=1e-12)
    m = misplacement_matrix((("LA", "LL"),))
    assert [tuple(np.flatnonzero(row)) + (row.sum(),) for row in m[:6]] == [
        (1, 1.0), (0, 1.0), (2, -1.0), (3, 1.0), (5, 1.0), (4, 1.0)]   # I'=II, II'=I, III'=-III, aVL'<->aVF
    m = misplacement_matrix((("RA", "LL"),))
    assert [tuple(np.flatnonzero(row)) + (row.sum(),) for row in m[:6]] == [
        (2, -1.0), (1, -1.0), (0, -1.0), (5, 1.0), (4, 1.0), (3, 1.0)]   # I'=-III, II'=-II, III'=-I, aVR'<->aVF
    # RA cable on the right leg: it reads the left leg's potential, and Wilson's terminal moves
    moved = phi_ET.copy()
    moved[e["RA"]] = phi_ET[e["LL"]]
    np.testing.assert_allclose(misplacement_matrix((("RA", "RL"),)) @ x_LT, LEAD_FROM_ELECTRODE @ moved, atol=1e-12)
    # precordial swap and the identity
    moved = phi_ET.copy()
    moved[[e["V1"], e["V2"]]] = phi_ET[[e["V2"], e["V1"]]]
    np.testing.assert_allclose(misplacement_matrix((("V1", "V2"),)) @ x_LT, LEAD_FROM_ELECTRODE @ moved, atol=1e-12)
    assert np.array_equal(misplacement_matrix(()), np.eye(12))


def test_lead_dropout_zeros_exactly_k_whole_leads(real):
    records, fs = real
    table = CORRUPTIONS["lead_dropout"].n_leads
    for seed, x in enumerate(records):
        for s in SEVERITIES:
            y = apply("lead_dropout", x, s, fs, seed=seed)
            zero = np.all(y == 0, axis=1)
            assert zero.sum() == table[s - 1]
            assert np.array_equal(y[~zero], x[~zero])   # the other leads are untouched
    # leads already missing are not chosen while present leads remain
    x = records[0].copy()
    x[[IDX["V5"], IDX["V6"]]] = 0.0
    y = apply("lead_dropout", x, 4, fs, seed=0)
    assert np.all(y == 0, axis=1).sum() == 2 + table[3]


def test_gain_error_relative_error_is_exactly_the_table_value(real):
    records, fs = real
    table = CORRUPTIONS["gain_error"].rel_error
    for seed, x in enumerate(records):
        x64 = x.astype(np.float64)
        for s in SEVERITIES:
            y = apply("gain_error", x64, s, fs, seed=seed)
            assert np.linalg.norm(y - x64) / np.linalg.norm(x64) == pytest.approx(table[s - 1], rel=1e-9)
            gains = y[:, 100] / x64[:, 100]
            np.testing.assert_allclose(y, gains[:, None] * x64, rtol=1e-12)
            np.testing.assert_allclose(np.abs(gains - 1), table[s - 1], rtol=1e-9)


def pulse_period(x_T, fs):
    """Median distance (samples) between the pulses of a pulse train, in its first 75 %."""
    peaks, _ = find_peaks(x_T[: int(0.75 * len(x_T))], height=0.5, distance=int(0.2 * fs))
    return np.median(np.diff(peaks))


def test_sampling_rate_mismatch_scales_the_period_by_the_factor():
    fs, period = 500.0, 400   # 75 bpm
    t = np.arange(6000)
    pulses = np.exp(-0.5 * (((t % period) - period / 2) / 8.0) ** 2)
    x = np.tile(pulses, (12, 1)).astype(np.float32)
    table = CORRUPTIONS["sampling_rate_mismatch"].rate_error
    signs = set()
    for seed in range(4):
        for s in SEVERITIES:
            ratio = pulse_period(apply("sampling_rate_mismatch", x, s, fs, seed=seed)[1], fs) / period
            factor = 1 + table[s - 1]
            assert min(abs(ratio - factor), abs(ratio - 1 / factor)) < 0.004, (s, ratio)
            signs.add(ratio > 1)
    assert signs == {True, False}   # both stretching and compression occur


def test_sampling_rate_mismatch_scales_a_real_records_rr_period(real):
    records, fs = real
    x = records[0].astype(np.float64)

    def dominant_lag(sig_LT):
        z = sig_LT - sig_LT.mean(axis=1, keepdims=True)
        spec = np.abs(np.fft.rfft(z, n=2 * z.shape[1], axis=1)) ** 2
        ac = np.fft.irfft(spec.sum(axis=0))[: z.shape[1]]
        lo, hi = int(0.3 * fs), int(2.0 * fs)
        return lo + np.argmax(ac[lo:hi])
    base = dominant_lag(x)
    table = CORRUPTIONS["sampling_rate_mismatch"].rate_error
    for s in (3, 4, 5):
        ratio = dominant_lag(apply("sampling_rate_mismatch", x, s, fs, seed=0)) / base
        factor = 1 + table[s - 1]
        assert min(abs(np.log(ratio / factor)), abs(np.log(ratio * factor))) < 0.03, (s, ratio)


def test_apply_is_deterministic_and_uses_the_documented_seed(real):
    (x, *_), fs = real
    for name in CORRUPTIONS:
        a = apply(name, x, 3, fs, seed=7)
        assert np.array_equal(a, apply(name, x, 3, fs, seed=7))
        rng = np.random.default_rng(np.random.SeedSequence([7, name_key(name), 3]))
        assert np.array_equal(a, CORRUPTIONS[name](x, 3, fs, rng))
        if name != "lead_reversal":   # the only corruption without randomness
            assert not np.array_equal(a, apply(name, x, 3, fs, seed=8))
    assert name_key("emg_noise") == int.from_bytes(hashlib.sha256(b"emg_noise").digest()[:8], "little")
    assert len({name_key(n) for n in CORRUPTIONS}) == len(CORRUPTIONS)


def test_seeds_do_not_depend_on_python_hash_randomisation():
    code = ("import hashlib, numpy as np; from ecg_core.corruptions import apply, CORRUPTIONS;"
            "x = np.sin(np.arange(12 * 600, dtype=np.float32) / 7).reshape(12, 600);"
            "print(hashlib.sha256(b''.join(apply(n, x, 2, 250.0, 5).tobytes() for n in sorted(CORRUPTIONS)))"
            ".hexdigest())")
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    x = np.sin(np.arange(12 * 600, dtype=np.float32) / 7).reshape(12, 600)
    here = hashlib.sha256(b"".join(apply(n, x, 2, 250.0, 5).tobytes() for n in sorted(CORRUPTIONS))).hexdigest()
    assert digests == {here}


def one_line_error(fn, *args, match=None, **kwargs):
    with pytest.raises(ValueError, match=match) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_errors_are_one_line_and_name_the_problem(real):
    (x, *_), fs = real
    for bad in (-1, 6, 1.0, True, "1", None):
        msg = one_line_error(apply, "gain_error", x, bad, fs, 0, match="severity")
        assert "gain_error" in msg and "0..5" in msg
        one_line_error(CORRUPTIONS["emg_noise"], x, bad, fs, np.random.default_rng(0), match="emg_noise")
        one_line_error(CORRUPTIONS["emg_noise"].describe, bad, match="0..5")
    msg = one_line_error(apply, "gaussian_blur", x, 1, fs, 0, match="unknown corruption 'gaussian_blur'")
    assert all(name in msg for name in CORRUPTIONS)
    for shape in [(11, 5000), (12,), (1, 12, 5000), (12, 1), (5000, 12)]:
        one_line_error(apply, "baseline_wander", np.zeros(shape, np.float32), 1, fs, 0, match=r"shape \(12, T\)")
    one_line_error(apply, "baseline_wander", [[0.0] * 10] * 12, 1, fs, 0, match="shape")
    one_line_error(apply, "lead_dropout", x.astype(np.int16), 1, fs, 0, match="floating-point")
    for bad_fs in (50.0, float("nan"), 0, True):
        one_line_error(apply, "powerline_50", x, 1, bad_fs, 0, match="fs must be")
    for bad_seed in (-1, 1.5, None):
        one_line_error(apply, "powerline_50", x, 1, fs, bad_seed, match="seed")
    with pytest.raises(TypeError, match="gain_error: rng must be a numpy.random.Generator"):
        CORRUPTIONS["gain_error"](x, 1, fs, 0)


def test_parameter_tables_are_validated():
    with pytest.raises(ValueError, match="strictly decreasing"):
        C.BaselineWander(snr_db=(0, 6, 12, 18, 24))
    with pytest.raises(ValueError, match="5 finite values"):
        C.EmgNoise(snr_db=(24, 12, 0))
    with pytest.raises(ValueError, match="strictly increasing"):
        C.LeadDropout(n_leads=(1, 1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        C.GainError(rel_error=(0.1, 0.2, 0.5, 0.8, 1.0))
    with pytest.raises(ValueError, match="two different cables"):
        C.LeadReversal(swaps=(("LA", "RA"), ("V1", "V1"), ("LA", "LL"), ("V2", "V3"), ("RA", "RL")))
    with pytest.raises(ValueError, match="strictly increasing"):   # a swap undoing the previous one
        C.LeadReversal(swaps=(("LA", "RA"), ("LA", "RA"), ("LA", "LL"), ("V2", "V3"), ("RA", "RL")))
    assert C.PowerlineNoise(frequency=55.0).name == "powerline_55"
