"""The whole product path through the real ``launch.py`` and ``sbatch`` on the CI SLURM (tests/slurm/slurm-up.sh).

- grids/smoke.yaml: 2-rank gloo/FSDP2 pretraining -> chained evaluations that start only after it
  succeeded -> aggregate report; relaunching submits nothing;
- preemption: a running pretraining job requeued by ``scontrol requeue`` and by submitit's interrupt (USR2)
  resumes from its checkpoints and ends with weights bit-identical to an uninterrupted run;
- a job that fails is shown FAILED with its log, its dependents do not run, ``--retry-failed`` completes it;
- sbatch refusing a submission midway keeps what was submitted; a second launch completes the grid.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from launcher.grid import load_grid
from launcher.plan import make_plan
from launcher.profiles import load_profile

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[2]


def launch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "launch.py", "--cluster", "slurm_ci", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout, check=False)
    return result


def plan_of(grid_args: list[str], runs: Path):
    grid_file = grid_args[grid_args.index("--grid") + 1]
    overrides = [a for a in grid_args if "=" in a and not a.startswith("--")]
    return make_plan(load_grid(ROOT / grid_file, overrides), load_profile("slurm_ci"), runs_root=runs)


def manifest(runs: Path, grid: str) -> dict:
    return json.loads((runs / grid / "manifest.json").read_text())["jobs"]


def wait_for(path: Path, timeout_s: float, what: str, poll=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if poll is not None:
            poll()
        if time.monotonic() > deadline:
            queue = subprocess.run(["squeue", "-h", "-o", "%i %T %j %r"], capture_output=True, text=True).stdout
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what} ({path}); squeue:\n{queue}")
        time.sleep(1.0)


def sacct_times(job_id: str) -> tuple[str, str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "Start,End"], capture_output=True,
                         text=True, check=True).stdout.split()
    start, end = out[0].split("|")
    return start, end


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return -1
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=-1)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from ecg_core.checkpoint import Checkpointer, export_full_state_dict

    return export_full_state_dict(Checkpointer(run_dir).latest())


@pytest.fixture(scope="module")
def store(demo_store):
    return str(demo_store)


def test_smoke_grid_chains_evaluations_after_pretraining_and_reports(slurm_profile, store, tmp_path):
    args = ["--grid", "grids/smoke.yaml", "--runs-root", str(tmp_path), f"dataset={store}"]
    first = launch(*args)
    assert first.returncode == 0, first.stderr
    plan = plan_of(args, tmp_path)
    report = plan.grid_dir / "report"
    wait_for(report / "DONE", 400, "the aggregate job")

    jobs = manifest(tmp_path, "smoke")
    assert set(jobs) == {job.key for job in plan.jobs}
    for job in plan.jobs:
        assert (job.run_dir / "DONE").exists(), job.key
    pre = next(j for j in plan.jobs if j.kind == "pretrain")
    assert json.loads((pre.run_dir / "DONE").read_text())["world_size"] == 2
    # SLURM's own record: every evaluation started after the pretraining ended
    _, pre_end = sacct_times(jobs[pre.key]["job_id"])
    for job in plan.jobs:
        if job.kind in ("linear_eval", "finetune"):
            start, _ = sacct_times(jobs[job.key]["job_id"])
            assert start >= pre_end, (job.key, start, pre_end)
        if job.kind == "robustness":   # after the evaluation it re-scores
            start, _ = sacct_times(jobs[job.key]["job_id"])
            assert start >= sacct_times(jobs[job.depends_on[0]]["job_id"])[1], job.key
    results = pd.read_csv(report / "results.csv")
    assert sorted(results["protocol"]) == ["finetune", "linear"]
    assert results["macro_auroc"].between(0, 1).all()
    assert (report / "report.md").read_text().count("linear") >= 1

    status = launch(*args[:-1], "--status", args[-1])
    assert status.returncode == 0, status.stderr
    assert "total: 5 DONE" in status.stdout, status.stdout

    again = launch(*args)
    assert again.returncode == 0, again.stderr
    assert "0 to submit" in again.stderr + again.stdout
    assert manifest(tmp_path, "smoke") == jobs   # nothing resubmitted, nothing changed


def test_requeued_and_interrupted_pretraining_resumes_bit_exactly(slurm_profile, store, tmp_path):
    common = ["--grid", "grids/smoke.yaml", "--runs-root", str(tmp_path), f"dataset={store}",
              "evaluation.enabled=false", "steps=400", "checkpoint_every=25", "log_every=1"]
    ref_args = common + ["name=reference"]
    run_args = common + ["name=preempted"]
    for args in (ref_args, run_args):
        result = launch(*args)
        assert result.returncode == 0, result.stderr
    ref_dir = plan_of(ref_args, tmp_path).jobs[0].run_dir
    run_dir = plan_of(run_args, tmp_path).jobs[0].run_dir
    job_id = manifest(tmp_path, "preempted")[plan_of(run_args, tmp_path).jobs[0].key]["job_id"]

    deadline = time.monotonic() + 240
    while last_step(run_dir) < 40:
        assert time.monotonic() < deadline and not (run_dir / "DONE").exists(), "pretraining never reached step 40"
        time.sleep(0.5)
    requeued_at = time.time()
    subprocess.run(["scontrol", "requeue", job_id], check=True)       # SIGTERM, KILL, back to the queue

    deadline = time.monotonic() + 240
    while last_step(run_dir) < 120:
        assert time.monotonic() < deadline, "the resumed job stalled"
        time.sleep(0.5)
    import submitit
    submitit.SlurmJob(folder=tmp_path, job_id=job_id)._interrupt()     # SIGTERM then USR2, as on preemption
    wait_for(run_dir / "DONE", 400, "the interrupted pretraining")
    wait_for(ref_dir / "DONE", 400, "the reference pretraining")

    attempts = json.loads((run_dir / "compute.json").read_text())["attempts"]
    # the SIGKILLed attempt leaves no record; the USR2 one stops at a step boundary after saving, and the last
    # attempt resumes exactly there
    assert len(attempts) == 2, attempts
    stopped, final = attempts
    assert stopped["resumed_from"] % 25 == 0 and stopped["resumed_from"] >= 25, attempts
    assert stopped["stopped_at"] >= 120 and final["resumed_from"] == stopped["stopped_at"], attempts
    assert final["steps_to"] == 400, attempts
    # metrics.jsonl was rewound at each resume: the first step after the requeue is logged exactly once
    rows = {row["step"]: row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    assert sorted(rows) == list(range(1, 401))
    first_new_step_s = rows[stopped["resumed_from"] + 1]["time"] - requeued_at
    a, b = final_weights(ref_dir), final_weights(run_dir)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    print(f"requeue -> resumed past step 45 in {first_new_step_s:.1f} s; attempts: {attempts}")


def test_failed_job_is_reported_its_dependents_do_not_run_and_retry_completes(slurm_profile, store, tmp_path):
    args = ["--grid", "grids/smoke.yaml", "--runs-root", str(tmp_path), f"dataset={store}", "name=retry"]
    plan = plan_of(args, tmp_path)
    pre = plan.jobs[0]
    damaged = pre.run_dir / "checkpoints" / "step_0000002"
    damaged.mkdir(parents=True)
    (damaged / "COMPLETE").write_text("not json")   # a checkpoint exists but cannot be loaded: the job fails
    assert launch(*args).returncode == 0
    wait_for(plan.grid_dir / "report" / "DONE", 300, "the aggregate job after the failure")

    status = launch(*args[:-1], "--status", args[-1])
    lines = {line.split()[0]: line for line in status.stdout.splitlines() if line.strip()}
    assert "FAILED" in lines["pretrain"] and "log:" in lines["pretrain"], status.stdout
    log_path = Path(lines["pretrain"].split("log: ")[1].split()[0])
    assert "none can be loaded" in log_path.read_text()
    for job in plan.jobs[1:-1]:
        assert not (job.run_dir / "DONE").exists() and not (job.run_dir / "result.json").exists()
    failed_report = pd.read_csv(plan.grid_dir / "report" / "results.csv")
    assert len(failed_report) == 2 and failed_report["macro_auroc"].isna().all()

    import shutil
    shutil.rmtree(pre.run_dir / "checkpoints")
    retry = launch(*args[:-1], "--retry-failed", args[-1])
    assert retry.returncode == 0, retry.stderr
    deadline = time.monotonic() + 400
    while not all((job.run_dir / "DONE").exists() for job in plan.jobs):
        assert time.monotonic() < deadline, launch(*args[:-1], "--status", args[-1]).stdout
        time.sleep(1.0)
    results = pd.read_csv(plan.grid_dir / "report" / "results.csv")
    assert results["macro_auroc"].between(0, 1).all() and len(results) == 2


def test_sbatch_refusing_midway_keeps_submitted_jobs_and_relaunch_completes(slurm_profile, store, tmp_path):
    base = ["--grid", "grids/smoke.yaml", "--runs-root", str(tmp_path), f"dataset={store}", "name=midway"]
    bad = launch(*base, "resources.finetune.gpus_per_node=1")   # this node has no GPU: sbatch refuses
    assert bad.returncode == 1
    assert "sbatch" in bad.stderr and "finetune" in bad.stderr, bad.stderr
    first = manifest(tmp_path, "midway")
    kinds = sorted(entry["kind"] for entry in first.values() if entry.get("job_id"))
    assert kinds == ["linear_eval", "pretrain"], first
    good = launch(*base)
    assert good.returncode == 0, good.stderr
    second = manifest(tmp_path, "midway")
    for key, entry in first.items():
        if entry.get("job_id"):
            assert second[key]["job_id"] == entry["job_id"] and second[key]["attempt"] == 1
    assert sorted(e["kind"] for e in second.values() if e.get("job_id")) == \
        ["aggregate", "finetune", "linear_eval", "pretrain", "robustness"]
    plan = plan_of(base, tmp_path)
    wait_for(plan.grid_dir / "report" / "DONE", 400, "the completed grid")
    assert all((job.run_dir / "DONE").exists() for job in plan.jobs)
