"""launcher.submit with the local executor (real processes, no SLURM): arrays, dependencies, 2-rank gloo."""
import os
import sys
import time

import cloudpickle
import pytest

from ecg_core.config import ConfigError
from launcher.profiles import load_profile
from launcher.submit import DependencyFailedError, export_distributed_env, make_executor, submit_array

# Job functions travel to the job processes by value: this test module is imported by pytest under a
# name that a job process (another working directory, another sys.path) need not be able to import.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def add(a, b):
    return a + b


def fail(message):
    raise ValueError(message)


def write_after(path, delay_s):
    time.sleep(delay_s)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("done")
    return "parent"


def record_span(path, delay_s):
    """Write this job's (start, end) wall-clock times to ``path``."""
    start = time.time()
    time.sleep(delay_s)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"{start} {time.time()}")


def read_file(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def gloo_all_reduce():
    """One task of a multi-task job: rank + 1 summed over all ranks with gloo."""
    import torch
    import torch.distributed as dist

    from launcher.submit import export_distributed_env as export

    assert export(), "not inside a submitit job"
    dist.init_process_group("gloo")
    try:
        value = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(value)
        return {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": value.item(),
                "local_rank": int(os.environ["LOCAL_RANK"])}
    finally:
        dist.destroy_process_group()


@pytest.fixture
def local_profile():
    return load_profile("local", ["time_min=5", "signal_delay_s=10"])


def test_two_job_array_returns_results(local_profile, tmp_path):
    executor = make_executor(local_profile, tmp_path / "%j")
    jobs = submit_array(executor, add, [(1, 2), (30, 4)])
    assert [job.result() for job in jobs] == [3, 34]
    assert len({job.job_id for job in jobs}) == 2


def test_empty_array_submits_nothing(local_profile, tmp_path):
    assert submit_array(make_executor(local_profile, tmp_path / "%j"), add, []) == []
    assert not any((tmp_path).glob("*/*.pkl"))


def test_two_tasks_form_a_gloo_world_of_two(local_profile, tmp_path):
    started = time.monotonic()
    executor = make_executor(local_profile, tmp_path / "%j", tasks_per_node=2)
    [job] = submit_array(executor, gloo_all_reduce, [()])
    results = sorted(job.results(), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1]
    assert [r["local_rank"] for r in results] == [0, 1]
    assert all(r["world"] == 2 and r["sum"] == 3.0 for r in results)
    assert time.monotonic() - started < 60


def test_local_dependency_waits_for_parent(local_profile, tmp_path):
    executor = make_executor(local_profile, tmp_path / "%j")
    marker = tmp_path / "parent.txt"
    [parent] = submit_array(executor, write_after, [(str(marker), 1.0)])
    children = submit_array(executor, read_file, [(str(marker),), (str(marker),)], after=[parent])
    assert [child.result() for child in children] == ["done", "done"]


def test_local_failed_parent_submits_no_dependents(local_profile, tmp_path):
    executor = make_executor(local_profile, tmp_path / "%j")
    [parent] = submit_array(executor, fail, [("parent broke",)])
    with pytest.raises(DependencyFailedError, match="parent broke"):
        submit_array(executor, add, [(1, 1)], after=[parent])
    with pytest.raises(TypeError, match="bare job id"):
        submit_array(executor, add, [(1, 1)], after=["12345"])


def test_stage_resources_are_validated(local_profile, tmp_path):
    with pytest.raises(ConfigError, match=r"^stage resources: tasks_per_node: must be at least 1"):
        make_executor(local_profile, tmp_path, tasks_per_node=0)
    with pytest.raises(ConfigError, match=r"^stage resources: signal_delay_s: must be shorter than time_min"):
        make_executor(local_profile, tmp_path, time_min=1, signal_delay_s=60)


def test_slurm_profile_without_sbatch_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    with pytest.raises(RuntimeError, match="sbatch/srun are not on PATH"):
        make_executor(load_profile("slurm_ci"), tmp_path / "%j")


def test_export_distributed_env_outside_a_job_changes_nothing(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "SLURM_JOB_ID", "SUBMITIT_EXECUTOR", "SUBMITIT_LOCAL_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    assert export_distributed_env() is False
    assert dict(os.environ) == before


def test_local_jobs_never_use_more_cpus_than_allowed(local_profile, tmp_path, monkeypatch):
    monkeypatch.setenv("ECG_SSL_LOCAL_CPUS", "2")
    executor = make_executor(local_profile, tmp_path / "%j", cpus_per_task=1)
    paths = [tmp_path / f"span{i}.txt" for i in range(5)]
    jobs = submit_array(executor, record_span, [(str(p), 1.5) for p in paths])
    for job in jobs:
        job.result()
    spans = [tuple(map(float, p.read_text().split())) for p in paths]
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running, most = 0, 0
    for _, change in events:
        running += change
        most = max(most, running)
    assert most == 2   # two at a time: never three, but not one after the other either
    big = make_executor(local_profile, tmp_path / "%j", cpus_per_task=3)   # more than allowed: runs alone
    assert [job.result() for job in submit_array(big, add, [(1, 1), (2, 2)])] == [2, 4]
    monkeypatch.setenv("ECG_SSL_LOCAL_CPUS", "zero")
    with pytest.raises(ValueError, match="ECG_SSL_LOCAL_CPUS must be a positive integer"):
        submit_array(executor, add, [(1, 1)])
