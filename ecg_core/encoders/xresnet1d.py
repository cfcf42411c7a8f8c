"""xresnet1d: the fast.ai "bag of tricks" ResNet in one dimension, as used for 12-lead ECG.

Definitions:

- He et al. 2019, "Bag of Tricks for Image Classification with Convolutional Neural Networks"
  (arXiv 1812.01187): ResNet-C stem (three convolutions instead of one wide one), ResNet-D shortcut
  (average pooling before the 1x1 projection, so a strided shortcut sees every input sample) and the
  stride on the middle convolution of a bottleneck (ResNet-B); zero-initialised last BatchNorm of each
  residual branch (Goyal et al. 2017, arXiv 1706.02677, section 5.1) so every block starts as identity.
- Strodthoff, Wagner, Schaeffter, Samek 2020, "Deep Learning for ECG Analysis: Benchmarks and Insights
  from PTB-XL" (IEEE JBHI, arXiv 2004.13701): the 1-D port with kernel size 5 in the stem and in the
  blocks, stem widths 32-32-64 and a 3/2 max-pool after the stem, which this module re-implements.
- Mehari & Strodthoff 2022 (seed 2, ``../shared/reference/seed-methods.md`` section 2.2) pretrain a
  *narrow* "xresnet1d50": all four stages 64 wide (expansion 4, so 256 output channels), concat pooling
  (average and maximum over time, 512-d representation), a first convolution with bias. That variant
  is :func:`xresnet1d50_seed` (886,432 parameters, the count in seed-methods.md).

Standard widths are 64-128-256-512 per stage (times 4 for the bottleneck variants), scaled by
``base_width / 64`` together with the stem, so ``xresnet1d50(base_width=8)`` is a tiny test model with
the same topology.

Pooling is ``x.mean(-1)`` (and ``x.amax(-1)``), not ``AdaptiveAvgPool1d`` + ``Flatten``: FSDP2 warns
when a sharded module returns a view of its input, and a flattened pooled tensor is one.

Shapes: ``B`` batch, ``L`` leads (input channels), ``C`` channels, ``T`` time, ``D`` output features.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["XResNet1d", "xresnet1d18", "xresnet1d34", "xresnet1d50", "xresnet1d101", "xresnet1d50_seed"]

POOLS = ("avg", "concat")


def _conv_bn(c_in: int, c_out: int, kernel_size: int, stride: int = 1, relu: bool = True,
             zero_bn: bool = False, bias: bool = False) -> nn.Sequential:
    """Conv1d -> BatchNorm1d (-> ReLU), 'same' padding for odd kernels.

    The convolution has no bias by default because the BatchNorm shift that follows makes it redundant.
    ``zero_bn`` starts the BatchNorm scale at 0 (last layer of a residual branch, see module docstring).
    """
    conv = nn.Conv1d(c_in, c_out, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, bias=bias)
    bn = nn.BatchNorm1d(c_out)
    nn.init.constant_(bn.weight, 0.0 if zero_bn else 1.0)
    layers: list[nn.Module] = [conv, bn]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResBlock1d(nn.Module):
    """One residual block: ``relu(branch(x) + shortcut(x))``.

    ``expansion == 1``: basic block, two ``kernel_size`` convolutions ``c_in -> width -> width``.
    ``expansion == 4``: bottleneck, ``1x1 c_in -> width``, ``k width -> width`` (strided, ResNet-B),
    ``1x1 width -> 4 * width``. The shortcut is average pooling (stride 2, ceil mode, so its length
    matches the strided 'same' convolution for odd lengths too) followed by a 1x1 conv + BN when the
    channel count changes (ResNet-D).
    """

    def __init__(self, c_in: int, width: int, expansion: int, stride: int, kernel_size: int) -> None:
        super().__init__()
        c_out = width * expansion
        if expansion == 1:
            self.branch = nn.Sequential(
                _conv_bn(c_in, width, kernel_size, stride=stride),
                _conv_bn(width, c_out, kernel_size, relu=False, zero_bn=True))
        else:
            self.branch = nn.Sequential(
                _conv_bn(c_in, width, 1),
                _conv_bn(width, width, kernel_size, stride=stride),
                _conv_bn(width, c_out, 1, relu=False, zero_bn=True))
        shortcut: list[nn.Module] = []
        if stride != 1:
            shortcut.append(nn.AvgPool1d(stride, ceil_mode=True))
        if c_in != c_out:
            shortcut.append(_conv_bn(c_in, c_out, 1, relu=False))
        self.shortcut = nn.Sequential(*shortcut)   # empty Sequential: identity
        self.act = nn.ReLU(inplace=True)

    def forward(self, x_BCT: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch(x_BCT) + self.shortcut(x_BCT))


class StagedConv1d(nn.Module):
    """What the residual CNNs (:class:`XResNet1d`, :class:`~ecg_core.encoders.resnet1d.ResNet1d`) share once
    ``__init__`` has built ``stem``, ``stem_pool``, ``stages`` and set ``pool``, ``out_dim`` and ``sequence_dim``:
    the FSDP2 units, the trunk, its time steps and their global pooling."""

    stem: nn.Module
    stem_pool: nn.Module
    stages: nn.ModuleList
    pool: str

    def blocks(self) -> list[nn.Module]:
        """Units for FSDP2 ``fully_shard``: the stem and each residual stage (together: every parameter)."""
        return [self.stem, *self.stages]

    def features(self, x_BLT: torch.Tensor) -> torch.Tensor:
        """``h_BCT``: the last stage's output, before global pooling."""
        h_BCT = self.stem_pool(self.stem(x_BLT))
        for stage in self.stages:
            h_BCT = stage(h_BCT)
        return h_BCT

    def sequence(self, x_BLT: torch.Tensor) -> torch.Tensor:
        """``h_BSD``: the time steps the pooling of :meth:`forward` averages (and maxes), ``D = sequence_dim``."""
        return self.features(x_BLT).transpose(1, 2)

    def forward(self, x_BLT: torch.Tensor) -> torch.Tensor:
        h_BCT = self.features(x_BLT)
        z_BC = h_BCT.mean(dim=-1)
        if self.pool == "concat":
            return torch.cat([z_BC, h_BCT.amax(dim=-1)], dim=1)
        return z_BC


class XResNet1d(StagedConv1d):
    """Stem (3 conv layers + max-pool), four residual stages, global pooling: ``x_BLT -> z_BD``.

    Args:
        in_leads: input channels (12 for a 12-lead ECG).
        expansion: 1 (basic blocks) or 4 (bottlenecks).
        layers: residual blocks per stage.
        widths: branch width per stage (output channels are ``width * expansion``).
        stem_widths: output channels of the three stem convolutions.
        kernel_size: kernel of the block convolutions (5 in the PTB-XL benchmark).
        kernel_size_stem: kernel of the stem convolutions (5 there too).
        pool: ``"avg"`` (mean over time, ``out_dim = widths[-1] * expansion``) or ``"concat"``
            (mean and max over time concatenated, twice that).
        stem_bias: bias in the first stem convolution (the seed's replaced input layer has one).
    """

    def __init__(self, in_leads: int, expansion: int, layers: Sequence[int], widths: Sequence[int],
                 stem_widths: Sequence[int] = (32, 32, 64), kernel_size: int = 5, kernel_size_stem: int = 5,
                 pool: str = "avg", stem_bias: bool = False) -> None:
        super().__init__()
        if expansion not in (1, 4):
            raise ValueError(f"expansion must be 1 or 4, got {expansion}")
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"layers {list(layers)} and widths {list(widths)} must be non-empty and of equal length")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        for name, k in (("kernel_size", kernel_size), ("kernel_size_stem", kernel_size_stem)):
            _check_int(name, k, 1)
            if k % 2 == 0:
                raise ValueError(f"{name} must be a positive odd number ('same' padding), got {k}")
        _check_int("in_leads", in_leads, 1)
        for w in (*widths, *stem_widths):
            _check_int("widths", w, 1)
        self.pool = pool
        c = [in_leads, *stem_widths]
        self.stem = nn.Sequential(
            *[_conv_bn(c[i], c[i + 1], kernel_size_stem, stride=2 if i == 0 else 1, bias=stem_bias and i == 0)
              for i in range(len(stem_widths))])
        # The stem's 3/2 max-pool runs in forward(), outside the stem block: max_pool1d returns a
        # squeezed view of a 2-D pooling, and FSDP2 warns about sharded modules that return views.
        self.stem_pool = nn.MaxPool1d(kernel_size=3, stride=2, padding=1)
        stages = []
        c_in = c[-1]
        for i, (n_blocks, width) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n_blocks):
                blocks.append(ResBlock1d(c_in, width, expansion, stride=2 if (i > 0 and j == 0) else 1,
                                         kernel_size=kernel_size))
                c_in = width * expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_dim: int = c_in * (2 if pool == "concat" else 1)
        self.sequence_dim: int = c_in
        self._init_weights()

    def _init_weights(self) -> None:
        # He-normal convolutions (fan-in, ReLU gain) and zero biases, as fast.ai's init_cnn; BatchNorm
        # scales were set in _conv_bn (1, or 0 for the last layer of a residual branch), shifts are 0.
        if any(p.is_meta for p in self.parameters()):
            return   # built on the meta device to check a config: no values to initialise (and random
            #          init of meta tensors would import torch's compiler stack, seconds of start-up)
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.zeros_(m.bias)


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _scaled(base_width: int, multipliers: Sequence[int]) -> list[int]:
    _check_int("base_width", base_width, 2)
    return [base_width * m for m in multipliers]


def _standard(expansion: int, layers: Sequence[int], in_leads: int, base_width: int, kernel_size: int,
              pool: str) -> XResNet1d:
    # Stem 32-32-64 and stages 64-128-256-512 at base_width 64, all scaled together.
    return XResNet1d(in_leads, expansion, layers, widths=_scaled(base_width, (1, 2, 4, 8)),
                     stem_widths=[base_width // 2, base_width // 2, base_width], kernel_size=kernel_size,
                     kernel_size_stem=kernel_size, pool=pool)


def xresnet1d18(in_leads: int = 12, base_width: int = 64, kernel_size: int = 5, pool: str = "avg") -> XResNet1d:
    """Basic blocks [2, 2, 2, 2]; ``out_dim`` 512 (``8 * base_width``; twice that with concat pooling)."""
    return _standard(1, (2, 2, 2, 2), in_leads, base_width, kernel_size, pool)


def xresnet1d34(in_leads: int = 12, base_width: int = 64, kernel_size: int = 5, pool: str = "avg") -> XResNet1d:
    """Basic blocks [3, 4, 6, 3]; ``out_dim`` 512 (``8 * base_width``)."""
    return _standard(1, (3, 4, 6, 3), in_leads, base_width, kernel_size, pool)


def xresnet1d50(in_leads: int = 12, base_width: int = 64, kernel_size: int = 5, pool: str = "avg") -> XResNet1d:
    """Bottleneck blocks [3, 4, 6, 3]; ``out_dim`` 2048 (``32 * base_width``)."""
    return _standard(4, (3, 4, 6, 3), in_leads, base_width, kernel_size, pool)


def xresnet1d101(in_leads: int = 12, base_width: int = 64, kernel_size: int = 5, pool: str = "avg") -> XResNet1d:
    """Bottleneck blocks [3, 4, 23, 3]; ``out_dim`` 2048 (``32 * base_width``)."""
    return _standard(4, (3, 4, 23, 3), in_leads, base_width, kernel_size, pool)


def xresnet1d50_seed(in_leads: int = 12, base_width: int = 64, kernel_size: int = 5,
                     pool: str = "concat") -> XResNet1d:
    """Seed 2's narrow "xresnet1d50" (seed-methods.md 2.2): bottlenecks [3, 4, 6, 3], every stage
    ``base_width`` wide, stem 32-32-64 (fixed at ``base_width`` 64, scaled with it otherwise), first
    convolution with bias, concat pooling -> ``out_dim`` 512 (``8 * base_width``). 886,432 parameters.
    """
    return XResNet1d(in_leads, 4, (3, 4, 6, 3), widths=_scaled(base_width, (1, 1, 1, 1)),
                     stem_widths=[base_width // 2, base_width // 2, base_width], kernel_size=kernel_size,
                     kernel_size_stem=kernel_size, pool=pool, stem_bias=True)
