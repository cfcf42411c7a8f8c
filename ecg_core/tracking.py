"""Experiment tracking: ``metrics.jsonl`` in the run directory (the source of truth) plus a W&B run (the window).

Every job logs through one :class:`Tracker` (DESIGN.md "Tracking"):

- ``<run_dir>/metrics.jsonl``: one JSON object per line, ``{"step": int, "time": unix seconds, **metrics}``,
  flushed line by line, so a killed job loses at most the line being written. The aggregate job and the
  tests read this file, never W&B.
- ``<run_dir>/summary.json``: the run's summary values (merged over calls and over requeued attempts).
- A W&B run: group = grid name, job_type = stage, name = cell id, id = the planner's deterministic run id
  (a requeued job resumes it), config = the resolved config. Mode ``online``/``offline``/``disabled``
  comes from the environment variable ``WANDB_MODE`` when set, else from ``TrackingConfig.mode``;
  ``disabled`` does not import wandb at all. W&B is a sink only: if it fails (``online`` without network,
  a dead service), the tracker warns once (:class:`TrackingWarning`) and goes on with the files.

Resume: a requeued job repeats the steps after its last checkpoint. ``Tracker(..., resume_step=s)`` or
:meth:`Tracker.rewind` (the training loop calls it after loading a checkpoint) drops the lines with
``step > s`` from ``metrics.jsonl`` so the repeated steps are not recorded twice. W&B offline resume
starts a new ``offline-run-*`` folder with the same id whose step counter restarts at 0, hence every
``log`` passes ``step=`` explicitly (platform-facts.md, "wandb 0.31.0 offline"). Online, W&B keeps the
run's highest step and drops repeated lower steps with a warning of its own.

:func:`read_offline_run` reads what an offline run logged back from its ``.wandb`` files (wandb has no
public reader; the format is described in :func:`iter_wandb_records`), merging the folders of a resumed
run. Tests of every job use it. The reader relies on the record layout of wandb 0.31 (setup.cfg pins
``wandb<0.32``).

Files are written with :mod:`ecg_core.atomic`'s writers.
"""
from __future__ import annotations

import json
import math
import os
import struct
import sys
import time
import warnings
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ecg_core.atomic import json_default as _json_default
from ecg_core.atomic import write_json_atomic, write_text_atomic

if TYPE_CHECKING:  # jobs.config imports torch through the data loader; the tracker does not need it
    import pandas

    from jobs.config import TrackingConfig

__all__ = [
    "METRICS_FILE",
    "SUMMARY_FILE",
    "OfflineRun",
    "Tracker",
    "TrackingWarning",
    "iter_wandb_records",
    "read_metrics",
    "read_offline_run",
    "resolve_mode",
]

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
_RESERVED_KEYS = ("step", "time")
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Trackers with an unfinished W&B run in this process (this module is the project's only wandb user).
_ACTIVE_RUNS: set[int] = set()


class TrackingWarning(UserWarning):
    """W&B failed (or a tracking file was damaged); the job continues with its local files."""


# ------------------------------------------------------------------------------------------------
# metrics.jsonl
# ------------------------------------------------------------------------------------------------

def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a run directory or the file itself), in file order.

    A last line without its newline (the job was killed while writing it) is ignored; any other line
    that is not a JSON object with an integer ``step`` raises ``ValueError`` naming file and line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    records, _ = _parse_metrics(path)
    return records


def _parse_metrics(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """(records, whether a partial last line was dropped) of ``path``; ([], False) when it is missing."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], False
    lines = text.split("\n")
    partial = lines.pop() != ""          # text ends with "\n" exactly when the last piece is empty
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
        if not isinstance(record, dict) or isinstance(record.get("step"), bool) \
                or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}:{number}: expected a JSON object with an integer 'step'")
        records.append(record)
    return records, partial


def _plain_value(value: Any) -> Any:
    """``value`` with numpy/torch scalars turned into Python numbers (TypeError for other objects)."""
    if value is None or isinstance(value, (bool, int, float, str, Mapping, list)):
        return value
    return _json_default(value)


def _jsonl_line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, default=_json_default) + "\n"


# ------------------------------------------------------------------------------------------------
# The tracker
# ------------------------------------------------------------------------------------------------

def resolve_mode(configured: str) -> str:
    """The W&B mode a job uses: ``WANDB_MODE`` from the environment when set (and not empty), else
    ``configured`` (``TrackingConfig.mode``). Values are lower-cased; wandb itself validates them."""
    env = os.environ.get("WANDB_MODE", "").strip()
    return (env or configured).strip().lower()


class Tracker:
    """Logs a job's metrics to ``<run_dir>/metrics.jsonl`` and to a W&B run (see the module docstring).

    Args:
        cfg: the job's :class:`jobs.config.TrackingConfig` (project, entity, mode, group, name, job_type,
            run_id, tags).
        run_dir: the job's run directory; created if missing.
        config: the resolved job config, stored as the W&B run's config.
        enabled: False on non-zero ranks: then every method is a no-op and nothing is written.
        resume_step: the step the job resumes from; lines of ``metrics.jsonl`` with a larger step are
            dropped (see :meth:`rewind`). None: an existing ``metrics.jsonl`` is appended to.

    A W&B failure never stops the job: it is reported once as a :class:`TrackingWarning` and the tracker
    continues with the local files only. Use as a context manager or call :meth:`finish`.
    """

    def __init__(self, cfg: "TrackingConfig", run_dir: str | os.PathLike[str], config: Mapping[str, Any], *,
                 enabled: bool = True, resume_step: Optional[int] = None) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.metrics_path = self.run_dir / METRICS_FILE
        self.summary_path = self.run_dir / SUMMARY_FILE
        self.mode = resolve_mode(cfg.mode) if enabled else "disabled"
        self._run: Any = None            # the wandb Run, None without W&B (disabled, failed, finished)
        self._wandb: Any = None          # the wandb module, imported only when used
        self._metrics_file: Any = None   # opened on the first log
        self._last_step = 0
        self._finished = not enabled
        self._summary: Optional[dict[str, Any]] = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self.rewind(resume_step)
        else:
            records = self._repair_metrics(keep_through=None)
            self._last_step = max((r["step"] for r in records), default=0)
        if self.mode != "disabled":
            self._start_wandb(cfg, dict(config))

    # -- W&B plumbing ----------------------------------------------------------------------------

    def _start_wandb(self, cfg: "TrackingConfig", config: dict[str, Any]) -> None:
        def init() -> Any:
            import wandb

            self._wandb = wandb
            git = ({"git_root": str(_PROJECT_ROOT)} if (_PROJECT_ROOT / ".git").exists()
                   else {"disable_git": True})
            settings = wandb.Settings(
                x_transaction_log_flush_interval=1.0,   # a SIGKILL loses ~1 s of records, not ~15 s
                reinit="create_new",                    # independent runs in one process (tests, local jobs)
                **git,
            )
            return wandb.init(
                project=cfg.project or None, entity=cfg.entity or None, group=cfg.group or None,
                name=cfg.name or None, job_type=cfg.job_type or None, id=cfg.run_id or None, resume="allow",
                dir=str(self.run_dir), config=config, tags=list(cfg.tags) or None, mode=self.mode,
                settings=settings,
            )

        self._run = self._guarded("init", init)
        if self._run is not None:
            _ACTIVE_RUNS.add(id(self))
            if self.url:   # online only: `launch.py --status` shows it from summary.json
                self.summary({"wandb_url": self.url})

    def _guarded(self, what: str, call: Any) -> Any:
        """``call()``; on an exception warn once, drop the W&B run and return None."""
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 -- any W&B failure degrades to local files only
            self._run = None
            warnings.warn(f"W&B {what} failed in {self.run_dir} ({type(exc).__name__}: {exc}); "
                          f"continuing with {METRICS_FILE} only", TrackingWarning, stacklevel=3)
            return None

    def _check_open(self) -> bool:
        """True when the tracker records (enabled); RuntimeError after :meth:`finish`."""
        if not self.enabled:
            return False
        if self._finished:
            raise RuntimeError(f"Tracker of {self.run_dir} is finished; nothing more can be logged")
        return True

    # -- metrics.jsonl ---------------------------------------------------------------------------

    def _repair_metrics(self, keep_through: Optional[int]) -> list[dict[str, Any]]:
        """Rewrite ``metrics.jsonl`` atomically without lines of step > ``keep_through`` and without a
        partial last line; untouched when there is nothing to drop. Returns the records kept."""
        records, partial = _parse_metrics(self.metrics_path)
        kept = records if keep_through is None else [r for r in records if r["step"] <= keep_through]
        if partial or len(kept) != len(records):
            write_text_atomic(self.metrics_path, "".join(_jsonl_line(r) for r in kept))
        return kept

    def rewind(self, step: int) -> None:
        """Forget what was logged after ``step``: the job resumes from the checkpoint of ``step`` and
        will log the following steps again. Drops those lines of ``metrics.jsonl`` (atomic rewrite)."""
        if not self._check_open():
            return
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        self._repair_metrics(keep_through=int(step))
        self._last_step = int(step)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record ``metrics`` (scalars: numbers, or numpy/torch scalars) at global step ``step``."""
        if not self._check_open():
            return
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        clash = [key for key in _RESERVED_KEYS if key in metrics]
        if clash:
            raise ValueError(f"metric names {clash} are reserved for the {METRICS_FILE} record itself")
        values = {str(key): _plain_value(value) for key, value in metrics.items()}
        line = _jsonl_line({"step": step, "time": time.time(), **values})
        if self._metrics_file is None:
            self._metrics_file = open(self.metrics_path, "a", encoding="utf-8")
        self._metrics_file.write(line)
        self._metrics_file.flush()
        self._last_step = max(self._last_step, step)
        if self._run is not None:
            run = self._run
            self._guarded("log", lambda: run.log(values, step=step))

    # -- summary, tables, images -----------------------------------------------------------------

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set run summary values: W&B run summary and ``<run_dir>/summary.json`` (merged with earlier
        calls and with the file a previous attempt of the job left)."""
        if not self._check_open():
            return
        if self._summary is None:
            self._summary = _read_json_object(self.summary_path)
        self._summary.update(values)
        write_json_atomic(self.summary_path, self._summary)
        if self._run is not None:
            run = self._run
            self._guarded("summary", lambda: run.summary.update(dict(values)))

    def _log_media(self, what: str, name: str, make: Any) -> None:
        """Log a W&B media object at the latest step (not into metrics.jsonl): media logged at a step
        lower than W&B's current one would be dropped."""
        if self._run is None:
            return
        run = self._run
        self._guarded(what, lambda: run.log({name: make()}, step=max(self._last_step, run.step)))

    def log_table(self, name: str, frame: "pandas.DataFrame") -> None:
        """Log ``frame`` as a ``wandb.Table`` named ``name`` (W&B only; write a CSV for the run directory)."""
        if not self._check_open():
            return
        self._log_media("table", name, lambda: self._wandb.Table(dataframe=frame))

    def log_image(self, name: str, png_path: str | os.PathLike[str]) -> None:
        """Log the image file ``png_path`` as a ``wandb.Image`` named ``name`` (W&B only)."""
        if not self._check_open():
            return
        path = Path(png_path)
        if not path.is_file():
            raise FileNotFoundError(f"image to log not found: {path}")
        self._log_media("image", name, lambda: self._wandb.Image(str(path)))

    @property
    def url(self) -> Optional[str]:
        """The W&B run URL when logging online, else None."""
        run = self._run
        if run is None or run.offline or run.disabled:
            return None
        return run.url

    # -- end of the run --------------------------------------------------------------------------

    def mark_preempting(self) -> None:
        """Tell W&B the run is being preempted (call before the job requeues, then :meth:`finish`)."""
        if self.enabled and not self._finished and self._run is not None:
            run = self._run
            self._guarded("mark_preempting", run.mark_preempting)

    def finish(self, exit_code: int = 0) -> None:
        """Close ``metrics.jsonl`` and finish the W&B run with ``exit_code``; later calls do nothing."""
        if self._finished:
            return
        self._finished = True
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self._run is not None:
            run = self._run
            self._guarded("finish", lambda: run.finish(exit_code=exit_code))
            self._run = None
        if id(self) in _ACTIVE_RUNS:
            _ACTIVE_RUNS.discard(id(self))
            if not _ACTIVE_RUNS:
                # run.finish() only asks wandb's service process to close the run: the .wandb file is
                # completed later (measured with wandb 0.31: sometimes only its header right after finish).
                # Shutting the service down waits for that, so the records are on disk before the job
                # exits or requeues and before a test reads them back. The next wandb.init starts a new one.
                self._guarded("teardown", self._wandb.teardown)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        """Finish with exit code 0, 1 on an exception, or 143 after marking the run preempting when the
        exception is :class:`ecg_core.preemption.Preempted` (looked up only if that module is loaded, so
        that the tracker does not import torch)."""
        if exc is None:
            self.finish(0)
            return
        preemption = sys.modules.get("ecg_core.preemption")
        if preemption is not None and isinstance(exc, preemption.Preempted):
            self.mark_preempting()
            self.finish(143)
        else:
            self.finish(1)


def _read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object stored in ``path``; {} when missing. A damaged file is replaced (with a warning)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        warnings.warn(f"{path}: unreadable ({exc}); starting a new summary", TrackingWarning, stacklevel=3)
        return {}
    if not isinstance(value, dict):
        warnings.warn(f"{path}: not a JSON object; starting a new summary", TrackingWarning, stacklevel=3)
        return {}
    return value


# ------------------------------------------------------------------------------------------------
# Reading offline runs back
# ------------------------------------------------------------------------------------------------

_BLOCK_SIZE = 32 * 1024
_FILE_HEADER = struct.Struct("<4sHB")     # b":W&B", magic 0xBEE1, version
_CHUNK_HEADER = struct.Struct("<IHB")     # crc32 of (type byte + payload), payload length, chunk type
_IDENT, _MAGIC, _VERSION = b":W&B", 0xBEE1, 0
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def iter_wandb_records(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """The serialized records of a ``.wandb`` transaction log, in order.

    Layout (LevelDB's log format with a file header): a 7-byte header (``b":W&B"``, uint16 0xBEE1,
    version 0), then the file is cut into 32 KiB blocks counted from its first byte. A block holds
    chunks, each a 7-byte ``<IHB`` header (crc32, payload length, type) and its payload; a chunk never
    crosses a block boundary, and a block tail shorter than a chunk header is zero padding. A record
    is one FULL chunk or a FIRST chunk, any MIDDLE chunks and a LAST chunk (in the following blocks).
    The crc32 (zlib) covers the type byte and the payload.

    A truncated tail (the writer was killed) ends the iteration quietly; a checksum mismatch or chunk
    sequence error raises ``ValueError`` naming the file and byte offset.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < _FILE_HEADER.size:
        raise ValueError(f"{path}: too short for a .wandb file ({len(data)} bytes)")
    ident, magic, version = _FILE_HEADER.unpack_from(data, 0)
    if (ident, magic, version) != (_IDENT, _MAGIC, _VERSION):
        raise ValueError(f"{path}: not a .wandb transaction log of format version 0 "
                         f"(header {data[:_FILE_HEADER.size]!r})")
    pos = _FILE_HEADER.size
    pending: Optional[list[bytes]] = None          # chunks of a record begun by a FIRST chunk
    while pos + _CHUNK_HEADER.size <= len(data):
        room = _BLOCK_SIZE - pos % _BLOCK_SIZE
        if room < _CHUNK_HEADER.size:              # block trailer: zero padding
            pos += room
            continue
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        start, end = pos + _CHUNK_HEADER.size, pos + _CHUNK_HEADER.size + length
        if kind == 0 and length == 0 and crc == 0:  # zero-filled space the writer had not reached
            return
        if end > len(data):                         # chunk cut off by a kill: the record is lost
            return
        if _CHUNK_HEADER.size + length > room:
            raise ValueError(f"{path}: chunk at byte {pos} runs past its 32 KiB block")
        payload = data[start:end]
        if zlib.crc32(payload, zlib.crc32(bytes((kind,)))) != crc:
            raise ValueError(f"{path}: checksum mismatch in the chunk at byte {pos}")
        if kind == _FULL and pending is None:
            yield payload
        elif kind == _FIRST and pending is None:
            pending = [payload]
        elif kind in (_MIDDLE, _LAST) and pending is not None:
            pending.append(payload)
            if kind == _LAST:
                yield b"".join(pending)
                pending = None
        else:
            raise ValueError(f"{path}: unexpected chunk type {kind} at byte {pos} "
                             f"({'inside' if pending is not None else 'outside'} a multi-chunk record)")
        pos = end


@dataclass
class OfflineRun:
    """What a W&B run logged offline, read back by :func:`read_offline_run`.

    ``config`` and ``summary`` exclude wandb's internal ``_wandb`` key; ``history`` rows are dicts keyed
    like the logged metrics plus wandb's ``_step``, ``_timestamp`` and ``_runtime``, sorted by ``_step``.
    Media values (tables, images) are the reference dicts wandb stores (``_type``, ``path`` ...);
    :meth:`table` loads a logged table.
    """

    run_id: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    group: str = ""
    job_type: str = ""
    name: str = ""
    project: str = ""
    tags: list[str] = field(default_factory=list)
    exit_code: Optional[int] = None                  # of the last attempt; None if it never exited cleanly
    preempting: bool = False                         # some attempt was marked preempting
    folders: list[Path] = field(default_factory=list)  # the offline-run folders, oldest first

    def media_file(self, value: Mapping[str, Any]) -> Path:
        """The file of a logged media reference (a history/summary value with a ``path``)."""
        relative = value.get("path") if isinstance(value, Mapping) else None
        if not relative:
            raise ValueError(f"not a W&B media reference: {value!r:.200}")
        for folder in reversed(self.folders):
            candidate = folder / "files" / relative
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"media file {relative} of run {self.run_id} not found under {self.folders}")

    def table(self, key: str) -> "pandas.DataFrame":
        """The table last logged under ``key`` (from the summary, which holds the latest value)."""
        import pandas

        value = self.summary.get(key)
        if not isinstance(value, Mapping) or value.get("_type") != "table-file":
            raise KeyError(f"run {self.run_id} has no table logged as {key!r}")
        content = json.loads(self.media_file(value).read_text(encoding="utf-8"))
        return pandas.DataFrame(content["data"], columns=content["columns"])


def read_offline_run(path: str | os.PathLike[str], run_id: Optional[str] = None) -> OfflineRun:
    """Read back the W&B run logged under ``path``.

    Args:
        path: a job's run directory (holding ``wandb/``), a ``wandb`` directory, one ``offline-run-*``
            folder, or a ``.wandb`` file. All folders of the same run id in that ``wandb`` directory are
            merged (a resumed run starts a new folder), oldest first by their recorded start time.
        run_id: which run, when the directory holds several; required then.

    Merging: config and summary updates apply in order (later attempts win). History: a later attempt's
    rows replace the earlier attempts' rows from its first logged step on (those steps were repeated
    after the resume).

    Raises:
        FileNotFoundError: no ``.wandb`` file (for ``run_id``) under ``path``.
        ValueError: several run ids and no ``run_id``; a damaged file.
    """
    from wandb.proto import wandb_internal_pb2  # imported here: wandb is imported only when needed

    wandb_dir = _wandb_dir(Path(path))
    files = sorted(wandb_dir.glob("*run-*/run-*.wandb"))
    by_id: dict[str, list[Path]] = {}
    for file in files:
        by_id.setdefault(file.stem[len("run-"):], []).append(file)
    if run_id is None:
        if len(by_id) > 1:
            raise ValueError(f"{wandb_dir} holds several W&B runs ({', '.join(sorted(by_id))}); pass run_id")
        run_id = next(iter(by_id), None)
    if run_id is None or run_id not in by_id:
        raise FileNotFoundError(f"no W&B run{f' {run_id!r}' if run_id else ''} under {wandb_dir}")

    attempts = []
    for file in by_id[run_id]:
        records = []
        for raw in iter_wandb_records(file):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            records.append(record)
        attempts.append(_Attempt.from_records(file.parent, records))
    attempts.sort(key=lambda a: (a.start_time, a.folder.name))

    result = OfflineRun(run_id=run_id, config={}, history=[], summary={})
    for attempt in attempts:
        attempt.merge_into(result)
    result.history.sort(key=lambda row: row.get("_step", 0))
    return result


def _wandb_dir(path: Path) -> Path:
    """The ``wandb`` directory that ``path`` is, contains, or lies in (see :func:`read_offline_run`)."""
    if path.is_file():
        return path.parent.parent
    if (path / "wandb").is_dir():
        return path / "wandb"
    if any(path.glob("run-*.wandb")):
        return path.parent
    if path.is_dir():
        return path
    raise FileNotFoundError(f"no such W&B run location: {path}")


@dataclass
class _Attempt:
    """One offline-run folder's records, decoded."""

    folder: Path
    start_time: float = math.inf
    run: Any = None
    config_updates: list[Any] = field(default_factory=list)      # ConfigRecord messages, in order
    summary_updates: list[Any] = field(default_factory=list)     # SummaryRecord messages, in order
    history: list[dict[str, Any]] = field(default_factory=list)
    exit_code: Optional[int] = None
    preempting: bool = False

    @classmethod
    def from_records(cls, folder: Path, records: list[Any]) -> "_Attempt":
        attempt = cls(folder)
        for record in records:
            kind = record.WhichOneof("record_type")
            if kind == "run":
                attempt.run = record.run
                attempt.start_time = record.run.start_time.seconds + record.run.start_time.nanos * 1e-9
                attempt.config_updates.append(record.run.config)
                attempt.summary_updates.append(record.run.summary)
            elif kind == "config":
                attempt.config_updates.append(record.config)
            elif kind == "summary":
                attempt.summary_updates.append(record.summary)
            elif kind == "history":
                row: dict[str, Any] = {}
                for item in record.history.item:
                    _apply_item(row, item, remove=False)
                attempt.history.append(row)
            elif kind == "exit":
                attempt.exit_code = record.exit.exit_code
            elif kind == "preempting":
                attempt.preempting = True
        return attempt

    def merge_into(self, result: OfflineRun) -> None:
        for update in self.config_updates:
            _apply_updates(result.config, update)
        for update in self.summary_updates:
            _apply_updates(result.summary, update)
        if self.history:
            first = min(row.get("_step", 0) for row in self.history)
            result.history[:] = [row for row in result.history if row.get("_step", 0) < first] + self.history
        if self.run is not None:
            result.group, result.job_type = self.run.run_group, self.run.job_type
            result.name, result.project, result.tags = self.run.display_name, self.run.project, list(self.run.tags)
        result.exit_code = self.exit_code
        result.preempting = result.preempting or self.preempting
        result.folders.append(self.folder)


def _apply_updates(target: dict[str, Any], message: Any) -> None:
    """Apply a ConfigRecord/SummaryRecord (``update`` and ``remove`` items) to ``target``."""
    for item in message.update:
        _apply_item(target, item, remove=False)
    for item in message.remove:
        _apply_item(target, item, remove=True)
    target.pop("_wandb", None)


def _apply_item(target: dict[str, Any], item: Any, *, remove: bool) -> None:
    """Set (or remove) one item, addressed by ``key`` or by the path ``nested_key``, in ``target``."""
    keys = list(item.nested_key) or [item.key]
    node = target
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            if remove:
                return
            child = node[key] = {}
        node = child
    if remove:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = json.loads(item.value_json)
