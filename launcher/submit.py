"""The one seam between the project and submitit (no other module imports submitit).

- :func:`make_executor` turns a validated :class:`~launcher.profiles.ClusterProfile` (plus a grid stage's
  resource overrides) into a submitit executor: SLURM sbatch jobs, or local processes for the ``local``
  profile.
- :func:`submit_array` submits one stage's jobs as ONE SLURM job array (one ``sbatch`` call), optionally
  held until other jobs succeed (``--dependency=afterok:...``). Every SLURM job is submitted with
  ``--kill-on-invalid-dep=yes``: when a parent fails, SLURM cancels its dependents at once instead of
  leaving them pending forever (with ``DependencyNeverSatisfied``), so ``job.result()`` raises instead of
  blocking and the status shows CANCELLED.
- :func:`job_states` / :func:`job_state` / :func:`cancel`: SLURM states (through sacct, as submitit reads
  them) and cancellation by job id, for ``--status`` and ``--cancel``.
- :func:`export_distributed_env`: inside a job, publish the torch.distributed rendezvous variables
  (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``) from
  the submitit/SLURM environment, so that ``ecg_core.distributed`` reads only torch's standard variables.

The local executor has no scheduler and therefore no dependencies: :func:`submit_array` with ``after``
waits for those jobs in the submitting process, and raises :class:`DependencyFailedError` (submitting
nothing) if one of them failed, which is what SLURM's kill-on-invalid-dep does on a cluster.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import submitit
from submitit.slurm.slurm import SlurmInfoWatcher

from launcher.profiles import ClusterProfile

__all__ = [
    "DependencyFailedError",
    "Executor",
    "FailedJobError",
    "Job",
    "UncompletedJobError",
    "Checkpointable",
    "cancel",
    "error_line",
    "export_distributed_env",
    "job_id_in_job",
    "local_job_alive",
    "job_state",
    "job_states",
    "make_executor",
    "submit_array",
]

Executor = submitit.AutoExecutor
Job = submitit.Job
FailedJobError = submitit.core.utils.FailedJobError
"""Raised by ``job.result()`` when the job's function raised (or the job process died)."""
UncompletedJobError = submitit.core.utils.UncompletedJobError
"""Raised by ``job.result()`` when the job ended without a result, e.g. CANCELLED or TIMEOUT."""
JobRef = Union[str, "submitit.Job[Any]"]

KILL_ON_INVALID_DEP = {"kill-on-invalid-dep": "yes"}
"""sbatch option added to every SLURM job: dependents of a failed job are cancelled, not left pending."""

FAILED_STATES = frozenset({
    "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
})
"""Final SLURM states of a job that did not succeed (a requeued job is PENDING/REQUEUED, not one of these)."""


class DependencyFailedError(RuntimeError):
    """A job this submission depends on has failed: the dependents were not submitted."""


def make_executor(
    profile: ClusterProfile,
    folder: str | os.PathLike[str],
    *,
    job_name: str = "ecg_ssl",
    nodes: Optional[int] = None,
    tasks_per_node: Optional[int] = None,
    gpus_per_node: Optional[int] = None,
    cpus_per_task: Optional[int] = None,
    mem_gb: Optional[float] = None,
    time_min: Optional[int] = None,
    signal_delay_s: Optional[int] = None,
) -> submitit.AutoExecutor:
    """A submitit executor for ``profile``, with a stage's resources replacing the profile's.

    Args:
        profile: a validated cluster profile (:func:`launcher.profiles.load_profile`).
        folder: where submitit writes job scripts, pickles and logs; may contain ``%j`` (the job id).
            On SLURM it must be on a filesystem the compute nodes see.
        job_name: SLURM job name (shown by squeue).
        nodes ... signal_delay_s: the stage's resources; ``None`` keeps the profile's value.

    Raises:
        ConfigError: an invalid resource value (source ``stage resources``).
        RuntimeError: a SLURM profile on a machine without ``sbatch``/``srun``.
    """
    p = profile.with_resources(
        nodes=nodes, tasks_per_node=tasks_per_node, gpus_per_node=gpus_per_node, cpus_per_task=cpus_per_task,
        mem_gb=mem_gb, time_min=time_min, signal_delay_s=signal_delay_s,
    )
    cluster = "slurm" if p.is_slurm else "local"
    if p.is_slurm and (shutil.which("sbatch") is None or shutil.which("srun") is None):
        raise RuntimeError(f"cluster profile {p.name!r} submits to SLURM, but sbatch/srun are not on PATH "
                           "(use --cluster local to run here)")
    executor = submitit.AutoExecutor(
        folder=Path(folder), cluster=cluster, **{f"{cluster}_max_num_timeout": p.max_num_timeout}
    )
    params: dict[str, Any] = {
        "name": job_name,
        "timeout_min": p.time_min,
        "nodes": p.nodes,
        "tasks_per_node": p.tasks_per_node,
        "cpus_per_task": p.cpus_per_task,
        f"{cluster}_setup": list(p.setup),
    }
    if p.gpus_per_node:  # `--gpus-per-node=0` is refused by clusters without GPUs: leave it out
        params["gpus_per_node"] = p.gpus_per_node
    if p.mem_gb is not None:
        params["mem_gb"] = p.mem_gb
    if p.is_slurm:
        optional = {"partition": p.partition, "account": p.account, "qos": p.qos, "constraint": p.constraint}
        params.update({f"slurm_{key}": value for key, value in optional.items() if value is not None})
        params["slurm_signal_delay_s"] = p.signal_delay_s
        params["slurm_array_parallelism"] = p.max_array_parallelism
        params["slurm_additional_parameters"] = {**KILL_ON_INVALID_DEP, **p.slurm_extra}
    executor.update_parameters(**params)
    return executor


def submit_array(
    executor: submitit.AutoExecutor,
    fn: Callable[..., Any],
    args_list: Sequence[Sequence[Any]],
    *,
    after: Sequence[JobRef] = (),
    dependency: str = "afterok",
) -> list[submitit.Job[Any]]:
    """Submit ``fn(*args)`` for each ``args`` in ``args_list`` as one job array; return one Job each.

    On SLURM this is one ``sbatch --array`` call (a single job is submitted as a plain job), held with
    ``--dependency=afterok:<ids>`` until every job in ``after`` (Jobs or job ids such as ``"123"`` or
    ``"123_4"``) has succeeded; if one fails later, SLURM cancels the whole array (kill-on-invalid-dep).
    The states of ``after`` are read first (sacct), because SLURM treats a dependency on a job it no
    longer remembers (ended more than MinJobAge ago) as satisfied, whether that job succeeded or not:
    jobs that already COMPLETED are left out of the dependency, and one that already failed raises.
    With the local executor, ``after`` must hold Job objects: they are waited for here first.

    ``dependency="afterany"`` holds the array until every job in ``after`` has ended, whatever its state
    (the aggregate job, which reports failed evaluations as failed); nothing is refused then.
    ``dependency="aftercorr"``: ``after`` holds the tasks ``0..n-1`` of one job array, in order, one per job
    of this array: task *i* here starts when task *i* there succeeded (and is cancelled if it failed).
    The local executor waits for all of them first, as for ``afterok``.

    Raises:
        DependencyFailedError: a job in ``after`` already failed (nothing was submitted).
        FailedJobError: sbatch refused the submission (its message is kept).
    """
    if dependency not in ("afterok", "afterany", "aftercorr"):
        raise ValueError(f"dependency must be afterok, afterany or aftercorr, got {dependency!r}")
    if not args_list:
        return []
    if executor.cluster == "local":
        _wait_for_local(after, strict=dependency != "afterany")
        return _submit_batch(executor, fn, args_list)
    if not after:
        return _submit_batch(executor, fn, args_list)
    if dependency == "aftercorr":
        return _submit_with_dependency(executor, fn, args_list, "aftercorr", [_array_of(after, len(args_list))])
    states = job_states(_job_id(ref) for ref in after)
    if dependency == "afterany":
        return _submit_with_dependency(executor, fn, args_list, "afterany", [
            job_id for job_id, state in states.items() if state not in FAILED_STATES and state != "COMPLETED"])
    failed = {job_id: state for job_id, state in states.items() if state in FAILED_STATES}
    if failed:
        listed = ", ".join(f"{job_id} ({state})" for job_id, state in failed.items())
        raise DependencyFailedError(f"job(s) {listed} did not succeed: their dependents were not submitted")
    waiting = [job_id for job_id, state in states.items() if state != "COMPLETED"]
    return _submit_with_dependency(executor, fn, args_list, "afterok", waiting)


def _submit_with_dependency(executor: submitit.AutoExecutor, fn: Callable[..., Any],
                            args_list: Sequence[Sequence[Any]], kind: str,
                            waiting: list[str]) -> list[submitit.Job[Any]]:
    if not waiting:
        return _submit_batch(executor, fn, args_list)
    executor.update_parameters(slurm_dependency=f"{kind}:" + ":".join(waiting))
    try:
        return _submit_batch(executor, fn, args_list)
    finally:
        executor.parameters.pop("dependency", None)  # the executor may be reused for unrelated jobs


def job_states(job_ids: Iterable[str]) -> dict[str, str]:
    """SLURM state of each job id (``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``, ``CANCELLED``,
    ``TIMEOUT``, ``OUT_OF_MEMORY``, ... or ``UNKNOWN``), in one sacct call (squeue for jobs sacct does not
    list yet: slurmdbd hears of a job a moment after slurmctld). Array tasks are ``<array id>_<index>``."""
    ids = [str(job_id) for job_id in job_ids]
    if not ids:
        return {}
    watcher = SlurmInfoWatcher()
    for job_id in ids:
        watcher.register_job(job_id)
    if shutil.which("sacct") is not None:
        watcher.update()
    states = {job_id: _first_word(watcher.get_state(job_id, mode="cache")) for job_id in ids}
    unknown = [job_id for job_id, state in states.items() if state == "UNKNOWN"]
    if unknown and shutil.which("squeue") is not None:
        states.update(_squeue_states(unknown))
    return states


def job_state(job_id: str) -> str:
    """SLURM state of one job (see :func:`job_states`)."""
    return job_states([job_id])[str(job_id)]


def cancel(jobs: Iterable[JobRef]) -> None:
    """Cancel jobs: Job objects through submitit (local or SLURM), bare SLURM job ids with one scancel."""
    ids: list[str] = []
    for ref in jobs:
        if isinstance(ref, submitit.Job):
            ref.cancel(check=False)
        else:
            ids.append(str(ref))
    if ids:
        result = subprocess.run(["scancel", *ids], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"scancel {' '.join(ids)} failed: {result.stderr.strip()}")


def export_distributed_env() -> bool:
    """Inside a submitit job (SLURM or local), set torch.distributed's env:// variables for this task.

    ``MASTER_ADDR`` is the job's first node, ``MASTER_PORT`` derived from the job id (or kept if set),
    ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE`` from the task. ``CUDA_VISIBLE_DEVICES`` is
    left alone: the training code picks ``cuda:LOCAL_RANK``. Returns False (and changes nothing) outside
    a submitit job, where torchrun or nothing at all provides the variables, and when ``RANK`` and
    ``WORLD_SIZE`` are already set (torchrun started inside a SLURM allocation: its ranks win).
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return False
    try:
        submitit.JobEnvironment()
    except RuntimeError:
        return False
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return True


Checkpointable = submitit.helpers.Checkpointable
"""Base class of the job runner: submitit requeues a job whose callable has ``checkpoint``."""


def job_id_in_job() -> Optional[str]:
    """The submitit/SLURM job id of the running job (``<array>_<index>`` for an array task), or None outside one."""
    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:
        return None


def local_job_alive(job_id: str) -> bool:
    """Whether the process of a local-executor job (its job id is the pid) is still running."""
    try:
        pid = int(job_id)
    except ValueError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie (ended, not yet reaped) is not running
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


# ----------------------------------------------------------------------------------------------------


def _submit_batch(executor: submitit.AutoExecutor, fn: Callable[..., Any],
                  args_list: Sequence[Sequence[Any]]) -> list[submitit.Job[Any]]:
    if executor.cluster == "local":
        return [_submit_local(executor, fn, args) for args in args_list]
    with executor.batch():
        jobs = [executor.submit(fn, *args) for args in args_list]
    return jobs


log = logging.getLogger("launch")
_LOCAL_RUNNING: list[tuple[submitit.Job[Any], int]] = []
"""Local jobs started by this process and the CPUs each was given (see :func:`_submit_local`)."""
LOCAL_POLL_S = 0.5


def local_cpus() -> int:
    """CPUs local jobs may use at once: the ``ECG_SSL_LOCAL_CPUS`` variable, else the CPUs of this process."""
    value = os.environ.get("ECG_SSL_LOCAL_CPUS", "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"ECG_SSL_LOCAL_CPUS must be a positive integer, got {value!r}")
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _submit_local(executor: submitit.AutoExecutor, fn: Callable[..., Any], args: Sequence[Any]) -> submitit.Job[Any]:
    """Start one local job once enough CPUs are free: a job costs ``tasks_per_node x cpus_per_task`` of
    :func:`local_cpus` (one bigger than the machine runs alone). Without this, every job of a stage would
    start at once and a laptop would run 16 trainings on 2 cores, each slower than running them in turn."""
    params = executor._executor.parameters   # noqa: SLF001 - submitit keeps the resources there
    capacity = local_cpus()
    cost = min(capacity, int(params.get("tasks_per_node") or 1) * int(params.get("cpus_per_task") or 1))
    while True:
        _LOCAL_RUNNING[:] = [(job, n) for job, n in _LOCAL_RUNNING if not job.done()]
        if not _LOCAL_RUNNING or sum(n for _, n in _LOCAL_RUNNING) + cost <= capacity:
            break
        time.sleep(LOCAL_POLL_S)
    job = executor.submit(fn, *args)
    _LOCAL_RUNNING.append((job, cost))
    log.info("local job %s started: %s", job.job_id, " ".join(map(str, args)))
    return job


def _array_of(after: Sequence[JobRef], n: int) -> str:
    """The array id of ``after`` = tasks 0..n-1 of one array in order (what ``aftercorr`` pairs with)."""
    ids = [_job_id(ref) for ref in after]
    arrays = {job_id.split("_")[0] for job_id in ids}
    expected = [f"{next(iter(arrays))}_{i}" for i in range(n)] if len(arrays) == 1 else []
    if ids != expected:
        raise ValueError(f"aftercorr needs tasks 0..{n - 1} of one job array in order, got {ids[:4]}...")
    return ids[0].split("_")[0]


def _job_id(ref: JobRef) -> str:
    job_id = ref.job_id if isinstance(ref, submitit.Job) else str(ref)
    if not job_id or not job_id.replace("_", "").isdigit():
        raise ValueError(f"not a SLURM job id: {job_id!r}")
    return job_id


def _wait_for_local(after: Sequence[JobRef], strict: bool = True) -> None:
    for ref in after:
        if not isinstance(ref, submitit.Job):
            raise TypeError(f"the local executor can only wait for Job objects, not the bare job id {ref!r}")
        try:
            ref.results()
        except Exception as exc:  # the job's own exception, or submitit's UncompletedJobError
            if strict:
                raise DependencyFailedError(f"job {ref.job_id} failed: its dependents were not submitted: "
                                            f"{error_line(str(exc))}") from exc


def error_line(text: str) -> str:
    """The line of a job's error text that says what went wrong: the last ``SomeError: ...`` line of its
    traceback, else its first line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if ":" in line and (head.endswith(("Error", "Exception", "Interrupt")) or head.endswith("Warning")):
            return line
    return lines[0] if lines else text


def _first_word(state: str) -> str:
    # sacct writes "CANCELLED by 0" for a job cancelled by root
    return state.split()[0] if state.strip() else "UNKNOWN"


def _squeue_states(job_ids: list[str]) -> dict[str, str]:
    # -t all: also jobs that ended within MinJobAge (slurmdbd, and so sacct, learns of them a moment later)
    result = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i %T", "-j", ",".join(job_ids)],
                            capture_output=True, text=True, check=False)
    found = dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip())
    return {job_id: found[job_id].strip() for job_id in job_ids if job_id in found}
