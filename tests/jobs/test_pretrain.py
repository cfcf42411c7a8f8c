"""The pretraining job through the runner, as a scheduler starts it: 1 rank in-process and 2 gloo ranks as
separate processes (FSDP2), exact resume (4 straight steps == 2 + resume + 2), W&B offline records read back."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ecg_core.checkpoint import Checkpointer, export_full_state_dict
from ecg_core.config import load_config, save_config
from ecg_core.data.config import StoreSource
from ecg_core.tracking import read_offline_run
from jobs.config import PretrainConfig
from launcher.runner import JobRunner

from ..ecg_core.dist_utils import run_pretrain_ranks

ROOT = Path(__file__).resolve().parents[2]
TINY = ["encoder.params.base_width=4", "data.window=500", "data.batch_size=4", "data.block_len=65536",
        "optim.schedule=constant", "optim.warmup_steps=0", "checkpoint_every=2", "log_every=1",
        "deterministic=true", "tracking.mode=offline", "tracking.group=tests", "tracking.job_type=pretrain"]


def write_config(run_dir: Path, store: Path, steps: int, run_id: str) -> PretrainConfig:
    cfg = load_config(PretrainConfig, [ROOT / "experiments/simclr.yaml"],
                      TINY + [f"steps={steps}", f"tracking.run_id={run_id}", f"tracking.name={run_dir.name}"])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, stores=[StoreSource(path=str(store), folds=[1, 2, 3, 4, 5, 6, 7, 8])]))
    save_config(cfg, run_dir / "config.yaml")
    return cfg


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return export_full_state_dict(Checkpointer(run_dir).latest())


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")


def test_one_rank_in_process_resume_is_exact_and_logged(demo_store, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    write_config(straight, demo_store, 4, "straight1")
    assert JobRunner("pretrain")(str(straight))["kind"] == "pretrain"
    write_config(resumed, demo_store, 2, "resumed1")
    JobRunner("pretrain")(str(resumed))
    (resumed / "DONE").unlink()                      # continue the same run for 2 more steps
    write_config(resumed, demo_store, 4, "resumed1")
    JobRunner("pretrain")(str(resumed))
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    compute = json.loads((resumed / "compute.json").read_text())
    assert [x["resumed_from"] for x in compute["attempts"]] == [None, 2]
    assert compute["world_size"] == 1 and compute["encoder_parameters"] > 0
    run = read_offline_run(resumed)
    assert run.group == "tests" and run.job_type == "pretrain" and run.run_id == "resumed1"
    assert [row["_step"] if "_step" in row else row.get("step") for row in run.history][-4:] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in run.history)
    assert run.config["method"]["name"] == "simclr"
    # a finished run returns at once without touching anything
    mtime = (resumed / "metrics.jsonl").stat().st_mtime
    JobRunner("pretrain")(str(resumed))
    assert (resumed / "metrics.jsonl").stat().st_mtime == mtime


def test_two_gloo_ranks_fsdp2_resume_is_exact(demo_store, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    write_config(straight, demo_store, 4, "straight2")
    run_pretrain_ranks(straight, wandb_mode="offline")
    write_config(resumed, demo_store, 2, "resumed2")
    run_pretrain_ranks(resumed, wandb_mode="offline")
    (resumed / "DONE").unlink()
    write_config(resumed, demo_store, 4, "resumed2")
    run_pretrain_ranks(resumed, wandb_mode="offline")
    assert json.loads((resumed / "DONE").read_text())["world_size"] == 2
    a, b = final_weights(straight), final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
