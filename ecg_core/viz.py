"""Pictures of what a method trains on: one ECG window and the views (augmentations, perturbations, masks)
the method makes of it.

Each method is shown through its own public pieces, so the picture is what training sees:

- Viewmaker (Tamkin et al. 2021, "Viewmaker Networks", ICLR): :meth:`Viewmaker.make_views` -> both
  augmented inputs, their views ``input + delta`` and the perturbations ``delta``;
- MAE (He et al. 2022, section 3 "random sampling"): :func:`ecg_core.methods.mae.random_masking` -> the
  masked patches shaded on the signal;
- JEPA (Assran et al. 2023, I-JEPA section 3 "multi-block masking"): :func:`sample_jepa_masks` -> the
  context patches and the target blocks shaded on the signal;
- any method with an ``augment`` transform pipeline (SimCLR, BYOL, MoCo v3, SwAV, patient-contrastive
  with augmentations): two draws of it, as the methods draw their two views;
- anything else (CPC, supervised, random init): the input alone, with a note saying there are no views.

The randomness is a generator seeded with ``seed`` (not the training step generators: drawing a picture
must not consume training randomness). Figures use matplotlib's Agg backend (no display needed).

CLI::

    python -m ecg_core.viz views --recipe experiments/simclr.yaml --store STORE --out DIR [--record ID]
        [--seed 0] [--set key=value ...]

Shapes: ``B`` batch (1 here), ``L`` leads (12), ``T`` time samples, ``N`` patches.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["Panel", "main", "method_views", "views_figure"]

_LEAD_SPACING_MV = 3.0   # vertical offset between stacked leads; typical QRS amplitudes are 1-2 mV


@dataclass
class Panel:
    """One column of the figure: a (L, T) signal and optional shaded sample spans ``[(a, b, colour, label)]``."""

    title: str
    x_LT: np.ndarray
    spans: list[tuple[int, int, str, str]] = field(default_factory=list)


def _patch_spans(indices: Sequence[int], patch_size: int, colour: str, label: str) -> list[tuple[int, int, str, str]]:
    """Merge consecutive patch indices into sample spans (fewer rectangles, cleaner legend)."""
    spans: list[tuple[int, int, str, str]] = []
    for n in sorted(int(i) for i in indices):
        a, b = n * patch_size, (n + 1) * patch_size
        if spans and spans[-1][1] == a:
            spans[-1] = (spans[-1][0], b, colour, label)
        else:
            spans.append((a, b, colour, label))
    return spans


def method_views(method: torch.nn.Module, x_BLT: torch.Tensor, generator: torch.Generator) -> tuple[list[Panel], str]:
    """The panels showing ``method``'s views of ``x_BLT`` (B = 1) and a note (empty when there are views).

    Runs without gradients and with the method in eval mode (restored after), so BatchNorm statistics
    and other module state are left exactly as they were.
    """
    from ecg_core.methods.jepa import JEPA, sample_jepa_masks
    from ecg_core.methods.mae import MAE, random_masking
    from ecg_core.methods.viewmaker import Viewmaker

    x_BLT = x_BLT.float()
    inp = Panel("input", x_BLT[0].detach().cpu().numpy())
    was_training = method.training
    method.eval()
    try:
        with torch.no_grad():
            if isinstance(method, Viewmaker):
                inputs_2BLT, views_2BLT = method.make_views(x_BLT, generator)
                inputs_2BLT, views_2BLT = inputs_2BLT.float().cpu(), views_2BLT.float().cpu()
                panels = [inp]
                for v in range(2):
                    if not torch.equal(inputs_2BLT[v], x_BLT[0].cpu()):   # only when augmentations changed it
                        panels.append(Panel(f"augmented {v + 1}", inputs_2BLT[v].numpy()))
                    panels += [Panel(f"viewmaker view {v + 1}", views_2BLT[v].numpy()),
                               Panel(f"perturbation {v + 1} (view - augmented)",
                                     (views_2BLT[v] - inputs_2BLT[v]).numpy())]
                return panels, ""
            if isinstance(method, MAE):
                n_patches = x_BLT.shape[-1] // method.patch_size
                _, masked_BM = random_masking(1, n_patches, method.n_keep, generator, device=x_BLT.device)
                spans = _patch_spans(masked_BM[0].tolist(), method.patch_size, "tab:red", "masked (reconstructed)")
                return [inp, Panel(f"MAE mask: {masked_BM.shape[1]} of {n_patches} patches masked", inp.x_LT,
                                   spans)], ""
            if isinstance(method, JEPA):
                cfg, patch = method.cfg, method.encoder.patch_size
                n_patches = x_BLT.shape[-1] // patch
                context_BC, targets_BMK = sample_jepa_masks(
                    1, n_patches, num_target_blocks=cfg.num_target_blocks, target_scale=tuple(cfg.target_scale),
                    context_scale=tuple(cfg.context_scale), min_context=cfg.min_context, generator=generator,
                    device=x_BLT.device)
                spans = _patch_spans(context_BC[0].tolist(), patch, "tab:blue", "context")
                for m in range(targets_BMK.shape[1]):
                    spans += _patch_spans(targets_BMK[0, m].tolist(), patch, "tab:red", "target blocks")
                return [inp, Panel(f"JEPA: {context_BC.shape[1]} context patches, {targets_BMK.shape[1]} target "
                                   f"blocks of {targets_BMK.shape[2]}", inp.x_LT, spans)], ""
            augment = getattr(method, "augment", None)
            if callable(augment) and len(getattr(augment, "transforms", [None])) > 0:
                return [inp] + [Panel(f"view {v + 1}", augment(x_BLT, generator)[0].float().cpu().numpy())
                                for v in range(2)], ""
    finally:
        method.train(was_training)
    return [inp], f"{type(method).__name__} makes no views of its input (no augmentations or masks)"


def _plot(panels: list[Panel], note: str, title: str, out_path: Path, fs: float | None) -> Path:
    import matplotlib
    matplotlib.use("Agg")   # no display; also safe on compute nodes
    import matplotlib.pyplot as plt

    from ecg_core.data.leads import LEADS

    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 9), sharey=True, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        L, T = panel.x_LT.shape
        t = np.arange(T) / fs if fs else np.arange(T)
        seen: set[str] = set()
        for a, b, colour, label in panel.spans:
            lo, hi = (a / fs, b / fs) if fs else (a, b)
            ax.axvspan(lo, hi, color=colour, alpha=0.2, lw=0, label=None if label in seen else label)
            seen.add(label)
        for lead in range(L):
            ax.plot(t, panel.x_LT[lead] - lead * _LEAD_SPACING_MV, lw=0.5, color="black")
        ax.set_yticks([-i * _LEAD_SPACING_MV for i in range(L)])
        ax.set_yticklabels(list(LEADS[:L]) if L <= len(LEADS) else [str(i) for i in range(L)])
        ax.set_xlabel("time (s)" if fs else "sample")
        ax.set_title(panel.title, fontsize=9)
        if seen:
            ax.legend(loc="upper right", fontsize=7)
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=10)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return out_path


def views_figure(method: torch.nn.Module, x_LT: torch.Tensor, out_path: str | Path, *, seed: int = 0,
                 title: Optional[str] = None, fs: float | None = None) -> Path:
    """Write a PNG of the window ``x_LT`` and ``method``'s views of it to ``out_path``; returns the path.

    ``x_LT`` is moved to the method's device; the views are drawn from a generator seeded with ``seed``.
    """
    param = next(iter(method.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    panels, note = method_views(method, x_LT[None].to(device), generator)
    return _plot(panels, note, title or type(method).__name__, Path(out_path), fs)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

def _views(args: argparse.Namespace) -> Path:
    from ecg_core import distributed as D
    from ecg_core.config import load_config
    from ecg_core.data.loader import normalize_windows
    from ecg_core.data.store import EcgStore
    from ecg_core.methods import build_method
    from jobs.config import PretrainConfig

    recipe = Path(args.recipe)
    if not recipe.is_file():
        raise ValueError(f"recipe not found: {recipe}")
    cfg = load_config(PretrainConfig, [recipe], list(args.set or []))
    store = EcgStore(args.store)
    record = args.record if args.record is not None else str(store.records["record_id"].iat[0])
    window = cfg.data.window
    x_LT = torch.from_numpy(store.read_window(record, 0, window))
    x_LT = normalize_windows(x_LT[None], cfg.data.normalize)[0]
    D.seed_everything(args.seed)
    method = build_method(cfg, generator_seed=args.seed)
    name = cfg.method.name
    out = Path(args.out) / f"{name}_views_{record}.png"
    return views_figure(method, x_LT, out, seed=args.seed, title=f"{name}: record {record} of {store.path.name}",
                        fs=float(store.fs))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecg_core.viz", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    views = sub.add_parser("views", help="PNG of one ECG window and the views a method makes of it")
    views.add_argument("--recipe", required=True, help="a pretraining recipe, e.g. experiments/simclr.yaml")
    views.add_argument("--store", required=True, help="an ECG Zarr store (e.g. build/demo/demo.zarr)")
    views.add_argument("--out", required=True, help="output directory for the PNG")
    views.add_argument("--record", default=None, help="record id (default: the store's first record)")
    views.add_argument("--seed", type=int, default=0, help="seed of the weights and of the drawn views")
    views.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="dotted config override, repeatable (e.g. encoder.params.depth=2)")
    args = parser.parse_args(argv)
    try:
        path = _views(args)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:   # ConfigError, StoreError, ...
        msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {' '.join(msg.split())}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
