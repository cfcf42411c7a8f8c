"""Launcher benchmarks: dry-run time of a 10,000-cell grid, sbatch calls per grid, requeue-to-resume time.

    python bench/launcher.py                 # dry-run timing + planned sbatch calls (no cluster needed)
    python bench/launcher.py --slurm         # also: real sbatch calls counted through a PATH shim, and the
                                             # time from `scontrol requeue` to the first new training step
                                             # (needs the CI SLURM: sudo bash tests/slurm/slurm-up.sh)

Targets (issue "The spine"): dry run of 10,000 cells < 2 s; one sbatch call per stage array, not one per
job; requeue to first new step within checkpoint interval + 30 s. Timings on these shared machines vary;
every repeat is printed, and the baseline (a trivial launch.py --help in the same run) is printed with
them so that ratios, not absolute seconds, carry the comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def big_grid(path: Path, n_lr: int = 100, n_seed: int = 100) -> Path:
    lrs = ", ".join(f"{1e-4 * (i + 1):.6g}" for i in range(n_lr))
    seeds = ", ".join(str(i) for i in range(n_seed))
    path.write_text(f"""name: big
recipes: [experiments/simclr.yaml]
dataset: demo
overrides: {{steps: 100, encoder.params.base_width: 8}}
axes:
  optim.lr: [{lrs}]
  seed: [{seeds}]
evaluation:
  protocols: [linear, finetune]
  label_fractions: [0.1, 1.0]
  seeds: [0]
  tasks: [labels]
""")
    return path


def timed(cmd: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr}")
    return times


def dry_run_benchmark(store: str, repeats: int) -> None:
    from launcher.cli import _array_count
    from launcher.grid import load_grid
    from launcher.plan import make_plan
    from launcher.profiles import load_profile

    with tempfile.TemporaryDirectory() as tmp:
        grid_file = big_grid(Path(tmp) / "big.yaml")
        overrides = [f"dataset={store}"]
        start = time.perf_counter()
        grid = load_grid(grid_file, overrides)
        t_expand = time.perf_counter() - start
        plan = make_plan(grid, load_profile("local"), runs_root=Path(tmp) / "runs", store_tasks={store: ["labels"]})
        t_plan = time.perf_counter() - start - t_expand
        print(f"in-process: expand+validate {len(grid.cells):,} cells {t_expand:.2f} s, plan {len(plan.jobs):,} jobs "
              f"{t_plan:.2f} s")
        base = timed([sys.executable, "launch.py", "--help"], repeats)
        torch_import = timed([sys.executable, "-c", "import torch"], repeats)
        print(f"python -c 'import torch' (validating methods/encoders needs torch): "
              f"{', '.join(f'{t:.2f}' for t in torch_import)} (median {statistics.median(torch_import):.2f} s)")
        dry = timed([sys.executable, "launch.py", "--grid", str(grid_file), "--cluster", "local", "--dry-run",
                     "--runs-root", str(Path(tmp) / "runs"), *overrides], repeats)
        print(f"launch.py --dry-run, {len(grid.cells):,} cells / {len(plan.jobs):,} jobs, wall s per repeat: "
              f"{', '.join(f'{t:.2f}' for t in dry)} (median {statistics.median(dry):.2f} s; target < 2 s)")
        ratio = statistics.median(dry) / statistics.median(base)
        print(f"baseline launch.py --help: {', '.join(f'{t:.2f}' for t in base)} (median "
              f"{statistics.median(base):.2f} s); dry run / baseline = {ratio:.2f}")
        plan = make_plan(grid, load_profile("slurm_ci"), runs_root=Path(tmp) / "runs", store_tasks={store: ["labels"]})
        arrays = _array_count(plan, plan.jobs)
        print(f"sbatch calls planned for that grid: {arrays:,} for {len(plan.jobs):,} jobs "
              f"on SLURM ({len(plan.jobs) / arrays:.0f} jobs per call: one pretraining array, one aftercorr array per "
              f"evaluation setting, one aggregate)")
    demo = make_plan(load_grid(ROOT / "grids/demo.yaml", [f"dataset={store}"]), load_profile("slurm_ci"),
                     runs_root=Path("/tmp/x"), store_tasks={store: ["labels"]})
    print(f"grids/demo.yaml: {len(demo.jobs)} jobs in {_array_count(demo, demo.jobs)} sbatch calls")


def slurm_benchmark(store: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shim_dir = Path(tmp) / "bin"
        shim_dir.mkdir()
        count_file = Path(tmp) / "sbatch_calls"
        real = subprocess.run(["bash", "-lc", "command -v sbatch"], capture_output=True, text=True).stdout.strip()
        (shim_dir / "sbatch").write_text(f"#!/bin/sh\necho call >> {count_file}\nexec {real} \"$@\"\n")
        (shim_dir / "sbatch").chmod(0o755)
        env = dict(os.environ, PATH=f"{shim_dir}:{os.environ['PATH']}")
        runs = Path(tmp) / "runs"
        cmd = [sys.executable, "launch.py", "--grid", "grids/demo.yaml", "--cluster", "slurm_ci", "--runs-root",
               str(runs), f"dataset={store}", "steps=20", "evaluation.seeds=[0]"]
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
        calls = len(count_file.read_text().splitlines())
        jobs = json.loads((runs / "demo" / "manifest.json").read_text())["jobs"]
        print(f"SLURM: grids/demo.yaml (1 seed) submitted {len(jobs)} jobs with {calls} sbatch calls")
        subprocess.run(["scancel", "-u", os.environ.get("USER", "root")], check=False)

        # requeue -> first new step
        cmd = [sys.executable, "launch.py", "--grid", "grids/smoke.yaml", "--cluster", "slurm_ci", "--runs-root",
               str(runs), f"dataset={store}", "evaluation.enabled=false", "steps=400", "checkpoint_every=20",
               "log_every=1", "name=requeue"]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        manifest = json.loads((runs / "requeue" / "manifest.json").read_text())["jobs"]
        key, entry = next(iter(manifest.items()))
        metrics = Path(entry["run_dir"]) / "metrics.jsonl"

        def last() -> int:
            try:
                return max(json.loads(x)["step"] for x in metrics.read_text().splitlines() if x.strip())
            except (OSError, ValueError):
                return -1
        while last() < 30:
            time.sleep(0.2)
        requeued_at = time.time()
        subprocess.run(["scontrol", "requeue", entry["job_id"]], check=True)
        # The old attempt may log a few more steps until SLURM kills it; the new attempt starts again at its
        # checkpoint (a multiple of 20), below the highest step logged before: that line marks the resume.
        highest, resumed_at = -1, None
        while resumed_at is None and time.time() - requeued_at < 300:
            time.sleep(0.2)
            try:
                rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
            except (OSError, ValueError):
                continue
            for row in rows:
                if row["time"] > requeued_at and row["step"] <= highest - 1 and row["step"] % 20 == 1:
                    resumed_at = row["time"]
                highest = max(highest, row["step"])
        if resumed_at is None:
            raise SystemExit("the requeued job did not resume within 300 s")
        print(f"SLURM: scontrol requeue -> first new training step logged after {resumed_at - requeued_at:.1f} s "
              f"(checkpoint interval 20 steps; target interval + 30 s)")
        subprocess.run(["scancel", entry["job_id"]], check=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slurm", action="store_true", help="also measure sbatch calls and requeue time on SLURM")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--store", default=str(ROOT / "build/demo/demo.zarr"), help="a store (default: the demo's)")
    args = p.parse_args()
    if not Path(args.store).exists():
        raise SystemExit(f"{args.store}: no store; run `make demo` first or pass --store")
    dry_run_benchmark(args.store, args.repeats)
    if args.slurm:
        slurm_benchmark(args.store)


if __name__ == "__main__":
    main()
