"""Ingest WFDB ECG data into a store: ``python -m ecg_core.data.ingest --format F --input DIR --output STORE``.

Formats
-------
``wfdb``
    Any directory of WFDB records (searched recursively; multi-segment records through their master
    header). Optional metadata in header comments, one ``# Key: value`` line each (keys in
    :data:`WFDB_META_KEYS`): ``Patient``, ``Fold`` (1-10), ``Age``, ``Sex`` (M/F), ``Labels``
    (comma-separated, becomes task ``labels``), ``Report``. The demo dataset uses this convention.
``ptbxl``
    The PhysioNet PTB-XL layout: ``ptbxl_database.csv``, ``scp_statements.csv`` and the
    ``records500/`` (or ``records100/``) WFDB files. Tasks ``all, diag, subdiag, superdiag, form,
    rhythm``; ``strat_fold``, ``patient_id``, ``report``, age and sex from the database.
``cinc2020`` / ``cinc2021``
    PhysioNet/CinC Challenge training directories (``.hea`` + MATLAB v4 ``.mat``). Task ``scored``:
    the year's scored SNOMED CT classes with the official equivalence merges; age/sex from the
    header comments. The documented CinC 2020 ADC-gain corrections are applied
    (:data:`ecg_core.data.wfdb_io.CINC2020_GAIN_RULES`; they match only the wrong gains, so 2021
    copies pass unchanged). The Challenges give no patient ids: each record is its own patient. Folds
    1-10 come from multi-label iterative stratification over the ``scored`` labels
    (:func:`ecg_core.data.stratify.stratified_folds`, patient-level, seed 0), dealt over every record found
    in the input from its header's ``Dx`` before any signal is read, so a record that is later skipped
    (or repaired and re-ingested) does not move the others. How the folds were made is kept in the
    store's ``folds`` attribute for every format.

Every record is resampled to ``--fs`` with a polyphase filter, scaled to 1 uV per int16 count and
appended to the store in sorted order, so ingesting the same input twice gives a byte-identical store.
A bad record (unreadable or garbled header, missing or truncated signal file, a header that lies about
its length, NaN samples, no ECG lead, implausible amplitude) is skipped with a one-line reason in
``STORE/ingest_report.json``; with ``--strict`` the first one stops the run and no store is left behind.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import math
import multiprocessing as mp
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import resample_poly
from tqdm import tqdm

from ecg_core.data import labels as lab
from ecg_core.data.store import CODECS, DEFAULT_CODEC, StoreError, StoreSpec, StoreWriter
from ecg_core.data.stratify import folds_description, stratified_folds
from ecg_core.data.wfdb_io import (
    CINC2020_GAIN_RULES,
    RawRecord,
    RecordError,
    amplitude_warning,
    apply_gain_rules,
    check_amplitude,
    find_records,
    read_record,
)

FORMATS = ("wfdb", "ptbxl", "cinc2020", "cinc2021")

# Header-comment keys of the generic ``wfdb`` format: table column -> key as written in the header.
WFDB_META_KEYS = {"patient_id": "Patient", "fold": "Fold", "age": "Age", "sex": "Sex",
                  "labels": "Labels", "report": "Report"}

# CinC Challenge record-name prefixes -> source database (Perez Alday et al. 2020, Reyna et al. 2021).
CINC_SOURCES = {"A": "CPSC", "Q": "CPSC-Extra", "I": "INCART", "S": "PTB", "HR": "PTB-XL",
                "E": "Georgia", "JS": "Chapman-Ningbo"}

# Folds of the CinC formats (the Challenges publish none): iterative stratification over the scored labels.
CINC_N_FOLDS = 10
CINC_FOLD_SEED = 0
# What the ``folds`` store attribute says for the formats whose folds come with the data.
FOLDS_PTBXL = ("PTB-XL strat_fold from ptbxl_database.csv (recommended split: 1-8 train, 9 validation, "
               "10 test; patient-level)")
FOLDS_WFDB = "header 'Fold' comments (0 where absent: unassigned)"

RESAMPLE_WINDOW = ("kaiser", 5.0)
INT16_MAX = 32767   # symmetric clip: -32768 is WFDB format 16's "no sample" value


class IngestError(RuntimeError):
    """Stops an ingest; the message is one line naming the file and the problem."""


@dataclass(frozen=True)
class Job:
    """One record to ingest: where its header is and what the format already knows about it."""

    header: Path
    rel: str                       # header path relative to the input directory (for reports/provenance)
    fmt: str
    fs: float
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    rel: str
    row: dict[str, Any] | None = None
    x_LT: np.ndarray | None = None
    reason: str | None = None


# ------------------------------------------------------------------------------------------------
# per-format job lists


def _jobs_generic(root: Path, fmt: str, fs: float) -> list[Job]:
    return [Job(h, h.relative_to(root).as_posix(), fmt, fs) for h in find_records(root)]


def _jobs_ptbxl(root: Path, fs: float) -> tuple[list[Job], dict[str, list[str]], list[dict[str, str]]]:
    table = lab.load_ptbxl(root)
    jobs, missing = [], []
    for ecg_id, r in table.records.iterrows():
        # Prefer the 500 Hz files; fall back to the 100 Hz ones when only those were downloaded.
        for name in (r["filename_hr"], r["filename_lr"]):
            if name and (root / f"{name}.hea").is_file():
                header = root / f"{name}.hea"
                break
        else:
            missing.append({"record": f"{r['filename_hr']}.hea",
                            "reason": f"ecg_id {ecg_id}: missing record file {r['filename_hr']}.hea "
                                      f"(nor {r['filename_lr']}.hea)"})
            continue
        meta = {"patient_id": r["patient_id"], "fold": int(r["strat_fold"]), "age": float(r["age"]),
                "sex": r["sex"], "report": r["report"], "ecg_id": int(ecg_id), "source": "ptbxl",
                **{f"y_{t}": list(r[f"y_{t}"]) for t in lab.PTBXL_TASKS}}
        jobs.append(Job(header, header.relative_to(root).as_posix(), "ptbxl", fs, meta))
    return jobs, {t: list(table.classes[t]) for t in lab.PTBXL_TASKS}, missing


@cache
def _scoring(year: int) -> lab.CincScoring:
    return lab.load_cinc_scoring(year)


def _header_scored_labels(header: Path, scoring: lab.CincScoring) -> list[str]:
    """The scored classes of a Challenge header's ``Dx`` comment, without reading the signal ([] when the
    header cannot be read or parsed: such a record is skipped later, with its reason)."""
    try:
        text = header.read_bytes().decode("latin-1")   # Dx codes are ASCII digits in any encoding
        comments = [line.strip() for line in text.splitlines() if line.strip().startswith("#")]
        return list(lab.parse_cinc_comments(comments, scoring).y_scored)
    except (OSError, lab.LabelError):
        return []


def _jobs_cinc(root: Path, fmt: str, fs: float) -> tuple[list[Job], str]:
    """Jobs of a Challenge directory, each with its stratified fold; and the description of the folds.

    The Challenges give no patient ids, so each record is its own patient (its path is the group key);
    :func:`stratified_folds` would keep the records of one patient together if a source gave them.
    """
    jobs = _jobs_generic(root, fmt, fs)
    scoring = _scoring(int(fmt[-4:]))
    labels = [_header_scored_labels(job.header, scoring) for job in jobs]
    patients = [Path(job.rel).with_suffix("").as_posix() for job in jobs]
    folds = stratified_folds(labels, patients, n_folds=CINC_N_FOLDS, seed=CINC_FOLD_SEED)
    jobs = [dataclasses.replace(job, meta={"fold": int(fold)}) for job, fold in zip(jobs, folds)]
    how = folds_description("the scored labels (header Dx) of every record found in the input",
                            CINC_N_FOLDS, CINC_FOLD_SEED,
                            note="no patient ids in the Challenge data: each record is its own patient")
    return jobs, how


# ------------------------------------------------------------------------------------------------
# reading one record (runs in worker processes)


def _comment_value(comments: Iterable[str], key: str) -> str | None:
    for c in comments:
        k, sep, v = c.partition(":")
        if sep and k.strip().lower() == key.lower():
            return v.strip()
    return None


def _wfdb_meta(rec: RawRecord, rel: str) -> dict[str, Any]:
    """Metadata of the generic format from ``# Key: value`` header comments (absent keys -> defaults)."""
    get = {col: _comment_value(rec.comments, key) for col, key in WFDB_META_KEYS.items()}
    try:
        fold = int(get["fold"]) if get["fold"] else 0
        age = float(get["age"]) if get["age"] not in (None, "", "NaN", "nan", "Unknown") else math.nan
    except ValueError as err:
        raise RecordError(f"{rel}: bad metadata comment ({err})") from None
    if not 0 <= fold <= 10:
        raise RecordError(f"{rel}: Fold must be 1-10 (or absent), got {fold}")
    sex = (get["sex"] or "").strip().upper()[:1]
    return {"patient_id": get["patient_id"] or rec.record_id, "fold": fold, "age": age,
            "sex": sex if sex in ("M", "F") else "", "report": get["report"] or "",
            "y_labels": sorted({s.strip() for s in (get["labels"] or "").split(",") if s.strip()}),
            "source": "wfdb"}


def _cinc_meta(rec: RawRecord, year: int, fold: int) -> dict[str, Any]:
    info = lab.parse_cinc_comments(rec.comments, _scoring(year))
    prefix = "".join(ch for ch in rec.record_id[:2] if ch.isalpha())
    source = CINC_SOURCES.get(prefix) or CINC_SOURCES.get(prefix[:1], "unknown")
    return {"patient_id": rec.record_id, "fold": fold, "age": info.age, "sex": info.sex,
            "report": "", "y_scored": list(info.y_scored), "dx": list(info.dx), "source": f"cinc{year}:{source}"}


def to_store_scale(rec: RawRecord, fs: float) -> tuple[np.ndarray, list[str]]:
    """Resample to ``fs`` (polyphase, rational factor) and quantise to int16 at 1 uV/LSB, clipping at +-32.767 mV."""
    notes: list[str] = []
    x = rec.signal_uV
    if not math.isclose(rec.fs, fs):
        ratio = Fraction(fs / rec.fs).limit_denominator(1000)
        x = resample_poly(x, ratio.numerator, ratio.denominator, axis=1, window=RESAMPLE_WINDOW)
        notes.append(f"resampled {rec.fs:g} Hz -> {fs:g} Hz (x{ratio.numerator}/{ratio.denominator})")
    x = np.rint(x)
    clipped = int(np.count_nonzero(np.abs(x) > INT16_MAX))
    if clipped:
        notes.append(f"{clipped} samples beyond +-32.767 mV clipped")
    return np.clip(x, -INT16_MAX, INT16_MAX).astype(np.int16), notes


def process(job: Job) -> Outcome:
    """Read, correct, check, resample and quantise one record. Never raises for a bad record."""
    try:
        rec = read_record(job.header)
        if job.fmt in ("cinc2020", "cinc2021"):
            rec = apply_gain_rules(rec, CINC2020_GAIN_RULES)
        check_amplitude(rec)
        warning = amplitude_warning(rec)
        if warning:
            rec.notes.append(warning)
        if job.fmt == "wfdb":
            meta = _wfdb_meta(rec, job.rel)
        elif job.fmt == "ptbxl":
            meta = dict(job.meta)
        else:
            meta = _cinc_meta(rec, int(job.fmt[-4:]), int(job.meta.get("fold", 0)))
        x_LT, notes = to_store_scale(rec, job.fs)
    except RecordError as err:
        return Outcome(job.rel, reason=str(err))
    except Exception as err:  # noqa: BLE001 - a record must never kill the whole ingest
        return Outcome(job.rel, reason=f"{job.rel}: unexpected {type(err).__name__}: {err}")
    mask = "".join("1" if m else "0" for m in rec.lead_mask)
    row = {"record_id": rec.record_id, "orig_fs": float(rec.fs), "lead_mask": mask,
           "provenance": "; ".join([f"file {job.rel}", *rec.notes, *notes]), **meta}
    return Outcome(job.rel, row=row, x_LT=x_LT)


def _run(jobs: list[Job], workers: int) -> Iterator[Outcome]:
    if workers <= 1 or len(jobs) < 4:
        yield from map(process, jobs)
        return
    # spawn: the parent may already hold zarr's IO thread; forked children must not inherit it.
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        try:
            yield from pool.map(process, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers))))
        finally:
            pool.shutdown(cancel_futures=True)


# ------------------------------------------------------------------------------------------------
# the ingest itself


def ingest(fmt: str, input_dir: Path, output: Path, *, fs: float = 500.0, strict: bool = False,
           workers: int = 1, codec: str = DEFAULT_CODEC, overwrite: bool = False,
           progress: bool = True) -> dict[str, Any]:
    """Build a store from ``input_dir``; returns the ingest report (also written to STORE/ingest_report.json)."""
    if fmt not in FORMATS:
        raise IngestError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not input_dir.is_dir():
        raise IngestError(f"{input_dir}: input directory does not exist")
    if not fs > 0:
        raise IngestError(f"--fs must be positive, got {fs}")
    if output.exists() and not overwrite:
        raise IngestError(f"{output}: already exists (use --overwrite to replace it)")
    tasks: dict[str, list[str]] = {}
    attrs: dict[str, Any] = {}
    skipped: list[dict[str, str]] = []
    if fmt == "ptbxl":
        try:
            jobs, tasks, skipped = _jobs_ptbxl(input_dir, fs)
        except lab.LabelError as err:
            raise IngestError(str(err)) from None
        if strict and skipped:
            raise IngestError(skipped[0]["reason"])
        attrs["folds"] = FOLDS_PTBXL
    elif fmt in ("cinc2020", "cinc2021"):
        jobs, attrs["folds"] = _jobs_cinc(input_dir, fmt, fs)
        scoring = _scoring(int(fmt[-4:]))
        tasks = {"scored": list(scoring.classes)}
        attrs["class_names"] = {"scored": dict(scoring.abbreviations)}
        attrs["scoring_tables"] = f"ecg_core/data/tables/cinc{fmt[-4:]} (PhysioNet/CinC evaluation-{fmt[-4:]})"
    else:
        jobs = _jobs_generic(input_dir, fmt, fs)
        attrs["folds"] = FOLDS_WFDB
    n_found = len(jobs) + len(skipped)
    if n_found == 0:
        raise IngestError(f"{input_dir}: no WFDB record (*.hea) found")
    spec = StoreSpec(fs=float(fs), codec=codec, source_format=fmt)
    labels_seen: set[str] = set()
    corrections: list[dict[str, str]] = []
    warnings: list[dict[str, str]] = []
    with StoreWriter(output, spec=spec, overwrite=overwrite) as writer:
        bar = tqdm(total=len(jobs), desc=f"ingest {fmt}", unit="rec", disable=not progress, file=sys.stderr)
        for out in _run(jobs, workers):
            bar.update()
            if out.reason is not None:
                if strict:
                    bar.close()
                    raise IngestError(f"{out.reason} (--strict: stopped, no store written)")
                skipped.append({"record": out.rel, "reason": out.reason})
                continue
            row = out.row
            labels_seen.update(row.get("y_labels", ()))
            notes = row["provenance"].split("; ")
            corrections += [{"record": out.rel, "note": n} for n in notes if n.startswith("ADC gain corrected")]
            warnings += [{"record": out.rel, "note": n} for n in notes if n.startswith("amplitude warning")]
            try:
                writer.append(out.x_LT, row)
            except StoreError as err:
                if strict:
                    raise IngestError(f"{out.rel}: {err}") from None
                skipped.append({"record": out.rel, "reason": f"{out.rel}: {err}"})
        bar.close()
        if fmt == "wfdb":
            tasks = {"labels": sorted(labels_seen)} if labels_seen else {}
        skipped.sort(key=lambda s: s["record"])
        n_ingested = n_found - len(skipped)
        report = {"format": fmt, "input": str(input_dir), "fs": float(fs), "codec": codec,
                  "n_found": n_found, "n_ingested": n_ingested, "n_skipped": len(skipped),
                  "skipped": skipped, "corrections": corrections, "warnings": warnings}
        if n_ingested == 0:
            reasons = "; ".join(s["reason"] for s in skipped[:3])
            raise IngestError(f"{input_dir}: none of {n_found} records could be ingested ({reasons})")
        writer.commit(tasks=tasks, attrs=attrs, report=report)
    return report


def _summary(report: dict[str, Any], output: Path) -> str:
    from collections import Counter

    from ecg_core.data.store import open_store

    lines = [open_store(output).summary()]
    if report["skipped"]:
        kinds = Counter(s["reason"].split(": ", 1)[-1].split(" (")[0][:70] for s in report["skipped"])
        lines.append(f"skipped {report['n_skipped']} records:")
        lines += [f"  {n:5d} x {k}" for k, n in kinds.most_common(8)]
    if report["warnings"]:
        lines.append(f"amplitude warnings on {len(report['warnings'])} records (high voltage or a wrong ADC "
                     "gain; listed in ingest_report.json and in each record's provenance)")
    if report["corrections"]:
        lines.append(f"amplitude corrections applied to {len(report['corrections'])} records "
                     "(listed in ingest_report.json)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ecg_core.data.ingest",
        description="Ingest WFDB ECG records (PTB-XL, PhysioNet/CinC 2020/2021, any WFDB directory) "
                    "into a sharded Zarr v3 ECG store.",
        epilog="Skipped records and their reasons are listed in STORE/ingest_report.json.")
    p.add_argument("--format", required=True, choices=FORMATS, help="layout of the input directory")
    p.add_argument("--input", required=True, type=Path, help="directory holding the WFDB records")
    p.add_argument("--output", required=True, type=Path, help="store directory to create (e.g. ptbxl.zarr)")
    p.add_argument("--fs", type=float, default=500.0, help="sampling rate of the store in Hz (default 500)")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first bad record, leaving no store behind")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="reader processes (default: min(4, CPUs))")
    p.add_argument("--codec", default=DEFAULT_CODEC, choices=sorted(CODECS),
                   help=f"lossless codec of the signal array (default {DEFAULT_CODEC})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --output")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = ingest(args.format, args.input, args.output, fs=args.fs, strict=args.strict,
                        workers=args.workers, codec=args.codec, overwrite=args.overwrite,
                        progress=not args.quiet)
    except (IngestError, StoreError) as err:
        print(f"ingest: error: {err}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(_summary(report, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
