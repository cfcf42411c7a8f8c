"""Labels for PTB-XL and the PhysioNet/CinC Challenge 2020/2021.

PTB-XL
    ``load_ptbxl(root)`` reads ``ptbxl_database.csv`` and ``scp_statements.csv`` (the PhysioNet PTB-XL layout)
    and derives the six label sets of the PTB-XL benchmark: Strodthoff, Wagner, Schaeffter, Samek,
    "Deep Learning for ECG Analysis: Benchmarks and Insights from PTB-XL", IEEE JBHI 25(5), 2021,
    https://doi.org/10.1109/JBHI.2020.3022989, whose reference code is
    helme/ecg_ptbxl_benchmarking ``code/utils/utils.py::compute_label_aggregations``:

    - ``all``: every statement key of ``scp_codes`` (the likelihood is ignored, including 0.0);
    - ``diag``: the keys whose statement has ``diagnostic == 1``;
    - ``subdiag``: the ``diagnostic_subclass`` of those keys;
    - ``superdiag``: the ``diagnostic_class`` of those keys (NORM, MI, STTC, CD, HYP);
    - ``form``: the keys whose statement has ``form == 1``;
    - ``rhythm``: the keys whose statement has ``rhythm == 1``.

    The class vocabularies are derived from ``scp_statements.csv`` (PTB-XL 1.0.x: 71 statements, 44
    diagnostic, 19 form, 12 rhythm, 23 diagnostic subclasses, 5 superclasses; Wagner et al., "PTB-XL, a
    large publicly available electrocardiography dataset", Sci. Data 7:154, 2020,
    https://doi.org/10.1038/s41597-020-0495-6). The benchmark's ``select_data`` later drops classes with
    too few samples; that is a property of an experiment, not of the labels, and is left to the caller.

    Deviation from the benchmark: a statement in ``scp_codes`` that ``scp_statements.csv`` does not define
    raises ``LabelError`` (the benchmark would silently add it to ``all``), so ``y_all`` always lies within
    ``classes["all"]``.

    Ages: from PTB-XL v1.0.2 on, ages above 89 are stored as 300 for privacy (``ptbxl_v102_changelog.txt``,
    "Change 0"); releases before that hold the raw age (90, 91, ...). Both are mapped to 90.0, meaning
    "90 or older", so every release gives the same value. Sex is coded 0 = male, 1 = female.

PhysioNet/CinC Challenge 2020/2021
    ``load_cinc_scoring(year)`` reads the official scoring tables (``dx_mapping_scored.csv``, ``weights.csv``
    and, for 2021, ``weights_abbreviations.csv``) of physionetchallenges/evaluation-2020 and
    physionetchallenges/evaluation-2021, shipped unmodified in ``ecg_core/data/tables/cinc{year}/`` (see
    the LICENSE.txt there for commit and licence). Some scored SNOMED CT codes are scored as one class.
    The merges are read from the Notes column of ``dx_mapping_scored.csv`` ("We score 713427006 and
    59118001 as the same diagnosis."), present in both years; the first code of the sentence is the
    canonical one, as in the Challenge scoring code (``equivalent_classes = [['713427006', '59118001'],
    ['284470004', '63593006'], ['427172004', '17338001']]`` in evaluation-2020 ``evaluate_12ECG_score.py``,
    which keeps the first code of each set as the representative class). The 2021 ``weights.csv`` header
    writes merged classes as ``code1|code2``; the loader cross-checks the Notes against it, and against
    the weight matrix (merged codes listed separately, as in 2020, must have identical weights).
    Result: 2020 has 27 scored codes in 24 classes, 2021 has 30 codes in 26 classes.

    ``parse_cinc_comments`` reads the ``Age``/``Sex``/``Dx`` header comments (format of the Challenge
    ``helper_code.py``: ``#Age: 76``, ``#Sex: Male``, ``#Dx: 164889003,59118001``; the 2021 rewrites use
    ``# Dx:``). Ages are returned as written (no PTB-XL style capping).
"""
from __future__ import annotations

import ast
import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

PTBXL_TASKS: tuple[str, ...] = ("all", "diag", "subdiag", "superdiag", "form", "rhythm")

#: Ages at or above this value (raw 90, 91, ... before v1.0.2; 300 from v1.0.2 on) mean "90 or older".
PTBXL_AGE_CAP = 90.0

_PTBXL_DATABASE = "ptbxl_database.csv"
_PTBXL_STATEMENTS = "scp_statements.csv"
_PTBXL_COLUMNS = ("ecg_id", "patient_id", "age", "sex", "report", "scp_codes", "strat_fold",
                  "filename_lr", "filename_hr")
_STATEMENT_COLUMNS = ("diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass")

_TABLES_ROOT = Path(__file__).resolve().parent / "tables"
_CINC_YEARS = (2020, 2021)
_SAME_DIAGNOSIS = re.compile(r"we\s+score\s+(\d+)\s+and\s+(\d+)\s+as\s+the\s+same\s+diagnosis", re.IGNORECASE)
_COMMENT = re.compile(r"^[#\s]*([A-Za-z]+)\s*:\s*(.*?)\s*$")
_SNOMED_CODE = re.compile(r"^\d+$")


class LabelError(ValueError):
    """A label table or header comment that cannot be read; one line naming file and problem."""


def _one_line(text: object, limit: int = 120) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------------
# PTB-XL
# --------------------------------------------------------------------------------------------------------


@dataclass
class PtbxlTable:
    """PTB-XL records with their labels for every task in ``PTBXL_TASKS``.

    ``records``: index ``ecg_id`` (int); columns ``patient_id`` (str), ``strat_fold`` (int 1..10),
    ``report`` (str), ``age`` (float, nan if unknown, 90.0 = 90 or older), ``sex`` ("M"/"F"/""),
    ``filename_hr``, ``filename_lr`` (str, relative to the PTB-XL root) and ``y_<task>`` (sorted list[str]).
    ``classes``: task -> sorted class vocabulary derived from ``scp_statements.csv``.
    """

    records: pd.DataFrame
    classes: dict[str, list[str]]


def _read_csv_text(path: Path, **kwargs) -> pd.DataFrame:
    """Read a CSV with every cell as text ("" when empty) so that each field is parsed explicitly."""
    if not path.is_file():
        raise LabelError(f"{path}: file not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise LabelError(f"{path}: cannot be read as CSV ({_one_line(exc)})") from exc


def _require_columns(path: Path, frame: pd.DataFrame, required: tuple[str, ...]) -> None:
    missing = [name for name in required if name not in frame.columns]
    if missing:
        raise LabelError(f"{path}: missing column(s) {', '.join(missing)}")


def _statement_flag(path: Path, key: str, column: str, text: str) -> bool:
    """scp_statements.csv flags are 1.0 or empty."""
    if not text.strip():
        return False
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value not in (0.0, 1.0):
        raise LabelError(f"{path}: statement {key}: column {column} must be 1, 0 or empty, got {text!r}")
    return value == 1.0


def _read_statements(path: Path) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    """Return (statement key -> {diagnostic: subclass/class mapping}, task -> sorted vocabulary)."""
    frame = _read_csv_text(path, index_col=0)
    _require_columns(path, frame, _STATEMENT_COLUMNS)
    keys = [str(key).strip() for key in frame.index]
    if any(not key for key in keys):
        raise LabelError(f"{path}: a statement row has an empty key (first column)")
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise LabelError(f"{path}: duplicated statement key(s) {', '.join(duplicated)}")

    statements: dict[str, dict[str, str]] = {}
    vocab: dict[str, set[str]] = {task: set() for task in PTBXL_TASKS}
    for key, (_, row) in zip(keys, frame.iterrows()):
        flags = {column: _statement_flag(path, key, column, row[column])
                 for column in ("diagnostic", "form", "rhythm")}
        subclass = row["diagnostic_subclass"].strip() if flags["diagnostic"] else ""
        superclass = row["diagnostic_class"].strip() if flags["diagnostic"] else ""
        statements[key] = {"diag": key if flags["diagnostic"] else "", "subdiag": subclass,
                           "superdiag": superclass, "form": key if flags["form"] else "",
                           "rhythm": key if flags["rhythm"] else "", "all": key}
        for task, label in statements[key].items():
            if label:  # the benchmark skips diagnostic statements without (sub)class ("nan")
                vocab[task].add(label)
    return statements, {task: sorted(vocab[task]) for task in PTBXL_TASKS}


def _parse_scp_codes(path: Path, ecg_id: int, text: str, statements: dict[str, dict[str, str]]) -> list[str]:
    """Parse the Python-literal dict ``{'NORM': 100.0, 'SR': 0.0}`` safely; return its statement keys."""
    try:
        codes = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise LabelError(f"{path}: unparsable scp_codes in row ecg_id={ecg_id}: {_one_line(repr(text), 80)} "
                         f"({type(exc).__name__})") from exc
    if not isinstance(codes, dict) or not all(
            isinstance(key, str) and isinstance(value, (int, float)) and not isinstance(value, bool)
            for key, value in codes.items()):
        raise LabelError(f"{path}: unparsable scp_codes in row ecg_id={ecg_id}: {_one_line(repr(text), 80)} "
                         "(expected a dict of statement -> likelihood)")
    unknown = sorted(key for key in codes if key not in statements)
    if unknown:
        raise LabelError(f"{path}: scp_codes in row ecg_id={ecg_id} name statement(s) {', '.join(unknown)} "
                         f"not defined in {_PTBXL_STATEMENTS}")
    return list(codes)


def _parse_int(path: Path, row_name: str, column: str, text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not value.is_integer():
        raise LabelError(f"{path}: {row_name}: column {column} must be an integer, got {text!r}")
    return int(value)


def _parse_ptbxl_age(path: Path, ecg_id: int, text: str) -> float:
    if not text.strip():
        return math.nan
    try:
        age = float(text)
    except ValueError as exc:
        raise LabelError(f"{path}: row ecg_id={ecg_id}: column age must be a number, got {text!r}") from exc
    if math.isnan(age):
        return math.nan
    if age < 0:
        raise LabelError(f"{path}: row ecg_id={ecg_id}: negative age {text!r}")
    return min(age, PTBXL_AGE_CAP)


def _parse_ptbxl_sex(path: Path, ecg_id: int, text: str) -> str:
    if not text.strip():
        return ""
    try:
        code = float(text)
    except ValueError:
        code = math.nan
    if code == 0.0:
        return "M"
    if code == 1.0:
        return "F"
    raise LabelError(f"{path}: row ecg_id={ecg_id}: column sex must be 0 (male) or 1 (female), got {text!r}")


def load_ptbxl(root: Path) -> PtbxlTable:
    """Read PTB-XL's ``ptbxl_database.csv`` and ``scp_statements.csv`` from ``root`` and label every record.

    Label sets follow ``compute_label_aggregations`` of the PTB-XL benchmark (see the module docstring).
    Raises ``LabelError`` (one line naming the file and problem) for a missing file or column, a duplicated
    ``ecg_id``, an unparsable ``scp_codes`` cell, an unknown statement, or a bad fold/sex/age value.
    """
    root = Path(root)
    statements_path = root / _PTBXL_STATEMENTS
    database_path = root / _PTBXL_DATABASE
    statements, classes = _read_statements(statements_path)
    frame = _read_csv_text(database_path)
    _require_columns(database_path, frame, _PTBXL_COLUMNS)

    rows: dict[str, list] = {name: [] for name in (
        "ecg_id", "patient_id", "strat_fold", "report", "age", "sex", "filename_hr", "filename_lr",
        *(f"y_{task}" for task in PTBXL_TASKS))}
    seen: set[int] = set()
    for line, row in enumerate(frame.itertuples(index=False), start=2):
        ecg_id = _parse_int(database_path, f"line {line}", "ecg_id", row.ecg_id)
        if ecg_id in seen:
            raise LabelError(f"{database_path}: duplicated ecg_id={ecg_id}")
        seen.add(ecg_id)
        where = f"row ecg_id={ecg_id}"
        if not row.patient_id.strip():
            raise LabelError(f"{database_path}: {where}: empty patient_id")
        fold = _parse_int(database_path, where, "strat_fold", row.strat_fold)
        if not 1 <= fold <= 10:
            raise LabelError(f"{database_path}: {where}: strat_fold must be in 1..10, got {fold}")
        keys = _parse_scp_codes(database_path, ecg_id, row.scp_codes, statements)

        rows["ecg_id"].append(ecg_id)
        # patient_id is written as a float ("15709.0"); keep the integer as text.
        rows["patient_id"].append(str(_parse_int(database_path, where, "patient_id", row.patient_id)))
        rows["strat_fold"].append(fold)
        rows["report"].append(row.report)
        rows["age"].append(_parse_ptbxl_age(database_path, ecg_id, row.age))
        rows["sex"].append(_parse_ptbxl_sex(database_path, ecg_id, row.sex))
        rows["filename_hr"].append(row.filename_hr)
        rows["filename_lr"].append(row.filename_lr)
        for task in PTBXL_TASKS:
            labels = {statements[key][task] for key in keys} - {""}
            rows[f"y_{task}"].append(sorted(labels))

    records = pd.DataFrame(rows).set_index("ecg_id")
    records["strat_fold"] = records["strat_fold"].astype("int64")
    records["age"] = records["age"].astype("float64")
    return PtbxlTable(records=records, classes=classes)


# --------------------------------------------------------------------------------------------------------
# PhysioNet/CinC Challenge 2020/2021
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CincScoring:
    """Scored classes of one Challenge year.

    ``classes``: canonical SNOMED CT codes after the official merges, in ``dx_mapping_scored.csv`` row order.
    ``abbreviations``: canonical code -> abbreviation of the canonical code's row (e.g. 713427006 -> CRBBB).
    ``equivalent``: every scored code -> its canonical code (identity for unmerged codes).
    ``tables_dir``: where the tables were read from.
    """

    year: int
    classes: list[str]
    abbreviations: dict[str, str]
    equivalent: dict[str, str]
    tables_dir: Path


def _normalise_column(name: str) -> str:
    """'SNOMED CT Code' (2020) and 'SNOMEDCTCode' (2021) -> 'snomedctcode'."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _read_dx_mapping(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise LabelError(f"{path}: file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [_normalise_column(name) for name in next(reader, [])]
            rows = [{name: (cells[i].strip() if i < len(cells) else "") for i, name in enumerate(header)}
                    for cells in reader if any(cells)]
    except (csv.Error, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: cannot be read as CSV ({_one_line(exc)})") from exc
    missing = [name for name in ("snomedctcode", "abbreviation", "notes") if name not in header]
    if missing:
        raise LabelError(f"{path}: missing column(s) {', '.join(missing)} (normalised names)")
    return rows


def _read_table_header(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header entries and body rows of a Challenge weights table (first cell of the header is empty)."""
    if not path.is_file():
        raise LabelError(f"{path}: file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            table = [[cell.strip() for cell in cells] for cells in csv.reader(handle) if any(cells)]
    except (csv.Error, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: cannot be read as CSV ({_one_line(exc)})") from exc
    if not table or len(table[0]) < 2:
        raise LabelError(f"{path}: empty table")
    return table[0][1:], table[1:]


def _merge_pairs(path: Path, rows: list[dict[str, str]]) -> dict[str, str]:
    """Every scored code -> canonical code, from Notes 'We score A and B as the same diagnosis' (A kept)."""
    codes = [row["snomedctcode"] for row in rows]
    parent = {code: code for code in codes}

    def canonical(code: str) -> str:
        while parent[code] != code:
            code = parent[code]
        return code

    for row in rows:
        for first, second in _SAME_DIAGNOSIS.findall(row["notes"]):
            for code in (first, second):
                if code not in parent:
                    raise LabelError(f"{path}: Notes of {row['snomedctcode']} merge code {code}, "
                                     "which is not a scored code of this table")
            keep, drop = canonical(first), canonical(second)
            if keep != drop:
                parent[drop] = keep
    return {code: canonical(code) for code in codes}


def _check_weights(tables_dir: Path, equivalent: dict[str, str], row_abbreviations: dict[str, str]) -> None:
    """Cross-check the merges against weights.csv (and weights_abbreviations.csv where present).

    ``row_abbreviations``: every scored code -> the abbreviation on its own row of dx_mapping_scored.csv.
    """
    path = tables_dir / "weights.csv"
    header, body = _read_table_header(path)
    groups = [entry.split("|") for entry in header]
    listed = [code for group in groups for code in group]
    if sorted(listed) != sorted(equivalent):
        raise LabelError(f"{path}: header codes differ from the scored codes of dx_mapping_scored.csv "
                         f"(only in weights: {sorted(set(listed) - set(equivalent))}, "
                         f"only in dx_mapping: {sorted(set(equivalent) - set(listed))})")
    for group in groups:
        merged = {equivalent[code] for code in group}
        if len(merged) != 1 or (len(group) > 1 and group[0] not in merged):
            raise LabelError(f"{path}: header entry {'|'.join(group)} disagrees with the merges stated in "
                             "the Notes of dx_mapping_scored.csv")
    # Merged codes that weights.csv lists separately (2020) must be scored identically, as the 2021
    # evaluate_model.py asserts ("Check that equivalent classes have identical weights").
    if len(body) != len(header) or any(len(row) != len(header) + 1 for row in body):
        raise LabelError(f"{path}: weight matrix is not {len(header)}x{len(header)}")
    matrix = [row[1:] for row in body]
    position = {entry: i for i, entry in enumerate(header)}
    for i, entry in enumerate(header):
        representative = position.get(equivalent[entry.split("|")[0]])
        if representative is not None and representative != i:
            same_row = matrix[i] == matrix[representative]
            same_col = [row[i] for row in matrix] == [row[representative] for row in matrix]
            if not (same_row and same_col):
                raise LabelError(f"{path}: merged codes {header[representative]} and {entry} have different "
                                 "weights")
    abbreviations_path = tables_dir / "weights_abbreviations.csv"
    if abbreviations_path.is_file():
        names, _ = _read_table_header(abbreviations_path)
        expected = [row_abbreviations[group[0]] for group in groups]
        if [name.split("|")[0] for name in names] != expected:
            raise LabelError(f"{abbreviations_path}: header does not match weights.csv and the abbreviations "
                             "of dx_mapping_scored.csv")


def load_cinc_scoring(year: int, tables_dir: Path | None = None) -> CincScoring:
    """Scored classes of the PhysioNet/CinC Challenge ``year`` (2020 or 2021) with the official merges.

    ``tables_dir`` defaults to the tables shipped in ``ecg_core/data/tables/cinc{year}/`` (unmodified copies
    from physionetchallenges/evaluation-2020 and evaluation-2021). Raises ``LabelError`` for an unknown year,
    a missing table or column, duplicated codes, or merges that the Notes and weights.csv disagree on.
    """
    if tables_dir is None:
        if year not in _CINC_YEARS:
            raise LabelError(f"no packaged Challenge tables for year {year} (have {_CINC_YEARS})")
        tables_dir = _TABLES_ROOT / f"cinc{year}"
    tables_dir = Path(tables_dir)
    path = tables_dir / "dx_mapping_scored.csv"
    rows = _read_dx_mapping(path)
    codes = [row["snomedctcode"] for row in rows]
    bad = [code for code in codes if not _SNOMED_CODE.match(code)]
    if bad:
        raise LabelError(f"{path}: SNOMED CT code(s) that are not numbers: {bad}")
    duplicated = sorted({code for code in codes if codes.count(code) > 1})
    if duplicated:
        raise LabelError(f"{path}: duplicated SNOMED CT code(s) {', '.join(duplicated)}")

    equivalent = _merge_pairs(path, rows)
    classes = [code for code in codes if equivalent[code] == code]
    row_abbreviations = {row["snomedctcode"]: row["abbreviation"] for row in rows}
    _check_weights(tables_dir, equivalent, row_abbreviations)
    abbreviations = {code: row_abbreviations[code] for code in classes}
    return CincScoring(year=year, classes=classes, abbreviations=abbreviations, equivalent=equivalent,
                       tables_dir=tables_dir)


@dataclass
class CincHeaderInfo:
    """``Age``/``Sex``/``Dx`` of one Challenge header.

    ``age``: float, nan when "NaN"/"Unknown"/missing. ``sex``: "M"/"F"/"". ``dx``: SNOMED CT codes of the Dx
    comment, de-duplicated, in their original order. ``y_scored``: canonical scored codes present (after the
    merges), in ``CincScoring.classes`` order.
    """

    age: float
    sex: str
    dx: list[str]
    y_scored: list[str]


def _parse_cinc_age(text: str) -> float:
    try:
        age = float(text)
    except ValueError:  # "Unknown", "" and other non-numbers
        return math.nan
    return age if math.isfinite(age) and age >= 0 else math.nan


def _parse_cinc_sex(text: str) -> str:
    value = text.strip().lower()
    if value in ("male", "m"):
        return "M"
    if value in ("female", "f"):
        return "F"
    return ""


def parse_cinc_comments(comments: list[str], scoring: CincScoring) -> CincHeaderInfo:
    """Parse Challenge header comment lines (``"Dx: 164889003,59118001"``, ``"Age: 76"``, ``"Sex: Male"``).

    Lines may still carry their ``#``; keys are case-insensitive and spaces around ``:`` are allowed. Each
    line is matched on its own, so an empty ``Dx:`` (the test-set style) gives empty lists. Repeated codes
    (e.g. a Dx listing 284470004 twice) are kept once; several Dx lines are merged; the first Age/Sex line
    wins. A Dx entry that is not a SNOMED CT code (digits) raises ``LabelError``.
    """
    age, sex = math.nan, ""
    seen_age = seen_sex = False
    dx: list[str] = []
    for comment in comments:
        for line in str(comment).splitlines():
            match = _COMMENT.match(line)
            if match is None:
                continue
            key, value = match.group(1).lower(), match.group(2)
            if key == "dx":
                for code in (token for token in re.split(r"[,\s]+", value) if token):
                    if not _SNOMED_CODE.match(code):
                        raise LabelError(f"Dx comment {_one_line(repr(line), 80)}: {code!r} is not a "
                                         "SNOMED CT code")
                    if code not in dx:
                        dx.append(code)
            elif key == "age" and not seen_age:
                age, seen_age = _parse_cinc_age(value), True
            elif key == "sex" and not seen_sex:
                sex, seen_sex = _parse_cinc_sex(value), True
    present = {scoring.equivalent[code] for code in dx if code in scoring.equivalent}
    y_scored = [code for code in scoring.classes if code in present]
    return CincHeaderInfo(age=age, sex=sex, dx=dx, y_scored=y_scored)
