"""The grid's manifest: which job of the plan was submitted under which scheduler id (filelock-protected).

``<runs_root>/<grid>/manifest.json`` maps each job key of the plan (``<cell_id>/<stage>``, ``report``) to
what the launcher knows about its submissions::

    {"format": 1, "grid": "demo", "profile": "local", "executor": "local",
     "jobs": {"simclr-xresnet1d50-3f2a9c1b07/pretrain": {
         "kind": "pretrain", "run_dir": "...", "job_id": "1234_0", "attempt": 1, "submitted_at": "...",
         "stdout": ".../1234_0_0_log.out", "stderr": ".../1234_0_0_log.err", "previous": []}}}

Whether a job is finished is never read from here but from its ``DONE`` marker; the manifest only says
what was submitted, so that launching again does not submit a queued or running job twice and
``--status``/``--cancel`` know the scheduler ids. Writers hold ``<grid_dir>/.manifest.lock`` (filelock)
for the whole launch, so two launchers of one grid cannot both submit; every change is written at once
(temporary file + rename), so ids of jobs submitted before a failing ``sbatch`` are kept. A manifest that
does not parse is an error naming the file, never silently replaced (it holds the only record of the
submitted job ids).
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ecg_core.atomic import write_text_atomic

__all__ = ["Manifest", "ManifestError", "MANIFEST", "LOCK"]

MANIFEST = "manifest.json"
LOCK = ".manifest.lock"
FORMAT = 1


class ManifestError(RuntimeError):
    """The manifest cannot be read or locked; the message names the file."""


class Manifest:
    """Read/modify/write access to one grid's manifest."""

    def __init__(self, grid_dir: str | os.PathLike[str]):
        self.grid_dir = Path(grid_dir)
        self.path = self.grid_dir / MANIFEST
        self.lock_path = self.grid_dir / LOCK
        self.data: dict[str, Any] = {"format": FORMAT, "jobs": {}}

    # -- reading ---------------------------------------------------------------------------------
    def load(self) -> Manifest:
        """Read the file (no lock needed: it is only ever replaced whole). Missing -> empty manifest."""
        if not self.path.exists():
            self.data = {"format": FORMAT, "jobs": {}}
            return self
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{self.path}: cannot be read ({exc}); it records the grid's submitted job ids: "
                                "fix it or move it away (then --status cannot see older submissions)") from exc
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
            raise ManifestError(f"{self.path}: not a manifest (no 'jobs' mapping); fix it or move it away")
        if data.get("format") != FORMAT:
            raise ManifestError(f"{self.path}: manifest format {data.get('format')!r}, this version reads {FORMAT}")
        self.data = data
        return self

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        return self.data["jobs"]

    def entry(self, key: str) -> dict[str, Any] | None:
        return self.jobs.get(key)

    # -- writing ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, timeout_s: float = 10.0) -> Iterator[Manifest]:
        """Hold the grid's lock (waiting up to ``timeout_s``) and load the newest manifest."""
        self.grid_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.lock_path))
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout:
            raise ManifestError(f"{self.lock_path}: another launcher is working on this grid right now "
                                f"(lock held for more than {timeout_s:.0f} s); wait for it to finish") from None
        try:
            self.load()
            yield self
        finally:
            lock.release()

    def set_meta(self, **meta: Any) -> None:
        self.data.update(meta)

    def record(self, key: str, *, save: bool = True, **fields: Any) -> None:
        """Record a submission of ``key`` (keeps earlier job ids in ``previous``) and save (unless ``save`` is
        False: then the caller saves once for a whole array)."""
        old = self.jobs.get(key) or {}
        previous = list(old.get("previous", []))
        if old.get("job_id"):
            previous.append(old["job_id"])
        entry = {**old, **fields, "previous": previous, "attempt": int(old.get("attempt", 0)) + 1,
                 "submitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.jobs[key] = entry
        if save:
            self.save()

    def note(self, key: str, **fields: Any) -> None:
        """Update fields of ``key`` without counting a submission (e.g. a skip reason) and save."""
        self.jobs.setdefault(key, {}).update(fields)
        self.save()

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data, indent=1, sort_keys=True))
