"""Ingest CLI on real records: values equal wfdb's own reading, refusals give the right reason, PTB-XL labels,
bad inputs from corrupted copies of real files, --strict, and byte-identical re-ingest."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import scipy.io
import wfdb

from ecg_core.data import labels as lab
from ecg_core.data.ingest import main as ingest_main
from ecg_core.data.leads import LEADS, canonical_lead
from ecg_core.data.store import open_store
from ecg_core.data.wfdb_io import CINC2020_GAIN_RULES, find_records, read_record

# Records of tests/data that are refused, with the words their reason must contain.
REFUSED = {
    "binformats": "no ECG lead",
    "flacformats": "no ECG lead",
    "test01_00s": "no ECG lead",
    "041s": "NaN",
}


def record_files(header: Path) -> list[Path]:
    """The header and every file in its folder that belongs to the record (signal files, segments)."""
    stem = header.stem
    return [f for f in header.parent.iterdir() if f.name.startswith(stem) or f.suffix == ".hea" and
            header.parent.name == stem]


def fmt_of(header: Path) -> str:
    parts = header.parts
    if "cinc2021" in parts:
        return "cinc2021"
    if "challenge-real" in parts or "cinc2020_HR" in parts:
        return "cinc2020"
    return "wfdb"


def tree(path: Path) -> dict[str, str]:
    return {f.relative_to(path).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


def ingest(*args: str) -> int:
    return ingest_main([*map(str, args), "--quiet", "--workers", "1"])


def wfdb_reference_uV(header: Path, scratch: Path) -> tuple[np.ndarray, float]:
    """wfdb's own physical reading (of a hand-fixed copy where wfdb cannot parse the original header)."""
    src = header
    if header.stem == "E00009":   # 'E00009.mat' on the record line: wfdb raises, so read a fixed copy
        tmp = scratch / "wfdb-ref"
        tmp.mkdir()
        text = header.read_text().splitlines()
        text[0] = "E00009 12 500 5000"
        (tmp / "E00009.hea").write_text("\n".join(text) + "\n")
        shutil.copy(header.with_suffix(".mat"), tmp)
        src = tmp / "E00009.hea"
    rec = wfdb.rdrecord(str(src.with_suffix("")), physical=True, smooth_frames=False)
    units = [u for u in rec.units]
    fs = rec.fs
    sigs = rec.e_p_signal
    spf = rec.samps_per_frame
    rows = {}
    for ch, name in enumerate(rec.sig_name):
        lead = canonical_lead(name)
        if lead and lead not in rows and units[ch].lower() in ("mv", "uv"):
            rows[lead] = (sigs[ch] * (1000 if units[ch].lower() == "mv" else 1), fs * spf[ch])
    rates = {r for _, r in rows.values()}
    n = max(len(v) for v, _ in rows.values())
    out = np.zeros((12, n))
    for lead, (v, _) in rows.items():
        out[LEADS.index(lead), :len(v)] = v
    return out, max(rates)


def all_records(data_dir: Path) -> list[Path]:
    return find_records(data_dir)


def test_every_real_record_is_ingested_exactly_or_refused_with_its_reason(tmp_path, data_dir):
    headers = all_records(data_dir)
    assert len(headers) >= 30
    for header in headers:
        work = tmp_path / header.stem
        (work / "in").mkdir(parents=True)
        if header.parent.name == header.stem:      # multi-segment folder (041s)
            shutil.copytree(header.parent, work / "in", dirs_exist_ok=True)
        else:
            for f in record_files(header):
                shutil.copy(f, work / "in")
        fmt = fmt_of(header)
        if header.stem in REFUSED:
            assert ingest("--format", fmt, "--input", work / "in", "--output", work / "s.zarr") == 1
            assert not (work / "s.zarr").exists()
            rec_reason = None
            try:
                read_record(work / "in" / header.name)
            except ValueError as err:
                rec_reason = str(err)
            assert rec_reason and REFUSED[header.stem] in rec_reason, (header, rec_reason)
            continue
        ref_uV, fs = wfdb_reference_uV(header, work)
        rc = ingest("--format", fmt, "--input", work / "in", "--output", work / "s.zarr", "--fs", fs)
        assert rc == 0, header
        st = open_store(work / "s.zarr")
        rid = st.records["record_id"].iat[0]
        got_uV = st.read(rid).astype(np.float64) * 1000
        factor = 1.0
        for rule in CINC2020_GAIN_RULES:   # the documented correction, if one applies
            if fmt == "cinc2020" and rule.matches(read_record(work / "in" / header.name)):
                factor = rule.header_gain / rule.true_gain
        ref = np.clip(ref_uV * factor, -32767, 32767)
        mask = st.lead_mask(rid)
        assert got_uV.shape == ref.shape, header
        assert np.abs(got_uV[mask] - ref[mask]).max() <= 1.0 + 1e-6, header   # one LSB = 1 uV
        assert np.all(got_uV[~mask] == 0)
        assert str(header.name) in st.records["provenance"].iat[0]


def test_cinc2020_ptb_copy_agrees_with_native_ptb_in_amplitude(tmp_path, data_dir):
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    for f in (data_dir / "wfdb-real").glob("s0010_re.*"):
        shutil.copy(f, ptb)
    assert ingest("--format", "wfdb", "--input", ptb, "--output", tmp_path / "ptb.zarr", "--fs", 1000) == 0
    assert ingest("--format", "cinc2020", "--input", data_dir / "challenge-real" / "cinc2020_dx_stripped",
                  "--output", tmp_path / "cinc.zarr", "--fs", 1000) == 0
    native = open_store(tmp_path / "ptb.zarr").read("s0010_re")
    cinc = open_store(tmp_path / "cinc.zarr")
    copy = cinc.read("S0001")
    assert native.shape == copy.shape == (12, 38400)
    assert np.abs(native - copy).max() <= 0.0015   # mV: within the 1 uV quantisation of both
    assert "corrected" in cinc.records.set_index("record_id").at["S0001", "provenance"]


def make_ptbxl_dir(root: Path, data_dir: Path) -> Path:
    """PTB-XL's PhysioNet layout from the genuine tables and the ten genuine waveforms (CinC 2020 copies of
    ecg_id 1-10, digital values at PTB-XL's native 1 uV/LSB, written as native fmt-16 1000/mV records)."""
    src = data_dir / "ptbxl-real"
    root.mkdir()
    for name in ("ptbxl_database.csv", "scp_statements.csv"):
        shutil.copy(src / name, root)
    for mat in sorted((src / "cinc2020_HR").glob("HR*.mat")):
        ecg_id = int(mat.stem[2:])
        d = scipy.io.loadmat(mat)["val"].T.astype(np.int64)
        out = root / "records500" / "00000"
        out.mkdir(parents=True, exist_ok=True)
        wfdb.wrsamp(f"{ecg_id:05d}_hr", fs=500, units=["mV"] * 12, sig_name=list(LEADS), d_signal=d,
                    fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(out))
    return root


def test_ptbxl_ingest_labels_and_missing_records(tmp_path, data_dir):
    root = make_ptbxl_dir(tmp_path / "ptbxl", data_dir)
    assert ingest("--format", "ptbxl", "--input", root, "--output", tmp_path / "p.zarr") == 0
    st = open_store(tmp_path / "p.zarr")
    table = lab.load_ptbxl(root)
    assert len(st) == 10 and set(st.tasks) == set(lab.PTBXL_TASKS)
    assert len(st.tasks["all"]) == 71 and len(st.tasks["superdiag"]) == 5
    rec = st.records.set_index("ecg_id")
    for ecg_id in range(1, 11):
        want = table.records.loc[ecg_id]
        assert rec.at[ecg_id, "patient_id"] == want["patient_id"]
        assert rec.at[ecg_id, "fold"] == want["strat_fold"]
        assert rec.at[ecg_id, "report"] == want["report"]
        for task in lab.PTBXL_TASKS:
            assert list(rec.at[ecg_id, f"y_{task}"]) == list(want[f"y_{task}"])
    assert list(rec.at[1, "y_all"]) == ["LVOLT", "NORM", "SR"]
    # signal equals the genuine digital values (1 uV/LSB)
    x = scipy.io.loadmat(data_dir / "ptbxl-real" / "cinc2020_HR" / "HR00003.mat")["val"]
    np.testing.assert_allclose(st.read("00003_hr") * 1000, x, atol=1e-3)
    report = json.loads((tmp_path / "p.zarr" / "ingest_report.json").read_text())
    assert report["n_found"] == len(table.records) and report["n_ingested"] == 10
    assert all("missing record file" in s["reason"] for s in report["skipped"])
    # --strict stops at the first missing record and leaves nothing behind
    assert ingest("--format", "ptbxl", "--input", root, "--output", tmp_path / "q.zarr", "--strict") == 1
    assert not (tmp_path / "q.zarr").exists()


def corrupt_inputs(root: Path, data_dir: Path) -> dict[str, str]:
    """Copies of real records, a few of them damaged; returns file -> words its reason must contain."""
    c21 = data_dir / "challenge-real" / "cinc2021"
    root.mkdir()
    for f in c21.iterdir():
        shutil.copy(f, root)
    # truncated signal file
    mat = (root / "E07500.mat").read_bytes()
    (root / "E07500.mat").write_bytes(mat[: len(mat) // 2])
    # a header that lies about its length
    lines = (root / "HR06000.hea").read_text().splitlines()
    lines[0] = "HR06000 12 500 7000"
    (root / "HR06000.hea").write_text("\n".join(lines) + "\n")
    # missing signal file
    (root / "JS20000.mat").unlink()
    # invalid samples (fmt 16 sentinel -32768 -> NaN) in lead I
    d = bytearray((root / "JS20017.mat").read_bytes())
    d[24 + 2 * 12 * 100: 24 + 2 * 12 * 100 + 2] = (-32768).to_bytes(2, "little", signed=True)
    (root / "JS20017.mat").write_bytes(bytes(d))
    # unreadable header
    (root / "X0001.hea").write_bytes(b"\x00\xff garbage \x01\n\x02")
    # non-ECG record
    for f in (data_dir / "wfdb-real").glob("binformats.*"):
        shutil.copy(f, root)
    # one good record so the store can be written
    for f in (data_dir / "challenge-real" / "cinc2020").glob("Q0048.*"):
        shutil.copy(f, root)
    return {"E07500.hea": "truncated", "HR06000.hea": "7000", "JS20000.hea": "missing signal file",
            "JS20017.hea": "NaN", "X0001.hea": "header", "binformats.hea": "no ECG lead"}


def test_bad_records_are_skipped_with_reasons_or_stop_strict(tmp_path, data_dir):
    expect = corrupt_inputs(tmp_path / "in", data_dir)
    assert ingest("--format", "cinc2021", "--input", tmp_path / "in", "--output", tmp_path / "s.zarr") == 0
    report = json.loads((tmp_path / "s.zarr" / "ingest_report.json").read_text())
    reasons = {s["record"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(expect)
    for name, words in expect.items():
        assert name.split(".")[0] in reasons[name] and words in reasons[name], (name, reasons[name])
        assert "\n" not in reasons[name]
    assert list(open_store(tmp_path / "s.zarr").records["record_id"]) == ["Q0048"]
    # --strict: the first bad record (sorted order: E07500) stops the run, no store and no temp dir remain
    r = subprocess.run([sys.executable, "-m", "ecg_core.data.ingest", "--format", "cinc2021", "--input",
                        str(tmp_path / "in"), "--output", str(tmp_path / "t.zarr"), "--strict", "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "E07500" in r.stderr and "truncated" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "s.zarr"]


def test_reingest_is_byte_identical_with_any_worker_count(tmp_path, data_dir):
    src = data_dir / "challenge-real" / "cinc2020"
    assert ingest_main(["--format", "cinc2020", "--input", str(src), "--output", str(tmp_path / "a.zarr"),
                        "--quiet", "--workers", "1"]) == 0
    assert ingest_main(["--format", "cinc2020", "--input", str(src), "--output", str(tmp_path / "b.zarr"),
                        "--quiet", "--workers", "2"]) == 0
    assert tree(tmp_path / "a.zarr") == tree(tmp_path / "b.zarr")


def test_cli_help_and_errors(tmp_path, capsys):
    r = subprocess.run([sys.executable, "-m", "ecg_core.data.ingest", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--format" in r.stdout and "--strict" in r.stdout
    assert ingest("--format", "wfdb", "--input", tmp_path / "nope", "--output", tmp_path / "s.zarr") == 1
    assert "nope: input directory does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert ingest("--format", "wfdb", "--input", tmp_path / "empty", "--output", tmp_path / "s.zarr") == 1
    assert "no WFDB record" in capsys.readouterr().err
