"""Atomic file writers: a reader (or a job killed midway) sees the old file or the new one, never a part.

Every file the project publishes for another process to read — configs, manifests, DONE markers, results,
predictions, caches, reports — goes through these functions: the bytes are produced completely first, written
to a temporary file in the target's directory (same filesystem), flushed and fsynced, and renamed over the
target (``os.replace``, atomic on POSIX). Any failure removes the temporary file and leaves the target as it
was. Standard library only: the torch-free launcher uses it too.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["json_default", "open_atomic", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """A file object whose content replaces ``path`` atomically when the ``with`` block ends without error.

    Writes go to a temporary file next to ``path`` (same filesystem); at the end of the block it is flushed,
    fsynced and renamed over ``path``. If the block raises, the temporary file is removed and ``path`` is
    untouched. Missing parent directories are created; an existing file keeps its permission bits, a new
    one gets 0644. ``mode`` is ``"wb"`` or ``"w"`` (UTF-8 text); large outputs (``np.savez`` of embeddings)
    stream to disk without a copy in memory.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"open_atomic writes with mode 'wb' or 'w', not {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        file_mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        file_mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp_path = Path(tmp)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        tmp_path.chmod(file_mode)
        tmp_path.replace(target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (:func:`open_atomic`): readers see the old file or the new
    one, never a part."""
    with open_atomic(path, "wb") as out:
        out.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """:func:`write_bytes_atomic` of ``text`` encoded as UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON (keys sorted, trailing newline) with :func:`write_text_atomic`.

    NumPy/torch scalars are written as plain numbers. The text is produced completely before the file is
    touched, so an object that cannot be serialised raises ``TypeError`` and leaves ``path`` as it was.
    """
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True, default=json_default) + "\n")


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)``: the JSON form of scalar-like objects (numpy numbers, 0-d arrays and
    tensors, paths); ``TypeError`` for anything else."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r:.80}")
