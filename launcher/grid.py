"""Grid files: a declarative experiment grid expanded into cells (pure, deterministic, validated).

A grid (``grids/<name>.yaml``; schema in README.md, section "Grids") names one or more base recipes
(``experiments/*.yaml``: :class:`jobs.config.PretrainConfig` files), grid-wide ``overrides``, ``axes``
swept as a cartesian product, ``zip`` groups of axes that move together, ``include``/``exclude`` lists,
the evaluation protocol chained after each pretraining, per-stage resources and W&B settings.

Expansion (:func:`expand`) is a pure function of the grid (and of the recipe files' contents):

- order: recipes (outer) x axes in file order x zip groups in file order (the last one varies fastest);
  then ``exclude`` drops every cell whose values match all the keys of one of its entries; then
  ``include`` appends its cells; a cell equal to an earlier one is dropped.
- cell id: ``<method>-<encoder>-<hash>`` where the hash (10 hex digits) is taken over what the recipe file
  says (parsed, with its includes), the grid-wide overrides and the cell's own values: the same cell of the
  same grid always gets the same id and directory, and changing any hyper-parameter gives a new one (a
  changed config never reuses an old run). It does not depend on the clock, the machine, the cluster
  profile, comments in the recipe, or fields added to the config schema with a default.
- validation: every ``key: value`` of every cell is merged into the recipe's typed config (each distinct
  pair once), every distinct method/encoder combination is checked by the method's and encoder's own
  validators, and the evaluation and resource settings are checked, all before anything is submitted. An
  error is one line: ``<grid file>: <where> (<cell id>): <key>: <problem>``.

Dotted keys (``optim.lr``) address :class:`~jobs.config.PretrainConfig` fields; ``recipe`` (a path) is
also a valid axis/include key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from ecg_core.config import ConfigError, from_dict, load_config, nest_dotted
from jobs.config import EvalConfig, PretrainConfig, TrackingConfig
from launcher.profiles import RESOURCE_KEYS

__all__ = [
    "EVAL_KINDS",
    "EvaluationSpec",
    "RobustnessSpec",
    "Cell",
    "Grid",
    "GridError",
    "PROJECT_ROOT",
    "STAGE_KINDS",
    "expand",
    "load_grid",
    "resolve_path",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STAGE_KINDS = ("pretrain", "linear_eval", "frozen_attention", "finetune", "robustness", "aggregate")
EVAL_KINDS = {"linear": "linear_eval", "frozen_attention": "frozen_attention", "finetune": "finetune"}
"""Evaluation protocol name (grid ``evaluation.protocols``) -> stage kind."""

TOP_LEVEL_KEYS = ("name", "description", "recipes", "dataset", "overrides", "axes", "zip", "include", "exclude",
                  "evaluation", "resources", "tracking")
RECIPE_KEY = "recipe"


class GridError(ConfigError):
    """A grid file (or a command-line override of it) is invalid; the message names file, cell and key."""


@dataclass
class RobustnessSpec:
    """Corruption robustness jobs chained after the evaluation runs they name (``evaluation.robustness``)."""

    enabled: bool = False
    protocols: list[str] = field(default_factory=lambda: ["linear"])   # whose trained models are corrupted
    label_fractions: list[float] = field(default_factory=lambda: [1.0])
    corruptions: list[str] = field(default_factory=list)   # empty: every ecg_core.corruptions.CORRUPTIONS entry
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    seed: int = 0


@dataclass
class EvaluationSpec:
    """What runs after each pretraining: protocols x tasks x label fractions x seeds."""

    enabled: bool = True
    protocols: list[str] = field(default_factory=lambda: ["linear", "finetune"])
    label_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tasks: list[str] = field(default_factory=list)     # `task` or `dataset:task`; empty: every task of the dataset
    baselines: bool = True   # a random_init cell per distinct encoder (see :func:`baseline_cells`)
    dataset: str = ""                                    # default: the grid's dataset
    common: dict[str, Any] = field(default_factory=dict)     # EvalConfig values for every protocol
    linear: dict[str, Any] = field(default_factory=dict)     # ... for the linear probe only
    frozen_attention: dict[str, Any] = field(default_factory=dict)   # ... for the attention probe only
    finetune: dict[str, Any] = field(default_factory=dict)   # ... for finetuning only
    robustness: RobustnessSpec = field(default_factory=lambda: RobustnessSpec())


@dataclass(frozen=True)
class Cell:
    """One pretraining configuration of the grid."""

    index: int
    cell_id: str
    recipe: str                       # the recipe path as written in the grid
    values: tuple[tuple[str, Any], ...]   # this cell's own key/value pairs (axes, zip, include)
    method: str
    encoder: str
    baseline_for: tuple[str, ...] = ()   # a baseline cell: the cells whose encoder it is (see baseline_cells)

    def overrides(self) -> dict[str, Any]:
        return dict(self.values)


@dataclass
class Grid:
    """A parsed and validated grid file with its cells."""

    name: str
    path: Path
    description: str
    dataset: str
    recipes: list[str]
    overrides: dict[str, Any]
    axes: dict[str, list[Any]]
    zips: list[dict[str, list[Any]]]
    include: list[dict[str, Any]]
    exclude: list[dict[str, Any]]
    evaluation: EvaluationSpec
    resources: dict[str, dict[str, Any]]
    tracking: TrackingConfig
    cells: list[Cell] = field(default_factory=list)
    recipe_configs: dict[str, PretrainConfig] = field(default_factory=dict, repr=False)
    recipe_digests: dict[str, str] = field(default_factory=dict, repr=False)
    eval_bases: dict[str, EvalConfig] = field(default_factory=dict, repr=False)
    baseline_configs: dict[str, PretrainConfig] = field(default_factory=dict, repr=False)

    def pretrain_config(self, cell: Cell) -> PretrainConfig:
        """The cell's full pretraining config (before the planner fills stores and tracking)."""
        if cell.cell_id in self.baseline_configs:
            return self.baseline_configs[cell.cell_id]
        # the grid's dataset is every cell's pretraining dataset unless the cell or the overrides say otherwise
        layer = nest_dotted({"dataset": self.dataset, **self.overrides, **cell.overrides()})
        layer.pop(RECIPE_KEY, None)
        return from_dict(PretrainConfig, [(f"{self.path}: cell {cell.cell_id}", layer)],
                         base=self.recipe_configs[cell.recipe])


def resolve_path(path: str, relative_to: Path | None = None) -> Path:
    """A path from a grid: absolute, else relative to the working directory, else to ``relative_to`` (the
    grid's folder), else to the project root (so ``experiments/simclr.yaml`` works from anywhere)."""
    p = Path(os.path.expanduser(path))
    if p.is_absolute():
        return p
    candidates = [Path.cwd() / p] + ([relative_to / p] if relative_to else []) + [PROJECT_ROOT / p]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return candidates[0]


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def load_grid(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Grid:
    """Read, validate and expand a grid file; ``overrides`` are ``key=value`` strings from the command line.

    An override whose key starts with a grid section (``name``, ``dataset``, ``evaluation.*``,
    ``resources.*``, ``tracking.*``, ...) changes the grid; any other key (``steps=50``,
    ``optim.lr=3e-4``) is added to the grid-wide ``overrides`` of every cell.

    Raises:
        GridError: the file is missing or malformed, or some cell is invalid (message names file, cell, key).
    """
    grid_path = Path(path)
    if not grid_path.is_file():
        known = ", ".join(sorted(p.name for p in (PROJECT_ROOT / "grids").glob("*.yaml")))
        raise GridError(str(grid_path), None, f"no such grid file (grids in the project: {known})")
    try:
        raw = yaml.safe_load(grid_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{grid_path}:{mark.line + 1}" if mark is not None else str(grid_path)
        raise GridError(where, None, f"YAML error: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(raw, dict):
        raise GridError(str(grid_path), None, "a grid file is a mapping (name, recipes, axes, evaluation, ...)")
    raw = dict(raw)
    cli_source = "command line"
    for override in overrides:
        _apply_cli_override(raw, override, cli_source)
    src = str(grid_path)
    unknown = [k for k in raw if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise GridError(src, str(unknown[0]), f"unknown grid key; expected one of {', '.join(TOP_LEVEL_KEYS)}")

    name = raw.get("name")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_.-" for c in name):
        raise GridError(src, "name", f"a grid name (letters, digits, '_', '.', '-') is required, got {name!r}")
    recipes = raw.get("recipes")
    if isinstance(recipes, str):
        recipes = [recipes]
    if recipes is None:
        recipes = []
    if not isinstance(recipes, list) or not all(isinstance(r, str) for r in recipes):
        raise GridError(src, "recipes", "a list of recipe files (experiments/*.yaml) is required")
    dataset = raw.get("dataset", "demo")
    if not isinstance(dataset, str) or not dataset:
        raise GridError(src, "dataset", f"must be a dataset name or store path, got {dataset!r}")

    grid_overrides = _flat_mapping(raw.get("overrides") or {}, src, "overrides")
    axes = _axes(raw.get("axes") or {}, src, "axes")
    zips_raw = raw.get("zip") or []
    if not isinstance(zips_raw, list):
        raise GridError(src, "zip", "a list of groups (each a mapping key -> list of values of equal length)")
    zips = [_axes(group, src, f"zip[{i}]") for i, group in enumerate(zips_raw)]
    for i, group in enumerate(zips):
        lengths = {k: len(v) for k, v in group.items()}
        if len(set(lengths.values())) > 1:
            raise GridError(src, f"zip[{i}]", f"zipped axes must have equal lengths, got {lengths}")
    seen_keys: dict[str, str] = {}
    for where, keys in [("axes", axes)] + [(f"zip[{i}]", g) for i, g in enumerate(zips)]:
        for key in keys:
            if key in seen_keys:
                raise GridError(src, f"{where}.{key}", f"also swept in {seen_keys[key]}: sweep a key in one place")
            seen_keys[key] = where
    include = _entries(raw.get("include") or [], src, "include")
    exclude = _entries(raw.get("exclude") or [], src, "exclude")
    if not recipes and RECIPE_KEY not in axes:
        without = [i for i, entry in enumerate(include) if RECIPE_KEY not in entry]
        if not include or without:
            where = f"include[{without[0]}]" if without else "recipes"
            raise GridError(src, where, "a list of recipe files (experiments/*.yaml) is required, or a "
                                        "`recipe:` in every include entry")

    evaluation = _typed(EvaluationSpec, raw.get("evaluation") or {}, src, "evaluation")
    for proto in evaluation.protocols:
        if proto not in EVAL_KINDS:
            raise GridError(src, "evaluation.protocols", f"unknown protocol {proto!r}; known: {', '.join(EVAL_KINDS)}")
    for frac in evaluation.label_fractions:
        if not 0 < frac <= 1:
            raise GridError(src, "evaluation.label_fractions", f"fractions are in (0, 1], got {frac}")
    if evaluation.enabled and not (evaluation.protocols and evaluation.label_fractions and evaluation.seeds):
        raise GridError(src, "evaluation", "protocols, label_fractions and seeds must not be empty "
                                           "(set evaluation.enabled: false to pretrain only)")
    rob = evaluation.robustness
    for proto in rob.protocols:
        if proto not in evaluation.protocols and proto not in BASELINE_PROTOCOLS:
            raise GridError(src, "evaluation.robustness.protocols",
                            f"protocol {proto!r} is not evaluated by this grid ({', '.join(evaluation.protocols)})")
    if rob.enabled and not set(rob.label_fractions) & set(evaluation.label_fractions):
        raise GridError(src, "evaluation.robustness.label_fractions",
                        f"none of {rob.label_fractions} is in evaluation.label_fractions {evaluation.label_fractions}")
    bad = [s for s in rob.severities if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 5]
    if bad:
        raise GridError(src, "evaluation.robustness.severities", f"severities are 1..5, got {bad}")
    if rob.enabled and rob.corruptions:
        from ecg_core.corruptions import CORRUPTIONS   # numpy only
        unknown = [c for c in rob.corruptions if c not in CORRUPTIONS]
        if unknown:
            raise GridError(src, "evaluation.robustness.corruptions",
                            f"unknown corruption {unknown[0]!r}; known: {', '.join(CORRUPTIONS)}")
    tracking = _typed(TrackingConfig, raw.get("tracking") or {}, src, "tracking")
    resources = _resources(raw.get("resources") or {}, src)

    grid = Grid(name=name, path=grid_path, description=str(raw.get("description") or ""), dataset=dataset,
                recipes=list(recipes), overrides=grid_overrides, axes=axes, zips=zips, include=include,
                exclude=exclude, evaluation=evaluation, resources=resources, tracking=tracking)
    _load_recipes(grid)
    _eval_bases(grid)
    grid.cells = expand(grid)
    _validate_cells(grid)
    if evaluation.enabled and evaluation.baselines:
        grid.cells += baseline_cells(grid)
    return grid


def _apply_cli_override(raw: dict[str, Any], override: str, source: str) -> None:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise GridError(f"{source} ({override!r})", None, "expected key=value (e.g. steps=100, evaluation.seeds=[0])")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise GridError(f"{source} ({override!r})", key, f"value is not valid YAML: {exc}") from exc
    top = key.split(".")[0]
    if top in TOP_LEVEL_KEYS and top not in ("overrides",):
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    else:
        if top == "overrides":
            key = key.split(".", 1)[1] if "." in key else ""
        if not key:
            raise GridError(f"{source} ({override!r})", "overrides", "give one key: overrides.steps=10 or steps=10")
        overrides = raw.setdefault("overrides", {}) or {}
        raw["overrides"] = overrides
        overrides[key] = value


def _flat_mapping(value: Any, src: str, where: str) -> dict[str, Any]:
    """Nested mappings to dotted keys (``{optim: {lr: 1}}`` -> ``{"optim.lr": 1}``); dotted keys kept as written."""
    if not isinstance(value, dict):
        raise GridError(src, where, f"must be a mapping of dotted keys to values, got {type(value).__name__}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict) and item and key != RECIPE_KEY:
            for sub_key, sub_value in _flat_mapping(item, src, f"{where}.{key}").items():
                out[f"{key}.{sub_key}"] = sub_value
        else:
            out[str(key)] = item
    return out


def _axes(value: Any, src: str, where: str) -> dict[str, list[Any]]:
    if not isinstance(value, dict):
        raise GridError(src, where, "must be a mapping key -> list of values")
    axes: dict[str, list[Any]] = {}
    for key, values in value.items():
        if not isinstance(values, list) or not values:
            raise GridError(src, f"{where}.{key}", f"an axis is a non-empty list of values, got {values!r}")
        axes[str(key)] = values
    return axes


def _entries(value: Any, src: str, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(e, dict) and e for e in value):
        raise GridError(src, where, "must be a list of non-empty mappings key -> value")
    return [_flat_mapping(e, src, f"{where}[{i}]") for i, e in enumerate(value)]


def _typed(schema: type, value: Any, src: str, where: str) -> Any:
    if not isinstance(value, dict):
        raise GridError(src, where, f"must be a mapping, got {value!r}")
    try:
        return from_dict(schema, [(src, value)])
    except ConfigError as exc:
        raise GridError(src, f"{where}.{exc.key}" if exc.key else where, exc.reason) from None


def _resources(value: Any, src: str) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise GridError(src, "resources", "must be a mapping stage -> {resource: value}")
    out: dict[str, dict[str, Any]] = {}
    for stage, res in value.items():
        if stage not in STAGE_KINDS:
            raise GridError(src, f"resources.{stage}", f"unknown stage; expected one of {', '.join(STAGE_KINDS)}")
        if not isinstance(res, dict):
            raise GridError(src, f"resources.{stage}", "must be a mapping resource -> value")
        for key, item in res.items():
            if key not in RESOURCE_KEYS:
                raise GridError(src, f"resources.{stage}.{key}", f"unknown resource; expected one of "
                                                                 f"{', '.join(RESOURCE_KEYS)}")
            expected = (int, float) if key == "mem_gb" else int
            if isinstance(item, bool) or not isinstance(item, expected) or item < 0:
                raise GridError(src, f"resources.{stage}.{key}", f"expected a non-negative number, got {item!r}")
        out[str(stage)] = dict(res)
    return out


def _load_recipes(grid: Grid) -> None:
    names = set(grid.recipes) | {str(e[RECIPE_KEY]) for e in grid.include if RECIPE_KEY in e}
    for values in grid.axes.get(RECIPE_KEY, []):
        names.add(str(values))
    for name in sorted(names):
        path = resolve_path(name, grid.path.parent)
        if not path.is_file():
            raise GridError(str(grid.path), "recipes", f"recipe file {name!r} not found")
        try:
            grid.recipe_configs[name] = load_config(PretrainConfig, [path])
        except ConfigError as exc:
            raise GridError(exc.source, exc.key, f"{exc.reason} (recipe of grid {grid.path})") from None
        grid.recipe_digests[name] = _recipe_digest(path)


def _recipe_digest(path: Path, depth: int = 0) -> str:
    """Hash of what a recipe file says (parsed YAML, its ``defaults`` includes first), not of the resolved
    config: a field added to the config schema with a default, or a comment edited in the file, leaves
    every cell id (and so every run directory) of existing grids unchanged."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    includes = data.pop("defaults", None) if isinstance(data, dict) else None
    parts = [_recipe_digest(path.parent / str(inc), depth + 1) for inc in (includes or [])] if depth < 20 else []
    return hashlib.sha256(_canonical([parts, data]).encode()).hexdigest()


def _eval_bases(grid: Grid) -> None:
    ev = grid.evaluation
    src = str(grid.path)
    for proto in EVAL_KINDS:   # every protocol: the baseline cells always get `finetune`
        layers = [("planner", {"pretrain_dir": "(set by the planner)"}),
                  (f"{src}: evaluation.common", _nested(ev.common)),
                  (f"{src}: evaluation.{proto}", _nested(getattr(ev, proto)))]
        try:
            base = from_dict(EvalConfig, layers)
        except ConfigError as exc:
            raise GridError(exc.source, exc.key, exc.reason) from None
        grid.eval_bases[proto] = dataclasses.replace(base, protocol=proto)


def _nested(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return nest_dotted({str(k): v for k, v in mapping.items()})


# ----------------------------------------------------------------------------------------------------
# Expansion
# ----------------------------------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def expand(grid: Grid) -> list[Cell]:
    """The grid's cells in their deterministic order (see the module docstring)."""
    dims: list[list[tuple[tuple[str, Any], ...]]] = []
    recipe_axis = grid.axes.get(RECIPE_KEY)
    if recipe_axis is None:   # no recipes: the grid's cells are its include entries only
        dims.append([((RECIPE_KEY, r),) for r in grid.recipes])
    for key, values in grid.axes.items():
        dims.append([((key, v),) for v in values])
    for group in grid.zips:
        keys = list(group)
        dims.append([tuple((k, group[k][i]) for k in keys) for i in range(len(group[keys[0]]))])
    raw_cells: list[dict[str, Any]] = []
    for combo in itertools.product(*dims):
        values = dict(pair for part in combo for pair in part)
        if any(all(key in values and values[key] == v for key, v in ex.items()) for ex in grid.exclude):
            continue
        raw_cells.append(values)
    for entry in grid.include:
        raw_cells.append({RECIPE_KEY: grid.recipes[0], **entry} if RECIPE_KEY not in entry else dict(entry))

    recipe_hashes = grid.recipe_digests
    common = _canonical(grid.overrides)
    cells: list[Cell] = []
    seen: set[str] = set()
    for values in raw_cells:
        recipe = str(values.pop(RECIPE_KEY))
        base = grid.recipe_configs[recipe]
        merged = {**grid.overrides, **values}
        method = str(merged.get("method.name", base.method.name))
        encoder = str(merged.get("encoder.name", base.encoder.name))
        digest = hashlib.sha256("\n".join([recipe_hashes[recipe], common, _canonical(values),
                                           grid.dataset]).encode()).hexdigest()[:10]
        cell_id = f"{method}-{encoder}-{digest}"
        if cell_id in seen:
            continue
        seen.add(cell_id)
        cells.append(Cell(index=len(cells), cell_id=cell_id, recipe=recipe, values=tuple(values.items()),
                          method=method, encoder=encoder))
    return cells


BASELINE_RECIPE = PROJECT_ROOT / "experiments" / "random_init.yaml"
BASELINE_PROTOCOLS = ("finetune",)
"""Protocols a baseline cell gets in addition to the grid's: finetuning a random-init encoder on the labels
of a fraction is the supervised model of that encoder trained from scratch on the same labels."""


def baseline_cells(grid: Grid) -> list[Cell]:
    """One ``random_init`` cell per distinct encoder of the grid's cells (appended after them).

    The encoder, window, normalisation and dataset come from the cells (so its evaluations see the same
    inputs and architecture as theirs), the rest from ``experiments/random_init.yaml``. Evaluated with every
    protocol of the grid, it is the random-encoder baseline (a frozen random encoder with a trained head
    is a strong baseline for ECG; see the README), and its ``finetune`` runs (always planned, see
    :data:`BASELINE_PROTOCOLS`) are the supervised model of the same encoder trained from scratch on the same
    labels and fraction. A grid that already has a ``random_init`` cell with that encoder gets none.
    Switched off by ``evaluation.baselines: false``.
    """
    base = load_config(PretrainConfig, [BASELINE_RECIPE])
    digest = _recipe_digest(BASELINE_RECIPE)
    groups: dict[str, tuple[PretrainConfig, list[str]]] = {}
    seen: dict[str, PretrainConfig] = {}   # one resolved config per (recipe, encoder/data values)
    for cell in grid.cells:
        related = {k: v for k, v in {**grid.overrides, **cell.overrides()}.items()
                   if k.startswith(("encoder", "data.window", "data.normalize", "dataset"))}
        token = cell.recipe + _canonical(related)
        if token not in seen:
            seen[token] = grid.pretrain_config(cell)
        cfg = seen[token]
        key = _canonical([dataclasses.asdict(cfg.encoder), cfg.data.window, cfg.data.normalize, cfg.dataset])
        if cell.method == "random_init":
            groups[key] = (cfg, [])   # the grid has this baseline itself
            continue
        groups.setdefault(key, (cfg, []))[1].append(cell.cell_id)
    out: list[Cell] = []
    for key, (cfg, sources) in groups.items():
        if not sources:
            continue
        cell_id = f"random_init-{cfg.encoder.name}-" + hashlib.sha256(f"{digest}\n{key}".encode()).hexdigest()[:10]
        grid.baseline_configs[cell_id] = dataclasses.replace(
            base, encoder=cfg.encoder, dataset=cfg.dataset,
            data=dataclasses.replace(base.data, window=cfg.data.window, normalize=cfg.data.normalize))
        out.append(Cell(index=len(grid.cells) + len(out), cell_id=cell_id, recipe=str(BASELINE_RECIPE), values=(),
                        method="random_init", encoder=cfg.encoder.name, baseline_for=tuple(sources)))
    return out


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------


def _assignable(node: DictConfig, key: str, value: Any) -> bool:
    """Fast check that ``key = value`` is valid in the typed config ``node`` (assign, then restore).

    OmegaConf validates an assignment against the dataclass schema in ~50 us, 200x faster than building
    a config; a False answer (or anything unusual) sends the caller to the exact path, so this can only
    save time, never accept what :func:`ecg_core.config.from_dict` would refuse for a scalar key.
    """
    if isinstance(value, (dict, list)):
        return False
    parts = key.split(".")
    parent: Any = node
    for part in parts[:-1]:
        if not isinstance(parent, DictConfig) or part not in parent:
            return False
        parent = parent._get_node(part)
    leaf = parts[-1]
    if not isinstance(parent, DictConfig) or leaf not in parent or OmegaConf.is_missing(parent, leaf):
        return False
    old = parent._get_node(leaf)
    if isinstance(old, (DictConfig, ListConfig)) or OmegaConf.is_interpolation(parent, leaf):
        return False
    original = old._value()
    try:
        parent[leaf] = value
    except Exception:   # noqa: BLE001 - any refusal means: ask the exact path
        return False
    finally:
        parent[leaf] = original
    return True


def _validate_cells(grid: Grid) -> None:
    """Every key/value of every cell against the typed config, every method/encoder combination once."""
    from ecg_core.encoders import validate_encoder
    from ecg_core.methods import validate_method

    src = str(grid.path)
    if not grid.cells:
        raise GridError(src, "axes", "the grid has no cells (every combination was excluded)")
    checked: set[tuple[str, str, str]] = set()
    combos: dict[str, Cell] = {}
    probes = {name: OmegaConf.structured(cfg) for name, cfg in grid.recipe_configs.items()}
    for cell in grid.cells:
        base = grid.recipe_configs[cell.recipe]
        for key, value in {**grid.overrides, **cell.overrides()}.items():
            token = (cell.recipe, key, _canonical(value))
            if token in checked:
                continue
            checked.add(token)
            if _assignable(probes[cell.recipe], key, value):
                continue
            try:   # the slow, exact path: also what produces the error message
                from_dict(PretrainConfig, [(src, nest_dotted({key: value}))], base=base)
            except ConfigError as exc:
                own = key in dict(cell.values)
                where = f"cells[{cell.index}]" if own or key not in grid.overrides else "overrides"
                raise GridError(src, f"{where} ({cell.cell_id}): {exc.key or key}", exc.reason) from None
        related = {k: v for k, v in {**grid.overrides, **cell.overrides()}.items()
                   if k.startswith(("method", "encoder", "data.window"))}
        combos.setdefault(cell.recipe + _canonical(related), cell)
    for cell in combos.values():
        try:
            cfg = grid.pretrain_config(cell)
        except ConfigError as exc:
            raise GridError(src, f"cells[{cell.index}] ({cell.cell_id}): {exc.key}", exc.reason) from None
        try:
            validate_method(cfg.method, window=cfg.data.window)
            validate_encoder(cfg.encoder, window=cfg.data.window)
        except ConfigError as exc:
            raise GridError(src, f"cells[{cell.index}] ({cell.cell_id}): {exc.key}", exc.reason) from None
