"""Linear probe of a pretrained encoder (stage ``linear_eval``): frozen encoder, one linear layer on top.

The protocol is :mod:`ecg_core.evaluation`'s. This job:

1. embeds the sliding windows (stride ``test_stride``) of the training subset, the validation and the test
   records once with the frozen encoder and caches them in ``<run_dir>/embeddings.npz``; the cache records
   the checkpoint, encoder, store, windowing and record lists it was computed for, and a rerun reuses it
   only when all of these match and the file is intact (a damaged file is recomputed with a warning);
2. standardises the embeddings with the training windows' mean and standard deviation and trains
   ``nn.Linear(D, C)`` (zero-initialised, BCE with logits, AdamW in mini-batches of
   :data:`LINEAR_BATCH_SIZE` windows, cosine learning-rate decay) for ``linear_epochs`` epochs, every
   training window labelled with its record's classes;
3. after each epoch scores the validation records (mean of their windows' sigmoid outputs) and keeps the
   head of the epoch with the best validation macro AUROC;
4. saves that head (``head.pt``, what the robustness job scores corrupted records with) and hands its
   validation and test record scores to :func:`ecg_core.evaluation.finish_evaluation` (predictions,
   metrics with bootstrap intervals, ``result.json``).

Single-process: it uses the runner's device when a process group is up and needs none.
Writes into ``run_dir``: ``embeddings.npz``, ``head.pt``, ``metrics.jsonl`` (and W&B), ``predictions.npz``,
``result.json``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecg_core import distributed as D
from ecg_core.checkpoint import step_dir_name
from ecg_core.evaluation import (
    EvalData,
    better,
    checkpoint_fingerprint,
    config_dict,
    default_device,
    embed_records,
    finish_evaluation,
    load_pretrained_encoder,
    prepare_data,
    pretrained_checkpoint,
    record_scores,
)
from ecg_core.metrics import macro_auroc
from ecg_core.schedules import lr_at, set_lr
from ecg_core.atomic import open_atomic
from ecg_core.tracking import Tracker
from jobs.config import EvalConfig, PretrainConfig

__all__ = ["CACHE_FILE", "HEAD_FILE", "LINEAR_BATCH_SIZE", "load_head", "run", "save_head"]

CACHE_FILE = "embeddings.npz"
HEAD_FILE = "head.pt"
CACHE_VERSION = 1
LINEAR_BATCH_SIZE = 256   # windows per AdamW step of the probe (a convex problem: the size matters little)
PARTS = ("train", "val", "test")


@dataclass
class Embedded:
    """The windows of one part: ``emb_ND`` float32 embeddings and ``index_N``, each window's record position."""

    emb_ND: np.ndarray
    index_N: np.ndarray


def _ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()


def _cache_key(cfg: EvalConfig, pretrain_cfg: PretrainConfig, data: EvalData, checkpoint: Path) -> str:
    """What the embeddings depend on, as canonical JSON."""
    return json.dumps({
        "version": CACHE_VERSION,
        "checkpoint": str(checkpoint.resolve()), "checkpoint_sha256": checkpoint_fingerprint(checkpoint),
        "encoder": asdict(pretrain_cfg.encoder),
        "store": str(data.store.path.resolve()), "signal_sha256": data.store.attrs.get("signal_sha256"),
        "table_sha256": data.store.attrs.get("table_sha256"),
        "window": cfg.window, "stride": cfg.test_stride, "normalize": cfg.normalize,
        "records": {part: _ids_digest(getattr(data, f"{part}_ids")) for part in PARTS},
    }, sort_keys=True)


def _load_cache(path: Path, key: str, data: EvalData) -> dict[str, Embedded] | None:
    """The cached embeddings if ``path`` holds intact ones for ``key``; None otherwise (warns when damaged)."""
    if not path.is_file():
        return None
    try:
        # An open handle of our own: np.load leaks the one it opens when the file is not a valid archive.
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as npz:
            if str(npz["key"]) != key:
                print(f"{path}: computed for another checkpoint or setting; recomputing", file=sys.stderr, flush=True)
                return None
            out = {part: Embedded(np.asarray(npz[f"{part}_emb"]), np.asarray(npz[f"{part}_index"]))
                   for part in PARTS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        warnings.warn(f"{path} is damaged ({type(exc).__name__}: {exc}); recomputing the embeddings",
                      RuntimeWarning, stacklevel=3)
        return None
    for part, emb in out.items():
        n_records = len(getattr(data, f"{part}_ids"))
        ok = (emb.emb_ND.ndim == 2 and emb.emb_ND.dtype == np.float32 and emb.index_N.shape == (len(emb.emb_ND),)
              and np.isfinite(emb.emb_ND).all()
              and np.array_equal(np.unique(emb.index_N), np.arange(n_records)))
        if not ok:
            warnings.warn(f"{path} is damaged (inconsistent {part} arrays); recomputing the embeddings",
                          RuntimeWarning, stacklevel=3)
            return None
    return out


def _save_cache(path: Path, key: str, parts: dict[str, Embedded]) -> None:
    arrays = {"key": np.array(key)}
    for part, emb in parts.items():
        arrays[f"{part}_emb"], arrays[f"{part}_index"] = emb.emb_ND, emb.index_N
    with open_atomic(path) as out:
        np.savez(out, **arrays)


def embeddings(cfg: EvalConfig, run_dir: Path, data: EvalData, encoder: nn.Module, pretrain_cfg: PretrainConfig,
               checkpoint: Path, device: torch.device) -> tuple[dict[str, Embedded], bool]:
    """The embeddings of every part, from the cache when it matches; ``(parts, computed)``."""
    path = run_dir / CACHE_FILE
    key = _cache_key(cfg, pretrain_cfg, data, checkpoint)
    cached = _load_cache(path, key, data)
    if cached is not None:
        return cached, False
    encoder.to(device)
    parts = {part: Embedded(*embed_records(encoder, data.store, getattr(data, f"{part}_ids"), cfg.window,
                                           cfg.test_stride, cfg.batch_size, cfg.normalize, device=device))
             for part in PARTS}
    if D.is_main():
        _save_cache(path, key, parts)
    return parts, True


def _val_auroc(head: nn.Linear, x_val: torch.Tensor, val: Embedded, y_val_RC: np.ndarray,
               classes: list[str]) -> float:
    with torch.no_grad():
        probs = torch.sigmoid(head(x_val)).cpu().numpy()
    return macro_auroc(y_val_RC, record_scores(probs, val.index_N, len(y_val_RC)), classes).macro


def fit_probe(cfg: EvalConfig, parts: dict[str, Embedded], y_train_RC: np.ndarray, y_val_RC: np.ndarray,
              classes: list[str], device: torch.device, tracker: Tracker) -> tuple[nn.Linear, int, float]:
    """Train the linear head; returns ``(head of the best validation epoch, that epoch, its val macro AUROC)``.

    The returned head includes the standardisation (its weights are rescaled), so it applies to raw embeddings.
    """
    train, val = parts["train"], parts["val"]
    x_raw = torch.from_numpy(train.emb_ND).to(device)
    mean, std = x_raw.mean(0), x_raw.std(0, unbiased=False).clamp_min(1e-6)
    x_train = (x_raw - mean) / std
    x_val = (torch.from_numpy(val.emb_ND).to(device) - mean) / std
    y_train = torch.from_numpy(y_train_RC[train.index_N]).to(device)
    n, dim = x_train.shape
    head = nn.Linear(dim, len(classes)).to(device)
    nn.init.zeros_(head.weight)   # a convex problem: zeros make the probe independent of torch's RNG
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.linear_lr, weight_decay=cfg.linear_weight_decay)
    batch = min(LINEAR_BATCH_SIZE, n)
    steps_per_epoch = math.ceil(n / batch)
    total = cfg.linear_epochs * steps_per_epoch
    generator = torch.Generator().manual_seed(cfg.seed)
    best_state, best_epoch, best_auroc = None, 0, None
    step = 0
    for epoch in range(1, cfg.linear_epochs + 1):
        order = torch.randperm(n, generator=generator).to(device)
        loss_sum = 0.0
        for a in range(0, n, batch):
            idx = order[a:a + batch]
            lr = lr_at(step, base_lr=cfg.linear_lr, warmup_steps=0, total_steps=total)
            set_lr(optimizer, lr)
            loss = F.binary_cross_entropy_with_logits(head(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            step += 1
        auroc = _val_auroc(head, x_val, val, y_val_RC, classes)
        tracker.log({"train_loss": loss_sum / n, "val_macro_auroc": auroc, "lr": lr}, step=epoch)
        if better(auroc, best_auroc):
            best_state, best_epoch, best_auroc = copy.deepcopy(head.state_dict()), epoch, auroc
    head.load_state_dict(best_state)
    with torch.no_grad():   # fold the standardisation into the layer: w' = w / std, b' = b - w' . mean
        head.weight.div_(std)
        head.bias.sub_(head.weight @ mean)
    return head, best_epoch, float(best_auroc)


def run(cfg: EvalConfig, run_dir: Path) -> None:
    """Linear-probe evaluation of ``cfg.pretrain_dir``'s encoder; writes ``<run_dir>/result.json``."""
    started = time.time()
    if cfg.linear_epochs < 1:
        raise ValueError(f"linear_epochs must be >= 1, got {cfg.linear_epochs}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg)
    encoder, pretrain_cfg, checkpoint_step, pretrain_run_id = load_pretrained_encoder(cfg.pretrain_dir)
    checkpoint = pretrained_checkpoint(cfg.pretrain_dir)   # what the weights came from (the cache key)
    if checkpoint.name != step_dir_name(checkpoint_step):
        raise RuntimeError(f"pretrain_dir {cfg.pretrain_dir} got a new checkpoint {checkpoint.name} while its "
                           f"step {checkpoint_step} was being loaded; run the evaluation again")
    encoder.requires_grad_(False)
    device = default_device()
    # resume_step=0: a rerun trains the probe again from epoch 1, so earlier epochs' lines are dropped.
    with Tracker(cfg.tracking, run_dir, config=config_dict(cfg), enabled=D.is_main(), resume_step=0) as tracker:
        parts, computed = embeddings(cfg, run_dir, data, encoder, pretrain_cfg, checkpoint, device)
        head, epoch, val_auroc = fit_probe(cfg, parts, data.targets(data.train_ids), data.targets(data.val_ids),
                                           data.classes, device, tracker)
        scores = {}
        with torch.no_grad():
            for part in ("val", "test"):
                probs = torch.sigmoid(head(torch.from_numpy(parts[part].emb_ND).to(device))).cpu().numpy()
                scores[part] = record_scores(probs, parts[part].index_N, len(getattr(data, f"{part}_ids")))
        if D.is_main():
            save_head(run_dir, head, checkpoint)
        finish_evaluation(cfg, run_dir, data, scores["val"], scores["test"], tracker, pretrain_cfg=pretrain_cfg,
                          val_macro_auroc=val_auroc, checkpoint_step=checkpoint_step, pretrain_run_id=pretrain_run_id,
                          wall_s=time.time() - started, selected_epoch=epoch, embeddings_cached=not computed)


def save_head(run_dir: Path, head: nn.Linear, checkpoint: Path) -> None:
    """``<run_dir>/head.pt``: the probe (applies to raw embeddings) and the checkpoint it was trained on."""
    with open_atomic(run_dir / HEAD_FILE) as out:
        torch.save({"head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
                    "checkpoint": checkpoint_fingerprint(checkpoint)}, out)


def load_head(run_dir: Path, pretrain_dir: str) -> nn.Linear:
    """The probe saved by :func:`save_head`; an error if the pretraining checkpoint changed since."""
    path = Path(run_dir) / HEAD_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        weight = state["head"]["weight"]
    except (OSError, RuntimeError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise RuntimeError(f"{path}: missing or damaged linear head ({type(exc).__name__}: {exc})") from exc
    now = checkpoint_fingerprint(pretrained_checkpoint(pretrain_dir))
    if state.get("checkpoint") != now:
        raise RuntimeError(f"{path}: trained on another checkpoint of {pretrain_dir} than its current one; "
                           "run the linear evaluation again")
    head = nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict(state["head"])
    return head
