"""The demo dataset: real WFDB files, deterministic, patient-level folds, and classes a model can learn."""
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import butter, find_peaks, sosfiltfilt

# ecg_core.data.demo imports wfdb (through the ingest) with a guard against a pandas deprecation warning
# raised while wfdb imports; importing it first keeps that warning out of this warnings-as-errors module.
from ecg_core.data.demo import DEMO_CLASSES, DEMO_LEADS, DOWER, HEADER_KEYS, INVERSE_DOWER, generate_demo, main
from ecg_core.data.store import open_store
import wfdb  # after ecg_core.data.demo on purpose, see above


def hashes(root: Path) -> dict[str, str]:
    return {f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    """The default demo build, exactly as `make demo` makes it (generate + ingest)."""
    work = tmp_path_factory.mktemp("demo")
    assert main(["--workdir", str(work)]) == 0
    return work / "wfdb", work / "demo.zarr"


def header_meta(comments: list[str]) -> dict[str, str]:
    pairs = (c.split(":", 1) for c in comments)
    return {k.strip(): v.strip() for k, v in pairs}


def test_dower_and_inverse_dower_tables_agree():
    """Edenbrandt & Pahlm (1988) derived the inverse Dower matrix as the pseudo-inverse of Dower's (1980)."""
    assert DOWER.shape == (8, 3) and INVERSE_DOWER.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.pinv(DOWER), INVERSE_DOWER, atol=1.5e-3)


def test_files_are_wfdb_records_with_metadata(tmp_path):
    table = generate_demo(tmp_path, seed=0, n_patients=6)
    assert (tmp_path / "RECORDS").read_text().split() == list(table["path"])
    assert not any("." in p for p in table["path"]) and table["record_id"].is_unique
    for row in table.iloc[:5].itertuples():
        rec = wfdb.rdrecord(str(tmp_path / row.path), physical=False)
        assert rec.sig_name == list(DEMO_LEADS) and rec.fs == 500 and rec.sig_len == 5000
        assert rec.adc_gain == [1000.0] * 12 and rec.units == ["mV"] * 12 and rec.baseline == [0] * 12
        assert rec.fmt == ["16"] * 12 and rec.record_name == row.record_id
        meta = header_meta(rec.comments)
        assert set(meta) == set(HEADER_KEYS.values())
        assert meta[HEADER_KEYS["patient_id"]] == row.patient_id
        assert int(meta[HEADER_KEYS["fold"]]) == row.fold
        assert int(meta[HEADER_KEYS["age"]]) == row.age and meta[HEADER_KEYS["sex"]] == row.sex in ("M", "F")
        assert meta[HEADER_KEYS["labels"]].split(",") == row.labels and set(row.labels) <= set(DEMO_CLASSES)
        assert meta[HEADER_KEYS["report"]] == row.report
        assert abs(int(re.search(r"(\d+) ?(?:bpm|/min)", row.report).group(1)) - row.heart_rate) <= 1
        d = rec.d_signal.astype(np.int64).T
        lead = {name: d[i] for i, name in enumerate(DEMO_LEADS)}
        # Einthoven and Goldberger (limb leads derived from the quantised I and II)
        assert np.array_equal(lead["III"], lead["II"] - lead["I"])
        assert np.abs(lead["aVR"] + (lead["I"] + lead["II"]) / 2).max() <= 0.5
        assert np.abs(lead["aVL"] - (lead["I"] - lead["II"] / 2)).max() <= 0.5
        assert np.abs(lead["aVF"] - (lead["II"] - lead["I"] / 2)).max() <= 0.5
        p2p = np.percentile(d, 99.5, axis=1) - np.percentile(d, 0.5, axis=1)
        assert 200 < np.median(p2p) < 4000   # microvolts: a plausible 12-lead ECG


def test_amplitudes_are_those_of_a_12_lead_ecg(tmp_path):
    """Peak-to-peak (baseline wander filtered out) 0.5-2.5 mV in most leads, < 4 mV in all but LVH records."""
    table = generate_demo(tmp_path, seed=2, n_patients=24)
    sos = butter(2, [0.5, 40.0], btype="bandpass", fs=500, output="sos")
    for row in table.itertuples():
        x = sosfiltfilt(sos, wfdb.rdrecord(str(tmp_path / row.path)).p_signal.T, axis=1)
        p2p = np.percentile(x, 99.9, axis=1) - np.percentile(x, 0.1, axis=1)
        assert ((p2p > 0.5) & (p2p < 2.5)).sum() >= 6, (row.record_id, p2p.round(2))
        assert p2p.max() < (5.5 if "LVH" in row.labels else 4.0), (row.record_id, row.labels, p2p.round(2))


def test_cli_generate_only_and_help(tmp_path, capsys):
    assert main(["--workdir", str(tmp_path), "--generate-only", "--patients", "4", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "WFDB records of 4 patients" in out and "Records per class" in out
    assert (tmp_path / "wfdb" / "RECORDS").is_file() and not (tmp_path / "demo.zarr").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--generate-only" in capsys.readouterr().out


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
    for fold_set in ({1, 2, 3, 4, 5, 6, 7, 8}, {9}, {10}):
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


def median_beats(x_LT: np.ndarray, fs: float) -> np.ndarray:
    """Median beat of every lead, -120 ms to +300 ms around the QRS (10 ms steps), baseline removed (mV)."""
    sos = butter(2, [0.5, 40.0], btype="bandpass", fs=fs, output="sos")
    x = sosfiltfilt(sos, x_LT.astype(np.float64), axis=1)
    energy = np.abs(np.diff(x, axis=1)).sum(axis=0)
    peaks, _ = find_peaks(energy, distance=int(0.3 * fs), height=0.4 * np.percentile(energy, 99.5))
    pre, post = int(0.12 * fs), int(0.3 * fs)
    peaks = peaks[(peaks >= pre) & (peaks < x.shape[1] - post)]
    beat = np.median(np.stack([x[:, p - pre:p + post] for p in peaks]), axis=0)
    beat -= beat[:, : int(0.02 * fs)].mean(axis=1, keepdims=True)
    return beat[:, :: int(0.01 * fs)].ravel()


def test_morphology_and_patient_identity_are_in_the_beat_shape(demo):
    """Median-beat templates: a ridge classifier fitted on folds 1-8 separates no finding / LBBB / RBBB / MI /
    LVH on folds 9-10, and a record's nearest neighbour is usually another record of the same patient (what
    patient-contrastive pretraining relies on)."""
    _, store_path = demo
    st = open_store(store_path)
    rec = st.records
    F = np.stack([median_beats(st.read(r), st.fs) for r in rec["record_id"]])

    pool = ("LBBB", "RBBB", "MI", "LVH")
    y = np.array([next((c for c in labels if c in pool), "none") for labels in rec["y_labels"]])
    train = rec["fold"].isin(range(1, 9)).to_numpy()
    Z = (F - F[train].mean(0)) / (F[train].std(0) + 1e-6)
    classes = sorted(set(y))
    targets = np.stack([y == c for c in classes], axis=1) * 2.0 - 1.0
    W = np.linalg.solve(Z[train].T @ Z[train] + 100.0 * np.eye(Z.shape[1]), Z[train].T @ targets[train])
    pred = [classes[i] for i in np.argmax(Z[~train] @ W, axis=1)]
    assert set(y[~train]) == set(classes)
    score = balanced_accuracy(list(y[~train]), pred)
    assert score > 0.9, score

    unit = F / np.linalg.norm(F, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    patient = rec["patient_id"].to_numpy()
    has_sibling = np.array([(patient == p).sum() > 1 for p in patient])
    same = patient[similarity.argmax(axis=1)] == patient
    assert same[has_sibling].mean() > 0.6, same[has_sibling].mean()   # chance is about 1%
