"""Fast reads of long contiguous spans of the store's sharded signal array.

Why this exists: the training loader reads whole blocks (8 chunks of 12 x 65,536 int16) and cuts windows
from them. Through zarr-python 3.1's general read path such a block decodes at ~1.3-1.7 GB/s on the
project's 2-core machine, while Blosc itself decodes the same chunks at ~3.3 GB/s: the difference is
zarr's per-chunk asyncio scheduling, buffer allocation and copies, and it does not shrink with more
threads (``bench/loader.py`` prints the figures). This reader handles exactly the layout
:class:`ecg_core.data.store.StoreWriter` writes and nothing else: it reads the shard index and the chunk
bytes with ``os.pread`` and decodes them with numcodecs' Blosc straight into reused buffers, several
chunks at a time on a small thread pool (Blosc releases the GIL).

The on-disk format is the Zarr v3 ``sharding_indexed`` codec (Zarr specification, "Sharding codec"
v1.0): a shard file is the concatenation of its encoded inner chunks followed (``index_location: end``)
by the index, ``chunks_per_shard`` pairs of little-endian uint64 ``(offset, nbytes)`` in C order of the
inner chunk grid, then the CRC32C of those bytes (``index_codecs: [bytes, crc32c]``). An empty inner
chunk has offset = nbytes = 2**64 - 1 and reads as the fill value. Inner chunks are stored at full
chunk shape, also at the array's edge.

:meth:`ShardSpanReader.open` returns None for any other layout (another codec, another index
location, a different fill value...), and callers then use zarr. Tests compare this reader with zarr's
own read on every codec preset the store offers.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs
import numpy as np

_EMPTY = np.uint64(2**64 - 1)
DECODE_THREADS = 2


class ShardFormatError(RuntimeError):
    """A shard file whose index or chunk bytes are damaged; one line naming the file."""


def _supported(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The parameters this reader needs, or None when the array is not laid out as the store writes it."""
    try:
        if (meta["zarr_format"] != 3 or meta["data_type"] != "int16" or len(meta["shape"]) != 2
                or meta["chunk_key_encoding"] != {"name": "default", "configuration": {"separator": "/"}}
                or meta["fill_value"] != 0 or meta.get("storage_transformers")):
            return None
        (codec,) = meta["codecs"]
        if codec["name"] != "sharding_indexed":
            return None
        cfg = codec["configuration"]
        shard_shape = meta["chunk_grid"]["configuration"]["chunk_shape"]
        chunk_shape = cfg["chunk_shape"]
        if (cfg.get("index_location", "end") != "end"
                or cfg["index_codecs"] != [{"name": "bytes", "configuration": {"endian": "little"}},
                                           {"name": "crc32c"}]
                or shard_shape[0] != meta["shape"][0] or chunk_shape[0] != shard_shape[0]
                or shard_shape[1] % chunk_shape[1]):
            return None
        inner = cfg["codecs"]
        if inner[0] != {"name": "bytes", "configuration": {"endian": "little"}}:
            return None
        if len(inner) == 1:
            compressor = None
        elif len(inner) == 2 and inner[1]["name"] == "blosc":
            compressor = "blosc"
        else:
            return None
        return {"n_leads": int(meta["shape"][0]), "length": int(meta["shape"][1]),
                "chunk_len": int(chunk_shape[1]), "shard_len": int(shard_shape[1]), "compressor": compressor}
    except (KeyError, TypeError, ValueError):
        return None


class ShardSpanReader:
    """Reads ``[start, stop)`` of a 2-D (leads, time) int16 sharded array written by the store."""

    def __init__(self, array_dir: Path, params: dict[str, Any]):
        self.dir = Path(array_dir)
        self.n_leads = params["n_leads"]
        self.length = params["length"]
        self.chunk_len = params["chunk_len"]
        self.per_shard = params["shard_len"] // params["chunk_len"]
        self.compressor = params["compressor"]
        self._fds: dict[int, int] = {}
        self._index: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()

    @classmethod
    def open(cls, array_dir: str | Path) -> "ShardSpanReader | None":
        array_dir = Path(array_dir)
        try:
            meta = json.loads((array_dir / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        params = _supported(meta)
        return cls(array_dir, params) if params else None

    # -- pickling: file descriptors and threads do not travel ------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"dir": self.dir, "params": {"n_leads": self.n_leads, "length": self.length,
                                            "chunk_len": self.chunk_len,
                                            "shard_len": self.per_shard * self.chunk_len,
                                            "compressor": self.compressor}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["dir"], state["params"])

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- shard files and their indexes -----------------------------------------------------------------
    def _shard_path(self, k: int) -> Path:
        return self.dir / "c" / "0" / str(k)

    def _fd(self, k: int) -> int:
        with self._lock:
            fd = self._fds.get(k)
            if fd is None:
                fd = self._fds[k] = os.open(self._shard_path(k), os.O_RDONLY)
            return fd

    def _shard_index(self, k: int) -> np.ndarray:
        index = self._index.get(k)
        if index is not None:
            return index
        fd = self._fd(k)
        n = 16 * self.per_shard
        size = os.fstat(fd).st_size
        raw = os.pread(fd, n + 4, size - n - 4) if size >= n + 4 else b""
        if len(raw) != n + 4:
            raise ShardFormatError(f"{self._shard_path(k)}: shard file too short for its index")
        if google_crc32c.value(raw[:n]) != int.from_bytes(raw[n:], "little"):
            raise ShardFormatError(f"{self._shard_path(k)}: shard index checksum mismatch")
        index = np.frombuffer(raw[:n], dtype="<u8").reshape(self.per_shard, 2)
        data_end = size - n - 4
        full = index[:, 0] != _EMPTY
        if np.any(index[full, 0] + index[full, 1] > data_end):
            raise ShardFormatError(f"{self._shard_path(k)}: shard index points past the chunk data")
        self._index[k] = index
        return index

    # -- decoding ----------------------------------------------------------------------------------
    def _scratch(self) -> np.ndarray:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = np.empty((self.n_leads, self.chunk_len), dtype=np.int16)
        return buf

    def _read_chunk(self, c: int, out: np.ndarray, a: int, z: int, start: int) -> None:
        """Decode chunk ``c`` and copy its samples ``[a, z)`` (global time) to ``out[:, a-start : z-start]``."""
        k, j = divmod(c, self.per_shard)
        offset, nbytes = self._shard_index(k)[j]
        dst = out[:, a - start:z - start]
        if offset == _EMPTY:
            dst[...] = 0
            return
        raw = os.pread(self._fd(k), int(nbytes), int(offset))
        if len(raw) != int(nbytes):
            raise ShardFormatError(f"{self._shard_path(k)}: chunk {j} truncated")
        buf = self._scratch()
        try:
            if self.compressor == "blosc":
                numcodecs.blosc.decompress(raw, buf)
            else:
                if len(raw) != buf.nbytes:
                    raise ValueError(f"{len(raw)} bytes for an uncompressed chunk of {buf.nbytes}")
                buf[...] = np.frombuffer(raw, dtype="<i2").reshape(buf.shape)
        except (RuntimeError, ValueError) as err:
            raise ShardFormatError(f"{self._shard_path(k)}: chunk {j} cannot be decoded ({err})") from err
        c0 = c * self.chunk_len
        dst[...] = buf[:, a - c0:z - c0]

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """int16 ``(leads, stop-start)``: the same values as ``zarr_array[:, start:stop]``."""
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"span [{start}, {stop}) outside [0, {self.length})")
        if out is None:
            out = np.empty((self.n_leads, stop - start), dtype=np.int16)
        C = self.chunk_len
        jobs = [(c, max(start, c * C), min(stop, (c + 1) * C)) for c in range(start // C, -(-stop // C))]
        if len(jobs) <= 1:
            for c, a, z in jobs:
                self._read_chunk(c, out, a, z, start)
            return out
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="ecg-decode")
            pool = self._pool
        for f in [pool.submit(self._read_chunk, c, out, a, z, start) for c, a, z in jobs]:
            f.result()
        return out
