"""Aggregate job on a fabricated grid: results.csv, report.md statistics, failed runs, plots and W&B records."""
import json
import os
import re
import statistics

import pandas as pd
import pytest
import scipy.stats
from PIL import Image

from ecg_core.tracking import read_offline_run
from jobs import aggregate
from jobs.config import AggregateConfig, TrackingConfig

METHODS = ("byol", "simclr")
PROTOCOLS = ("finetune", "linear")
FRACTIONS = (0.1, 1.0)
SEEDS = (0, 1)
CLASSES = ("MI", "NORM", "STTC")
ENCODER = "xresnet1d50"
TASK = "superdiag"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def wandb_env(offline_wandb):
    """Every test here runs with offline W&B (tests/conftest.py)."""


def auroc(method, protocol, fraction, seed):
    """A distinct, plausible AUROC per run."""
    base = {"byol": 0.80, "simclr": 0.78}[method] + (0.05 if protocol == "finetune" else 0.0)
    return round(base + 0.06 * fraction + 0.013 * seed - 0.004 * (seed * fraction), 6)


def cell_of(method):
    return f"{method}-{ENCODER}"


def stage_of(protocol, fraction, seed):
    return f"{'finetune' if protocol == 'finetune' else 'linear_eval'}-f{fraction:g}-s{seed}"


def write_yaml(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make_grid(root):
    """A grid directory like the planner and the jobs leave it; returns (grid_dir, expected, missing_run)."""
    grid_dir = root / "demo"
    expected = []
    for method in METHODS:
        pretrain_dir = grid_dir / cell_of(method) / "pretrain"
        write_yaml(pretrain_dir / "config.yaml", f"method:\n  name: {method}\nencoder:\n  name: {ENCODER}\n")
        for protocol in PROTOCOLS:
            for fraction in FRACTIONS:
                for seed in SEEDS:
                    run_dir = grid_dir / cell_of(method) / stage_of(protocol, fraction, seed)
                    expected.append(os.path.relpath(run_dir, grid_dir))
                    value = auroc(method, protocol, fraction, seed)
                    result = {
                        "grid": "demo", "cell_id": cell_of(method), "method": method, "encoder": ENCODER,
                        "protocol": protocol, "task": TASK, "label_fraction": fraction, "seed": seed,
                        "macro_auroc": value,
                        "per_class_auroc": {c: round(value - 0.01 * i, 6) for i, c in enumerate(CLASSES)},
                        "excluded_classes": ["HYP"] if fraction == 0.1 else [],
                        "n_train": int(800 * fraction), "n_val": 100, "n_test": 100, "checkpoint_step": 40,
                        "pretrain_run_id": f"demo-{method}-pretrain", "pretrain_dir": str(pretrain_dir),
                        "val_macro_auroc": value - 0.01, "wall_s": 12.5,
                    }
                    run_dir.mkdir(parents=True)
                    (run_dir / "result.json").write_text(json.dumps(result))
    # expected but failed: a third seed of byol finetune at fraction 1, with a submitit log
    missing = grid_dir / cell_of("byol") / stage_of("finetune", 1.0, 2)
    write_yaml(missing / "config.yaml", f"protocol: finetune\ntask: {TASK}\nlabel_fraction: 1.0\nseed: 2\n"
                                        f"pretrain_dir: {grid_dir / cell_of('byol') / 'pretrain'}\n")
    old_log, err_log = missing / "submitit" / "41_0_log.out", missing / "submitit" / "41_0_log.err"
    for i, log in enumerate((old_log, err_log)):
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("Traceback ...\nRuntimeError: out of memory\n")
        os.utime(log, (1_000_000 + i, 1_000_000 + i))
    wandb_log = missing / "wandb" / "debug.log"             # W&B's own log is newer but not the job's
    write_yaml(wandb_log, "wandb internals\n")
    expected.append(os.path.relpath(missing, grid_dir))
    return grid_dir, expected, missing, err_log


def table_row(report, method, protocol):
    """Cells of the summary-table row of (method, protocol)."""
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:3] == [method, ENCODER, protocol]:
            return cells[3:]
    raise AssertionError(f"no summary row for {method}/{protocol}")


def test_aggregate_report_csv_plots_and_wandb(tmp_path, capsys):
    grid_dir, expected, missing, err_log = make_grid(tmp_path / "runs")
    report_dir = grid_dir / "report"
    cfg = AggregateConfig(grid="demo", grid_dir=str(grid_dir), expected=expected,
                          tracking=TrackingConfig(run_id="demo-aggregate"))
    aggregate.run(cfg, report_dir)
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(report_dir / "report.md")

    # results.csv: one row per evaluation run, the failed one included
    results = pd.read_csv(report_dir / "results.csv")
    assert list(results.columns) == aggregate.COLUMNS
    assert len(results) == len(METHODS) * len(PROTOCOLS) * len(FRACTIONS) * len(SEEDS) + 1
    failed = results[results["state"] == "failed"]
    assert len(failed) == 1
    row = failed.iloc[0]
    assert row["run_dir"] == str(missing) and row["log"] == str(err_log) and row["reason"] == "no result.json"
    assert (row["method"], row["encoder"], row["protocol"], row["seed"]) == ("byol", ENCODER, "finetune", 2)
    ok = results[results["state"] == "ok"].set_index(["method", "protocol", "label_fraction", "seed"])
    assert ok.loc[("simclr", "linear", 0.1, 1), "macro_auroc"] == pytest.approx(auroc("simclr", "linear", 0.1, 1))
    assert ok.loc[("byol", "finetune", 1.0, 0), "n_train"] == 800

    # report.md: mean ± sample std over seeds, n seeds, per (method, protocol, fraction)
    report = (report_dir / "report.md").read_text()
    for method in METHODS:
        for protocol in PROTOCOLS:
            cells = table_row(report, method, protocol)
            for fraction, cell in zip(FRACTIONS, cells):
                values = [auroc(method, protocol, fraction, seed) for seed in SEEDS]
                text = f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} (n={len(values)}"
                assert cell.startswith(text), (method, protocol, fraction, cell)
    assert "(n=2, 1 failed; 95 % CI " in table_row(report, "byol", "finetune")[1]
    # the 95 % t-interval of the mean over seeds
    values = [auroc("simclr", "linear", FRACTIONS[0], seed) for seed in SEEDS]
    half = scipy.stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    ci = f"95 % CI {statistics.mean(values) - half:.3f}–{statistics.mean(values) + half:.3f}"
    assert ci in table_row(report, "simclr", "linear")[0]
    assert "## Failed runs (1)" in report
    failed_line = next(line for line in report.splitlines() if "byol-xresnet1d50/finetune-f1-s2" in line)
    assert str(err_log) in failed_line and "no result.json" in failed_line
    per_class = re.search(r"### Per-class test AUROC, task `superdiag`, label fraction 1 .*?\n\n(.*?)\n\n",
                          report, re.S).group(1)
    norm = next(line for line in per_class.splitlines() if line.startswith("| NORM |"))
    expected_norm = statistics.mean(auroc("simclr", "linear", 1.0, s) - 0.01 for s in SEEDS)
    header = [c.strip() for c in per_class.splitlines()[0].strip("|").split("|")]
    assert norm.strip("|").split("|")[header.index("simclr/linear")].strip() == f"{expected_norm:.3f}"
    assert "`HYP` (8 of 16 runs)" in report
    assert "auroc_vs_fraction_superdiag.png" in report

    # plots: valid PNG images
    png = report_dir / "auroc_vs_fraction_superdiag.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    with Image.open(png) as image:
        image.verify()
    assert sorted(p.name for p in report_dir.glob("*.png")) == [png.name]

    # W&B summary run: results table, summary table, plot
    run = read_offline_run(report_dir)
    assert (run.group, run.job_type, run.run_id) == ("demo", "aggregate", "demo-aggregate")
    logged = run.table("results")
    assert len(logged) == len(results) and set(logged["state"]) == {"ok", "failed"}
    assert logged.loc[logged["state"] == "failed", "run_dir"].tolist() == [str(missing)]
    summary_table = run.table("summary")
    assert summary_table["n"].sum() == 16 and summary_table["n_failed"].sum() == 1
    assert run.summary["auroc_vs_fraction/superdiag"]["_type"] == "image-file"
    assert run.media_file(run.summary["auroc_vs_fraction/superdiag"]).read_bytes()[:8] == PNG_MAGIC
    assert run.summary["runs_failed"] == 1 and run.config["grid"] == "demo"

    # idempotent: a second run rewrites the same files
    before = {name: (report_dir / name).read_bytes() for name in ("report.md", "results.csv", "per_class_auroc.csv")}
    aggregate.run(cfg, report_dir)
    assert {name: (report_dir / name).read_bytes() for name in before} == before


def test_malformed_results_become_failed_rows(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    grid_dir = tmp_path / "grid"
    good = {"method": "simclr", "protocol": "linear", "task": "rhythm", "label_fraction": 0.5, "seed": 0,
            "macro_auroc": 0.9}
    cases = {
        "not-json": "{oops",
        "missing-key": json.dumps({k: v for k, v in good.items() if k != "macro_auroc"}),
        "bad-auroc": json.dumps({**good, "macro_auroc": 1.7}),
        "bad-type": json.dumps({**good, "seed": "zero"}),
        "good": json.dumps(good),
    }
    for name, text in cases.items():
        write_yaml(grid_dir / name / "linear_eval" / "result.json", text)
    write_yaml(grid_dir / "cell" / "pretrain" / "result.json", json.dumps({"final_step": 10}))  # not an eval
    stale = grid_dir / "report" / "auroc_vs_fraction_oldtask.png"
    write_yaml(stale, "old")

    aggregate.run(AggregateConfig(grid="g", grid_dir=str(grid_dir)), grid_dir / "report")
    results = pd.read_csv(grid_dir / "report" / "results.csv").set_index("cell_id")
    assert sorted(results.index) == sorted(cases)
    assert results.loc["good", "state"] == "ok"
    reasons = results["reason"].fillna("")
    assert reasons["not-json"].startswith("malformed result.json: not JSON")
    assert reasons["missing-key"] == "malformed result.json: required key 'macro_auroc' is missing or null"
    assert "AUROC in [0, 1]" in reasons["bad-auroc"] and "'seed' should be int" in reasons["bad-type"]
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("aggregate: ")]
    assert len(errors) == 4 and all("result.json: malformed result.json" in line for line in errors)
    assert any(str(grid_dir / "bad-auroc" / "linear_eval" / "result.json") in line for line in errors)
    assert not stale.exists() and (grid_dir / "report" / "auroc_vs_fraction_rhythm.png").is_file()
    assert "## Failed runs (4)" in (grid_dir / "report" / "report.md").read_text()


def test_report_sections_baselines_paired_tests_robustness_compute_leakage(tmp_path):
    """Every section of the report on a grid like the demo's: a method and the random-init baseline, each with
    predictions (the method clearly better), compute records, a leakage check and a robustness run."""
    import numpy as np

    from ecg_core.scoring import Predictions, headline_metrics, write_predictions

    rng = np.random.default_rng(0)
    grid_dir = tmp_path / "demo"
    y_val, y_test = (rng.random((80, 3)) < 0.4).astype(np.float32), (rng.random((150, 3)) < 0.4).astype(np.float32)
    expected, robustness = [], []
    for method, signal in (("simclr", 2.5), ("random_init", 0.3)):
        pretrain_dir = grid_dir / cell_of(method) / "pretrain"
        write_yaml(pretrain_dir / "config.yaml", f"method:\n  name: {method}\nencoder:\n  name: {ENCODER}\n")
        (pretrain_dir / "compute.json").write_text(json.dumps({
            "attempts": [{"wall_s": 36.0}, {"wall_s": 36.0}], "cpu_hours": 0.04, "device": "cpu", "world_size": 2,
            "samples_seen": 6400, "samples_per_s": 88.9, "wall_s": 72.0, "encoder_parameters": 294880}))
        if method == "simclr":
            (pretrain_dir / "leakage.json").write_text(json.dumps({"guard": True, "exclude": {}, "checks": [{
                "eval_store": "/data/ptbxl.zarr", "excluded_records": 10, "summary": "10 evaluation records found"}]}))
        for protocol in PROTOCOLS:
            for seed in SEEDS:
                run_dir = grid_dir / cell_of(method) / stage_of(protocol, 1.0, seed)
                expected.append(str(run_dir))

                def probs(y):
                    return 1 / (1 + np.exp(-(rng.normal(size=y.shape) + signal * (2 * y - 1))))

                pred = Predictions(classes=list(CLASSES), val_ids=np.array([f"v{i}" for i in range(80)]), y_val=y_val,
                                   val_scores=probs(y_val), test_ids=np.array([f"t{i}" for i in range(150)]),
                                   y_test=y_test, test_scores=probs(y_test))
                run_dir.mkdir(parents=True)
                write_predictions(run_dir, pred)
                metrics = headline_metrics(pred)
                result = {"method": method, "encoder": ENCODER, "protocol": protocol, "task": TASK,
                          "label_fraction": 1.0, "seed": seed, "pretrain_dir": str(pretrain_dir), "wall_s": 30.0,
                          **{k: v for k, v in metrics.items() if k != "bootstrap_valid"}}
                (run_dir / "result.json").write_text(json.dumps(result))
                if protocol == "linear":
                    rob = grid_dir / cell_of(method) / f"robustness-{run_dir.name}"
                    rob.mkdir()
                    robustness.append(str(rob))
                    (rob / "robustness.json").write_text(json.dumps({
                        "eval_dir": str(run_dir), "protocol": "linear", "task": TASK, "label_fraction": 1.0,
                        "seed": seed, "clean_macro_auroc": metrics["macro_auroc"],
                        "macro_auroc": {"lead_dropout": {"0": metrics["macro_auroc"], "1": 0.7, "5": 0.55}}}))
    robustness.append(str(grid_dir / cell_of("simclr") / "robustness-never-ran"))
    aggregate.run(AggregateConfig(grid="demo", grid_dir=str(grid_dir), expected=expected, robustness=robustness,
                                  tracking=TrackingConfig(mode="disabled")), grid_dir / "report")
    report = (grid_dir / "report" / "report.md").read_text()
    for section in (f"## Task `{TASK}`", f"### All metrics, task `{TASK}`", f"### Baselines, task `{TASK}`",
                    f"### Paired bootstrap tests, task `{TASK}`", f"### Corruption robustness, task `{TASK}`",
                    "## Compute", "## Leakage guard", "## Failed runs (1)", "## Pretraining runs"):
        assert section in report, section
    # baselines named as such; the method beats them, significantly, in the paired test
    assert table_row(report, "random_init", "linear")
    assert "| random init | xresnet1d50 | linear |" in report and "| supervised from scratch |" in report
    paired = report.split("### Paired bootstrap tests")[1].split("###")[0]
    simclr_row = next(line for line in paired.splitlines() if line.startswith("| simclr |"))
    assert re.search(r"\| \+0\.\d+\* \|", simclr_row), simclr_row
    # robustness: clean and mean over severities per corruption; the missing run is a failed row
    rob = pd.read_csv(grid_dir / "report" / "robustness.csv")
    assert set(rob["state"]) == {"ok", "failed"} and (rob["severity"].dropna().astype(int).isin([0, 1, 5])).all()
    rob_section = report.split("### Corruption robustness")[1]
    assert "| simclr | linear |" in rob_section and "0.625" in rob_section   # mean of 0.7 and 0.55
    assert (grid_dir / "report" / f"robustness_{TASK}.png").read_bytes()[:8] == PNG_MAGIC
    # compute and leakage
    compute = pd.read_csv(grid_dir / "report" / "compute.csv")
    assert set(compute["method"]) == {"simclr", "random_init"} and (compute["samples_seen"] == 6400).all()
    assert (compute["attempts"] == 2).all() and (compute["eval_runs"] == 4).all()
    assert "| simclr | /data/ptbxl.zarr | 10 | 10 evaluation records found |" in report
    results = pd.read_csv(grid_dir / "report" / "results.csv")
    assert set(results["baseline"].fillna("")) == {"", "random init", "supervised from scratch"}
    assert (results["macro_auroc_ci_low"] <= results["macro_auroc"]).all()
    assert (results["macro_auroc"] <= results["macro_auroc_ci_high"]).all()
