"""Rendering ECG windows as plot images: against a naive per-pixel loop, flat and constant signals, connected
traces, layouts, PNG round trip.

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``H`` image side, ``Hp``/``Wp`` panel height/width.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ecg_core.render import LAYOUTS, check_layout, panel_column_range, render_ecg_image, save_png


def naive_render(x_LT, size, layout, amplitude_mv, grid_mv, grid_value):
    """The documented rendering, one pixel at a time in Python floats (float64)."""
    rows, cols, split = LAYOUTS[layout]
    L, T = len(x_LT), len(x_LT[0])
    Hp, Wp = size // rows, size // cols
    px_per_mv = (Hp / 2) / amplitude_mv
    img = [[0.0] * size for _ in range(size)]
    for j in range(L):
        r0, c0 = (j % rows) * Hp, (j // rows) * Wp
        seg = x_LT[j][(j // rows) * (T // cols):(j // rows + 1) * (T // cols)] if split else x_LT[j]
        S = len(seg)

        def at(u):   # the polyline through the samples, sample i at position i
            i = min(int(math.floor(u)), S - 2)
            return seg[i] * (1 - (u - i)) + seg[i + 1] * (u - i)

        for c in range(Wp):
            left, right = c * (S - 1) / Wp, (c + 1) * (S - 1) / Wp
            values = [at(left), at(right)] + [seg[i] for i in range(S) if left <= i <= right]
            top = math.floor(min(max(Hp / 2 - max(values) * px_per_mv, 0), Hp - 1))
            bottom = math.floor(min(max(Hp / 2 - min(values) * px_per_mv, 0), Hp - 1))
            for r in range(Hp):
                on_grid = False
                if grid_mv > 0:
                    step = grid_mv * px_per_mv
                    # a grid line crosses pixel r (rows measured from the baseline) or column c
                    on_grid = any(r - 0.5 - Hp / 2 < k * step <= r + 0.5 - Hp / 2 for k in range(-size, size + 1)) \
                        or any(c - 0.5 < k * step <= c + 0.5 for k in range(0, size + 1))
                ink = 1.0 if top <= r <= bottom else (grid_value if on_grid else 0.0)
                img[r0 + r][c0 + c] = ink
    return torch.tensor(img)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("T, size, grid_mv", [(40, 24, 0.0), (17, 36, 0.5), (200, 24, 0.3)])
def test_render_matches_a_naive_per_pixel_loop(layout, T, size, grid_mv):
    g = torch.Generator().manual_seed(T + size)
    x_BLT = torch.randn(2, 12, T, generator=g, dtype=torch.float64).float() * 0.8
    img_B1HH = render_ecg_image(x_BLT, size=size, layout=layout, amplitude_mv=1.5, grid_mv=grid_mv, grid_value=0.5)
    assert img_B1HH.shape == (2, 1, size, size) and img_B1HH.dtype == torch.float32
    for b in range(2):
        ref = naive_render(x_BLT[b].double().tolist(), size, layout, 1.5, grid_mv, 0.5)
        assert torch.equal(img_B1HH[b, 0], ref), f"{int((img_B1HH[b, 0] != ref).sum())} pixels differ"


def test_panel_column_range_is_the_polyline_range():
    # 3 samples over 4 columns: columns without a sample inside take the interpolated edges only.
    lo, hi = panel_column_range(torch.tensor([[[0.0, 2.0, -2.0]]]), 4)
    assert torch.allclose(lo[0, 0], torch.tensor([0.0, 1.0, 0.0, -2.0]))
    assert torch.allclose(hi[0, 0], torch.tensor([1.0, 2.0, 2.0, 0.0]))
    # many samples per column: the extremes inside count
    x = torch.zeros(1, 1, 101)
    x[0, 0, 33] = 5.0
    x[0, 0, 66] = -5.0
    lo, hi = panel_column_range(x, 10)
    assert hi[0, 0, 3] == 5.0 and lo[0, 0, 6] == -5.0 and hi[0, 0, 0] == 0.0 and lo[0, 0, 9] == 0.0


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_flat_signal_is_one_straight_line_per_panel(layout):
    rows, cols, _ = LAYOUTS[layout]
    size = 120
    img_HW = render_ecg_image(torch.zeros(1, 12, 500), size=size, layout=layout, grid_mv=0)[0, 0]
    Hp, Wp = size // rows, size // cols
    expect = torch.zeros(size, size)
    for r in range(rows):
        expect[r * Hp + Hp // 2, :cols * Wp] = 1.0   # the baseline row of every panel, every column
    assert torch.equal(img_HW, expect)


def test_amplitude_maps_to_the_right_rows():
    # 6x2 at 240 px: panels 40 x 120, 20 px per 1.5 mV above/below the baseline row 20.
    # values whose row positions are not integers: no float-rounding ambiguity at a row boundary
    amplitudes = torch.tensor([0.0, 0.31, -0.31, 0.8, -0.8, 1.4, -1.4, 3.0, -3.0, 0.1, 1.17, -1.07])
    x_BLT = amplitudes[None, :, None].expand(1, 12, 300)
    img_HW = render_ecg_image(x_BLT, size=240, layout="6x2", amplitude_mv=1.5, grid_mv=0)[0, 0]
    for j, a in enumerate(amplitudes.tolist()):
        r0, c0 = (j % 6) * 40, (j // 6) * 120
        expect_row = min(max(math.floor(20 - a * 20 / 1.5), 0), 39)   # clipped to the panel beyond 1.5 mV
        panel = img_HW[r0:r0 + 40, c0:c0 + 120]
        assert panel.sum(dim=1).nonzero().flatten().tolist() == [expect_row], (j, a)
        assert bool((panel[expect_row] == 1).all())


def test_steep_step_is_drawn_as_a_connected_vertical_run():
    x_BLT = torch.zeros(1, 12, 100)
    x_BLT[:, :, 50:] = 1.0   # a 1 mV step between samples 49 and 50
    img_HW = render_ecg_image(x_BLT, size=120, layout="12x1", amplitude_mv=1.0, grid_mv=0)[0, 0]
    panel = img_HW[:10]   # lead I: rows 0-9, baseline row 5, +1 mV at row 0
    rows_inked = [panel[:, c].nonzero().flatten().tolist() for c in range(120)]
    assert all(rows_inked)                          # every column has ink (no gap)
    for a, b in zip(rows_inked, rows_inked[1:]):    # neighbouring columns' runs touch: a connected trace
        assert min(b) <= max(a) + 1 and min(a) <= max(b) + 1
    assert sorted({r for col in rows_inked for r in col}) == list(range(6))   # rows 5 (0 mV) to 0 (1 mV) all drawn
    assert max(len(col) for col in rows_inked) >= 3   # the step's columns are vertical runs, not dots


def test_time_split_layout_shows_consecutive_quarters():
    # 3x4: column c of lead j = quarter j // 3; a signal that is c mV in quarter c shows it in column c only.
    x_BLT = (torch.arange(400) // 100).float()[None, None].expand(1, 12, 400) * 0.25
    img_HW = render_ecg_image(x_BLT, size=120, layout="3x4", amplitude_mv=1.0, grid_mv=0)[0, 0]
    for j in range(12):
        r0, c0, q = (j % 3) * 40, (j // 3) * 30, j // 3
        row = math.floor(20 - 0.25 * q * 20)
        assert img_HW[r0:r0 + 40, c0:c0 + 30].sum(dim=1).nonzero().flatten().tolist() == [row]


def test_padding_leaves_background_and_grid_intensity():
    img_HW = render_ecg_image(torch.full((1, 12, 50), 5.0), size=100, layout="3x4", grid_mv=0.5, grid_value=0.25)[0, 0]
    assert torch.equal(img_HW[99], torch.zeros(100))   # 3 x 33 = 99 rows of panels, 1 of padding
    assert set(img_HW.unique().tolist()) == {0.0, 0.25, 1.0}


def test_check_layout_errors():
    with pytest.raises(ValueError, match="layout must be"):
        check_layout("4x4", 12, 224)
    with pytest.raises(ValueError, match="panels for 8 leads"):
        check_layout("6x2", 8, 224)
    with pytest.raises(ValueError, match="too small"):
        check_layout("12x1", 12, 20)
    with pytest.raises(ValueError, match="fewer than 2 samples"):
        check_layout("3x4", 12, 224, window=7)


def test_png_round_trip(tmp_path):
    from PIL import Image

    x_BLT = torch.randn(1, 12, 500, generator=torch.Generator().manual_seed(0)) * 0.5
    img_B1HH = render_ecg_image(x_BLT, size=64)
    save_png(img_B1HH[0], tmp_path / "ecg.png")
    back = np.asarray(Image.open(tmp_path / "ecg.png"))
    assert back.shape == (64, 64) and back.dtype == np.uint8
    expect = ((1 - img_B1HH[0, 0]) * 255).round().to(torch.uint8).numpy()   # ink dark on white paper
    assert np.array_equal(back, expect)
    save_png(img_B1HH[0].expand(3, 64, 64), tmp_path / "rgb.png")
    assert np.asarray(Image.open(tmp_path / "rgb.png")).shape == (64, 64, 3)
    with pytest.raises(ValueError):
        save_png(torch.zeros(2, 8, 8), tmp_path / "bad.png")
