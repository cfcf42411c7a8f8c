"""The demo dataset: real WFDB files, deterministic, patient-level folds, and classes a model can learn."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import wfdb
from scipy.signal import find_peaks

from ecg_core.data.demo import DEMO_CLASSES, DEMO_LEADS, HEADER_KEYS, generate_demo, main
from ecg_core.data.store import open_store


def hashes(root: Path) -> dict[str, str]:
    return {f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    """The default demo build, exactly as `make demo` makes it (generate + ingest)."""
    work = tmp_path_factory.mktemp("demo")
    assert main(["--workdir", str(work)]) == 0
    return work / "wfdb", work / "demo.zarr"


def test_files_are_wfdb_records_with_metadata(tmp_path):
    table = generate_demo(tmp_path, seed=0, n_patients=6)
    assert (tmp_path / "RECORDS").read_text().split() == list(table["path"])
    for path in table["path"][:5]:
        rec = wfdb.rdrecord(str(tmp_path / path), physical=False)
        assert rec.sig_name == list(DEMO_LEADS) and rec.fs == 500 and rec.sig_len == 5000
        assert rec.adc_gain == [1000.0] * 12 and rec.units == ["mV"] * 12
        keys = {c.split(":")[0] for c in rec.comments}
        assert keys == set(HEADER_KEYS.values())
        d = rec.d_signal.astype(np.int64).T
        lead = {name: d[i] for i, name in enumerate(DEMO_LEADS)}
        # Einthoven and Goldberger (limb leads derived from the quantised I and II)
        assert np.array_equal(lead["III"], lead["II"] - lead["I"])
        assert np.abs(lead["aVR"] + (lead["I"] + lead["II"]) / 2).max() <= 0.5
        assert np.abs(lead["aVL"] - (lead["I"] - lead["II"] / 2)).max() <= 0.5
        assert np.abs(lead["aVF"] - (lead["II"] - lead["I"] / 2)).max() <= 0.5
        p2p = np.percentile(d, 99.5, axis=1) - np.percentile(d, 0.5, axis=1)
        assert 200 < np.median(p2p) < 4000   # microvolts: a plausible 12-lead ECG


def test_deterministic_from_the_seed(tmp_path):
    generate_demo(tmp_path / "a", seed=3, n_patients=5)
    generate_demo(tmp_path / "b", seed=3, n_patients=5)
    generate_demo(tmp_path / "c", seed=4, n_patients=5)
    a, b, c = (hashes(tmp_path / x) for x in "abc")
    assert a == b
    assert a != c


def test_store_has_patient_level_folds_and_every_class_in_train_and_test(demo):
    _, store_path = demo
    st = open_store(store_path)
    rec = st.records
    assert 250 <= len(rec) <= 400 and rec["patient_id"].nunique() == 120
    assert set(st.tasks["labels"]) == set(DEMO_CLASSES)
    assert (rec.groupby("patient_id")["fold"].nunique() == 1).all()
    assert set(rec["fold"]) == set(range(1, 11))
    for fold_set in ({1, 2, 3, 4, 5, 6, 7, 8}, {10}):
        present = {c for labels in rec[rec["fold"].isin(fold_set)]["y_labels"] for c in labels}
        assert present == set(DEMO_CLASSES), fold_set
    assert (rec.groupby("patient_id").size() > 1).sum() > 40   # several records per patient
    assert rec["report"].str.len().min() > 10
    assert st.ingest_report()["n_skipped"] == 0 and not st.ingest_report()["warnings"]


def features(x_LT: np.ndarray, fs: float) -> np.ndarray:
    """Rate, RR irregularity, QRS width proxy and voltage, from lead II and V1-V6 (mV)."""
    ii = x_LT[1] - np.median(x_LT[1])
    peaks, _ = find_peaks(np.abs(ii), height=0.5 * np.percentile(np.abs(ii), 99.5), distance=int(0.3 * fs))
    rr = np.diff(peaks) / fs
    grad = np.abs(np.diff(x_LT[6:], axis=1)).sum(axis=0)
    active = grad > 0.25 * np.percentile(grad, 99)
    volt = np.percentile(x_LT, 99.5, axis=1) - np.percentile(x_LT, 0.5, axis=1)
    return np.array([60 / rr.mean(), rr.std() / rr.mean(), active.mean() * 60 / rr.mean(), volt.max()])


def balanced_accuracy(y_true: list[str], y_pred: list[str]) -> float:
    classes = sorted(set(y_true))
    return float(np.mean([np.mean([p == c for t, p in zip(y_true, y_pred) if t == c]) for c in classes]))


def test_rhythm_and_morphology_classes_are_learnable(demo):
    """A nearest-centroid rule on four hand-made signal features, fitted on folds 1-8, scores well above
    chance on folds 9-10: the labels are in the signal, so SSL + linear probes have something to find."""
    _, store_path = demo
    st = open_store(store_path)
    rec = st.records
    X = np.stack([features(st.read(r), st.fs) for r in rec["record_id"]])

    def main_label(labels, pool):
        hit = [c for c in labels if c in pool]
        return hit[0] if hit else "other"

    train = rec["fold"].isin(range(1, 9)).to_numpy()
    test = ~train
    for pool, cols, floor in ((("SBRAD", "STACH", "AFIB"), [0, 1], 0.8),
                              (("LBBB", "RBBB", "LVH"), [2, 3], 0.5)):
        y = np.array([main_label(list(labels), pool) for labels in rec["y_labels"]])
        Z = (X[:, cols] - X[train][:, cols].mean(0)) / X[train][:, cols].std(0)
        classes = sorted(set(y[train]))
        centroids = np.stack([Z[train & (y == c)].mean(0) for c in classes])
        pred = [classes[i] for i in np.argmin(((Z[test, None, :] - centroids) ** 2).sum(-1), axis=1)]
        score = balanced_accuracy(list(y[test]), pred)
        assert score > floor, (pool, score)
