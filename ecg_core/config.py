"""Typed configuration: dataclass schemas merged with YAML files and dotted command-line overrides.

Every job has one typed config. The schema is a plain ``@dataclass`` owned by the module that uses it
(nested dataclasses, lists, dicts, tuples, ``Optional``, ``Enum``, ``Path`` and scalars); this module
only provides the machinery and knows no particular schema. Values are layered, later wins::

    dataclass defaults (or ``base``)  <-  YAML file 1  <-  YAML file 2 ...  <-  "a.b=value" overrides

The merge is strict, with struct-mode semantics: every dataclass node of an OmegaConf structured
config is closed, so a misspelt key, a value of the wrong type, a YAML syntax error, a missing file
or a required value left ``???`` raises :class:`ConfigError`, a one-line message naming the dotted
key, the file (or ``command line``) it came from, and the problem. This is meant to fail at
``--dry-run`` rather than after days on a cluster. Only fields typed as dicts (``dict[str, float]``,
``dict[str, Any]``) accept new keys; that is why the explicit struct flag is not set on the root,
as OmegaConf would propagate it into those fields and forbid every new key. Interpolations
(``${data.sample_rate}``, ``${oc.env:HOME}``) are resolved before the typed object is returned; a
literal ``${`` is written ``\\${`` in YAML.

Example::

    @dataclass
    class OptimConfig:
        lr: float = 1e-3
        betas: tuple[float, float] = (0.9, 0.999)

    @dataclass
    class TrainConfig:
        name: str = MISSING                      # required: '???' until a file or override sets it
        optim: OptimConfig = field(default_factory=OptimConfig)
        steps: int = 1000

    cfg = load_config(TrainConfig, ["experiments/simclr.yaml"], ["optim.lr=3e-4", "steps=20"])
    assert isinstance(cfg, TrainConfig)          # a real dataclass instance, not a DictConfig
    save_config(cfg, run_dir / "config.yaml")    # resolved YAML, written atomically
    assert from_yaml(TrainConfig, run_dir / "config.yaml") == cfg
    run_id = config_hash(cfg)                    # e.g. '3f9c0a1b27de'

Composition: a YAML file may start with a top-level ``defaults`` list naming other YAML files, as
paths relative to the including file. They are merged, in order, before the including file's own
keys (so the including file wins), and may include further files themselves; an include cycle is an
error. ``defaults`` is therefore reserved and cannot be a top-level field of a schema. There are no
config groups, packages or ``_self_`` markers: this is plain file inclusion, not Hydra.

Provenance: sources are merged one at a time so that an error can name the file or override that
caused it; for errors found only after merging (a required value still ``???``, an interpolation
that does not resolve) the message names the source that last set that key, or ``defaults``.

Override syntax is OmegaConf's dotlist: ``data.batch_size=64``, ``optim.betas=[0.9,0.95]``,
``name=null``, ``data.weights={a: 1.0}``; values are parsed as YAML. Overrides cannot add keys that
the schema does not declare (dict-typed fields accept new keys, as their type allows).

The pattern follows Meta's lingua (``lingua/args.py``: dataclass defaults, then a YAML file, then a
CLI dotlist merged with OmegaConf and turned back into dataclasses with ``OmegaConf.to_object``) and
torchtitan's job config (one typed config per job, file then command-line overrides, unknown keys
rejected). This module adds per-source error attribution, file composition and atomic dumps.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import hashlib
import io
import json
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    GrammarParseError,
    InterpolationResolutionError,
    OmegaConfBaseException,
    ValidationError,
)

from ecg_core.atomic import write_text_atomic

__all__ = [
    "COMMAND_LINE",
    "ConfigError",
    "config_hash",
    "from_yaml",
    "load_config",
    "save_config",
    "to_yaml",
]

T = TypeVar("T")

COMMAND_LINE = "command line"
"""Source label used in error messages for dotted overrides."""

DEFAULTS_KEY = "defaults"
"""Top-level key of a YAML file that lists other files to merge first (see module docstring)."""

_DEFAULTS_SOURCE = "defaults"  # label for values that come from the dataclass (or ``base``)
_TEXT_SOURCE = "<yaml text>"
_ABSENT = object()


class ConfigError(ValueError):
    """A config could not be built. The one-line message names the key, its source and the problem.

    Attributes:
        source: the file (``path`` or ``path:line``), ``command line ('key=value')``, ``defaults``
            or ``<yaml text>`` that the problem came from.
        key: dotted key path (``data.batch_size``, ``optim.betas[1]``), or ``None`` when the problem
            is not about one key (syntax error, missing file).
        reason: short description of the problem.
    """

    def __init__(self, source: str, key: str | None, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = _one_line(reason)
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {self.reason}")


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------


def load_config(
    schema: type[T],
    files: Sequence[str | os.PathLike[str]] = (),
    overrides: Sequence[str] = (),
    *,
    base: T | None = None,
) -> T:
    """Build a typed config: defaults <- each YAML file in order <- dotted overrides.

    Args:
        schema: the dataclass type describing the config.
        files: YAML files merged in order (each with its ``defaults`` includes merged first).
        overrides: dotlist strings such as ``"data.batch_size=64"`` merged last, in order.
        base: an instance of ``schema`` whose values replace the dataclass defaults (e.g. a method
            recipe); ``None`` uses the dataclass defaults. Like the defaults, its strings are read
            as OmegaConf values, so a ``${...}`` in them is an interpolation.

    Returns:
        An instance of ``schema`` with all interpolations resolved.

    Raises:
        ConfigError: unknown key, wrong type, YAML syntax error, missing file, include cycle,
            malformed override, required value left ``???`` or unresolvable interpolation.
        TypeError: ``schema``/``base`` are not a dataclass type/instance, or ``files``/``overrides``
            is a single string instead of a sequence.
    """
    _check_schema(schema)
    if base is not None and not isinstance(base, schema):
        raise TypeError(f"base must be an instance of {schema.__name__}, got {type(base).__name__}")
    for name, value in (("files", files), ("overrides", overrides)):
        if isinstance(value, (str, bytes, os.PathLike)):
            raise TypeError(f"{name} must be a sequence, not a single {type(value).__name__}: [{value!r}]")

    merger = _Merger(schema, base)
    for path in files:
        for source, layer in _file_layers(Path(path), stack=()):
            merger.merge_layer(layer, source)
    for override in overrides:
        merger.merge_override(override)
    return merger.finish()


def from_yaml(schema: type[T], text_or_path: str | os.PathLike[str]) -> T:
    """Load a config dumped by :func:`to_yaml` / :func:`save_config` (or any YAML) into ``schema``.

    ``text_or_path`` is read as a file when it is a ``Path`` (or other ``os.PathLike``), or a one-line
    ``str`` that names an existing file or ends in ``.yaml``/``.yml``; any other ``str`` is YAML text
    (whose ``defaults`` includes, if any, are relative to the working directory).
    The same strict checks as :func:`load_config` apply, and
    ``from_yaml(schema, to_yaml(cfg)) == cfg`` for any config built by :func:`load_config`.
    """
    _check_schema(schema)
    merger = _Merger(schema, None)
    if _looks_like_path(text_or_path):
        layers = _file_layers(Path(text_or_path), stack=())
    else:
        data = _parse_yaml(io.StringIO(str(text_or_path)), _TEXT_SOURCE)
        layers = _expand_defaults(data, _TEXT_SOURCE, Path.cwd(), stack=())
    for source, layer in layers:
        merger.merge_layer(layer, source)
    return merger.finish()


def from_dict(schema: type[T], layers: Sequence[tuple[str, Mapping[str, Any]]], *, base: T | None = None) -> T:
    """Build a typed config from in-memory mappings: defaults (or ``base``) <- each ``(source, mapping)``.

    The same strict checks as :func:`load_config`; a problem is a :class:`ConfigError` naming the
    ``source`` label of the mapping that set the offending key (e.g. ``grids/demo.yaml: cells[3]``).
    Nested mappings only (no dotted keys): see :func:`nest_dotted` to turn ``{"a.b": 1}`` into one.
    """
    _check_schema(schema)
    if base is not None and not isinstance(base, schema):
        raise TypeError(f"base must be an instance of {schema.__name__}, got {type(base).__name__}")
    merger = _Merger(schema, base)
    for source, layer in layers:
        merger.merge_layer(dict(layer), source)
    return merger.finish()


def nest_dotted(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"optim.lr": 1e-3, "optim.betas": [..]}`` -> ``{"optim": {"lr": 1e-3, "betas": [..]}}`` (later keys win)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(nest_dotted(value))
        else:
            node[parts[-1]] = nest_dotted(value) if isinstance(value, Mapping) else value
    return out


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML text (enums by name, paths as strings, tuples as lists).

    ``cfg`` may be a dataclass instance, an OmegaConf ``DictConfig`` or a plain mapping.
    Strings that contain a literal ``${`` are escaped so that loading the text back does not turn
    them into interpolations.
    """
    _check_config_object(cfg)
    plain = _plain(cfg, escape_interpolations=True)
    return OmegaConf.to_yaml(OmegaConf.create(plain))


def save_config(cfg: Any, path: str | os.PathLike[str]) -> None:
    """Write ``to_yaml(cfg)`` to ``path`` atomically (:func:`ecg_core.atomic.write_text_atomic`).

    The text is produced completely before anything is written, so a config that cannot be written leaves
    an existing ``path`` untouched, as does a failure while writing; no temporary file is left behind.
    Missing parent directories are created. A new file gets mode 0644; an existing file keeps its mode.
    """
    write_text_atomic(path, to_yaml(cfg))


def config_hash(cfg: Any, *, length: int = 12) -> str:
    """Short stable hash of the resolved config, for ids and cache keys.

    The hash is the SHA-256 of a canonical JSON form (dict keys sorted, enums by name, paths and
    tuples normalised), truncated to ``length`` hex digits. It therefore does not depend on the key
    order of any mapping, nor on the process (no ``hash()`` randomisation), but changes with any value.
    """
    _check_config_object(cfg)
    plain = _plain(cfg, escape_interpolations=False)
    canonical = json.dumps(_stringify_keys(plain), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:length]


# ----------------------------------------------------------------------------------------------------
# Merging, one source at a time
# ----------------------------------------------------------------------------------------------------


class _Merger:
    """Holds the structured config being built and which source last set each key."""

    def __init__(self, schema: type, base: Any) -> None:
        self.schema = schema
        # A structured config is closed wherever the schema has a dataclass (unknown keys raise), and
        # open only in dict-typed fields. Setting the struct flag on the root as well would propagate
        # into those fields and forbid every new dict key, so it is deliberately left unset.
        self.cfg: DictConfig = OmegaConf.structured(base if base is not None else schema)
        self.provenance: dict[str, str] = {}

    def merge_layer(self, layer: dict[str, Any], source: str) -> None:
        """Merge one file's mapping; on failure name the offending key inside ``source``."""
        try:
            merged = OmegaConf.merge(self.cfg, layer)
        except OmegaConfBaseException as exc:
            key, cause = _locate_failure(self.cfg, layer, exc)
            value = _value_at(layer, _split_key(key)) if key else _ABSENT
            raise ConfigError(source, key or None, self._reason(key, value, cause)) from exc
        except TypeError as exc:  # OmegaConf raises a bare TypeError for e.g. a list where a mapping is declared
            key = _search_type_error(self.cfg, layer, ())
            raise ConfigError(source, key or None, f"wrong type: {exc}") from exc
        assert isinstance(merged, DictConfig)
        self.cfg = merged
        for key in _leaf_keys(layer, ()):
            self.provenance[key] = source

    def merge_override(self, override: str) -> None:
        """Merge one ``key=value`` override; on failure name the key and the override."""
        source = f"{COMMAND_LINE} ({override!r})"
        key, sep, raw_value = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(source, None, "expected key=value (e.g. data.batch_size=64)")
        trial = copy.deepcopy(self.cfg)
        try:
            trial.merge_with_dotlist([override])
        except OmegaConfBaseException as exc:
            failed, cause, value = exc.full_key, exc, _ABSENT
            layer = _override_layer(override)
            if layer is not None:
                failed, cause = _locate_failure(self.cfg, layer, exc)
                if not failed:
                    # Merged as a nested mapping the value is fine: the dotted path itself is what
                    # OmegaConf cannot apply (e.g. creating a dataclass entry in a dict key by key).
                    raise ConfigError(source, key, _first_line(exc)) from exc
                value = _value_at(layer, _split_key(failed))
            if not failed or not _is_within(failed, key):
                failed = key
            if failed == key and value is _ABSENT:
                value = raw_value
            raise ConfigError(source, failed, self._reason(failed, value, cause)) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(source, key, f"value is not valid YAML: {_yaml_problem(exc)}") from exc
        self.cfg = trial
        self.provenance[key] = source

    def finish(self) -> Any:
        """Check required values, resolve interpolations and convert to the dataclass instance."""
        try:
            missing = sorted(OmegaConf.missing_keys(self.cfg))
        except OmegaConfBaseException as exc:
            raise self._resolution_error(exc) from exc
        if missing:
            first = missing[0]
            also = f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""
            raise ConfigError(
                self._source_of(first),
                first,
                f"required value is missing ('???'); set it in a YAML file or on the command line as "
                f"{first}=...{also}",
            )
        try:
            # to_object resolves interpolations as it reads each value. (OmegaConf.resolve() first would
            # turn an escaped literal such as '\${x}' into '${x}' and then try to resolve that.)
            obj = OmegaConf.to_object(self.cfg)
        except OmegaConfBaseException as exc:
            raise self._resolution_error(exc) from exc
        assert isinstance(obj, self.schema), type(obj)
        return obj

    def _resolution_error(self, exc: OmegaConfBaseException) -> ConfigError:
        key = exc.full_key or None
        source = self._source_of(key) if key else _DEFAULTS_SOURCE
        reason = _first_line(exc)
        if isinstance(exc, (InterpolationResolutionError, GrammarParseError)):
            reason = f"cannot resolve interpolation: {reason}"
        return ConfigError(source, key, reason)

    def _source_of(self, key: str) -> str:
        """The source that last set ``key`` (or one of its parents); ``defaults`` if none did."""
        parts = _split_key(key)
        for end in range(len(parts), 0, -1):
            source = self.provenance.get(_join_key(parts[:end]))
            if source is not None:
                return source
        return _DEFAULTS_SOURCE

    def _reason(self, key: str, value: Any, exc: OmegaConfBaseException) -> str:
        """A short, specific description of why merging ``value`` at ``key`` failed."""
        parts = _split_key(key) if key else []
        declared = _declared_type(self.schema, parts) if parts else _ABSENT
        if isinstance(exc, (ConfigKeyError, ConfigAttributeError)) and declared is _ABSENT:
            parent = _strip_optional(_declared_type(self.schema, parts[:-1]))
            if dataclasses.is_dataclass(parent) and parts and isinstance(parts[-1], str):
                names = [f.name for f in dataclasses.fields(parent)]
                close = difflib.get_close_matches(parts[-1], names, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(names)}"
                return f"unknown key ({parent.__name__} has no field '{parts[-1]}'; {hint})"
            return "unknown key"
        if isinstance(exc, GrammarParseError):
            return f"invalid interpolation syntax in {value!r}" if value is not _ABSENT else _first_line(exc)
        if isinstance(exc, (ValidationError, ConfigKeyError)) and declared not in (_ABSENT, Any):
            # A typed dict reports a bad value for a new key as a key error, hence ConfigKeyError here.
            got = f", got {value!r}" if value is not _ABSENT else f" ({_first_line(exc)})"
            return f"wrong type: expected {_type_label(declared)}{got}"
        return _first_line(exc)


def _locate_failure(
    cfg: DictConfig, layer: Mapping[Any, Any], exc: OmegaConfBaseException
) -> tuple[str, OmegaConfBaseException]:
    """Find the dotted key whose value makes ``layer`` fail to merge into ``cfg``.

    OmegaConf reports most failures with their ``full_key``. Some come back with an empty key (a
    scalar given for a nested dataclass, a tuple of the wrong length) or with a key relative to a new
    list element (``dim`` for ``heads[1].dim``); those are narrowed down by merging one key, or one
    list element, at a time into copies of ``cfg``. Only runs on the error path. Returns ``""`` when
    no single key can be blamed.
    """
    if exc.full_key and _value_at(layer, _split_key(exc.full_key)) is not _ABSENT:
        return exc.full_key, exc
    try:
        found = _search_failure(cfg, layer, ())
    except (TypeError, ValueError):  # a shape OmegaConf refuses outright: blame nothing specific
        found = None
    return found or ("", exc)


def _search_type_error(cfg: DictConfig, node: Mapping[Any, Any], prefix: tuple[Any, ...]) -> str:
    """The dotted key whose value makes OmegaConf raise a bare TypeError on merge ("" if none alone does)."""
    for key, value in node.items():
        path = prefix + (key,)
        try:
            OmegaConf.merge(cfg, _nest(path, value))
        except TypeError:
            deeper = _search_type_error(cfg, value, path) if isinstance(value, Mapping) else ""
            return deeper or ".".join(str(k) for k in path)
        except OmegaConfBaseException:
            continue
    return ""


def _search_failure(
    cfg: DictConfig, node: Mapping[Any, Any], prefix: tuple[Any, ...]
) -> tuple[str, OmegaConfBaseException] | None:
    for key, value in node.items():
        path = prefix + (key,)
        try:
            OmegaConf.merge(cfg, _nest(path, value))
        except OmegaConfBaseException as inner:
            reported = _split_key(inner.full_key) if inner.full_key else []
            if reported[: len(path)] == list(path) and _value_at(value, reported[len(path) :]) is not _ABSENT:
                return inner.full_key, inner
            if isinstance(value, Mapping):
                found = _search_failure(cfg, value, path)
                if found:
                    return found
            if isinstance(value, list):
                found = _search_list_failure(cfg, value, path)
                if found:
                    return found
            return _join_key(path), inner
    return None


def _search_list_failure(
    cfg: DictConfig, items: list[Any], path: tuple[Any, ...]
) -> tuple[str, OmegaConfBaseException] | None:
    """Blame one element of a list by merging it alone (elements are validated independently)."""
    for index, item in enumerate(items):
        try:
            OmegaConf.merge(cfg, _nest(path, [item]))
        except OmegaConfBaseException as inner:
            relative = _split_key(inner.full_key) if inner.full_key else []
            if relative and _value_at(item, relative) is not _ABSENT:
                return _join_key((*path, index, *relative)), inner
            if inner.full_key == _join_key((*path, 0)):
                return _join_key((*path, index)), inner
            return None  # the list as a whole is wrong (e.g. a tuple of the wrong length)
    return None


# ----------------------------------------------------------------------------------------------------
# Reading YAML files and their ``defaults`` includes
# ----------------------------------------------------------------------------------------------------


def _file_layers(path: Path, stack: tuple[Path, ...]) -> list[tuple[str, dict[str, Any]]]:
    """``(source, mapping)`` layers for ``path``: its included files first, then the file itself."""
    resolved = path.resolve()
    if resolved in stack:
        chain = " -> ".join(str(p) for p in (*stack[stack.index(resolved) :], resolved))
        raise ConfigError(str(stack[-1]), DEFAULTS_KEY, f"include cycle: {chain}")
    if not path.is_file():
        where = f" (listed in '{DEFAULTS_KEY}' of {stack[-1]})" if stack else ""
        raise ConfigError(str(path), None, f"config file not found{where}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = _parse_yaml(handle, str(path))
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot read config file: {exc.strerror or exc}") from exc
    return _expand_defaults(data, str(path), path.parent, stack + (resolved,))


def _expand_defaults(
    data: dict[str, Any], source: str, base_dir: Path, stack: tuple[Path, ...]
) -> list[tuple[str, dict[str, Any]]]:
    """Split off a top-level ``defaults`` list and return the included layers followed by ``data``."""
    includes = data.pop(DEFAULTS_KEY, None)
    if includes is None:
        return [(source, data)]
    if not isinstance(includes, list) or not all(isinstance(item, str) for item in includes):
        raise ConfigError(source, DEFAULTS_KEY, f"must be a list of YAML file paths, got {includes!r}")
    layers: list[tuple[str, dict[str, Any]]] = []
    for include in includes:
        layers.extend(_file_layers(base_dir / include, stack))
    layers.append((source, data))
    return layers


def _parse_yaml(stream: typing.IO[str], source: str) -> dict[str, Any]:
    """Parse one YAML document into a plain dict (interpolations kept as strings)."""
    try:
        loaded = OmegaConf.load(stream)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(where, None, f"YAML syntax error: {_yaml_problem(exc)}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(source, None, f"YAML error: {_yaml_problem(exc)}") from exc
    except OmegaConfBaseException as exc:
        reason = _first_line(exc)
        if isinstance(exc, GrammarParseError):
            reason = f"invalid interpolation syntax: {reason}"
        raise ConfigError(source, exc.full_key or None, reason) from exc
    if isinstance(loaded, ListConfig):
        raise ConfigError(source, None, "top level must be a mapping of keys to values, not a list")
    container = OmegaConf.to_container(loaded, resolve=False)
    assert isinstance(container, dict)
    return container


def _looks_like_path(text_or_path: str | os.PathLike[str]) -> bool:
    if isinstance(text_or_path, os.PathLike):
        return True
    text = str(text_or_path)
    if "\n" in text or not text.strip():
        return False
    return text.strip().endswith((".yaml", ".yml")) or Path(text).is_file()


# ----------------------------------------------------------------------------------------------------
# Schema introspection (for messages only; OmegaConf does the validation)
# ----------------------------------------------------------------------------------------------------


def _check_schema(schema: Any) -> None:
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    if any(f.name == DEFAULTS_KEY for f in dataclasses.fields(schema)):
        raise TypeError(
            f"{schema.__name__} has a top-level field '{DEFAULTS_KEY}', which is reserved for YAML file "
            "composition; rename the field"
        )


def _declared_type(schema: Any, parts: Sequence[str | int]) -> Any:
    """The declared type at ``parts`` below ``schema``; ``_ABSENT`` if the schema has no such key."""
    tp = schema
    for part in parts:
        tp = _strip_optional(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            hints = _field_types(tp)
            if part not in hints:
                return _ABSENT
            tp = hints[part]
        elif origin in (dict, Mapping):  # also typing.Dict[...], whose origin is dict
            tp = args[1] if len(args) == 2 else Any
        elif origin in (list, Sequence):
            tp = args[0] if args else Any
        elif origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                tp = args[0]
            elif isinstance(part, int) and part < len(args):
                tp = args[part]
            else:
                return Any
        else:
            return Any
    return tp


def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> type of a dataclass, with string annotations evaluated where possible."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # e.g. a class defined inside a function, annotations as strings
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _strip_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return non_none[0]
    return tp


def _type_label(tp: Any) -> str:
    """Readable type name for messages: ``int``, ``list[str]``, ``Color (one of RED, BLUE)``."""
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return f"{tp.__name__} (one of {', '.join(m.name for m in tp)})"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"{tp.__name__} (a mapping)"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    if isinstance(tp, str):
        return tp
    # 'typing.Optional[my.module.HeadConfig]' -> 'Optional[HeadConfig]'
    return re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", str(tp)).replace("NoneType", "None")


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------

_KEY_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _split_key(key: str) -> list[str | int]:
    """``'a.b[1].c'`` -> ``['a', 'b', 1, 'c']``."""
    return [int(index) if index else name for name, index in _KEY_PART.findall(key)]


def _join_key(parts: Sequence[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _override_layer(override: str) -> dict[str, Any] | None:
    """``'a.b=[1,2]'`` -> ``{'a': {'b': [1, 2]}}``, used to locate errors; ``None`` if not expressible."""
    if "[" in override.partition("=")[0]:  # list indices in the key: a nested dict cannot stand for them
        return None
    try:
        layer = OmegaConf.to_container(OmegaConf.from_dotlist([override]), resolve=False)
    except (OmegaConfBaseException, yaml.YAMLError):
        return None
    return layer if isinstance(layer, dict) else None


def _is_within(key: str, prefix: str) -> bool:
    """Whether dotted ``key`` is ``prefix`` or below it."""
    parts, head = _split_key(key), _split_key(prefix)
    return parts[: len(head)] == head


def _nest(path: Sequence[Any], value: Any) -> dict[Any, Any]:
    """``(a, b), v`` -> ``{a: {b: v}}``."""
    for key in reversed(path[1:]):
        value = {key: value}
    return {path[0]: value}


def _value_at(layer: Any, parts: Sequence[Any]) -> Any:
    node = layer
    for part in parts:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return _ABSENT
    return node


def _leaf_keys(node: Any, prefix: tuple[Any, ...]) -> list[str]:
    """Dotted keys of the leaves of a mapping (a list or an empty mapping counts as a leaf)."""
    if isinstance(node, Mapping) and node:
        keys: list[str] = []
        for key, value in node.items():
            keys.extend(_leaf_keys(value, prefix + (key,)))
        return keys
    return [_join_key(prefix)] if prefix else []


def _plain(value: Any, *, escape_interpolations: bool) -> Any:
    """Resolved plain YAML/JSON data: dicts, lists, str, int, float, bool, None.

    Accepts dataclass instances (or a dataclass type, for its defaults), OmegaConf containers (their
    interpolations are resolved) and plain containers. Enums become their name, paths strings, tuples
    lists. The values of a dataclass instance are final: a string in it is a literal, so with
    ``escape_interpolations`` a literal ``${`` is written as ``\\${`` for OmegaConf to read it back
    as the same literal.
    """
    if isinstance(value, (DictConfig, ListConfig)) or (
        isinstance(value, type) and dataclasses.is_dataclass(value)
    ):
        node = OmegaConf.structured(value) if isinstance(value, type) else value
        container = OmegaConf.to_container(node, resolve=True, enum_to_str=True, throw_on_missing=False)
        return _plain(container, escape_interpolations=escape_interpolations)
    if dataclasses.is_dataclass(value):
        return {
            f.name: _plain(getattr(value, f.name), escape_interpolations=escape_interpolations)
            for f in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {
            _plain(k, escape_interpolations=False): _plain(v, escape_interpolations=escape_interpolations)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_plain(v, escape_interpolations=escape_interpolations) for v in value]
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, PurePath):
        value = str(value)
    if isinstance(value, str) and escape_interpolations:
        return value.replace("${", "\\${")
    return value


def _check_config_object(cfg: Any) -> None:
    if not (dataclasses.is_dataclass(cfg) or isinstance(cfg, (DictConfig, Mapping))):
        raise TypeError(f"expected a dataclass instance, DictConfig or mapping, got {type(cfg).__name__}")


def _stringify_keys(value: Any) -> Any:
    """Dict keys as strings, so that ``json.dumps(sort_keys=True)`` never compares int with str."""
    if isinstance(value, dict):
        return {str(k): _stringify_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stringify_keys(v) for v in value]
    return value


def _first_line(exc: BaseException) -> str:
    msg = getattr(exc, "msg", None) or str(exc)
    return str(msg).strip().splitlines()[0] if str(msg).strip() else type(exc).__name__


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        context = exc.context or ""
        if context and exc.context_mark is not None and exc.context_mark.line != getattr(
            exc.problem_mark, "line", None
        ):
            context += f" (started at line {exc.context_mark.line + 1})"
        parts = [p for p in (context, exc.problem) if p]
        return ": ".join(parts) if parts else type(exc).__name__
    return str(exc)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())
