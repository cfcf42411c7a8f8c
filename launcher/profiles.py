"""Cluster profiles: where jobs run and with which resources, as validated data.

A profile is one YAML file in ``cluster_configs/`` (or anywhere, given by path) loaded into the typed
:class:`ClusterProfile` with :func:`ecg_core.config.load_config` (defaults <- file <- ``key=value``
overrides; unknown keys and wrong types are :class:`~ecg_core.config.ConfigError`), then checked for
values no type can express (positive counts, known executor, a signal delay shorter than the time
limit, ...). Every error is one line naming the file (or the override) and the key.

Profiles shipped with the project:

- ``local``: the embedded default. Jobs run as local processes on this machine (no SLURM).
- ``slurm_ci``: the single-host SLURM cluster that ``tests/slurm/slurm-up.sh`` brings up in CI.
- ``example_a100``: a documented multi-node 4xA100 cluster to copy and edit.

Which profile is used when the user names none: :func:`default_profile`.
This module only describes resources; :mod:`launcher.submit` turns a profile into a submitit executor.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ecg_core.config import COMMAND_LINE, ConfigError, load_config

__all__ = [
    "CLUSTER_CONFIGS",
    "ClusterProfile",
    "DEFAULT_PROFILE_FILE",
    "ENV_CLUSTER",
    "EXECUTORS",
    "RESOURCE_KEYS",
    "available_profiles",
    "default_profile",
    "load_profile",
    "profile_path",
]

log = logging.getLogger(__name__)

CLUSTER_CONFIGS = Path(__file__).resolve().parent.parent / "cluster_configs"
"""Directory of the profiles named by a bare name (``--cluster slurm_ci``)."""

ENV_CLUSTER = "ECG_SSL_CLUSTER"
"""Environment variable naming the default profile (a name or a path); see :func:`default_profile`."""

DEFAULT_PROFILE_FILE = "default.yaml"
"""A site's default profile in ``cluster_configs/`` (not shipped). It may be a whole profile or just
``defaults: [example_a100.yaml]`` plus the keys it changes."""

EXECUTORS = ("local", "slurm")

RESOURCE_KEYS = ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "time_min", "signal_delay_s")
"""Fields a grid stage may set for its own jobs (:meth:`ClusterProfile.with_resources`)."""

STAGE_RESOURCES = "stage resources"
"""Source label of errors in a stage's resource overrides."""

# sbatch options that typed fields or the submitter set: in `slurm_extra` they would silently fight them.
_RESERVED_SBATCH = {
    "partition": "partition", "account": "account", "qos": "qos", "nodes": "nodes",
    "ntasks-per-node": "tasks_per_node", "gpus-per-node": "gpus_per_node", "cpus-per-task": "cpus_per_task",
    "mem": "mem_gb", "time": "time_min", "constraint": "constraint", "signal": "signal_delay_s",
    "dependency": "the submitter (job dependencies)", "array": "the submitter (job arrays)",
    "job-name": "the submitter (job names)", "output": "the submitter (log files)",
    "error": "the submitter (log files)",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class ClusterProfile:
    """Where and how jobs run. Field docs are the YAML reference (see ``cluster_configs/README.md``)."""

    name: str = ""
    """Profile name (shown in logs and the manifest); defaults to the file name without ``.yaml``."""
    executor: str = "local"
    """``local``: processes on this machine (no SLURM); ``slurm``: sbatch job arrays."""
    partition: Optional[str] = None
    """SLURM partition; ``null``: the cluster's default partition."""
    account: Optional[str] = None
    qos: Optional[str] = None
    nodes: int = 1
    """Nodes per job (the local executor has exactly one)."""
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    """Processes per node: one per GPU for distributed training (each becomes one torch.distributed rank)."""
    cpus_per_task: int = 1
    mem_gb: Optional[float] = None
    """Memory per node in GB; ``null``: the cluster's default."""
    time_min: int = 60
    """Time limit of one job (one requeue cycle) in minutes."""
    constraint: Optional[str] = None
    """SLURM feature constraint, e.g. ``a100``."""
    signal_delay_s: int = 120
    """SLURM sends the preemption/timeout signal (USR2) this long before the time limit, so that the job
    can checkpoint and requeue itself."""
    max_num_timeout: int = 3
    """How many times a job may requeue itself after a timeout or preemption."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run in each job script before the job (``module load ...``, ``export ...``)."""
    runs_root: Path = Path("runs")
    """Root of all run directories (``<runs_root>/<grid>/<cell>/<stage>/``); must be visible from every
    node and from the submitting machine. Relative paths are relative to the launch directory."""
    data_roots: dict[str, str] = field(default_factory=dict)
    """Dataset name -> path of its store on this cluster (grids name datasets, profiles place them)."""
    max_array_parallelism: int = 64
    """At most this many jobs of one array run at once (``--array=0-N%K``)."""
    slurm_extra: dict[str, Any] = field(default_factory=dict)
    """Further sbatch options, long names without ``--`` (``exclusive: true``, ``mail-type: FAIL``)."""

    @property
    def is_slurm(self) -> bool:
        return self.executor == "slurm"

    def with_resources(self, **resources: Any) -> ClusterProfile:
        """This profile with a grid stage's resources (keys in :data:`RESOURCE_KEYS`) replacing its own.

        ``None`` values keep the profile's value. Raises ConfigError (source ``stage resources``) for an
        unknown key or an invalid value.
        """
        unknown = sorted(set(resources) - set(RESOURCE_KEYS))
        if unknown:
            expected = ", ".join(RESOURCE_KEYS)
            raise ConfigError(STAGE_RESOURCES, unknown[0], f"unknown resource; expected one of {expected}")
        changes = {key: value for key, value in resources.items() if value is not None}
        if not changes:
            return self
        for key, value in changes.items():
            expected = (int, float) if key == "mem_gb" else int
            if isinstance(value, bool) or not isinstance(value, expected):
                raise ConfigError(STAGE_RESOURCES, key, f"expected a number, got {value!r}")
        updated = dataclasses.replace(self, **changes)
        # the profile itself was valid: whatever is wrong now comes from the stage's values
        _validate(updated, lambda key: STAGE_RESOURCES)
        return updated


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def available_profiles(configs_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the profiles in ``configs_dir`` (default :data:`CLUSTER_CONFIGS`), sorted."""
    directory = Path(configs_dir) if configs_dir is not None else CLUSTER_CONFIGS
    return sorted(p.stem for p in directory.glob("*.yaml"))


def profile_path(name_or_path: str | os.PathLike[str], configs_dir: str | os.PathLike[str] | None = None) -> Path:
    """The YAML file of a profile: a path as given, or ``<configs_dir>/<name>.yaml`` for a bare name.

    A value is a path when it is a ``PathLike``, contains a ``/`` or ends in ``.yaml``/``.yml``.
    Raises ConfigError when a bare name has no file (listing the profiles there are).
    """
    if isinstance(name_or_path, os.PathLike) or "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        return Path(name_or_path)
    directory = Path(configs_dir) if configs_dir is not None else CLUSTER_CONFIGS
    path = directory / f"{name_or_path}.yaml"
    if not _NAME.match(name_or_path) or not path.is_file():
        known = ", ".join(available_profiles(directory)) or "none"
        raise ConfigError(str(path), None,
                          f"no cluster profile named {name_or_path!r} (profiles in {directory}: {known})")
    return path


def load_profile(
    name_or_path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    configs_dir: str | os.PathLike[str] | None = None,
) -> ClusterProfile:
    """Load and validate a profile by name (``cluster_configs/<name>.yaml``) or path.

    ``overrides`` are dotted ``key=value`` strings (``time_min=30``, ``data_roots.ptbxl=/data/ptbxl.zarr``)
    merged after the file. The bare name ``local`` works even where ``cluster_configs/`` is absent
    (an installed package): the dataclass defaults are the local profile.

    Raises:
        ConfigError: missing file, YAML error, unknown key, wrong type or invalid value; the message
            names the file (or ``command line``) and the key.
    """
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a sequence of 'key=value' strings, not a single str: [{overrides!r}]")
    try:
        path: Path | None = profile_path(name_or_path, configs_dir)
    except ConfigError:
        if name_or_path != "local":
            raise
        path = None
    profile = load_config(ClusterProfile, [path] if path is not None else [], overrides)
    if not profile.name:
        profile.name = path.stem if path is not None else "local"

    def source_of(key: str) -> str:
        top = key.split(".")[0].split("[")[0]
        for override in reversed(overrides):
            if override.partition("=")[0].strip().split(".")[0] == top:
                return f"{COMMAND_LINE} ({override!r})"
        found = _file_setting(path, top) if path is not None else None
        return found or (str(path) if path is not None else "defaults")

    _validate(profile, source_of)
    return profile


def default_profile(*, configs_dir: str | os.PathLike[str] | None = None) -> ClusterProfile:
    """The profile used when none is named.

    A SLURM profile when ``sbatch`` is on ``PATH`` and one is configured: ``$ECG_SSL_CLUSTER`` (a name or
    a path) or else ``cluster_configs/default.yaml``. Otherwise the ``local`` profile. A configured local
    profile is used as it is; a configured SLURM profile on a machine without ``sbatch`` falls back to
    ``local`` with a logged warning. A configured profile that does not load raises ConfigError (a typo
    in the variable must not silently run everything locally).
    """
    directory = Path(configs_dir) if configs_dir is not None else CLUSTER_CONFIGS
    configured: ClusterProfile | None = None
    where = ""
    if os.environ.get(ENV_CLUSTER):
        configured, where = load_profile(os.environ[ENV_CLUSTER], configs_dir=directory), f"${ENV_CLUSTER}"
    elif (directory / DEFAULT_PROFILE_FILE).is_file():
        configured, where = load_profile(directory / DEFAULT_PROFILE_FILE, configs_dir=directory), DEFAULT_PROFILE_FILE
    if configured is not None:
        if not configured.is_slurm or shutil.which("sbatch") is not None:
            return configured
        log.warning("cluster profile %r (from %s) uses SLURM but sbatch is not on PATH: running locally",
                    configured.name, where)
    return load_profile("local", configs_dir=directory)


# ----------------------------------------------------------------------------------------------------
# Validation of what the types cannot say
# ----------------------------------------------------------------------------------------------------


def _validate(profile: ClusterProfile, source_of: Callable[[str], str]) -> None:
    """Raise ConfigError for the first invalid value, naming its source and key."""
    for key, reason in _problems(profile):
        raise ConfigError(source_of(key), key, reason)


def _problems(p: ClusterProfile) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if not _NAME.match(p.name):
        problems.append(("name", f"must be letters, digits, '_', '.' or '-', got {p.name!r}"))
    if p.executor not in EXECUTORS:
        problems.append(("executor", f"must be one of {', '.join(EXECUTORS)}, got {p.executor!r}"))
    for key in ("nodes", "tasks_per_node", "cpus_per_task", "time_min", "max_array_parallelism"):
        if getattr(p, key) < 1:
            problems.append((key, f"must be at least 1, got {getattr(p, key)}"))
    for key in ("gpus_per_node", "signal_delay_s", "max_num_timeout"):
        if getattr(p, key) < 0:
            problems.append((key, f"must be 0 or more, got {getattr(p, key)}"))
    if p.mem_gb is not None and not p.mem_gb > 0:
        problems.append(("mem_gb", f"must be positive (or null for the cluster's default), got {p.mem_gb}"))
    if p.time_min >= 1 and p.signal_delay_s >= p.time_min * 60:
        problems.append(("signal_delay_s",
                         f"must be shorter than time_min ({p.time_min} min), got {p.signal_delay_s} s"))
    if p.executor == "local" and p.nodes > 1:
        problems.append(("nodes", f"the local executor runs on this machine only: must be 1, got {p.nodes}"))
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(p, key)
        if value is not None and (not value.strip() or any(c.isspace() for c in value)):
            problems.append((key, f"must be a non-empty word without spaces (or null), got {value!r}"))
    for index, line in enumerate(p.setup):
        if not isinstance(line, str):  # OmegaConf lets a nested list through a list[str] field
            problems.append((f"setup[{index}]", f"must be one shell line (a string), got {line!r}"))
        elif "\n" in line:
            problems.append((f"setup[{index}]", "one shell line per list item (no newlines)"))
    if not str(p.runs_root).strip():
        problems.append(("runs_root", "must not be empty"))
    for dataset, root in p.data_roots.items():
        if not _NAME.match(str(dataset)):
            problems.append((f"data_roots.{dataset}", "dataset names are letters, digits, '_', '.' or '-'"))
        elif not isinstance(root, str) or not root.strip():  # (OmegaConf lets a list through dict[str, str])
            problems.append((f"data_roots.{dataset}", f"must be a path, got {root!r}"))
    for option, value in p.slurm_extra.items():
        normalised = str(option).replace("_", "-")
        if normalised.startswith("-") or not normalised:
            problems.append((f"slurm_extra.{option}", "write sbatch options without leading dashes"))
        elif normalised in _RESERVED_SBATCH:
            problems.append((f"slurm_extra.{option}", f"set by {_RESERVED_SBATCH[normalised]}, not here"))
        elif isinstance(value, (Mapping, list)) or value is None:
            problems.append((f"slurm_extra.{option}", f"must be a string, number or true, got {value!r}"))
        elif value is False:
            problems.append((f"slurm_extra.{option}", "false is not an sbatch value: leave the option out"))
    return problems


def _file_setting(path: Path, key: str, depth: int = 0) -> str | None:
    """The file that sets top-level ``key`` last: ``path`` itself or one of its ``defaults`` includes.

    Only for error messages; load_config has already read these files (and rejected include cycles).
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(data, dict):
        return None
    if key in data:
        return str(path)
    includes = data.get("defaults") or []
    if depth > 20 or not isinstance(includes, list):
        return None
    for include in reversed(includes):
        found = _file_setting(path.parent / str(include), key, depth + 1)
        if found:
            return found
    return None
