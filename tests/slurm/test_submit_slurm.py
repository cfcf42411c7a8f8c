"""launcher.submit through the real SLURM of tests/slurm/slurm-up.sh: arrays, afterok, kill-on-invalid-dep, 2 ranks.

submitit's job folders live under pytest's tmp_path: the same host runs slurmd, so the jobs see them.
"""
import os
import subprocess
import sys
import time

import cloudpickle
import pytest

from launcher.submit import (
    DependencyFailedError,
    FailedJobError,
    UncompletedJobError,
    cancel,
    job_state,
    job_states,
    make_executor,
    submit_array,
)

pytestmark = pytest.mark.slurm

# Job functions travel by value: a job process need not be able to import this test module by name.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def write_time_after(path, delay_s):
    time.sleep(delay_s)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(repr(time.time()))
    return "parent done"


def report_start(parent_marker, index):
    started = time.time()
    parent_finished = float(open(parent_marker, encoding="utf-8").read()) if os.path.exists(parent_marker) else None
    return {"index": index, "started": started, "parent_finished": parent_finished,
            "array_task": os.environ.get("SLURM_ARRAY_TASK_ID")}


def fail(message):
    raise ValueError(message)


def add(a, b):
    return a + b


def gloo_all_reduce():
    """One task of a 2-task SLURM job: rank + 1 summed over the ranks with gloo."""
    import torch
    import torch.distributed as dist

    from launcher.submit import export_distributed_env

    assert export_distributed_env(), "not inside a submitit job"
    dist.init_process_group("gloo")
    try:
        value = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(value)
        return {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": value.item(),
                "slurm_procid": int(os.environ["SLURM_PROCID"]), "master": os.environ["MASTER_ADDR"]}
    finally:
        dist.destroy_process_group()


def wait_for_states(job_ids, wanted, timeout_s=30.0):
    """Poll until every job is in one of ``wanted``; return the last states seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = job_states(job_ids)
        if all(state in wanted for state in states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def dependencies(array_id):
    """The Dependency= fields of a pending array's job records, as slurmctld holds them."""
    out = subprocess.run(["scontrol", "-o", "show", "job", array_id], capture_output=True, text=True, check=True).stdout
    words = [word for line in out.splitlines() for word in line.split()]
    return [word.partition("=")[2] for word in words if word.startswith("Dependency=")]


def wait_until(condition, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_array_starts_only_after_its_parent_succeeds(slurm_profile, tmp_path):
    marker = tmp_path / "parent.time"
    parent_executor = make_executor(slurm_profile, tmp_path / "%j", job_name="parent")
    [parent] = submit_array(parent_executor, write_time_after, [(str(marker), 4.0)])
    executor = make_executor(slurm_profile, tmp_path / "%j", job_name="children")
    children = submit_array(executor, report_start, [(str(marker), index) for index in range(3)], after=[parent])

    # one sbatch call: one array with 3 tasks, held by the dependency while the parent runs
    array_id = children[0].job_id.split("_")[0]
    assert [child.job_id for child in children] == [f"{array_id}_{index}" for index in range(3)]
    held = dependencies(array_id)  # one record while no task has started
    assert held and set(held) == {f"afterok:{parent.job_id}(unfulfilled)"}, held
    assert set(job_states([c.job_id for c in children]).values()) == {"PENDING"}
    assert marker.exists() is False

    assert parent.result() == "parent done"
    results = [child.result() for child in children]
    parent_finished = float(marker.read_text(encoding="utf-8"))
    assert [r["index"] for r in results] == [0, 1, 2]
    assert [r["array_task"] for r in results] == ["0", "1", "2"]
    for result in results:
        assert result["parent_finished"] == parent_finished
        assert result["started"] > parent_finished
    # a job writes its result just before it ends: its final state may follow a moment later
    states = wait_for_states([parent.job_id] + [c.job_id for c in children], {"COMPLETED"}, timeout_s=10)
    assert set(states.values()) == {"COMPLETED"}, states

    script = next(tmp_path.glob(f"{array_id}/*_submission.sh")).read_text(encoding="utf-8")
    for line in (f"#SBATCH --dependency=afterok:{parent.job_id}", "#SBATCH --array=0-2%3",
                 "#SBATCH --kill-on-invalid-dep=yes", "#SBATCH --partition=debug"):
        assert line in script.splitlines()
    # the executor forgets the dependency once the array is submitted
    assert "dependency" not in executor.parameters

    # a parent that already succeeded is left out of the dependency (SLURM forgets ended jobs after
    # MinJobAge and would then treat any dependency on them as satisfied)
    [late] = submit_array(executor, add, [(2, 2)], after=[parent])
    assert late.result() == 4
    script = next(tmp_path.glob(f"{late.job_id}/*_submission.sh")).read_text(encoding="utf-8")
    assert "--dependency" not in script


def test_failed_parent_cancels_its_dependents(slurm_profile, tmp_path):
    executor = make_executor(slurm_profile, tmp_path / "%j")
    [parent] = submit_array(executor, fail, [("parent broke",)])
    children = submit_array(executor, add, [(1, 2), (3, 4)], after=[parent])
    with pytest.raises(FailedJobError, match="parent broke"):
        parent.result()
    # the job writes its result (here: the exception) just before it ends: SLURM's state follows
    assert wait_for_states([parent.job_id], {"FAILED"}, timeout_s=10)[parent.job_id] == "FAILED"
    # kill-on-invalid-dep: CANCELLED at once, not PENDING (DependencyNeverSatisfied) forever
    states = wait_for_states([c.job_id for c in children], {"CANCELLED"})
    assert set(states.values()) == {"CANCELLED"}, states
    # so submitit sees them finished and result() raises instead of blocking; it first waits 15 s for
    # a result file (Job._results_timeout_s, a grace for slow shared filesystems): check one child only
    assert wait_until(lambda: all(child.done() for child in children))
    with pytest.raises(UncompletedJobError, match="CANCELLED"):
        children[0].result()

    # submitting after jobs that already failed submits nothing
    for failed in ([parent], children):
        with pytest.raises(DependencyFailedError, match="did not succeed"):
            submit_array(executor, add, [(5, 5)], after=failed)


def test_two_task_job_forms_a_gloo_world_of_two(slurm_profile, tmp_path):
    executor = make_executor(slurm_profile, tmp_path / "%j", tasks_per_node=2)
    [job] = submit_array(executor, gloo_all_reduce, [()])
    results = sorted(job.results(), key=lambda r: r["rank"])
    assert [(r["rank"], r["slurm_procid"]) for r in results] == [(0, 0), (1, 1)]
    assert all(r["world"] == 2 and r["sum"] == 3.0 for r in results)
    assert results[0]["master"] == results[1]["master"] == os.uname().nodename.split(".")[0]


def test_job_state_and_cancel_by_id(slurm_profile, tmp_path):
    executor = make_executor(slurm_profile, tmp_path / "%j")
    [job] = submit_array(executor, time.sleep, [(120,)])
    assert wait_until(lambda: job_state(job.job_id) == "RUNNING")
    cancel([job.job_id])
    assert wait_for_states([job.job_id], {"CANCELLED"})[job.job_id] == "CANCELLED"
    assert wait_until(job.done)
    # submitit's job ignores scancel's SIGTERM (it is also the preemption signal): SLURM kills it after
    # KillWait; do not leave the node COMPLETING for the next test
    assert wait_until(lambda: not subprocess.run(["squeue", "-h", "-t", "CG", "-j", job.job_id],
                                                 capture_output=True, text=True, check=False).stdout.strip())
