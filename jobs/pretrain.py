"""Self-supervised pretraining of one grid cell (stage ``pretrain``): any method of ``ecg_core.methods``.

Runs under torch.distributed as set up by the runner (one process per rank; gloo on CPU, NCCL on GPU):
the method is built from the same seed on every rank (FSDP2 does not broadcast weights), its blocks and
then the whole method are sharded with FSDP2 ``fully_shard`` (also with one rank, so that one code path
is exercised everywhere), and :func:`ecg_core.train_loop.train` runs the steps, checkpoints, resumes
and stops for preemption. The encoder is later read by evaluation jobs with
:func:`ecg_core.checkpoint.load_encoder` from ``<run_dir>/checkpoints``.

Leakage guard: before training, every pretraining store is compared with every evaluation store of the
grid (``cfg.eval_stores``, :func:`ecg_core.data.leakage.find_overlap`: PTB-XL ``ecg_id`` identity and
signal fingerprints); the matched records and their patients' other records are excluded from the
training windows (``leakage_guard: false`` keeps them). What was found and excluded is written to
``leakage.json`` (read back on requeue, so every attempt trains on the same records) and reported by the
aggregate job. A pretraining store that *is* an evaluation store needs no matching: its evaluation folds
are kept out by ``pretrain_folds``, and evaluation checks that no patient spans train/val/test.

Writes into ``run_dir``: ``checkpoints/``, ``metrics.jsonl`` (and W&B), ``compute.json`` (accumulated
over requeues: wall seconds, samples, device, world size, parameter counts), ``leakage.json``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from functools import partial
from pathlib import Path

import torch

from ecg_core import distributed as D
from ecg_core.config import to_yaml
from ecg_core.data.loader import WindowLoader
from ecg_core.encoders import count_parameters
from ecg_core.methods import build_method
from ecg_core.preemption import Preempted
from ecg_core.schedules import lr_at
from ecg_core.atomic import write_json_atomic
from ecg_core.tracking import Tracker, TrackingWarning, resolve_mode
from ecg_core.train_loop import train
from jobs.config import JOB_ID_ENV, PretrainConfig

__all__ = ["run"]


def _config_dict(cfg: PretrainConfig) -> dict:
    import yaml
    return yaml.safe_load(to_yaml(cfg))


def run(cfg: PretrainConfig, run_dir: Path) -> None:
    """Pretrain ``cfg.method`` with ``cfg.encoder`` on ``cfg.data`` for ``cfg.steps`` steps (collective)."""
    run_dir = Path(run_dir)
    info = D.info()
    if cfg.deterministic:
        D.set_deterministic()
    if not cfg.data.stores:
        raise ValueError(f"{run_dir / 'config.yaml'}: data.stores is empty (the planner fills it from `dataset`)")
    planned = cfg                               # what config.yaml says: logged and checkpointed as is
    cfg = apply_leakage_guard(cfg, run_dir)     # + the excluded record ids (listed in leakage.json)
    D.seed_everything(cfg.seed)                 # identical initial weights on every rank
    method = build_method(cfg, generator_seed=cfg.seed).to(info.device)
    n_encoder, n_total = count_parameters(method.encoder), count_parameters(method)
    views_png = _views_figure(cfg, method, run_dir) if info.is_main and resolve_mode(cfg.tracking.mode) != "disabled" \
        else None   # before sharding: only rank 0 runs it, so no collective may happen inside
    D.shard_model(method, method.fsdp_blocks(), mixed_precision=cfg.precision == "bf16")
    D.seed_everything(cfg.seed, info.rank)      # rank-specific streams from here on
    optimizer = torch.optim.AdamW(method.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay)
    loader = WindowLoader(cfg.data, rank=info.rank, world_size=info.world_size)
    lr_fn = partial(lr_at, base_lr=cfg.optim.lr, warmup_steps=min(cfg.optim.warmup_steps, cfg.steps),
                    total_steps=cfg.steps, schedule=cfg.optim.schedule, min_lr_ratio=cfg.optim.min_lr_ratio)
    config = _config_dict(planned)
    tracker = Tracker(cfg.tracking, run_dir, config=config, enabled=info.is_main)
    started = time.time()
    result = None
    try:
        result = train(method, optimizer, loader, method.training_step, run_dir=run_dir, total_steps=cfg.steps,
                       lr_fn=lr_fn, grad_clip=cfg.optim.grad_clip, checkpoint_every=cfg.checkpoint_every,
                       keep_checkpoints=cfg.keep_checkpoints, config_yaml=to_yaml(planned), tracker=tracker,
                       log_every=cfg.log_every, after_step=method.after_optimizer_step,
                       desc=f"pretrain {cfg.method.name}", autocast=cfg.precision == "bf16")
    except Preempted as stop:
        tracker.mark_preempting()
        tracker.finish(exit_code=143)
        _account(run_dir, info, time.time() - started, None, n_encoder, n_total, cfg, stop)
        raise
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    _account(run_dir, info, time.time() - started, result, n_encoder, n_total, cfg)
    if views_png is not None:   # at the last step (merged into its W&B row): logged once per finished run
        tracker.log_image("views", views_png)
    tracker.summary({"final_step": result.step, "samples_per_s": result.samples_per_s,
                     "encoder_parameters": n_encoder})
    tracker.finish()


LEAKAGE_FILE = "leakage.json"


def _same_store(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def apply_leakage_guard(cfg: PretrainConfig, run_dir: Path) -> PretrainConfig:
    """``cfg`` with the leakage guard's exclusions added to its stores (see the module docstring).

    Rank 0 computes them (or reads ``leakage.json`` written by an earlier attempt with the same stores and
    switch) and writes the file; the other ranks read it after a barrier.
    """
    if not cfg.eval_stores:
        return cfg
    path = run_dir / LEAKAGE_FILE
    key = {"pretrain_stores": [s.path for s in cfg.data.stores], "eval_stores": list(cfg.eval_stores),
           "guard": bool(cfg.leakage_guard)}
    if D.is_main():
        try:
            known = json.loads(path.read_text(encoding="utf-8"))
            fresh = known.get("key") != key
        except FileNotFoundError:
            fresh = True
        except (OSError, ValueError) as exc:
            warnings.warn(f"{path} is damaged ({exc}); the overlap is computed again", RuntimeWarning, stacklevel=2)
            fresh = True
        if fresh:
            write_json_atomic(path, _leakage_report(cfg, key))
    D.barrier()
    report = json.loads(path.read_text(encoding="utf-8"))
    stores = [dataclasses.replace(src, exclude=sorted(set(src.exclude) | set(report["exclude"].get(src.path, []))))
              for src in cfg.data.stores]
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, stores=stores))


def _leakage_report(cfg: PretrainConfig, key: dict) -> dict:
    from ecg_core.data.leakage import find_overlap

    checks, exclude = [], {}
    for src in cfg.data.stores:
        for eval_store in cfg.eval_stores:
            if _same_store(src.path, eval_store):
                checks.append({"pretrain_store": src.path, "eval_store": eval_store, "excluded_records": 0,
                               "summary": f"the evaluation store itself, pretraining folds {list(src.folds) or 'all'} "
                                          "(evaluation folds are kept out by fold; patient separation is checked "
                                          "by the evaluation jobs)"})
                continue
            overlap = find_overlap(src.path, eval_store, progress=True)
            excluded = overlap.exclude if cfg.leakage_guard else []
            if excluded:
                exclude.setdefault(src.path, set()).update(excluded)
            checks.append({"pretrain_store": src.path, "eval_store": eval_store, "excluded_records": len(excluded),
                           "pairs_by_name": overlap.count("name"), "pairs_by_signal": overlap.count("signal"),
                           "eval_records": len(overlap.eval_records), "eval_patients": len(overlap.eval_patients),
                           "summary": (f"{len(overlap.eval_records)} evaluation records of "
                                       f"{len(overlap.eval_patients)} patients found ({overlap.count('name')} by "
                                       f"source identity, {overlap.count('signal')} by signal); "
                                       + (f"{len(excluded)} pretraining records excluded" if cfg.leakage_guard
                                          else "NOT excluded (leakage_guard: false)"))})
            if overlap.pairs:
                print(f"leakage guard: {overlap.summary()}", flush=True)
    return {"key": key, "guard": bool(cfg.leakage_guard), "checks": checks,
            "exclude": {store: sorted(ids) for store, ids in exclude.items()}}


def _views_figure(cfg: PretrainConfig, method: torch.nn.Module, run_dir: Path) -> Path | None:
    """``<run_dir>/views.png``: the first window of the first batch and the method's views of it
    (:func:`ecg_core.viz.views_figure`, initial weights); a plotting failure only warns (returns None)."""
    path = run_dir / "views.png"
    try:
        from ecg_core.viz import views_figure
        x_LT = WindowLoader(cfg.data).take(1)[0]["x"][0]
        return views_figure(method, x_LT, path, seed=cfg.seed, title=f"{cfg.method.name}: views")
    except Exception as exc:   # noqa: BLE001 - a picture must never stop pretraining
        warnings.warn(f"views figure not logged: {type(exc).__name__}: {exc}", TrackingWarning, stacklevel=2)
        return None


def _account(run_dir: Path, info: D.DistInfo, wall_s: float, result, n_encoder: int, n_total: int,
             cfg: PretrainConfig, stop: Preempted | None = None) -> None:
    """Add this attempt's compute to ``compute.json`` (rank 0)."""
    if not info.is_main:
        return
    path = run_dir / "compute.json"
    try:
        compute = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        compute = {}
    attempts = compute.get("attempts", [])
    attempts.append({"wall_s": round(wall_s, 2), "samples": result.samples_seen if result else None,
                     "steps_to": result.step if result else None,
                     "stopped_at": stop.step if stop is not None else None,
                     "resumed_from": result.resumed_from if result else (stop.resumed_from if stop else None),
                     "job_id": os.environ.get(JOB_ID_ENV) or None})
    wall_total = sum(a["wall_s"] for a in attempts)
    device_hours = wall_total * info.world_size / 3600.0
    compute.update({
        "attempts": attempts, "wall_s": round(wall_total, 2), "world_size": info.world_size,
        "device": info.device.type, "gpu_hours" if info.device.type == "cuda" else "cpu_hours": round(device_hours, 5),
        "samples_seen": cfg.steps * cfg.data.batch_size * info.world_size,
        "samples_per_s": result.samples_per_s if result else compute.get("samples_per_s"),
        "encoder_parameters": n_encoder, "total_parameters": n_total,
    })
    write_json_atomic(path, compute)
