"""Leakage guard: evaluation records that a pretraining store also holds, and patients split across folds.

``python -m ecg_core.data.leakage --pretrain STORE [STORE ...] --eval STORE`` prints, for each pretraining
store, the records it shares with the evaluation store and the pretraining records to leave out.

Why: PTB-XL is one of the sources of the PhysioNet/CinC Challenges 2020 and 2021: the records ``HR00001`` to
``HR21837`` of their "PTB-XL" source are PTB-XL ``ecg_id`` 1-21837 (the same samples; see
``tests/data/ptbxl-real/README.md`` and the ``cinc2020-ptbxl`` rule of :mod:`ecg_core.data.wfdb_io`), so
pretraining on CinC while evaluating on PTB-XL trains on the test records unless they are excluded
(DESIGN.md, "Known facts about the real data"). Other redistributions exist (PTB in CinC 2020 as ``S*``,
Georgia in both years), so the guard does not rely on names alone.

Two rules find a shared record (:func:`find_overlap`):

``name``
    The PTB-XL ``ecg_id`` of both records is the same: a PTB-XL store keeps it in its ``ecg_id`` column
    (record ids ``NNNNN_hr``); a CinC store names its PTB-XL records ``HR#####`` (source
    ``cinc20xx:PTB-XL``), the number being the ``ecg_id``.
``signal``
    The two records' signal fingerprints (:func:`signal_fingerprint`) differ in at most ``max_bits``
    (:data:`MATCH_BITS`) of their :data:`FINGERPRINT_BITS` bits; identical and integer-scaled copies have
    equal fingerprints.

Signal fingerprint
------------------
What differs between two distributions of one recording once both are ingested at the same rate: the
amplitude scale (a wrong ADC gain leaves a 5x error in badly labelled copies; the store keeps
``round(gain * x)``) and requantisation (a copy scaled by a non-integer factor, or resampled before
rounding, differs by about one count per sample; PTB-XL's own samples come in 5 uV steps). Lead order and
units are canonical in every store. The fingerprint is a sign-random-projection sketch (Charikar 2002,
"Similarity estimation techniques from rounding algorithms", STOC) of the record's coarse slope:

1. per lead, sums over blocks of :data:`BLOCK_S` (40 ms, 20 samples at 500 Hz) of the first
   :data:`MAX_SECONDS` seconds, and their first differences ``d`` (the slope on a 25 Hz grid: offsets and
   the flat baseline drop out, QRS timing and shape dominate);
2. :data:`FINGERPRINT_BITS` projections of ``d`` (all leads, all blocks) on fixed pseudo-random +-1
   vectors (splitmix64 of (bit, block, lead): the same on every machine and NumPy version);
3. bit ``b`` = projection ``b`` > 0; the fingerprint is the bits in hexadecimal.

A positive scale factor multiplies every projection and leaves every sign as it is; for integer samples
the projections are exact integer sums (below 2**53), so a copy scaled by an integer (the 5x copy) has
*exactly* the same fingerprint. Requantisation noise turns the vector ``d`` by a small angle ``t`` and each
bit flips with probability ``t / pi``. Measured on the 304 10-s windows of every real record in tests/data:
copies differ in <= 3 bits (+-1 or +-2 counts of noise), <= 4 bits (rescaled by 1/4.88 or 1/5 and rounded),
<= 6 bits (1/10), 0 bits (x5, or float mV instead of int16 counts), and the CinC 2020 PTB copy ``S0001`` and
the native PTB ``s0010_re`` (1 uV rounding apart) in 0. A record whose samples are all equal has no slope
and gets :data:`FLAT`, which matches nothing.

False matches: for two different recordings the bits agree like coin flips unless their slope vectors
are nearly parallel. Unrelated recordings (different patients) have ``t`` near 90 degrees and differ in
about 256 +- 11 bits (the median over the 46,056 pairs of real windows is 256); the chance of <= 16 is
1e-124 (binomial tail). Different 10 s windows of one patient are the hard case, because beats repeat:
the closest pair of different recordings among the real windows (a MIMIC patient in regular tachycardia,
03700181) still differs in 35 bits, the next in 40 (for such a pair a new draw of projections would fall
within 16 bits with probability 2e-4). A pair within 16 bits needs cosine > 0.995 between slope vectors
over the whole record: every beat at the same sample (to ~1 block), with the same morphology and noise;
the only conceivable case is a paced rhythm of the same patient at an identical phase, and excluding that
pretraining record is then right anyway.

Not caught: copies cropped differently (dropping 7 samples at the end of a 10 s record already moves up
to 51 bits when it removes a 40 ms block holding a QRS slope), inverted or permuted leads, a lead missing
on one side only, and stores at different rates: the grid is in seconds, but on HR00001-5 stores at 1000
and 250 Hz came within 1-15 bits of the 500 Hz fingerprints and 100 Hz stores 34-57 bits away, so compare
stores at one rate (:func:`find_overlap` warns otherwise).

Search: a pair within ``max_bits`` bits shares at least one of ``max_bits + 1`` disjoint bands of bits
exactly (pigeonhole), so joining the two stores' fingerprints band by band finds every such pair without
comparing all pairs (the LSH banding of Gionis, Indyk & Motwani 1999, here exhaustive), and the Hamming
distance is then checked for each candidate.

Store-level fingerprints (:func:`fingerprints`) are cached next to the store (``NAME.zarr.fingerprints.json``,
never inside it: the store's own checks stay as they are), keyed by the store's ``table_sha256`` and
``signal_sha256`` and :data:`FINGERPRINT_VERSION`; a stale or unreadable cache is recomputed.

Shape suffixes: ``L`` leads, ``T`` samples, ``K`` blocks, ``N`` records, ``B`` fingerprint bits.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ecg_core.atomic import write_text_atomic
from ecg_core.data.store import EcgStore, StoreError, open_store

__all__ = [
    "BLOCK_S", "FINGERPRINT_BITS", "FINGERPRINT_VERSION", "FLAT", "MATCH_BITS", "MAX_SECONDS", "LeakageError",
    "Overlap", "check_patient_separation", "find_overlap", "fingerprint_distance", "fingerprints", "main",
    "ptbxl_ecg_ids", "signal_fingerprint",
]

FINGERPRINT_VERSION = "ecg-slope-simhash-1"
FINGERPRINT_BITS = 512
BLOCK_S = 0.04          # seconds per block of the coarse grid
MAX_SECONDS = 30.0      # the fingerprint covers the start of a record, at most this long
MATCH_BITS = 16         # default tolerance of the signal rule (3 % of the bits: cosine > 0.995)
FLAT = "flat"           # fingerprint of a record without any slope (matches nothing)
N_LEADS = 12
_SPAN_SAMPLES = 1 << 21  # samples read per batch by fingerprints() (12 x 2M int16 = 48 MiB)

_PTBXL_CINC_NAME = re.compile(r"HR(\d{5})")
_PTBXL_CINC_SOURCE = re.compile(r"cinc\d{4}:PTB-XL")


class LeakageError(ValueError):
    """Records of one patient on both sides of a split; the message is one line naming store, patient, folds."""


# ------------------------------------------------------------------------------------------------
# Signal fingerprints
# ------------------------------------------------------------------------------------------------

def _splitmix64(z: np.ndarray) -> np.ndarray:
    """Steele, Lea & Flood's SplitMix64 finaliser on uint64 (wrap-around arithmetic is intended)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@cache
def _projection() -> np.ndarray:
    """float64 (K_max * 12, B) of +-1: row ``k * 12 + lead`` weights the slope of block ``k`` of ``lead``.

    Row-major in blocks, so a record of fewer blocks uses a prefix of the rows; built once (37 MB).
    """
    k_max = round(MAX_SECONDS / BLOCK_S)
    row = np.arange(k_max * N_LEADS, dtype=np.uint64)[:, None]
    bit = np.arange(FINGERPRINT_BITS, dtype=np.uint64)[None, :]
    z = _splitmix64((bit << np.uint64(32)) | row)
    return np.where((z >> np.uint64(63)) == 1, 1.0, -1.0)


def _block_len(fs: float) -> int:
    return max(1, round(BLOCK_S * float(fs)))


def _slopes(x_LT: np.ndarray, fs: float) -> np.ndarray | None:
    """float64 (K-1, 12) first differences of block sums (exact for integer samples), or None if too short."""
    x = np.asarray(x_LT)
    if x.ndim != 2 or x.shape[0] > N_LEADS:
        raise ValueError(f"signal must be (leads <= {N_LEADS}, time), got shape {x.shape}")
    block = _block_len(fs)
    n = min(x.shape[1], round(MAX_SECONDS * float(fs)))
    k = n // block
    if k < 2:
        return None
    dtype = np.int64 if np.issubdtype(x.dtype, np.integer) else np.float64
    sums_LK = x[:, :k * block].reshape(x.shape[0], k, block).sum(axis=2, dtype=dtype)
    d_KL = np.zeros((k - 1, N_LEADS), dtype=np.float64)
    d_KL[:, :x.shape[0]] = np.diff(sums_LK, axis=1).T
    return d_KL


def _bits_to_hex(bits_NB: np.ndarray) -> list[str]:
    return [row.tobytes().hex() for row in np.packbits(bits_NB, axis=1)]


def _fingerprint_batch(d_NKL: np.ndarray) -> list[str]:
    """Fingerprints of records with the same number of blocks (``d_NKL`` stacked slopes)."""
    n, k, _ = d_NKL.shape
    flat = ~d_NKL.reshape(n, -1).any(axis=1)
    y_NB = d_NKL.reshape(n, k * N_LEADS) @ _projection()[:k * N_LEADS]
    out = _bits_to_hex(y_NB > 0)
    return [FLAT if f else h for f, h in zip(flat, out)]


def signal_fingerprint(x_LT: np.ndarray, fs: float) -> str:
    """The identity fingerprint of one recording: :data:`FINGERPRINT_BITS` bits as hexadecimal, or :data:`FLAT`.

    ``x_LT`` is (leads, time) at ``fs`` Hz in any amplitude unit (int16 store counts, uV or mV; leads in the
    store's order, missing leads zero). Equal for identical recordings and for copies scaled by a positive
    integer; within a few bits for requantised copies (:func:`fingerprint_distance`). See the module
    docstring for the design and the false-match reasoning.
    """
    d_KL = _slopes(x_LT, fs)
    if d_KL is None:
        return FLAT
    return _fingerprint_batch(d_KL[None])[0]


def _bytes(fps) -> np.ndarray:
    """uint8 (N, B/8): the bytes of hexadecimal fingerprints (none of them FLAT)."""
    raw = b"".join(bytes.fromhex(f) for f in fps)
    if len(raw) != len(fps) * (FINGERPRINT_BITS // 8):
        raise ValueError(f"fingerprints must be {FINGERPRINT_BITS // 4} hexadecimal digits")
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(fps), FINGERPRINT_BITS // 8)


def fingerprint_distance(a: str, b: str) -> int:
    """Number of differing bits of two fingerprints (:data:`FINGERPRINT_BITS` when either is :data:`FLAT`)."""
    if a == FLAT or b == FLAT:
        return FINGERPRINT_BITS
    return int(np.bitwise_count(_bytes([a]) ^ _bytes([b])).sum())


# ------------------------------------------------------------------------------------------------
# Store-level fingerprints (streamed, cached next to the store)
# ------------------------------------------------------------------------------------------------

def _cache_path(store: EcgStore) -> Path:
    return store.path.with_name(f"{store.path.name}.fingerprints.json")


def _cache_key(store: EcgStore) -> dict[str, str]:
    return {"version": FINGERPRINT_VERSION, "table_sha256": str(store.attrs["table_sha256"]),
            "signal_sha256": str(store.attrs["signal_sha256"])}


def _read_cache(store: EcgStore) -> pd.Series | None:
    path = _cache_path(store)
    try:
        data = json.loads(path.read_text())
        if data.get("key") != _cache_key(store):
            return None
        ids, fps = data["record_id"], data["fingerprint"]
        if list(ids) != list(store.records["record_id"].astype(str)) or len(fps) != len(ids):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pd.Series(fps, index=pd.Index(ids, name="record_id"), name="fingerprint", dtype=object)


def _write_cache(store: EcgStore, fps: pd.Series) -> None:
    """Write the sidecar atomically (temporary file + rename); a read-only location just means no cache."""
    path = _cache_path(store)
    data = {"key": _cache_key(store), "record_id": list(fps.index), "fingerprint": list(fps.to_numpy())}
    try:
        write_text_atomic(path, json.dumps(data, separators=(",", ":")) + "\n")
    except OSError:
        pass


def _compute_fingerprints(store: EcgStore, progress: bool) -> list[str]:
    offsets = store.offsets
    n = len(store)
    limit = round(MAX_SECONDS * float(store.fs))
    out: list[str] = [FLAT] * n
    bar = tqdm(total=n, desc=f"fingerprints {store.path.name}", unit="rec", disable=not progress, file=sys.stderr)
    i = 0
    while i < n:
        # consecutive records read with one call: one record (its start only), or several within _SPAN_SAMPLES
        j = i + 1
        while j < n and offsets[j + 1] - offsets[i] <= _SPAN_SAMPLES:
            j += 1
        start = int(offsets[i])
        span = store.read_span(start, min(int(offsets[j]), int(offsets[j - 1]) + limit))
        by_blocks: dict[int, list[tuple[int, np.ndarray]]] = {}
        for r in range(i, j):
            d_KL = _slopes(span[:, int(offsets[r]) - start:int(offsets[r + 1]) - start], store.fs)
            if d_KL is not None:
                by_blocks.setdefault(d_KL.shape[0], []).append((r, d_KL))
        for items in by_blocks.values():
            for r, fp in zip((r for r, _ in items), _fingerprint_batch(np.stack([d for _, d in items]))):
                out[r] = fp
        bar.update(j - i)
        i = j
    bar.close()
    return out


def fingerprints(store: EcgStore | str | os.PathLike[str], *, cache: bool = True,
                 progress: bool = True) -> pd.Series:
    """``record_id -> fingerprint`` (:func:`signal_fingerprint`) of every record of a store, in storage order.

    Streams the store in spans of ~2M samples (a progress bar on stderr when ``progress``). With ``cache``
    the result is kept in ``NAME.zarr.fingerprints.json`` beside the store (see the module docstring) and
    reused while the store's checksums and the fingerprint version are unchanged.
    """
    store = store if isinstance(store, EcgStore) else open_store(store)
    if cache:
        cached = _read_cache(store)
        if cached is not None:
            return cached
    fps = pd.Series(_compute_fingerprints(store, progress), dtype=object, name="fingerprint",
                    index=pd.Index(store.records["record_id"].astype(str).to_numpy(), name="record_id"))
    if cache:
        _write_cache(store, fps)
    return fps


# ------------------------------------------------------------------------------------------------
# Overlap between a pretraining store and an evaluation store
# ------------------------------------------------------------------------------------------------

def ptbxl_ecg_ids(records: pd.DataFrame) -> pd.Series:
    """The PTB-XL ``ecg_id`` of each record (``record_id -> int``; records that are not PTB-XL left out).

    PTB-XL stores (source ``ptbxl``): the ``ecg_id`` column, else the ``NNNNN_hr``/``NNNNN_lr`` record name.
    CinC stores: ``HR#####`` records of a ``cinc20xx:PTB-XL`` source.
    """
    rid = records["record_id"].astype(str).reset_index(drop=True)
    source = records["source"].astype(str).reset_index(drop=True)
    ecg_id = pd.Series(np.nan, index=rid.index)
    if "ecg_id" in records.columns:
        ecg_id = pd.to_numeric(records["ecg_id"].reset_index(drop=True), errors="coerce").astype(np.float64)
    from_name = pd.to_numeric(rid.str.extract(r"^(\d{5})_(?:hr|lr)$")[0], errors="coerce")
    ptbxl = (source == "ptbxl") & (ecg_id.notna() | from_name.notna())
    cinc = source.str.fullmatch(_PTBXL_CINC_SOURCE.pattern) & rid.str.fullmatch(_PTBXL_CINC_NAME.pattern)
    value = ecg_id.where(ecg_id.notna(), from_name).where(ptbxl, pd.to_numeric(rid.str[2:], errors="coerce"))
    keep = (ptbxl | cinc).to_numpy()
    return pd.Series(value[keep].astype("int64").to_numpy(), index=pd.Index(rid[keep].to_numpy(), name="record_id"),
                     name="ecg_id")


def _band_keys(bits_NB: np.ndarray, band: np.ndarray) -> pd.DataFrame:
    """The bits of ``band`` as integer key columns of at most 63 bits each."""
    cols = {}
    for c, part in enumerate(np.array_split(band, -(-len(band) // 63))):
        weights = np.uint64(1) << np.arange(len(part), dtype=np.uint64)
        cols[f"k{c}"] = (bits_NB[:, part].astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return pd.DataFrame(cols)


def _near_pairs(fp_a: pd.Series, fp_b: pd.Series, max_bits: int) -> pd.DataFrame:
    """Pairs ``(a, b, distance)`` of record ids whose fingerprints differ in at most ``max_bits`` bits."""
    a = fp_a[fp_a != FLAT]
    b = fp_b[fp_b != FLAT]
    if a.empty or b.empty:
        return pd.DataFrame({"a": pd.Series(dtype=object), "b": pd.Series(dtype=object),
                             "distance": pd.Series(dtype="int64")})
    bytes_a, bytes_b = _bytes(a.to_numpy()), _bytes(b.to_numpy())
    bits_a, bits_b = np.unpackbits(bytes_a, axis=1), np.unpackbits(bytes_b, axis=1)
    candidates = [np.zeros((0, 2), dtype=np.int64)]
    # max_bits + 1 disjoint bands: a pair within max_bits bits agrees exactly on at least one of them
    for band in np.array_split(np.arange(FINGERPRINT_BITS), max_bits + 1):
        keys_a, keys_b = _band_keys(bits_a, band), _band_keys(bits_b, band)
        joined = keys_a.assign(ia=np.arange(len(a))).merge(keys_b.assign(ib=np.arange(len(b))), on=list(keys_a))
        candidates.append(joined[["ia", "ib"]].to_numpy(np.int64))
    pairs = np.unique(np.concatenate(candidates), axis=0)
    dist = np.bitwise_count(bytes_a[pairs[:, 0]] ^ bytes_b[pairs[:, 1]]).sum(axis=1).astype(np.int64)
    keep = dist <= max_bits
    return pd.DataFrame({"a": a.index.to_numpy()[pairs[keep, 0]], "b": b.index.to_numpy()[pairs[keep, 1]],
                         "distance": dist[keep]})


@dataclass
class Overlap:
    """Records a pretraining store shares with an evaluation store (:func:`find_overlap`).

    ``pairs``: ``(pretrain record_id, eval record_id, how)`` with ``how`` ``"name"`` or ``"signal"`` (a pair
    found by both rules is listed twice), sorted. ``eval_patients``: patient ids of the matched evaluation
    records. ``exclude``: the pretraining record ids to leave out: every matched pretraining record and every
    other record of the same pretraining patient (the Challenges give none, so there that is the record).
    """

    pretrain: str
    eval: str
    pairs: list[tuple[str, str, str]]
    eval_patients: list[str]
    exclude: list[str]
    n_pretrain: int = 0
    notes: list[str] = field(default_factory=list)

    def count(self, how: str | None = None) -> int:
        """Number of pairs found by rule ``how`` (all pairs when None)."""
        return sum(1 for p in self.pairs if how is None or p[2] == how)

    @property
    def eval_records(self) -> list[str]:
        return sorted({p[1] for p in self.pairs})

    def summary(self) -> str:
        both = len({(p, e) for p, e, h in self.pairs if h == "name"} & {(p, e) for p, e, h in self.pairs
                                                                        if h == "signal"})
        lines = [f"pretrain {self.pretrain} vs eval {self.eval}:",
                 f"  pairs by name: {self.count('name')}, by signal: {self.count('signal')} (both: {both})",
                 (f"  eval records matched: {len(self.eval_records)}, eval patients involved: "
                  f"{len(self.eval_patients)}"),
                 f"  pretraining records to exclude: {len(self.exclude)} of {self.n_pretrain}"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def find_overlap(pretrain_store: EcgStore | str | os.PathLike[str], eval_store: EcgStore | str | os.PathLike[str],
                 *, max_bits: int = MATCH_BITS, cache: bool = True, progress: bool = True) -> Overlap:
    """The records of ``pretrain_store`` that are records of ``eval_store``, by name and by signal.

    Rules (module docstring): ``name`` = same PTB-XL ``ecg_id``; ``signal`` = fingerprints within
    ``max_bits`` bits (0: equal fingerprints only). Fingerprints are computed (or read from their cache) for
    both stores.
    """
    if not 0 <= max_bits < FINGERPRINT_BITS // 8:
        raise ValueError(f"max_bits must be in [0, {FINGERPRINT_BITS // 8}), got {max_bits}")
    pre = pretrain_store if isinstance(pretrain_store, EcgStore) else open_store(pretrain_store)
    ev = eval_store if isinstance(eval_store, EcgStore) else open_store(eval_store)
    notes = []
    if not math.isclose(pre.fs, ev.fs):
        notes.append(f"the stores have different rates ({pre.fs:g} vs {ev.fs:g} Hz): signal matches are "
                     "verified only between stores at one rate")
        warnings.warn(f"find_overlap: {notes[-1]}", stacklevel=2)
    ids_pre, ids_ev = ptbxl_ecg_ids(pre.records), ptbxl_ecg_ids(ev.records)
    by_name = pd.DataFrame({"a": ids_pre.index, "ecg_id": ids_pre.to_numpy()}).merge(
        pd.DataFrame({"b": ids_ev.index, "ecg_id": ids_ev.to_numpy()}), on="ecg_id")
    by_signal = _near_pairs(fingerprints(pre, cache=cache, progress=progress),
                            fingerprints(ev, cache=cache, progress=progress), max_bits)
    pairs = sorted({(str(a), str(b), "name") for a, b in zip(by_name["a"], by_name["b"])}
                   | {(str(a), str(b), "signal") for a, b in zip(by_signal["a"], by_signal["b"])})
    matched_pre = {p for p, _, _ in pairs}
    matched_ev = {e for _, e, _ in pairs}
    rec_pre, rec_ev = pre.records, ev.records
    patients_pre = set(rec_pre.loc[rec_pre["record_id"].astype(str).isin(matched_pre), "patient_id"].astype(str))
    exclude = rec_pre.loc[rec_pre["patient_id"].astype(str).isin(patients_pre), "record_id"].astype(str)
    eval_patients = rec_ev.loc[rec_ev["record_id"].astype(str).isin(matched_ev), "patient_id"].astype(str)
    return Overlap(pretrain=str(pre.path), eval=str(ev.path), pairs=pairs,
                   eval_patients=sorted(set(eval_patients)), exclude=sorted(set(exclude) | matched_pre),
                   n_pretrain=len(pre), notes=notes)


# ------------------------------------------------------------------------------------------------
# Patient separation of the folds of one store
# ------------------------------------------------------------------------------------------------

def check_patient_separation(store: EcgStore | str | os.PathLike[str], train_folds, val_folds,
                             test_folds) -> None:
    """Raise :class:`LeakageError` if a patient has records in more than one of train / val / test.

    Records in folds outside the three sets are ignored. Folds listed in two sets are an error as well.
    """
    st = store if isinstance(store, EcgStore) else open_store(store)
    parts = {"train": {int(f) for f in train_folds}, "val": {int(f) for f in val_folds},
             "test": {int(f) for f in test_folds}}
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if parts[a] & parts[b]:
                raise LeakageError(f"{st.path}: {a} and {b} folds share folds {sorted(parts[a] & parts[b])}")
    part_of = {fold: name for name, folds in parts.items() for fold in folds}
    rec = st.records[["record_id", "patient_id", "fold"]].copy()
    rec["part"] = rec["fold"].astype(int).map(part_of)
    rec = rec.dropna(subset=["part"])
    rec["patient_id"] = rec["patient_id"].astype(str)
    spread = rec.groupby("patient_id")["part"].nunique()
    bad = sorted(spread.index[spread > 1])
    if not bad:
        return
    mine = rec[rec["patient_id"] == bad[0]]
    where = " and ".join(f"{name} folds {sorted({int(f) for f in mine.loc[mine['part'] == name, 'fold']})}"
                         for name in names if (mine["part"] == name).any())
    shown = ", ".join(f"{r} (fold {int(f)})" for r, f in zip(mine["record_id"][:4], mine["fold"][:4]))
    raise LeakageError(f"{st.path}: patient {bad[0]!r} has records in {where}: {shown}"
                       f"{', ...' if len(mine) > 4 else ''}; {len(bad)} patient(s) span more than one of "
                       "train/val/test")


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ecg_core.data.leakage",
        description="Find the records that pretraining stores share with an evaluation store (same PTB-XL "
                    "ecg_id, or same signal fingerprint) and the pretraining records to exclude.",
        epilog="Fingerprints are cached beside each store as NAME.zarr.fingerprints.json (use --no-cache "
               "to neither read nor write them).")
    p.add_argument("--pretrain", required=True, nargs="+", type=Path, metavar="STORE",
                   help="pretraining store(s)")
    p.add_argument("--eval", required=True, type=Path, metavar="STORE", help="evaluation store (e.g. PTB-XL)")
    p.add_argument("--max-bits", type=int, default=MATCH_BITS,
                   help=f"signal rule: fingerprints differing in at most this many of {FINGERPRINT_BITS} bits "
                        f"match (default {MATCH_BITS}; 0 = equal fingerprints only)")
    p.add_argument("--exclude-out", type=Path, metavar="FILE",
                   help="write {pretrain store: [record ids to exclude]} as JSON to FILE")
    p.add_argument("--no-cache", action="store_true", help="do not read or write fingerprint caches")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exclude: dict[str, list[str]] = {}
    try:
        for path in args.pretrain:
            overlap = find_overlap(path, args.eval, max_bits=args.max_bits, cache=not args.no_cache,
                                   progress=not args.quiet)
            print(overlap.summary())
            exclude[str(path)] = overlap.exclude
    except (StoreError, ValueError) as err:
        print(f"leakage: error: {err}", file=sys.stderr)
        return 1
    if args.exclude_out:
        write_text_atomic(args.exclude_out, json.dumps(exclude, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
