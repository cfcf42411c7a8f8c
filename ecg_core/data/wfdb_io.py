"""Reading real WFDB ECG records into one 12-lead microvolt array, or refusing them with a one-line reason.

Built on wfdb-python 4.3.1 (``wfdb.rdheader``/``wfdb.rdrecord``), with guards for what real files do to it
(``/work/shared/reference/data-notes.md``, cited as DN §n):

* **Header syntax.** CinC 2020 Georgia headers name the record ``E00009.mat`` on the record line, which
  wfdb's record-line regex rejects (``HeaderSyntaxError``; DN §0.1, wfdb-python issues #351 and #415), and
  CinC 2020 record lines end with ``DD-Mon-YYYY HH:MM:SS``, which wfdb mis-parses *silently* (``base_time``
  becomes 00:00:05). The header text is checked before wfdb sees it; a header that needs it is sanitised
  into a temporary directory next to symlinks of its signal files, so input files are never modified. What
  was changed is recorded in :attr:`RawRecord.notes`.
* **Units.** wfdb decodes headers as ASCII with ``errors="ignore"``, so ``µV`` turns into ``V`` (10^6 off;
  DN §0.1). Units, lead names and comments are therefore parsed here from the raw bytes (UTF-8, else
  Latin-1, line by line). An omitted unit means mV (WFDB header spec). A channel whose unit is not a voltage
  is not an ECG lead.
* **Lead names** are mapped with :func:`ecg_core.data.leads.canonical_lead`; a lead that is not in the file
  stays missing (mask False, row of zeros): nothing is derived from other leads.
* **Signal files** are checked against the header before reading: a file shorter than
  ``byte_offset + sig_len * bytes_per_frame`` makes wfdb fail with numpy broadcast errors (DN §1.6,
  wfdb-python issues #66 and #160), and a MATLAB v4 ``.mat`` whose matrix size disagrees with the header
  means the header lies about the length.
* **Multi-frequency records** (``212x4``) are read with ``smooth_frames=False`` so that a lead with 4 samples
  per frame keeps its native rate instead of being averaged down to the frame rate (DN §1.3; wfdb-python
  PR #318). Multi-segment records are read through their master header (DN §1.4).
* **Invalid samples.** wfdb turns the format's invalid-sample value (-32768 for fmt 16, -2048 for fmt 212,
  ...) and multi-segment gaps into NaN (DN §1.2); a NaN in an ECG lead makes the record unusable.
* **ADC gains.** The CinC 2020 copies of PTB, PTB-XL and Georgia carry wrong gains (DN §0.2; DESIGN.md
  "Known facts"). :func:`check_amplitude` flags implausible amplitudes and :data:`CINC2020_GAIN_RULES`
  corrects the known cases (:func:`apply_gain_rules`).

Shape suffixes: ``_LT`` leads x time, ``_LNW`` leads x windows x samples per window.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import re
import shutil
import struct
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from ecg_core.data.leads import LEADS, canonical_lead, unit_to_uV

with warnings.catch_warnings():
    # wfdb 4.3.1 calls DataFrame.set_index(..., inplace=True) while importing wfdb/io/annotation.py, which
    # pandas 3.1 deprecates (Pandas4Warning, a DeprecationWarning). Nothing here uses annotations.
    warnings.filterwarnings("ignore", message="The inplace keyword", category=DeprecationWarning)
    import wfdb

__all__ = [
    "CINC2020_GAIN_RULES",
    "GainRule",
    "PLAUSIBLE_P2P_MV",
    "RawRecord",
    "RecordError",
    "apply_gain_rules",
    "check_amplitude",
    "find_records",
    "read_record",
    "robust_peak_to_peak_mV",
]


class RecordError(ValueError):
    """A record that cannot be ingested. ``str(err)`` is ONE line: the reason, naming the file."""


def _error(path: Path | str, reason: str) -> RecordError:
    # wfdb/numpy messages can span lines; the reason must stay one line for logs and ingest reports.
    return RecordError(" ".join(f"{path}: {reason}".split()))


@dataclass
class RawRecord:
    """One record as read from disk, in microvolts, in the canonical lead order :data:`LEADS`."""

    record_id: str          # record name without extension ("E00009" even if the header says "E00009.mat")
    header_path: Path
    fs: float               # sampling rate (Hz) of signal_uV: the native rate of the ECG leads
    signal_uV: np.ndarray   # float64 (12, T) in microvolts; rows of missing leads are 0.0
    lead_mask: np.ndarray   # bool (12,), True where the lead is present in the file
    adc_gain: np.ndarray    # float64 (12,): the header's ADC gain in digital units per mV (nan if missing)
    comments: list[str]     # header comment lines, leading '#' and surrounding whitespace stripped
    notes: list[str] = field(default_factory=list)  # provenance notes, one line each


# ---------------------------------------------------------------------------------------------------------
# Raw header text
# ---------------------------------------------------------------------------------------------------------

# Bytes per sample of the binary WFDB formats (DN §1.3; WFDB signal(5) man page). The FLAC formats
# 508/516/524 are compressed: their length is checked after reading. Format 0 (null signal) has no data.
_BYTES_PER_SAMPLE: dict[str, Fraction] = {
    "8": Fraction(1), "16": Fraction(2), "61": Fraction(2), "80": Fraction(1), "160": Fraction(2),
    "212": Fraction(3, 2), "310": Fraction(4, 3), "311": Fraction(4, 3), "24": Fraction(3), "32": Fraction(4),
}
# The digital value each format reserves for "invalid sample" (wfdb-python _signal.py; DN §1.2-1.3).
_INVALID_VALUE: dict[str, int] = {
    "16": -(2**15), "61": -(2**15), "80": -(2**7), "160": -(2**15), "212": -(2**11), "310": -(2**9),
    "311": -(2**9), "24": -(2**23), "32": -(2**31), "508": -(2**7), "516": -(2**15), "524": -(2**23),
}

_NAME = re.compile(r"[-\w]+")  # the record names wfdb's record-line regex accepts (wfdb/io/header.py)
_NAME_WITH_EXTENSION = re.compile(r"([-\w]+)\.[A-Za-z0-9]+")
_FS = re.compile(r"(\d*\.?\d+(?:[eE][-+]?\d+)?)(?:/\d*\.?\d+(?:\(-?\d*\.?\d+\))?)?")
_TIME = re.compile(r"\d{1,2}(?::\d{1,2}){0,2}(?:\.\d{1,6})?")
_DATE = re.compile(r"\d{1,2}/\d{1,2}/\d{4}")
_FMT = re.compile(r"(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?")
# C0 control characters other than tab: a header holding them is binary data, not text. (C1 controls are
# left alone: Latin-1-decoded Windows-1252 text produces them.)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_GAIN = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?:\((-?\d+)\))?(?:/(.*))?")


@dataclass(frozen=True)
class _Signal:
    """One signal line, parsed from the raw header text."""

    file_name: str
    fmt: str
    samps_per_frame: int
    byte_offset: int
    gain: float | None   # as written; None if the field is absent
    units: str           # as written; "" if absent (mV per the WFDB spec)
    description: str


@dataclass
class _Header:
    """One header file: the fields this module needs, and the text to hand to wfdb."""

    path: Path
    lines: list[str]
    n_seg: int | None
    n_sig: int
    sig_len: int | None
    signals: list[_Signal]
    segments: list[tuple[str, int]]  # (segment name, length in frames) of a multi-segment master header
    comments: list[str]
    fixes: list[str]                 # what sanitising changed; empty if wfdb can read the file as it is

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _header_lines(path: Path) -> list[str]:
    """Decoded lines of a header file: UTF-8 where valid, else Latin-1, line by line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _error(path, f"cannot read the header: {exc.strerror or exc}") from exc
    if b"\x00" in raw:
        raise _error(path, "unreadable header: it holds NUL bytes (binary data, not a WFDB header)")
    lines = []
    for number, raw_line in enumerate(raw.splitlines(), start=1):
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError:
            line = raw_line.decode("latin-1")
        if _CONTROL.search(line):
            raise _error(path, f"unreadable header: control characters in line {number} (binary data?)")
        lines.append(line)
    return lines


def _parse_header(path: Path) -> _Header:
    """Parse the raw header text; sanitise the record line where wfdb would reject or misread it."""
    lines = _header_lines(path)
    stripped = [line.strip() for line in lines]
    body = [(i, line) for i, line in enumerate(stripped) if line and not line.startswith("#")]
    comments = [line.lstrip("#").strip() for line in stripped if line.startswith("#")]
    if not body:
        raise _error(path, "unreadable header: no record line")
    record_index, record_line = body[0]

    def bad(what: str) -> RecordError:
        return _error(path, f"unreadable header: {what} in record line {record_line!r}")

    tokens = record_line.split()
    name, _, n_seg_text = tokens[0].partition("/")
    fixes = []
    if not _NAME.fullmatch(name):
        match = _NAME_WITH_EXTENSION.fullmatch(name)
        if match is None:
            raise bad(f"invalid record name {name!r}")
        # CinC 2020 Georgia: "E00009.mat 12 500 5000 ..." (DN §0.1).
        fixes.append(f"record name {name!r} -> {match.group(1)!r}")
        name = match.group(1)
    if n_seg_text and not n_seg_text.isdigit():
        raise bad(f"invalid segment count {n_seg_text!r}")
    if len(tokens) < 2 or not tokens[1].isdigit():
        raise bad("no valid signal count")
    fs_match = _FS.fullmatch(tokens[2]) if len(tokens) > 2 else None
    if len(tokens) > 2 and (fs_match is None or float(fs_match.group(1)) <= 0):
        raise bad(f"invalid sampling frequency {tokens[2]!r}")
    if len(tokens) > 3 and not tokens[3].isdigit():
        raise bad(f"invalid signal length {tokens[3]!r}")
    tail = tokens[4:]
    if tail and not _is_wfdb_time_date(tail):
        # CinC 2020 writes "DD-Mon-YYYY HH:MM:SS", which wfdb reads as base_time 00:00:DD (DN §0.1).
        fixes.append(f"date/time {' '.join(tail)!r} dropped")
        tail = []
    if fixes:
        lines = list(lines)
        lines[record_index] = " ".join([name + (f"/{n_seg_text}" if n_seg_text else ""), *tokens[1:4], *tail])

    n_seg = int(n_seg_text) if n_seg_text else None
    n_sig = int(tokens[1])
    rest = [line for _, line in body[1:]]
    signals: list[_Signal] = []
    segments: list[tuple[str, int]] = []
    if n_seg is None:
        if len(rest) != n_sig:
            raise _error(path, f"unreadable header: the record line declares {n_sig} signals but "
                               f"{len(rest)} signal lines follow")
        signals = [_parse_signal_line(path, number, line) for number, line in enumerate(rest, start=1)]
    else:
        if len(rest) != n_seg:
            raise _error(path, f"unreadable header: the record line declares {n_seg} segments but "
                               f"{len(rest)} segment lines follow")
        for line in rest:
            parts = line.split()
            valid_name = len(parts) == 2 and (parts[0] == "~" or _NAME.fullmatch(parts[0]) is not None)
            if not valid_name or not parts[1].isdigit():
                raise _error(path, f"unreadable header: invalid segment line {line!r}")
            segments.append((parts[0], int(parts[1])))
    sig_len = int(tokens[3]) if len(tokens) > 3 else None
    return _Header(path, lines, n_seg, n_sig, sig_len, signals, segments, comments, fixes)


def _is_wfdb_time_date(tail: list[str]) -> bool:
    """True if ``tail`` is a ``base_time [base_date]`` that wfdb reads correctly (``HH:MM:SS DD/MM/YYYY``)."""
    if len(tail) > 2 or not _TIME.fullmatch(tail[0]) or (len(tail) == 2 and not _DATE.fullmatch(tail[1])):
        return False
    try:
        wfdb.io.header.wfdb_strptime(tail[0])
        if len(tail) == 2:
            datetime.datetime.strptime(tail[1], "%d/%m/%Y")
    except ValueError:
        return False
    return True


def _parse_signal_line(path: Path, number: int, line: str) -> _Signal:
    parts = line.split(maxsplit=8)
    fmt_match = _FMT.fullmatch(parts[1]) if len(parts) > 1 else None
    if fmt_match is None:
        raise _error(path, f"unreadable header: signal line {number} {line!r} has no valid format field")
    fmt, spf, _skew, offset = fmt_match.groups()
    gain, units = None, ""
    if len(parts) > 2:
        gain_match = _GAIN.fullmatch(parts[2])
        if gain_match is None:
            raise _error(path, f"unreadable header: signal line {number} {line!r} has an invalid gain field")
        gain, units = float(gain_match.group(1)), gain_match.group(3) or ""
    return _Signal(file_name=parts[0], fmt=fmt, samps_per_frame=int(spf) if spf else 1,
                   byte_offset=int(offset or 0), gain=gain, units=units,
                   description=parts[8].strip() if len(parts) == 9 else "")


# ---------------------------------------------------------------------------------------------------------
# Finding records
# ---------------------------------------------------------------------------------------------------------

def _segment_names(header_path: Path) -> list[str]:
    """Segment (and layout) header names listed by a multi-segment master header; [] for anything else."""
    try:
        lines = [line.strip() for line in _header_lines(header_path)]
        record_name = next((line.split()[0] for line in lines if line and not line.startswith("#")), "")
        if "/" not in record_name:
            return []  # not a master header: decided without parsing the signal lines
        header = _parse_header(header_path)
    except RecordError:
        return []
    return [name for name, _ in header.segments if name != "~"]


def find_records(root: Path) -> list[Path]:
    """Every record header (``*.hea``) under ``root``, recursively, sorted by relative path.

    Segment and layout headers of a multi-segment record whose master header is in the same directory are
    left out: the record is read through its master (``041s/041s.hea``, not ``041s01.hea``/``041s02.hea``).
    """
    root = Path(root)
    headers = sorted((p for p in root.rglob("*.hea") if p.is_file()),
                     key=lambda p: p.relative_to(root).as_posix())
    segments = {p.parent / f"{name}.hea" for p in headers for name in _segment_names(p)}
    return [p for p in headers if p not in segments]


# ---------------------------------------------------------------------------------------------------------
# Reading one record
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Lead:
    """Where one canonical lead comes from."""

    index: int          # position in LEADS
    channel: int        # channel number in the record (the master's numbering for multi-segment records)
    signal: _Signal     # its signal line (the first segment's, or the layout header's)
    to_uV: float        # factor from the header's physical unit to microvolts
    gain_per_mV: float

    @property
    def name(self) -> str:
        return LEADS[self.index]


def _select_leads(path: Path, signals: list[_Signal], notes: list[str]) -> list[_Lead]:
    """Map channels to canonical leads; the first channel of a lead wins, other names and units are out."""
    leads: dict[str, _Lead] = {}
    ignored = []
    for channel, signal in enumerate(signals):
        lead = canonical_lead(signal.description)
        if lead is None:
            ignored.append(signal.description)
            continue
        unit = signal.units or "mV"  # WFDB header spec: an omitted unit means millivolts
        to_uV = unit_to_uV(unit)
        if to_uV is None:
            notes.append(f"channel {channel} {signal.description!r} has unit {unit!r}, not a voltage: "
                         f"ignored")
            continue
        if lead in leads:
            notes.append(f"channel {channel} {signal.description!r} duplicates lead {lead} "
                         f"(channel {leads[lead].channel}): the first is kept")
            continue
        if signal.gain == 0:
            notes.append(f"lead {lead}: ADC gain 0 (uncalibrated) read as 200/{unit}, as wfdb does")
        gain = signal.gain or 200.0  # WFDB: an absent or zero gain means 200 units per physical unit
        leads[lead] = _Lead(LEADS.index(lead), channel, signal, to_uV, gain * 1000.0 / to_uV)
    if not leads:
        names = [s.description for s in signals]
        raise _error(path, f"no ECG lead: none of the channels {names} is one of the 12 standard leads "
                           f"with a voltage unit")
    if ignored:
        notes.append(f"channels that are not one of the 12 standard leads ignored: {ignored}")
    return sorted(leads.values(), key=lambda lead: lead.channel)


def _check_signal_files(header: _Header, sig_len: int, channels: set[int]) -> None:
    """Refuse missing or short signal files before wfdb reads them (it would crash with broadcast errors)."""
    by_file: dict[str, list[_Signal]] = {}
    for signal in header.signals:
        by_file.setdefault(signal.file_name, []).append(signal)
    wanted = {header.signals[ch].file_name for ch in channels} - {"~"}
    for file_name in sorted(wanted):
        signals = by_file[file_name]
        file_path = header.path.parent / file_name
        if not file_path.is_file():
            raise _error(header.path, f"missing signal file {file_name} (named by {header.path.name})")
        fmt, offset = signals[0].fmt, signals[0].byte_offset
        if fmt not in _BYTES_PER_SAMPLE:
            continue
        spf = sum(s.samps_per_frame for s in signals)
        needed = offset + math.ceil(sig_len * spf * _BYTES_PER_SAMPLE[fmt])
        size = file_path.stat().st_size
        if size < needed:
            raise _error(header.path, f"signal file {file_name} is truncated or the header's length is "
                                      f"wrong: {size} bytes, but {sig_len} frames of {spf} fmt-{fmt} samples "
                                      f"after byte offset {offset} need {needed}")
        _check_mat_matrix(header, file_path, signals, sig_len, spf)


def _check_mat_matrix(header: _Header, file_path: Path, signals: list[_Signal], sig_len: int,
                      spf: int) -> None:
    """A Challenge-style MATLAB v4 ``.mat`` (``16+24``) states its matrix size; it must match the header."""
    if file_path.suffix.lower() != ".mat" or signals[0].fmt != "16":
        return
    with file_path.open("rb") as f:
        head = f.read(20)
    if len(head) < 20:
        return
    mat_type, rows, cols, imaginary, name_len = struct.unpack("<5i", head)
    # Type 30 = little-endian int16 matrix; the samples start after the 20-byte header and the name ("val\0").
    if mat_type != 30 or imaginary != 0 or signals[0].byte_offset != 20 + name_len:
        return
    if cols != sig_len or rows != spf:
        raise _error(header.path, f"the header says {sig_len} frames of {spf} samples but {file_path.name} "
                                  f"holds a {rows}x{cols} matrix: the header's length is wrong")


def _read_segment_headers(master: _Header, notes: list[str]) -> list[_Header]:
    headers = []
    for name, _ in master.segments:
        if name == "~":
            continue
        path = master.path.parent / f"{name}.hea"
        if not path.is_file():
            raise _error(master.path, f"missing segment header {path.name} (named by the master header)")
        header = _parse_header(path)
        if header.n_seg is not None:
            raise _error(master.path, f"segment {path.name} is itself a multi-segment header")
        if header.fixes:
            notes.append(f"segment header {path.name} sanitised: {'; '.join(header.fixes)}")
        headers.append(header)
    return headers


def _check_segments(master: _Header, segments: list[_Header], leads: list[_Lead], notes: list[str]) -> None:
    """Per segment: the length agrees with the master, ECG units agree, the signal files are complete."""
    total = sum(length for _, length in master.segments)
    if master.sig_len is not None and total != master.sig_len:
        raise _error(master.path, f"the segments add up to {total} frames but the master header says "
                                  f"{master.sig_len}: the header's length is wrong")
    by_name = {h.path.stem: h for h in segments}
    gains_differ = []
    for name, length in master.segments:
        if name == "~" or length == 0:  # a gap, or the layout header of a variable-layout record
            continue
        header = by_name[name]
        if header.sig_len is not None and header.sig_len != length:
            raise _error(master.path, f"segment {name} is {length} frames long in the master header but "
                                      f"{header.sig_len} in {header.path.name}: the header's length is wrong")
        channels = set()
        for lead in leads:
            # Variable layouts number each segment's channels on their own: find the lead by name.
            same = [k for k, s in enumerate(header.signals) if s.description == lead.signal.description]
            if not same:
                continue  # absent in this segment: wfdb fills NaN, refused after reading
            k, signal = same[0], header.signals[same[0]]
            if (signal.units or "mV") != (lead.signal.units or "mV"):
                raise _error(master.path, f"lead {lead.name} has unit {signal.units or 'mV'!r} in segment "
                                          f"{name} but {lead.signal.units or 'mV'!r} elsewhere")
            if signal.gain != lead.signal.gain:
                gains_differ.append(f"{lead.name} in {name}")
            channels.add(k)
        _check_signal_files(header, length, channels)
    if gains_differ:
        notes.append(f"ADC gain differs between segments ({', '.join(gains_differ)}); wfdb converts each "
                     f"segment with its own gain (wfdb-python issue #14); adc_gain is the first segment's")


@contextlib.contextmanager
def _wfdb_view(master: _Header, segment_headers: list[_Header]) -> Iterator[str]:
    """Yield the record path (without ``.hea``) for wfdb to read.

    That is the file itself when wfdb can parse every header as written; otherwise a temporary directory with
    the sanitised headers and symlinks to the signal files (copies where symlinks are not allowed), so that
    input files are never modified.
    """
    headers = [master, *segment_headers]
    if not any(h.fixes for h in headers):
        yield str(master.path.with_suffix(""))
        return
    with tempfile.TemporaryDirectory(prefix="wfdb-sanitised-") as tmp:
        tmp_dir = Path(tmp)
        for header in headers:
            (tmp_dir / header.path.name).write_text(header.text, encoding="utf-8")
            for file_name in {s.file_name for s in header.signals} - {"~"}:
                source, target = header.path.parent / file_name, tmp_dir / file_name
                if source.exists() and not target.exists():
                    try:
                        os.symlink(source.resolve(), target)
                    except OSError:
                        shutil.copyfile(source, target)
        yield str(tmp_dir / master.path.stem)


def _invalid_where(master: _Header, segments: list[_Header], lead: _Lead, nan_at: np.ndarray,
                   spf: int) -> str:
    """Where the NaN samples of one lead come from: file, format and the format's invalid-sample value."""

    def describe(signal: _Signal) -> str:
        invalid = _INVALID_VALUE.get(signal.fmt)
        return f"{signal.file_name} (fmt {signal.fmt}" + (f", invalid value {invalid})" if invalid else ")")

    if master.n_seg is None:
        return describe(lead.signal)
    # Frame index -> segment; within a segment the lead is found by name.
    bounds = np.cumsum([length for _, length in master.segments])
    by_name = {h.path.stem: h for h in segments}
    parts = []
    for k in sorted(set(np.searchsorted(bounds, nan_at // spf, side="right").tolist())):
        name = master.segments[k][0]
        header = by_name.get(name)
        found = [s for s in header.signals if s.description == lead.signal.description] if header else []
        parts.append(f"segment {name}: {describe(found[0])}" if found else f"segment {name} (gap)")
    return "; ".join(parts)


def read_record(header_path: Path) -> RawRecord:
    """Read one WFDB record (single- or multi-segment) into microvolts in canonical lead order.

    Raises :class:`RecordError`, one line naming the file, for: a missing, unreadable or garbled header; a
    missing, truncated or too short signal file; a header that lies about its length; a zero-length record;
    a record without any of the 12 standard leads; invalid (NaN) samples in an ECG lead. Any other failure
    inside wfdb is wrapped the same way. ADC gains are taken as written: see :func:`apply_gain_rules` and
    :func:`check_amplitude`.
    """
    header_path = Path(header_path)
    if not header_path.is_file():
        raise _error(header_path, "header file not found")
    master = _parse_header(header_path)
    notes: list[str] = []
    if master.fixes:
        notes.append(f"header sanitised: {'; '.join(master.fixes)}")
    if master.n_sig == 0:
        raise _error(header_path, "no ECG lead: the header declares no signals")
    if master.sig_len == 0:
        raise _error(header_path, "zero-length record: the header's signal length is 0")

    segment_headers: list[_Header] = []
    if master.n_seg is None:
        leads = _select_leads(header_path, master.signals, notes)
        if master.sig_len is not None:
            _check_signal_files(master, master.sig_len, {lead.channel for lead in leads})
    else:
        segment_headers = _read_segment_headers(master, notes)
        # Fixed layout: every segment has the master's signals; variable: the layout header (segment 0) does.
        reference = next((h for h in segment_headers if h.signals), None)
        n_found = len(reference.signals) if reference else 0
        if n_found != master.n_sig:
            raise _error(header_path, f"the master header declares {master.n_sig} signals but the first "
                                      f"segment with signals has {n_found}")
        leads = _select_leads(header_path, reference.signals, notes)
        _check_segments(master, segment_headers, leads, notes)

    try:
        with _wfdb_view(master, segment_headers) as record_path:
            record = wfdb.rdrecord(record_path, channels=[lead.channel for lead in leads], physical=True,
                                   smooth_frames=False, return_res=64)
    except Exception as exc:  # wfdb raises ValueError, IndexError, LibsndfileError, ... on damaged input
        raise _error(header_path, f"wfdb could not read the record: {type(exc).__name__}: {exc}") from exc

    n_frames = int(record.sig_len or 0)
    signals = list(record.e_p_signal) if record.e_p_signal is not None else []
    if n_frames == 0 or any(len(x) == 0 for x in signals):
        raise _error(header_path, "zero-length record: no samples")
    # The channels wfdb returned must be the leads this module parsed from the raw text.
    names = [canonical_lead(str(name)) for name in record.sig_name or []]
    if names != [lead.name for lead in leads] or len(signals) != len(leads):
        raise _error(header_path, f"wfdb read channels {record.sig_name} where the header names "
                                  f"{[lead.signal.description for lead in leads]}")
    if master.sig_len is not None and n_frames != master.sig_len:
        raise _error(header_path, f"wfdb read {n_frames} frames but the header says {master.sig_len}")
    for lead, samples in zip(leads, signals):
        spf = lead.signal.samps_per_frame
        if len(samples) != n_frames * spf:
            raise _error(header_path, f"lead {lead.name}: {len(samples)} samples read, the header says "
                                      f"{n_frames} frames of {spf}: the signal file is too short")
        nan_at = np.flatnonzero(np.isnan(samples))
        if nan_at.size:
            where = _invalid_where(master, segment_headers, lead, nan_at, spf)
            raise _error(header_path, f"invalid samples in ECG lead {lead.name}: {nan_at.size} NaN sample(s) "
                                      f"(the format's invalid-sample value, or a gap) in {where}")

    spf_max = max(lead.signal.samps_per_frame for lead in leads)
    fs = float(record.fs) * spf_max
    signal_uV_LT = np.zeros((len(LEADS), n_frames * spf_max), dtype=np.float64)
    lead_mask = np.zeros(len(LEADS), dtype=bool)
    adc_gain = np.full(len(LEADS), np.nan)
    resampled = []
    for lead, samples in zip(leads, signals):
        values = np.asarray(samples, dtype=np.float64)
        if lead.signal.samps_per_frame != spf_max:
            # ECG leads of one record at different rates: bring the slower ones up to the fastest.
            ratio = Fraction(spf_max, lead.signal.samps_per_frame)
            values = resample_poly(values, ratio.numerator, ratio.denominator, padtype="line")
            resampled.append(f"{lead.name} from {float(record.fs) * lead.signal.samps_per_frame:g} Hz")
        signal_uV_LT[lead.index] = values * lead.to_uV
        lead_mask[lead.index] = True
        adc_gain[lead.index] = lead.gain_per_mV
    if resampled:
        notes.append(f"resampled to {fs:g} Hz with scipy.signal.resample_poly: {', '.join(resampled)}")
    return RawRecord(record_id=header_path.stem, header_path=header_path, fs=fs, signal_uV=signal_uV_LT,
                     lead_mask=lead_mask, adc_gain=adc_gain, comments=master.comments, notes=notes)


# ---------------------------------------------------------------------------------------------------------
# Amplitude plausibility and ADC gain corrections
# ---------------------------------------------------------------------------------------------------------

#: Plausible range (mV) of :func:`robust_peak_to_peak_mV` for a correctly scaled ECG. Measured on every
#: real record in tests/data: correctly scaled records give 0.56-1.57 mV; CinC 2020 copies read with their
#: header gains give 2.64-9.67 mV (PTB-XL, 5x too large), 0.20 mV (Georgia, 4.88x too small) and 0.0004 mV
#: (PTB, 2000x too small). The bounds leave room for low-voltage ECGs (QRS < 0.5 mV in the limb leads is
#: itself a diagnosis, SNOMED 251146004) and for high voltage (LVH). A 5x gain error cannot be told from real
#: amplitude variation in every record, so known errors are fixed by rule (:data:`CINC2020_GAIN_RULES`) and
#: this window is the safety net for unknown ones. Between :data:`HIGH_P2P_WARN_MV` and the upper bound a
#: record is kept but flagged (:func:`amplitude_warning`): genuine high-voltage ECGs (LVH) reach that band,
#: and so do copies whose gain is ~2.5-5x too small, so the store says so instead of refusing or staying silent.
PLAUSIBLE_P2P_MV: tuple[float, float] = (0.25, 5.0)
HIGH_P2P_WARN_MV = 2.5
#: Samples per window of the robust peak-to-peak: >= 2 s up to 1 kHz, so that every window holds a beat.
P2P_WINDOW = 2048


def robust_peak_to_peak_mV(signal_uV: np.ndarray, lead_mask: np.ndarray) -> float:  # noqa: N802
    """Median over present leads of a robust per-lead peak-to-peak amplitude, in mV.

    Per lead: cut into windows of about :data:`P2P_WINDOW` samples, take the 99th minus the 1st percentile in
    each (ignores single spikes; windows are short enough that baseline wander does not add up), then the
    median over windows (ignores bursts of artefact). The median over leads keeps one noisy or flat lead from
    deciding. ``signal_uV`` is (12, T) in microvolts.
    """
    x_LT = np.asarray(signal_uV, dtype=np.float64)[np.asarray(lead_mask, dtype=bool)]
    if x_LT.shape[0] == 0 or x_LT.shape[1] == 0:
        raise ValueError("robust_peak_to_peak_mV needs at least one present lead with samples")
    n_windows = max(1, x_LT.shape[1] // P2P_WINDOW)
    width = x_LT.shape[1] // n_windows  # drops fewer than n_windows trailing samples
    x_LNW = x_LT[:, : n_windows * width].reshape(x_LT.shape[0], n_windows, width)
    high_LN, low_LN = np.percentile(x_LNW, [99.0, 1.0], axis=2)
    return float(np.median(np.median(high_LN - low_LN, axis=1))) / 1000.0


def check_amplitude(rec: RawRecord) -> None:
    """Raise :class:`RecordError` if the amplitude is implausible: the header's ADC gain is probably wrong.

    The statistic is :func:`robust_peak_to_peak_mV`, the window :data:`PLAUSIBLE_P2P_MV`.
    """
    lo, hi = PLAUSIBLE_P2P_MV
    p2p = robust_peak_to_peak_mV(rec.signal_uV, rec.lead_mask)
    if not lo <= p2p <= hi:
        gains = ", ".join(f"{g:.10g}" for g in sorted({float(g) for g in rec.adc_gain[rec.lead_mask]}))
        raise _error(rec.header_path, f"implausible amplitude: median robust peak-to-peak {p2p:.3g} mV "
                                      f"outside [{lo:g}, {hi:g}] mV; the header's ADC gain ({gains}/mV) is "
                                      f"probably wrong")


def amplitude_warning(rec: RawRecord) -> str | None:
    """A one-line note when the amplitude is plausible but unusually high (see :data:`HIGH_P2P_WARN_MV`)."""
    p2p = robust_peak_to_peak_mV(rec.signal_uV, rec.lead_mask)
    if p2p <= HIGH_P2P_WARN_MV:
        return None
    return (f"amplitude warning: median robust peak-to-peak {p2p:.3g} mV > {HIGH_P2P_WARN_MV:g} mV "
            "(a high-voltage ECG, or a header ADC gain 2.5-5x too small)")


@dataclass(frozen=True)
class GainRule:
    """A documented correction of one source's wrong ADC gain.

    Applies to records whose id starts with ``record_prefix`` and whose present leads all have the header
    gain ``header_gain`` (digital units per mV); their true gain is ``true_gain``. ``evidence`` says how
    this is known, in one line.
    """

    name: str
    record_prefix: str
    header_gain: float
    true_gain: float
    evidence: str

    def matches(self, rec: RawRecord) -> bool:
        gains = rec.adc_gain[rec.lead_mask]
        return (rec.record_id.startswith(self.record_prefix) and gains.size > 0
                and bool(np.allclose(gains, self.header_gain, rtol=1e-9, atol=0.0)))


CINC2020_GAIN_RULES: tuple[GainRule, ...] = (
    GainRule(
        name="cinc2020-ptb", record_prefix="S", header_gain=2_000_000.0, true_gain=1000.0,
        evidence="CinC 2020 S0001 holds the 12 leads of PTB s0010_re (2000/mV) with digital values halved, "
                 "i.e. 1 uV per unit (data-notes.md §0.2); read at 2000000/mV it is 2000x too small",
    ),
    GainRule(
        name="cinc2020-ptbxl", record_prefix="HR", header_gain=200.0, true_gain=1000.0,
        evidence="CinC 2020 HR00001 has the initial values and checksums of PTB-XL 00001_hr.hea "
                 "('-115 13047 0 I', 1000.0(0)/mV) and of its CinC 2021 copy (1000.0(0)/mv); PTB-XL is "
                 "1000/mV (helme/ecg_ptbxl_benchmarking issue #8); read at 200/mV it is 5x too large",
    ),
    GainRule(
        name="cinc2020-georgia", record_prefix="E", header_gain=4880.0, true_gain=1000.0,
        evidence="the CinC 2021 v1.0.3 header of Georgia E00001 (1000.0(0)/mV) has the initial values and "
                 "checksums of its CinC 2020 header (4880/mV; lead I '136 -28477'), i.e. the same samples; "
                 "read at 4880/mV E00009 is 4.88x too small (0.20 mV robust peak-to-peak, 0.97 at 1000/mV)",
    ),
)
"""ADC gain corrections for the CinC 2020 Challenge release (challenge-2020 v1.0.x; DESIGN.md "Known facts").

* ``cinc2020-ptb`` (``S*``, 2000000/mV -> 1000/mV): ``S0001`` holds exactly the 12 leads of PTB
  ``s0010_re`` with digital values halved (DN §0.2); ``s0010_re`` is 2000 units/mV, so ``S0001`` is
  1000/mV (1 µV per unit). The tests check this sample by sample (within 1 µV).
* ``cinc2020-ptbxl`` (``HR*``, 200/mV -> 1000/mV): the samples are PTB-XL's (the initial values and checksums
  of ``HR00001`` equal those of PTB-XL ``00001_hr.hea`` and of the CinC 2021 ``HR00001.hea``, both
  ``1000.0(0)/mV``); PTB-XL's native scale is 1000/mV
  (https://github.com/helme/ecg_ptbxl_benchmarking/issues/8).
* ``cinc2020-georgia`` (``E*``, 4880/mV -> 1000/mV): the CinC 2021 v1.0.3 release keeps the samples (equal
  initial values and checksums for ``E00001``) and states 1000/mV. Reading 4880 as "4.88 µV per unit"
  (205/mV) instead would make ``E00009`` 4.7 mV robust peak-to-peak, implausible; 1000/mV gives 0.97 mV.

Each rule applies only to its own wrong gain, so the 2021 copies (1000/mV) are left as they are.
"""


def apply_gain_rules(rec: RawRecord, rules: Sequence[GainRule]) -> RawRecord:
    """Copy of ``rec`` rescaled by the first matching rule, with a note; ``rec`` itself if none matches."""
    for rule in rules:
        if rule.matches(rec):
            note = (f"ADC gain corrected {rule.header_gain:.10g}/mV -> {rule.true_gain:.10g}/mV "
                    f"(rule {rule.name}: {rule.evidence})")
            return dataclasses.replace(
                rec, signal_uV=rec.signal_uV * (rule.header_gain / rule.true_gain),
                adc_gain=np.where(rec.lead_mask, rule.true_gain, np.nan),
                comments=list(rec.comments), notes=[*rec.notes, note])
    return rec
