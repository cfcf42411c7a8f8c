"""The grid's aggregate job: every evaluation ``result.json`` into a local report and a W&B summary run.

Inputs (nothing else is read): ``<grid_dir>/<cell_id>/<stage>/result.json`` written by the evaluation jobs
(``jobs.linear_eval``, ``jobs.finetune``), and ``cfg.expected``, the evaluation run directories the plan
created. An expected run without a usable ``result.json`` is a *failed* row (with the reason and the
path of its newest log file), never silently dropped; a result found but not expected is included too.
A ``result.json`` with neither ``protocol`` nor ``macro_auroc`` is not an evaluation result and is
ignored unless expected.

Outputs in ``run_dir`` (``<grid_dir>/report/``), each written atomically, same inputs -> same files:

- ``results.csv``: one row per evaluation run, failed ones included (``state``, ``reason``, ``log``);
- ``per_class_auroc.csv``: one row per (run, class) with the test AUROC of that class;
- ``auroc_vs_fraction_<task>.png``: test macro AUROC vs label fraction per method and protocol, error
  bars = standard deviation over seeds;
- ``report.md``: per task a method x protocol x label-fraction table (mean +- std over seeds, n seeds),
  the plot, per-class AUROC at the largest label fraction; the failed runs; the pretraining runs used;

then a W&B run (group = grid name, job_type ``aggregate``) with the results and summary tables and the
plots, and finally the path of ``report.md`` is printed.

Statistics: mean and *sample* standard deviation (ddof=1) of the test macro AUROC over the seeds of a
(task, method, encoder, protocol, label fraction) group; with one seed there is no std.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import yaml

from ecg_core.atomic import write_bytes_atomic, write_text_atomic
from ecg_core.tracking import Tracker
from jobs.config import AggregateConfig

__all__ = ["RESULT_FILE", "COLUMNS", "MalformedResult", "collect", "load_result", "summarize", "run"]

RESULT_FILE = "result.json"
REPORT_FILE = "report.md"
RESULTS_CSV = "results.csv"
PER_CLASS_CSV = "per_class_auroc.csv"
PLOT_PREFIX = "auroc_vs_fraction_"
LOG_SUFFIXES = (".err", ".out", ".log")

METRICS = ("macro_auroc", "macro_auprc", "macro_f1", "challenge_score")
"""Headline test metrics of a result, each with a 95 % bootstrap interval ``<metric>_ci`` (ecg_core.scoring)."""
METRIC_NAMES = {"macro_auroc": "macro AUROC", "macro_auprc": "macro AUPRC", "macro_f1": "macro F1",
                "challenge_score": "Challenge score"}
_CI_COLUMNS = [f"{m}_ci_{end}" for m in METRICS for end in ("low", "high")]

COLUMNS = [
    "state", "task", "method", "variant", "baseline", "encoder", "protocol", "label_fraction", "seed",
    "macro_auroc", "macro_auroc_ci_low", "macro_auroc_ci_high", "macro_auprc", "macro_auprc_ci_low",
    "macro_auprc_ci_high", "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high", "challenge_score",
    "challenge_score_ci_low", "challenge_score_ci_high",
    "val_macro_auroc", "n_train", "n_val", "n_test", "checkpoint_step", "wall_s", "cell_id", "stage",
    "run_dir", "pretrain_run_id", "pretrain_dir", "excluded_classes", "reason", "log",
]
"""Columns of ``results.csv`` (``excluded_classes`` joined with ``;``; ``baseline`` is ``random init`` or
``supervised from scratch`` for the baselines' runs, empty otherwise)."""

_INT_COLUMNS = ["seed", "n_train", "n_val", "n_test", "checkpoint_step"]
_GROUP = ["task", "method", "variant", "encoder", "protocol", "label_fraction"]
_SORT = ["task", "method", "variant", "encoder", "protocol", "label_fraction", "seed", "run_dir"]

# result.json fields: name -> (JSON types accepted, required). Numbers are int or float (not bool).
_NUMBER = (int, float)
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "method": ((str,), True), "protocol": ((str,), True), "task": ((str,), True),
    "label_fraction": (_NUMBER, True), "seed": ((int,), True), "macro_auroc": (_NUMBER, True),
    "encoder": ((str,), False), "grid": ((str,), False), "cell_id": ((str,), False),
    "val_macro_auroc": (_NUMBER, False), "n_train": ((int,), False), "n_val": ((int,), False),
    "n_test": ((int,), False), "checkpoint_step": ((int,), False), "wall_s": (_NUMBER, False),
    "pretrain_run_id": ((str,), False), "pretrain_dir": ((str,), False),
    "per_class_auroc": ((dict,), False), "excluded_classes": ((list,), False),
    "macro_auprc": (_NUMBER, False), "macro_f1": (_NUMBER, False), "challenge_score": (_NUMBER, False),
    **{f"{m}_ci": ((list,), False) for m in METRICS},
}


class MalformedResult(ValueError):
    """A ``result.json`` that is not a valid evaluation result; the message names the file."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path}: malformed {RESULT_FILE}: {problem}")


# ------------------------------------------------------------------------------------------------
# Reading the grid
# ------------------------------------------------------------------------------------------------

def load_result(path: Path) -> dict[str, Any]:
    """The validated content of an evaluation ``result.json`` (see the module docstring for the keys).

    Raises:
        MalformedResult: unreadable, not JSON, not an object, a required key missing, a value of the
            wrong type, a label fraction outside (0, 1] or an AUROC outside [0, 1].
    """
    def bad(problem: str) -> MalformedResult:
        return MalformedResult(path, problem)

    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise bad(f"unreadable ({exc})") from None
    except json.JSONDecodeError as exc:
        raise bad(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(content, dict):
        raise bad(f"expected a JSON object, got {type(content).__name__}")
    for key, (types, required) in _FIELDS.items():
        value = content.get(key)
        if value is None:
            if required:
                raise bad(f"required key {key!r} is missing or null")
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in types)
            raise bad(f"{key!r} should be {expected}, got {type(value).__name__} {value!r:.60}")
    if not 0.0 < content["label_fraction"] <= 1.0:
        raise bad(f"'label_fraction' must be in (0, 1], got {content['label_fraction']}")
    for key in ("macro_auroc", "val_macro_auroc"):
        value = content.get(key)
        if value is not None and not 0.0 <= value <= 1.0:       # also rejects NaN
            raise bad(f"{key!r} must be an AUROC in [0, 1], got {value}")
    for name, value in (content.get("per_class_auroc") or {}).items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, _NUMBER)):
            raise bad(f"per_class_auroc[{name!r}] should be a number or null, got {value!r:.60}")
    if not all(isinstance(c, str) for c in content.get("excluded_classes") or []):
        raise bad("'excluded_classes' should be a list of class names")
    for metric in METRICS:
        ci = content.get(f"{metric}_ci")
        numbers = ci is not None and all(v is None or (isinstance(v, _NUMBER) and not isinstance(v, bool)) for v in ci)
        if ci is not None and (len(ci) != 2 or not numbers):
            raise bad(f"'{metric}_ci' should be [low, high], got {ci!r:.60}")
    return content


def collect(grid_dir: Path, expected: Iterable[str],
            variants: Optional[Mapping[str, str]] = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows, per-class rows) for every evaluation run of the grid: found results and expected runs.

    ``expected`` entries are run directories, absolute or relative to ``grid_dir``. ``variants`` maps a cell
    id to what distinguishes the cell within the grid (``method.params.temperature=0.1``), so that cells of
    one method are reported apart. A malformed result becomes a failed row; its one-line error is also
    printed to stderr.
    """
    variants = variants or {}
    grid_dir = Path(grid_dir)
    expected_dirs = {_normal(grid_dir / entry) for entry in expected}
    found = {_normal(path.parent) for path in grid_dir.glob(f"*/*/{RESULT_FILE}")}
    rows, per_class = [], []
    for run_dir in sorted(expected_dirs | found):
        row = _row_skeleton(grid_dir, run_dir)
        row["variant"] = variants.get(row["cell_id"], "")
        result_path = run_dir / RESULT_FILE
        if not result_path.is_file():
            row.update(_fields_from_config(run_dir))
            row["baseline"] = baseline_label(row.get("method"), row.get("protocol"))
            row.update(state="failed", reason="run directory missing (never started)" if not run_dir.is_dir()
                       else f"no {RESULT_FILE}", log=_newest_log(grid_dir, run_dir, row))
            rows.append(row)
            continue
        if run_dir not in expected_dirs and _not_an_evaluation(result_path):
            continue
        try:
            result = load_result(result_path)
        except MalformedResult as exc:
            print(f"aggregate: {exc}", file=sys.stderr)
            row.update(_fields_from_config(run_dir))
            row.update(state="failed", reason=f"malformed {RESULT_FILE}: {exc.problem}",
                       log=_newest_log(grid_dir, run_dir, row))
            rows.append(row)
            continue
        # cell id and stage come from the path (the run's identity), the rest from the result
        row.update({key: result[key] for key in COLUMNS if key in _FIELDS and key != "cell_id"
                    and result.get(key) is not None})
        for metric in METRICS:
            low, high = result.get(f"{metric}_ci") or (None, None)
            row.update({f"{metric}_ci_low": low, f"{metric}_ci_high": high})
        row.update(state="ok", excluded_classes=";".join(result.get("excluded_classes") or []),
                   baseline=baseline_label(row["method"], row["protocol"]))
        rows.append(row)
        for name, auroc in sorted((result.get("per_class_auroc") or {}).items()):
            per_class.append({**{key: row[key] for key in _GROUP + ["seed", "run_dir"]},
                              "class": name, "auroc": math.nan if auroc is None else float(auroc)})
    return rows, per_class


def baseline_label(method: Any, protocol: Any) -> str:
    """What a baseline run is called in the report: the grid's random-init cells (added per encoder by the
    launcher) evaluated with a frozen protocol are the *random init* baseline; finetuned, they are the
    *supervised from scratch* baseline (the same encoder trained on the same labels and fraction)."""
    if method != "random_init":
        return ""
    return "supervised from scratch" if protocol == "finetune" else "random init"


def _not_an_evaluation(path: Path) -> bool:
    """True for a readable JSON object with neither ``protocol`` nor ``macro_auroc`` (another stage's
    ``result.json``); anything unreadable counts as an evaluation result, to be reported as malformed."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and "protocol" not in content and "macro_auroc" not in content


def _normal(path: Path) -> Path:
    """An absolute, normalised path (symlinks kept, so the paths shown are the ones the plan used)."""
    return Path(os.path.normpath(os.path.abspath(path)))


def _row_skeleton(grid_dir: Path, run_dir: Path) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(run_dir=str(run_dir), stage=run_dir.name, cell_id=run_dir.parent.name, reason="", log="",
               excluded_classes="", variant="")
    return row


def _fields_from_config(run_dir: Path) -> dict[str, Any]:
    """What a failed run's ``config.yaml`` (and its pretraining run's) says about it; {} if unreadable.

    Read leniently (plain YAML, no schema): the point is to label a failed row, not to validate."""
    def load(path: Path) -> dict[str, Any]:
        try:
            content = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            return {}
        return content if isinstance(content, dict) else {}

    cfg = load(run_dir / "config.yaml")
    fields = {key: cfg.get(key) for key in ("protocol", "task", "label_fraction", "seed", "pretrain_dir")
              if isinstance(cfg.get(key), (str, int, float)) and not isinstance(cfg.get(key), bool)}
    if isinstance(fields.get("pretrain_dir"), str):
        pretrain = load(Path(fields["pretrain_dir"]) / "config.yaml")
        for key in ("method", "encoder"):
            section = pretrain.get(key)
            if isinstance(section, dict) and isinstance(section.get("name"), str):
                fields[key] = section["name"]
    return fields


def _newest_log(grid_dir: Path, run_dir: Path, row: Mapping[str, Any]) -> str:
    """Path of the newest ``*.err``/``*.out``/``*.log`` of a run: in its run directory (W&B's own logs
    excepted) or in ``<grid_dir>/logs/`` with the cell id and stage in its path; "" if none."""
    candidates: list[Path] = []
    if run_dir.is_dir():
        candidates += [p for p in run_dir.rglob("*") if p.suffix in LOG_SUFFIXES and p.is_file()
                       and "wandb" not in p.relative_to(run_dir).parts]
    logs = grid_dir / "logs"
    if logs.is_dir():
        candidates += [p for p in logs.rglob("*") if p.suffix in LOG_SUFFIXES and p.is_file()
                       and row["cell_id"] in str(p.relative_to(logs)) and row["stage"] in str(p.relative_to(logs))]
    # the launcher's manifest names each job's scheduler log (logs/<job id>/...)
    try:
        jobs = json.loads((grid_dir / "manifest.json").read_text(encoding="utf-8")).get("jobs", {})
        entry = jobs.get(f"{row['cell_id']}/{row['stage']}") or {}
    except (OSError, ValueError, AttributeError):
        entry = {}
    candidates += [Path(entry[k]) for k in ("stderr", "stdout") if entry.get(k) and Path(entry[k]).is_file()]
    if not candidates:
        return ""
    return str(max(candidates, key=lambda p: (p.stat().st_mtime, str(p))))


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------

def results_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``results.csv`` as a frame: the columns of :data:`COLUMNS`, sorted, integer columns nullable."""
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in _INT_COLUMNS:
        frame[column] = pd.array(frame[column].tolist(), dtype="Int64")
    for column in ("label_fraction", "val_macro_auroc", "wall_s", *METRICS, *_CI_COLUMNS):
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    frame["baseline"] = frame["baseline"].fillna("")
    return frame.sort_values(_SORT, na_position="last", kind="stable").reset_index(drop=True)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method, encoder, protocol, label_fraction), over the seeds that succeeded: the test macro
    AUROC's mean, sample std (ddof=1), count ``n``, 95 % t-interval of the mean over seeds (``ci_low``,
    ``ci_high``; none with one seed) and the mean of the runs' bootstrap interval bounds (``boot_low``,
    ``boot_high``); the other headline metrics' means (``<metric>_mean``) and mean bootstrap bounds; and
    the count of failed runs (failed rows whose config could not be read, i.e. without task or protocol,
    are not counted here)."""
    from scipy import stats as st

    keyed = frame.assign(encoder=frame["encoder"].fillna(""))
    keyed = keyed.dropna(subset=["task", "method", "protocol", "label_fraction"])
    ok = keyed[keyed["state"] == "ok"]
    groups = ok.groupby(_GROUP, sort=True)
    stats = groups["macro_auroc"].agg(mean="mean", std="std", n="count")
    stats["boot_low"] = groups["macro_auroc_ci_low"].mean()
    stats["boot_high"] = groups["macro_auroc_ci_high"].mean()
    for metric in METRICS[1:]:
        stats[f"{metric}_mean"] = groups[metric].mean()
        stats[f"{metric}_boot_low"] = groups[f"{metric}_ci_low"].mean()
        stats[f"{metric}_boot_high"] = groups[f"{metric}_ci_high"].mean()
    half = stats["std"] * st.t.ppf(0.975, (stats["n"] - 1).clip(lower=1)) / stats["n"].clip(lower=1) ** 0.5
    stats["ci_low"] = (stats["mean"] - half).where(stats["n"] > 1)
    stats["ci_high"] = (stats["mean"] + half).where(stats["n"] > 1)
    failed = keyed[keyed["state"] != "ok"].groupby(_GROUP, sort=True).size().rename("n_failed")
    summary = stats.join(failed, how="outer").reset_index()
    summary["n"] = summary["n"].fillna(0).astype(int)
    summary["n_failed"] = summary["n_failed"].fillna(0).astype(int)
    return summary.sort_values(_GROUP, kind="stable").reset_index(drop=True)


def format_cell(mean: float, std: float, n: int, n_failed: int, ci: tuple[float, float] | None = None,
                boot: tuple[float, float] | None = None) -> str:
    """``0.8123 ± 0.0050 (n=3; 95 % CI 0.800–0.825; bootstrap 0.790–0.834)``: mean ± sample std over seeds,
    the t-interval over seeds and the mean bootstrap interval over test records, when known; no std or
    seed interval with one seed; failures appended; ``—`` without results."""
    notes = [", ".join([f"n={n}"] + ([f"{n_failed} failed"] if n_failed else []))]
    if n == 0:
        return f"— ({notes[0]})"
    spread = f" ± {std:.4f}" if n > 1 else ""
    if n > 1 and ci is not None and not any(pd.isna(v) for v in ci):
        notes.append(f"95 % CI {ci[0]:.3f}–{ci[1]:.3f}")
    if boot is not None and not any(pd.isna(v) for v in boot):
        notes.append(f"bootstrap {boot[0]:.3f}–{boot[1]:.3f}")
    return f"{mean:.4f}{spread} ({'; '.join(notes)})"


def _fraction_label(fraction: float) -> str:
    return f"{fraction:g}"


def _markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------

_LINESTYLES = {"linear": "-", "finetune": "--"}


def plot_task(summary: pd.DataFrame, grid: str, task: str) -> bytes:
    """PNG bytes: test macro AUROC vs label fraction for ``task``, one line per (method, encoder,
    protocol), error bars = std over seeds (none with one seed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg   # Agg directly: no pyplot global state
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    data = summary[(summary["task"] == task) & (summary["n"] > 0)]
    models = sorted({(m, v, e) for m, v, e in zip(data["method"], data["variant"], data["encoder"])})
    colors = {model: f"C{i % 10}" for i, model in enumerate(models)}
    for (method, variant, encoder, protocol), line in data.groupby(["method", "variant", "encoder", "protocol"],
                                                                   sort=True):
        label = f"{_model(method, variant)}{f' ({encoder})' if encoder and len({e for *_, e in models}) > 1 else ''}"
        axes.errorbar(line["label_fraction"], line["mean"], yerr=line["std"].fillna(0.0), label=f"{label} · {protocol}",
                      color=colors[(method, variant, encoder)], linestyle=_LINESTYLES.get(protocol, ":"), marker="o",
                      capsize=3)
    fractions = sorted(data["label_fraction"].unique())
    if fractions and fractions[-1] / fractions[0] >= 10:
        axes.set_xscale("log")
    axes.set_xticks(fractions, [_fraction_label(f) for f in fractions])
    axes.minorticks_off()
    axes.set_xlabel("label fraction of the training fold")
    axes.set_ylabel("test macro AUROC")
    axes.set_title(f"{grid}: {task}")
    axes.grid(True, alpha=0.3)
    if models:
        axes.legend(fontsize="small", loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _plot_name(task: str) -> str:
    return f"{PLOT_PREFIX}{re.sub(r'[^A-Za-z0-9_.-]+', '_', task)}.png"


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------

def render_report(grid: str, grid_dir: Path, frame: pd.DataFrame, summary: pd.DataFrame,
                  per_class: pd.DataFrame, plots: Mapping[str, str], rob: pd.DataFrame | None = None,
                  rob_plots: Mapping[str, str] | None = None, compute: pd.DataFrame | None = None) -> str:
    """The text of ``report.md`` (no timestamps: the same results give the same report)."""
    rob = rob if rob is not None else pd.DataFrame(columns=["state", "task"])
    rob_plots = rob_plots or {}
    compute = compute if compute is not None else pd.DataFrame()
    n_ok = int((frame["state"] == "ok").sum())
    lines = [
        f"# Grid `{grid}`: evaluation results", "",
        f"{len(frame)} evaluation runs: {n_ok} ok, {len(frame) - n_ok} failed. "
        f"Grid directory: `{_normal(grid_dir)}`.", "",
        "Metric: test macro AUROC over records; cells show the mean ± sample standard deviation (ddof=1) over "
        "seeds, n (the number of seeds with a result), the 95 % t-interval of the mean over seeds and the mean "
        "95 % bootstrap interval over test records (1000 resamples per run).", "",
    ]
    for task in sorted(summary["task"].unique()):
        lines += _task_section(task, summary[summary["task"] == task], per_class, frame, plots.get(task))
        lines += _metrics_section(task, summary[summary["task"] == task])
        lines += _baselines_section(task, summary)
        lines += _paired_section(task, frame, grid_dir)
        lines += _robustness_section(task, rob, rob_plots.get(task))
    lines += _compute_section(compute)
    lines += _leakage_section(compute)
    lines += _failed_section(frame, grid_dir, rob)
    lines += _pretrain_section(frame, grid_dir)
    lines += [
        "## Files", "",
        f"- `{RESULTS_CSV}`: one row per evaluation run, failed ones included (`state`, `reason`, `log`).",
        f"- `{PER_CLASS_CSV}`: test AUROC per class and run.",
        *[f"- `{name}`: macro AUROC vs label fraction, task `{task}`." for task, name in sorted(plots.items())],
        *([f"- `{ROBUSTNESS_CSV}`: test macro AUROC per corruption and severity."] if len(rob) else []),
        *[f"- `{name}`: robustness curves, task `{task}`." for task, name in sorted(rob_plots.items())],
        *([f"- `{COMPUTE_CSV}`: compute per pretraining run."] if len(compute) else []),
        "- each run's `result.json` and `metrics.jsonl`: `<grid_dir>/<cell_id>/<stage>/` (column `run_dir`).",
        "",
    ]
    return "\n".join(lines)


def _task_section(task: str, summary: pd.DataFrame, per_class: pd.DataFrame, frame: pd.DataFrame,
                  plot: Optional[str]) -> list[str]:
    fractions = sorted(summary["label_fraction"].unique())
    rows = []
    for (method, variant, encoder, protocol), group in summary.groupby(["method", "variant", "encoder", "protocol"],
                                                                       sort=True):
        by_fraction = {row.label_fraction: row for row in group.itertuples()}
        rows.append([_model(method, variant), encoder, protocol] + [
            format_cell(r.mean, r.std, r.n, r.n_failed, (r.ci_low, r.ci_high), (r.boot_low, r.boot_high))
            if (r := by_fraction.get(f)) is not None else "" for f in fractions])
    lines = [f"## Task `{task}`", "",
             _markdown_table(["method", "encoder", "protocol"] + [f"fraction {_fraction_label(f)}" for f in fractions],
                             rows), ""]
    if plot:
        lines += [f"![test macro AUROC vs label fraction, {task}]({plot})", ""]
    lines += _per_class_section(task, per_class, frame)
    return lines


def _per_class_section(task: str, per_class: pd.DataFrame, frame: pd.DataFrame) -> list[str]:
    data = per_class[per_class["task"] == task] if len(per_class) else per_class
    if not len(data):
        return []
    top = data["label_fraction"].max()
    data = data[data["label_fraction"] == top]
    labels = pd.Series([_model(m, v) for m, v in zip(data["method"], data["variant"])], index=data.index)
    data = data.assign(model=labels + "/" + data["protocol"]
                       + (" (" + data["encoder"].fillna("") + ")" if data["encoder"].nunique() > 1 else ""))
    table = data.pivot_table(index="class", columns="model", values="auroc", aggfunc="mean", sort=True)
    rows = [[name] + [f"{v:.3f}" if not math.isnan(v) else "" for v in values]
            for name, values in zip(table.index, table.to_numpy())]
    lines = [f"### Per-class test AUROC, task `{task}`, label fraction {_fraction_label(top)} (mean over seeds)",
             "", _markdown_table(["class"] + list(table.columns), rows), ""]
    ok = frame[(frame["task"] == task) & (frame["state"] == "ok")]
    excluded = pd.Series([c for text in ok["excluded_classes"] for c in text.split(";") if c]).value_counts()
    if len(excluded):
        listed = ", ".join(f"`{name}` ({count} of {len(ok)} runs)" for name, count in sorted(excluded.items()))
        lines += [f"Classes excluded from the macro AUROC (no positive or no negative in a split): {listed}.", ""]
    return lines


def _failed_section(frame: pd.DataFrame, grid_dir: Path, rob: pd.DataFrame | None = None) -> list[str]:
    failed = frame[frame["state"] != "ok"]
    rob_failed = rob[rob["state"] != "ok"] if rob is not None and len(rob) else pd.DataFrame()
    lines = [f"## Failed runs ({len(failed) + len(rob_failed)})", ""]
    if not len(failed) and not len(rob_failed):
        return lines + ["None.", ""]
    rows = [[f"`{_relative(r.run_dir, grid_dir)}`", r.method, r.protocol, r.task,
             "" if pd.isna(r.label_fraction) else _fraction_label(r.label_fraction),
             "" if pd.isna(r.seed) else r.seed, r.reason, f"`{r.log}`" if r.log else "no log found"]
            for r in failed.itertuples()]
    rows += [[f"`{_relative(r.run_dir, grid_dir)}`", "", "robustness", "", "", "", r.reason,
              f"`{r.log}`" if r.log else "no log found"] for r in rob_failed.itertuples()]
    return lines + [_markdown_table(["run", "method", "protocol", "task", "fraction", "seed", "reason", "log"],
                                    rows), ""]


def _pretrain_section(frame: pd.DataFrame, grid_dir: Path) -> list[str]:
    ok = frame[(frame["state"] == "ok") & frame["pretrain_dir"].notna()]
    if not len(ok):
        return []
    rows = []
    for (method, encoder, pretrain_dir), group in ok.groupby(
            [ok["method"], ok["encoder"].fillna(""), ok["pretrain_dir"]], sort=True):
        steps = sorted({int(s) for s in group["checkpoint_step"].dropna()})
        run_ids = sorted({str(r) for r in group["pretrain_run_id"].dropna()})
        rows.append([method, encoder, f"`{_relative(pretrain_dir, grid_dir)}`", ", ".join(run_ids),
                     ", ".join(map(str, steps)), len(group)])
    return ["## Pretraining runs", "",
            _markdown_table(["method", "encoder", "run directory", "W&B run", "checkpoint step", "eval runs"], rows),
            ""]


def _metrics_section(task: str, summary: pd.DataFrame) -> list[str]:
    """Every headline metric at the largest label fraction (mean over seeds, mean bootstrap interval)."""
    top = summary["label_fraction"].max()
    data = summary[(summary["label_fraction"] == top) & (summary["n"] > 0)]
    shown = [m for m in METRICS if m == "macro_auroc" or data[f"{m}_mean"].notna().any()]
    if data.empty:
        return []

    def cell(mean: float, low: float, high: float) -> str:
        if pd.isna(mean):
            return ""
        return f"{mean:.3f}" + ("" if pd.isna(low) or pd.isna(high) else f" ({low:.3f}–{high:.3f})")

    rows = []
    for r in data.itertuples():
        values = []
        for m in shown:
            if m == "macro_auroc":
                values.append(cell(r.mean, r.boot_low, r.boot_high))
            else:
                values.append(cell(getattr(r, f"{m}_mean"), getattr(r, f"{m}_boot_low"), getattr(r, f"{m}_boot_high")))
        rows.append([_model(r.method, r.variant), r.encoder, r.protocol, *values])
    return [f"### All metrics, task `{task}`, label fraction {_fraction_label(top)}", "",
            "Mean over seeds (mean 95 % bootstrap interval over test records). F1 and the Challenge score use "
            "per-class thresholds chosen on the validation records.", "",
            _markdown_table(["method", "encoder", "protocol", *[METRIC_NAMES[m] for m in shown]], rows), ""]


def _baselines_section(task: str, summary: pd.DataFrame) -> list[str]:
    """The baselines of each encoder next to the best method with that encoder and protocol."""
    data = summary[(summary["task"] == task) & (summary["n"] > 0)]
    base = data[data["method"] == "random_init"]
    if base.empty:
        return [f"### Baselines, task `{task}`", "", "No baseline runs (switched off with "
                "`evaluation.baselines: false`, or they failed).", ""]
    rows = []
    for r in base.itertuples():
        rivals = data[(data["method"] != "random_init") & (data["encoder"] == r.encoder)
                      & (data["protocol"] == r.protocol) & (data["label_fraction"] == r.label_fraction)]
        best = rivals.loc[rivals["mean"].idxmax()] if len(rivals) else None
        rows.append([baseline_label("random_init", r.protocol), r.encoder, r.protocol,
                     _fraction_label(r.label_fraction), f"{r.mean:.4f}",
                     "" if best is None else f"{_model(best['method'], best['variant'])} {best['mean']:.4f}",
                     "" if best is None else f"{best['mean'] - r.mean:+.4f}"])
    return [f"### Baselines, task `{task}`", "",
            "*random init*: the encoder as initialised (never trained) under each protocol; *supervised from "
            "scratch*: that encoder finetuned on the same labels and fraction. A pretrained method that does not "
            "beat them has learned nothing the protocol could use.", "",
            _markdown_table(["baseline", "encoder", "protocol", "fraction", "macro AUROC",
                             "best method (same encoder, protocol, fraction)", "Δ"], rows), ""]


def _paired_section(task: str, frame: pd.DataFrame, grid_dir: Path, max_models: int = 16) -> list[str]:
    """Paired bootstrap tests between the methods of each protocol at the largest label fraction.

    The same resampled test records score both models; with several seeds the statistic is the difference
    of the seed-averaged macro AUROCs (seeds matched by number). Cells show Δ = row − column and mark
    p < 0.05 with ``*``."""
    from ecg_core.scoring import PredictionsError, read_predictions

    ok = frame[(frame["task"] == task) & (frame["state"] == "ok")]
    if ok.empty:
        return []
    top = ok["label_fraction"].max()
    lines = [f"### Paired bootstrap tests, task `{task}`, label fraction {_fraction_label(top)}", "",
             "Δ macro AUROC (row − column) on the same resampled test records (1000 resamples, seed 0); "
             "`*`: two-sided p < 0.05. Any two evaluation runs: `python -m jobs.aggregate compare RUN_A RUN_B`.", ""]
    without = []
    for protocol, runs in ok[ok["label_fraction"] == top].groupby("protocol", sort=True):
        models: dict[str, dict[int, Any]] = {}
        for r in runs.itertuples():
            name = _model(r.method, r.variant) + (f" ({r.encoder})" if _many(runs) else "")
            try:
                models.setdefault(name, {})[int(r.seed)] = read_predictions(r.run_dir)
            except PredictionsError as exc:
                without.append(_relative(r.run_dir, grid_dir))
                if (Path(r.run_dir) / "predictions.npz").exists():   # damaged, not merely absent
                    print(f"aggregate: {exc}", file=sys.stderr)
        names = sorted(models)[:max_models]
        if len(names) < 2:
            continue
        cells = {}
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                seeds = sorted(set(models[a]) & set(models[b]))
                if seeds:
                    cells[(a, b)] = compare([models[a][s] for s in seeds], [models[b][s] for s in seeds])
        rows = []
        for a in names:
            row = [a]
            for b in names:
                if a == b:
                    row.append("")
                    continue
                res = cells.get((a, b)) or cells.get((b, a))
                if res is None:
                    row.append("")
                    continue
                delta = res.delta if (a, b) in cells else -res.delta
                row.append(f"{delta:+.3f}{'*' if res.p_value < 0.05 else ''}")
            rows.append(row)
        lines += [f"Protocol `{protocol}`:", "", _markdown_table(["", *names], rows), ""]
    if without:
        lines += [f"Left out (no usable `predictions.npz`): {', '.join(f'`{w}`' for w in without)}.", ""]
    return lines


def _many(runs: pd.DataFrame) -> bool:
    return runs["encoder"].nunique() > 1


def compare(a: list[Any], b: list[Any], n_resamples: int = 1000, seed: int = 0) -> Any:
    """Paired bootstrap of the seed-averaged macro AUROC of predictions ``a`` vs ``b`` (lists over matched
    seeds of :class:`ecg_core.scoring.Predictions` on the same test records)."""
    from ecg_core import metrics as M

    ids = list(a[0].test_ids)
    for p in [*a, *b]:
        if list(p.test_ids) != ids or p.classes != a[0].classes:
            raise ValueError("the two runs were not scored on the same test records and classes")
    return M.paired_bootstrap_mean_macro_auroc(a[0].y_test, [p.test_scores for p in a], [p.test_scores for p in b],
                                               a[0].classes, n_resamples=n_resamples, seed=seed)


ROBUSTNESS_CSV = "robustness.csv"
ROBUSTNESS_PLOT_PREFIX = "robustness_"
COMPUTE_CSV = "compute.csv"


def collect_robustness(frame: pd.DataFrame, robustness_dirs: Iterable[str], grid_dir: Path) -> pd.DataFrame:
    """One row per (robustness run, corruption, severity) with the test macro AUROC; a robustness run
    without a readable ``robustness.json`` is one row with ``state`` failed (and its log)."""
    from jobs.robustness import ROBUSTNESS_FILE

    by_dir = {str(_normal(Path(r["run_dir"]))): r for r in frame.to_dict("records")}
    rows = []
    for entry in robustness_dirs:
        run_dir = _normal(grid_dir / entry)
        path = run_dir / ROBUSTNESS_FILE
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
            table = content["macro_auroc"]
            parent = by_dir.get(str(_normal(Path(content["eval_dir"]))), {})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            row = _row_skeleton(grid_dir, run_dir)
            reason = f"no {ROBUSTNESS_FILE}" if isinstance(exc, FileNotFoundError) else f"unreadable: {exc}"
            rows.append({"state": "failed", "run_dir": str(run_dir), "reason": reason,
                         "log": _newest_log(grid_dir, run_dir, row), "cell_id": run_dir.parent.name})
            continue
        base = {"state": "ok", "run_dir": str(run_dir), "cell_id": run_dir.parent.name,
                "task": content.get("task"), "protocol": content.get("protocol"),
                "label_fraction": content.get("label_fraction"), "seed": content.get("seed"),
                **{k: parent.get(k) for k in ("method", "variant", "encoder")}}
        for corruption, levels in sorted(table.items()):
            for severity, value in sorted(levels.items(), key=lambda kv: int(kv[0])):
                rows.append({**base, "corruption": corruption, "severity": int(severity),
                             "macro_auroc": math.nan if value is None else float(value)})
    columns = ["state", "task", "method", "variant", "encoder", "protocol", "label_fraction", "seed", "corruption",
               "severity", "macro_auroc", "cell_id", "run_dir", "reason", "log"]
    out = pd.DataFrame(rows, columns=columns)
    return out.sort_values(["task", "method", "variant", "protocol", "corruption", "severity", "run_dir"],
                           na_position="last", kind="stable").reset_index(drop=True)


def plot_robustness(rob: pd.DataFrame, grid: str, task: str) -> bytes:
    """PNG bytes: test macro AUROC vs severity, one panel per corruption, one line per model (mean over seeds)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = rob[(rob["task"] == task) & (rob["state"] == "ok")]
    corruptions = sorted(data["corruption"].unique())
    cols = min(4, max(1, len(corruptions)))
    rows = max(1, math.ceil(len(corruptions) / cols))
    figure = Figure(figsize=(3.2 * cols, 2.6 * rows + 0.8), dpi=100)
    FigureCanvasAgg(figure)
    data = data.assign(model=_robustness_labels(data) + " · " + data["protocol"].fillna("?"))
    models = sorted(data["model"].unique())
    colors = {m: f"C{i % 10}" for i, m in enumerate(models)}
    styles = {m: ("-", "--", ":", "-.")[i // 10 % 4] for i, m in enumerate(models)}   # > 10 models: dashes too
    for i, corruption in enumerate(corruptions):
        axes = figure.add_subplot(rows, cols, i + 1)
        part = data[data["corruption"] == corruption].groupby(["model", "severity"])["macro_auroc"].mean()
        for model in models:
            if model in part.index.get_level_values(0):
                line = part.loc[model]
                axes.plot(line.index, line.to_numpy(), marker="o", markersize=3, color=colors[model],
                          linestyle=styles[model], label=model)
        axes.set_title(corruption, fontsize="small")
        axes.set_xlabel("severity", fontsize="small")
        axes.tick_params(labelsize="x-small")
        axes.grid(True, alpha=0.3)
    if models and figure.axes:
        figure.legend(*figure.axes[0].get_legend_handles_labels(), loc="lower center", ncol=min(4, len(models)),
                      fontsize="x-small")
    figure.suptitle(f"{grid}: {task}: test macro AUROC under corruption", fontsize="small")
    figure.tight_layout(rect=(0, 0.08 + 0.02 * math.ceil(len(models) / 4), 1, 0.97))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _robustness_section(task: str, rob: pd.DataFrame, plot: str | None) -> list[str]:
    data = rob[(rob["task"] == task) & (rob["state"] == "ok")]
    if data.empty:
        return []
    data = data.assign(model=_robustness_labels(data))
    clean = data[data["severity"] == 0].groupby(["model", "protocol"])["macro_auroc"].mean()
    corrupted = data[data["severity"] > 0].groupby(["model", "protocol", "corruption"])["macro_auroc"].mean()
    corruptions = sorted(data["corruption"].unique())
    rows = []
    for (model, protocol), value in clean.items():
        rows.append([model, protocol, f"{value:.3f}"] + [
            f"{corrupted.get((model, protocol, c), math.nan):.3f}" for c in corruptions])
    lines = [f"### Corruption robustness, task `{task}`", "",
             "Test macro AUROC on clean records and its mean over the severities of each corruption "
             "(ecg_core.corruptions; identical corrupted records for every model). Curves per severity: "
             f"`{ROBUSTNESS_CSV}` and the plot.", "",
             _markdown_table(["method", "protocol", "clean", *corruptions], rows), ""]
    if plot:
        lines += [f"![robustness, {task}]({plot})", ""]
    return lines


def _robustness_labels(data: pd.DataFrame) -> pd.Series:
    """``method [variant]``, with ``(encoder)`` for methods evaluated with several encoders (the baselines)."""
    encoders = data.groupby("method")["encoder"].nunique()
    labels = [_model(m, v) + (f" ({e})" if encoders.get(m, 0) > 1 else "")
              for m, v, e in zip(data["method"], data["variant"].fillna(""), data["encoder"])]
    return pd.Series(labels, index=data.index)


def collect_compute(frame: pd.DataFrame) -> pd.DataFrame:
    """Per pretraining run of the grid: what it cost (``compute.json``) and its evaluations' wall time."""
    rows = []
    evals = frame[frame["pretrain_dir"].notna()].groupby("pretrain_dir")
    for pretrain_dir, group in evals:
        try:
            compute = json.loads((Path(pretrain_dir) / "compute.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            compute = {}
        first = group.iloc[0]
        rows.append({"method": first["method"], "variant": first["variant"], "encoder": first["encoder"],
                     "pretrain_dir": pretrain_dir, "device": compute.get("device"),
                     "world_size": compute.get("world_size"), "attempts": len(compute.get("attempts") or []),
                     "pretrain_wall_h": (compute.get("wall_s") or math.nan) / 3600,
                     "cpu_hours": compute.get("cpu_hours"), "gpu_hours": compute.get("gpu_hours"),
                     "samples_seen": compute.get("samples_seen"), "samples_per_s": compute.get("samples_per_s"),
                     "encoder_parameters": compute.get("encoder_parameters"),
                     "eval_runs": int(len(group)), "eval_wall_h": float(group["wall_s"].sum()) / 3600})
    columns = ["method", "variant", "encoder", "device", "world_size", "attempts", "pretrain_wall_h", "cpu_hours",
               "gpu_hours", "samples_seen", "samples_per_s", "encoder_parameters", "eval_runs", "eval_wall_h",
               "pretrain_dir"]
    return pd.DataFrame(rows, columns=columns).sort_values(["method", "variant", "pretrain_dir"], kind="stable")


def _compute_section(compute: pd.DataFrame) -> list[str]:
    if compute.empty:
        return []

    def num(value: Any, fmt: str) -> str:
        return "" if value is None or pd.isna(value) else format(value, fmt)

    rows = [[_model(r.method, r.variant), r.encoder, num(r.encoder_parameters, ","), r.device or "",
             num(r.world_size, "d"), num(r.attempts, "d"), num(r.pretrain_wall_h, ".3f"), num(r.cpu_hours, ".3f"),
             num(r.gpu_hours, ".3f"), num(r.samples_seen, ","), num(r.samples_per_s, ".1f"), r.eval_runs,
             num(r.eval_wall_h, ".3f")] for r in compute.itertuples()]
    return ["## Compute", "",
            "Per pretraining run (its `compute.json`: every attempt, requeues included) and the wall time of its "
            f"evaluation runs. Also in `{COMPUTE_CSV}`.", "",
            _markdown_table(["method", "encoder", "encoder params", "device", "ranks", "attempts", "pretrain wall h",
                             "CPU-h", "GPU-h", "samples seen", "samples/s", "eval runs", "eval wall h"], rows), ""]


def _leakage_section(compute: pd.DataFrame) -> list[str]:
    """What the leakage guard found and excluded for each pretraining run (its ``leakage.json``)."""
    rows = []
    for r in compute.itertuples():
        path = Path(r.pretrain_dir) / "leakage.json"
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            rows.append([_model(r.method, r.variant), "", "", f"unreadable {path}: {exc}"])
            continue
        for check in info.get("checks", []):
            rows.append([_model(r.method, r.variant), check.get("eval_store", ""),
                         str(check.get("excluded_records", 0)), check.get("summary", "")])
    lines = ["## Leakage guard", ""]
    if not rows:
        return lines + ["No pretraining run recorded an overlap check with the evaluation data (`leakage.json`; "
                        "grids without evaluation, or runs from before the guard).", ""]
    return lines + ["Per pretraining run and evaluation store: what the guard found (source identity, signal "
                    "fingerprints) and excluded from pretraining, with the matched records' patients.", "",
                    _markdown_table(["method", "evaluation store", "excluded records", "details"], rows), ""]


def _model(method: str, variant: str) -> str:
    """Table/plot label of a method in a grid cell: ``simclr [method.params.temperature=0.1]``."""
    return f"{method} [{variant}]" if variant else str(method)


def _relative(path: str, grid_dir: Path) -> str:
    """``path`` relative to the grid directory when inside it (shorter tables), else as given."""
    try:
        return str(_normal(Path(path)).relative_to(_normal(grid_dir)))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------------
# The job
# ------------------------------------------------------------------------------------------------

def _csv_text(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, lineterminator="\n")


def _for_wandb(frame: pd.DataFrame) -> pd.DataFrame:
    """Plain Python values (None for missing) so that wandb.Table infers one type per column."""
    return frame.astype(object).where(frame.notna(), None)


def run(cfg: AggregateConfig, run_dir: Path) -> None:
    """Aggregate the grid's evaluation results into ``run_dir`` and W&B; print the path of report.md."""
    run_dir, grid_dir = Path(run_dir), Path(cfg.grid_dir)
    if not grid_dir.is_dir():
        raise FileNotFoundError(f"grid directory {grid_dir} does not exist (aggregate config grid_dir)")
    rows, per_class_rows = collect(grid_dir, cfg.expected, cfg.variants)
    frame = results_frame(rows)
    per_class = pd.DataFrame(per_class_rows, columns=_GROUP + ["seed", "run_dir", "class", "auroc"])
    summary = summarize(frame)

    run_dir.mkdir(parents=True, exist_ok=True)
    plots = {}
    for task in sorted(summary["task"].unique()):
        plots[task] = _plot_name(task)
        write_bytes_atomic(run_dir / plots[task], plot_task(summary, cfg.grid, task))
    for stale in run_dir.glob(f"{PLOT_PREFIX}*.png"):        # a task that is gone: its old plot too
        if stale.name not in plots.values():
            stale.unlink()
    rob = collect_robustness(frame, cfg.robustness, grid_dir)
    rob_plots = {}
    for task in sorted(rob.loc[rob["state"] == "ok", "task"].dropna().unique()):
        rob_plots[task] = f"{ROBUSTNESS_PLOT_PREFIX}{re.sub(r'[^A-Za-z0-9_.-]+', '_', task)}.png"
        write_bytes_atomic(run_dir / rob_plots[task], plot_robustness(rob, cfg.grid, task))
    for stale in run_dir.glob(f"{ROBUSTNESS_PLOT_PREFIX}*.png"):
        if stale.name not in rob_plots.values():
            stale.unlink()
    compute = collect_compute(frame)
    write_text_atomic(run_dir / RESULTS_CSV, _csv_text(frame))
    write_text_atomic(run_dir / PER_CLASS_CSV, _csv_text(per_class))
    write_text_atomic(run_dir / COMPUTE_CSV, _csv_text(compute))
    if len(rob):
        write_text_atomic(run_dir / ROBUSTNESS_CSV, _csv_text(rob))
    report_path = run_dir / REPORT_FILE
    write_text_atomic(report_path, render_report(cfg.grid, grid_dir, frame, summary, per_class, plots, rob,
                                                 rob_plots, compute))

    tracking = dataclasses.replace(cfg.tracking, group=cfg.tracking.group or cfg.grid,
                                   job_type=cfg.tracking.job_type or "aggregate", name=cfg.tracking.name or "report")
    with Tracker(tracking, run_dir, config=dataclasses.asdict(cfg)) as tracker:
        tracker.log_table("results", _for_wandb(frame))
        tracker.log_table("summary", _for_wandb(summary))
        for task, name in plots.items():
            tracker.log_image(f"auroc_vs_fraction/{task}", run_dir / name)
        if len(rob):
            tracker.log_table("robustness", _for_wandb(rob))
        for task, name in rob_plots.items():
            tracker.log_image(f"robustness/{task}", run_dir / name)
        if len(compute):
            tracker.log_table("compute", _for_wandb(compute))
        n_ok = int((frame["state"] == "ok").sum())
        tracker.summary({"runs": len(frame), "runs_ok": n_ok, "runs_failed": len(frame) - n_ok,
                         "report": str(report_path)})
    print(report_path)


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.aggregate compare RUN_A RUN_B``: paired bootstrap of two evaluation runs."""
    import argparse

    from ecg_core.scoring import PredictionsError, read_predictions

    parser = argparse.ArgumentParser(prog="python -m jobs.aggregate", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="paired bootstrap test of two evaluation runs on the same test records")
    cmp.add_argument("run_a", type=Path, help="evaluation run directory (with predictions.npz)")
    cmp.add_argument("run_b", type=Path, help="evaluation run directory to compare with")
    cmp.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    cmp.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    args = parser.parse_args(argv)
    try:
        a, b = read_predictions(args.run_a), read_predictions(args.run_b)
        res = compare([a], [b], n_resamples=args.resamples, seed=args.seed)
    except (PredictionsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"delta macro AUROC (A - B) = {res.delta:+.4f}, 95 % CI [{res.low:+.4f}, {res.high:+.4f}], "
          f"two-sided p = {res.p_value:.4g} ({res.n_valid} of {args.resamples} resamples valid)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
