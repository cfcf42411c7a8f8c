"""The fast span reader returns exactly what zarr returns, on every codec preset, and refuses damaged shards."""
import numpy as np
import pytest
import zarr

from ecg_core.data.shard_reader import ShardFormatError, ShardSpanReader
from ecg_core.data.store import CODECS, StoreSpec, StoreWriter, open_store

from .test_store import real_signals, row


def build(path, sigs, codec):
    spec = StoreSpec(fs=500.0, codec=codec, chunk_len=1024, shard_len=4096)
    with StoreWriter(path, spec=spec) as w:
        for i, (rid, x) in enumerate(sigs):
            w.append(x, row(rid, i))
        w.append(np.zeros((12, 5000), dtype=np.int16), row("flat", 99))   # whole chunks of fill value
        w.commit()
    return path


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_spans_equal_zarrs_own_read(tmp_path, data_dir, codec):
    path = build(tmp_path / "s.zarr", real_signals(data_dir)[:6], codec)
    reader = ShardSpanReader.open(path / "signal")
    if codec == "delta-zstd":
        assert reader is None   # a layout it does not know: the store falls back to zarr
        return
    arr = zarr.open_array(str(path / "signal"), mode="r")
    n = arr.shape[1]
    rng = np.random.default_rng(0)
    spans = [(0, n), (n - 7, n), (1023, 1025), (4095, 4097), (5, 5)]
    spans += [tuple(sorted(rng.integers(0, n + 1, size=2).tolist())) for _ in range(40)]
    out = np.empty((12, n), dtype=np.int16)
    for a, z in spans:
        want = np.asarray(arr[:, a:z])
        assert np.array_equal(reader.read(a, z), want), (codec, a, z)
        assert np.array_equal(reader.read(a, z, out=out[:, : z - a]), want)
    with pytest.raises(IndexError):
        reader.read(0, n + 1)
    st = open_store(path)
    assert np.array_equal(st.read_span(0, n), np.asarray(arr[:]))
    assert np.all(st.read("flat") == 0)


def test_damaged_shard_index_or_chunk_is_an_error(tmp_path, data_dir):
    path = build(tmp_path / "s.zarr", real_signals(data_dir)[:6], "lz4hc")
    shard = path / "signal" / "c" / "0" / "0"
    before = ShardSpanReader.open(path / "signal").read(0, 1024)
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF                                   # inside the index
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match="signal/c/0/0: shard index checksum mismatch"):
        ShardSpanReader.open(path / "signal").read(0, 100)
    data[-10] ^= 0xFF
    data[20] ^= 0xFF                                    # inside the first chunk's Blosc header
    shard.write_bytes(bytes(data))
    try:
        got = ShardSpanReader.open(path / "signal").read(0, 1024)
    except ShardFormatError as err:
        assert "chunk 0" in str(err)
    else:   # a flip that still decodes gives other values, which the store's deep verify reports
        assert not np.array_equal(got, before)
