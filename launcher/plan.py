"""The plan: every job of a grid with its run directory, dependencies, resources and config.

Each cell becomes ``pretrain -> {linear_eval, frozen_attention, finetune} x task x label_fraction x seed``
(the grid's protocols; baseline cells always get ``finetune``), optionally followed by a ``robustness`` job
per evaluation run that ``evaluation.robustness`` names, and the grid ends with one ``aggregate`` job after
all of them::

    <runs_root>/<grid>/<cell_id>/pretrain/
    <runs_root>/<grid>/<cell_id>/linear_eval-<task>-f<fraction>-s<seed>/
    <runs_root>/<grid>/<cell_id>/finetune-<task>-f<fraction>-s<seed>/
    <runs_root>/<grid>/<cell_id>/robustness-linear_eval-<task>-f<fraction>-s<seed>/
    <runs_root>/<grid>/report/                     (the aggregate job: results.csv, report.md, plots)

Names come from the grid (cell ids are hashes of the cell's values), never from the clock, so launching
the same grid again finds the same directories (DESIGN.md, "Run directory"). An evaluation depends on
its cell's pretraining with ``afterok`` (it never runs on a missing checkpoint); the aggregate depends on
every evaluation with ``afterany`` (it runs when they have all ended, and reports failed ones as failed).

Configs are built only for the jobs that are submitted (:meth:`Plan.config_for`); a dry run of a
10,000-cell grid builds none of them (the grid was validated key by key at expansion).
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecg_core.config import ConfigError
from ecg_core.data.config import StoreSource
from jobs.config import AggregateConfig, PretrainConfig, RobustnessConfig, TrackingConfig
from launcher.grid import BASELINE_PROTOCOLS, EVAL_KINDS, STAGE_KINDS, Cell, Grid, GridError, resolve_path
from launcher.profiles import ClusterProfile

__all__ = ["AGGREGATE_KEY", "JobSpec", "Plan", "make_plan", "resolve_dataset", "wandb_run_id"]

AGGREGATE_KEY = "report"
"""Key (and directory name under the grid directory) of the grid's aggregate job."""


@dataclass(frozen=True)
class JobSpec:
    """One job of the plan."""

    key: str                         # unique in the grid: "<cell_id>/<stage>" or "report"
    kind: str                        # pretrain | linear_eval | finetune | aggregate
    cell_id: str                     # "" for the aggregate job
    stage: str                       # directory name under the cell
    run_dir_text: str                # the run directory (a str: 50,000 Path objects cost a second)
    depends_on: tuple[str, ...] = ()
    dependency: str = "afterok"      # afterok | afterany
    resources: tuple[tuple[str, Any], ...] = ()
    task: str = ""
    label_fraction: float = 0.0
    seed: int = 0

    @property
    def run_dir(self) -> Path:
        return Path(self.run_dir_text)


@dataclass
class Plan:
    """All jobs of a grid in dependency order (pretrain, evaluations, aggregate)."""

    grid: Grid
    profile: ClusterProfile
    grid_dir: Path
    jobs: list[JobSpec]
    stores: dict[str, Path] = field(default_factory=dict)   # dataset name -> store path
    _by_key: dict[str, JobSpec] = field(default_factory=dict, repr=False)
    _pretrain_cache: dict[str, PretrainConfig] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_key = {job.key: job for job in self.jobs}

    def job(self, key: str) -> JobSpec:
        return self._by_key[key]

    def cell(self, cell_id: str) -> Cell:
        return next(c for c in self.grid.cells if c.cell_id == cell_id)

    def dependents(self, keys: set[str]) -> set[str]:
        """``keys`` and every job that depends on one of them, transitively."""
        out = set(keys)
        for job in self.jobs:   # jobs are in dependency order: one pass suffices
            if any(d in out for d in job.depends_on):
                out.add(job.key)
        return out

    def tracking(self, job: JobSpec) -> TrackingConfig:
        return dataclasses.replace(self.grid.tracking, group=self.grid.name, name=job.cell_id or self.grid.name,
                                   job_type=job.kind, run_id=wandb_run_id(self.grid.name, job.key),
                                   tags=list(self.grid.tracking.tags))

    def pretrain_config(self, cell_id: str) -> PretrainConfig:
        """The cell's pretraining config, with its store and tracking filled in."""
        if cell_id not in self._pretrain_cache:
            cell = self.cell(cell_id)
            cfg = self.grid.pretrain_config(cell)
            store = self.stores.get(cfg.dataset) or resolve_dataset(cfg.dataset, self.profile, self.grid)
            data = dataclasses.replace(cfg.data, stores=[StoreSource(path=str(store), weight=1.0,
                                                                     folds=list(cfg.pretrain_folds))])
            job = self.job(f"{cell_id}/pretrain")
            ev = self.grid.evaluation
            eval_stores = sorted({str(self.stores[d]) for d in self._eval_datasets()}) if ev.enabled else []
            self._pretrain_cache[cell_id] = dataclasses.replace(cfg, data=data, tracking=self.tracking(job),
                                                                eval_stores=eval_stores)
        return self._pretrain_cache[cell_id]

    def config_for(self, job: JobSpec) -> Any:
        """The full typed config written to ``<run_dir>/config.yaml`` for ``job``."""
        if job.kind == "pretrain":
            return self.pretrain_config(job.cell_id)
        if job.kind == "aggregate":
            expected = [str(self.job(k).run_dir) for k in job.depends_on if self.job(k).kind != "robustness"]
            robustness = [str(self.job(k).run_dir) for k in job.depends_on if self.job(k).kind == "robustness"]
            variants = _variants(self.grid)
            return AggregateConfig(grid=self.grid.name, grid_dir=str(self.grid_dir), expected=expected,
                                   robustness=robustness, variants=variants, tracking=self.tracking(job))
        if job.kind == "robustness":
            rob = self.grid.evaluation.robustness
            parent = self.job(job.depends_on[0])
            return RobustnessConfig(eval_dir=str(parent.run_dir), corruptions=list(rob.corruptions),
                                    severities=list(rob.severities), seed=rob.seed,
                                    batch_size=self.config_for(parent).batch_size, tracking=self.tracking(job))
        protocol = next(p for p, kind in EVAL_KINDS.items() if kind == job.kind)
        base = self.grid.eval_bases[protocol]
        pre = self.pretrain_config(job.cell_id)
        dataset, task = _split_task(job.task, self._eval_dataset())
        explicit = {**self.grid.evaluation.common, **getattr(self.grid.evaluation, protocol)}
        window = base.window if "window" in explicit else pre.data.window
        return dataclasses.replace(
            base, protocol=protocol, pretrain_dir=str(self.job(f"{job.cell_id}/pretrain").run_dir), dataset=dataset,
            store=str(self.stores[dataset]), task=task, label_fraction=job.label_fraction, seed=job.seed,
            window=window, test_stride=base.test_stride if "test_stride" in explicit else max(1, window // 2),
            normalize=base.normalize if "normalize" in explicit else pre.data.normalize,
            tracking=self.tracking(job))

    def _eval_dataset(self) -> str:
        return self.grid.evaluation.dataset or self.grid.dataset

    def _eval_datasets(self) -> set[str]:
        """Every dataset the grid evaluates on (the default one and those named by ``dataset:task``)."""
        tasks = {job.task for job in self.jobs if job.task}
        return {self._eval_dataset()} | {_split_task(t, self._eval_dataset())[0] for t in tasks}


def _variants(grid: Grid) -> dict[str, str]:
    """What tells a cell from the other cells of the same method and encoder in the report: the values that
    differ between them (``method.params.temperature=0.1``); nothing for a cell alone of its kind."""
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in grid.cells:
        groups.setdefault((cell.method, cell.encoder), []).append(cell)
    out: dict[str, str] = {}
    for cells in groups.values():
        if len(cells) < 2:
            continue
        values = [dict(c.values) if not c.baseline_for else
                  {f"encoder.params.{k}": v for k, v in grid.pretrain_config(c).encoder.params.items()} for c in cells]
        keys = sorted({k for v in values for k in v})
        differing = [k for k in keys if len({repr(v.get(k)) for v in values}) > 1]
        for cell, vals in zip(cells, values):
            out[cell.cell_id] = ", ".join(f"{k}={vals[k]}" for k in differing if k in vals)
    return out


def wandb_run_id(grid: str, key: str) -> str:
    """A W&B run id that is the same for every submission of a job (a requeued job resumes its run)."""
    return "r" + hashlib.sha256(f"{grid}/{key}".encode()).hexdigest()[:19]


def resolve_dataset(dataset: str, profile: ClusterProfile, grid: Grid | None = None) -> Path:
    """The store of a dataset: the profile's ``data_roots[dataset]``, or ``dataset`` itself when it is a path.

    Raises GridError naming the grid file and key when the dataset is unknown to the profile.
    """
    if dataset in profile.data_roots:
        return resolve_path(profile.data_roots[dataset])
    if "/" in dataset or dataset.endswith(".zarr"):
        return resolve_path(dataset, grid.path.parent if grid is not None else None)
    known = ", ".join(sorted(profile.data_roots)) or "none"
    raise GridError(str(grid.path) if grid else "grid", "dataset",
                    f"no store for dataset {dataset!r} in cluster profile {profile.name!r} (data_roots: {known}); "
                    "add it to the profile's data_roots or give a store path")


def _split_task(task: str, default_dataset: str) -> tuple[str, str]:
    if ":" in task:
        dataset, name = task.split(":", 1)
        return dataset, name
    return default_dataset, task


def _fraction_label(fraction: float) -> str:
    return f"{fraction:g}"


def make_plan(grid: Grid, profile: ClusterProfile, runs_root: Path | None = None,
              store_tasks: dict[str, list[str]] | None = None) -> Plan:
    """Every job of ``grid`` on ``profile``.

    Args:
        runs_root: where run directories go (default: the profile's ``runs_root``).
        store_tasks: dataset -> the store's task names (from :func:`launcher.cli` opening each store once);
            used to expand an empty ``evaluation.tasks`` to every task and to check the named ones. None
            skips the check (tests of pure expansion).

    Raises:
        GridError: unknown dataset or task, invalid stage resources (named by file and key).
    """
    root = Path(runs_root) if runs_root is not None else Path(profile.runs_root)
    grid_dir = (root / grid.name).absolute()
    src = str(grid.path)
    resources: dict[str, tuple[tuple[str, Any], ...]] = {}
    for kind in STAGE_KINDS:
        res = grid.resources.get(kind, {})
        try:
            profile.with_resources(**res)
        except ConfigError as exc:
            raise GridError(src, f"resources.{kind}.{exc.key}", f"{exc.reason} (cluster profile {profile.name})") \
                from None
        resources[kind] = tuple(sorted(res.items()))

    stores: dict[str, Path] = {}
    datasets = {grid.dataset} | {str(v) for c in grid.cells for k, v in c.values if k == "dataset"}
    datasets |= {str(v) for k, v in grid.overrides.items() if k == "dataset"}
    ev = grid.evaluation
    eval_dataset = ev.dataset or grid.dataset
    tasks = list(ev.tasks)
    if ev.enabled:
        datasets.add(eval_dataset)
        datasets |= {_split_task(t, eval_dataset)[0] for t in tasks}
    for dataset in sorted(datasets):
        stores[dataset] = resolve_dataset(dataset, profile, grid)
    if ev.enabled and store_tasks is not None:
        if not tasks:
            tasks = sorted(store_tasks.get(eval_dataset, []))
            if not tasks:
                raise GridError(src, "evaluation.tasks", f"the store of {eval_dataset!r} has no label tasks")
        for task in tasks:
            dataset, name = _split_task(task, eval_dataset)
            known = store_tasks.get(dataset, [])
            if name not in known:
                raise GridError(src, "evaluation.tasks",
                                f"task {name!r} is not in the store of {dataset!r} ({stores[dataset]}); "
                                f"its tasks: {', '.join(known) or 'none'}")
    elif ev.enabled and not tasks:
        tasks = ["labels"]

    jobs: list[JobSpec] = []
    evals: list[str] = []
    rob = ev.robustness
    for cell in grid.cells:
        pre_key = f"{cell.cell_id}/pretrain"
        jobs.append(JobSpec(key=pre_key, kind="pretrain", cell_id=cell.cell_id, stage="pretrain",
                            run_dir_text=f"{grid_dir}/{cell.cell_id}/pretrain", resources=resources["pretrain"]))
    if ev.enabled:
        for cell in grid.cells:
            protocols = list(ev.protocols)
            if cell.baseline_for:
                protocols += [p for p in BASELINE_PROTOCOLS if p not in protocols]
            for protocol in protocols:
                kind = EVAL_KINDS[protocol]
                for task in tasks:
                    for fraction in ev.label_fractions:
                        for seed in ev.seeds:
                            stage = f"{kind}-{task.replace(':', '.')}-f{_fraction_label(fraction)}-s{seed}"
                            key = f"{cell.cell_id}/{stage}"
                            jobs.append(JobSpec(key=key, kind=kind, cell_id=cell.cell_id, stage=stage,
                                                run_dir_text=f"{grid_dir}/{cell.cell_id}/{stage}",
                                                depends_on=(f"{cell.cell_id}/pretrain",),
                                                resources=resources[kind], task=task, label_fraction=float(fraction),
                                                seed=int(seed)))
                            evals.append(key)
                            if (rob.enabled and protocol in rob.protocols and fraction in rob.label_fractions):
                                rkey = f"{cell.cell_id}/robustness-{stage}"
                                jobs.append(JobSpec(key=rkey, kind="robustness", cell_id=cell.cell_id,
                                                    stage=f"robustness-{stage}",
                                                    run_dir_text=f"{grid_dir}/{cell.cell_id}/robustness-{stage}",
                                                    depends_on=(key,), resources=resources["robustness"],
                                                    task=task, label_fraction=float(fraction), seed=int(seed)))
                                evals.append(rkey)
        jobs.append(JobSpec(key=AGGREGATE_KEY, kind="aggregate", cell_id="", stage=AGGREGATE_KEY,
                            run_dir_text=f"{grid_dir}/{AGGREGATE_KEY}", depends_on=tuple(evals), dependency="afterany",
                            resources=resources["aggregate"]))
    return Plan(grid=grid, profile=profile, grid_dir=grid_dir, jobs=jobs, stores=stores)
