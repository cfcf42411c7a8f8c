"""DCP checkpoints on real files: exact resume on 2 gloo ranks, resharding, fallback, keep-last-k, guards."""

import json
import os
import shutil

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from ecg_core import distributed as D
from ecg_core.checkpoint import (
    COMPLETE,
    CheckpointError,
    CheckpointFallbackWarning,
    Checkpointer,
    NonFiniteLossError,
    assert_finite,
    export_full_state_dict,
    load_encoder,
    resolve_checkpoint,
)

from .dist_utils import DIST_ENV, ToySampler, build, run_ranks, tiny_model, train_step


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """2 gloo ranks: 4 straight steps, then a fresh model trained 2 steps and saved after steps 1 and 2."""
    root = tmp_path_factory.mktemp("two_rank")
    out, run_dir = root / "out", root / "run"
    out.mkdir()
    run_ranks("reference", 2, {"out": str(out), "run_dir": str(run_dir)})
    return {"out": out, "run_dir": run_dir}


def _max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _flat_optim(osd: dict) -> dict:
    return {f"{fqn}.{name}": v for fqn, state in osd["state"].items() for name, v in state.items()}


# ------------------------------------------------------------------------------------------------
# (a) exact resume on 2 ranks, in new processes
# ------------------------------------------------------------------------------------------------

def test_resume_in_new_processes_is_bitwise_exact(two_rank_run, tmp_path):
    run_ranks("resume", 2, {"out": str(tmp_path), "run_dir": str(two_rank_run["run_dir"])})
    straight = torch.load(two_rank_run["out"] / "straight.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert _max_abs_diff(straight["model"], resumed["model"]) == 0.0     # incl. batch-norm statistics
    assert _max_abs_diff(_flat_optim(straight["optim"]), _flat_optim(resumed["optim"])) == 0.0

    for rank in range(2):
        restored = json.loads((tmp_path / f"restored_rank{rank}.json").read_text())
        saved_sampler = json.loads((two_rank_run["out"] / f"sampler_rank{rank}.json").read_text())
        assert restored["step"] == 2 and restored["world_size"] == 2
        assert restored["train_state"] == {"step": 2, "epoch": 0}
        assert restored["sampler_state"] == saved_sampler
        assert restored["sampler_state"]["rank"] == rank                  # each rank gets its own
        assert restored["config_yaml"] == "method: toy\nseed: 0\n"


def test_checkpoint_layout(two_rank_run):
    ckpt = Checkpointer(two_rank_run["run_dir"])
    assert [p.name for p, problem in ckpt.checkpoints()] == ["step_0000002", "step_0000001"]
    latest = ckpt.latest()
    assert latest == two_rank_run["run_dir"] / "checkpoints" / "step_0000002"
    meta = json.loads((latest / COMPLETE).read_text())
    assert meta["step"] == 2 and meta["world_size"] == 2
    assert {"rank_00000.json", "rank_00001.json", "rank_00000.pt", "rank_00001.pt", "train_state.json",
            "config.yaml", ".metadata"} <= set(meta["files"])
    assert sorted(n for n in meta["files"] if n.endswith(".distcp")) == ["__0_0.distcp", "__1_0.distcp"]


# ------------------------------------------------------------------------------------------------
# (b) a 2-rank checkpoint read by 1 rank, and by a plain module without a process group
# ------------------------------------------------------------------------------------------------

def test_two_rank_checkpoint_loads_into_one_rank(two_rank_run, one_rank_group):
    model, opt, sampler = build(one_rank_group)
    with pytest.warns(RuntimeWarning, match="saved by 2 ranks and is loaded by 1"):
        restored = Checkpointer(two_rank_run["run_dir"]).load(model, opt)
    assert restored["step"] == 2 and restored["world_size"] == 2
    assert restored["sampler_state"]["rank"] == 0
    at_save = torch.load(two_rank_run["out"] / "at_save.pt", weights_only=True)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Parameters, and the buffers of rank 0 (DCP keeps rank 0's copy of unsharded tensors).
    assert _max_abs_diff(full, at_save["model"]) == 0.0
    train_step(model, opt, sampler, 2)          # and it trains on


def test_load_encoder_without_process_group(two_rank_run, monkeypatch):
    for name in DIST_ENV:
        monkeypatch.delenv(name, raising=False)
    assert not torch.distributed.is_initialized()
    at_save = torch.load(two_rank_run["out"] / "at_save.pt", weights_only=True)["model"]

    encoder = tiny_model().encoder                                  # a plain nn.Module
    for source in (two_rank_run["run_dir"], two_rank_run["run_dir"] / "checkpoints" / "step_0000002"):
        assert load_encoder(source, encoder) is encoder
        got = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
        assert _max_abs_diff(got, {k: at_save[k] for k in got}) == 0.0

    assert _max_abs_diff(export_full_state_dict(two_rank_run["run_dir"]), at_save) == 0.0
    assert export_full_state_dict(two_rank_run["run_dir"], "head.").keys() == {"weight", "bias"}


def test_load_encoder_is_strict(two_rank_run):
    run_dir = two_rank_run["run_dir"]
    with pytest.raises(CheckpointError, match=r"lacks 9 of the encoder's 9 tensors.*\['encoder', 'head'\]"):
        load_encoder(run_dir, tiny_model().encoder, prefix="backbone.")
    wrong = nn.Sequential(nn.Conv1d(2, 16, 5))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_encoder(run_dir, wrong)
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        load_encoder(run_dir / "out-of-nowhere", tiny_model().encoder)


# ------------------------------------------------------------------------------------------------
# (c) damaged newest checkpoint -> warning and fallback; all damaged -> CheckpointError
# ------------------------------------------------------------------------------------------------

def _truncate_shard(path):
    shard = path / "__1_0.distcp"
    os.truncate(shard, shard.stat().st_size // 2)


def test_fallback_on_two_ranks(two_rank_run, tmp_path):
    newest_bad, all_bad = tmp_path / "newest_bad", tmp_path / "all_bad"
    for run in (newest_bad, all_bad):
        shutil.copytree(two_rank_run["run_dir"], run)
    _truncate_shard(newest_bad / "checkpoints" / "step_0000002")
    _truncate_shard(all_bad / "checkpoints" / "step_0000002")
    (all_bad / "checkpoints" / "step_0000001" / COMPLETE).unlink()

    run_ranks("fallback", 2, {"out": str(tmp_path), "damaged_newest": str(newest_bad), "all_damaged": str(all_bad)})
    for rank in range(2):
        res = json.loads((tmp_path / f"fallback_rank{rank}.json").read_text())
        assert res["step"] == 1                                           # both ranks took the same one
        if rank == 0:                                                     # one loud line, from rank 0
            assert len(res["warnings"]) == 1
            assert res["warnings"][0].startswith("CheckpointFallbackWarning: resumed from the OLDER checkpoint")
            assert "step_0000002: __1_0.distcp has" in res["warnings"][0]
        else:
            assert res["warnings"] == []
        assert "none can be loaded" in res["error"]
        assert "step_0000002: __1_0.distcp has" in res["error"] and f"step_0000001: no {COMPLETE}" in res["error"]


def _linear_model():
    D.seed_everything(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def _train(model, opt, n=1):
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).mean().backward()
        opt.step()


def _save_steps(ckpt, model, opt, steps):
    """Train one step before each save; returns the model's state at each saved step."""
    states = {}
    for step in steps:
        _train(model, opt)
        ckpt.save(step, model, opt, {"step": step, "epoch": 0}, {"pos": step}, f"step: {step}\n")
        states[step] = {k: v.clone() for k, v in model.state_dict().items()}
    return states


def _garble(path, name):
    data = bytearray((path / name).read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)        # same size, contents destroyed
    (path / name).write_bytes(bytes(data))


DAMAGES = {
    "truncated_distcp": lambda p: _truncate_shard_single(p),
    "garbled_distcp_same_size": lambda p: _garble(p, "__0_0.distcp"),
    "no_complete_marker": lambda p: (p / COMPLETE).unlink(),
    "unreadable_complete": lambda p: (p / COMPLETE).write_text("{not json"),
    "metadata_changed": lambda p: _garble(p, ".metadata"),
    "metadata_missing": lambda p: (p / ".metadata").unlink(),
    "rank_file_missing": lambda p: (p / "rank_00000.json").unlink(),
    "unfinished_save": lambda p: p.rename(p.with_name(p.name + ".tmp-deadbeef")),
}


def _truncate_shard_single(path):
    shard = path / "__0_0.distcp"
    os.truncate(shard, shard.stat().st_size - 10)


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_newest_falls_back_with_warning(one_rank_group, tmp_path, damage):
    model, opt = _linear_model()
    ckpt = Checkpointer(tmp_path, keep=3)
    states = _save_steps(ckpt, model, opt, [1, 2])
    DAMAGES[damage](tmp_path / "checkpoints" / "step_0000002")
    _train(model, opt, 3)                                   # move away from both saved states

    with pytest.warns(CheckpointFallbackWarning, match=r"OLDER checkpoint .*step_0000001.*step_0000002"):
        restored = ckpt.load(model, opt)
    assert restored["step"] == 1 and restored["train_state"] == {"step": 1, "epoch": 0}
    assert restored["sampler_state"] == {"pos": 1} and restored["config_yaml"] == "step: 1\n"
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[1][k]), k
    # latest() checks sizes and the metadata hash, not shard contents: only load() finds garbled bytes.
    assert ckpt.latest().name == ("step_0000002" if damage == "garbled_distcp_same_size" else "step_0000001")


def test_all_damaged_raises_naming_each(one_rank_group, tmp_path):
    model, opt = _linear_model()
    ckpt = Checkpointer(tmp_path)
    _save_steps(ckpt, model, opt, [1, 2])
    (tmp_path / "checkpoints" / "step_0000002" / COMPLETE).unlink()
    _truncate_shard_single(tmp_path / "checkpoints" / "step_0000001")
    with pytest.raises(CheckpointError, match=r"none can be loaded.*step_0000002: no COMPLETE.*step_0000001: "
                                              r"__0_0.distcp has"):
        ckpt.load(model, opt)
    assert ckpt.latest() is None
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path)


def test_no_checkpoint_returns_none(one_rank_group, tmp_path):
    model, opt = _linear_model()
    ckpt = Checkpointer(tmp_path)
    assert ckpt.latest() is None and ckpt.load(model, opt) is None
    (tmp_path / "checkpoints").mkdir()
    assert ckpt.load(model, opt) is None


# ------------------------------------------------------------------------------------------------
# (d) keep-last-k, a crash mid-save, saving a step again
# ------------------------------------------------------------------------------------------------

def _names(tmp_path):
    return sorted(p.name for p in (tmp_path / "checkpoints").iterdir())


def test_keep_last_k_and_crash_mid_save(one_rank_group, tmp_path):
    model, opt = _linear_model()
    ckpt = Checkpointer(tmp_path, keep=2)
    states = _save_steps(ckpt, model, opt, [1, 2, 3, 4])
    assert _names(tmp_path) == ["step_0000003", "step_0000004"]

    # A job killed while saving step 5 leaves a temporary directory with real, partial DCP files.
    crashed = tmp_path / "checkpoints" / "step_0000005.tmp-crashed"
    dcp.save({"model": model.state_dict()}, checkpoint_id=crashed)
    assert ckpt.latest().name == "step_0000004"
    with pytest.warns(CheckpointFallbackWarning, match="step_0000005.tmp-crashed: unfinished save"):
        restored = ckpt.load(model, opt)
    assert restored["step"] == 4
    assert all(torch.equal(v, states[4][k]) for k, v in model.state_dict().items())

    _save_steps(ckpt, model, opt, [5])
    assert _names(tmp_path) == ["step_0000004", "step_0000005"]     # leftover removed, oldest pruned
    assert ckpt.load(model, opt)["step"] == 5                      # no warning now


def test_saving_a_step_again_replaces_it(one_rank_group, tmp_path):
    model, opt = _linear_model()
    ckpt = Checkpointer(tmp_path, keep=1)
    _save_steps(ckpt, model, opt, [1])
    first = (tmp_path / "checkpoints" / "step_0000001" / COMPLETE).read_text()
    states = _save_steps(ckpt, model, opt, [1])
    assert _names(tmp_path) == ["step_0000001"]
    assert (tmp_path / "checkpoints" / "step_0000001" / COMPLETE).read_text() != first
    _train(model, opt)
    ckpt.load(model, opt)
    assert all(torch.equal(v, states[1][k]) for k, v in model.state_dict().items())


def test_damaged_dirs_older_than_newest_are_pruned(one_rank_group, tmp_path):
    model, opt = _linear_model()
    ckpt = Checkpointer(tmp_path, keep=3)
    _save_steps(ckpt, model, opt, [1, 2])
    (tmp_path / "checkpoints" / "step_0000002" / COMPLETE).unlink()
    _save_steps(ckpt, model, opt, [3])
    assert _names(tmp_path) == ["step_0000001", "step_0000003"]


# ------------------------------------------------------------------------------------------------
# RNG round trip, guards, argument checks
# ------------------------------------------------------------------------------------------------

def test_rng_states_are_restored(one_rank_group, tmp_path):
    import random

    import numpy as np

    model, opt = _linear_model()
    ckpt = Checkpointer(tmp_path)
    ckpt.save(0, model, opt, {"step": 0}, {}, "")
    np.random.standard_normal()                 # a cached gaussian is part of numpy's state
    expected = (torch.rand(4).tolist(), np.random.standard_normal(3).tolist(), random.random(), random.gauss(0, 1))
    D.seed_everything(123)
    ckpt.load(model, opt)
    np.random.standard_normal()
    assert (torch.rand(4).tolist(), np.random.standard_normal(3).tolist(), random.random(),
            random.gauss(0, 1)) == expected


def test_assert_finite():
    assert_finite(torch.tensor(2.0), 1)
    assert_finite(0.5, 1)
    for bad in (torch.tensor(float("nan")), float("inf"), torch.tensor([1.0, float("-inf")])):
        with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 17 .*not saved"):
            assert_finite(bad, 17)


def test_save_refuses_non_finite_model_and_bad_state(one_rank_group, tmp_path):
    model, opt = _linear_model()
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(ValueError, match="train_state"):
        ckpt.save(3, model, opt, {"step": 2}, {}, "")
    with pytest.raises(TypeError, match="sampler_state must be JSON"):
        ckpt.save(3, model, opt, {"step": 3}, {"obj": object()}, "")
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite parameters at step 3"):
        ckpt.save(3, model, opt, {"step": 3}, {}, "")
    assert not (tmp_path / "checkpoints").exists() or _names(tmp_path) == []
    with pytest.raises(ValueError, match="keep"):
        Checkpointer(tmp_path, keep=0)


def test_optimizer_is_optional(one_rank_group, tmp_path):
    model, _ = _linear_model()
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, model, None, {}, ToySampler(0, 1).state_dict(), "")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert ckpt.load(model)["train_state"] == {"step": 1}
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
