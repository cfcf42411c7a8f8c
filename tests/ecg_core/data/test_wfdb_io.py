"""Reading the real WFDB records in tests/data, and copies of them damaged in tmp_path.

Every record is compared with wfdb's own reading (``wfdb.rdrecord(..., physical=True, smooth_frames=False)``)
or must be refused with the right reason. See data-notes.md §0-§1 and tests/data/*/README.md.
"""
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from scipy.signal import resample_poly

# ecg_core.data.wfdb_io imports wfdb with a guard against a pandas deprecation warning raised while wfdb
# imports; importing it first keeps that warning out of this (warnings-as-errors) test module.
from ecg_core.data.leads import LEADS, canonical_lead
from ecg_core.data.wfdb_io import (
    CINC2020_GAIN_RULES, HIGH_P2P_WARN_MV, PLAUSIBLE_P2P_MV, RawRecord, RecordError, amplitude_warning,
    apply_gain_rules, check_amplitude, find_records, read_record, robust_peak_to_peak_mV,
)
import wfdb  # after ecg_core.data.wfdb_io on purpose, see above

DATA = Path(__file__).resolve().parents[2] / "data"
RECORDS = find_records(DATA)
WFDB_REAL = DATA / "wfdb-real"
CINC2020 = DATA / "challenge-real" / "cinc2020"
CINC2021 = DATA / "challenge-real" / "cinc2021"
E00009 = CINC2020 / "E00009.hea"
E07500 = CINC2021 / "E07500.hea"
S0001 = DATA / "challenge-real" / "cinc2020_dx_stripped" / "S0001.hea"
MULTI_SEGMENT = WFDB_REAL / "multi-segment" / "041s"

# Real records that must be refused, and why.
REFUSED = {
    "wfdb-real/binformats.hea": "no ECG lead",     # "sig 0, fmt 8", ...
    "wfdb-real/flacformats.hea": "no ECG lead",    # "sig 0, fmt 508", ...
    "wfdb-real/test01_00s.hea": "no ECG lead",     # "ECG 1" .. "ECG 4": which leads is not said
    # Lead I of segment 041s02 holds -2048 once, fmt 212's invalid-sample value (a clipped sample by the look
    # of its neighbours, but the WFDB format reserves that value for "invalid").
    "wfdb-real/multi-segment/041s/041s.hea":
        "invalid samples in ECG lead I: 1 NaN sample(s) (the format's invalid-sample value, or a gap) in "
        "segment 041s02: 041s02.dat (fmt 212, invalid value -2048)",
}
# CinC 2020 copies whose header gain is wrong (DESIGN.md "Known facts"), with that gain.
WRONG_GAIN = {"S0001": 2_000_000, "E00009": 4880, "HR00599": 200, **{f"HR{k:05d}": 200 for k in range(1, 11)}}


def rel(path: Path) -> str:
    return path.relative_to(DATA).as_posix()


def copy_record(header: Path, dst: Path) -> Path:
    """Copy a record's header and the files that share its name (signal files, annotations) into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in header.parent.glob(f"{header.stem}.*"):
        shutil.copyfile(f, dst / f.name)
    return dst / header.name


def edit_header(header: Path, old: str, new: str, encoding: str = "utf-8") -> None:
    text = header.read_bytes().decode("latin-1")
    assert old in text, f"{old!r} not in {header.name}"
    header.write_bytes(text.replace(old, new).encode(encoding))


def rename_signals(header: Path, names: list[str]) -> None:
    """Replace the descriptions of the first signal lines by ``names`` (the rest of the header is kept)."""
    lines = header.read_text(encoding="latin-1").splitlines()
    body = [i for i, line in enumerate(lines) if line.strip() and not line.strip().startswith("#")][1:]
    for i, name in zip(body, names):
        parts = lines[i].split(maxsplit=8)
        lines[i] = " ".join([*parts[:8], name])
    header.write_text("\n".join(lines) + "\n", encoding="latin-1")


def wfdb_uV(header: Path) -> tuple[dict[str, np.ndarray], float, wfdb.Record]:
    """wfdb's own reading of a record, per canonical lead (first channel wins), converted from mV to uV."""
    record = wfdb.rdrecord(str(header.with_suffix("")), physical=True, smooth_frames=False)
    by_lead: dict[str, np.ndarray] = {}
    fs = float(record.fs)
    for name, units, spf, x in zip(record.sig_name, record.units, record.samps_per_frame, record.e_p_signal):
        lead = canonical_lead(name)
        if lead is not None and units in ("mV", "mv") and lead not in by_lead:
            by_lead[lead] = x * 1000.0
            fs = float(record.fs) * spf
    return by_lead, fs, record


def assert_one_line(err: pytest.ExceptionInfo, *names: str) -> str:
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message
    return message


def set_212_sample(path: Path, index: int, value: int) -> int:
    """Overwrite sample ``index`` (counted over the file) of a format-212 file; return the old value."""
    data = bytearray(path.read_bytes())
    base = 3 * (index // 2)
    b0, b1, b2 = data[base: base + 3]
    old = (b0 | (b1 & 0x0F) << 8) if index % 2 == 0 else (b2 | (b1 & 0xF0) << 4)
    v = value & 0xFFF
    if index % 2 == 0:
        data[base], data[base + 1] = v & 0xFF, (b1 & 0xF0) | (v >> 8)
    else:
        data[base + 2], data[base + 1] = v & 0xFF, (b1 & 0x0F) | ((v >> 8) << 4)
    path.write_bytes(bytes(data))
    return old - 0x1000 if old & 0x800 else old


# ---------------------------------------------------------------------------------------------------------
# Every real record: read like wfdb, or refused with the right reason
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("header", RECORDS, ids=rel)
def test_every_real_record_reads_like_wfdb_or_is_refused(header, tmp_path):
    if rel(header) in REFUSED:
        with pytest.raises(RecordError) as err:
            read_record(header)
        assert_one_line(err, str(header), REFUSED[rel(header)])
        return
    rec = read_record(header)
    if header == E00009:
        # wfdb cannot parse this header (record name "E00009.mat"): compare with wfdb reading a fixed copy.
        reference = copy_record(header, tmp_path)
        edit_header(reference, "E00009.mat 12 500 5000 05-May-2020 14:50:55", "E00009 12 500 5000")
    else:
        reference = header
    expected, fs, _ = wfdb_uV(reference)
    assert rec.record_id == header.stem
    assert rec.header_path == header
    assert rec.fs == fs
    assert rec.signal_uV.dtype == np.float64 and rec.signal_uV.shape[0] == 12
    present = [lead for lead, is_present in zip(LEADS, rec.lead_mask) if is_present]
    assert present == [lead for lead in LEADS if lead in expected]
    for i, lead in enumerate(LEADS):
        if lead in expected:
            np.testing.assert_allclose(rec.signal_uV[i], expected[lead], rtol=1e-6, atol=0)
        else:
            assert not rec.signal_uV[i].any() and np.isnan(rec.adc_gain[i])
    assert all("\n" not in note for note in rec.notes)


def test_find_records_reads_multi_segment_records_through_the_master():
    found = [rel(p) for p in RECORDS]
    assert found == sorted(found)
    assert "wfdb-real/multi-segment/041s/041s.hea" in found
    assert not [p for p in found if "041s0" in p]
    assert len(found) == len(list(DATA.rglob("*.hea"))) - 2
    assert {"challenge-real/cinc2020/E00009.hea", "ptbxl-real/cinc2020_HR/HR00010.hea",
            "wfdb-real/s0010_re.hea"} <= set(found)


# ---------------------------------------------------------------------------------------------------------
# Header sanitising (CinC 2020)
# ---------------------------------------------------------------------------------------------------------

def test_georgia_header_is_sanitised_without_touching_the_input():
    with pytest.raises(wfdb.io.header.HeaderSyntaxError):  # the wfdb 4.3.1 behaviour worked around here
        wfdb.rdheader(str(E00009.with_suffix("")))
    before = {p.name: p.read_bytes() for p in CINC2020.iterdir()}
    rec = read_record(E00009)
    assert {p.name: p.read_bytes() for p in CINC2020.iterdir()} == before
    assert rec.record_id == "E00009"
    assert rec.notes[0] == ("header sanitised: record name 'E00009.mat' -> 'E00009'; "
                            "date/time '05-May-2020 14:50:55' dropped")
    # Independent of wfdb: the MATLAB v4 matrix with the header's gain and zero baseline.
    val = scipy.io.loadmat(CINC2020 / "E00009.mat")["val"]
    np.testing.assert_allclose(rec.signal_uV, val / 4880.0 * 1000.0, rtol=1e-12)
    assert rec.comments == ["Age: 76", "Sex: Male", "Dx: 428750005,39732003,427084000", "Rx: Unknown",
                            "Hx: Unknown", "Sx: Unknown"]


def test_cinc2020_dates_are_dropped_not_misread():
    header = DATA / "challenge-real" / "cinc2020_dx_stripped" / "A0001.hea"
    assert str(wfdb.rdheader(str(header.with_suffix(""))).base_time) == "00:00:12"  # what wfdb makes of it
    rec = read_record(header)
    assert rec.notes == ["header sanitised: date/time '12-May-2020 12:33:59' dropped"]
    assert rec.comments[:3] == ["Age: 74", "Sex: Male", "Dx:"]


def test_wfdb_style_time_and_date_are_kept():
    rec = read_record(WFDB_REAL / "03700181.hea")  # "17:27:45 15/08/1994"
    assert not [n for n in rec.notes if "sanitised" in n]


def test_comments_anywhere_in_the_header():
    assert read_record(WFDB_REAL / "100.hea").comments == ["unnecessary comment", "69 M 1085 1629 x1",
                                                           "Aldomet, Inderal"]
    assert read_record(WFDB_REAL / "s0010_re.hea").comments[:3] == ["age: 81", "sex: female",
                                                                    "ECG date: 01/10/1990"]


# ---------------------------------------------------------------------------------------------------------
# Lead names, units, rates
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("header, leads, fs", [
    (WFDB_REAL / "s0010_re.hea", LEADS, 1000.0),                 # i..v6 + vx, vy, vz
    (WFDB_REAL / "100.hea", ("II", "V5"), 360.0),                 # MLII, V5
    (MULTI_SEGMENT / "041s01.hea", ("I", "III"), 500.0),          # III, I, V (212x4 at 125 frames/s)
    (WFDB_REAL / "03700181.hea", ("V1",), 500.0),                 # MCL1 212x4, ABP, RESP
    (WFDB_REAL / "a103l.hea", ("II",), 250.0),                    # II, V, PLETH (NU)
    (WFDB_REAL / "3000003_0003.hea", ("II",), 125.0),             # II, V (fmt 80)
])
def test_lead_names_map_and_only_named_leads_are_present(header, leads, fs):
    rec = read_record(header)
    assert tuple(lead for lead, present in zip(LEADS, rec.lead_mask) if present) == leads
    assert rec.fs == fs
    assert not rec.signal_uV[~rec.lead_mask].any()


def test_s0010_re_ignores_frank_leads_and_keeps_gain():
    rec = read_record(WFDB_REAL / "s0010_re.hea")
    assert rec.lead_mask.all()
    assert np.all(rec.adc_gain == 2000.0)  # "2000" without unit: mV per the WFDB spec
    assert "channels that are not one of the 12 standard leads ignored: ['vx', 'vy', 'vz']" in rec.notes


def test_multi_frequency_lead_keeps_its_native_rate():
    rec = read_record(WFDB_REAL / "03700181.hea")
    assert rec.signal_uV.shape == (12, 300_000)   # 75,000 frames x 4 samples; smooth_frames=True gives 75,000
    expected, _, _ = wfdb_uV(WFDB_REAL / "03700181.hea")
    np.testing.assert_allclose(rec.signal_uV[LEADS.index("V1")], expected["V1"], rtol=1e-6)


def test_slower_ecg_leads_are_resampled_to_the_fastest(tmp_path):
    # 041s01: I and III at 4 samples per frame (500 Hz); PLETH at 1 (125 Hz) renamed to V1 in a copy.
    header = copy_record(MULTI_SEGMENT / "041s01.hea", tmp_path)
    rename_signals(header, ["III", "I", "V", "ABP", "PAP", "V1", "RESP"])
    rec = read_record(header)
    assert rec.fs == 500.0 and rec.signal_uV.shape == (12, 4000)
    assert "resampled to 500 Hz with scipy.signal.resample_poly: V1 from 125 Hz" in rec.notes
    raw = wfdb.rdrecord(str(header.with_suffix("")), smooth_frames=False).e_p_signal[5] * 1000.0
    np.testing.assert_allclose(rec.signal_uV[LEADS.index("V1")], resample_poly(raw, 4, 1, padtype="line"))


def test_multi_segment_record_is_read_through_its_master(tmp_path):
    shutil.copytree(MULTI_SEGMENT, tmp_path / "041s")
    # Lead I, sample 178 of segment 041s02 = frame 44, sub-sample 2; 16 samples per frame (3 x 4 + 4 x 1).
    assert set_212_sample(tmp_path / "041s" / "041s02.dat", 44 * 16 + 4 + 2, -2047) == -2048
    master = tmp_path / "041s" / "041s.hea"
    rec = read_record(master)
    expected, fs, _ = wfdb_uV(master)
    assert rec.fs == fs == 500.0 and rec.signal_uV.shape == (12, 8000)
    for lead in ("I", "III"):
        np.testing.assert_allclose(rec.signal_uV[LEADS.index(lead)], expected[lead], rtol=1e-6)
    first = read_record(tmp_path / "041s" / "041s01.hea")
    np.testing.assert_array_equal(rec.signal_uV[:, :4000], first.signal_uV)
    assert rec.comments == []


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_micro_volt_unit_is_read_from_the_raw_header(tmp_path, encoding):
    header = copy_record(E07500, tmp_path)
    edit_header(header, "1000.0(0)/mV", "1.0(0)/\u00b5V", encoding=encoding)
    assert wfdb.rdheader(str(header.with_suffix(""))).units[0] == "V"  # wfdb drops the non-ASCII micro sign
    rec, original = read_record(header), read_record(E07500)
    np.testing.assert_allclose(rec.signal_uV, original.signal_uV, rtol=1e-12)
    np.testing.assert_allclose(rec.adc_gain, 1000.0)


def test_ascii_micro_volt_and_lower_case_millivolt(tmp_path):
    header = copy_record(E07500, tmp_path)
    edit_header(header, "1000.0(0)/mV", "1.0(0)/uV")
    np.testing.assert_allclose(read_record(header).signal_uV, read_record(E07500).signal_uV, rtol=1e-12)
    rec = read_record(CINC2021 / "HR06000.hea")  # "1000.0(0)/mv"
    np.testing.assert_allclose(rec.adc_gain, 1000.0)
    expected, _, _ = wfdb_uV(CINC2021 / "HR06000.hea")
    np.testing.assert_allclose(rec.signal_uV[0], expected["I"], rtol=1e-12)


def test_lead_with_a_non_voltage_unit_is_missing(tmp_path):
    header = copy_record(E07500, tmp_path)
    edit_header(header, "1000.0(0)/mV 16 0 -58 -5598 0 II", "1000.0(0)/mmHg 16 0 -58 -5598 0 II")
    rec = read_record(header)
    assert not rec.lead_mask[LEADS.index("II")] and rec.lead_mask.sum() == 11
    assert "channel 1 'II' has unit 'mmHg', not a voltage: ignored" in rec.notes


def test_duplicate_lead_keeps_the_first_channel(tmp_path):
    header = copy_record(E07500, tmp_path)
    rename_signals(header, ["I", "II", "ii"])
    rec, original = read_record(header), read_record(E07500)
    assert not rec.lead_mask[LEADS.index("III")]
    np.testing.assert_array_equal(rec.signal_uV[1], original.signal_uV[1])
    assert "channel 2 'ii' duplicates lead II (channel 1): the first is kept" in rec.notes


@pytest.mark.parametrize("source, names", [
    ("binformats", ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4"]),  # 8 16 61 80 160 212 ...
    ("flacformats", ["I", "II", "III"]),                                               # 508 516 524
])
def test_every_signal_format_reads_like_wfdb(tmp_path, source, names):
    header = copy_record(WFDB_REAL / f"{source}.hea", tmp_path)
    rename_signals(header, names)
    rec = read_record(header)
    expected, _, record = wfdb_uV(header)
    assert rec.lead_mask.sum() == len(names)
    for lead in names:
        np.testing.assert_allclose(rec.signal_uV[LEADS.index(lead)], expected[lead], rtol=1e-6)
    assert len(set(record.fmt)) == len(names)


# ---------------------------------------------------------------------------------------------------------
# Bad input: copies of real files damaged in tmp_path
# ---------------------------------------------------------------------------------------------------------

def refused(header: Path, *expected: str) -> str:
    with pytest.raises(RecordError) as err:
        read_record(header)
    return assert_one_line(err, header.name, *expected)


@pytest.mark.parametrize("source, signal_file, size", [
    (E07500, "E07500.mat", 60_024),                  # MATLAB v4, 16x1+24
    (WFDB_REAL / "100.hea", "100.dat", 100_000),     # fmt 212
    (WFDB_REAL / "s0010_re.hea", "s0010_re.dat", 5),  # fmt 16, 15 signals in two files
])
def test_truncated_signal_file(tmp_path, source, signal_file, size):
    header = copy_record(source, tmp_path)
    with open(tmp_path / signal_file, "r+b") as f:
        f.truncate(size)
    refused(header, f"signal file {signal_file} is truncated or the header's length is wrong",
            f"{size} bytes")


def test_truncated_segment_file(tmp_path):
    shutil.copytree(MULTI_SEGMENT, tmp_path / "041s")
    with open(tmp_path / "041s" / "041s01.dat", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(RecordError) as err:
        read_record(tmp_path / "041s" / "041s.hea")
    assert_one_line(err, "041s01.hea", "signal file 041s01.dat is truncated")


@pytest.mark.parametrize("source, line, longer", [
    (E07500, "E07500 12 500 5000", "E07500 12 500 6000"),
    (WFDB_REAL / "s0010_re.hea", "s0010_re 15 1000 38400", "s0010_re 15 1000 40000"),
])
def test_header_longer_than_the_data(tmp_path, source, line, longer):
    header = copy_record(source, tmp_path)
    edit_header(header, line, longer)
    refused(header, "is truncated or the header's length is wrong")


def test_header_shorter_than_the_mat_matrix(tmp_path):
    header = copy_record(E07500, tmp_path)
    edit_header(header, "E07500 12 500 5000", "E07500 12 500 4000")
    refused(header, "the header says 4000 frames of 12 samples but E07500.mat holds a 12x5000 matrix")


def test_segment_lengths_that_disagree(tmp_path):
    shutil.copytree(MULTI_SEGMENT, tmp_path / "041s")
    edit_header(tmp_path / "041s" / "041s.hea", "041s02 1000", "041s02 900")
    refused(tmp_path / "041s" / "041s.hea",
            "the segments add up to 1900 frames but the master header says 2000")


def test_missing_signal_file(tmp_path):
    shutil.copyfile(E07500, tmp_path / E07500.name)
    refused(tmp_path / E07500.name, "missing signal file E07500.mat")


def test_missing_header_file(tmp_path):
    refused(tmp_path / "nothing.hea", "header file not found")


def test_invalid_sample_in_fmt16(tmp_path):
    header = copy_record(E07500, tmp_path)
    lead, t = LEADS.index("V2"), 100
    with open(tmp_path / "E07500.mat", "r+b") as f:  # 24-byte MATLAB header, then frames of 12 int16
        f.seek(24 + 2 * (12 * t + lead))
        f.write(struct.pack("<h", -32768))
    refused(header, "invalid samples in ECG lead V2: 1 NaN sample(s)",
            "E07500.mat (fmt 16, invalid value -32768)")


def test_invalid_sample_in_fmt212(tmp_path):
    header = copy_record(WFDB_REAL / "100.hea", tmp_path)
    set_212_sample(tmp_path / "100.dat", 2 * 1000 + 1, -2048)  # V5 (channel 1) at frame 1000
    refused(header, "invalid samples in ECG lead V5: 1 NaN sample(s)",
            "100.dat (fmt 212, invalid value -2048)")


def test_invalid_sample_in_a_non_ecg_channel_is_fine():
    # 03700181's RESP ends with 4 samples of -2048; its ECG lead MCL1 is clean.
    record = wfdb.rdrecord(str(WFDB_REAL / "03700181"), smooth_frames=False)
    assert np.isnan(record.e_p_signal[2]).sum() == 4
    assert read_record(WFDB_REAL / "03700181.hea").lead_mask.sum() == 1


@pytest.mark.parametrize("make, reason", [
    (lambda h: shutil.copyfile(h.with_suffix(".mat"), h), "unreadable header: it holds NUL bytes"),
    (lambda h: h.write_bytes(b""), "unreadable header: no record line"),
    (lambda h: edit_header(h, "E07500 12 500 5000", "E07500 twelve 500 5000"), "no valid signal count"),
    (lambda h: edit_header(h, "E07500 12 500 5000", "E07500 12 fast 5000"), "invalid sampling frequency"),
    (lambda h: edit_header(h, "E07500 12 500 5000", "E07500? 12 500 5000"), "invalid record name"),
    (lambda h: h.write_text("\n".join(h.read_text().splitlines()[:6])), "declares 12 signals but 5 signal"),
    (lambda h: edit_header(h, "E07500.mat 16x1+24 1000.0(0)/mV 16 0 -68", "E07500.mat sixteen 1000 16 0 -68"),
     "signal line 1 'E07500.mat sixteen 1000 16 0 -68 1250 0 I' has no valid format field"),
    (lambda h: edit_header(h, "1000.0(0)/mV 16 0 -68", "lots/mV 16 0 -68"), "invalid gain field"),
    (lambda h: h.write_bytes(h.read_bytes().replace(b"Age", b"A\x07e")), "control characters in line 14"),
])
def test_garbled_header(tmp_path, make, reason):
    header = copy_record(E07500, tmp_path)
    make(header)
    refused(header, "unreadable header", reason)


def test_non_ecg_record(tmp_path):
    header = copy_record(E07500, tmp_path)
    rename_signals(header, [f"ECG {k}" for k in range(1, 13)])
    refused(header, "no ECG lead: none of the channels ['ECG 1'")


def test_zero_length_record(tmp_path):
    header = copy_record(E07500, tmp_path)
    edit_header(header, "E07500 12 500 5000", "E07500 12 500 0")
    refused(header, "zero-length record")


def test_wfdb_failures_are_wrapped(tmp_path):
    header = copy_record(WFDB_REAL / "flacformats.hea", tmp_path)
    rename_signals(header, ["I", "II", "III"])
    with open(tmp_path / "flacformats.d1", "r+b") as f:  # FLAC: no size check possible before reading
        f.truncate(700)
    refused(header, "wfdb could not read the record:")


# ---------------------------------------------------------------------------------------------------------
# Amplitudes and ADC gain rules
# ---------------------------------------------------------------------------------------------------------

READABLE = [h for h in RECORDS if rel(h) not in REFUSED]


@pytest.mark.parametrize("header", READABLE, ids=rel)
def test_amplitude_check_catches_the_wrong_cinc2020_gains(header):
    rec = read_record(header)
    fixed = apply_gain_rules(rec, CINC2020_GAIN_RULES)
    if rec.record_id in WRONG_GAIN:
        gain = WRONG_GAIN[rec.record_id]
        p2p = robust_peak_to_peak_mV(rec.signal_uV, rec.lead_mask)
        if PLAUSIBLE_P2P_MV[0] <= p2p <= PLAUSIBLE_P2P_MV[1]:
            # within the plausible window, a 5x error is still never silent: the record is flagged
            assert p2p > HIGH_P2P_WARN_MV and amplitude_warning(rec).startswith("amplitude warning")
        else:
            with pytest.raises(RecordError) as err:
                check_amplitude(rec)
            assert_one_line(err, header.name, "implausible amplitude: median robust peak-to-peak",
                            f"the header's ADC gain ({gain}/mV) is probably wrong")
        assert fixed is not rec and np.all(fixed.adc_gain[fixed.lead_mask] == 1000.0)
        assert fixed.notes[-1].startswith(f"ADC gain corrected {gain}/mV -> 1000/mV (rule cinc2020-")
        assert rec.notes == fixed.notes[:-1]  # the original is left as it was
    else:
        assert fixed is rec  # 2021 copies (1000/mV) and other databases match no rule
    check_amplitude(fixed)
    assert amplitude_warning(fixed) is None


def test_ptb_copy_agrees_with_ptb_after_the_gain_rule():
    # S0001 is PTB s0010_re with digital values halved (data-notes.md §0.2): after the rule the 12 leads are
    # the same signal, up to the 0.5 uV lost in halving.
    cinc = apply_gain_rules(read_record(S0001), CINC2020_GAIN_RULES)
    ptb = read_record(WFDB_REAL / "s0010_re.hea")
    assert cinc.signal_uV.shape == ptb.signal_uV.shape == (12, 38_400) and cinc.fs == ptb.fs == 1000.0
    assert np.abs(cinc.signal_uV - ptb.signal_uV).max() <= 1.0
    assert "rule cinc2020-ptb" in cinc.notes[-1]


def test_rules_match_only_their_source_and_gain():
    hr_2021 = read_record(CINC2021 / "HR06000.hea")
    assert apply_gain_rules(hr_2021, CINC2020_GAIN_RULES) is hr_2021
    s0010 = read_record(WFDB_REAL / "s0010_re.hea")   # starts with "s", gain 2000: no rule
    assert apply_gain_rules(s0010, CINC2020_GAIN_RULES) is s0010
    hr_2020 = read_record(DATA / "ptbxl-real" / "cinc2020_HR" / "HR00001.hea")
    hr = apply_gain_rules(hr_2020, CINC2020_GAIN_RULES)
    assert apply_gain_rules(hr, CINC2020_GAIN_RULES) is hr  # applying twice changes nothing
    names = [rule.name for rule in CINC2020_GAIN_RULES]
    assert names == ["cinc2020-ptb", "cinc2020-ptbxl", "cinc2020-georgia"]


def test_robust_peak_to_peak_ignores_spikes_and_missing_leads():
    rec = read_record(E07500)
    p2p = robust_peak_to_peak_mV(rec.signal_uV, rec.lead_mask)
    assert PLAUSIBLE_P2P_MV[0] < p2p < PLAUSIBLE_P2P_MV[1]
    assert robust_peak_to_peak_mV(3 * rec.signal_uV, rec.lead_mask) == pytest.approx(3 * p2p)
    spiked = rec.signal_uV.copy()
    spiked[:, 2500] += 50_000.0  # a 50 mV spike in every lead
    assert robust_peak_to_peak_mV(spiked, rec.lead_mask) == pytest.approx(p2p, rel=0.02)
    two_leads = np.zeros(12, dtype=bool)
    two_leads[[0, 1]] = True
    blanked = np.where(two_leads[:, None], rec.signal_uV, 0.0)
    assert robust_peak_to_peak_mV(blanked, two_leads) == robust_peak_to_peak_mV(rec.signal_uV, two_leads)


def test_amplitude_error_names_the_file_and_gain():
    rec = read_record(S0001)
    with pytest.raises(RecordError) as err:
        check_amplitude(rec)
    message = assert_one_line(err, "S0001.hea")
    assert message.endswith("implausible amplitude: median robust peak-to-peak 0.000444 mV outside "
                            "[0.25, 5] mV; the header's ADC gain (2000000/mV) is probably wrong")


def test_raw_record_fields():
    rec = read_record(E07500)
    assert isinstance(rec, RawRecord)
    assert rec.lead_mask.dtype == bool and rec.lead_mask.shape == (12,)
    assert rec.adc_gain.dtype == np.float64 and rec.adc_gain.shape == (12,)
    assert rec.notes == [] and rec.comments[0] == "Age: 78"
