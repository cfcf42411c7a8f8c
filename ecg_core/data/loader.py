"""Training windows from one or several stores: a resumable, rank-split block sampler and its loader.

Shapes: ``B`` batch, ``L`` leads (12), ``W`` window length in samples, ``N`` windows of a unit.

Why blocks (data-notes.md section 3.4): a Zarr read has ~1 ms of fixed cost, 100x a memmap read of a
12 x 2500 window. So windows are never read one by one. Each store's eligible records are grouped into
*blocks* (consecutive records starting in one chunk-aligned span of ``block_len`` samples); a *unit*
is a few randomly chosen blocks. A unit is read as one contiguous span per block (whole chunks,
decompressed by Zarr's codec threads) and its windows are cut from that buffer in NumPy, shuffled
within the unit. Units are the unit of work of DataLoader workers, so a block is decoded once.

The plan of an epoch is a pure function of ``(seed, epoch, rank, world_size)`` and the stores:

1. blocks of every store are shuffled and grouped into units; units are dealt to ranks round-robin
   (a store with fewer units than ranks is shared by all ranks);
2. each rank draws exactly ``steps_per_epoch * batch_size`` windows: per store in proportion to the
   mixing weights, spread over the rank's units of that store in proportion to their usable samples,
   records chosen in proportion to their usable length, start positions uniform (so every sample of
   the data is equally likely to be seen, whatever the record lengths);
3. the rank's units are put in a random order and their windows concatenated into one stream, cut
   into batches.

Hence every rank runs the same number of steps (as FSDP's collectives require), and the state of the
sampler is just ``(epoch, batches consumed)``: :meth:`WindowSampler.state_dict` /
:meth:`WindowSampler.load_state_dict` restore the exact stream an uninterrupted run would have seen,
independently of the number of DataLoader workers and of fork/spawn.

Positive pairs (``DataConfig.pairing``, for patient-contrastive methods): with ``"patient"`` or
``"adjacent"`` the plan draws ``batch_size / 2`` *anchor* windows per batch exactly as above (in proportion
to usable length, uniform starts) and puts right after each anchor its *partner*, so windows ``2i`` and
``2i + 1`` of every batch are a positive pair (batch_size must be even; units hold whole pairs, so no
pair straddles two batches and resume positions stay on pair boundaries). The partner is drawn in the
plan too, from the same per-unit generator, so resume stays exact:

- ``"patient"`` (PCLR, Diamant et al. 2022): a window, uniform in position, of another eligible record of
  the anchor's patient (``patient_id`` of the record table; the other record uniform among the
  patient's others, each ECG counting once as in PCLR) within the same store; a patient with one
  eligible record gives another uniform window of the same record. A partner record outside the unit's
  blocks is read as one extra span of just that record (one extra read per such partner: cheap where a
  patient's records are stored next to each other, as in stores ingested in patient-sorted order).
- ``"adjacent"`` (CLOCS CMSC, Kiyasseh et al. 2021): the next non-overlapping window of the same record
  (``start + window``); records shorter than ``2 * window`` are not eligible, anchor starts are uniform
  in ``[0, length - 2 window]``.

Batches then also carry ``patient`` int64 (B,): a code of ``patient_id``, unique over the stores of the
mixture and equal on every rank (so losses can gather it). With the default ``"none"`` nothing changes:
the stream, the batch keys and the state fingerprint are those of a config without the field.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import sys
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ecg_core.data.config import DataConfig, StoreSource
from ecg_core.data.store import EcgStore, open_store

NORMALIZATIONS = ("none", "per_lead")
PAIRINGS = ("none", "patient", "adjacent")
READER_THREADS = 2   # background reader threads when num_workers == 0


@dataclass(frozen=True)
class Unit:
    """The windows one worker produces in one go: ``blocks`` spans and, per window, where it comes from."""

    store: int
    spans: tuple[tuple[int, int], ...]   # (start, stop) of each block in the store's signal
    block_of: np.ndarray                 # (N,) index into spans of each window, in output order
    record: np.ndarray                   # (N,) record index within the store
    start: np.ndarray                    # (N,) first sample of the window within its record


@dataclass(frozen=True)
class _Block:
    span: tuple[int, int]
    records: np.ndarray                  # record indices
    usable: np.ndarray                   # number of valid window starts per record


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer split of ``total`` proportional to ``weights`` (Hamilton's method; deterministic)."""
    exact = total * weights / weights.sum()
    out = np.floor(exact).astype(np.int64)
    out[np.argsort(-(exact - out), kind="stable")[: total - out.sum()]] += 1
    return out


class WindowSampler:
    """Plans which windows each rank reads, epoch after epoch; resumable with state_dict/load_state_dict."""

    def __init__(self, stores: list[EcgStore], cfg: DataConfig, *, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        if len(stores) != len(cfg.stores):
            raise ValueError("one StoreSource per store is required")
        if cfg.pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {cfg.pairing!r}")
        if cfg.pairing != "none" and cfg.batch_size % 2:
            raise ValueError(f"pairing {cfg.pairing!r} needs an even batch_size (pairs), got {cfg.batch_size}")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        # Samples a window needs from its start: two adjacent windows for an "adjacent" anchor.
        self._need = cfg.window * (2 if cfg.pairing == "adjacent" else 1)
        self.weights = np.array([s.weight for s in cfg.stores], dtype=np.float64)
        if np.any(self.weights < 0) or self.weights.sum() <= 0:
            raise ValueError(f"store weights must be >= 0 with a positive sum, got {self.weights.tolist()}")
        self._blocks = [self._make_blocks(st, src) for st, src in zip(stores, cfg.stores)]
        samples = sum(int(st.records["length"].to_numpy()[b.records].sum()) for st, blocks in
                      zip(stores, self._blocks) for b in blocks)
        total = cfg.windows_per_epoch or max(1, samples // cfg.window)
        self.steps_per_epoch = total // (cfg.batch_size * world_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"an epoch of {total} windows gives no full batch of {cfg.batch_size} "
                             f"on each of {world_size} ranks; lower batch_size or raise windows_per_epoch")
        data = asdict(cfg) | {"num_workers": None, "start_method": None, "prefetch_factor": None}
        for src in data["stores"]:
            for key in ("records", "exclude"):
                if not src[key]:
                    del src[key]     # configs without a record filter keep the fingerprint they had before it
        if data["pairing"] == "none":
            del data["pairing"]      # likewise for configs without pairing
        self.fingerprint = hashlib.sha256(json.dumps({
            "signals": [st.attrs["signal_sha256"] for st in stores], "data": data,
        }, sort_keys=True).encode()).hexdigest()[:16]
        self.epoch = 0
        self.batch_in_epoch = 0
        self.patients: list[np.ndarray] = []   # per store: patient code of each record (pairing modes)
        if cfg.pairing != "none":
            self._init_pairing(stores)

    def _init_pairing(self, stores: list[EcgStore]) -> None:
        """Patient codes (global over the mixture) and, per store, the lookup tables of the partner draw."""
        offset = 0
        self._offsets, self._usable, self._block_index, self._groups = [], [], [], []
        for st, blocks in zip(stores, self._blocks):
            n = len(st)
            names, code = np.unique(st.records["patient_id"].astype(str).to_numpy(), return_inverse=True)
            self.patients.append(code.astype(np.int64) + offset)
            offset += len(names)
            usable = np.zeros(n, dtype=np.int64)          # 0: not eligible
            block_index = np.full(n, -1, dtype=np.int64)  # which of the store's blocks holds the record
            for b, blk in enumerate(blocks):
                usable[blk.records] = blk.usable
                block_index[blk.records] = b
            # Eligible records grouped by patient: members[first[r] : first[r] + size[r]] are the records of
            # r's patient, r itself at position pos[r] among them.
            eligible = np.flatnonzero(usable > 0)
            members = eligible[np.argsort(code[eligible], kind="stable")]
            _, group_start, group_size = np.unique(code[members], return_index=True, return_counts=True)
            group_of = np.repeat(np.arange(len(group_start)), group_size)
            first, size, pos = (np.zeros(n, dtype=np.int64) for _ in range(3))
            first[members] = group_start[group_of]
            size[members] = group_size[group_of]
            pos[members] = np.arange(len(members)) - first[members]
            self._offsets.append(np.asarray(st.offsets, dtype=np.int64))
            self._usable.append(usable)
            self._block_index.append(block_index)
            self._groups.append((members, first, size, pos))

    def _make_blocks(self, store: EcgStore, src: StoreSource) -> list[_Block]:
        rec = store.records
        length = rec["length"].to_numpy(np.int64)
        ok = length >= self._need
        if src.folds:
            ok &= rec["fold"].isin(src.folds).to_numpy()
        if src.records:
            wanted = set(map(str, src.records))
            unknown = wanted.difference(rec["record_id"])
            if unknown:
                raise ValueError(f"{store.path}: {len(unknown)} of the {len(wanted)} requested records are not in "
                                 f"the store, e.g. {sorted(unknown)[:3]}")
            ok &= rec["record_id"].isin(wanted).to_numpy()
        if src.exclude:
            ok &= ~rec["record_id"].isin(set(map(str, src.exclude))).to_numpy()
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            raise ValueError(f"{store.path}: no record of length >= {self._need} samples"
                             + (f" in folds {src.folds}" if src.folds else "")
                             + (f" among the {len(src.records)} requested records" if src.records else "")
                             + (f" once {len(src.exclude)} excluded records are left out" if src.exclude else ""))
        offsets = store.offsets
        block_id = offsets[idx] // self.cfg.block_len
        blocks = []
        for b in np.unique(block_id):
            r = idx[block_id == b]
            blocks.append(_Block((int(offsets[r[0]]), int(offsets[r[-1] + 1])), r,
                                 length[r] - self._need + 1))
        return blocks

    # -- the plan --------------------------------------------------------------------------------
    def max_span(self) -> int:
        """The longest block span in samples (the size of a decode buffer)."""
        return max(b.span[1] - b.span[0] for blocks in self._blocks for b in blocks)

    def windows_per_rank(self) -> int:
        return self.steps_per_epoch * self.cfg.batch_size

    def plan(self, epoch: int) -> list[Unit]:
        """This rank's units for ``epoch``, in order; their windows total exactly windows_per_rank()."""
        cfg, seed = self.cfg, self.cfg.seed
        paired = cfg.pairing != "none"
        # With pairing, the counts below are of anchors (pairs); each unit then holds two windows per pair.
        per_store = _largest_remainder(self.windows_per_rank() // (2 if paired else 1), self.weights)
        units: list[Unit] = []
        for s, blocks in enumerate(self._blocks):
            if per_store[s] == 0:
                continue
            rng = _rng(seed, epoch, s, 1)
            order = rng.permutation(len(blocks))
            groups = [order[i:i + cfg.blocks_per_unit] for i in range(0, len(order), cfg.blocks_per_unit)]
            mine = groups[self.rank::self.world_size] or [groups[self.rank % len(groups)]]
            rng = _rng(seed, epoch, s, 2, self.rank)
            usable = np.array([sum(int(blocks[b].usable.sum()) for b in g) for g in mine], dtype=np.float64)
            counts = rng.multinomial(per_store[s], usable / usable.sum())
            for g, n in zip(mine, counts):
                if n and paired:
                    units.append(self._pair_unit(s, sorted(g), int(n), rng))
                elif n:
                    units.append(self._unit(s, [blocks[b] for b in sorted(g)], int(n), rng))
        order = _rng(seed, epoch, 3, self.rank).permutation(len(units))
        return [units[i] for i in order]

    @staticmethod
    def _unit(store: int, blocks: list[_Block], n: int, rng: np.random.Generator) -> Unit:
        usable = np.concatenate([b.usable for b in blocks]).astype(np.float64)
        records = np.concatenate([b.records for b in blocks])
        block_of_rec = np.concatenate([np.full(len(b.records), i) for i, b in enumerate(blocks)])
        pick = rng.choice(len(records), size=n, p=usable / usable.sum())
        start = (rng.random(n) * usable[pick]).astype(np.int64)   # uniform in [0, usable)
        perm = rng.permutation(n)
        pick, start = pick[perm], start[perm]
        return Unit(store, tuple(b.span for b in blocks), block_of_rec[pick], records[pick], start)

    def _pair_unit(self, store: int, block_ids: list[int], n: int, rng: np.random.Generator) -> Unit:
        """``n`` anchors drawn as :meth:`_unit` draws windows, each followed by its partner (module docstring)."""
        blocks = [self._blocks[store][b] for b in block_ids]
        usable = np.concatenate([b.usable for b in blocks]).astype(np.float64)
        records = np.concatenate([b.records for b in blocks])
        block_of_rec = np.concatenate([np.full(len(b.records), i) for i, b in enumerate(blocks)])
        pick = rng.choice(len(records), size=n, p=usable / usable.sum())
        start = (rng.random(n) * usable[pick]).astype(np.int64)
        perm = rng.permutation(n)
        pick, start = pick[perm], start[perm]
        anchor, anchor_block = records[pick], block_of_rec[pick]
        spans = [b.span for b in blocks]
        if self.cfg.pairing == "adjacent":
            partner, partner_start, partner_block = anchor, start + self.cfg.window, anchor_block
        else:
            members, first, size, pos = self._groups[store]
            # Uniform among the patient's other records: j in [0, size - 1), shifted past the anchor itself.
            j = (rng.random(n) * np.maximum(size[anchor] - 1, 1)).astype(np.int64)
            j = np.where(size[anchor] > 1, j + (j >= pos[anchor]), pos[anchor])   # alone: the anchor's record
            partner = members[first[anchor] + j]
            partner_start = (rng.random(n) * self._usable[store][partner]).astype(np.int64)
            # Partners in the unit's blocks are cut from those spans; others get a span of their own record.
            where = {b: i for i, b in enumerate(block_ids)}
            offsets = self._offsets[store]
            partner_block = np.empty(n, dtype=np.int64)
            extra: dict[int, int] = {}
            for i, (r, b) in enumerate(zip(partner.tolist(), self._block_index[store][partner].tolist())):
                if b in where:
                    partner_block[i] = where[b]
                else:
                    if r not in extra:
                        extra[r] = len(spans)
                        spans.append((int(offsets[r]), int(offsets[r + 1])))
                    partner_block[i] = extra[r]

        def interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.stack([a, b], axis=1).reshape(-1)

        return Unit(store, tuple(spans), interleave(anchor_block, partner_block), interleave(anchor, partner),
                    interleave(start, partner_start))

    # -- position and resume --------------------------------------------------------------------
    def advance(self, n_batches: int = 1) -> None:
        self.batch_in_epoch += n_batches
        while self.batch_in_epoch >= self.steps_per_epoch:
            self.batch_in_epoch -= self.steps_per_epoch
            self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "rank": self.rank, "world_size": self.world_size, "batch_size": self.cfg.batch_size,
                "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unknown sampler state version {state.get('version')}")
        if state["fingerprint"] != self.fingerprint:
            raise ValueError("sampler state was saved for other data or data settings (stores, window, "
                             "folds, weights, seed or batch size changed): the run cannot continue exactly")
        self.epoch = int(state["epoch"])
        if state["world_size"] == self.world_size:
            self.batch_in_epoch = int(state["batch_in_epoch"])
            return
        # A different world size has a different plan: continue at the same share of the epoch.
        done = int(state["batch_in_epoch"]) * int(state["world_size"])
        self.batch_in_epoch = min(self.steps_per_epoch - 1, done // self.world_size)
        warnings.warn(f"sampler resumed at world size {self.world_size} from {state['world_size']}: the window "
                      "sequence continues at the same point of the epoch but is not the one the old run "
                      "would have seen", RuntimeWarning, stacklevel=2)


class UnitDataset(IterableDataset):
    """Yields the windows of the units of one epoch from a start position, split over DataLoader workers.

    Worker ``w`` of ``k`` produces units ``w, w+k, ...``; DataLoader returns them round-robin, i.e. in
    plan order, so the stream is the same for any number of workers. Each item is
    ``(x_NLW float32 mV, store, record, start)`` numpy arrays (see :func:`read_unit`).
    """

    def __init__(self, stores: list[EcgStore], units: list[Unit], skip: int, window: int):
        self.stores, self.units, self.skip, self.window = stores, units, skip, window

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for i in range(wid, len(self.units), nw):
            yield self.read(i)

    def read(self, i: int, buffer: np.ndarray | None = None,
             span_buffer: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        unit = self.units[i]
        return read_unit(self.stores[unit.store], unit, self.window, skip=self.skip if i == 0 else 0,
                         buffer=buffer, span_buffer=span_buffer)


def _reuse(buffer: np.ndarray | None, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """``buffer`` (flat, of ``dtype``) viewed as ``shape`` when it is large enough, else a new array."""
    n = math.prod(shape)
    if buffer is not None and buffer.size >= n and buffer.dtype == dtype:
        return buffer[:n].reshape(shape)
    return np.empty(n, dtype=dtype).reshape(shape)   # a view, so that .base is the flat buffer


def read_unit(store: EcgStore, unit: Unit, window: int, skip: int = 0, buffer: np.ndarray | None = None,
              span_buffer: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Read each block span once and cut the unit's windows (from index ``skip`` on) out of it.

    Returns ``(x_NLW float32 in mV, store, record, start)``; the int16 -> mV conversion happens while
    cropping, so each window is touched once after decoding. ``buffer`` (flat float32) and
    ``span_buffer`` (flat int16) are reused when large enough: freshly allocated arrays of this size are
    fresh pages from the kernel, and faulting them in costs several times the copy.
    """
    n = len(unit.record) - skip
    n_leads = store.signal.shape[0]
    x_NLW = _reuse(buffer, (n, n_leads, window), np.float32)
    scale = np.float32(store.spec.lsb_uV / 1000.0)
    block_of, record, start = unit.block_of[skip:], unit.record[skip:], unit.start[skip:]
    first = store.offsets[record] + start          # window start in the store's signal
    for b, (a, z) in enumerate(unit.spans):
        sel = np.flatnonzero(block_of == b)
        if sel.size == 0:
            continue
        span_LT = store.read_span(a, z, out=_reuse(span_buffer, (n_leads, z - a), np.int16))
        for i, s in zip(sel, first[sel] - a):
            np.multiply(span_LT[:, s:s + window], scale, out=x_NLW[i])
    return x_NLW, np.full(n, unit.store, dtype=np.int64), record, start


def normalize_windows(x_BLW: torch.Tensor, mode: str) -> torch.Tensor:
    """Windows as the encoder sees them: unchanged (``"none"``) or zero mean and unit std per lead and
    window (``"per_lead"``). Training batches and evaluation windows both go through here."""
    if mode == "none":
        return x_BLW
    if mode != "per_lead":
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {mode!r}")
    mu = x_BLW.mean(dim=-1, keepdim=True)
    sd = x_BLW.std(dim=-1, keepdim=True)
    return (x_BLW - mu) / sd.clamp_min(1e-3)   # flat (missing) leads stay ~0 instead of exploding


def _worker_init(_: int) -> None:
    # One decode thread per worker: the workers already use the cores.
    import zarr

    zarr.config.set({"threading.max_workers": 1})


class WindowLoader:
    """Batches of training windows for one rank; iterate it forever, checkpoint it with state_dict().

    Each batch is a dict: ``x`` float32 (B, 12, W) in mV (or normalised), ``lead_mask`` bool (B, 12),
    ``store`` / ``record`` / ``start`` int64 (B,) saying where each window comes from; with
    ``cfg.pairing`` other than ``"none"`` also ``patient`` int64 (B,), and windows ``2i``, ``2i + 1`` are
    a positive pair (module docstring).
    """

    def __init__(self, cfg: DataConfig, *, rank: int = 0, world_size: int = 1,
                 stores: list[EcgStore] | None = None):
        if cfg.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {cfg.normalize!r}")
        if cfg.pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {cfg.pairing!r}")
        if not cfg.stores:
            raise ValueError("DataConfig.stores is empty: name at least one store")
        self.cfg = cfg
        self.stores = stores or [open_store(s.path) for s in cfg.stores]
        fs = {st.fs for st in self.stores}
        if len(fs) > 1:
            raise ValueError(f"stores have different sampling rates {sorted(fs)}; ingest them at one --fs")
        if any(st.spec.lsb_uV != self.stores[0].spec.lsb_uV for st in self.stores):
            raise ValueError("stores have different sample scales (lsb_uV); re-ingest them with one version")
        self.sampler = WindowSampler(self.stores, cfg, rank=rank, world_size=world_size)
        self._masks = [np.array([[c == "1" for c in m] for m in st.records["lead_mask"]]) for st in self.stores]
        self._ring: list[dict[str, np.ndarray | None]] | None = None
        self._span_len = self.sampler.max_span()

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def _datasets(self) -> Iterator[UnitDataset]:
        """One UnitDataset per epoch, from the sampler's current position on, forever."""
        epoch, pos = self.sampler.epoch, self.sampler.batch_in_epoch * self.cfg.batch_size
        while True:
            units = self.sampler.plan(epoch)
            sizes = np.cumsum([len(u.record) for u in units])
            first = int(np.searchsorted(sizes, pos, side="right"))
            skip = pos - (int(sizes[first - 1]) if first else 0)
            yield UnitDataset(self.stores, units[first:], skip, self.cfg.window)
            epoch, pos = epoch + 1, 0

    def _stream(self) -> Iterator[tuple[np.ndarray, ...]]:
        """Unit arrays in plan order, epoch after epoch: DataLoader workers, or prefetch threads."""
        nw = self.cfg.num_workers
        if nw == 0:
            yield from self._prefetched(self._datasets())
            return
        for ds in self._datasets():
            dl = DataLoader(ds, batch_size=None, num_workers=nw, worker_init_fn=_worker_init,
                            multiprocessing_context=self.cfg.start_method,
                            prefetch_factor=self.cfg.prefetch_factor, persistent_workers=False)
            for item in dl:
                yield tuple(np.asarray(a) for a in item)

    def _prefetched(self, datasets: Iterator[UnitDataset]) -> Iterator[tuple[np.ndarray, ...]]:
        """Without worker processes, read the next units in background threads (decoding and cropping
        release the GIL) while the training step consumes the current one, across epoch boundaries.

        Units are read into a ring of reused buffers (fresh multi-MB arrays cost page faults worth more
        than the copy), and batches are views of them (no copy). A buffer is reused only when nothing
        refers to it any more: every NumPy view (unit arrays, unconsumed tails, the arrays behind the
        batch tensors handed out) holds a reference to it, so a batch the caller keeps is never
        overwritten; its slot just gets a new buffer.
        """
        depth = max(1, self.cfg.prefetch_factor)
        # The ring outlives one iterator (the pages stay mapped for the next epoch loop or a resumed run);
        # an iterator takes it while it runs, so two live iterators of one loader never share a ring.
        ring, self._ring = self._ring or [], None
        ring += [{"x": None, "span": None} for _ in range(depth + READER_THREADS + 2 - len(ring))]
        tasks = ((ds, i) for ds in datasets for i in range(len(ds.units)))
        n_leads = self.stores[0].signal.shape[0]

        def read(n: int, ds: UnitDataset, i: int) -> tuple[np.ndarray, ...]:
            slot = ring[n % len(ring)]
            buf = slot["x"]
            if buf is not None and sys.getrefcount(buf) > 3:   # 3 = slot, `buf`, the call's argument
                buf = None                                      # still in use: leave it to its owner
            if slot["span"] is None:
                slot["span"] = np.empty(n_leads * self._span_len, dtype=np.int16)
            item = ds.read(i, buffer=buf, span_buffer=slot["span"])
            slot["x"] = item[0].base
            return item

        counter = itertools.count()
        try:
            with ThreadPoolExecutor(READER_THREADS, thread_name_prefix="ecg-prefetch") as pool:
                pending: deque[Future] = deque(pool.submit(read, next(counter), *t)
                                               for t in itertools.islice(tasks, depth))
                while pending:
                    item = pending.popleft().result()
                    pending.extend(pool.submit(read, next(counter), *t) for t in itertools.islice(tasks, 1))
                    yield item
        finally:
            self._ring = ring

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Endless: epoch after epoch. The state advances as each batch is handed out.

        An epoch holds exactly ``steps_per_epoch * batch_size`` windows, so no batch spans two epochs.
        """
        B = self.cfg.batch_size
        pending: list[tuple[np.ndarray, ...]] = []   # unit arrays (or their unconsumed tails)
        have = 0
        for item in self._stream():
            pending.append(item)
            have += len(item[0])
            while have >= B:
                # Cut B windows off the front; only a batch that straddles two units is concatenated.
                take, parts = B, []
                while take:
                    head = pending[0]
                    n = min(take, len(head[0]))
                    parts.append(tuple(a[:n] for a in head))
                    if n == len(head[0]):
                        pending.pop(0)
                    else:
                        pending[0] = tuple(a[n:] for a in head)
                    take -= n
                have -= B
                batch = parts[0] if len(parts) == 1 else tuple(np.concatenate(k) for k in zip(*parts))
                self.sampler.advance(1)
                yield self._to_batch(*batch)

    def _to_batch(self, x_BLW: np.ndarray, store: np.ndarray, record: np.ndarray,
                  start: np.ndarray) -> dict[str, torch.Tensor]:
        mask = np.empty((len(store), self._masks[0].shape[1]), dtype=bool)
        for s in np.unique(store):
            sel = store == s
            mask[sel] = self._masks[s][record[sel]]
        x = normalize_windows(torch.from_numpy(x_BLW), self.cfg.normalize)   # from_numpy: a view, see _prefetched
        batch = {"x": x, "lead_mask": torch.from_numpy(mask), "store": torch.from_numpy(store),
                 "record": torch.from_numpy(record), "start": torch.from_numpy(start)}
        if self.cfg.pairing != "none":
            patient = np.empty(len(store), dtype=np.int64)
            for s in np.unique(store):
                sel = store == s
                patient[sel] = self.sampler.patients[s][record[sel]]
            batch["patient"] = torch.from_numpy(patient)
        return batch

    def take(self, n: int) -> list[dict[str, torch.Tensor]]:
        """The next ``n`` batches (convenience for tests and benchmarks)."""
        out: list[dict[str, torch.Tensor]] = []
        it = iter(self)
        try:
            while len(out) < n:
                out.append(next(it))
        finally:
            it.close()   # stop the readers now, not at garbage collection
        return out


__all__ = ["PAIRINGS", "DataConfig", "StoreSource", "Unit", "UnitDataset", "WindowLoader", "WindowSampler",
           "normalize_windows", "read_unit"]
