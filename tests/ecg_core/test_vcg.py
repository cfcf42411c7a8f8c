"""3KG's augmentations: the Dower round trip on real ECG windows, VCG rotation and scaling, time and lead masks.

Real windows: demo records (``ecg_core.data.demo``, synthesised as a cardiac dipole projected with the Dower
matrix, written and read back as WFDB), once without their electrode noise (purely dipolar: the round trip
must recover them) and PTB-XL records of ``tests/data/ptbxl-real`` (CinC 2020 copies, 200 counts/mV).

Shapes: ``B`` batch, ``L`` leads, ``T`` time, ``E`` independent leads, ``V`` VCG axes.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import wfdb

import ecg_core.data.demo as demo
from ecg_core.config import ConfigError
from ecg_core.transforms import TRANSFORMS, build_transforms
from ecg_core.transforms.masks import LeadMask, TimeMask
from ecg_core.transforms.vcg import (DOWER, INDEPENDENT_INDICES, INVERSE_DOWER, VCGRotateScale, dower_12,
                                     ecg_to_vcg, rotation_matrices, vcg_to_ecg)

ROOT = Path(__file__).resolve().parents[2]
PTBXL = ROOT / "tests" / "data" / "ptbxl-real" / "cinc2020_HR"
IND = list(INDEPENDENT_INDICES)
I_, II, III, AVR, AVL, AVF = range(6)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _read(paths) -> torch.Tensor:
    return torch.tensor(np.stack([wfdb.rdrecord(str(p)).p_signal.T for p in paths]))   # (B, 12, T) mV, float64


@pytest.fixture(scope="module")
def dipolar_BLT(tmp_path_factory) -> torch.Tensor:
    """Four 1-s demo records without the electrode noise that the generator adds per lead."""
    out = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "_noise", lambda p, rng, t_T, resp_hz: np.zeros((len(demo.DOWER_LEADS), t_T.size)))
        table = demo.generate_demo(out, n_patients=4, records_per_patient=(1, 1), duration_s=1.0)
    return _read(out / p for p in table["path"])


@pytest.fixture(scope="module")
def ptbxl_BLT() -> torch.Tensor:
    """Ten real PTB-XL records, 2 s each, in mV (the CinC 2020 copies store 200 counts per mV, read as 1000)."""
    return _read(sorted(p.with_suffix("") for p in PTBXL.glob("*.hea")))[..., :1000] / 5.0


def assert_limb_leads_consistent(x_BLT: torch.Tensor, atol: float) -> None:
    """Einthoven (III = II - I) and Goldberger (aVR, aVL, aVF) relations."""
    i, ii = x_BLT[:, I_], x_BLT[:, II]
    torch.testing.assert_close(x_BLT[:, III], ii - i, atol=atol, rtol=0)
    torch.testing.assert_close(x_BLT[:, AVR], -(i + ii) / 2, atol=atol, rtol=0)
    torch.testing.assert_close(x_BLT[:, AVL], i - ii / 2, atol=atol, rtol=0)
    torch.testing.assert_close(x_BLT[:, AVF], ii - i / 2, atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------------
# Dower transform
# ------------------------------------------------------------------------------------------------

def test_tables_are_those_of_the_demo_generator_and_nearly_inverse():
    np.testing.assert_array_equal(np.array(DOWER), demo.DOWER)
    np.testing.assert_array_equal(np.array(INVERSE_DOWER), demo.INVERSE_DOWER)
    product = torch.tensor(INVERSE_DOWER, dtype=torch.float64) @ torch.tensor(DOWER, dtype=torch.float64)
    torch.testing.assert_close(product, torch.eye(3, dtype=torch.float64), atol=7e-4, rtol=0)


def test_dower_12_rows_are_the_seed_table_with_exact_limb_leads():
    d_LV = dower_12()
    assert_limb_leads_consistent(d_LV[None], atol=1e-15)   # the columns as "time"
    # The seed's (3KG) table of the derived leads, rounded to three decimals.
    seed_4V = torch.tensor([[-0.397, 1.301, -0.191], [-0.434, -0.415, 0.037],
                            [0.515, -0.768, 0.125], [-0.081, 1.184, -0.162]], dtype=torch.float64)
    torch.testing.assert_close(d_LV[2:6], seed_4V, atol=7e-4, rtol=0)
    torch.testing.assert_close(d_LV[IND], torch.tensor(DOWER, dtype=torch.float64))


def test_round_trip_recovers_dipolar_demo_windows(dipolar_BLT):
    y_BLT = vcg_to_ecg(ecg_to_vcg(dipolar_BLT))
    assert y_BLT.shape == dipolar_BLT.shape
    # Independent leads: within 2 uV (1 uV quantisation of the records + the inverse table's 7e-4 rounding
    # on ~2 mV), i.e. 0.1 % of the largest amplitude.
    assert dipolar_BLT[:, IND].abs().max() > 1.0
    torch.testing.assert_close(y_BLT[:, IND], dipolar_BLT[:, IND], atol=2e-3, rtol=0)
    # Derived leads: exactly consistent in the output, and equal to the recorded ones (derived from the
    # quantised I and II, rounded to 1 uV).
    assert_limb_leads_consistent(y_BLT, atol=1e-12)
    assert_limb_leads_consistent(dipolar_BLT, atol=6e-4)
    torch.testing.assert_close(y_BLT[:, 2:6], dipolar_BLT[:, 2:6], atol=3e-3, rtol=0)


def test_round_trip_of_real_records_keeps_most_of_the_signal(ptbxl_BLT):
    """A real ECG is not exactly a dipole: the round trip is the projection onto the dipolar part."""
    x_BET = ptbxl_BLT[:, IND] - ptbxl_BLT[:, IND].mean(dim=-1, keepdim=True)
    y_BLT = vcg_to_ecg(ecg_to_vcg(ptbxl_BLT))
    residual_BET = (y_BLT[:, IND] - ptbxl_BLT[:, IND])
    explained_B = 1 - residual_BET.pow(2).sum(dim=(1, 2)) / x_BET.pow(2).sum(dim=(1, 2))
    assert (explained_B > 0.7).all() and explained_B.mean() > 0.8
    assert_limb_leads_consistent(y_BLT, atol=1e-12)
    assert_limb_leads_consistent(ptbxl_BLT, atol=2e-3)   # the records themselves (5 uV steps)
    # Projecting twice changes little more (P D = I up to the table's rounding).
    torch.testing.assert_close(vcg_to_ecg(ecg_to_vcg(y_BLT)), y_BLT, atol=5e-3, rtol=0)


def test_needs_twelve_leads():
    with pytest.raises(ValueError, match="12"):
        ecg_to_vcg(torch.zeros(2, 8, 10))
    with pytest.raises(ValueError, match="12"):
        VCGRotateScale()(torch.zeros(2, 8, 10), gen())


# ------------------------------------------------------------------------------------------------
# Rotation and scaling
# ------------------------------------------------------------------------------------------------

def _seed_rotation(angles: list[float], order: list[int]) -> np.ndarray:
    """3KG's ``RandomRotation`` matrices, written out: the axis rotations multiplied in ``order``."""
    def rx(t):
        return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])

    def ry(t):
        return np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])

    def rz(t):
        return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])

    fns = (rx, ry, rz)
    out = np.eye(3)
    for axis in order:
        out = out @ fns[axis](angles[axis])
    return out


def test_rotation_matrices_match_the_seed_and_are_rotations():
    angle_BA = (torch.rand(16, 3, generator=gen(1), dtype=torch.float64) - 0.5) * 2 * math.pi
    order_BA = torch.rand(16, 3, generator=gen(2)).argsort(dim=1)
    r_B33 = rotation_matrices(angle_BA, order_BA)
    for b in range(16):
        expected = _seed_rotation(angle_BA[b].tolist(), order_BA[b].tolist())
        np.testing.assert_allclose(r_B33[b].numpy(), expected, atol=1e-12)
    eye = torch.eye(3, dtype=torch.float64).expand(16, 3, 3)
    torch.testing.assert_close(r_B33 @ r_B33.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(r_B33), torch.ones(16, dtype=torch.float64))
    assert torch.equal(rotation_matrices(torch.zeros(4, 3, dtype=torch.float64), order_BA[:4]), eye[:4])


def test_zero_severity_is_the_identity(ptbxl_BLT):
    for keep in (False, True):
        assert torch.equal(VCGRotateScale(max_angle=0.0, max_scale=1.0, keep_residual=keep)(ptbxl_BLT, gen()),
                           ptbxl_BLT)
    # With the residual kept, the map is continuous at zero severity (without, it drops the non-dipolar part).
    almost = VCGRotateScale(max_angle=1e-6, max_scale=1.0 + 1e-9, keep_residual=True)(ptbxl_BLT, gen())
    torch.testing.assert_close(almost, ptbxl_BLT, atol=1e-6, rtol=0)


def test_rotations_preserve_vcg_vector_norms(dipolar_BLT):
    y_BLT = VCGRotateScale(max_angle=45.0, max_scale=1.0)(dipolar_BLT, gen(3))
    v_BVT, w_BVT = ecg_to_vcg(dipolar_BLT), ecg_to_vcg(y_BLT)
    # |P D R v| = |v| up to P D = I (7e-4); and the vectors did turn.
    torch.testing.assert_close(w_BVT.norm(dim=1), v_BVT.norm(dim=1), atol=1e-4, rtol=2e-3)
    assert (w_BVT - v_BVT).norm(dim=1).max() > 0.1
    assert_limb_leads_consistent(y_BLT, atol=1e-12)


def test_scaling_multiplies_each_vcg_axis_by_one_factor_in_range(dipolar_BLT):
    t = VCGRotateScale(max_angle=0.0, max_scale=1.5)
    y_BLT = t(dipolar_BLT, gen(4))
    v_BVT, w_BVT = ecg_to_vcg(dipolar_BLT), ecg_to_vcg(y_BLT)
    factor_BV = (w_BVT * v_BVT).sum(-1) / v_BVT.pow(2).sum(-1)          # least-squares factor per axis
    torch.testing.assert_close(w_BVT, factor_BV[..., None] * v_BVT, atol=2e-3, rtol=0)
    _, scale_BV = t.draw(dipolar_BLT.shape[0], gen(4), dipolar_BLT.device)
    torch.testing.assert_close(factor_BV, scale_BV, atol=0, rtol=3e-3)
    many_BV = t.draw(4000, gen(5), torch.device("cpu"))[1]
    assert many_BV.min() >= 1 / 1.5 - 1e-12 and many_BV.max() <= 1.5 + 1e-12
    assert (many_BV < 1).float().mean().item() == pytest.approx(0.5, abs=0.03)   # inverted with p = 1/2


def test_angles_fill_the_range_and_orders_vary():
    t = VCGRotateScale(max_angle=30.0, max_scale=1.0)
    r_B33, scale_BV = t.draw(4000, gen(6), torch.device("cpu"))
    assert torch.equal(scale_BV, torch.ones_like(scale_BV))
    # The rotation angle of the composition is at most the sum of the three: 90 degrees here.
    cos_B = ((r_B33.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
    angle_B = torch.rad2deg(torch.arccos(cos_B))
    assert angle_B.max() <= 90.0 + 1e-9 and angle_B.max() > 45.0 and angle_B.min() < 10.0


def test_keep_residual_keeps_exactly_the_non_dipolar_part(ptbxl_BLT):
    projected = VCGRotateScale(keep_residual=False)(ptbxl_BLT, gen(7))
    kept = VCGRotateScale(keep_residual=True)(ptbxl_BLT, gen(7))
    residual_BLT = ptbxl_BLT - vcg_to_ecg(ecg_to_vcg(ptbxl_BLT))
    torch.testing.assert_close(kept - projected, residual_BLT, atol=1e-12, rtol=0)


def test_vcg_transform_runs_in_float32_and_validates():
    x_BLT = torch.randn(3, 12, 50, generator=gen(8))
    y_BLT = TRANSFORMS["vcg_rotate_scale"]()(x_BLT, gen())
    assert y_BLT.dtype == torch.float32 and y_BLT.shape == x_BLT.shape
    for params, key in (({"max_scale": 0.5}, "max_scale"), ({"max_angle": -1}, "max_angle"),
                        ({"max_angle": 200}, "max_angle"), ({"keep_residual": 1}, "keep_residual")):
        with pytest.raises(ConfigError) as info:
            build_transforms([{"name": "vcg_rotate_scale", **params}], "aug")
        assert info.value.key == f"aug[0].{key}"


# ------------------------------------------------------------------------------------------------
# Masks
# ------------------------------------------------------------------------------------------------

def _seed_time_mask(x_BLT: torch.Tensor, start_BL: torch.Tensor, ratio: float) -> torch.Tensor:
    """3KG's ``RandomTimeMask`` loop, written out, with the given starts."""
    x_BLT = x_BLT.clone()
    B, L, T = x_BLT.shape
    n = int(T * ratio)
    for b in range(B):
        for lead in range(L):
            start = int(start_BL[b, lead])
            stop = start + n
            if stop >= T:
                x_BLT[b, lead, start:T] = 0
                x_BLT[b, lead, :stop - T] = 0
            else:
                x_BLT[b, lead, start:stop] = 0
    return x_BLT


@pytest.mark.parametrize("ratio, T", [(0.5, 100), (0.3, 97), (0.95, 40), (1.0, 16)])
def test_time_mask_zeroes_exactly_the_drawn_cyclic_windows(ratio, T):
    x_BLT = torch.rand(5, 12, T, generator=gen(9)) + 1.0   # no zeros of its own
    y_BLT = TimeMask(ratio=ratio)(x_BLT, gen(10))
    start_BL = (torch.rand(5, 12, generator=gen(10)) * T).long()   # the transform's only draw
    assert torch.equal(y_BLT, _seed_time_mask(x_BLT, start_BL, ratio))
    assert ((y_BLT == 0).sum(-1) == int(ratio * T)).all()
    kept = y_BLT != 0
    assert torch.equal(y_BLT[kept], x_BLT[kept])
    assert torch.equal(TimeMask(ratio=ratio).mask(5, 12, T, gen(10), torch.device("cpu")), ~kept)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.9, 1.0])
def test_lead_mask_zeroes_exactly_the_drawn_leads(ratio):
    B, L, T = 6, 12, 20
    x_BLT = torch.rand(B, L, T, generator=gen(11)) + 1.0
    y_BLT = LeadMask(ratio=ratio)(x_BLT, gen(12))
    keys_BL = torch.rand(B, L, generator=gen(12))   # the transform's only draw
    k = int(ratio * L)
    for b in range(B):
        drawn = set(sorted(range(L), key=lambda lead: (keys_BL[b, lead].item(), lead))[:k])
        for lead in range(L):
            if lead in drawn:
                assert (y_BLT[b, lead] == 0).all()
            else:
                assert torch.equal(y_BLT[b, lead], x_BLT[b, lead])


def test_masks_identity_and_validation():
    x_BLT = torch.randn(3, 12, 30, generator=gen(13))
    assert torch.equal(TimeMask(ratio=0.0)(x_BLT, gen()), x_BLT)
    assert torch.equal(TimeMask(ratio=0.03)(x_BLT, gen()), x_BLT)    # floor(0.03 * 30) = 0 samples
    assert torch.equal(LeadMask(ratio=0.0)(x_BLT, gen()), x_BLT)
    assert torch.equal(LeadMask(ratio=0.08)(x_BLT, gen()), x_BLT)    # floor(0.08 * 12) = 0 leads
    assert TRANSFORMS["time_mask"] is TimeMask and TRANSFORMS["lead_mask"] is LeadMask
    for name in ("time_mask", "lead_mask"):
        for bad in (-0.1, 1.5, "half"):
            with pytest.raises(ConfigError) as info:
                build_transforms([{"name": name, "ratio": bad}], "aug")
            assert info.value.key == "aug[0].ratio"
