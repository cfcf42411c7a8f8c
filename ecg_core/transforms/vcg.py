"""3KG's spatial augmentation: rotate and scale the heart's electrical vector, via the vectorcardiogram.

B. Gopal, R. Han, G. Raghupathi, A. Ng, G. Tison, P. Rajpurkar, "3KG: Contrastive Learning of 12-Lead
Electrocardiograms using Physiologically-Inspired Augmentations", ML4H 2021 (arXiv 2106.04452), section
3.2, as coded in seed 1 (``vs:dataprocessing/transforms/vcg.py`` and ``random.py``; seed-methods.md 1.5).

A 12-lead ECG is, to first order, the projection of one time-varying dipole, the vectorcardiogram
(VCG) ``v(t) = (x, y, z)`` in the Frank axes, onto each lead's direction. The Dower transform (Dower,
Machado & Osborne, Clin. Cardiol. 3:87-95, 1980) gives the eight independent leads I, II, V1-V6 from
the VCG, ``x_8 = D v`` (:data:`DOWER`, 8 x 3); the inverse Dower matrix of Edenbrandt & Pahlm
(J. Electrocardiol. 21:361-367, 1988) estimates the VCG from those leads, ``v = P x_8``
(:data:`INVERSE_DOWER`, 3 x 8; ``P D = I`` to 7e-4, it is the pseudo-inverse of ``D`` rounded to three
decimals). The four remaining limb leads follow from I and II by Einthoven's and Goldberger's laws
(III = II - I, aVR = -(I + II) / 2, aVL = I - II / 2, aVF = II - I / 2), so ``D`` extends to all 12
leads (:func:`dower_12`; the seed's table holds the same rows rounded).

The augmentation (:class:`VCGRotateScale`) maps each window to its VCG, rotates it about the three axes
by angles ``U(-theta, theta)`` composed in a random order, scales each axis by ``s ~ U(1, max_scale)``
inverted with probability 1/2 (so ``s`` in ``[1 / max_scale, max_scale]``), and maps back:
``x' = D_12 S R P x_8`` (3KG's ``RandomRotation`` then ``RandomScale``). The output is therefore the
dipole part of the ECG only: whatever the dipole model does not explain (noise, non-dipolar content)
is dropped, as in 3KG. With ``keep_residual`` that part is kept instead:
``x' = x + D_12 (S R - I) P x_8`` (the same view for a purely dipolar ECG, the identity at zero
severity without the projection). At zero severity (``max_angle = 0``, ``max_scale = 1``) the transform
returns its input unchanged, as 3KG skips a no-op augmentation.

The transform is linear in the signal, so it commutes with a global gain (mV or a record-wide scale as
in the seed), but it assumes the leads' physical relation: per-lead normalisation
(``data.normalize: per_lead``) or missing (zeroed) leads break it. Leads are in the canonical order
:data:`ecg_core.data.leads.LEADS` (I, II, III, aVR, aVL, aVF, V1-V6).

Shapes: ``B`` batch, ``L`` leads (12), ``T`` time, ``E`` the eight independent leads, ``V`` the three
VCG axes (x to the patient's left, y to the feet, z to the back).
"""
from __future__ import annotations

import math

import torch

from ecg_core.transforms.ecg import Transform, TransformParamError, _rand, _real, _uniform

__all__ = ["DOWER", "DOWER_LEADS", "INDEPENDENT_INDICES", "INVERSE_DOWER", "VCGRotateScale", "dower_12",
           "ecg_to_vcg", "rotation_matrices", "vcg_to_ecg"]

# Dower et al. 1980, leads (rows I, II, V1-V6) from the Frank dipole (columns x, y, z).
DOWER_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
DOWER = (
    (0.632, -0.235, 0.059),
    (0.235, 1.066, -0.132),
    (-0.515, 0.157, -0.917),
    (0.044, 0.164, -1.387),
    (0.882, 0.098, -1.277),
    (1.213, 0.127, -0.601),
    (1.125, 0.127, -0.086),
    (0.831, 0.076, 0.230),
)
# Edenbrandt & Pahlm 1988, the dipole (rows x, y, z) from leads I, II, V1-V6 (columns).
INVERSE_DOWER = (
    (0.156, -0.010, -0.172, -0.074, 0.122, 0.231, 0.239, 0.194),
    (-0.227, 0.887, 0.057, -0.019, -0.106, -0.022, 0.041, 0.048),
    (0.022, 0.102, -0.229, -0.310, -0.246, -0.063, 0.055, 0.108),
)
# Positions of I, II, V1-V6 in the canonical 12-lead order.
INDEPENDENT_INDICES = (0, 1, 6, 7, 8, 9, 10, 11)


def dower_12(dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """``D_12`` (12 x 3): the 12 canonical leads from the VCG; III, aVR, aVL, aVF from I and II exactly."""
    d_EV = torch.tensor(DOWER, dtype=torch.float64)
    lead_i, lead_ii = d_EV[0], d_EV[1]
    limb_4V = torch.stack([lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2, lead_ii - lead_i / 2])
    return torch.cat([d_EV[:2], limb_4V, d_EV[2:]]).to(dtype=dtype, device=device)


def _inverse_dower(dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    return torch.tensor(INVERSE_DOWER, dtype=dtype, device=device)


def _check_12(x_BLT: torch.Tensor) -> None:
    if x_BLT.dim() != 3 or x_BLT.shape[1] != 12:
        raise ValueError(f"expected (B, 12, T) ECG windows in the canonical lead order, got {tuple(x_BLT.shape)}")


def ecg_to_vcg(x_BLT: torch.Tensor) -> torch.Tensor:
    """``v_BVT = P x_8``: the inverse Dower VCG of 12-lead windows (only I, II, V1-V6 are read)."""
    _check_12(x_BLT)
    x_BET = x_BLT[:, list(INDEPENDENT_INDICES)]
    return torch.einsum("ve,bet->bvt", _inverse_dower(x_BLT.dtype, x_BLT.device), x_BET)


def vcg_to_ecg(v_BVT: torch.Tensor) -> torch.Tensor:
    """``x_BLT = D_12 v``: the 12 canonical leads of a VCG (Dower; derived limb leads exactly consistent)."""
    if v_BVT.dim() != 3 or v_BVT.shape[1] != 3:
        raise ValueError(f"expected (B, 3, T) VCGs, got {tuple(v_BVT.shape)}")
    return torch.einsum("lv,bvt->blt", dower_12(v_BVT.dtype, v_BVT.device), v_BVT)


def _axis_rotations_BA33(angle_BA: torch.Tensor) -> torch.Tensor:
    """Rotations about x, y, z (``A`` = 3 axes) by ``angle_BA`` radians (right-handed, as 3KG's ``R``)."""
    c_BA, s_BA = angle_BA.cos(), angle_BA.sin()
    one, zero = torch.ones_like(c_BA), torch.zeros_like(c_BA)
    c, s = c_BA.unbind(1), s_BA.unbind(1)
    o, z = one[:, 0], zero[:, 0]
    rx = torch.stack([o, z, z, z, c[0], -s[0], z, s[0], c[0]], dim=1)
    ry = torch.stack([c[1], z, s[1], z, o, z, -s[1], z, c[1]], dim=1)
    rz = torch.stack([c[2], -s[2], z, s[2], c[2], z, z, z, o], dim=1)
    return torch.stack([rx, ry, rz], dim=1).reshape(-1, 3, 3, 3)


def rotation_matrices(angle_BA: torch.Tensor, order_BA: torch.Tensor) -> torch.Tensor:
    """``R_B33 = R_{o0}(a_{o0}) R_{o1}(a_{o1}) R_{o2}(a_{o2})``: the three axis rotations of each sample
    (angles in radians, one per axis x, y, z) composed in the order given by the permutation ``order_BA``."""
    r_BA33 = _axis_rotations_BA33(angle_BA)
    r_BA33 = r_BA33.gather(1, order_BA[:, :, None, None].expand_as(r_BA33))
    return r_BA33[:, 0] @ r_BA33[:, 1] @ r_BA33[:, 2]


class VCGRotateScale(Transform):
    """3KG's VCG rotation and scaling (see the module docstring), per sample, one VCG round trip.

    Args:
        max_angle: ``theta`` in degrees; each axis angle is ``U(-theta, theta)``. 45 = 3KG's benchmark
            setting (the kwantlin fork's ``create_3kg_aug``; the seed CLI's default 0 turns it off).
        max_scale: ``>= 1``; per-axis factor ``U(1, max_scale)``, inverted with probability 1/2. 1.5 = 3KG's
            benchmark setting (CLI default 1: off).
        keep_residual: keep the part of the ECG the dipole model does not explain (project's option;
            3KG drops it: ``False``).

    ``max_angle = 0`` and ``max_scale = 1`` is the identity. Needs 12-lead windows.
    """

    def __init__(self, max_angle: float = 45.0, max_scale: float = 1.5, keep_residual: bool = False) -> None:
        super().__init__(max_angle=max_angle, max_scale=max_scale, keep_residual=keep_residual)
        self.max_angle = _real("max_angle", max_angle, 0.0)
        if self.max_angle > 180.0:
            raise TransformParamError("max_angle", f"must be <= 180 degrees, got {max_angle!r}")
        self.max_scale = _real("max_scale", max_scale, 1.0)
        if not isinstance(keep_residual, bool):
            raise TransformParamError("keep_residual", f"expected true or false, got {keep_residual!r}")
        self.keep_residual = keep_residual

    def draw(self, B: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(R_B33, S_B3)``: each sample's rotation matrix and per-axis scale factors (float64)."""
        theta = math.radians(self.max_angle)
        angle_BA = _uniform(-theta, theta, (B, 3), generator, device).double()
        order_BA = _rand((B, 3), generator, device).argsort(dim=1, stable=True)   # a uniform permutation
        scale_BA = _uniform(1.0, self.max_scale, (B, 3), generator, device).double()
        invert_BA = _rand((B, 3), generator, device) < 0.5
        scale_BA = torch.where(invert_BA, 1.0 / scale_BA, scale_BA)
        return rotation_matrices(angle_BA, order_BA), scale_BA

    def apply(self, x_BLT, generator):
        if self.max_angle == 0.0 and self.max_scale == 1.0:
            return x_BLT
        _check_12(x_BLT)
        B = x_BLT.shape[0]
        dev = x_BLT.device
        r_B33, scale_B3 = self.draw(B, generator, dev)
        m_B33 = scale_B3[:, :, None] * r_B33                       # S R: rotate, then scale (3KG's order)
        if self.keep_residual:
            m_B33 = m_B33 - torch.eye(3, dtype=m_B33.dtype, device=dev)
        # One (12 x 8) matrix per sample, composed in float64, applied to the independent leads.
        a_BLE = dower_12(torch.float64, dev) @ m_B33 @ _inverse_dower(torch.float64, dev)
        x_BET = x_BLT[:, list(INDEPENDENT_INDICES)]
        y_BLT = torch.einsum("ble,bet->blt", a_BLE.to(x_BLT.dtype), x_BET)
        return x_BLT + y_BLT if self.keep_residual else y_BLT
