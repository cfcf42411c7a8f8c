"""``launch.py`` end to end with the local executor (no SLURM): the smoke grid's whole DAG as local processes
(2-rank gloo/FSDP2 pretraining, linear probe, finetune, aggregate), relaunch, status, dry run, retry, errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from launcher.grid import load_grid
from launcher.plan import make_plan
from launcher.profiles import load_profile

ROOT = Path(__file__).resolve().parents[2]


def launch(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch.py", "--cluster", "local", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def smoke_run(demo_store, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    args = ["--grid", "grids/smoke.yaml", "--runs-root", str(runs), f"dataset={demo_store}"]
    result = launch(*args)
    plan = make_plan(load_grid(ROOT / "grids/smoke.yaml", [f"dataset={demo_store}"]), load_profile("local"),
                     runs_root=runs)
    return {"args": args, "result": result, "plan": plan, "runs": runs}


def test_local_smoke_grid_runs_every_stage(smoke_run):
    result, plan = smoke_run["result"], smoke_run["plan"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "report:" in result.stdout
    for job in plan.jobs:
        assert (job.run_dir / "DONE").exists(), job.key
    pre = plan.jobs[0]
    assert json.loads((pre.run_dir / "DONE").read_text())["world_size"] == 2
    compute = json.loads((pre.run_dir / "compute.json").read_text())
    assert compute["world_size"] == 2 and compute["encoder_parameters"] > 0
    steps = [json.loads(line)["step"] for line in (pre.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    results = pd.read_csv(plan.grid_dir / "report" / "results.csv")
    assert sorted(results["protocol"]) == ["finetune", "linear"]
    assert results["macro_auroc"].between(0, 1).all()
    for job in [j for j in plan.jobs if j.kind in ("linear_eval", "finetune")]:
        result_json = json.loads((job.run_dir / "result.json").read_text())
        assert result_json["cell_id"] == pre.cell_id and result_json["checkpoint_step"] == 6
    # the robustness job re-scored the linear probe: clean = the probe's own test number
    rob = next(j for j in plan.jobs if j.kind == "robustness")
    linear = json.loads((plan.job(rob.depends_on[0]).run_dir / "result.json").read_text())
    rob_json = json.loads((rob.run_dir / "robustness.json").read_text())
    assert rob_json["clean_macro_auroc"] == pytest.approx(linear["macro_auroc"], abs=1e-12)
    assert list(rob_json["macro_auroc"]) == ["lead_dropout"]
    report = (plan.grid_dir / "report" / "report.md").read_text()
    assert "### Corruption robustness, task `labels`" in report and "## Compute" in report


def test_relaunch_submits_nothing_and_status_shows_done(smoke_run):
    before = json.loads((smoke_run["plan"].grid_dir / "manifest.json").read_text())["jobs"]
    again = launch(*smoke_run["args"])
    assert again.returncode == 0, again.stderr
    assert "0 to submit" in again.stderr
    assert json.loads((smoke_run["plan"].grid_dir / "manifest.json").read_text())["jobs"] == before
    status = launch(*smoke_run["args"][:4], "--status", smoke_run["args"][4])
    assert status.returncode == 0 and "total: 5 DONE" in status.stdout, status.stdout


def test_dry_run_lists_every_job_and_submits_nothing(demo_store, tmp_path):
    result = launch("--grid", "grids/demo.yaml", "--runs-root", str(tmp_path), f"dataset={demo_store}", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.split() and line.split()[0] in
             ("pretrain", "linear_eval", "finetune", "robustness", "aggregate")]
    assert len(lines) == 97
    assert ("total: 97 jobs (16 pretrain, 32 linear_eval, 16 robustness, 32 finetune, 1 aggregate) in 16 cells"
            in result.stdout)
    assert "parameters" in result.stdout
    assert not (tmp_path / "demo" / "manifest.json").exists()
    assert not any((tmp_path / "demo").rglob("config.yaml"))


def test_invalid_input_is_one_line_naming_file_and_key(tmp_path, demo_store):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "grids/smoke.yaml").read_text().replace("steps: 6", "stepz: 6"))
    result = launch("--grid", str(bad), "--dry-run", f"dataset={demo_store}")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(bad) in result.stderr and "stepz" in result.stderr
    missing = launch("--grid", "grids/smoke.yaml", "--dry-run", f"dataset={tmp_path}/nothing.zarr")
    assert missing.returncode == 2 and "nothing.zarr" in missing.stderr and "dataset" in missing.stderr
    profile = launch("--grid", "grids/smoke.yaml", "--dry-run", "--cluster", "nosuch")
    assert profile.returncode == 2 and "nosuch" in profile.stderr


def test_failed_job_blocks_dependents_and_retry_completes(demo_store, tmp_path):
    args = ["--grid", "grids/smoke.yaml", "--runs-root", str(tmp_path), f"dataset={demo_store}",
            "resources.pretrain.tasks_per_node=1", "evaluation.protocols=[linear]",
            "evaluation.robustness.enabled=false"]
    plan = make_plan(load_grid(ROOT / "grids/smoke.yaml", args[4:]), load_profile("local"), runs_root=tmp_path)
    damaged = plan.jobs[0].run_dir / "checkpoints" / "step_0000002"
    damaged.mkdir(parents=True)
    (damaged / "COMPLETE").write_text("not json")
    first = launch(*args)
    assert first.returncode == 1
    assert "FAILED" in first.stderr and "none can be loaded" in first.stderr
    status = launch(*args[:4], "--status", *args[4:])
    assert "FAILED" in status.stdout and "SKIPPED" in status.stdout
    report = pd.read_csv(plan.grid_dir / "report" / "results.csv")
    assert len(report) == 1 and report["macro_auroc"].isna().all()   # the failed evaluation is listed
    shutil.rmtree(plan.jobs[0].run_dir / "checkpoints")
    retry = launch(*args[:4], "--retry-failed", *args[4:])
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert all((job.run_dir / "DONE").exists() for job in plan.jobs)
    report = pd.read_csv(plan.grid_dir / "report" / "results.csv")
    assert report["macro_auroc"].between(0, 1).all()


def test_demo_grid_runs_every_method_and_its_report_has_every_section(demo_store, tmp_path):
    """The whole demo DAG (every method, baselines, robustness, report) as local processes, each job cut to
    a step or an epoch: what `make demo` runs, minus the training time."""
    args = ["--grid", "grids/demo.yaml", "--runs-root", str(tmp_path), f"dataset={demo_store}", "steps=2",
            "checkpoint_every=2", "log_every=1", "evaluation.linear.linear_epochs=2",
            "evaluation.finetune.finetune_steps=2", "evaluation.finetune.checkpoint_every=2",
            "evaluation.robustness.corruptions=[lead_dropout,powerline_50]", "evaluation.robustness.severities=[3]",
            "tracking.mode=disabled"]
    result = launch(*args, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    grid = load_grid(ROOT / "grids/demo.yaml", args[4:])
    plan = make_plan(grid, load_profile("local"), runs_root=tmp_path)
    assert all((job.run_dir / "DONE").exists() for job in plan.jobs)
    report = (plan.grid_dir / "report" / "report.md").read_text()
    for section in ("## Task `labels`", "### All metrics, task `labels`", "### Baselines, task `labels`",
                    "### Paired bootstrap tests, task `labels`", "### Corruption robustness, task `labels`",
                    "## Compute", "## Leakage guard", "## Failed runs (0)", "## Pretraining runs",
                    "### Per-class test AUROC, task `labels`"):
        assert section in report, section
    results = pd.read_csv(plan.grid_dir / "report" / "results.csv")
    assert set(results["method"]) == {c.method for c in grid.cells} and (results["state"] == "ok").all()
    assert {"random init", "supervised from scratch"} <= set(results["baseline"].dropna())
    assert (plan.grid_dir / "report" / "auroc_vs_fraction_labels.png").is_file()
    assert (plan.grid_dir / "report" / "robustness_labels.png").is_file()
