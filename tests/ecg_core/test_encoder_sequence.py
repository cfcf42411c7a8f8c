"""Every encoder's sequence output (what the frozen attention probe pools) and the attention-pooling head."""
import warnings

import pytest
import torch
from torch import nn

from ecg_core.encoders import ENCODERS, encoder_sequence, has_sequence, sequence_dim
from ecg_core.encoders.cpc import CPCEncoder
from ecg_core.heads import AttentionPoolHead

WINDOW = 2500   # 5 s at 500 Hz, the evaluation window
BATCH = 2

# Small sizes of each builder (its own parameter names); a case is named "<encoder>[_<variant>]".
TINY = {
    "xresnet1d18": {"base_width": 4}, "xresnet1d34": {"base_width": 4}, "xresnet1d50": {"base_width": 4},
    "xresnet1d101": {"base_width": 4}, "xresnet1d50_seed": {"base_width": 4},
    "xresnet1d50_concat": {"base_width": 4, "pool": "concat"},
    "cpc_encoder": {"base_width": 8}, "cpc_encoder_last": {"base_width": 8, "pool": "last"},
    "cpc_encoder_mean": {"base_width": 8, "pool": "mean"},
    "cpc_encoder_strided": {"base_width": 8, "strides": [2, 2], "kernel_sizes": [4, 4], "rnn": "gru"},
    "vit1d_tiny": {"depth": 1, "dim": 16, "heads": 2}, "vit1d_small": {"depth": 1, "dim": 16, "heads": 2},
    "vit1d_base": {"depth": 1, "dim": 16, "heads": 2, "patch_size": 25},
    "image_vit_tiny": {"image_size": 32, "depth": 1, "dim": 16, "heads": 2},
    "image_vit_base": {"image_size": 32, "patch_size": 8, "depth": 1, "dim": 16, "heads": 2},
    "resnet1d18": {"base_width": 4}, "resnet1d18_concat": {"base_width": 4, "pool": "concat"},
    "resnet1d34": {"base_width": 4}, "pclr_cnn": {"base_width": 4},
    "seed_cnn": {"base_width": 4}, "seed_cnn_per_lead": {"base_width": 4, "per_lead": True},
}


def encoder_name(case: str) -> str:
    return next(n for n in sorted(ENCODERS, key=len, reverse=True) if case.startswith(n))


def build(case: str) -> nn.Module:
    torch.manual_seed(0)
    return ENCODERS[encoder_name(case)](in_leads=12, **TINY[case]).eval()


def documented_pooling(encoder: nn.Module, h_BSD: torch.Tensor) -> torch.Tensor:
    """``forward`` as a function of ``sequence`` (ecg_core.encoders module docstring)."""
    mean, amax, last = h_BSD.mean(dim=1), h_BSD.amax(dim=1), h_BSD[:, -1]
    pool = getattr(encoder, "pool", "avg")
    if isinstance(encoder, CPCEncoder):
        return {"last": last, "mean": mean, "concat": torch.cat([mean, amax, last], dim=1)}[pool]
    return {"avg": mean, "concat": torch.cat([mean, amax], dim=1)}[pool]


def test_every_encoder_is_covered():
    assert {encoder_name(case) for case in TINY} == set(ENCODERS)


@pytest.mark.parametrize("case", sorted(TINY))
def test_forward_is_the_pooling_of_the_sequence(case):
    encoder = build(case)
    x = torch.randn(BATCH, 12, WINDOW, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = encoder_sequence(encoder, x)
        z = encoder(x)
    assert has_sequence(encoder) and isinstance(encoder.sequence_dim, int)
    assert h.ndim == 3 and h.shape[0] == BATCH and h.shape[1] >= 1
    assert h.shape[2] == sequence_dim(encoder) == encoder.sequence_dim
    assert torch.isfinite(h).all()
    assert z.shape == (BATCH, encoder.out_dim)
    assert torch.allclose(z, documented_pooling(encoder, h), atol=1e-5, rtol=1e-5), case


def test_sequence_lengths_follow_the_encoders_geometry():
    x = torch.zeros(1, 12, WINDOW)
    with torch.no_grad():
        steps = {case: build(case).sequence(x).shape[1]
                 for case in ("xresnet1d50", "resnet1d18", "vit1d_tiny", "vit1d_base", "image_vit_tiny",
                              "image_vit_base", "cpc_encoder", "cpc_encoder_strided", "pclr_cnn", "seed_cnn",
                              "seed_cnn_per_lead")}
    assert steps == {
        "xresnet1d50": 79, "resnet1d18": 79,            # /2 stem, /2 max-pool, /2 in stages 2-4 (ceil)
        "vit1d_tiny": 50, "vit1d_base": 100,            # WINDOW / patch_size
        "image_vit_tiny": 4, "image_vit_base": 16,      # (image_size / patch_size)^2, whatever the window
        "cpc_encoder": 500, "cpc_encoder_strided": 125,  # input_pool 5, then the strides
        "pclr_cnn": 10,                                 # four /4 units, 'same' padding (ceil)
        "seed_cnn": 95, "seed_cnn_per_lead": 95,        # unpadded convolutions
    }


class PlugIn(nn.Module):
    """An encoder from elsewhere: forward and out_dim only (and a sub-module that happens to be named sequence)."""

    def __init__(self) -> None:
        super().__init__()
        self.sequence = nn.Conv1d(12, 5, 3)
        self.out_dim = 5

    def forward(self, x_BLT: torch.Tensor) -> torch.Tensor:
        return self.sequence(x_BLT).mean(dim=-1)


def test_an_encoder_without_sequence_is_one_step_with_one_warning():
    plug_in = type("FreshPlugIn", (PlugIn,), {})()   # a class of its own: the warning comes once per class
    x = torch.randn(3, 12, 100)
    with pytest.warns(RuntimeWarning, match="no sequence"):
        h = encoder_sequence(plug_in, x)
    assert h.shape == (3, 1, 5) and sequence_dim(plug_in) == 5 and not has_sequence(plug_in)
    assert torch.equal(h[:, 0], plug_in(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder_sequence(plug_in, x)   # once per class


def test_half_of_the_sequence_protocol_is_an_error():
    class OnlyDim(PlugIn):
        sequence_dim = 5

    class OnlyMethod(nn.Module):
        out_dim = 5

        def sequence(self, x_BLT):
            return x_BLT.transpose(1, 2)

    for encoder in (OnlyDim(), OnlyMethod()):
        with pytest.raises(TypeError, match="both or neither"):
            sequence_dim(encoder)
        with pytest.raises(TypeError, match="both or neither"):
            encoder_sequence(encoder, torch.randn(1, 12, 10))


def test_attention_head_shape_gradients_and_weights():
    torch.manual_seed(0)
    head = AttentionPoolHead(16, 3, num_heads=4)
    h = torch.randn(4, 9, 16, requires_grad=True)
    logits = head(h)
    assert logits.shape == (4, 3)
    assert head.last_attention.shape == (4, 9) and (head.last_attention >= 0).all()
    assert torch.allclose(head.last_attention.sum(dim=1), torch.ones(4), atol=1e-6)
    logits.sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_attention_head_is_invariant_to_the_order_of_the_steps():
    torch.manual_seed(0)
    head = AttentionPoolHead(16, 3, num_heads=4).eval()
    h = torch.randn(4, 9, 16)
    order = torch.randperm(9)
    with torch.no_grad():
        logits, weights = head(h), head.last_attention
        permuted, permuted_weights = head(h[:, order]), head.last_attention
    assert torch.allclose(logits, permuted, atol=1e-5)
    assert torch.allclose(weights[:, order], permuted_weights, atol=1e-6)


def test_attention_head_of_one_repeated_token_depends_on_that_token_only():
    torch.manual_seed(0)
    head = AttentionPoolHead(16, 3, num_heads=4).eval()
    token = torch.randn(2, 1, 16)
    with torch.no_grad():
        single = head(token)
        for steps in (2, 7, 40):
            assert torch.allclose(head(token.expand(2, steps, 16)), single, atol=1e-5)
            assert torch.allclose(head.last_attention, torch.full((2, steps), 1.0 / steps), atol=1e-6)
        # every record of a batch is pooled on its own: other records do not change a record's logits
        other = torch.randn(3, 5, 16)
        both = head(torch.cat([token.expand(2, 5, 16), other]))
    assert torch.allclose(both[:2], single, atol=1e-5)


def test_attention_head_options():
    assert AttentionPoolHead(16, 2, num_heads=None).num_heads == 8
    assert AttentionPoolHead(20, 2, num_heads=None).num_heads == 4
    assert AttentionPoolHead(10, 2, num_heads=None).num_heads == 2
    assert AttentionPoolHead(15, 2, num_heads=None).num_heads == 1
    with pytest.raises(ValueError, match="must divide"):
        AttentionPoolHead(10, 3, num_heads=4)
    with pytest.raises(ValueError, match="num_heads"):
        AttentionPoolHead(10, 3, num_heads=0)
    with pytest.raises(ValueError, match="mlp_ratio"):
        AttentionPoolHead(16, 3, mlp_ratio=-1)
    # default layout: the parameter names that evaluation checkpoints hold
    assert sorted(AttentionPoolHead(16, 3).state_dict()) == sorted([
        "query", "norm.weight", "norm.bias", "attention.in_proj_weight", "attention.in_proj_bias",
        "attention.out_proj.weight", "attention.out_proj.bias", "mlp.0.weight", "mlp.0.bias", "mlp.1.weight",
        "mlp.1.bias", "mlp.3.weight", "mlp.3.bias", "out_norm.weight", "out_norm.bias", "classifier.weight",
        "classifier.bias"])
    no_mlp = AttentionPoolHead(16, 3, mlp_ratio=0)
    assert no_mlp.mlp is None and no_mlp(torch.randn(2, 4, 16)).shape == (2, 3)


def test_attention_head_on_every_encoders_sequence():
    x = torch.randn(BATCH, 12, WINDOW)
    for case in ("xresnet1d18", "cpc_encoder", "vit1d_tiny", "image_vit_tiny", "seed_cnn_per_lead"):
        encoder = build(case)
        head = AttentionPoolHead(sequence_dim(encoder), 5, num_heads=None)
        with torch.no_grad():
            h = encoder_sequence(encoder, x)
        logits = head(h)
        assert logits.shape == (BATCH, 5) and torch.isfinite(logits).all()
        assert head.last_attention.shape == h.shape[:2]
