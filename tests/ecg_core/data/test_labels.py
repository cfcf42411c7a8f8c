"""Labels for PTB-XL and the PhysioNet/CinC Challenge 2020/2021, tested on the genuine files in tests/data.

PTB-XL: tests/data/ptbxl-real (521 genuine rows of ptbxl_database.csv, the full scp_statements.csv).
Challenge: tests/data/challenge-real (real headers, official scoring tables of both years) and the ten
PTB-XL records as redistributed by the 2020 Challenge (tests/data/ptbxl-real/cinc2020_HR).
"""
import ast
import filecmp
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ecg_core.data.labels import (
    PTBXL_TASKS,
    CincScoring,
    LabelError,
    load_cinc_scoring,
    load_ptbxl,
    parse_cinc_comments,
)

PACKAGED_TABLES = Path(__file__).resolve().parents[3] / "ecg_core" / "data" / "tables"


@pytest.fixture(scope="module")
def ptbxl_root(data_dir) -> Path:
    return data_dir / "ptbxl-real"


@pytest.fixture(scope="module")
def ptbxl(ptbxl_root):
    return load_ptbxl(ptbxl_root)


@pytest.fixture(scope="module")
def scoring() -> dict[int, CincScoring]:
    return {year: load_cinc_scoring(year) for year in (2020, 2021)}


def _copy_ptbxl(ptbxl_root: Path, tmp_path: Path) -> Path:
    for name in ("ptbxl_database.csv", "scp_statements.csv"):
        shutil.copyfile(ptbxl_root / name, tmp_path / name)
    return tmp_path


def _edit_row(path: Path, ecg_id: int, old: str, new: str) -> None:
    """Replace text once inside the CSV line of one ecg_id, leaving every other byte as it was."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    (index,) = [i for i, line in enumerate(lines) if line.startswith(f"{ecg_id},")]
    assert lines[index].count(old) == 1, old
    lines[index] = lines[index].replace(old, new)
    path.write_text("".join(lines), encoding="utf-8")


def _single_line(message: str) -> bool:
    return "\n" not in message and "\r" not in message


# ------------------------------------------------------------------------------------------------ PTB-XL


def test_ptbxl_vocabularies_have_the_published_sizes(ptbxl):
    # Wagner et al. 2020: 71 statements, 44 diagnostic, 19 form, 12 rhythm; 23 subclasses, 5 superclasses.
    assert set(ptbxl.classes) == set(PTBXL_TASKS)
    assert {task: len(names) for task, names in ptbxl.classes.items()} == {
        "all": 71, "diag": 44, "subdiag": 23, "superdiag": 5, "form": 19, "rhythm": 12}
    assert ptbxl.classes["superdiag"] == ["CD", "HYP", "MI", "NORM", "STTC"]
    for names in ptbxl.classes.values():
        assert names == sorted(set(names))
    # 4 statements are both diagnostic and form (NDT, NST_, DIG, LNGQT).
    assert sorted(set(ptbxl.classes["diag"]) & set(ptbxl.classes["form"])) == ["DIG", "LNGQT", "NDT", "NST_"]


def test_ptbxl_record_table_shape_and_types(ptbxl):
    records = ptbxl.records
    assert len(records) == 521
    assert records.index.name == "ecg_id"
    assert records.index.is_unique and records.index.dtype.kind == "i"
    assert {"patient_id", "strat_fold", "report", "age", "sex", "filename_hr", "filename_lr"} <= set(records)
    assert {f"y_{task}" for task in PTBXL_TASKS} <= set(records)
    assert records["strat_fold"].dtype == "int64"
    assert records["strat_fold"].between(1, 10).all()
    assert set(records["strat_fold"]) == set(range(1, 11))
    assert records["age"].dtype == "float64"
    assert set(records["sex"]) == {"M", "F"}
    assert all(isinstance(pid, str) and pid.isdigit() for pid in records["patient_id"])
    # Recordings of one patient stay in one fold (the PTB-XL stratification).
    assert records.groupby("patient_id")["strat_fold"].nunique().max() == 1
    assert records.loc[1, "filename_hr"] == "records500/00000/00001_hr"
    assert records.loc[1, "filename_lr"] == "records100/00000/00001_lr"


def test_ptbxl_labels_are_sorted_and_inside_the_vocabularies(ptbxl):
    for task in PTBXL_TASKS:
        vocab = set(ptbxl.classes[task])
        for labels in ptbxl.records[f"y_{task}"]:
            assert isinstance(labels, list)
            assert labels == sorted(set(labels))
            assert set(labels) <= vocab


@pytest.mark.parametrize("ecg_id, expected", [
    # {'NORM': 100.0, 'LVOLT': 0.0, 'SR': 0.0}: LVOLT is a form statement, SR a rhythm statement.
    (1, {"all": ["LVOLT", "NORM", "SR"], "diag": ["NORM"], "subdiag": ["NORM"], "superdiag": ["NORM"],
         "form": ["LVOLT"], "rhythm": ["SR"]}),
    # {'NORM': 80.0, 'SBRAD': 0.0}
    (2, {"all": ["NORM", "SBRAD"], "diag": ["NORM"], "subdiag": ["NORM"], "superdiag": ["NORM"],
         "form": [], "rhythm": ["SBRAD"]}),
    # {'IMI': 35.0, 'ABQRS': 0.0, 'SR': 0.0}: ABQRS is form only.
    (8, {"all": ["ABQRS", "IMI", "SR"], "diag": ["IMI"], "subdiag": ["IMI"], "superdiag": ["MI"],
         "form": ["ABQRS"], "rhythm": ["SR"]}),
    # {'IMI': 15.0, 'LNGQT': 100.0, 'NST_': 100.0, 'DIG': 100.0, 'ABQRS': 0.0, 'SR': 0.0}: LNGQT and DIG
    # have subclass STTC, NST_ its own subclass; DIG, LNGQT, NST_ are diagnostic and form.
    (39, {"all": ["ABQRS", "DIG", "IMI", "LNGQT", "NST_", "SR"], "diag": ["DIG", "IMI", "LNGQT", "NST_"],
          "subdiag": ["IMI", "NST_", "STTC"], "superdiag": ["MI", "STTC"],
          "form": ["ABQRS", "DIG", "LNGQT", "NST_"], "rhythm": ["SR"]}),
    # {'CLBBB': 100.0, 'STACH': 0.0}
    (279, {"all": ["CLBBB", "STACH"], "diag": ["CLBBB"], "subdiag": ["CLBBB"], "superdiag": ["CD"],
           "form": [], "rhythm": ["STACH"]}),
])
def test_ptbxl_known_rows(ptbxl, ecg_id, expected):
    row = ptbxl.records.loc[ecg_id]
    assert {task: row[f"y_{task}"] for task in PTBXL_TASKS} == expected


def test_ptbxl_metadata_of_known_rows(ptbxl):
    records = ptbxl.records
    first = records.loc[1]
    assert (first["patient_id"], first["strat_fold"], first["age"], first["sex"]) == ("15709", 3, 56.0, "F")
    assert first["report"] == "sinusrhythmus periphere niederspannung"
    second = records.loc[2]
    assert (second["patient_id"], second["strat_fold"], second["age"], second["sex"]) == (
        "13243", 2, 19.0, "M")
    assert records.loc[8, "report"].startswith("sinusrhythmus linkstyp qrs(t) abnormal")
    # Unknown ages stay nan; raw ages above 89 become 90 ("90 or older").
    assert sorted(records.index[records["age"].isna()]) == [108, 255, 256, 346, 540]
    assert records.loc[279, "age"] == 90.0 and records.loc[282, "age"] == 90.0
    assert records.loc[351, "age"] == 90.0
    assert records["age"].max() == 90.0


def test_ptbxl_labels_match_a_direct_aggregation_of_the_csv(ptbxl, ptbxl_root):
    """Independent re-derivation with pandas, the way the benchmark's compute_label_aggregations does it."""
    statements = pd.read_csv(ptbxl_root / "scp_statements.csv", index_col=0)
    database = pd.read_csv(ptbxl_root / "ptbxl_database.csv", index_col="ecg_id")
    diagnostic = statements[statements["diagnostic"] == 1.0]
    subclass, superclass = diagnostic["diagnostic_subclass"], diagnostic["diagnostic_class"]
    for ecg_id, text in database["scp_codes"].items():
        keys = set(ast.literal_eval(text))
        row = ptbxl.records.loc[ecg_id]
        assert row["y_all"] == sorted(keys)
        assert row["y_diag"] == sorted(keys & set(diagnostic.index))
        assert row["y_subdiag"] == sorted({subclass[k] for k in keys & set(diagnostic.index)})
        assert row["y_superdiag"] == sorted({superclass[k] for k in keys & set(diagnostic.index)})
        assert row["y_form"] == sorted(keys & set(statements.index[statements["form"] == 1.0]))
        assert row["y_rhythm"] == sorted(keys & set(statements.index[statements["rhythm"] == 1.0]))
    expected_ids = database["patient_id"].map(lambda pid: str(int(pid))).tolist()
    assert expected_ids == ptbxl.records["patient_id"].tolist()


def test_ptbxl_vocabulary_comes_from_scp_statements(ptbxl_root, tmp_path):
    root = _copy_ptbxl(ptbxl_root, tmp_path)
    with (root / "scp_statements.csv").open("a", encoding="utf-8") as handle:
        handle.write("XTRA,an extra statement,1.0,,1.0,HYP,XSUB,test,an extra statement,,,,\n")
    table = load_ptbxl(root)
    assert len(table.classes["all"]) == 72 and "XTRA" in table.classes["all"]
    assert len(table.classes["diag"]) == 45 and len(table.classes["rhythm"]) == 13
    assert len(table.classes["subdiag"]) == 24 and "XSUB" in table.classes["subdiag"]
    assert len(table.classes["superdiag"]) == 5
    assert len(table.classes["form"]) == 19


def test_ptbxl_age_stored_as_300_means_90_or_older(ptbxl_root, tmp_path):
    root = _copy_ptbxl(ptbxl_root, tmp_path)
    # PTB-XL v1.0.2+ stores ages above 89 as 300 (ptbxl_v102_changelog.txt, change 0).
    _edit_row(root / "ptbxl_database.csv", 279, "279,437.0,91.0,0,", "279,437.0,300.0,0,")
    assert load_ptbxl(root).records.loc[279, "age"] == 90.0


def test_ptbxl_missing_column_names_file_and_column(ptbxl_root, tmp_path):
    root = _copy_ptbxl(ptbxl_root, tmp_path)
    path = root / "ptbxl_database.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.drop(columns=["strat_fold"]).to_csv(path, index=False)
    with pytest.raises(LabelError) as info:
        load_ptbxl(root)
    message = str(info.value)
    assert str(path) in message and "strat_fold" in message and _single_line(message)


def test_ptbxl_missing_statement_column(ptbxl_root, tmp_path):
    root = _copy_ptbxl(ptbxl_root, tmp_path)
    path = root / "scp_statements.csv"
    frame = pd.read_csv(path, index_col=0, dtype=str, keep_default_na=False)
    frame.drop(columns=["diagnostic_subclass"]).to_csv(path)
    with pytest.raises(LabelError, match="diagnostic_subclass") as info:
        load_ptbxl(root)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("garbled", [
    "\"{'NORM': 80.0, 'SBRAD'\"",                       # truncated literal
    "\"__import__('os').system('true')\"",             # code, never evaluated
    "\"['NORM', 'SBRAD']\"",                            # a literal but not a dict
])
def test_ptbxl_garbled_scp_codes_names_file_and_row(ptbxl_root, tmp_path, garbled):
    root = _copy_ptbxl(ptbxl_root, tmp_path)
    path = root / "ptbxl_database.csv"
    _edit_row(path, 2, "\"{'NORM': 80.0, 'SBRAD': 0.0}\"", garbled)
    with pytest.raises(LabelError) as info:
        load_ptbxl(root)
    message = str(info.value)
    assert str(path) in message and "scp_codes" in message and "ecg_id=2" in message
    assert _single_line(message)


def test_ptbxl_unknown_statement_is_an_error(ptbxl_root, tmp_path):
    root = _copy_ptbxl(ptbxl_root, tmp_path)
    _edit_row(root / "ptbxl_database.csv", 2, "'SBRAD': 0.0", "'XYZ': 0.0")
    with pytest.raises(LabelError, match="ecg_id=2.*XYZ"):
        load_ptbxl(root)


def test_ptbxl_bad_fold_and_missing_files(ptbxl_root, tmp_path):
    root = _copy_ptbxl(ptbxl_root, tmp_path)
    _edit_row(root / "ptbxl_database.csv", 2, ",2,records100/", ",11,records100/")
    with pytest.raises(LabelError, match="ecg_id=2.*strat_fold"):
        load_ptbxl(root)
    (root / "ptbxl_database.csv").unlink()
    with pytest.raises(LabelError, match="ptbxl_database.csv: file not found"):
        load_ptbxl(root)
    with pytest.raises(LabelError, match="scp_statements.csv: file not found"):
        load_ptbxl(tmp_path / "nowhere")


# ------------------------------------------------------------------------------- Challenge scoring tables


def test_packaged_tables_are_unmodified_copies(data_dir):
    for year in (2020, 2021):
        source = data_dir / "challenge-real" / "tables" / str(year)
        packaged = PACKAGED_TABLES / f"cinc{year}"
        names = sorted(path.name for path in source.glob("*.csv"))
        assert names == sorted(path.name for path in packaged.glob("*.csv"))
        for name in names:
            assert filecmp.cmp(source / name, packaged / name, shallow=False), name
        licence = (packaged / "LICENSE.txt").read_text(encoding="utf-8")
        assert f"physionetchallenges/evaluation-{year}" in licence and "BSD 2-Clause" in licence
    commits = {2020: "8ad02421902fb5c99ad9695f480a05dc3b8969e5",
               2021: "e2a75fc01f729cb74cc4e853e054ce81e28381fc"}
    for year, commit in commits.items():
        assert commit in (PACKAGED_TABLES / f"cinc{year}" / "LICENSE.txt").read_text(encoding="utf-8")


def test_cinc2020_scored_classes(scoring):
    s2020 = scoring[2020]
    assert s2020.year == 2020 and s2020.tables_dir == PACKAGED_TABLES / "cinc2020"
    assert len(s2020.equivalent) == 27 and len(s2020.classes) == 24
    merged = {code: canon for code, canon in s2020.equivalent.items() if code != canon}
    assert merged == {"59118001": "713427006", "63593006": "284470004", "17338001": "427172004"}
    assert s2020.abbreviations["164889003"] == "AF"
    merged_classes = ("713427006", "284470004", "427172004")
    assert [s2020.abbreviations[c] for c in merged_classes] == ["CRBBB", "PAC", "PVC"]
    assert set(s2020.abbreviations) == set(s2020.classes)
    # LBBB and its complete form are not merged in 2020 (CLBBB is not even scored that year).
    assert s2020.equivalent["164909002"] == "164909002" and "733534002" not in s2020.equivalent
    assert s2020.classes[:5] == ["270492004", "164889003", "164890007", "426627000", "713427006"]


def test_cinc2021_scored_classes(scoring):
    s2021 = scoring[2021]
    assert len(s2021.equivalent) == 30 and len(s2021.classes) == 26
    merged = {code: canon for code, canon in s2021.equivalent.items() if code != canon}
    assert merged == {"59118001": "713427006", "63593006": "284470004", "17338001": "427172004",
                      "164909002": "733534002"}
    assert s2021.abbreviations["733534002"] == "CLBBB" and s2021.abbreviations["365413008"] == "PRWP"
    assert "164909002" not in s2021.classes and "733534002" in s2021.classes


@pytest.mark.parametrize("year", [2020, 2021])
def test_cinc_classes_agree_with_the_weights_header(scoring, data_dir, year):
    header = (data_dir / "challenge-real" / "tables" / str(year) / "weights.csv").read_text().splitlines()[0]
    entries = header.split(",")[1:]
    groups = [entry.split("|") for entry in entries]
    s = scoring[year]
    assert sorted(code for group in groups for code in group) == sorted(s.equivalent)
    assert {s.equivalent[group[0]] for group in groups} == set(s.classes)
    assert all(len({s.equivalent[code] for code in group}) == 1 for group in groups)
    if year == 2021:  # merged classes are written "code1|code2" there, canonical first
        assert sorted(entry for entry in entries if "|" in entry) == [
            "284470004|63593006", "427172004|17338001", "713427006|59118001", "733534002|164909002"]
        assert len(entries) == len(s.classes)


def test_cinc_tables_dir_argument_and_unknown_year(data_dir, scoring):
    from_tests = load_cinc_scoring(2021, data_dir / "challenge-real" / "tables" / "2021")
    assert from_tests.classes == scoring[2021].classes
    assert from_tests.equivalent == scoring[2021].equivalent
    assert from_tests.tables_dir == data_dir / "challenge-real" / "tables" / "2021"
    with pytest.raises(LabelError, match="2019"):
        load_cinc_scoring(2019)
    with pytest.raises(LabelError, match="dx_mapping_scored.csv: file not found"):
        load_cinc_scoring(2020, data_dir / "nowhere")


def test_cinc_merges_are_read_from_the_notes_column(data_dir, tmp_path):
    # Without the Notes, the 2020 tables give 27 separate classes (its weights.csv lists all 27 codes).
    shutil.copytree(data_dir / "challenge-real" / "tables" / "2020", tmp_path / "2020")
    path = tmp_path / "2020" / "dx_mapping_scored.csv"
    lines = path.read_text().splitlines(keepends=True)
    stripped = [line.split("We score")[0] + "\n" if "We score" in line else line for line in lines]
    path.write_text("".join(stripped))
    assert len(load_cinc_scoring(2020, tmp_path / "2020").classes) == 27
    # In 2021 the weights.csv header merges LBBB into CLBBB: dropping that Note contradicts it.
    shutil.copytree(data_dir / "challenge-real" / "tables" / "2021", tmp_path / "2021")
    path = tmp_path / "2021" / "dx_mapping_scored.csv"
    text = path.read_text()
    assert text.count("We score 733534002 and 164909002 as the same diagnosis") == 2
    path.write_text(text.replace("We score 733534002 and 164909002 as the same diagnosis", ""))
    with pytest.raises(LabelError, match="weights.csv.*733534002"):
        load_cinc_scoring(2021, tmp_path / "2021")


# ------------------------------------------------------------------------------- Challenge header comments


def _header_comments(path: Path) -> list[str]:
    lines = path.read_text(encoding="ascii").splitlines()
    return [line.lstrip("#").strip() for line in lines if line.startswith("#")]


# record -> (year, age, sex, dx, y_scored); values read by hand from the headers and the scoring tables.
REAL_HEADERS = {
    "challenge-real/cinc2020/E00009": (2020, 76.0, "M", ["428750005", "39732003", "427084000"],
                                       ["39732003", "427084000"]),  # NSSTTA unscored; LAD, STach
    "challenge-real/cinc2020/HR00599": (2020, 73.0, "F", ["164865005", "164947007", "426783006"],
                                        ["164947007", "426783006"]),  # MI unscored; LPR, NSR
    "challenge-real/cinc2020/Q0017": (2020, 65.0, "F", ["63593006"], ["284470004"]),  # SVPB scored as PAC
    "challenge-real/cinc2020/Q0048": (2020, 79.0, "F", ["164889003", "428750005"], ["164889003"]),
    "challenge-real/cinc2020/Q0398": (2020, 82.0, "M", ["164873001", "164867002", "164865005", "10370003",
                                                        "428750005"], ["10370003"]),
    "challenge-real/cinc2020/Q1805": (2020, 77.0, "M", ["164867002", "59118001", "164917005"],
                                      ["713427006", "164917005"]),  # RBBB scored as CRBBB; QAb
    "challenge-real/cinc2020_dx_stripped/A0001": (2020, 74.0, "M", [], []),
    "challenge-real/cinc2020_dx_stripped/S0001": (2020, 81.0, "F", [], []),  # "Sex: female"
    "challenge-real/cinc2021/E07500": (2021, 78.0, "M", ["67741000119109", "426177001"], ["426177001"]),
    "challenge-real/cinc2021/HR06000": (2021, 59.0, "F", ["164934002", "426783006"],
                                        ["426783006", "164934002"]),  # NSR, TAb in table order
    "challenge-real/cinc2021/JS20000": (2021, 84.0, "F", ["284470004", "427084000", "698252002", "55930002"],
                                        ["698252002", "284470004", "427084000"]),
    "challenge-real/cinc2021/JS20017": (2021, 89.0, "F", ["284470004", "164930006", "427084000", "55827005",
                                                          "59931005", "698252002", "365413008", "164934002"],
                                        ["698252002", "284470004", "365413008", "427084000", "164934002",
                                         "59931005"]),
}


@pytest.mark.parametrize("record", sorted(REAL_HEADERS))
def test_real_challenge_headers(data_dir, scoring, record):
    year, age, sex, dx, y_scored = REAL_HEADERS[record]
    info = parse_cinc_comments(_header_comments(data_dir / f"{record}.hea"), scoring[year])
    assert (info.age, info.sex, info.dx, info.y_scored) == (age, sex, dx, y_scored)


def test_every_real_header_parses(data_dir, scoring):
    headers = sorted((data_dir / "challenge-real").glob("cinc20*/*.hea"))
    headers += sorted((data_dir / "ptbxl-real" / "cinc2020_HR").glob("*.hea"))
    assert len(headers) == 22
    for path in headers:
        s = scoring[2021 if "cinc2021" in path.parts[-2] else 2020]
        info = parse_cinc_comments(_header_comments(path), s)
        assert info.sex in ("M", "F") and math.isfinite(info.age), path
        assert len(info.dx) == len(set(info.dx))
        assert info.y_scored == [code for code in s.classes if code in info.y_scored]


def test_challenge_copies_of_ptbxl_match_the_ptbxl_table(data_dir, scoring, ptbxl):
    # HR000NN of the 2020 Challenge is PTB-XL ecg_id NN; these copies have an empty '#Dx:' (with or
    # without a trailing space), which must not swallow the '#Rx:' line that follows.
    for path in sorted((data_dir / "ptbxl-real" / "cinc2020_HR").glob("HR*.hea")):
        info = parse_cinc_comments(_header_comments(path), scoring[2020])
        row = ptbxl.records.loc[int(path.stem[2:])]
        assert (info.age, info.sex) == (row["age"], row["sex"]), path.name
        assert info.dx == [] and info.y_scored == []


@pytest.mark.parametrize("comments, age, sex", [
    (["Age: NaN", "Sex: Male"], math.nan, "M"),
    (["Age: Unknown", "Sex: male"], math.nan, "M"),
    (["Sex: M"], math.nan, "M"),
    (["Age: 53", "Sex: Female"], 53.0, "F"),
    (["age : 53.5", "SEX: f"], 53.5, "F"),
    (["Age: 40", "Sex: Unknown"], 40.0, ""),
    ([], math.nan, ""),
])
def test_age_and_sex_variants(scoring, comments, age, sex):
    info = parse_cinc_comments(comments, scoring[2020])
    assert info.sex == sex
    assert (math.isnan(info.age) and math.isnan(age)) or info.age == age


def test_dx_variants_and_merges(scoring):
    s2020, s2021 = scoring[2020], scoring[2021]
    assert parse_cinc_comments(["Dx: 59118001"], s2020).y_scored == ["713427006"]
    assert parse_cinc_comments(["Dx: 59118001"], s2021).y_scored == ["713427006"]
    # LBBB: its own class in 2020, merged into CLBBB in 2021.
    assert parse_cinc_comments(["Dx: 164909002"], s2020).y_scored == ["164909002"]
    assert parse_cinc_comments(["Dx: 164909002"], s2021).y_scored == ["733534002"]
    # Both members of a merged pair and a repeated code: one class, codes de-duplicated in order.
    info = parse_cinc_comments(["Dx: 284470004,63593006,284470004,164889003"], s2020)
    assert info.dx == ["284470004", "63593006", "164889003"]
    assert info.y_scored == ["164889003", "284470004"]
    # Liberal about '#', case and spaces; each line on its own (an empty Dx does not take the next line).
    assert parse_cinc_comments(["# dx :  164889003 , 426783006 "], s2020).dx == ["164889003", "426783006"]
    assert parse_cinc_comments(["#Dx:", "#Rx: Unknown"], s2020).dx == []
    assert parse_cinc_comments(["Dx:\nRx: 164889003"], s2020).dx == []
    assert parse_cinc_comments(["Dx: 426783006", "Dx: 164889003"], s2020).dx == ["426783006", "164889003"]
    with pytest.raises(LabelError, match="not a SNOMED CT code"):
        parse_cinc_comments(["Dx: AF"], s2020)
