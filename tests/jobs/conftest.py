"""Fixtures of the evaluation-job tests: a tiny "pretrained" encoder checkpoint and eval configs on the demo store."""
from pathlib import Path

import pytest
import torch
from torch import nn

from ecg_core import distributed as D
from ecg_core.checkpoint import Checkpointer
from ecg_core.config import save_config, to_yaml
from ecg_core.encoders import build_encoder
from jobs.config import EncoderConfig, EvalConfig, MethodConfig, PretrainConfig, TrackingConfig

PRETRAIN_STEP = 5
PRETRAIN_RUN_ID = "pretrain-tiny-0"
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class _Method(nn.Module):
    """What a pretraining job checkpoints, reduced to the part evaluation reads: ``encoder``."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.projector = nn.Linear(encoder.out_dim, 8)   # ignored by evaluation (not under ``encoder.``)


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Path:
    """A pretraining run directory: ``config.yaml`` and one DCP checkpoint of a tiny xresnet1d50 (random
    weights; the demo's classes are separable enough for a linear probe on them)."""
    run_dir = tmp_path_factory.mktemp("pretrain")
    cfg = PretrainConfig(method=MethodConfig(name="simclr"),
                         encoder=EncoderConfig(name="xresnet1d50", params={"base_width": 4}),
                         tracking=TrackingConfig(run_id=PRETRAIN_RUN_ID))
    save_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(0)
    method = _Method(build_encoder(cfg.encoder))
    with pytest.MonkeyPatch.context() as mp:
        for name in DIST_ENV:
            mp.delenv(name, raising=False)
        D.init_distributed(prefer_cuda=False)
        try:
            Checkpointer(run_dir).save(PRETRAIN_STEP, method, None, {"step": PRETRAIN_STEP}, {}, to_yaml(cfg))
        finally:
            D.teardown()
    return run_dir


@pytest.fixture
def eval_cfg(demo_store: Path, pretrained: Path):
    """``eval_cfg(**overrides)``: a tiny EvalConfig on the demo store (windows of 500 samples, no W&B)."""
    def make(**overrides) -> EvalConfig:
        values = dict(pretrain_dir=str(pretrained), store=str(demo_store), task="labels", window=500,
                      test_stride=250, batch_size=256, linear_epochs=30, finetune_steps=6, checkpoint_every=2,
                      tracking=TrackingConfig(mode="disabled", group="demo-grid", name="cell-a"))
        values.update(overrides)
        return EvalConfig(**values)
    return make
