"""Leakage guard on real records: PTB-XL inside CinC 2020 (by name and by signal), fingerprint robustness to gain and
requantisation, no false matches between different real recordings (also of one patient), the fingerprint cache,
patient separation of folds, and the CLI.

Real data (tests/data, see its README): the ten CinC 2020 copies of PTB-XL ecg_id 1-10 (200/mV headers), the PTB-XL
layout built from them at PTB-XL's native 1000/mV (the helper of the ingest tests), the other Challenge records and
the WFDB sample records (among them 30 min of MIT-BIH 100 and 10 min of MIMIC 03700181: many windows of one patient).
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecg_core.data.ingest import main as ingest_main
from ecg_core.data.ingest import to_store_scale
from ecg_core.data.leakage import (
    FINGERPRINT_BITS,
    FLAT,
    MATCH_BITS,
    LeakageError,
    check_patient_separation,
    find_overlap,
    fingerprint_distance,
    fingerprints,
    main,
    ptbxl_ecg_ids,
    signal_fingerprint,
)
from ecg_core.data.store import open_store
from ecg_core.data.wfdb_io import CINC2020_GAIN_RULES, RecordError, apply_gain_rules, find_records, read_record

from .data.test_ingest import make_ptbxl_dir

FS = 500.0


def ingest(fmt: str, src: Path, out: Path, *extra) -> Path:
    assert ingest_main(["--format", fmt, "--input", str(src), "--output", str(out), "--quiet", "--workers", "1",
                        *map(str, extra)]) == 0
    return out


def copy_renamed(src: Path, dst: Path, prefix: str, gain: str | None = None) -> Path:
    """Copies of the CinC HR records named ``<prefix>000NN`` (so no name rule can apply), optionally with
    another header gain."""
    dst.mkdir(parents=True)
    for hea in sorted(src.glob("HR*.hea")):
        new = prefix + hea.stem[2:]
        text = hea.read_text().replace(hea.stem, new)
        if gain is not None:
            text = text.replace(" 200/mV ", f" {gain}/mV ")
        (dst / f"{new}.hea").write_text(text)
        shutil.copy(hea.with_suffix(".mat"), dst / f"{new}.mat")
    return dst


@pytest.fixture(scope="module")
def stores(tmp_path_factory, data_dir) -> dict[str, Path]:
    """PTB-XL (native layout, ecg_id 1-10), its CinC 2020 copies, and renamed copies (right gain; 5x gain)."""
    tmp = tmp_path_factory.mktemp("leakage")
    hr = data_dir / "ptbxl-real" / "cinc2020_HR"
    return {
        "ptbxl": ingest("ptbxl", make_ptbxl_dir(tmp / "ptbxl", data_dir), tmp / "ptbxl.zarr"),
        "cinc": ingest("cinc2020", hr, tmp / "cinc.zarr"),
        "renamed": ingest("cinc2020", copy_renamed(hr, tmp / "x", "X", gain="1000"), tmp / "renamed.zarr"),
        "x5": ingest("cinc2020", copy_renamed(hr, tmp / "y", "Y"), tmp / "x5.zarr"),
    }


def store_scale(header: Path) -> np.ndarray:
    """A real record as the ingest stores it: int16 (12, T) at 500 Hz, 1 uV per count."""
    return to_store_scale(apply_gain_rules(read_record(header), CINC2020_GAIN_RULES), FS)[0]


@pytest.fixture(scope="module")
def windows(data_dir) -> dict[str, np.ndarray]:
    """Every readable real record of tests/data cut into 10 s windows (long records give many windows of one
    patient): name -> int16 (12, 5000)."""
    out = {}
    for header in find_records(data_dir):
        try:
            x = store_scale(header)
        except RecordError:
            continue
        for i in range(x.shape[1] // 5000):
            out[f"{header.relative_to(data_dir).as_posix()}#{i}"] = x[:, i * 5000:(i + 1) * 5000]
    return out


SAME_RECORDING = ("challenge-real/cinc2020_dx_stripped/S0001.hea", "wfdb-real/s0010_re.hea")   # CinC 2020 PTB copy


# ------------------------------------------------------------------------------------------------
# the fingerprint itself
# ------------------------------------------------------------------------------------------------

def test_fingerprint_is_exact_for_scaled_copies_and_close_for_requantised_ones(windows):
    assert len(windows) > 250
    rng = np.random.default_rng(0)
    worst: dict[str, int] = {}
    for name, x in windows.items():
        fp = signal_fingerprint(x, FS)
        assert len(fp) == FINGERPRINT_BITS // 4 and fp == signal_fingerprint(x.copy(), FS)
        x64 = x.astype(np.int64)
        present = (x != 0).any(axis=1, keepdims=True)
        copies = {
            "x2": 2 * x64, "x5": np.clip(5 * x64, -32767, 32767),            # integer gains (5x: CinC 2020 HR)
            "/4.88": np.rint(x / 4.88), "/5": np.rint(x / 5.0), "x1.37": np.rint(x * 1.37),   # requantised
            "+-1": x64 + rng.integers(-1, 2, x.shape) * present,               # one count of noise
            "mV": x.astype(np.float32) / np.float32(1000.0),                   # float input, other unit
        }
        for kind, copy in copies.items():
            d = fingerprint_distance(fp, signal_fingerprint(copy, FS))
            if kind == "x2" or (kind == "x5" and np.abs(5 * x64).max() <= 32767):
                assert d == 0, (name, kind)
            worst[kind] = max(worst.get(kind, 0), d)
    # measured: <= 4 bits for the requantised copies, <= 2 for one count of noise, 0-1 for float mV
    assert max(worst.values()) <= MATCH_BITS // 2, worst


def test_different_real_recordings_never_match_even_of_one_patient(windows):
    names = list(windows)
    fps = [signal_fingerprint(windows[n], FS) for n in names]
    assert FLAT not in fps
    same = [i for i, n in enumerate(names) if n.split("#")[0] in SAME_RECORDING]
    bits = np.unpackbits(np.frombuffer(b"".join(bytes.fromhex(f) for f in fps), np.uint8).reshape(len(fps), -1), 1)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            pair = {names[i].split("#")[0], names[j].split("#")[0]}
            if i in same and j in same and pair == set(SAME_RECORDING) and names[i][-2:] == names[j][-2:]:
                assert dist[i, j] <= MATCH_BITS, (names[i], names[j])   # one recording, two distributions
            else:
                assert dist[i, j] > 2 * MATCH_BITS, (names[i], names[j], dist[i, j])
    same_patient = [n for n in names if n.startswith(("wfdb-real/100.", "wfdb-real/03700181.", "wfdb-real/a103l."))]
    assert len(same_patient) > 250   # 180 + 60 + 33 windows of three patients


def test_flat_and_short_signals():
    assert signal_fingerprint(np.zeros((12, 5000), np.int16), FS) == FLAT
    assert signal_fingerprint(np.full((12, 5000), 7, np.int16), FS) == FLAT
    assert signal_fingerprint(np.ones((12, 15), np.int16), FS) == FLAT        # shorter than two 40 ms blocks
    assert fingerprint_distance(FLAT, FLAT) == FINGERPRINT_BITS
    with pytest.raises(ValueError, match="signal must be"):
        signal_fingerprint(np.zeros(100), FS)


# ------------------------------------------------------------------------------------------------
# stores: PTB-XL inside CinC
# ------------------------------------------------------------------------------------------------

def test_ptbxl_records_in_cinc_are_found_by_name_and_by_signal(stores):
    overlap = find_overlap(stores["cinc"], stores["ptbxl"], progress=False)
    want = [(f"HR{i:05d}", f"{i:05d}_hr") for i in range(1, 11)]
    assert [(p, e) for p, e, how in overlap.pairs if how == "name"] == want
    assert [(p, e) for p, e, how in overlap.pairs if how == "signal"] == want
    ptbxl = open_store(stores["ptbxl"]).records
    assert overlap.eval_patients == sorted(ptbxl["patient_id"].astype(str))
    assert overlap.exclude == [p for p, _ in want] and overlap.n_pretrain == 10
    text = overlap.summary()
    assert "pairs by name: 10, by signal: 10 (both: 10)" in text and "to exclude: 10 of 10" in text
    # the other direction too (PTB-XL as the pretraining store)
    back = find_overlap(stores["ptbxl"], stores["cinc"], progress=False)
    assert back.count("name") == back.count("signal") == 10
    ids = ptbxl_ecg_ids(open_store(stores["cinc"]).records)
    assert ids.to_dict() == {f"HR{i:05d}": i for i in range(1, 11)}


def test_the_signal_rule_alone_catches_renamed_and_mis_scaled_copies(stores):
    renamed = find_overlap(stores["renamed"], stores["ptbxl"], progress=False)
    assert renamed.count("name") == 0
    assert [(p, e) for p, e, _ in renamed.pairs] == [(f"X{i:05d}", f"{i:05d}_hr") for i in range(1, 11)]
    # 200/mV kept under a name no gain rule knows: stored 5x too large; those above 5 mV are refused by the ingest
    x5 = open_store(stores["x5"])
    kept = list(x5.records["record_id"])
    assert 3 <= len(kept) < 10
    assert all("amplitude warning" in p for p in x5.records["provenance"])
    native = open_store(stores["ptbxl"])
    for rid in kept:
        ratio = x5.read(rid) / np.where(native.read(f"{rid[1:]}_hr") == 0, np.nan, native.read(f"{rid[1:]}_hr"))
        assert np.nanmedian(ratio) == pytest.approx(5.0)
    overlap = find_overlap(x5, stores["ptbxl"], progress=False, max_bits=0)   # equal fingerprints
    assert [(p, e) for p, e, _ in overlap.pairs] == [(rid, f"{rid[1:]}_hr") for rid in kept]


def test_cinc_ptb_copy_matches_native_ptb_and_unrelated_stores_do_not(tmp_path, data_dir, monkeypatch):
    cinc = ingest("cinc2020", data_dir / "challenge-real" / "cinc2020_dx_stripped", tmp_path / "c.zarr")
    wfdb = ingest("wfdb", data_dir / "wfdb-real", tmp_path / "wfdb.zarr")   # s0010_re (native PTB), 30 min of 100, ...
    overlap = find_overlap(cinc, wfdb, progress=False, cache=False)
    assert overlap.pairs == [("S0001", "s0010_re", "signal")]      # PTB in CinC 2020, 1 uV rounding apart
    assert overlap.eval_patients == ["s0010_re"] and overlap.exclude == ["S0001"]
    others = ingest("cinc2021", data_dir / "challenge-real" / "cinc2021", tmp_path / "c21.zarr")
    c20 = ingest("cinc2020", data_dir / "challenge-real" / "cinc2020", tmp_path / "c20.zarr")
    for a, b in [(others, c20), (c20, cinc), (others, wfdb), (c20, wfdb)]:
        assert find_overlap(a, b, progress=False, cache=False).pairs == []
    # streamed in spans: long records are read only for their first MAX_SECONDS, whatever the span size
    st = open_store(wfdb)
    assert st.records["length"].max() > 30 * 60 * FS * 0.99
    fps = fingerprints(st, cache=False, progress=False)
    monkeypatch.setattr("ecg_core.data.leakage._SPAN_SAMPLES", 7000)
    pd.testing.assert_series_equal(fingerprints(st, cache=False, progress=False), fps)
    for i, rid in enumerate(st.records["record_id"]):
        assert fps[rid] == signal_fingerprint(st.read_span(int(st.offsets[i]), int(st.offsets[i + 1])), FS)


def test_fingerprints_are_cached_beside_the_store(tmp_path, data_dir):
    store = ingest("cinc2021", data_dir / "challenge-real" / "cinc2021", tmp_path / "s.zarr")
    inside = sorted(p.relative_to(store) for p in store.rglob("*"))
    assert fingerprints(store, cache=False, progress=False).shape == (4,)
    sidecar = tmp_path / "s.zarr.fingerprints.json"
    assert not sidecar.exists()
    fps = fingerprints(store, progress=False)
    assert sidecar.is_file() and sorted(p.relative_to(store) for p in store.rglob("*")) == inside
    st = open_store(store)
    data = json.loads(sidecar.read_text())
    assert data["key"]["table_sha256"] == st.attrs["table_sha256"]
    assert list(fps.index) == list(st.records["record_id"])
    for rid in fps.index:
        assert fps[rid] == signal_fingerprint(st.read_span(*st.offsets[[st.index_of(rid), st.index_of(rid) + 1]]), FS)
    data["fingerprint"] = ["0" * (FINGERPRINT_BITS // 4)] * 4
    sidecar.write_text(json.dumps(data))
    assert fingerprints(store, progress=False).iloc[0] == "0" * (FINGERPRINT_BITS // 4)   # trusted while key holds
    data["key"]["table_sha256"] = "stale"
    sidecar.write_text(json.dumps(data))
    pd.testing.assert_series_equal(fingerprints(store, progress=False), fps)                # stale: recomputed
    assert json.loads(sidecar.read_text())["key"]["table_sha256"] == st.attrs["table_sha256"]


# ------------------------------------------------------------------------------------------------
# patient separation of the folds
# ------------------------------------------------------------------------------------------------

def test_patient_separation_passes_on_strat_folds_and_fails_when_a_patient_spans_train_and_test(
        tmp_path, data_dir, stores):
    check_patient_separation(stores["ptbxl"], range(1, 9), [9], [10])
    root = make_ptbxl_dir(tmp_path / "ptbxl", data_dir)
    table = pd.read_csv(root / "ptbxl_database.csv", dtype=str, keep_default_na=False)
    patient_of = dict(zip(table["ecg_id"], table["patient_id"]))
    assert table.set_index("ecg_id").loc[["1", "4", "9"], "strat_fold"].tolist() == ["3", "3", "10"]
    table.loc[table["ecg_id"].isin(["4", "9"]), "patient_id"] = patient_of["1"]   # ecg 1, 4 (fold 3), 9 (fold 10)
    table.to_csv(root / "ptbxl_database.csv", index=False)
    bad = ingest("ptbxl", root, tmp_path / "bad.zarr")
    patient = str(open_store(bad).records.set_index("ecg_id").at[1, "patient_id"])
    with pytest.raises(LeakageError) as err:
        check_patient_separation(bad, range(1, 9), [9], [10])
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and repr(patient) in message
    assert "train folds [3] and test folds [10]" in message and "00009_hr (fold 10)" in message
    check_patient_separation(bad, range(1, 10), [], [])          # fold 10 not used: nothing to separate
    with pytest.raises(LeakageError, match="train and test folds share folds \\[8\\]"):
        check_patient_separation(stores["ptbxl"], range(1, 9), [9], [8, 10])


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------

def test_cli_prints_the_overlap_and_writes_the_exclusions(stores, tmp_path, capsys):
    out = tmp_path / "exclude.json"
    assert main(["--pretrain", str(stores["cinc"]), str(stores["renamed"]), "--eval", str(stores["ptbxl"]),
                 "--quiet", "--exclude-out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pairs by name: 10, by signal: 10 (both: 10)" in text
    assert "pairs by name: 0, by signal: 10 (both: 0)" in text
    assert "eval patients involved: 10" in text and text.count("to exclude: 10 of 10") == 2
    assert json.loads(out.read_text())[str(stores["renamed"])] == [f"X{i:05d}" for i in range(1, 11)]
    assert main(["--pretrain", str(tmp_path / "missing.zarr"), "--eval", str(stores["ptbxl"])]) == 1
    assert "leakage: error:" in capsys.readouterr().err
    r = subprocess.run([sys.executable, "-m", "ecg_core.data.leakage", "--help"], capture_output=True, text=True,
                       check=True)
    assert "--pretrain" in r.stdout and "--eval" in r.stdout and "--max-bits" in r.stdout
