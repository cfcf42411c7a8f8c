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

from ecg_core.tracking import Tracker, write_bytes_atomic, write_text_atomic
from jobs.config import AggregateConfig

__all__ = ["RESULT_FILE", "COLUMNS", "MalformedResult", "collect", "load_result", "summarize", "run"]

RESULT_FILE = "result.json"
REPORT_FILE = "report.md"
RESULTS_CSV = "results.csv"
PER_CLASS_CSV = "per_class_auroc.csv"
PLOT_PREFIX = "auroc_vs_fraction_"
LOG_SUFFIXES = (".err", ".out", ".log")

COLUMNS = [
    "state", "task", "method", "variant", "encoder", "protocol", "label_fraction", "seed", "macro_auroc",
    "val_macro_auroc", "n_train", "n_val", "n_test", "checkpoint_step", "wall_s", "cell_id", "stage",
    "run_dir", "pretrain_run_id", "pretrain_dir", "excluded_classes", "reason", "log",
]
"""Columns of ``results.csv`` (``excluded_classes`` joined with ``;``)."""

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
        row.update(state="ok", excluded_classes=";".join(result.get("excluded_classes") or []))
        rows.append(row)
        for name, auroc in sorted((result.get("per_class_auroc") or {}).items()):
            per_class.append({**{key: row[key] for key in _GROUP + ["seed", "run_dir"]},
                              "class": name, "auroc": math.nan if auroc is None else float(auroc)})
    return rows, per_class


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
    for column in ("label_fraction", "macro_auroc", "val_macro_auroc", "wall_s"):
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    return frame.sort_values(_SORT, na_position="last", kind="stable").reset_index(drop=True)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method, encoder, protocol, label_fraction): mean, sample std and count of the test
    macro AUROC over the seeds that succeeded, and the count of failed runs (failed rows whose config
    could not be read, i.e. without task or protocol, are not counted here)."""
    keyed = frame.assign(encoder=frame["encoder"].fillna(""))
    keyed = keyed.dropna(subset=["task", "method", "protocol", "label_fraction"])
    ok = keyed[keyed["state"] == "ok"]
    stats = ok.groupby(_GROUP, sort=True)["macro_auroc"].agg(mean="mean", std="std", n="count")
    failed = keyed[keyed["state"] != "ok"].groupby(_GROUP, sort=True).size().rename("n_failed")
    summary = stats.join(failed, how="outer").reset_index()
    summary["n"] = summary["n"].fillna(0).astype(int)
    summary["n_failed"] = summary["n_failed"].fillna(0).astype(int)
    return summary.sort_values(_GROUP, kind="stable").reset_index(drop=True)


def format_cell(mean: float, std: float, n: int, n_failed: int) -> str:
    """``0.8123 ± 0.0050 (n=3)``; no std with one seed; failures appended; ``—`` without results."""
    notes = [f"n={n}"] + ([f"{n_failed} failed"] if n_failed else [])
    if n == 0:
        return f"— ({', '.join(notes)})"
    spread = f" ± {std:.4f}" if n > 1 else ""
    return f"{mean:.4f}{spread} ({', '.join(notes)})"


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
                  per_class: pd.DataFrame, plots: Mapping[str, str]) -> str:
    """The text of ``report.md`` (no timestamps: the same results give the same report)."""
    n_ok = int((frame["state"] == "ok").sum())
    lines = [
        f"# Grid `{grid}`: evaluation results", "",
        f"{len(frame)} evaluation runs: {n_ok} ok, {len(frame) - n_ok} failed. "
        f"Grid directory: `{_normal(grid_dir)}`.", "",
        "Metric: test macro AUROC; cells show the mean ± sample standard deviation (ddof=1) over seeds and "
        "n, the number of seeds with a result.", "",
    ]
    for task in sorted(summary["task"].unique()):
        lines += _task_section(task, summary[summary["task"] == task], per_class, frame, plots.get(task))
    lines += _failed_section(frame, grid_dir)
    lines += _pretrain_section(frame, grid_dir)
    lines += [
        "## Files", "",
        f"- `{RESULTS_CSV}`: one row per evaluation run, failed ones included (`state`, `reason`, `log`).",
        f"- `{PER_CLASS_CSV}`: test AUROC per class and run.",
        *[f"- `{name}`: macro AUROC vs label fraction, task `{task}`." for task, name in sorted(plots.items())],
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
            format_cell(r.mean, r.std, r.n, r.n_failed) if (r := by_fraction.get(f)) is not None else ""
            for f in fractions])
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


def _failed_section(frame: pd.DataFrame, grid_dir: Path) -> list[str]:
    failed = frame[frame["state"] != "ok"]
    lines = [f"## Failed runs ({len(failed)})", ""]
    if not len(failed):
        return lines + ["None.", ""]
    rows = [[f"`{_relative(r.run_dir, grid_dir)}`", r.method, r.protocol, r.task,
             "" if pd.isna(r.label_fraction) else _fraction_label(r.label_fraction),
             "" if pd.isna(r.seed) else r.seed, r.reason, f"`{r.log}`" if r.log else "no log found"]
            for r in failed.itertuples()]
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
    write_text_atomic(run_dir / RESULTS_CSV, _csv_text(frame))
    write_text_atomic(run_dir / PER_CLASS_CSV, _csv_text(per_class))
    report_path = run_dir / REPORT_FILE
    write_text_atomic(report_path, render_report(cfg.grid, grid_dir, frame, summary, per_class, plots))

    tracking = dataclasses.replace(cfg.tracking, group=cfg.tracking.group or cfg.grid,
                                   job_type=cfg.tracking.job_type or "aggregate", name=cfg.tracking.name or "report")
    with Tracker(tracking, run_dir, config=dataclasses.asdict(cfg)) as tracker:
        tracker.log_table("results", _for_wandb(frame))
        tracker.log_table("summary", _for_wandb(summary))
        for task, name in plots.items():
            tracker.log_image(f"auroc_vs_fraction/{task}", run_dir / name)
        n_ok = int((frame["state"] == "ok").sum())
        tracker.summary({"runs": len(frame), "runs_ok": n_ok, "runs_failed": len(frame) - n_ok,
                         "report": str(report_path)})
    print(report_path)
