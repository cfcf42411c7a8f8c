"""Render 12-lead ECG windows as paper-style plot images, vectorised in torch (no per-sample matplotlib).

Seed 5 (marthajoddrell/MAE_ECG_Classification, seed-methods.md section 5) trained an MAE on PNG plots of
the CinC 2021 signals made with ``ecg_plot`` (its defaults: 2 columns of leads, order I, II, III, aVR, aVL,
aVF, V1-V6, red mm grid); the rendering code itself is not in the repository. Here the plot is made on the
fly in the data path, so every window and augmentation is rendered at no storage cost:

- layout (:data:`LAYOUTS`): a grid of ``rows x cols`` panels, one per lead, filled column by column
  (lead ``j`` in row ``j % rows``, column ``j // rows``, as ``ecg_plot``). ``"6x2"`` is ``ecg_plot``'s
  default (each panel the whole window); ``"3x4"`` the standard printed 12-lead sheet (column ``c`` shows the
  ``c``-th quarter of the window: I-III, then aVR-aVF, V1-V3, V4-V6, as 4 x 2.5 s of a 10 s record);
  ``"12x1"`` 12 stacked full-length rows.
- trace: each panel's samples form a polyline (sample ``i`` at horizontal position ``i``); pixel column
  ``c`` of a ``W``-pixel panel covers positions ``[c (S-1)/W, (c+1)(S-1)/W]`` and is inked over the rows
  of the polyline's min..max value on that interval: the interpolated values at both column edges and
  every sample inside. Neighbouring columns share an edge value, so the trace is connected (vertical
  runs fill steep QRS slopes) whether a column holds many samples or none.
- amplitude: the panel's vertical centre is 0 mV and its height spans ``2 * amplitude_mv``; values beyond
  are clipped to the panel's edge rows. Row ``r`` covers ``[r, r+1)`` in pixel units, top row 0.
- optional grid lines every ``grid_mv`` millivolts (vertically from the baseline; the same pixel spacing
  horizontally), of intensity ``grid_value``; ink is 1, background 0.

The image is ``size x size``; panels are ``size // rows`` by ``size // cols`` pixels, and the remaining
bottom rows / right columns stay background. All operations are gathers, comparisons and reductions over
fixed shapes: no scatter (deterministic on GPU) and no gradient (the image is a constant of the input).

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``S`` samples per panel, ``W`` panel width, ``K`` samples
per pixel column (padded), ``Hp`` panel height, ``H`` image height/width.
"""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["LAYOUTS", "check_layout", "panel_column_range", "render_ecg_image", "save_png"]

LAYOUTS: dict[str, tuple[int, int, bool]] = {
    "6x2": (6, 2, False),    # ecg_plot default (columns=2), each panel the whole window
    "3x4": (3, 4, True),     # printed 12-lead sheet: each column a quarter of the window
    "12x1": (12, 1, False),  # 12 stacked rows
}
"""Layout name -> ``(rows, cols, split_time)``; ``split_time``: column ``c`` shows the ``c``-th ``1/cols``
of the window, otherwise every panel shows the whole window."""


def check_layout(layout: str, in_leads: int, size: int, window: int | None = None) -> None:
    """``ValueError`` (naming the argument) unless the layout exists, has one panel per lead, fits ``size``
    pixels with at least 2 pixels per panel, and (when ``window`` is given) leaves >= 2 samples per panel."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    rows, cols, split = LAYOUTS[layout]
    if rows * cols != in_leads:
        raise ValueError(f"layout {layout} has {rows * cols} panels for {in_leads} leads")
    if size // rows < 2 or size // cols < 2:
        raise ValueError(f"image_size {size} is too small for layout {layout}")
    if window is not None and (window // cols if split else window) < 2:
        raise ValueError(f"layout {layout} leaves fewer than 2 samples per panel of a {window}-sample window")


def panel_column_range(x_BLS: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo_BLW, hi_BLW)``: min and max of the polyline through ``x_BLS`` over each of ``width`` columns.

    Column ``c`` covers positions ``[c (S-1)/W, (c+1)(S-1)/W]``: its range is over the interpolated values
    at both edges and the samples ``ceil(left) .. floor(right)`` inside. Those samples are gathered into a
    ``(W, K)`` index table padded by repeating the column's left edge (which changes no min/max); ``K`` is
    the most samples any column holds (at least 1).
    """
    S = x_BLS.shape[-1]
    device = x_BLS.device
    # Edge positions in float64: the sample ranges below must not depend on float32 rounding.
    edge_E = torch.arange(width + 1, dtype=torch.float64, device=device) * ((S - 1) / width)
    i0_E = edge_E.floor().long().clamp(0, S - 2)
    frac_E = (edge_E - i0_E).to(x_BLS.dtype)
    edge_BLE = x_BLS[..., i0_E] * (1 - frac_E) + x_BLS[..., i0_E + 1] * frac_E
    first_W = edge_E[:-1].ceil().long()
    last_W = edge_E[1:].floor().long()
    n_max = max(int((last_W - first_W + 1).max()), 1)
    idx_WK = first_W[:, None] + torch.arange(n_max, device=device)[None, :]
    inside_WK = idx_WK <= last_W[:, None]
    inner_BLWK = x_BLS[..., idx_WK.clamp(0, S - 1)]
    left_BLW, right_BLW = edge_BLE[..., :-1], edge_BLE[..., 1:]
    inner_BLWK = torch.where(inside_WK, inner_BLWK, left_BLW[..., None])
    lo_BLW = torch.minimum(torch.minimum(left_BLW, right_BLW), inner_BLWK.amin(dim=-1))
    hi_BLW = torch.maximum(torch.maximum(left_BLW, right_BLW), inner_BLWK.amax(dim=-1))
    return lo_BLW, hi_BLW


@torch.no_grad()
def render_ecg_image(x_BLT: torch.Tensor, size: int = 224, layout: str = "6x2", amplitude_mv: float = 1.5,
                     grid_mv: float = 0.5, grid_value: float = 0.5) -> torch.Tensor:
    """float32 ``(B, 1, size, size)`` plot of ``x_BLT`` (mV): ink 1, grid ``grid_value``, background 0.

    Args:
        x_BLT: the signals; ``L`` must equal the layout's panel count (12).
        size: image height and width in pixels.
        layout: a key of :data:`LAYOUTS`.
        amplitude_mv: half the panel height in mV (default 1.5: ``ecg_plot``'s ``row_height`` 6 large squares
            of 0.5 mV per row).
        grid_mv: grid spacing in mV (``ecg_plot``'s major grid, 0.5 mV); 0 for no grid.
        grid_value: grid line intensity.
    """
    B, L, T = x_BLT.shape
    check_layout(layout, L, size, T)
    rows, cols, split = LAYOUTS[layout]
    Hp, Wp = size // rows, size // cols
    x_BLT = x_BLT.float()
    if split:   # lead j -> column j // rows -> that column's share of the window
        S = T // cols
        start_L = (torch.arange(L, device=x_BLT.device) // rows) * S
        x_BLS = torch.gather(x_BLT, 2, (start_L[:, None] + torch.arange(S, device=x_BLT.device)).expand(B, L, S))
    else:
        x_BLS = x_BLT
    lo_BLW, hi_BLW = panel_column_range(x_BLS, Wp)
    px_per_mv = (Hp / 2) / amplitude_mv
    # Higher voltage is higher on the page: the max gives the top (smallest) row.
    top_BLW = (Hp / 2 - hi_BLW * px_per_mv).clamp(0, Hp - 1).floor()
    bottom_BLW = (Hp / 2 - lo_BLW * px_per_mv).clamp(0, Hp - 1).floor()
    r_H = torch.arange(Hp, device=x_BLT.device, dtype=torch.float32)[:, None]
    ink_BLHW = ((r_H >= top_BLW[:, :, None, :]) & (r_H <= bottom_BLW[:, :, None, :])).float()
    if grid_mv > 0:
        step = grid_mv * px_per_mv
        # Lines at the baseline and every `step` pixels from it (rows), every `step` pixels from the left (columns).
        rowlines_H = (torch.arange(Hp, device=x_BLT.device) + 0.5 - Hp / 2).div(step).floor() != (
            torch.arange(Hp, device=x_BLT.device) - 0.5 - Hp / 2).div(step).floor()
        collines_W = (torch.arange(Wp, device=x_BLT.device) + 0.5).div(step).floor() != (
            torch.arange(Wp, device=x_BLT.device) - 0.5).div(step).floor()
        grid_HW = (rowlines_H[:, None] | collines_W[None, :]).float() * grid_value
        ink_BLHW = torch.maximum(ink_BLHW, grid_HW)
    # Panels are ordered by lead = column-major; the image wants row-major tiles.
    tiles_BCRHW = ink_BLHW.reshape(B, cols, rows, Hp, Wp)
    img_BHW = tiles_BCRHW.permute(0, 2, 3, 1, 4).reshape(B, rows * Hp, cols * Wp)
    img_BHW = torch.nn.functional.pad(img_BHW, (0, size - cols * Wp, 0, size - rows * Hp))
    return img_BHW[:, None].contiguous()


def save_png(img: torch.Tensor, path: str | Path) -> None:
    """Write one image (``(H, W)``, ``(1, H, W)`` or ``(3, H, W)``, values in [0, 1]) as an 8-bit PNG with
    Pillow, ink dark on white (paper-like); :func:`render_ecg_image`'s 0 background becomes white."""
    from PIL import Image

    a = img.detach().float().cpu()
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3:
        a = a.permute(1, 2, 0)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise ValueError(f"save_png takes (H, W), (1, H, W) or (3, H, W), got {tuple(img.shape)}")
    u8 = ((1.0 - a.clamp(0, 1)) * 255.0).round().to(torch.uint8).numpy()
    Image.fromarray(u8).save(str(path), format="PNG")
