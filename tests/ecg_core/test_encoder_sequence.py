"""Every encoder's sequence output (what the frozen attention probe pools) and the attention-pooling head."""
import pytest
import torch
from torch import nn

from ecg_core.encoders import ENCODERS, encoder_sequence, sequence_dim
from ecg_core.heads import AttentionPoolHead

# Small sizes of each builder (its own parameter names); window 1000 samples, 2 records.
TINY = {
    "xresnet1d18": {"base_width": 4}, "xresnet1d34": {"base_width": 4}, "xresnet1d50": {"base_width": 4},
    "xresnet1d101": {"base_width": 4}, "xresnet1d50_seed": {"base_width": 4},
    "xresnet1d50_concat": {"base_width": 4, "pool": "concat"},
    "cpc_encoder": {"base_width": 8}, "cpc_encoder_last": {"base_width": 8, "pool": "last"},
    "vit1d_tiny": {"depth": 1, "dim": 16, "heads": 2}, "vit1d_small": {"depth": 1, "dim": 16, "heads": 2},
    "vit1d_base": {"depth": 1, "dim": 16, "heads": 2},
    "image_vit_tiny": {"image_size": 32, "depth": 1, "dim": 16, "heads": 2},
    "image_vit_base": {"image_size": 32, "depth": 1, "dim": 16, "heads": 2},
    "resnet1d18": {"base_width": 4}, "resnet1d34": {"base_width": 4}, "pclr_cnn": {"base_width": 4},
    "seed_cnn": {"base_width": 4}, "seed_cnn_per_lead": {"base_width": 4, "per_lead": True},
}


def build(case: str) -> nn.Module:
    name = next(n for n in sorted(ENCODERS, key=len, reverse=True) if case.startswith(n))
    torch.manual_seed(0)
    return ENCODERS[name](in_leads=12, **TINY[case]).eval()


def test_every_encoder_is_covered():
    assert {next(n for n in sorted(ENCODERS, key=len, reverse=True) if c.startswith(n)) for c in TINY} == set(ENCODERS)


@pytest.mark.parametrize("case", sorted(TINY))
def test_forward_is_the_pooling_of_the_sequence(case):
    encoder = build(case)
    x = torch.randn(2, 12, 1000)
    with torch.no_grad():
        h = encoder_sequence(encoder, x)
        z = encoder(x)
    assert h.ndim == 3 and h.shape[0] == 2 and h.shape[1] >= 1 and h.shape[2] == sequence_dim(encoder)
    assert torch.isfinite(h).all()
    pool = getattr(encoder, "pool", "avg")
    pooled = {"avg": h.mean(dim=1), "mean": h.mean(dim=1), "last": h[:, -1],
              "concat": torch.cat([h.mean(dim=1), h.amax(dim=1)] + ([h[:, -1]] if "cpc" in case else []), dim=1)}
    assert torch.allclose(z, pooled[pool], atol=1e-5), (case, pool)


def test_an_encoder_without_sequence_is_one_step():
    plain = nn.Sequential(nn.Conv1d(12, 5, 3), nn.AdaptiveAvgPool1d(1), nn.Flatten())
    plain.out_dim = 5
    with pytest.warns(RuntimeWarning, match="no sequence"):
        h = encoder_sequence(plain, torch.randn(3, 12, 100))
    assert h.shape == (3, 1, 5) and sequence_dim(plain) == 5


def test_attention_head_pools_order_invariantly_with_weights_summing_to_one():
    torch.manual_seed(0)
    head = AttentionPoolHead(16, 3, num_heads=4)
    h = torch.randn(4, 9, 16, requires_grad=True)
    logits = head(h)
    assert logits.shape == (4, 3)
    assert torch.allclose(head.last_attention.sum(dim=1), torch.ones(4), atol=1e-6)
    permuted = head(h[:, torch.randperm(9)])
    assert torch.allclose(logits, permuted, atol=1e-5)
    logits.sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    assert head.query.grad is not None and head.query.grad.abs().sum() > 0
    # a sequence of one repeated token pools to that token: the same as a sequence of length one
    token = torch.randn(2, 1, 16)
    assert torch.allclose(head(token.expand(2, 7, 16)), head(token), atol=1e-5)
    with pytest.raises(ValueError, match="must divide"):
        AttentionPoolHead(10, 3, num_heads=4)
