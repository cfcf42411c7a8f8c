"""The Zarr v3 store: exact round trips on real ECG signals, determinism, atomic writes, corruption detection."""
import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from ecg_core.data.store import CODECS, StoreError, StoreSpec, StoreWriter, open_store


def real_signals(data_dir: Path) -> list[tuple[str, np.ndarray]]:
    """Digital int16 (12, T) values of real Challenge records (1 uV/LSB in the 2021 copies)."""
    mats = sorted((data_dir / "challenge-real" / "cinc2021").glob("*.mat"))
    mats += sorted((data_dir / "ptbxl-real" / "cinc2020_HR").glob("*.mat"))[:4]
    mats += [data_dir / "challenge-real" / "cinc2020" / "Q0017.mat"]
    return [(m.stem, scipy.io.loadmat(m)["val"].astype(np.int16)) for m in mats]


def row(rid: str, i: int, **extra) -> dict:
    return {"record_id": rid, "patient_id": f"p{i // 2}", "source": "test", "orig_fs": 500.0,
            "lead_mask": "1" * 11 + ("0" if i == 1 else "1"), "fold": 1 + i % 10, "age": 50.0 + i,
            "sex": "MF"[i % 2], "report": f"report {i}", "provenance": "test", "y_demo": ["A"] if i % 3 else ["B"],
            **extra}


def write(path: Path, sigs, codec="lz4hc", chunk_len=2048, shard_chunks=4, overwrite=False) -> Path:
    spec = StoreSpec(fs=500.0, codec=codec, chunk_len=chunk_len, shard_len=chunk_len * shard_chunks)
    with StoreWriter(path, spec=spec, overwrite=overwrite) as w:
        for i, (rid, x) in enumerate(sigs):
            w.append(x, row(rid, i))
        w.commit(tasks={"demo": ["A", "B"]}, report={"format": "test"})
    return path


def tree(path: Path) -> dict[str, str]:
    return {f.relative_to(path).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_every_codec_round_trips_real_signals_exactly(tmp_path, data_dir, codec):
    sigs = real_signals(data_dir)
    st = open_store(write(tmp_path / f"{codec}.zarr", sigs, codec=codec))
    assert len(st) == len(sigs) and st.fs == 500.0
    for rid, x in sigs:
        i = st.index_of(rid)
        got = st.read_span(int(st.offsets[i]), int(st.offsets[i + 1]))
        assert got.dtype == np.int16 and np.array_equal(got, x), codec
        mv = st.read(rid)
        assert mv.dtype == np.float32 and mv.shape == x.shape
        np.testing.assert_allclose(mv, x.astype(np.float32) / 1000, rtol=0, atol=1e-6)
    st.verify(deep=True)
    if codec != "none":
        assert st.compression_ratio() > 1.5, (codec, st.compression_ratio())


def test_table_window_mask_and_pickle(tmp_path, data_dir):
    sigs = real_signals(data_dir)
    st = open_store(write(tmp_path / "s.zarr", sigs))
    rec = st.records
    assert list(rec["record_id"]) == [r for r, _ in sigs]
    assert rec["length"].tolist() == [x.shape[1] for _, x in sigs]
    assert rec["offset"].tolist() == np.cumsum([0] + [x.shape[1] for _, x in sigs])[:-1].tolist()
    assert rec["y_demo"].iloc[0].tolist() == ["B"] and st.tasks == {"demo": ["A", "B"]}
    assert st.lead_mask(sigs[1][0]).tolist() == [True] * 11 + [False]
    rid, x = sigs[2]
    np.testing.assert_allclose(st.read_window(rid, 1234, 500), x[:, 1234:1734] / 1000, atol=1e-6)
    with pytest.raises(IndexError, match="outside record"):
        st.read_window(rid, x.shape[1] - 10, 11)
    with pytest.raises(KeyError, match="no record 'nope'"):
        st.read("nope")
    st2 = pickle.loads(pickle.dumps(st))
    assert len(pickle.dumps(st)) < 500 and np.array_equal(st2.read(rid), st.read(rid))
    assert "records" in st.summary() and "compression" in st.summary()


def test_same_input_gives_identical_store(tmp_path, data_dir):
    sigs = real_signals(data_dir)
    assert tree(write(tmp_path / "a.zarr", sigs)) == tree(write(tmp_path / "b.zarr", sigs))


def test_failed_write_leaves_nothing_and_keeps_existing_store(tmp_path, data_dir):
    sigs = real_signals(data_dir)
    good = write(tmp_path / "s.zarr", sigs[:3])
    before = tree(good)
    spec = StoreSpec(fs=500.0, chunk_len=2048, shard_len=8192)
    with pytest.raises(RuntimeError, match="boom"):
        with StoreWriter(good, spec=spec, overwrite=True) as w:
            for i, (rid, x) in enumerate(sigs):
                w.append(x, row(rid, i))
            raise RuntimeError("boom")
    assert tree(good) == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]
    with pytest.raises(StoreError, match="already exists"):
        StoreWriter(good, spec=spec)
    with pytest.raises(StoreError, match="duplicate record_id"):
        with StoreWriter(tmp_path / "d.zarr", spec=spec) as w:
            w.append(sigs[0][1], row("x", 0))
            w.append(sigs[1][1], row("x", 1))
    with pytest.raises(StoreError, match=r"lacks columns \['patient_id'"):
        with StoreWriter(tmp_path / "c.zarr", spec=spec) as w:
            w.append(sigs[0][1], {"record_id": "x"})
            w.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def _set_attr(path: Path, key: str, value) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    if value is None:
        meta["attributes"].pop(key)
    else:
        meta["attributes"][key] = value
    (path / "zarr.json").write_text(json.dumps(meta))


def test_damaged_stores_are_refused_with_a_clear_error(tmp_path, data_dir):
    sigs = real_signals(data_dir)
    src = write(tmp_path / "s.zarr", sigs)

    def copy(name: str) -> Path:
        import shutil

        return Path(shutil.copytree(src, tmp_path / name))

    p = copy("half.zarr")
    _set_attr(p, "complete", None)
    with pytest.raises(StoreError, match="half.zarr: incomplete store"):
        open_store(p)

    p = copy("trunc.zarr")
    shard = p / "signal" / "c" / "0" / "1"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(StoreError, match=r"trunc.zarr: shard file signal/c/0/1 has \d+ bytes, expected"):
        open_store(p)

    p = copy("missing.zarr")
    os.remove(p / "signal" / "c" / "0" / "2")
    with pytest.raises(StoreError, match="missing shard file signal/c/0/2"):
        open_store(p)

    p = copy("table.zarr")
    blob = bytearray((p / "records" / "c" / "0").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (p / "records" / "c" / "0").write_bytes(bytes(blob))
    with pytest.raises(StoreError, match="record table checksum mismatch"):
        open_store(p)

    p = copy("flip.zarr")
    shard = p / "signal" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0x01
    shard.write_bytes(bytes(data))
    st = open_store(p)   # same size: the cheap checks pass ...
    with pytest.raises(StoreError, match="flip.zarr: signal"):
        st.verify(deep=True)   # ... the deep one does not

    with pytest.raises(StoreError, match="no such store directory"):
        open_store(tmp_path / "nowhere.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(StoreError, match="not a Zarr store"):
        open_store(tmp_path / "empty.zarr")
