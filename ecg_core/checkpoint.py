"""Sharded, atomic, resumable checkpoints with torch.distributed.checkpoint (DCP).

A checkpoint is the named set of stateful parts of DESIGN.md ("Interfaces to keep stable")::

    <run_dir>/checkpoints/step_0001200/
        .metadata, __0_0.distcp, ...   DCP: {"model": sharded model state, "optim": sharded optimizer state}
        rank_00000.json, ...           per rank: {"sampler": WindowLoader.state_dict(), "rng": python/numpy/torch}
        rank_00000.pt, ...             per rank (world size > 1): its unsharded buffers (batch-norm statistics)
        train_state.json               {"step": 1200, "epoch": 3, ...} (lingua's TrainState: what the loop needs)
        config.yaml                    the resolved config of the run
        COMPLETE                       JSON: step, world size, time, sha256 of .metadata, size of every file

Why per-rank files: DCP de-duplicates values saved under the same key by several ranks (one copy
survives), but every rank has its own sampler position, random streams and, with FSDP2, its own
unsharded buffers (batch-norm running statistics). A few small files written into the checkpoint before
it is published are simpler than per-rank DCP keys, and the JSON ones stay readable by people.

Atomicity (torchtitan ``components/checkpoint.py`` writes in place and relies on its own metadata;
here the directory itself is published atomically): everything is written into
``step_XXXXXXX.tmp-<token>``; after a barrier rank 0 records the file sizes in ``COMPLETE`` and renames
the directory to ``step_XXXXXXX``. A directory without that exact name, or without a consistent
``COMPLETE``, is never loaded. A crash mid-save thus leaves a ``.tmp-`` directory, which loading skips
(with a warning) and the next save deletes.

Resume never restarts silently at step 0 (the seed repos' ``load_from_checkpoint`` whose result was
thrown away): :meth:`Checkpointer.load` returns ``None`` only when the run has no checkpoint at all,
falls back to the previous checkpoint with a :class:`CheckpointFallbackWarning` when the newest is
damaged, and raises :class:`CheckpointError` naming every checkpoint when none loads.

Loading at another world size reshards (platform-facts.md: a 2-rank checkpoint loads into 1 rank and
into a plain ``nn.Module`` without a process group); :func:`load_encoder` is the one way evaluation
reads weights.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import re
import shutil
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultSavePlanner, FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from ecg_core import distributed as D

__all__ = [
    "CheckpointError", "CheckpointFallbackWarning", "NonFiniteLossError", "Checkpointer", "load_encoder",
    "export_full_state_dict", "resolve_checkpoint", "assert_finite", "step_dir_name",
]

FORMAT_VERSION = 1
COMPLETE = "COMPLETE"
METADATA = ".metadata"          # DCP's metadata file name (FileSystemWriter)
TRAIN_STATE = "train_state.json"
CONFIG = "config.yaml"
_STEP_DIR = re.compile(r"^step_(\d{7,})$")
_TMP_DIR = re.compile(r"^step_(\d{7,})\.tmp-")
# dcp.load/save warn whenever they run without a process group, even when asked to (no_dist=True).
_NO_DIST_WARNING = r"torch\.distributed is disabled, unavailable or uninitialized"

T = TypeVar("T")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or no existing checkpoint could be loaded."""


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint was damaged or unfinished; an older one was loaded instead."""


class NonFiniteLossError(FloatingPointError):
    """The loss (or a parameter) became NaN or infinite; the run stops and this state is not saved."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


# ------------------------------------------------------------------------------------------------
# Small file helpers
# ------------------------------------------------------------------------------------------------

def _write_text(path: Path, text: str) -> None:
    # fsync: the rename that publishes the checkpoint must not reach the disk before its content.
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _write_json(path: Path, obj: Any) -> None:
    _write_text(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n")


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, CheckpointException) and exc.failures:
        # Its str() is a traceback per rank; the first rank's own exception says what went wrong.
        rank, (inner, _) = next(iter(exc.failures.items()))
        return f"{_first_line(inner)} (DCP, rank {rank})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _json_ready(name: str, value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be JSON-serialisable (dicts, lists, str, numbers): {exc}") from None


def _collectively(what: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it fails on any rank, raise :class:`CheckpointError` on all of them.

    A failure on one rank only (a full disk, a missing file) must not leave the others waiting in the
    next collective, so every rank learns every rank's outcome before going on. DCP's own
    ``CheckpointException`` derives from ``BaseException``, hence the explicit catch.
    """
    try:
        result, error = fn(), None
    except (Exception, CheckpointException) as exc:  # reported to all ranks, re-raised below
        result, error = None, exc
    errors = D.all_gather_object(None if error is None else _first_line(error))
    failed = {rank: msg for rank, msg in enumerate(errors) if msg is not None}
    if failed:
        detail = "; ".join(f"rank {rank}: {msg}" for rank, msg in failed.items())
        raise CheckpointError(f"{what} failed ({detail})") from error
    return result  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------
# RNG state: python, numpy (global), torch CPU and the current CUDA device, as JSON
# ------------------------------------------------------------------------------------------------

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    """This process's global random states (JSON-ready; floats round-trip exactly through ``repr``)."""
    version, internal, gauss_next = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": {"name": name, "key": key.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = _b64(torch.cuda.get_rng_state())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    npy = state["numpy"]
    np.random.set_state((npy["name"], np.asarray(npy["key"], dtype=np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_unb64(state["cuda"]))


# ------------------------------------------------------------------------------------------------
# Model/optimizer state through torch.distributed.checkpoint.state_dict (FSDP2-aware, FQN keys)
# ------------------------------------------------------------------------------------------------

def _state_dicts(model: nn.Module, optimizer: Optimizer | None) -> dict[str, Any]:
    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optim": osd}


def _apply_state_dicts(model: nn.Module, optimizer: Optimizer | None, state: dict[str, Any]) -> None:
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _rank_local_buffers(model: nn.Module, model_state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The buffers that are plain (unsharded) tensors, e.g. batch-norm running statistics.

    FSDP2 shards parameters but leaves buffers per rank, and without SyncBatchNorm every rank keeps
    its own running statistics. DCP treats equal keys on several ranks as replicas and keeps one
    copy (rank 0's, see ``save``), so an exact resume needs each rank's copy on the side. The DCP copy
    serves resharded loads and :func:`load_encoder`.
    """
    names = {name for name, _ in model.named_buffers()}
    return {k: v.detach().cpu() for k, v in model_state.items()
            if k in names and isinstance(v, torch.Tensor) and not isinstance(v, DTensor)}


def _params_finite(model_state: dict[str, Any]) -> bool:
    return all(bool(torch.isfinite(_local(t)).all()) for t in model_state.values()
               if isinstance(t, torch.Tensor) and t.is_floating_point())


# ------------------------------------------------------------------------------------------------
# Validation of a checkpoint directory (cheap: sizes and the metadata hash, not the shard contents)
# ------------------------------------------------------------------------------------------------

def _problem(path: Path) -> str | None:
    """Why ``path`` cannot be loaded, or ``None`` if it looks complete and intact."""
    if _TMP_DIR.match(path.name):
        return "unfinished save (the job stopped while writing it)"
    marker = path / COMPLETE
    if not marker.is_file():
        return f"no {COMPLETE} marker (the save did not finish)"
    try:
        meta = _read_json(marker)
        files, step = meta["files"], int(meta["step"])
        metadata_sha = meta["metadata_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable {COMPLETE} marker ({_first_line(exc)})"
    if meta.get("format") != FORMAT_VERSION:
        return f"checkpoint format {meta.get('format')!r}, this code reads {FORMAT_VERSION}"
    match = _STEP_DIR.match(path.name)
    if match is None or int(match.group(1)) != step:
        return f"{COMPLETE} says step {step} but the directory is {path.name}"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"missing file {name}"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} were written (truncated or overwritten)"
    try:
        if _sha256(path / METADATA) != metadata_sha:
            return f"{METADATA} does not match its recorded sha256"
    except OSError as exc:
        return f"unreadable {METADATA} ({_first_line(exc)})"
    return None


def _scan(ckpt_dir: Path) -> list[tuple[int, bool, Path]]:
    """``(step, is_published, path)`` of every step directory (published or ``.tmp-``), newest first.

    At equal step a published directory sorts before an unfinished one, so an interrupted re-save of a
    step does not hide the good copy.
    """
    if not ckpt_dir.is_dir():
        return []
    found = []
    for entry in ckpt_dir.iterdir():
        if not entry.is_dir():
            continue
        if match := _STEP_DIR.match(entry.name):
            found.append((int(match.group(1)), True, entry))
        elif match := _TMP_DIR.match(entry.name):
            found.append((int(match.group(1)), False, entry))
    return sorted(found, key=lambda item: (item[0], item[1], item[2].name), reverse=True)


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory meant by ``path``: a ``step_XXXXXXX`` directory, or the newest complete
    one under a ``checkpoints/`` directory or a run directory. Raises :class:`CheckpointError`."""
    path = Path(path)
    if _STEP_DIR.match(path.name) or (path / METADATA).exists():
        problem = _problem(path) if path.is_dir() else "no such directory"
        if problem:
            raise CheckpointError(f"{path}: {problem}")
        return path
    for ckpt_dir in (path / "checkpoints", path):
        steps = _scan(ckpt_dir)
        for _, published, candidate in steps:
            if published and _problem(candidate) is None:
                return candidate
        if steps:
            listing = ", ".join(f"{p.name} ({_problem(p)})" for _, _, p in steps)
            raise CheckpointError(f"{ckpt_dir}: no complete checkpoint: {listing}")
    raise CheckpointError(f"{path}: no checkpoint found (expected step_XXXXXXX directories in {path} or "
                          f"{path / 'checkpoints'})")


# ------------------------------------------------------------------------------------------------
# The checkpointer used by the training loop
# ------------------------------------------------------------------------------------------------

class Checkpointer:
    """Saves and restores the training state of one run under ``<run_dir>/checkpoints/``.

    ``save`` and ``load`` are collective: every rank calls them at the same point. ``latest`` only
    reads the file system. Layout, atomicity and fallback: see the module docstring.
    """

    def __init__(self, run_dir: str | os.PathLike[str], keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (the newest checkpoint is never deleted), got {keep}")
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"
        self.keep = keep

    # -- reading the directory -------------------------------------------------------------------
    def latest(self) -> Path | None:
        """The newest complete, intact-looking checkpoint, or ``None``."""
        for _, published, path in _scan(self.dir):
            if published and _problem(path) is None:
                return path
        return None

    def checkpoints(self) -> list[tuple[Path, str | None]]:
        """Every step directory, newest first, with the reason it cannot be loaded (``None``: loadable)."""
        return [(path, _problem(path)) for _, _, path in _scan(self.dir)]

    # -- save --------------------------------------------------------------------------------------
    def save(self, step: int, model: nn.Module, optimizer: Optimizer | None, train_state: dict[str, Any],
             sampler_state: dict[str, Any], config_yaml: str, *, check_finite: bool = True) -> Path:
        """Write the checkpoint of ``step`` (collective); returns its directory.

        ``train_state`` (JSON, the same on all ranks; its ``step``, if any, must equal ``step``) and
        ``config_yaml`` are written by rank 0; ``sampler_state`` (JSON) and the RNG states by every rank.
        With ``check_finite`` a model holding NaN/inf is refused with :class:`NonFiniteLossError`.
        """
        if int(train_state.get("step", step)) != step:
            raise ValueError(f"train_state['step']={train_state['step']} but saving step {step}")
        _json_ready("train_state", train_state)
        _json_ready("sampler_state", sampler_state)
        steps = D.all_gather_object(int(step))
        if len(set(steps)) != 1:
            raise CheckpointError(f"ranks disagree on the step to save: {steps}")
        rank, world_size = D.get_rank(), D.get_world_size()
        state = _state_dicts(model, optimizer)
        if check_finite and not D.all_ranks_true(_params_finite(state["model"])):
            raise NonFiniteLossError(f"the model has non-finite parameters at step {step}; not saving it")

        name = step_dir_name(step)
        token = D.broadcast_object(uuid.uuid4().hex[:12] if D.is_main() else None)
        tmp, final = self.dir / f"{name}.tmp-{token}", self.dir / name

        def prepare() -> None:
            if D.is_main():
                tmp.mkdir(parents=True)
        _collectively(f"creating {tmp}", prepare)

        rank_file = {"format": FORMAT_VERSION, "rank": rank, "world_size": world_size, "step": step,
                     "sampler": sampler_state, "rng": rng_state()}
        buffers = _rank_local_buffers(model, state["model"]) if world_size > 1 else {}

        def write_rank_files() -> None:
            _write_json(tmp / f"rank_{rank:05d}.json", rank_file)
            if buffers:
                with open(tmp / f"rank_{rank:05d}.pt", "wb") as handle:
                    torch.save(buffers, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
        _collectively(f"writing per-rank state into {tmp}", write_rank_files)
        # Replicated (unsharded) tensors are kept from rank 0, not from whichever rank DCP's load balancing
        # picks, so the checkpoint's buffers equal rank 0's full state dict (what evaluation then reads).
        planner = DefaultSavePlanner(dedup_save_to_lowest_rank=True)
        _collectively(f"saving model/optimizer into {tmp}", lambda: dcp.save(state, checkpoint_id=tmp,
                                                                             planner=planner))

        def publish() -> None:
            if not D.is_main():
                return
            _write_json(tmp / TRAIN_STATE, dict(train_state, step=step))
            _write_text(tmp / CONFIG, config_yaml)
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            _write_json(tmp / COMPLETE, {
                "format": FORMAT_VERSION, "step": step, "world_size": world_size,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "metadata_sha256": _sha256(tmp / METADATA), "torch": torch.__version__, "files": files,
            })
            if final.exists():   # the same step saved again (e.g. a final save after a resume at that step)
                os.rename(final, self.dir / f"{name}.tmp-replaced-{token}")
            os.rename(tmp, final)   # the atomic publication
            _fsync_dir(self.dir)
            self._prune(final)
        # The barrier inside _collectively also keeps every rank here until the rename is done, so no
        # rank exits (e.g. for a requeue) before the checkpoint exists.
        _collectively(f"publishing {final}", publish)
        return final

    def _prune(self, current: Path) -> None:
        """Keep the newest ``keep`` complete checkpoints; delete older ones, leftovers of crashed saves and
        damaged directories older than the newest kept one. Rank 0 only."""
        entries = _scan(self.dir)
        good = [path for _, published, path in entries if published and (path == current or _problem(path) is None)]
        kept = set(good[:self.keep]) | {current}
        newest_kept = max(int(_STEP_DIR.match(p.name).group(1)) for p in kept)  # type: ignore[union-attr]
        for step, published, path in entries:
            if path in kept:
                continue
            # Damaged directories newer than every good one are left for inspection; load() skips them.
            if not published or path in good or step < newest_kept:
                shutil.rmtree(path, ignore_errors=True)

    # -- load --------------------------------------------------------------------------------------
    def load(self, model: nn.Module, optimizer: Optimizer | None = None) -> dict[str, Any] | None:
        """Restore the newest loadable checkpoint into ``model``/``optimizer`` and this rank's RNG (collective).

        Returns ``None`` when the run has no checkpoint at all, else a dict with ``step``,
        ``train_state``, ``sampler_state`` (this rank's, for ``WindowLoader.load_state_dict``),
        ``config_yaml``, ``path`` and ``world_size`` (of the saving run). A damaged or unfinished newer
        checkpoint is skipped with a :class:`CheckpointFallbackWarning`; if none loads,
        :class:`CheckpointError` lists each one and why.
        """
        def listing() -> list[tuple[str, str | None]] | None:
            return [(str(path), _problem(path)) for _, _, path in _scan(self.dir)] if D.is_main() else None
        candidates = D.broadcast_object(_collectively(f"listing {self.dir}", listing))
        if not candidates:
            return None
        failures: list[tuple[str, str]] = []
        for path_text, problem in candidates:
            if problem is None:
                try:
                    restored = self._load_one(Path(path_text), model, optimizer)
                except CheckpointError as exc:
                    problem = str(exc)
                else:
                    if failures:
                        skipped = "; ".join(f"{Path(p).name}: {why}" for p, why in failures)
                        if D.is_main():   # one loud line, not one per rank
                            warnings.warn(CheckpointFallbackWarning(
                                f"resumed from the OLDER checkpoint {path_text} because newer ones cannot be "
                                f"used ({skipped}); training since then is repeated"), stacklevel=2)
                    return restored
            failures.append((path_text, problem))
        listing_text = "; ".join(f"{p}: {why}" for p, why in failures)
        raise CheckpointError(f"checkpoints exist in {self.dir} but none can be loaded, and restarting from step 0 "
                              f"would discard them silently. Fix or move them away: {listing_text}")

    def _load_one(self, path: Path, model: nn.Module, optimizer: Optimizer | None) -> dict[str, Any]:
        rank, world_size = D.get_rank(), D.get_world_size()

        state = _state_dicts(model, optimizer)

        def read_small() -> tuple[dict[str, Any], dict[str, Any], str, dict[str, Any], dict[str, torch.Tensor]]:
            meta = _read_json(path / COMPLETE)
            saved = int(meta["world_size"])
            # At another world size each rank takes a saved rank's sampler position; the sampler
            # itself rescales it (WindowSampler.load_state_dict).
            per_rank = _read_json(path / f"rank_{rank % saved:05d}.json")
            buffers: dict[str, torch.Tensor] = {}
            buffer_file = path / f"rank_{rank:05d}.pt"
            if saved == world_size and buffer_file.is_file():
                buffers = torch.load(buffer_file, map_location="cpu", weights_only=True)
                expected = set(_rank_local_buffers(model, state["model"]))
                if set(buffers) != expected:
                    raise KeyError(f"{buffer_file.name} holds buffers {sorted(buffers)}, the model has "
                                   f"{sorted(expected)}")
            return (meta, _read_json(path / TRAIN_STATE), (path / CONFIG).read_text(encoding="utf-8"), per_rank,
                    buffers)
        meta, train_state, config_yaml, per_rank, buffers = _collectively(f"reading {path}", read_small)

        # DCP loads in place into the (sharded) tensors of ``state`` and reshards when the world size
        # changed; its errors are raised on every rank.
        _collectively(f"loading {path}", lambda: dcp.load(state, checkpoint_id=path))
        for name, value in buffers.items():   # this rank's own buffers instead of DCP's single copy
            state["model"][name].copy_(value)
        _apply_state_dicts(model, optimizer, state)

        saved_world = int(meta["world_size"])
        if saved_world == world_size:
            set_rng_state(per_rank["rng"])
        elif D.is_main():
            warnings.warn(f"{path} was saved by {saved_world} ranks and is loaded by {world_size}: random "
                          "states are not restored (the run continues, but not bit-exactly)", RuntimeWarning,
                          stacklevel=3)
        return {"step": int(meta["step"]), "train_state": train_state, "sampler_state": per_rank["sampler"],
                "config_yaml": config_yaml, "path": path, "world_size": saved_world}


# ------------------------------------------------------------------------------------------------
# Reading weights for evaluation
# ------------------------------------------------------------------------------------------------

def _tensor_metadata(ckpt: Path) -> dict[str, TensorStorageMetadata]:
    try:
        metadata = FileSystemReader(str(ckpt)).read_metadata()
    except Exception as exc:  # noqa: BLE001 -- any unreadable metadata is the same problem to the user
        raise CheckpointError(f"{ckpt}: cannot read DCP metadata ({_first_line(exc)})") from exc
    return {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def _dcp_load(state: dict[str, Any], ckpt: Path, distributed: bool) -> None:
    if distributed:
        dcp.load(state, checkpoint_id=ckpt)
        return
    # Each process reads the full tensors on its own: no collective, so one rank may call this alone.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_DIST_WARNING, category=UserWarning)
        dcp.load(state, checkpoint_id=ckpt, no_dist=True)


def load_encoder(path: str | os.PathLike[str], encoder: nn.Module, prefix: str = "encoder.") -> nn.Module:
    """Fill ``encoder`` with the weights stored under ``model.<prefix>`` in a checkpoint; returns it.

    ``path``: a ``step_XXXXXXX`` directory, a ``checkpoints/`` directory or a pretraining run directory
    (newest complete checkpoint). Works with or without a process group and whatever the world size
    of the saving run (DCP reshards). A plain ``encoder`` is read whole by the calling process alone;
    an FSDP2-sharded one is read collectively. Every tensor of ``encoder.state_dict()`` must be in the
    checkpoint with the same shape (strict); other keys (projector, EMA teacher, ...) are ignored.
    """
    ckpt = resolve_checkpoint(path)
    available = _tensor_metadata(ckpt)
    own = encoder.state_dict()
    wanted = {f"{prefix}{k}": v for k, v in own.items()}
    missing = [k for k in wanted if f"model.{k}" not in available]
    if missing:
        prefixes = sorted({k.split(".")[1] for k in available if k.startswith("model.")})
        raise CheckpointError(f"{ckpt} lacks {len(missing)} of the encoder's {len(wanted)} tensors, e.g. "
                              f"{missing[:3]}; the model's top-level modules there are {prefixes} "
                              f"(is prefix={prefix!r} right?)")
    wrong = [f"{k}: checkpoint {tuple(available[f'model.{k}'].size)} vs encoder {tuple(v.shape)}"
             for k, v in wanted.items() if isinstance(v, torch.Tensor) and
             tuple(available[f"model.{k}"].size) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{ckpt}: shape mismatch for {len(wrong)} tensors, e.g. {wrong[:3]}")
    distributed = any(isinstance(v, DTensor) for v in wanted.values())
    state = {"model": wanted}
    _dcp_load(state, ckpt, distributed)
    encoder.load_state_dict({k[len(prefix):]: v for k, v in state["model"].items()}, strict=True)
    return encoder


def export_full_state_dict(path: str | os.PathLike[str], prefix: str = "") -> dict[str, torch.Tensor]:
    """The model's full (unsharded) CPU tensors ``{fqn: tensor}`` from a checkpoint, without a process group.

    Only keys starting with ``prefix`` (e.g. ``"encoder."``) are read, and returned without it; e.g.
    ``torch.save(export_full_state_dict(run_dir, "encoder."), "encoder.pt")`` to share an encoder.
    """
    ckpt = resolve_checkpoint(path)
    head = f"model.{prefix}"
    wanted = {k[len("model."):]: torch.empty(tuple(md.size), dtype=md.properties.dtype)
              for k, md in _tensor_metadata(ckpt).items() if k.startswith(head)}
    if not wanted:
        raise CheckpointError(f"{ckpt} has no model tensors under {prefix!r}")
    state = {"model": wanted}
    _dcp_load(state, ckpt, distributed=False)
    return {k[len(prefix):]: v for k, v in state["model"].items()}


# ------------------------------------------------------------------------------------------------
# Non-finite guard
# ------------------------------------------------------------------------------------------------

def assert_finite(loss: torch.Tensor | float, step: int, *, collective: bool = True) -> None:
    """Raise :class:`NonFiniteLossError` if ``loss`` is NaN/inf (on any rank when ``collective``).

    Call it on every rank before ``optimizer.step()`` and before saving, so that a diverged state is
    never written and all ranks stop together instead of some waiting in the next collective.
    """
    value = loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
    finite = bool(torch.isfinite(value).all())
    if collective and D.get_world_size() > 1:
        if D.all_ranks_true(finite):
            return
        shown = D.all_gather_object(value.flatten()[:4].tolist())
        bad = {rank: v for rank, v in enumerate(shown) if not all(math.isfinite(x) for x in v)}
        where = ", ".join(f"rank {rank}: {v}" for rank, v in bad.items())
    elif finite:
        return
    else:
        where = f"value {value.flatten()[:4].tolist()}"
    raise NonFiniteLossError(f"non-finite loss at step {step} ({where}): training stops and this state is not "
                             "saved; resume from the last checkpoint with a lower learning rate or check the data")
