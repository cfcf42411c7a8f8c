"""Training loader: windows are the store's samples, ranks get equal steps, resume continues exactly."""
from pathlib import Path

import numpy as np
import pytest
import torch

from ecg_core.data.loader import DataConfig, StoreSource, WindowLoader
from ecg_core.data.store import StoreSpec, StoreWriter, open_store

from .test_store import real_signals, row


@pytest.fixture(scope="module")
def stores(tmp_path_factory, data_dir: Path) -> tuple[Path, Path]:
    """Two stores of real 500 Hz Challenge signals with small chunks, so an epoch has many blocks and units."""
    sigs = real_signals(data_dir)
    out = []
    for name, part in (("a.zarr", sigs), ("b.zarr", sigs[:4])):
        path = tmp_path_factory.mktemp("stores") / name
        with StoreWriter(path, spec=StoreSpec(fs=500.0, chunk_len=1024, shard_len=4096)) as w:
            for i, (rid, x) in enumerate(part):
                w.append(x, row(rid, i))
            w.commit(tasks={"demo": ["A", "B"]})
        out.append(path)
    return out[0], out[1]


def cfg(paths, **kw) -> DataConfig:
    base = dict(window=500, batch_size=8, block_len=2048, blocks_per_unit=2, seed=3)
    base.update(kw)
    return DataConfig(stores=[StoreSource(path=str(p)) for p in paths], **base)


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_windows_are_the_stores_samples(stores):
    loader = WindowLoader(cfg(stores[:1]))
    st = open_store(stores[0])
    batches = loader.take(5)
    for b in batches:
        assert b["x"].shape == (8, 12, 500) and b["x"].dtype == torch.float32
        for x, r, s, m in zip(b["x"], b["record"], b["start"], b["lead_mask"]):
            rid = st.records["record_id"].iat[int(r)]
            np.testing.assert_array_equal(x.numpy(), st.read_window(rid, int(s), 500))
            assert m.tolist() == st.lead_mask(rid).tolist()
    starts = {(int(r), int(s)) for b in batches for r, s in zip(b["record"], b["start"])}
    assert len(starts) == 40   # random positions, not a fixed crop
    records = {int(r) for b in batches for r in b["record"]}
    assert len(records) > 3


def test_epoch_covers_records_in_proportion_to_length(stores):
    loader = WindowLoader(cfg(stores[:1]))
    st = open_store(stores[0])
    n = loader.steps_per_epoch
    usable = (st.records["length"] - 499).to_numpy()
    assert n == int(st.records["length"].sum() // 500) // 8   # one pass over the samples
    counts = np.zeros(len(st))
    for b in loader.take(n * 20):
        np.add.at(counts, b["record"].numpy(), 1)
    share, expect = counts / counts.sum(), usable / usable.sum()
    assert np.abs(share - expect).max() < 0.03, (share, expect)


@pytest.mark.parametrize("world", [1, 2])
def test_resume_continues_the_uninterrupted_sequence(stores, world):
    c = cfg(stores)
    for rank in range(world):
        straight = WindowLoader(c, rank=rank, world_size=world).take(40)
        for cut in (1, 7, 13, 23):   # mid-unit, unit and epoch boundaries are all crossed
            first = WindowLoader(c, rank=rank, world_size=world)
            head = first.take(cut)
            state = first.state_dict()
            resumed = WindowLoader(c, rank=rank, world_size=world)
            resumed.load_state_dict(state)
            assert same(head + resumed.take(40 - cut), straight), (world, rank, cut)


def test_ranks_run_equal_steps_on_different_windows(stores):
    c = cfg(stores[:1], blocks_per_unit=1)
    r0, r1 = (WindowLoader(c, rank=r, world_size=2) for r in (0, 1))
    assert r0.steps_per_epoch == r1.steps_per_epoch == WindowLoader(c).steps_per_epoch // 2
    a, b = r0.take(r0.steps_per_epoch), r1.take(r1.steps_per_epoch)
    win = [{(int(r), int(s)) for x in part for r, s in zip(x["record"], x["start"])} for part in (a, b)]
    assert not win[0] & win[1]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_give_the_same_stream(stores, method):
    # Whole epochs only: torch 2.13's spawn workers can abort when a DataLoader is torn down mid-stream.
    c0 = cfg(stores)
    n = WindowLoader(c0).steps_per_epoch
    ref = WindowLoader(c0).take(2 * n)
    got = WindowLoader(cfg(stores, num_workers=2, start_method=method)).take(2 * n)
    assert same(ref, got)
    resumed = WindowLoader(cfg(stores, num_workers=2, start_method=method))
    resumed.load_state_dict(WindowLoader(c0).state_dict() | {"batch_in_epoch": 5})
    assert same(resumed.take(n - 5), ref[5:n])


def test_mixing_weights_and_folds(stores):
    c = cfg(stores, windows_per_epoch=800)
    c.stores[0].weight, c.stores[1].weight = 3.0, 1.0
    loader = WindowLoader(c)
    counts = np.bincount(torch.cat([b["store"] for b in loader.take(loader.steps_per_epoch)]).numpy(), minlength=2)
    assert counts.tolist() == [600, 200]
    c = cfg(stores[:1])
    c.stores[0].folds = [2, 4]
    st = open_store(stores[0])
    folds = {int(st.records["fold"].iat[int(r)]) for b in WindowLoader(c).take(10) for r in b["record"]}
    assert folds == {2, 4}


def test_per_lead_normalisation(stores):
    b = WindowLoader(cfg(stores[:1], normalize="per_lead")).take(1)[0]
    x, m = b["x"], b["lead_mask"]
    assert torch.allclose(x.mean(-1)[m], torch.zeros(()), atol=1e-4)
    assert torch.allclose(x.std(-1)[m], torch.ones(()), atol=1e-3)
    assert torch.all(x[~m] == 0)


def test_state_from_other_settings_is_refused(stores):
    state = WindowLoader(cfg(stores)).state_dict()
    with pytest.raises(ValueError, match="cannot continue exactly"):
        WindowLoader(cfg(stores, window=400)).load_state_dict(state)
    with pytest.raises(ValueError, match="no record of length >= 100000"):
        WindowLoader(cfg(stores, window=100000))
    with pytest.raises(ValueError, match="normalize must be one of"):
        WindowLoader(cfg(stores, normalize="zscore"))


def test_batches_kept_by_the_caller_are_never_overwritten(stores):
    # Batches are views of reused read buffers; keeping many units' worth of them must not let the
    # loader reuse a buffer under them.
    loader = WindowLoader(cfg(stores[:1], blocks_per_unit=1, prefetch_factor=1))
    st = open_store(stores[0])
    kept = loader.take(3 * loader.steps_per_epoch)
    n_units = len(loader.sampler.plan(0))
    assert n_units * 3 > 10   # far more units than buffers in the ring
    for b in kept:
        for x, r, s in zip(b["x"], b["record"], b["start"]):
            rid = st.records["record_id"].iat[int(r)]
            np.testing.assert_array_equal(x.numpy(), st.read_window(rid, int(s), 500))


def test_data_config_loads_from_yaml_strictly(tmp_path, stores):
    from ecg_core.config import ConfigError, load_config

    f = tmp_path / "data.yaml"
    f.write_text(f"stores:\n  - path: {stores[0]}\n    weight: 2\n    folds: [1, 2, 3]\nwindow: 400\n")
    c = load_config(DataConfig, [f], ["batch_size=4"])
    assert c.stores[0] == StoreSource(path=str(stores[0]), weight=2.0, folds=[1, 2, 3]) and c.window == 400
    assert WindowLoader(c).take(1)[0]["x"].shape == (4, 12, 400)
    f.write_text("stores:\n  - path: x.zarr\n    wieght: 2\n")
    with pytest.raises(ConfigError, match=r"data.yaml: stores\[0\].wieght: unknown key"):
        load_config(DataConfig, [f])


def test_record_filter(stores):
    st = open_store(stores[0])
    ids = st.records["record_id"].tolist()
    c = cfg(stores[:1], windows_per_epoch=80)
    c.stores[0].records = [ids[1], ids[3]]
    seen = {int(r) for b in WindowLoader(c).take(10) for r in b["record"]}
    assert seen == {1, 3}
    c.stores[0].folds = [int(st.records["fold"].iat[1])]   # both filters apply (records 1 and 3: folds 2 and 4)
    assert {int(r) for b in WindowLoader(c).take(3) for r in b["record"]} == {1}
    unfiltered = WindowLoader(cfg(stores[:1])).state_dict()["fingerprint"]
    assert WindowLoader(c).state_dict()["fingerprint"] != unfiltered   # a resume cannot mix the two
    c.stores[0].records = ["no-such-record"]
    with pytest.raises(ValueError, match="1 of the 1 requested records are not in the store"):
        WindowLoader(c)


def test_excluded_records_are_never_drawn(stores):
    st = open_store(stores[0])
    ids = st.records["record_id"].tolist()
    c = cfg(stores[:1], windows_per_epoch=160)
    c.stores[0].exclude = ids[:-2]
    seen = {int(r) for b in WindowLoader(c).take(10) for r in b["record"]}
    assert seen == {len(ids) - 2, len(ids) - 1}
    c.stores[0].exclude = ids
    with pytest.raises(ValueError, match=f"once {len(ids)} excluded records are left out"):
        WindowLoader(c)
