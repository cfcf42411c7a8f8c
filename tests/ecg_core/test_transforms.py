"""Augmentations: shape, determinism given the generator, per-sample randomness, identity settings, the
defining property of each one, and config validation of augmentation lists.

Shapes: ``B`` batch, ``L`` leads, ``T`` time.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ecg_core.config import ConfigError
from ecg_core.transforms import TRANSFORMS, Compose, build_transforms
from ecg_core.transforms.ecg import DynamicTimeWarp, _sample_time

B, L, T = 6, 12, 256

# Parameters under which each transform visibly changes a 256-sample window (defaults, except that
# baseline shifts need a window of at least ~1.7 s at the given rate to draw a segment at all).
ACTIVE = {name: {} for name in TRANSFORMS}
ACTIVE["baseline_shift"] = {"fs": 100.0}

# Settings that must leave the input exactly unchanged.
IDENTITY = {
    "gaussian_noise": [{"scale": 0.0}],
    "gaussian_blur": [{"kernel": [1.0]}],
    "channel_resize": [{"magnitude_range": [1.0, 1.0]}],
    "random_resized_crop": [{"crop_ratio_range": [1.0, 1.0]}, {"crop_ratio_range": [1.0, 1.0], "jitter": False}],
    "time_out": [{"crop_ratio_range": [0.0, 0.0]}],
    "dynamic_time_warp": [{"warps": 0}, {"step": 1}],
    "baseline_wander": [{"c_max": 0.0}],
    "powerline_noise": [{"c_max": 0.0}],
    "em_noise": [{"c_max": 0.0}],
    "baseline_shift": [{"c_max": 0.0}, {"fs": 500.0}],   # 256 samples at 500 Hz: no segment fits
    "vcg_rotate_scale": [{"max_angle": 0.0, "max_scale": 1.0},
                         {"max_angle": 0.0, "max_scale": 1.0, "keep_residual": True}],
    "time_mask": [{"ratio": 0.0}],
    "lead_mask": [{"ratio": 0.0}],
}
RANDOM = sorted(set(TRANSFORMS) - {"gaussian_blur"})   # every transform but the fixed blur draws numbers


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def x_BLT() -> torch.Tensor:
    return torch.randn(B, L, T, generator=gen(123))


def test_every_transform_has_identity_settings():
    assert set(IDENTITY) == set(TRANSFORMS) == set(ACTIVE)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_shape_dtype_preserved_input_untouched_and_changed(name, x_BLT):
    before = x_BLT.clone()
    y_BLT = TRANSFORMS[name](**ACTIVE[name])(x_BLT, gen())
    assert y_BLT.shape == x_BLT.shape and y_BLT.dtype == x_BLT.dtype
    assert torch.isfinite(y_BLT).all()
    assert torch.equal(x_BLT, before), "the input was modified in place"
    assert not torch.allclose(y_BLT, x_BLT), "no visible change"


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_deterministic_given_the_generator_and_only_the_generator(name, x_BLT):
    t = TRANSFORMS[name](**ACTIVE[name])
    torch.manual_seed(1)
    a = t(x_BLT, gen(7))
    torch.manual_seed(2)        # the global RNG must play no part
    b = t(x_BLT, gen(7))
    assert torch.equal(a, b)
    if name in RANDOM:
        assert not torch.equal(a, t(x_BLT, gen(8)))


@pytest.mark.parametrize("name", RANDOM)
def test_parameters_are_drawn_per_sample(name):
    x_BLT = torch.randn(1, L, T, generator=gen(5)).expand(8, L, T).contiguous()   # 8 identical samples
    y_BLT = TRANSFORMS[name](**ACTIVE[name])(x_BLT, gen())
    # Baseline shift may draw no segment for some samples; others must still differ from each other.
    distinct = {tuple(y.flatten()[::7].tolist()) for y in y_BLT}
    assert len(distinct) >= 3


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_two_dimensional_input_is_a_batch_of_one(name, x_BLT):
    t = TRANSFORMS[name](**ACTIVE[name])
    assert torch.equal(t(x_BLT[0], gen(3)), t(x_BLT[:1], gen(3))[0])


@pytest.mark.parametrize("name, params", [(n, p) for n, ps in IDENTITY.items() for p in ps])
def test_identity_settings_leave_the_input_unchanged(name, params, x_BLT):
    assert torch.equal(TRANSFORMS[name](**params)(x_BLT, gen()), x_BLT)


# ------------------------------------------------------------------------------------------------
# What each transform does
# ------------------------------------------------------------------------------------------------

def test_gaussian_noise_has_the_given_scale():
    x_BLT = torch.zeros(8, L, 1000)
    y_BLT = TRANSFORMS["gaussian_noise"](scale=0.05)(x_BLT, gen())
    assert y_BLT.std().item() == pytest.approx(0.05, rel=0.02)
    assert y_BLT.mean().abs().item() < 0.002


def test_channel_resize_scales_each_lead_by_one_factor_in_range(x_BLT):
    y_BLT = TRANSFORMS["channel_resize"](magnitude_range=[0.5, 2.0])(x_BLT, gen())
    ratio_BLT = y_BLT / x_BLT
    factor_BL = ratio_BLT[..., 0]
    assert torch.allclose(ratio_BLT, factor_BL[..., None].expand_as(ratio_BLT), rtol=1e-5)
    assert (factor_BL >= 0.5 - 1e-6).all() and (factor_BL <= 2.0 + 1e-6).all()
    assert factor_BL.std() > 0.1   # different per lead and sample


def test_gaussian_blur_is_the_seed_kernel_with_zero_padding(x_BLT):
    kernel = [0.1, 0.2, 0.4, 0.2, 0.1]
    y_BLT = TRANSFORMS["gaussian_blur"]()(x_BLT, gen())
    expected = F.conv1d(x_BLT.reshape(B * L, 1, T), torch.tensor([[kernel]]), padding=2).reshape(B, L, T)
    assert torch.allclose(y_BLT, expected, atol=1e-6)


def test_time_out_zeroes_one_segment_of_all_leads():
    x_BLT = torch.rand(B, L, T, generator=gen(1)) + 1.0   # no zeros of its own
    y_BLT = TRANSFORMS["time_out"](crop_ratio_range=[0.2, 0.4])(x_BLT, gen())
    for y_LT, x_LT in zip(y_BLT, x_BLT):
        zero_T = (y_LT == 0).all(dim=0)
        assert ((y_LT == 0).any(dim=0) == zero_T).all(), "a time step is zeroed in some leads only"
        idx = zero_T.nonzero().flatten()
        assert math.floor(0.2 * T) <= len(idx) <= math.floor(0.4 * T)
        assert (idx.diff() == 1).all(), "the zeroed samples are not contiguous"
        assert torch.equal(y_LT[:, ~zero_T], x_LT[:, ~zero_T])


def test_random_resized_crop_without_jitter_is_a_linear_resampling_of_a_crop():
    ramp_BLT = torch.arange(T, dtype=torch.float32).expand(B, L, T).contiguous()   # value = time index
    y_BLT = TRANSFORMS["random_resized_crop"](crop_ratio_range=[0.5, 1.0], jitter=False)(ramp_BLT, gen())
    for y_T in y_BLT[:, 0]:
        start, stop = y_T[0].item(), y_T[-1].item()
        n = round(stop - start) + 1                        # crop length
        assert start == int(start) and abs(stop - round(stop)) < 1e-3
        assert math.floor(0.5 * T) <= n <= T and 0 <= start and stop <= T - 1
        expected = start + torch.arange(T) * (n - 1) / (T - 1)
        assert torch.allclose(y_T, expected, atol=1e-3)
    assert torch.equal(y_BLT, y_BLT[:, :1].expand_as(y_BLT)), "leads are resampled differently"


def test_random_resized_crop_with_jitter_places_crop_samples_in_order():
    ramp_BLT = torch.arange(T, dtype=torch.float32).expand(B, L, T).contiguous()
    y_BLT = TRANSFORMS["random_resized_crop"](crop_ratio_range=[0.5, 0.5])(ramp_BLT, gen())
    n = math.floor(0.5 * T)
    for y_T in y_BLT[:, 0]:
        start = y_T[0].item()
        assert y_T[-1].item() == start + n - 1              # first and last crop samples at the ends
        assert (y_T.diff() >= 0).all()                       # order kept (monotone time map)
        # Every crop sample appears exactly once (anchors), the rest are interpolated between them.
        whole = y_T[y_T == y_T.round()]
        assert torch.equal(torch.unique(whole), start + torch.arange(n, dtype=torch.float32))
        assert not torch.allclose(y_T, start + torch.arange(T) * (n - 1) / (T - 1))   # irregular, not even
    assert torch.equal(y_BLT, y_BLT[:, :1].expand_as(y_BLT))


def _seed_dtw_once(x_TL: np.ndarray, center: int, radius: int, step: int) -> np.ndarray:
    """The seed's procedure for one warp (Mehari & Strodthoff, ``squeeze`` + ``refill`` + interpolation
    over ``inf`` markers), written out from its description: a naive reference for the vectorised map."""
    arr = x_TL.copy()
    c, r, s = center, radius, step
    squeezed = arr[c - s * r:c + s * r + 1:s].copy()           # 2r+1 samples spaced by s
    arr[c - s * r:c + s * r + 1] = np.inf
    arr[c - r:c + r + 1] = squeezed                              # ... squeezed into 2r+1 consecutive ones
    left = arr[c - r * s - r:c - r * s].copy()                  # r samples before the squeezed region
    right = arr[c + r * s + 1:c + r * s + r + 1].copy()          # r samples after it
    arr[c - r * s - r:c - r * s] = np.inf
    arr[c + r * s + 1:c + r * s + r + 1] = np.inf
    arr[c - r * s - r:c - r:s] = left                            # ... stretched by s into the gaps
    arr[c + r + s:c + r * s + r + s:s] = right
    out = arr.copy()
    for lead in range(arr.shape[1]):
        col = arr[:, lead]
        known = np.isfinite(col)
        out[:, lead] = np.interp(np.arange(len(col)), np.flatnonzero(known), col[known])
    return out


@pytest.mark.parametrize("radius, step", [(10, 2), (5, 3), (3, 1)])
def test_dynamic_time_warp_time_map_equals_the_seed_procedure(radius, step):
    dtw = DynamicTimeWarp(warps=1, radius=radius, step=step)
    x_BLT = torch.randn(3, 2, T, generator=gen(2), dtype=torch.float64)
    centers = torch.tensor([dtw.min_center, T // 2, T - dtw.min_center - step - 1])   # extremes and middle
    y_BLT = _sample_time(x_BLT, dtw.time_map(centers, T).double())
    for b, c in enumerate(centers.tolist()):
        expected_TL = _seed_dtw_once(x_BLT[b].T.numpy(), c, radius, step)
        np.testing.assert_allclose(y_BLT[b].T.numpy(), expected_TL, atol=1e-12)


def test_dynamic_time_warp_keeps_ends_and_order():
    ramp_BLT = torch.arange(T, dtype=torch.float32).expand(B, 1, T).contiguous()
    y_BLT = TRANSFORMS["dynamic_time_warp"]()(ramp_BLT, gen())
    assert (y_BLT.diff(dim=-1) >= 0).all()
    assert (y_BLT[..., 0] == 0).all() and (y_BLT[..., -1] == T - 1).all()
    with pytest.raises(ValueError, match="shorter"):
        TRANSFORMS["dynamic_time_warp"]()(torch.zeros(1, 1, 40), gen())


def test_baseline_wander_is_one_slow_curve_for_all_leads(x_BLT):
    t = TRANSFORMS["baseline_wander"](c_max=0.5, fs=50.0)       # 256 samples = 5.1 s
    added_BLT = t(x_BLT, gen()) - x_BLT
    assert torch.allclose(added_BLT, added_BLT[:, :1].expand_as(added_BLT), atol=1e-5)
    # Components up to 0.5 Hz at 50 Hz: consecutive samples differ by a tiny fraction of the range.
    wander_BT = added_BLT[:, 0]
    step = wander_BT.diff(dim=-1).abs().amax(dim=-1)
    span = wander_BT.amax(dim=-1) - wander_BT.amin(dim=-1)
    assert (step < 0.1 * span).all()


def test_powerline_noise_is_rank_one_and_periodic_at_the_mains_frequency():
    x_BLT = torch.zeros(B, L, 500)
    added_BLT = TRANSFORMS["powerline_noise"](c_max=1.0, fs=500.0, fn=50.0)(x_BLT, gen())
    for a_LT in added_BLT:
        s = torch.linalg.svdvals(a_LT.double())
        assert s[1] < 1e-5 * s[0]                             # gain per lead times one waveform
    assert torch.allclose(added_BLT[..., 10:], added_BLT[..., :-10], atol=1e-5)   # period 10 samples


def test_em_noise_level_varies_per_sample():
    y_BLT = TRANSFORMS["em_noise"](c_max=0.5)(torch.zeros(16, L, 1000), gen())
    std_B = y_BLT.std(dim=(1, 2))
    assert (std_B <= 0.5 * 1.05).all() and std_B.std() > 0.05


def test_baseline_shift_is_piecewise_constant_with_per_lead_gains():
    x_BLT = torch.zeros(32, L, 1000)
    added_BLT = TRANSFORMS["baseline_shift"](c_max=1.0, fs=100.0)(x_BLT, gen())   # 10 s: up to 3 segments
    shifted = 0
    for a_LT in added_BLT:
        s = torch.linalg.svdvals(a_LT.double())
        assert s[1] < 1e-5 * max(s[0], 1e-12)                 # gain per lead times one offset curve
        changes = (a_LT[0].diff() != 0).sum().item()
        assert changes <= 2 * 3                               # at most 3 segments: 6 level changes
        shifted += int(a_LT.abs().sum() > 0)
    assert 0 < shifted < 32                                   # some samples draw no segment (n ~ U{0..3})


# ------------------------------------------------------------------------------------------------
# Compose and config validation
# ------------------------------------------------------------------------------------------------

def test_compose_applies_in_order_from_one_generator(x_BLT):
    specs = [{"name": "channel_resize"}, {"name": "time_out", "crop_ratio_range": [0.1, 0.2]}]
    compose = build_transforms(specs, "aug", window=T)
    assert isinstance(compose, Compose) and len(compose) == 2
    g = gen(4)
    expected = TRANSFORMS["time_out"](crop_ratio_range=[0.1, 0.2])(TRANSFORMS["channel_resize"]()(x_BLT, g), g)
    assert torch.equal(compose(x_BLT, gen(4)), expected)
    assert torch.equal(build_transforms([], "aug")(x_BLT, gen()), x_BLT)


def test_every_transform_builds_from_a_spec_with_its_defaults():
    compose = build_transforms([{"name": name} for name in sorted(TRANSFORMS)], "aug", window=2500)
    assert [type(t) for t in compose.transforms] == [TRANSFORMS[n] for n in sorted(TRANSFORMS)]
    assert compose.min_length == DynamicTimeWarp().min_length


@pytest.mark.parametrize("specs, key, words", [
    ({"name": "time_out"}, "aug", "list"),
    (["time_out"], "aug[0]", "mapping"),
    ([{"crop_ratio_range": [0.1, 0.2]}], "aug[0].name", "missing"),
    ([{"name": "time_out"}, {"name": "cutout"}], "aug[1].name", "random_resized_crop"),   # lists known names
    ([{"name": "time_out", "ratio": 0.1}], "aug[0].ratio", "crop_ratio_range"),           # lists accepted ones
    ([{"name": "time_out", "crop_ratio_range": [0.4, 0.2]}], "aug[0].crop_ratio_range", "low"),
    ([{"name": "time_out", "crop_ratio_range": 0.2}], "aug[0].crop_ratio_range", "pair"),
    ([{"name": "channel_resize", "magnitude_range": [0.0, 2.0]}], "aug[0].magnitude_range", "> 0"),
    ([{"name": "gaussian_noise", "scale": -1}], "aug[0].scale", ">= 0"),
    ([{"name": "gaussian_noise", "scale": "big"}], "aug[0].scale", "number"),
    ([{"name": "gaussian_blur", "kernel": [0.5, 0.5]}], "aug[0].kernel", "odd"),
    ([{"name": "dynamic_time_warp", "warps": 1.5}], "aug[0].warps", "integer"),
    ([{"name": "random_resized_crop", "jitter": "yes"}], "aug[0].jitter", "true or false"),
    ([{"name": "powerline_noise", "fs": 0}], "aug[0].fs", "> 0"),
    ([{"name": "dynamic_time_warp"}], "aug[0]", "at least"),                              # window 50 too short
])
def test_invalid_specs_name_the_key(specs, key, words):
    with pytest.raises(ConfigError) as info:
        build_transforms(specs, "aug", window=50)
    assert info.value.key == key and words in info.value.reason
