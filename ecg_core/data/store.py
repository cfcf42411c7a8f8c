"""The ECG store: one Zarr v3 group per dataset, read the same way by every method, job and node.

Layout of a store directory ``NAME.zarr/`` (a Zarr v3 group)::

    zarr.json            group metadata; ``attributes`` hold the preprocessing spec, task vocabularies,
                         integrity figures and ``complete: true`` (written last)
    signal/              int16 array (12, T_total): every record's 12 leads, lead-major, concatenated;
                         canonical scale 1 uV per LSB (int16 covers +-32.767 mV) at ``spec.fs`` Hz;
                         chunked along time, chunks grouped into shards (Zarr sharding codec)
    offsets/             int64 array (n_records + 1,): record i is ``signal[:, offsets[i]:offsets[i+1]]``
    records/             uint8 array: the record table as Parquet bytes (record_id, patient_id, source,
                         offset, length, orig_fs, lead_mask, fold, age, sex, report, y_<task> label lists,
                         provenance, signal_sha1)
    ingest_report.json   what the ingest did, including every skipped record and its reason

Why this layout (see ../shared/reference/data-notes.md section 3): Zarr v3 has no ragged arrays, so records are
concatenated along time with an offsets index; lead-major keeps each lead's samples contiguous so
byte-shuffle + LZ compressors see smooth 16-bit series; small random Zarr reads carry ~1 ms of per-call
overhead, so the training loader reads whole contiguous spans (:meth:`EcgStore.read_span`) and crops
windows in NumPy.

Integrity: a store is written into a temporary sibling directory and renamed into place only when
complete (:class:`StoreWriter`). :func:`open_store` refuses a directory without the ``complete`` flag,
with missing or truncated shard files, or whose record table does not match its checksum;
``verify(deep=True)`` re-reads every sample and compares the SHA-256 of the signal recorded at write time.

Never combine ``TransposeCodec`` with the numcodecs ``Delta`` filter: in zarr 3.1.6 with numcodecs
0.16.6 that pipeline round-trips to wrong values without raising (data-notes.md section 3.1). The
codec presets below avoid both, and the test-suite round-trips every preset.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

from ecg_core.data.leads import LEADS
from ecg_core.data.shard_reader import ShardSpanReader

STORE_FORMAT = "ecg-ssl-store"
STORE_VERSION = 1
CODE_VERSION = "ecg_core.data.store/1"
LSB_UV = 1.0  # one int16 count is one microvolt
N_LEADS = len(LEADS)

# Required record-table columns and their meaning (label columns ``y_<task>`` come in addition).
RECORD_COLUMNS = {
    "record_id": "unique record name within the store",
    "patient_id": "patient identifier (the record id where the source does not give one)",
    "source": "origin of the record, e.g. 'ptbxl', 'cinc2021:Georgia', 'wfdb'",
    "offset": "first sample of the record in the signal array",
    "length": "number of samples at the store's rate",
    "orig_fs": "sampling rate of the source file (Hz)",
    "lead_mask": "12 characters '0'/'1' in lead order: '1' where the lead is present in the source",
    "fold": "1-10 (1-8 train, 9 validation, 10 test by convention); 0 when unassigned",
    "age": "years (NaN unknown)",
    "sex": "'M', 'F' or '' (unknown)",
    "report": "free-text report ('' when none)",
    "provenance": "source file relative to the ingest input, and every correction applied to it",
    "signal_sha1": "SHA-1 of the stored int16 samples of this record (identity of the signal)",
}


class StoreError(RuntimeError):
    """A store that cannot be written or opened; the message is one line naming the path and problem."""


def _codec_kwargs_lz4hc() -> dict[str, Any]:
    return {"compressors": BloscCodec(cname="lz4hc", clevel=5, shuffle=BloscShuffle.shuffle, typesize=2)}


def _codec_kwargs_zstd() -> dict[str, Any]:
    return {"compressors": BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle, typesize=2)}


def _codec_kwargs_delta_zstd() -> dict[str, Any]:
    # The numcodecs Delta filter works on the flattened chunk; with the lead-major (12, T) layout it
    # differences along time within each lead. No TransposeCodec here (see module docstring).
    from zarr.codecs.numcodecs import Delta

    return {"filters": [Delta(dtype="int16")], "compressors": ZstdCodec(level=1)}


def _codec_kwargs_none() -> dict[str, Any]:
    return {"compressors": None}


# Lossless codec presets for the signal array. The default was chosen with ``python bench/loader.py
# --codecs``: Blosc LZ4HC with byte shuffle gave the best decode speed at >= 2x compression on real
# PTB-XL / Challenge signals (figures in the README's "Data store" section).
CODECS: dict[str, Callable[[], dict[str, Any]]] = {
    "lz4hc": _codec_kwargs_lz4hc,
    "zstd": _codec_kwargs_zstd,
    "delta-zstd": _codec_kwargs_delta_zstd,
    "none": _codec_kwargs_none,
}
DEFAULT_CODEC = "lz4hc"
DEFAULT_CHUNK_LEN = 65536  # samples per chunk (12 x 65536 int16 = 1.5 MiB decoded), the unit of reading
DEFAULT_SHARD_CHUNKS = 16  # chunks per shard (24 MiB decoded), the unit of writing: one file each


@dataclass(frozen=True)
class StoreSpec:
    """The preprocessing spec: everything needed to say exactly what data a checkpoint saw."""

    fs: float = 500.0
    units: str = "uV"
    lsb_uV: float = LSB_UV
    dtype: str = "int16"
    leads: tuple[str, ...] = LEADS
    resampler: str = "scipy.signal.resample_poly, rational up/down, Kaiser window beta 5.0"
    filters: tuple[str, ...] = ()
    clip_uV: int = 32767
    codec: str = DEFAULT_CODEC
    chunk_len: int = DEFAULT_CHUNK_LEN
    shard_len: int = DEFAULT_CHUNK_LEN * DEFAULT_SHARD_CHUNKS
    source_format: str = "wfdb"
    code_version: str = CODE_VERSION
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["leads"] = list(self.leads)
        d["filters"] = list(self.filters)
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StoreSpec":
        d = dict(d)
        for key in ("leads", "filters", "notes"):
            d[key] = tuple(d.get(key, ()))
        return cls(**d)


def _table_to_parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, engine="pyarrow", index=False, compression="zstd")
    return buf.getvalue()


def _shard_key(i: int) -> str:
    return f"signal/c/0/{i}"


class StoreWriter:
    """Writes a store into ``<path>.tmp-<pid>`` and renames it to ``path`` on :meth:`commit`.

    Records are appended in order; whole shards are written at once (the sharding codec's unit of
    writing). Nothing is visible at ``path`` until the store is complete; on any error (or
    :meth:`abort`) the temporary directory is removed and an existing store at ``path`` is untouched.
    Use as a context manager::

        with StoreWriter(out, spec=StoreSpec(fs=500)) as w:
            w.append(x_LT, {"record_id": "r1", ...})
            w.commit(tasks={...})
    """

    def __init__(self, path: str | Path, *, spec: StoreSpec, overwrite: bool = False):
        self.path = Path(path)
        self.spec = spec
        self.overwrite = overwrite
        if spec.codec not in CODECS:
            raise StoreError(f"{self.path}: unknown codec {spec.codec!r}; choose one of {sorted(CODECS)}")
        if spec.shard_len % spec.chunk_len:
            raise StoreError(f"{self.path}: shard_len {spec.shard_len} is not a multiple of chunk_len {spec.chunk_len}")
        if self.path.exists() and not overwrite:
            raise StoreError(f"{self.path}: already exists (pass overwrite to replace it)")
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self._group = zarr.open_group(zarr.storage.LocalStore(str(self.tmp)), mode="w", zarr_format=3)
        with warnings.catch_warnings():
            # Numcodecs-wrapped codecs (only the optional 'delta-zstd' preset) warn that they are not in the
            # v3 spec; the choice is documented above.
            warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")
            self._signal = self._group.create_array(
                "signal", shape=(N_LEADS, 0), dtype="int16", chunks=(N_LEADS, spec.chunk_len),
                shards=(N_LEADS, spec.shard_len), fill_value=0, dimension_names=("lead", "time"),
                config={"write_empty_chunks": True},  # every shard has a file: open() checks them all
                **CODECS[spec.codec](),
            )
        self._rows: list[dict[str, Any]] = []
        self._buf: list[np.ndarray] = []
        self._buf_len = 0
        self._written = 0
        self._total = 0
        self._sha = hashlib.sha256()
        self._ids: set[str] = set()
        self._done = False

    # -- context manager: abort on error ---------------------------------------------------------
    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()

    def abort(self) -> None:
        """Remove the temporary directory; an existing store at ``path`` is left as it was."""
        self._done = True
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- writing ---------------------------------------------------------------------------------
    def append(self, x_LT: np.ndarray, row: dict[str, Any]) -> None:
        """Append one record: ``x_LT`` int16 (12, T) at the store's rate and scale, ``row`` its table row."""
        if x_LT.dtype != np.int16 or x_LT.ndim != 2 or x_LT.shape[0] != N_LEADS or x_LT.shape[1] == 0:
            raise StoreError(f"{self.path}: record {row.get('record_id')!r}: expected int16 (12, T>0), "
                             f"got {x_LT.dtype} {x_LT.shape}")
        rid = str(row["record_id"])
        if rid in self._ids:
            raise StoreError(f"{self.path}: duplicate record_id {rid!r}")
        self._ids.add(rid)
        row = dict(row, offset=self._total, length=int(x_LT.shape[1]),
                   signal_sha1=hashlib.sha1(np.ascontiguousarray(x_LT).tobytes()).hexdigest())
        self._rows.append(row)
        self._buf.append(np.ascontiguousarray(x_LT))
        self._buf_len += x_LT.shape[1]
        self._total += x_LT.shape[1]
        while self._buf_len >= self.spec.shard_len:
            self._flush(self.spec.shard_len)

    def _flush(self, n: int) -> None:
        data = np.concatenate(self._buf, axis=1) if len(self._buf) > 1 else self._buf[0]
        head, rest = data[:, :n], data[:, n:]
        self._signal.resize((N_LEADS, self._written + n))
        self._signal[:, self._written:self._written + n] = head
        self._sha.update(np.ascontiguousarray(head).tobytes())
        self._written += n
        self._buf = [rest] if rest.shape[1] else []
        self._buf_len = rest.shape[1]

    def commit(self, *, tasks: dict[str, list[str]] | None = None, attrs: dict[str, Any] | None = None,
               report: dict[str, Any] | None = None) -> Path:
        """Write the tail, the table and the attributes, then atomically move the store into place."""
        if not self._rows:
            self.abort()
            raise StoreError(f"{self.path}: no record to write")
        if self._buf_len:
            self._flush(self._buf_len)
        table = pd.DataFrame(self._rows)
        missing = [c for c in RECORD_COLUMNS if c not in table.columns]
        if missing:
            self.abort()
            raise StoreError(f"{self.path}: record table lacks columns {missing}")
        tasks = {k: list(v) for k, v in (tasks or {}).items()}
        for task in tasks:
            if f"y_{task}" not in table.columns:
                self.abort()
                raise StoreError(f"{self.path}: task {task!r} has no label column y_{task}")
        ordered = list(RECORD_COLUMNS) + sorted(c for c in table.columns if c not in RECORD_COLUMNS)
        table = table[ordered]
        offsets = np.append(table["offset"].to_numpy(np.int64), np.int64(self._total))
        self._group.create_array("offsets", data=offsets, chunks=(max(1, len(offsets)),), compressors=None)
        blob = np.frombuffer(_table_to_parquet(table), dtype=np.uint8)
        self._group.create_array("records", data=blob, chunks=(max(1, blob.size),), compressors=None)
        n_shards = math.ceil(self._total / self.spec.shard_len)
        shard_nbytes = [(self.tmp / _shard_key(i)).stat().st_size for i in range(n_shards)]
        if report is not None:
            (self.tmp / "ingest_report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        meta = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "spec": self.spec.to_dict(),
            "n_records": len(table),
            "n_samples": int(self._total),
            "n_patients": int(table["patient_id"].nunique()),
            "tasks": tasks,
            "columns": RECORD_COLUMNS,
            "table_sha256": hashlib.sha256(blob.tobytes()).hexdigest(),
            "signal_sha256": self._sha.hexdigest(),
            "shard_nbytes": shard_nbytes,
            **(attrs or {}),
            "complete": True,  # written last: a store without it is refused on open
        }
        self._group.attrs.update(meta)
        if self.path.exists():
            if not self.overwrite:
                self.abort()
                raise StoreError(f"{self.path}: appeared while writing; the new store was discarded")
            old = self.path.with_name(f"{self.path.name}.old-{os.getpid()}")
            os.rename(self.path, old)
            os.rename(self.tmp, self.path)
            shutil.rmtree(old)
        else:
            os.rename(self.tmp, self.path)
        self._done = True
        return self.path


class EcgStore:
    """A read-only view of one store. Picklable (only the path travels), so DataLoader workers reopen it.

    ``records`` is the record table (pandas DataFrame, one row per record, in storage order);
    ``fs`` the sampling rate; ``tasks`` the label vocabulary per task (label column ``y_<task>``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._open()

    def _fail(self, problem: str) -> StoreError:
        return StoreError(f"{self.path}: {problem}")

    def _open(self) -> None:
        p = self.path
        if not p.is_dir():
            raise self._fail("no such store directory")
        if not (p / "zarr.json").is_file():
            raise self._fail("not a Zarr store (no zarr.json); an interrupted write leaves only a .tmp-* sibling")
        try:
            group = zarr.open_group(zarr.storage.LocalStore(str(p), read_only=True), mode="r", zarr_format=3)
            attrs = dict(group.attrs)
        except Exception as err:  # noqa: BLE001 - any zarr/json failure means an unreadable store
            raise self._fail(f"unreadable store metadata ({type(err).__name__}: {err})") from err
        if attrs.get("format") != STORE_FORMAT:
            raise self._fail(f"not an ECG store (format attribute {attrs.get('format')!r})")
        if attrs.get("version") != STORE_VERSION:
            raise self._fail(f"store version {attrs.get('version')} is not supported (expected {STORE_VERSION})")
        if attrs.get("complete") is not True:
            raise self._fail("incomplete store (half-written): re-run the ingest")
        self.attrs = attrs
        self.spec = StoreSpec.from_dict(attrs["spec"])
        self.fs = float(self.spec.fs)
        self.tasks: dict[str, list[str]] = {k: list(v) for k, v in attrs.get("tasks", {}).items()}
        try:
            self.signal = group["signal"]
            offsets_arr = group["offsets"]
            table_arr = group["records"]
        except KeyError as err:
            raise self._fail(f"missing array {err}") from err
        n_samples = int(attrs["n_samples"])
        if self.signal.shape != (N_LEADS, n_samples):
            raise self._fail(f"signal shape {self.signal.shape} != (12, {n_samples}) recorded at write time")
        for i, nbytes in enumerate(attrs["shard_nbytes"]):
            f = p / _shard_key(i)
            if not f.is_file():
                raise self._fail(f"missing shard file {_shard_key(i)}")
            if f.stat().st_size != nbytes:
                raise self._fail(f"shard file {_shard_key(i)} has {f.stat().st_size} bytes, expected {nbytes} "
                                 "(truncated or modified)")
        blob = np.asarray(table_arr[:])
        if hashlib.sha256(blob.tobytes()).hexdigest() != attrs["table_sha256"]:
            raise self._fail("record table checksum mismatch (corrupt records array)")
        self.records = pd.read_parquet(io.BytesIO(blob.tobytes()), engine="pyarrow")
        self.offsets = np.asarray(offsets_arr[:], dtype=np.int64)
        if (len(self.offsets) != len(self.records) + 1 or self.offsets[-1] != n_samples
                or np.any(np.diff(self.offsets) <= 0)
                or not np.array_equal(self.offsets[:-1], self.records["offset"].to_numpy(np.int64))):
            raise self._fail("offsets array is inconsistent with the record table")
        self._index = {rid: i for i, rid in enumerate(self.records["record_id"])}
        # The fast reader of whole spans (None for layouts it does not know: then zarr reads them).
        self._spans = ShardSpanReader.open(p / "signal")

    # -- pickling: reopen in the receiving process ---------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = Path(state["path"])
        self._open()

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"EcgStore({str(self.path)!r}, records={len(self)}, fs={self.fs:g})"

    # -- reading ---------------------------------------------------------------------------------
    def index_of(self, record_id: str) -> int:
        try:
            return self._index[str(record_id)]
        except KeyError:
            raise KeyError(f"{self.path}: no record {record_id!r}") from None

    def lead_mask(self, record_id: str) -> np.ndarray:
        """bool (12,): True where the lead was present in the source (missing leads read as zeros)."""
        return np.array([c == "1" for c in self.records["lead_mask"].iat[self.index_of(record_id)]])

    def read_span(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Raw int16 (12, stop-start) samples (1 uV/LSB) of the concatenated signal: one contiguous read.

        ``out`` (int16, that shape) is filled and returned when given. Spans are decoded by
        :class:`~ecg_core.data.shard_reader.ShardSpanReader` (several times faster than zarr's general
        path for this layout) and by zarr for any other layout.
        """
        if self._spans is not None:
            return self._spans.read(start, stop, out=out)
        x = np.asarray(self.signal[:, start:stop])
        if out is None:
            return x
        out[...] = x
        return out

    def read(self, record_id: str) -> np.ndarray:
        """The whole record as float32 (12, T) in mV at ``fs``; missing leads are zeros (see lead_mask)."""
        i = self.index_of(record_id)
        return self.read_span(int(self.offsets[i]), int(self.offsets[i + 1])).astype(np.float32) * np.float32(
            self.spec.lsb_uV / 1000.0)

    def read_window(self, record_id: str, start: int, length: int) -> np.ndarray:
        """float32 (12, length) in mV: samples ``[start, start+length)`` of the record."""
        i = self.index_of(record_id)
        n = int(self.offsets[i + 1] - self.offsets[i])
        if start < 0 or length <= 0 or start + length > n:
            raise IndexError(f"{self.path}: window [{start}, {start + length}) outside record {record_id!r} "
                             f"of length {n}")
        a = int(self.offsets[i]) + start
        return self.read_span(a, a + length).astype(np.float32) * np.float32(self.spec.lsb_uV / 1000.0)

    # -- integrity and description ------------------------------------------------------------------
    def verify(self, deep: bool = False) -> None:
        """Cheap checks run on open; ``deep`` re-reads every sample and compares the write-time SHA-256."""
        if not deep:
            return
        h = hashlib.sha256()
        step = self.spec.shard_len
        try:
            n = int(self.attrs["n_samples"])
            for a in range(0, n, step):
                h.update(np.ascontiguousarray(self.read_span(a, min(a + step, n))).tobytes())
        except Exception as err:  # noqa: BLE001 - a codec failure on damaged bytes is corruption too
            raise self._fail(f"signal unreadable ({type(err).__name__}: {err})") from err
        if h.hexdigest() != self.attrs["signal_sha256"]:
            raise self._fail("signal checksum mismatch: the stored samples differ from what was written")

    def nbytes_stored(self) -> int:
        return sum(f.stat().st_size for f in (self.path / "signal").rglob("*") if f.is_file())

    def compression_ratio(self) -> float:
        return (N_LEADS * int(self.attrs["n_samples"]) * 2) / max(1, self.nbytes_stored())

    def ingest_report(self) -> dict[str, Any] | None:
        f = self.path / "ingest_report.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def summary(self) -> str:
        r = self.records
        hours = int(self.attrs["n_samples"]) / self.fs / 3600
        lines = [
            f"store {self.path}",
            f"  {len(r)} records, {r['patient_id'].nunique()} patients, {hours:.2f} h of 12-lead signal "
            f"at {self.fs:g} Hz ({self.spec.units}, {self.spec.dtype}, {self.spec.lsb_uV:g} uV/LSB)",
            f"  codec {self.spec.codec}: {self.nbytes_stored() / 1e6:.1f} MB on disk, "
            f"compression {self.compression_ratio():.2f}x",
            "  sources: " + ", ".join(f"{k} {v}" for k, v in r["source"].value_counts().sort_index().items()),
        ]
        full = int((r["lead_mask"] == "1" * N_LEADS).sum())
        lines.append(f"  leads: {full} records with all 12 leads, {len(r) - full} with missing leads (masked)")
        folds = r["fold"].value_counts().sort_index()
        lines.append("  folds: " + ", ".join(f"{k}: {v}" for k, v in folds.items()))
        for task, classes in self.tasks.items():
            counts = pd.Series([c for labels in r[f"y_{task}"] for c in labels]).value_counts()
            names = self.attrs.get("class_names", {}).get(task, {})
            shown = ", ".join(f"{names.get(c, c)} {int(counts.get(c, 0))}" for c in classes[:12])
            more = f", ... ({len(classes)} classes)" if len(classes) > 12 else ""
            lines.append(f"  task {task}: {shown}{more}")
        rep = self.ingest_report()
        if rep:
            lines.append(f"  ingest: {rep.get('n_found', '?')} found, {rep.get('n_ingested', '?')} ingested, "
                         f"{rep.get('n_skipped', '?')} skipped (see {self.path / 'ingest_report.json'})")
        return "\n".join(lines)


def open_store(path: str | Path) -> EcgStore:
    """Open and verify a store (cheap checks; see :meth:`EcgStore.verify` for the deep one)."""
    return EcgStore(path)
