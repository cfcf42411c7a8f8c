"""``python launch.py``: expand a grid, submit its DAG (SLURM or local processes), watch, retry or cancel it.

    python launch.py --grid grids/demo.yaml                     # run it (local processes unless SLURM is set up)
    python launch.py --grid grids/all_methods.yaml --cluster my_cluster --dry-run
    python launch.py --grid G --status | --retry-failed | --cancel
    python launch.py --grid G steps=2000 evaluation.seeds=[0,1]   # key=value overrides of the grid

Exit status: 0 success; 1 a job failed (local run) or a submission failed; 2 invalid input (grid, profile,
store, override), with a one-line message naming the file, the cell and the key.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ecg_core.config import ConfigError, save_config, to_yaml
from launcher.grid import EVAL_KINDS, Grid, GridError, load_grid
from launcher.manifest import Manifest, ManifestError
from launcher.plan import AGGREGATE_KEY, JobSpec, Plan, make_plan
from launcher.profiles import ClusterProfile, default_profile, load_profile
from launcher.runner import JobRunner, read_done
from launcher.submit import error_line

__all__ = ["main", "job_states_of", "ACTIVE_STATES"]

log = logging.getLogger("launch")

ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
                           "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "PREEMPTED", "SUBMITTED"})
"""Scheduler states of a job that will still run (or is running): never submitted a second time."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="launch.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run directories: <runs_root>/<grid>/<cell_id>/<stage>/ (config.yaml, checkpoints/, metrics.jsonl, "
               "result.json, DONE); the grid's report: <runs_root>/<grid>/report/report.md. Grid schema: README.md.")
    p.add_argument("--grid", required=True, help="grid file (grids/<name>.yaml)")
    p.add_argument("--cluster", help="cluster profile: a name in cluster_configs/ or a YAML path (default: "
                                     "$ECG_SSL_CLUSTER or cluster_configs/default.yaml when sbatch exists, else local)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="print every job (stage, cell, run dir, dependencies, resources) and a total; "
                           "submit nothing")
    mode.add_argument("--status", action="store_true", help="table of every job's state and log of failed ones")
    mode.add_argument("--retry-failed", action="store_true", help="resubmit failed jobs and their dependents")
    mode.add_argument("--cancel", action="store_true", help="cancel the grid's queued and running jobs")
    p.add_argument("--runs-root", type=Path, help="root of the run directories (default: the profile's runs_root)")
    p.add_argument("--quiet", action="store_true", help="less output")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="grid overrides: pretraining config keys (steps=100, optim.lr=3e-4) or grid keys "
                        "(evaluation.seeds=[0], resources.pretrain.tasks_per_node=2, tracking.mode=disabled)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    for noisy in ("submitit", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        profile = load_profile(args.cluster) if args.cluster else default_profile()
        grid = load_grid(args.grid, args.overrides)
        store_tasks = _stores(grid, profile, build_demo=not (args.status or args.cancel))
        plan = make_plan(grid, profile, runs_root=args.runs_root, store_tasks=store_tasks)
    except (ConfigError, ManifestError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.dry_run:
            return _dry_run(plan)
        if args.status:
            return _status(plan)
        if args.cancel:
            return _cancel(plan)
        return _launch(plan, retry_failed=args.retry_failed)
    except (ManifestError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SubmissionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# ----------------------------------------------------------------------------------------------------
# Stores
# ----------------------------------------------------------------------------------------------------


def _stores(grid: Grid, profile: ClusterProfile, build_demo: bool) -> dict[str, list[str]]:
    """Open every store the grid uses once: dataset -> its task names. Builds the demo store if missing."""
    from ecg_core.data.store import StoreError, open_store
    from launcher.plan import resolve_dataset

    datasets = {grid.dataset, grid.evaluation.dataset or grid.dataset}
    datasets |= {t.split(":", 1)[0] for t in grid.evaluation.tasks if ":" in t}
    datasets |= {str(v) for c in grid.cells for k, v in c.values if k == "dataset"}
    out: dict[str, list[str]] = {}
    for dataset in sorted(d for d in datasets if d):
        path = resolve_dataset(dataset, profile, grid)
        if dataset == "demo" and not path.exists() and build_demo:
            _build_demo(path)
        try:
            store = open_store(path)
        except (StoreError, OSError, ValueError) as exc:
            raise GridError(str(grid.path), "dataset", f"store of dataset {dataset!r} cannot be opened: {exc}") \
                from None
        out[dataset] = list(store.tasks)
    return out


def _build_demo(path: Path) -> None:
    """Generate and ingest the demo dataset where the profile expects it (``<workdir>/demo.zarr``)."""
    from ecg_core.data import demo

    if path.name != "demo.zarr":
        raise GridError("cluster profile", "data_roots.demo",
                        f"the demo store is built as <dir>/demo.zarr, got {path}")
    log.info("building the demo dataset in %s (once)", path.parent)
    rc = demo.main(["--workdir", str(path.parent)])
    if rc not in (0, None) or not path.exists():
        raise GridError("demo", "data_roots.demo", f"building the demo store at {path} failed")


# ----------------------------------------------------------------------------------------------------
# Dry run
# ----------------------------------------------------------------------------------------------------


def _resources_text(plan: Plan, job: JobSpec) -> str:
    p = plan.profile.with_resources(**dict(job.resources))
    text = f"nodes={p.nodes} tasks={p.tasks_per_node} cpus={p.cpus_per_task} gpus={p.gpus_per_node} time={p.time_min}m"
    return text + (f" mem={p.mem_gb:g}G" if p.mem_gb else "")


def _rel(path: Path | str, _cwd: list[str] = []) -> str:   # noqa: B006 - a cache of the working directory
    if not _cwd:
        _cwd.append(str(Path.cwd()) + "/")
    text = str(path)
    return text[len(_cwd[0]):] if text.startswith(_cwd[0]) else text


def _dry_run(plan: Plan) -> int:
    out = sys.stdout
    res_cache: dict[tuple[str, tuple[Any, ...]], str] = {}
    lines = []
    for job in plan.jobs:
        key = (job.kind, job.resources)
        if key not in res_cache:
            res_cache[key] = _resources_text(plan, job)
        deps = f"{len(job.depends_on)} jobs ({job.dependency})" if len(job.depends_on) > 3 else \
            (",".join(job.depends_on) or "-")
        lines.append(f"{job.kind:<12} {job.cell_id or AGGREGATE_KEY:<34} {_rel(job.run_dir_text)}  after: {deps}  "
                     f"[{res_cache[key]}]")
    out.write("\n".join(lines) + "\n")
    counts = Counter(job.kind for job in plan.jobs)
    per_kind = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    arrays = _array_count(plan, plan.jobs)
    out.write(f"total: {len(plan.jobs)} jobs ({per_kind}) in {len(plan.grid.cells)} cells; {arrays} sbatch calls "
              f"(job arrays) on cluster profile {plan.profile.name!r} ({plan.profile.executor}); nothing submitted\n")
    _print_parameter_counts(plan)
    return 0


def _print_parameter_counts(plan: Plan, limit: int = 50) -> None:
    """Parameter count of each distinct encoder of the grid (built on CPU) and the methods that use it.

    Cells are grouped by what can change their encoder (recipe and ``encoder.*`` values); at most ``limit``
    groups are resolved, so a 10,000-cell sweep over learning rates costs one build per recipe.
    """
    groups: dict[str, list[Any]] = {}
    for cell in plan.grid.cells:
        token = cell.recipe + repr(sorted((k, repr(v)) for k, v in cell.values if k.startswith("encoder")))
        if cell.baseline_for:
            token = cell.cell_id
        groups.setdefault(token, []).append(cell)
    if not groups:
        return
    from ecg_core.encoders import build_encoder, count_parameters

    encoders: dict[str, tuple[Any, list[Any]]] = {}
    for cells in list(groups.values())[:limit]:
        enc = plan.grid.pretrain_config(cells[0]).encoder
        key = repr((enc.name, sorted(enc.params.items())))
        encoders.setdefault(key, (enc, []))[1].extend(cells)
    for enc, cells in encoders.values():
        n = count_parameters(build_encoder(enc))
        methods = ", ".join(dict.fromkeys(c.method for c in cells))
        params = " ".join(f"{k}={v}" for k, v in enc.params.items())
        sys.stdout.write(f"encoder {enc.name}{f' ({params})' if params else ''}: {n:,} parameters; "
                         f"{len(cells)} cell(s): {methods}\n")
    if len(groups) > limit:
        sys.stdout.write(f"(parameter counts of the first {limit} of {len(groups)} encoder settings)\n")


def _array_count(plan: Plan, jobs: Sequence[JobSpec]) -> int:
    """sbatch calls a fresh launch of ``jobs`` makes (see :func:`_groups`)."""
    return len(_groups(plan, {job.key for job in jobs}, plan.profile.is_slurm))


# ----------------------------------------------------------------------------------------------------
# States
# ----------------------------------------------------------------------------------------------------


def job_states_of(plan: Plan, manifest: Manifest) -> dict[str, str]:
    """State of every job: DONE (marker), a scheduler state (PENDING, RUNNING, FAILED, ...), LOST (a local
    job whose process ended without DONE), or NOT_SUBMITTED."""
    from launcher.submit import job_states, local_job_alive

    states: dict[str, str] = {}
    slurm_ids: dict[str, str] = {}
    for job in plan.jobs:
        if read_done(job.run_dir) is not None:
            states[job.key] = "DONE"
            continue
        entry = manifest.entry(job.key) or {}
        job_id = entry.get("job_id")
        if not job_id:
            states[job.key] = entry.get("skipped") and "SKIPPED" or "NOT_SUBMITTED"
        elif entry.get("executor") == "slurm":
            slurm_ids[job.key] = str(job_id)
        else:
            states[job.key] = "RUNNING" if local_job_alive(str(job_id)) else "FAILED"
    if slurm_ids:
        found = job_states(slurm_ids.values())
        for key, job_id in slurm_ids.items():
            state = found.get(job_id, "UNKNOWN")
            # A job that ended COMPLETED without DONE did not finish its work (or DONE is not visible here).
            states[key] = "FAILED" if state == "COMPLETED" else state
    return states


def _log_path(plan: Plan, manifest: Manifest, job: JobSpec) -> str:
    entry = manifest.entry(job.key) or {}
    for key in ("stderr", "stdout"):
        if entry.get(key) and Path(entry[key]).exists():
            return entry[key]
    return entry.get("stderr") or ""


def _status(plan: Plan) -> int:
    manifest = Manifest(plan.grid_dir).load()
    states = job_states_of(plan, manifest)
    rows = [("STAGE", "CELL", "STATE", "JOB ID", "RUN DIR / LOG")]
    for job in plan.jobs:
        entry = manifest.entry(job.key) or {}
        state = states[job.key]
        where = _rel(job.run_dir)
        if state not in ("DONE", "NOT_SUBMITTED") and state not in ACTIVE_STATES:
            where += f"  log: {_log_path(plan, manifest, job) or '-'}"
            if entry.get("skipped"):
                where += f"  ({entry['skipped']})"
        url = _wandb_url(job.run_dir)
        if url:
            where += f"  {url}"
        rows.append((job.stage if job.kind != "aggregate" else "aggregate", job.cell_id or "-", state,
                     str(entry.get("job_id") or "-"), where))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] + "\n")
    counts = Counter(states.values())
    sys.stdout.write("total: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "\n")
    report = plan.grid_dir / AGGREGATE_KEY / "report.md"
    if report.exists():
        sys.stdout.write(f"report: {report}\n")
    return 0


def _wandb_url(run_dir: Path) -> str:
    import json

    path = run_dir / "summary.json"
    try:
        return str(json.loads(path.read_text()).get("wandb_url") or "")
    except (OSError, ValueError, AttributeError):
        return ""


# ----------------------------------------------------------------------------------------------------
# Cancel
# ----------------------------------------------------------------------------------------------------


def _cancel(plan: Plan) -> int:
    import os
    import signal as _signal

    from launcher.submit import cancel

    with Manifest(plan.grid_dir).locked() as manifest:
        states = job_states_of(plan, manifest)
        active = [job for job in plan.jobs if states[job.key] in ACTIVE_STATES]
        slurm = [str(manifest.entry(j.key)["job_id"]) for j in active
                 if manifest.entry(j.key).get("executor") == "slurm"]
        local = [str(manifest.entry(j.key)["job_id"]) for j in active
                 if manifest.entry(j.key).get("executor") != "slurm"]
        if slurm:
            cancel(slurm)
        for pid in local:
            try:
                os.kill(int(pid), _signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        for job in active:
            manifest.note(job.key, cancelled=True)
    sys.stdout.write(f"cancelled {len(active)} queued/running job(s) of grid {plan.grid.name!r}\n")
    return 0


# ----------------------------------------------------------------------------------------------------
# Launch
# ----------------------------------------------------------------------------------------------------


def _write_config(plan: Plan, job: JobSpec) -> None:
    """Write the job's config.yaml; an existing different one is an error (the directory belongs to a run)."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    cfg = plan.config_for(job)
    path = job.run_dir / "config.yaml"
    text = to_yaml(cfg)
    if path.exists():
        old = path.read_text(encoding="utf-8")
        if old == text:
            return
        if job.kind != "aggregate" and (job.run_dir / "checkpoints").exists():
            raise ConfigError(str(path), None, "this run directory holds checkpoints of a different config "
                                               "(a different store path or tracking setting?); move it away or "
                                               "change the grid name")
    save_config(cfg, path)


def _launch(plan: Plan, retry_failed: bool) -> int:
    from launcher import submit as S

    profile = plan.profile
    with Manifest(plan.grid_dir).locked() as manifest:
        manifest.set_meta(grid=plan.grid.name, grid_file=str(plan.grid.path), profile=profile.name,
                          executor=profile.executor)
        states = job_states_of(plan, manifest)
        if profile.executor == "local":
            running = [k for k, s in states.items() if s in ACTIVE_STATES]
            if running:
                raise ManifestError(f"{manifest.path}: {len(running)} job(s) of this grid are still running as local "
                                    f"processes (e.g. {running[0]}); wait for them or use --cancel")
        failed = {k for k, s in states.items() if s not in ACTIVE_STATES and s not in ("DONE", "NOT_SUBMITTED")}
        blocked: set[str] = set()
        if retry_failed:
            todo = {k for k, s in states.items() if s != "DONE" and s not in ACTIVE_STATES}
            # an aggregate that already reported the failures reports again once they are retried
            stale = {k for k in plan.dependents(todo) if states[k] == "DONE" and plan.job(k).kind == "aggregate"}
            for key in stale:
                (plan.job(key).run_dir / "DONE").unlink()
                states[key] = "NOT_SUBMITTED"
            todo |= stale
        else:
            todo = {k for k, s in states.items() if s in ("NOT_SUBMITTED", "SKIPPED")}
            blocked = plan.dependents(failed) - failed
            todo -= blocked
            # the aggregate still runs after failed evaluations (afterany), unless a pretraining failed
            if AGGREGATE_KEY in blocked and not any(plan.job(k).kind == "pretrain" for k in failed):
                blocked.discard(AGGREGATE_KEY)
                if states.get(AGGREGATE_KEY) in ("NOT_SUBMITTED", "SKIPPED"):
                    todo.add(AGGREGATE_KEY)
        n_done = sum(1 for s in states.values() if s == "DONE")
        n_active = sum(1 for s in states.values() if s in ACTIVE_STATES)
        log.info("grid %s: %d jobs: %d done, %d queued/running, %d failed, %d to submit (profile %s)",
                 plan.grid.name, len(plan.jobs), n_done, n_active, len(failed), len(todo), profile.name)
        if failed and not retry_failed:
            log.info("%d failed job(s) are not resubmitted (use --retry-failed); %d dependent job(s) wait for them",
                     len(failed), len(blocked))
        if not todo:
            return _finish(plan, manifest, submitted={}, local=profile.executor == "local")
        submitted = _submit(plan, manifest, todo, states, S)
        return _finish(plan, manifest, submitted, local=profile.executor == "local")


Group = tuple[str, str, tuple[tuple[str, Any], ...], list[JobSpec], str]


def _groups(plan: Plan, todo: set[str], slurm: bool) -> list[Group]:
    """The sbatch calls (job arrays) for the ``todo`` jobs, in dependency order:
    ``(kind, label, resources, jobs, dependency)``.

    On SLURM, when the pretraining jobs go out as one array, each evaluation setting (kind, task, fraction,
    seed) becomes one array over the same cells in the same order, held with ``aftercorr``: its task *i*
    starts when pretraining task *i* succeeded (SLURM pairs array indices). The number of sbatch calls then
    depends on the evaluation protocol, not on the number of cells. Otherwise (some pretrainings already
    done or queued from an earlier launch, or the local executor) evaluations go out per cell and kind with
    ``afterok`` on that cell's pretraining.
    """
    out: list[Group] = []
    pre_by_res: dict[Any, list[JobSpec]] = defaultdict(list)
    for job in plan.jobs:
        if job.key in todo and job.kind == "pretrain":
            pre_by_res[job.resources].append(job)
    for res, jobs in pre_by_res.items():
        out.append(("pretrain", "", res, jobs, "afterok"))
    pre_jobs = next(iter(pre_by_res.values()), [])
    array_cells = [j.cell_id for j in pre_jobs] if slurm and len(pre_by_res) == 1 and len(pre_jobs) >= 2 else []
    combos: dict[Any, list[JobSpec]] = defaultdict(list)
    per_cell: dict[Any, list[JobSpec]] = defaultdict(list)
    after_evals: dict[Any, list[JobSpec]] = defaultdict(list)
    for job in plan.jobs:
        if job.key in todo and job.kind == "robustness":   # after an evaluation, not a pretraining
            after_evals[(job.cell_id, job.kind, job.resources)].append(job)
        elif job.key in todo and job.kind in EVAL_KINDS.values():
            combos[(job.kind, job.stage, job.resources)].append(job)
    for (kind, stage, res), jobs in combos.items():
        if array_cells and [j.cell_id for j in jobs] == array_cells:
            out.append((kind, stage, res, jobs, "aftercorr"))
        else:
            for job in jobs:
                per_cell[(job.cell_id, job.kind, job.resources)].append(job)
    for (cell, kind, res), jobs in [*per_cell.items(), *after_evals.items()]:
        out.append((kind, cell, res, jobs, "afterok"))
    agg = [job for job in plan.jobs if job.key in todo and job.kind == "aggregate"]
    if agg:
        out.append(("aggregate", "", agg[0].resources, agg, "afterany"))
    return out


def _submit(plan: Plan, manifest: Manifest, todo: set[str], states: dict[str, str], S: Any) -> dict[str, Any]:
    """Submit the ``todo`` jobs array by array (:func:`_groups`); record each sbatch's jobs in the manifest
    as soon as sbatch returns."""
    profile = plan.profile
    refs: dict[str, Any] = {}   # key -> submitit Job (this launch) or scheduler id (earlier launches)
    for job in plan.jobs:
        if states.get(job.key) in ACTIVE_STATES:
            refs[job.key] = str((manifest.entry(job.key) or {}).get("job_id"))
    folder = plan.grid_dir / "logs" / "%j"
    executors: dict[tuple[str, Any], Any] = {}
    for kind, label, resources, jobs, dependency in _groups(plan, todo, profile.is_slurm):
        if dependency == "aftercorr":
            after_keys = [job.depends_on[0] for job in jobs]    # pretraining task i for evaluation task i
        else:
            after_keys = sorted({d for job in jobs for d in job.depends_on if states.get(d) != "DONE"})
        if dependency == "afterany":   # ended, failed or never submitted: nothing to wait for
            after_keys = [d for d in after_keys if d in refs]
        missing = [d for d in after_keys if d not in refs]
        if missing:
            for job in jobs:
                manifest.note(job.key, skipped=f"depends on {missing[0]}, which was not submitted")
            log.warning("not submitting %d %s job(s) of %s: %s was not submitted", len(jobs), kind,
                        label or "the grid", missing[0])
            continue
        res = dict(resources)
        if (kind, resources) not in executors:
            executors[(kind, resources)] = S.make_executor(profile, folder, job_name=f"{plan.grid.name}-{kind}", **res)
        executor = executors[(kind, resources)]
        for job in jobs:
            _write_config(plan, job)
        cpus = res.get("cpus_per_task", profile.cpus_per_task)
        try:
            handles = S.submit_array(executor, JobRunner(kind, cpus), [(str(j.run_dir),) for j in jobs],
                                     after=[refs[k] for k in after_keys], dependency=dependency)
        except S.DependencyFailedError as exc:
            for job in jobs:
                manifest.note(job.key, skipped=str(exc))
            log.warning("%s %s: not submitted: %s", kind, label, exc)
            continue
        except S.FailedJobError as exc:
            manifest.save()
            raise SubmissionError(f"sbatch failed while submitting {len(jobs)} {kind} job(s) "
                                  f"(jobs submitted before are recorded in {manifest.path}):\n{exc}") from exc
        for job, handle in zip(jobs, handles):
            refs[job.key] = handle
            manifest.record(job.key, save=False, kind=job.kind, run_dir=str(job.run_dir), job_id=str(handle.job_id),
                            executor=profile.executor, stdout=str(handle.paths.stdout),
                            stderr=str(handle.paths.stderr), skipped=None, cancelled=None)
        manifest.save()
        log.info("submitted %d %s job(s)%s: %s", len(jobs), kind, f" ({label})" if label else "",
                 _id_range([str(h.job_id) for h in handles]))
    return {k: v for k, v in refs.items() if not isinstance(v, str)}


class SubmissionError(RuntimeError):
    """sbatch refused a submission; what was submitted before is in the manifest."""


def _id_range(ids: list[str]) -> str:
    return ids[0] if len(ids) == 1 else f"{ids[0]} .. {ids[-1]}"


def _finish(plan: Plan, manifest: Manifest, submitted: dict[str, Any], local: bool) -> int:
    report = plan.grid_dir / AGGREGATE_KEY / "report.md"
    if not local:
        sys.stdout.write(f"submitted {len(submitted)} job(s); follow them with: python launch.py --grid "
                         f"{plan.grid.path} --status\n")
        return 0
    failures = 0
    for key, handle in submitted.items():
        try:
            handle.results()
        except Exception as exc:   # the job's exception, as submitit re-raises it
            failures += 1
            log.error("FAILED %s: %s (log: %s)", key, error_line(str(exc)), handle.paths.stderr)
    states = job_states_of(plan, manifest.load())
    counts = Counter(states.values())
    sys.stdout.write("jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "\n")
    if report.exists():
        sys.stdout.write(f"report: {report}\n")
    return 1 if failures or any(s not in ("DONE",) for s in states.values()) else 0
