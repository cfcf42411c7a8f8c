"""Run test scenarios on several gloo ranks, each a fresh Python process started the way torchrun or
submitit start ranks: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` in the
environment, read by :func:`ecg_core.distributed.init_distributed`.

The parent calls :func:`run_ranks`; each child runs this file as a script, executes one scenario
function and writes its results under ``args["out"]``. A scenario is one of :data:`SCENARIOS` below or a
module-level function ``(info, args)`` of a test file, passed as the function itself. Children turn
warnings into errors as pytest does (setup.cfg), and record the warnings a scenario expects instead of
letting them through. :func:`run_pretrain_ranks` starts the pretraining job itself on 2 ranks.

Shapes: ``B`` batch, ``C`` channels, ``T`` time.
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import os
import random
import socket
import subprocess
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun / a scheduler sets; tests delete these for a 1-process group (tests/ecg_core/conftest.py)."""


# ------------------------------------------------------------------------------------------------
# Parent side
# ------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_ranks(argv: list[str], world_size: int, **env: str) -> list[subprocess.Popen]:
    """``argv`` once per rank, with the rendezvous environment of torchrun (and ``env``) on a free port."""
    port = free_port()
    return [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                             env=dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                                      MASTER_PORT=str(port), OMP_NUM_THREADS="1",   # ranks share the CI's 2 cores
                                      **env))
            for rank in range(world_size)]


def scenario_name(scenario: str | Callable[..., None]) -> str:
    """A :data:`SCENARIOS` key as is; a test file's function as ``module:function`` (importable from ROOT)."""
    if isinstance(scenario, str):
        return scenario
    module = Path(sys.modules[scenario.__module__].__file__).resolve().relative_to(ROOT).with_suffix("")
    return f"{'.'.join(module.parts)}:{scenario.__qualname__}"


def run_ranks(scenario: str | Callable[..., None], world_size: int, args: dict[str, Any],
              timeout: float = 90.0) -> list[str]:
    """Run ``scenario`` on ``world_size`` ranks; returns each rank's output; fails with all outputs shown."""
    name = scenario_name(scenario)
    procs = _start_ranks([sys.executable, str(HERE), name, json.dumps(args)], world_size)
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            # One failed rank leaves the others blocked in a collective: stop them at once.
            if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outputs = [p.communicate()[0] for p in procs]
    codes = [p.returncode for p in procs]
    if any(codes):
        shown = "\n".join(f"--- rank {r} (exit {c}) ---\n{o}" for r, (c, o) in enumerate(zip(codes, outputs)))
        raise AssertionError(f"scenario {name!r} failed on {world_size} ranks:\n{shown}")
    return outputs


def run_pretrain_ranks(run_dir: Path, wandb_mode: str, world_size: int = 2, timeout: float = 300.0) -> None:
    """``JobRunner('pretrain')(run_dir)`` in ``world_size`` processes forming a gloo group (as a scheduler
    starts it)."""
    from launcher.runner import read_done

    code = "import sys; from launcher.runner import JobRunner; JobRunner('pretrain')(sys.argv[1])"
    procs = _start_ranks([sys.executable, "-c", code, str(run_dir)], world_size, WANDB_MODE=wandb_mode)
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outputs):
        # torch 2.13 on CPU sometimes aborts in C++ teardown after a clean finish (see launcher/runner.py)
        clean_abort = "terminate called without an active exception" in out and read_done(run_dir) is not None
        assert p.returncode == 0 or clean_abort, out[-4000:]


# ------------------------------------------------------------------------------------------------
# What the ranks train: a tiny 1-D CNN with dropout and batch norm, a toy resumable sampler
# ------------------------------------------------------------------------------------------------

STEPS_PER_EPOCH = 3
TOTAL_STEPS = 4


def tiny_model():
    """``x_BCT (B, 2, 32) -> (B, 4)``; ``.encoder`` is what evaluation reads, as in the Method protocol."""
    from torch import nn

    class MeanOverTime(nn.Module):
        # Not AdaptiveAvgPool1d + Flatten: FSDP2 (torch 2.13) warns when a sharded module returns a view.
        def forward(self, x_BCT):
            return x_BCT.mean(dim=-1)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(
                nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3),
                nn.Conv1d(8, 8, 3, padding=1), nn.ReLU(), MeanOverTime())
            self.head = nn.Linear(8, 4)

        def forward(self, x_BCT):
            return self.head(self.encoder(x_BCT))

    return Tiny()


class ToySampler:
    """Position ``(epoch, batch_in_epoch)`` like ``WindowSampler``; batches are a function of it and the rank."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size, self.epoch, self.batch_in_epoch = rank, world_size, 0, 0

    def next_batch(self):
        import numpy as np
        import torch

        rng = np.random.default_rng([7, self.epoch, self.batch_in_epoch, self.rank])
        self.batch_in_epoch += 1
        if self.batch_in_epoch == STEPS_PER_EPOCH:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return torch.from_numpy(rng.standard_normal((4, 2, 32)).astype("float32"))

    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "rank": self.rank,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]


def build(info):
    """Model (FSDP2-sharded), AdamW and sampler, identically initialised on every rank."""
    import torch

    from ecg_core import distributed as D

    D.seed_everything(0)                       # same weights on all ranks: fully_shard does not broadcast
    model = tiny_model()
    D.shard_model(model, [model.encoder, model.head], mixed_precision=True)
    D.seed_everything(0, info.rank)            # per-rank dropout / noise streams
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    return model, opt, ToySampler(info.rank, info.world_size)


def train_step(model, opt, sampler, step: int) -> float:
    """One step that draws from every global RNG (torch dropout and noise, numpy, python) and the sampler."""
    import numpy as np
    import torch

    from ecg_core.checkpoint import assert_finite
    from ecg_core.schedules import lr_at, set_lr

    x_BCT = sampler.next_batch()
    x_BCT = x_BCT * (1.0 + 0.1 * random.random()) + 0.05 * torch.from_numpy(
        np.random.standard_normal(x_BCT.shape).astype("float32")) + 0.05 * torch.rand(x_BCT.shape)
    set_lr(opt, lr_at(step, base_lr=1e-2, warmup_steps=1, total_steps=TOTAL_STEPS))
    loss = (model(x_BCT) - 1.0).pow(2).mean()
    assert_finite(loss, step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


def dump_full(model, opt, path: Path) -> None:
    """Full (unsharded) model and optimizer state, written by rank 0 (gathering is collective)."""
    import torch
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=options)
    osd = get_optimizer_state_dict(model, opt, options=options)
    if int(os.environ["RANK"]) == 0:
        torch.save({"model": msd, "optim": osd}, path)


# ------------------------------------------------------------------------------------------------
# Scenarios (run in the children)
# ------------------------------------------------------------------------------------------------

def scenario_reference(info, args: dict[str, Any]) -> None:
    """4 straight steps (-> straight.pt); then, from scratch, 2 steps saving after each (-> at_save.pt)."""
    from ecg_core.checkpoint import Checkpointer

    out = Path(args["out"])
    model, opt, sampler = build(info)
    for step in range(TOTAL_STEPS):
        train_step(model, opt, sampler, step)
    dump_full(model, opt, out / "straight.pt")

    model, opt, sampler = build(info)
    ckpt = Checkpointer(args["run_dir"], keep=3)
    for step in range(2):
        train_step(model, opt, sampler, step)
        ckpt.save(step + 1, model, opt, {"step": step + 1, "epoch": sampler.epoch}, sampler.state_dict(),
                  "method: toy\nseed: 0\n")
    dump_full(model, opt, out / "at_save.pt")
    (out / f"sampler_rank{info.rank}.json").write_text(json.dumps(sampler.state_dict()))


def scenario_resume(info, args: dict[str, Any]) -> None:
    """Fresh processes: build, load the newest checkpoint, run the remaining steps (-> resumed.pt)."""
    from ecg_core.checkpoint import Checkpointer

    out = Path(args["out"])
    model, opt, sampler = build(info)
    restored = Checkpointer(args["run_dir"]).load(model, opt)
    sampler.load_state_dict(restored["sampler_state"])
    (out / f"restored_rank{info.rank}.json").write_text(json.dumps(
        {k: restored[k] for k in ("step", "train_state", "sampler_state", "config_yaml", "world_size")}))
    for step in range(restored["step"], TOTAL_STEPS):
        train_step(model, opt, sampler, step)
    dump_full(model, opt, out / "resumed.pt")


def scenario_fallback(info, args: dict[str, Any]) -> None:
    """Load from a run whose newest checkpoint is damaged, then from one whose checkpoints all are."""
    from ecg_core.checkpoint import CheckpointError, Checkpointer

    model, opt, _ = build(info)
    result: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = Checkpointer(args["damaged_newest"]).load(model, opt)
    result["step"] = restored["step"]
    result["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    try:
        Checkpointer(args["all_damaged"]).load(model, opt)
    except CheckpointError as exc:
        result["error"] = str(exc)
    Path(args["out"], f"fallback_rank{info.rank}.json").write_text(json.dumps(result))


def scenario_collectives(info, args: dict[str, Any]) -> None:
    """all_gather_with_grad gradients, object collectives, the collective non-finite guard."""
    import torch

    from ecg_core import distributed as D
    from ecg_core.checkpoint import NonFiniteLossError, assert_finite

    x_BD = gather_inputs()[info.rank].clone().requires_grad_(True)
    z_RBD = D.all_gather_with_grad(x_BD)
    gather_loss(x_BD, z_RBD, info.rank).backward()
    result: dict[str, Any] = {
        "info": [info.rank, info.world_size, info.local_rank, str(info.device), info.backend],
        "grad": x_BD.grad.tolist(), "gathered": z_RBD.detach().tolist(),
        "broadcast": D.broadcast_object({"from": info.rank} if D.is_main() else None),
        "objects": D.all_gather_object(info.rank * 10),
        "all_true": D.all_ranks_true(True), "one_false": D.all_ranks_true(info.rank == 0),
    }
    D.barrier()
    assert_finite(torch.tensor(1.5), step=3)
    try:   # rank 1 diverges; both ranks must stop, naming rank 1
        assert_finite(torch.tensor(float("nan") if info.rank == 1 else 0.5), step=9)
    except NonFiniteLossError as exc:
        result["nonfinite"] = str(exc)
    Path(args["out"], f"collectives_rank{info.rank}.json").write_text(json.dumps(result))


def gather_inputs():
    """Each rank's rows ``x_BD`` (float64 so gradients compare to 1e-12)."""
    import torch

    gen = torch.Generator().manual_seed(3)
    return [torch.randn(3, 5, generator=gen, dtype=torch.float64) for _ in range(2)]


def gather_loss(x_BD, z_RBD, rank: int):
    """A SimCLR-like loss of the local rows against all rows, rank-dependent so slices matter."""
    logits_BR = x_BD @ z_RBD.T
    return logits_BR.logsumexp(dim=1).sum() + (rank + 1) * 0.1 * (z_RBD ** 3).sum()


SCENARIOS = {"reference": scenario_reference, "resume": scenario_resume, "fallback": scenario_fallback,
             "collectives": scenario_collectives}


def _scenario(name: str) -> Callable[..., None]:
    if name in SCENARIOS:
        return SCENARIOS[name]
    module, function = name.split(":")
    sys.path.insert(0, str(ROOT))    # test files import as tests.<folder>.<file>, as under pytest
    return getattr(importlib.import_module(module), function)


def _child_main() -> None:
    faulthandler.enable()            # a C++ abort in a rank shows its Python stack in the test failure
    scenario, args = sys.argv[1], json.loads(sys.argv[2])
    function = _scenario(scenario)
    warnings.simplefilter("error")   # as pytest's filterwarnings = error
    from ecg_core import distributed as D

    info = D.init_distributed(prefer_cuda=False, timeout=timedelta(seconds=60))
    try:
        if scenario in SCENARIOS:    # the checkpoint scenarios compare bit-exactly
            D.set_deterministic()
        function(info, args)
        D.barrier()
    finally:
        D.teardown()
    # About 1 run in 50 of the 'fallback' scenario aborted during interpreter finalization, after the
    # scenario, the barrier and destroy_process_group had all completed ("terminate called without an
    # active exception", no Python frame; torch 2.13 CPU, gloo). The results are on disk by then, so a
    # finished rank leaves without finalization rather than turn that into a flaky test.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _child_main()
