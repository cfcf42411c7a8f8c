"""Tracker: metrics.jsonl, summary.json and an offline W&B run read back with read_offline_run."""
import json

import numpy as np
import pandas as pd
import pytest

from ecg_core import tracking
from ecg_core.tracking import (
    Tracker, TrackingWarning, iter_wandb_records, read_metrics, read_offline_run,
)
from jobs.config import TrackingConfig


@pytest.fixture(autouse=True)
def wandb_env(offline_wandb):
    """Every test here runs with offline W&B (tests/conftest.py)."""


def tracking_cfg(run_id="run0001", **kw):
    return TrackingConfig(project="ecg-ssl-test", group="grid-a", name="cell-7", job_type="pretrain",
                          run_id=run_id, tags=["unit"], **kw)


def steps_of(run_dir):
    return [r["step"] for r in read_metrics(run_dir)]


def test_offline_run_reads_back_config_history_summary_and_table(tmp_path):
    run_dir = tmp_path / "grid-a" / "cell-7" / "pretrain"
    config = {"steps": 3, "optim": {"lr": 0.1, "betas": [0.9, 0.99]}}
    frame = pd.DataFrame({"method": ["simclr", "byol"], "auroc": [0.81, 0.84]})
    with Tracker(tracking_cfg(), run_dir, config) as tracker:
        for step in (1, 2, 3):
            tracker.log({"loss": np.float32(1.0 / step), "lr": 0.1 * step}, step=step)
        tracker.summary({"final_step": 3})
        tracker.summary({"samples_per_s": 12.5})
        tracker.log_table("results", frame)
        assert tracker.url is None                      # offline: no URL

    lines = read_metrics(run_dir)
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert lines[1]["loss"] == pytest.approx(0.5) and lines[2]["lr"] == pytest.approx(0.3)
    assert all(isinstance(r["time"], float) for r in lines)
    assert json.loads((run_dir / "summary.json").read_text()) == {"final_step": 3, "samples_per_s": 12.5}

    run = read_offline_run(run_dir)
    assert (run.run_id, run.group, run.name, run.job_type) == ("run0001", "grid-a", "cell-7", "pretrain")
    assert run.project == "ecg-ssl-test" and run.tags == ["unit"]
    assert run.config == config
    assert [row["_step"] for row in run.history] == [1, 2, 3]
    assert [row["loss"] for row in run.history] == pytest.approx([1.0, 0.5, 1 / 3])
    assert run.summary["final_step"] == 3 and run.summary["samples_per_s"] == 12.5
    assert run.summary["loss"] == pytest.approx(1 / 3)
    pd.testing.assert_frame_equal(run.table("results"), frame)
    assert run.exit_code == 0 and not run.preempting
    # every entry point reaches the same run
    folder = run.folders[0]
    assert read_offline_run(folder).history == run.history
    assert read_offline_run(run_dir / "wandb").config == config
    assert read_offline_run(folder / "run-run0001.wandb").summary == run.summary


def test_resume_drops_repeated_steps_and_continues_history(tmp_path):
    run_dir = tmp_path / "run"
    first = Tracker(tracking_cfg(), run_dir, {"a": 1})
    for step in range(1, 6):
        first.log({"loss": float(step)}, step=step)
    first.mark_preempting()
    first.finish(exit_code=143)
    first.finish(exit_code=0)                           # idempotent: the run keeps 143

    # requeued: resumes from the checkpoint of step 3 and repeats steps 4 and 5
    second = Tracker(tracking_cfg(), run_dir, {"a": 1}, resume_step=3)
    assert steps_of(run_dir) == [1, 2, 3]
    for step in range(4, 7):
        second.log({"loss": 10.0 * step}, step=step)
    second.finish()

    lines = read_metrics(run_dir)
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in lines] == [1.0, 2.0, 3.0, 40.0, 50.0, 60.0]
    run = read_offline_run(run_dir)
    assert len(run.folders) == 2 and run.preempting and run.exit_code == 0
    assert [row["_step"] for row in run.history] == [1, 2, 3, 4, 5, 6]
    assert [row["loss"] for row in run.history] == [1.0, 2.0, 3.0, 40.0, 50.0, 60.0]
    assert run.summary["loss"] == 60.0


def test_rewind_after_construction_and_append_repairs_a_cut_line(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    killed = '{"step": 1, "time": 1.0, "loss": 1.0}\n{"step": 2, "time": 2.0, "loss": 2.0}\n{"step": 3, "ti'
    (run_dir / "metrics.jsonl").write_text(killed)
    with Tracker(tracking_cfg(), run_dir, {}) as tracker:      # no resume_step: append, minus the cut line
        assert steps_of(run_dir) == [1, 2]
        tracker.log({"loss": 3.5}, step=3)
        tracker.rewind(1)                                      # as the training loop does after a resume
        tracker.log({"loss": 2.5}, step=2)
    assert [(r["step"], r["loss"]) for r in read_metrics(run_dir)] == [(1, 1.0), (2, 2.5)]


def test_disabled_mode_writes_only_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = tmp_path / "run"
    with Tracker(tracking_cfg(mode="offline"), run_dir, {"a": 1}) as tracker:
        tracker.log({"loss": 1.0}, step=1)
        tracker.summary({"done": True})
        tracker.log_table("t", pd.DataFrame({"x": [1]}))
        assert tracker.url is None
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.jsonl", "summary.json"]


def test_non_zero_rank_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    tracker = Tracker(tracking_cfg(), run_dir, {"a": 1}, enabled=False, resume_step=4)
    tracker.log({"loss": 1.0}, step=1)
    tracker.summary({"x": 1})
    tracker.log_table("t", pd.DataFrame({"x": [1]}))
    tracker.log_image("i", tmp_path / "missing.png")
    tracker.mark_preempting()
    tracker.finish()
    assert tracker.url is None
    assert not run_dir.exists()


def test_wandb_failure_warns_once_and_keeps_metrics(tmp_path, monkeypatch):
    import wandb

    def unreachable(**_kwargs):
        raise wandb.errors.CommError("network is unreachable")

    monkeypatch.setattr(wandb, "init", unreachable)
    run_dir = tmp_path / "run"
    with pytest.warns(TrackingWarning, match="W&B init failed.*network is unreachable") as caught:
        with Tracker(tracking_cfg(mode="online"), run_dir, {}) as tracker:
            tracker.log({"loss": 1.0}, step=1)
            tracker.summary({"ok": 1})
    assert len(caught) == 1
    assert steps_of(run_dir) == [1]


def test_misuse_raises_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    tracker = Tracker(tracking_cfg(), tmp_path / "run", {})
    with pytest.raises(ValueError, match="reserved"):
        tracker.log({"step": 1}, step=1)
    with pytest.raises(ValueError, match="non-negative int"):
        tracker.log({"loss": 1.0}, step=1.5)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        tracker.log_image("i", tmp_path / "missing.png")
    tracker.finish()
    with pytest.raises(RuntimeError, match="finished"):
        tracker.log({"loss": 1.0}, step=2)


def test_exception_in_context_finishes_with_exit_code_1_and_large_records_span_blocks(tmp_path):
    run_dir = tmp_path / "run"
    blob = "ecg" * 30000                                        # a 90 kB config value: FIRST, MIDDLE, LAST chunks
    with pytest.raises(KeyError):
        with Tracker(tracking_cfg(run_id="big"), run_dir, {"blob": blob}) as tracker:
            tracker.log({"loss": 1.0}, step=1)
            raise KeyError("boom")
    run = read_offline_run(run_dir)
    assert run.config["blob"] == blob and run.exit_code == 1

    log = run.folders[0] / "run-big.wandb"
    data = log.read_bytes()
    assert len(data) > 2 * tracking._BLOCK_SIZE
    records = list(iter_wandb_records(log))
    assert any(blob.encode() in record for record in records)

    cut = tmp_path / "cut" / "run-big.wandb"                   # a killed writer: the tail is lost quietly
    cut.parent.mkdir()
    cut.write_bytes(data[: tracking._BLOCK_SIZE + 100])
    assert 0 < len(list(iter_wandb_records(cut))) < len(records)

    flipped = bytearray(data)
    flipped[200] ^= 0xFF
    cut.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum mismatch"):
        list(iter_wandb_records(cut))
    cut.write_bytes(b"not a wandb file")
    with pytest.raises(ValueError, match="not a .wandb transaction log"):
        list(iter_wandb_records(cut))


def test_reader_needs_run_id_when_several_runs_share_a_directory(tmp_path):
    run_dir = tmp_path / "run"
    for run_id in ("one", "two"):
        with Tracker(tracking_cfg(run_id=run_id), run_dir, {"id": run_id}) as tracker:
            tracker.log({"loss": 1.0}, step=1)
    with pytest.raises(ValueError, match="several W&B runs"):
        read_offline_run(run_dir)
    assert read_offline_run(run_dir, run_id="two").config == {"id": "two"}
    with pytest.raises(FileNotFoundError, match="'three'"):
        read_offline_run(run_dir, run_id="three")
