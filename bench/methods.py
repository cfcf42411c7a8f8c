"""Training throughput of every SSL method (``ecg_core.methods.METHODS``) through the real training loop.

Each method is built at its "demo size": its cell of ``grids/demo.yaml`` (what ``make demo`` trains: the
recipe with a narrow xresnet or a tiny ViT, small heads, window 2500, the demo batch), sharded with FSDP2
in a 1-rank group exactly as ``jobs.pretrain`` does, and trained with :func:`ecg_core.train_loop.train` on
the demo store: ``--warmup`` steps, then ``--steps`` timed steps (the loop's own per-step samples/s,
checkpoint time excluded). One table is printed, with each method's throughput relative to SimCLR
measured in the same run: absolute numbers on shared machines are noisy, ratios much less so.

``--gpu``: on CUDA, each recipe at its real size in bf16 (autocast), and for ViT methods the achieved
TFLOP/s (FLOPs of one forward+backward counted with ``torch.utils.flop_counter.FlopCounterMode``) and
its share of ``--peak-tflops`` (default 989: H100 SXM bf16 dense).

Usage::

    .venv/bin/python bench/methods.py [--store build/demo/demo.zarr] [--steps 5] [--warmup 2]
        [--methods simclr,byol] [--gpu [--peak-tflops 989]]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ecg_core import distributed as D  # noqa: E402
from ecg_core.config import load_config, to_yaml  # noqa: E402
from ecg_core.data.config import StoreSource  # noqa: E402
from ecg_core.data.loader import WindowLoader  # noqa: E402
from ecg_core.methods import METHODS, build_method  # noqa: E402
from ecg_core.schedules import lr_at  # noqa: E402
from ecg_core.train_loop import train  # noqa: E402
from jobs.config import PretrainConfig  # noqa: E402

DEMO_STORE = ROOT / "build" / "demo" / "demo.zarr"
TRAIN_FOLDS = range(1, 9)   # as the contract test: the supervised baseline needs training folds

DEMO_GRID = ROOT / "grids" / "demo.yaml"


class _Rates:
    """A tracker keeping the loop's per-step throughput (samples/s of that step, saving excluded)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, float]] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, float(metrics["samples_per_s"])))


def recipe(name: str) -> Path:
    return ROOT / "experiments" / f"{name}.yaml"


def demo_configs() -> dict[str, PretrainConfig]:
    """Each method's cell of ``grids/demo.yaml`` (what ``make demo`` trains): method name -> its config."""
    from launcher.grid import load_grid

    grid = load_grid(DEMO_GRID)
    out: dict[str, PretrainConfig] = {}
    for cell in grid.cells:   # the first cell of a method (random_init: the first encoder's baseline)
        out.setdefault(cell.method, grid.pretrain_config(cell))
    return out


def config_for(name: str, store: Path, args: argparse.Namespace,
               demo: dict[str, PretrainConfig]) -> tuple[PretrainConfig, str]:
    """The benchmark config of ``name`` and a note."""
    stores = [StoreSource(path=str(store), folds=list(TRAIN_FOLDS))]
    if args.gpu:   # the recipe's real size, bf16; only the store replaced
        real = ["precision=bf16", "tracking.mode=disabled", "data.block_len=65536"]
        cfg = load_config(PretrainConfig, [recipe(name)], real)
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, stores=stores)), ""
    if name not in demo:
        raise KeyError(f"{name} has no cell in {DEMO_GRID.relative_to(ROOT)}")
    cfg = demo[name]
    data = dataclasses.replace(cfg.data, stores=stores, batch_size=args.batch or cfg.data.batch_size)
    cfg = dataclasses.replace(cfg, precision="fp32", tracking=dataclasses.replace(cfg.tracking, mode="disabled"),
                              data=data)
    return cfg, ""


def is_vit(cfg: PretrainConfig) -> bool:
    return "vit" in cfg.encoder.name


def count_step_flops(method, batch: dict) -> float:
    """FLOPs of one forward + backward of ``method.training_step`` (bf16 autocast on CUDA)."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = method.training_step(batch, 0)["loss"]
        loss.backward()
    method.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bench_one(name: str, store: Path, args: argparse.Namespace, demo: dict[str, PretrainConfig]) -> dict:
    cfg, note = config_for(name, store, args, demo)
    info = D.info()
    D.seed_everything(cfg.seed)
    method = build_method(cfg, generator_seed=cfg.seed).to(info.device)
    flops = None
    if args.gpu and is_vit(cfg):   # before sharding: plain modules, one step on the first batch
        flops = count_step_flops(method, WindowLoader(cfg.data).take(1)[0])
    D.shard_model(method, method.fsdp_blocks(), mixed_precision=args.gpu)
    optimizer = torch.optim.AdamW(method.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay)
    loader = WindowLoader(cfg.data, rank=info.rank, world_size=info.world_size)
    total = args.warmup + args.steps
    lr_fn = partial(lr_at, base_lr=cfg.optim.lr, warmup_steps=0, total_steps=total, schedule=cfg.optim.schedule,
                    min_lr_ratio=cfg.optim.min_lr_ratio)
    rates = _Rates()
    with tempfile.TemporaryDirectory() as run_dir:
        train(method, optimizer, loader, method.training_step, run_dir=run_dir, total_steps=total, lr_fn=lr_fn,
              grad_clip=cfg.optim.grad_clip, checkpoint_every=total, keep_checkpoints=1, config_yaml=to_yaml(cfg),
              tracker=rates, log_every=1, after_step=method.after_optimizer_step, desc=f"bench {name}",
              autocast=args.gpu)
    timed = [r for step, r in rates.rows if step > args.warmup]
    batch = cfg.data.batch_size
    seconds = sum(batch / r for r in timed)   # each step's duration from its rate
    sps = len(timed) * batch / seconds
    row = {"method": name, "encoder": cfg.encoder.name, "window": cfg.data.window, "batch": batch,
           "samples_per_s": sps, "step_s": seconds / len(timed), "note": note}
    if flops is not None:
        tflops = flops * (sps / batch) / 1e12
        row.update(tflops=tflops, peak_share=tflops / args.peak_tflops)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--store", type=Path, default=None,
                        help=f"ECG store (default {DEMO_STORE.relative_to(ROOT)}, built if missing)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated METHODS names (default all)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=0, help="batch size (default: the demo grid's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--gpu", action="store_true", help="CUDA, recipes at real size in bf16, TFLOP/s of ViTs")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="peak for the --gpu share (H100 bf16)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs CUDA")
    if args.threads:
        torch.set_num_threads(args.threads)
    store = args.store or DEMO_STORE
    if args.store is None and not DEMO_STORE.exists():
        subprocess.run([sys.executable, "-m", "ecg_core.data.demo", "--workdir", str(DEMO_STORE.parent)], cwd=ROOT,
                       check=True)
    if "simclr" not in names:
        names.insert(0, "simclr")   # the reference of the ratios
    D.init_distributed(prefer_cuda=args.gpu)
    rows = []
    try:
        # The first training run of a process pays one-off costs (thread pools, allocator, page cache of the
        # store): a discarded SimCLR run first, so the reference of the ratios is not penalised.
        demo = {} if args.gpu else demo_configs()
        bench_one("simclr", store, argparse.Namespace(**{**vars(args), "warmup": 1, "steps": 1}), demo)
        for name in names:
            started = time.time()
            try:
                rows.append(bench_one(name, store, args, demo))
            except Exception as exc:   # noqa: BLE001 - one broken method must not hide the others' numbers
                rows.append({"method": name, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:100]}"})
            print(f"# {name}: {time.time() - started:.1f} s", file=sys.stderr, flush=True)
    finally:
        D.teardown()
    ref = next((r["samples_per_s"] for r in rows if r["method"] == "simclr" and "error" not in r), math.nan)
    device = torch.cuda.get_device_name() if args.gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nthroughput through ecg_core.train_loop.train ({device}; {args.warmup} warm-up + {args.steps} timed "
          f"steps; {'recipe size, bf16' if args.gpu else 'demo size, fp32'})")
    head = f"{'method':<20} {'encoder':<16} {'window':>6} {'batch':>5} {'samples/s':>10} {'s/step':>7} {'x simclr':>8}"
    if args.gpu:
        head += f" {'TFLOP/s':>8} {'% peak':>7}"
    print(head + "  note")
    for r in rows:
        if "error" in r:
            print(f"{r['method']:<20} error: {r['error']}")
            continue
        line = (f"{r['method']:<20} {r['encoder']:<16} {r['window']:>6} {r['batch']:>5} {r['samples_per_s']:>10.1f} "
                f"{r['step_s']:>7.3f} {r['samples_per_s'] / ref:>8.2f}")
        if args.gpu:
            line += (f" {r['tflops']:>8.1f} {100 * r['peak_share']:>6.1f}%" if "tflops" in r else f" {'':>8} {'':>7}")
        print(line + (f"  {r['note']}" if r["note"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
