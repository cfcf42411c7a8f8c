"""Paired training windows (``DataConfig.pairing``): same-patient pairs from different records, adjacent
segments of one record, exact resume, unchanged default stream.

Runs on a small demo store (16 patients of ``ecg_core.data.demo``, 1-4 ten-second records each, stored
in patient order) built once per session; ``small_demo_store`` is reused by test_patient_contrastive.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ecg_core.data.loader import DataConfig, StoreSource, WindowLoader
from ecg_core.data.store import open_store


def small_demo_store(tmp_path_factory) -> Path:
    """The demo generator's data for 16 patients, ingested once per session (cached by path)."""
    from ecg_core.data.demo import generate_demo
    from ecg_core.data.ingest import main as ingest_main

    root = tmp_path_factory.getbasetemp() / "pairing_demo"
    store = root / "demo.zarr"
    if not store.exists():
        generate_demo(root / "wfdb", seed=0, n_patients=16)
        args = ["--format", "wfdb", "--input", str(root / "wfdb"), "--output", str(store), "--quiet", "--workers", "1"]
        assert ingest_main(args) == 0
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return small_demo_store(tmp_path_factory)


def cfg(path: Path, **kw) -> DataConfig:
    # Blocks of ~1.6 records: many partners lie outside their anchor's unit (read as extra record spans).
    base = dict(window=500, batch_size=8, block_len=8192, blocks_per_unit=2, seed=3, pairing="patient")
    base.update(kw)
    return DataConfig(stores=[StoreSource(path=str(path))], **base)


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


def test_patient_pairs_are_same_patient_windows_of_other_records(store):
    st = open_store(store)
    rec = st.records
    n_records = rec.groupby("patient_id")["record_id"].transform("size").to_numpy()
    assert set(n_records) == {1, 2, 3, 4}   # the demo's 1-4 records per patient
    loader = WindowLoader(cfg(store))
    batches = loader.take(2 * loader.steps_per_epoch)
    other_record = alone = 0
    partners: dict[int, set[int]] = {}
    for b in batches:
        assert b["x"].shape == (8, 12, 500) and b["patient"].dtype == torch.int64
        for x, r, s in zip(b["x"], b["record"], b["start"]):   # every window is the store's samples
            np.testing.assert_array_equal(x.numpy(), st.read_window(rec["record_id"].iat[int(r)], int(s), 500))
        a, p = b["record"][0::2].numpy(), b["record"][1::2].numpy()
        np.testing.assert_array_equal(rec["patient_id"].to_numpy()[a], rec["patient_id"].to_numpy()[p])
        assert torch.equal(b["patient"][0::2], b["patient"][1::2])
        for ra, rp in zip(a, p):
            if n_records[ra] > 1:
                assert ra != rp   # a patient with several records: always another recording
                other_record += 1
                partners.setdefault(int(ra), set()).add(int(rp))
            else:
                assert ra == rp   # alone: another window of the same record
                alone += 1
    assert other_record > 5 * alone > 0
    # Partners are drawn among all the patient's other records (each one seen for well-sampled anchors).
    for ra, seen in partners.items():
        pid = rec["patient_id"].iat[ra]
        others = set(np.flatnonzero(rec["patient_id"].to_numpy() == pid)) - {ra}
        assert seen <= others
    assert sum(seen == set(np.flatnonzero(rec["patient_id"].to_numpy() == rec["patient_id"].iat[ra])) - {ra}
               for ra, seen in partners.items()) > len(partners) // 2
    # Patient codes identify patients: equal codes <=> equal patient_id.
    codes = {(int(c), rec["patient_id"].iat[int(r)]) for b in batches for c, r in zip(b["patient"], b["record"])}
    assert len({c for c, _ in codes}) == len({p for _, p in codes}) == len(codes)


def test_partners_outside_the_unit_are_read_as_extra_spans(store):
    loader = WindowLoader(cfg(store))
    units = loader.sampler.plan(0)
    n_blocks = [len({int(b) for b in u.block_of[0::2]}) for u in units]
    assert any(len(u.spans) > n for u, n in zip(units, n_blocks))   # the extra-span path is exercised
    assert sum(len(u.record) for u in units) == loader.sampler.windows_per_rank()
    assert all(len(u.record) % 2 == 0 for u in units)


def test_adjacent_pairs_are_consecutive_segments_of_one_record(store):
    st = open_store(store)
    loader = WindowLoader(cfg(store, pairing="adjacent", window=2000))
    starts = set()
    for b in loader.take(loader.steps_per_epoch):
        assert torch.equal(b["record"][0::2], b["record"][1::2])
        assert torch.equal(b["start"][1::2], b["start"][0::2] + 2000)
        assert torch.equal(b["patient"][0::2], b["patient"][1::2])
        lengths = st.records["length"].to_numpy()[b["record"].numpy()]
        assert np.all(b["start"].numpy()[0::2] <= lengths[0::2] - 4000)
        for x, r, s in zip(b["x"], b["record"], b["start"]):
            np.testing.assert_array_equal(x.numpy(), st.read_window(st.records["record_id"].iat[int(r)], int(s), 2000))
        starts |= {int(s) for s in b["start"][0::2]}
    assert len(starts) > 10   # uniform anchor positions, not a fixed split
    with pytest.raises(ValueError, match="no record of length >= 6000"):   # two 3000-sample segments
        WindowLoader(cfg(store, pairing="adjacent", window=3000))


@pytest.mark.parametrize("pairing", ["patient", "adjacent"])
@pytest.mark.parametrize("world", [1, 2])
def test_pairing_resumes_exactly(store, pairing, world):
    c = cfg(store, pairing=pairing)
    for rank in range(world):
        n = WindowLoader(c, rank=rank, world_size=world).steps_per_epoch
        total = n + 5
        straight = WindowLoader(c, rank=rank, world_size=world).take(total)
        for cut in (1, 3, n - 1, n):   # mid-unit, unit and epoch boundaries
            first = WindowLoader(c, rank=rank, world_size=world)
            head = first.take(cut)
            resumed = WindowLoader(c, rank=rank, world_size=world)
            resumed.load_state_dict(first.state_dict())
            assert same(head + resumed.take(total - cut), straight), (pairing, world, rank, cut)


def test_ranks_share_patient_codes_and_run_equal_steps(store):
    r0, r1 = (WindowLoader(cfg(store), rank=r, world_size=2) for r in (0, 1))
    assert r0.steps_per_epoch == r1.steps_per_epoch
    assert all(np.array_equal(a, b) for a, b in zip(r0.sampler.patients, r1.sampler.patients))


def test_workers_give_the_same_paired_stream(store):
    c = cfg(store)
    n = WindowLoader(c).steps_per_epoch
    assert same(WindowLoader(cfg(store, num_workers=2)).take(n), WindowLoader(c).take(n))


def test_default_has_no_pairs_and_states_do_not_mix(store):
    plain = WindowLoader(cfg(store, pairing="none"))
    assert "patient" not in plain.take(1)[0]
    paired = WindowLoader(cfg(store))
    with pytest.raises(ValueError, match="cannot continue exactly"):
        plain.load_state_dict(paired.state_dict())
    with pytest.raises(ValueError, match="cannot continue exactly"):
        WindowLoader(cfg(store, pairing="adjacent")).load_state_dict(paired.state_dict())


def test_invalid_pairing_settings(store):
    with pytest.raises(ValueError, match="pairing must be one of"):
        WindowLoader(cfg(store, pairing="record"))
    with pytest.raises(ValueError, match="even batch_size"):
        WindowLoader(cfg(store, batch_size=7))
