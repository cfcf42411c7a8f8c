"""Two seed encoders re-implemented in PyTorch: PCLR's residual CNN and seed 1's small CNN.

:func:`pclr_cnn` — Diamant, Reinertsen, Song, Aguirre, Stultz, Batra 2022, "Patient contrastive learning:
a performant, expressive, and practical approach to electrocardiogram modeling" (PLoS Comput Biol 18(2):
e1009862, arXiv 2104.04569); network from ``broadinstitute/ml4h model_zoo/PCLR/build_model.py::get_model``,
"modified from antonior92/automatic-ecg-diagnosis" (Ribeiro et al. 2020, Nat Commun 11:1760, Fig. 1),
seed-methods.md section 3.2:

- stem: Conv1D 64, kernel 16, 'same', no bias -> BN -> ReLU;
- four pre-activation residual units (He et al. 2016, "Identity Mappings in Deep Residual Networks",
  arXiv 1603.05027), kernel 16, each 4x shorter and wider: 128, 196, 256, 320 filters
  (4096 -> 1024 -> 256 -> 64 -> 16 samples at the seed's 4096-sample input). A unit takes the activated
  tensor ``x`` and the pre-activation sum ``y`` of the unit before; main path
  ``conv_k(x) -> BN -> ReLU -> conv_k stride 4``; skip ``MaxPool(4)(y) -> 1x1 conv``; ``y' = main + skip``
  and ``x' = ReLU(BN(y'))``;
- global average pooling of the last ``x'``: the **320-d representation** ("embed"). The projection
  (Dense 320 ReLU, Dense 320) is the method's, not the encoder's.

Here the ``BN -> ReLU`` that ends unit ``k`` runs at the start of unit ``k + 1`` (and in a final ``out_norm``
after unit 4), so each FSDP2 block maps one tensor (the pre-activation sum) to one tensor; the function is
the same. Parameters: 6,391,184 at the standard widths, the count in seed-methods.md (plus 3,728 BatchNorm
running statistics, buffers here). Keras details kept: 'same' padding as TensorFlow computes it (for the
even kernel 16 and the stride-4 convolutions the extra sample goes to the right), max-pooling that never
sees padding, BatchNorm momentum 0.99 (PyTorch ``momentum=0.01``) and epsilon 1e-3, He-normal
initialisation from a truncated normal (Keras ``he_normal``: std ``sqrt(2 / fan_in)`` after truncation at
two standard deviations). Dropout is 0 for PCLR in the seed and is left out (a dropout layer would draw
from the global RNG, outside :meth:`Method.step_generator`). ``base_width`` scales every width by
``base_width / 64`` (rounded down; ``base_width=4`` gives 4-8-12-16-20, a tiny test model).

:func:`seed_cnn` — seed 1's ``basic_cnn`` (``ChenweWu/viewmaker_simclr``,
``systems/models/encoders/cnn.py``; seed-methods.md section 1.4): six blocks ``Conv1d (no bias, no
padding) -> LeakyReLU(0.2) -> BatchNorm`` with (out, kernel, stride) = (16, 7, 4), (32, 7, 3), (64, 5, 2),
(64, 3, 1), (128, 3, 1), (256, 3, 1), global average pooling: a 256-d representation; 150,224 parameters at
one input channel (the seed's count). Seed 1 runs it per lead (the 12 leads of an ECG as 12 one-channel
signals, embeddings averaged over leads, ``systems/simclr.py`` ``forward``): ``per_lead=True``. With
``per_lead=False`` it takes all ``in_leads`` as input channels (the seed's ``--system pclr`` variant).
Weights keep PyTorch's default initialisation, as the seed does. Unpadded convolutions need at least 223
input samples (:meth:`SeedCNN.check_window`). ``base_width`` scales every width by ``base_width / 16``.

Sequence outputs (:meth:`PCLRCNN.sequence`, :meth:`SeedCNN.sequence`, what the frozen attention probe pools):
the time steps of the feature map that ``forward`` averages (PCLR: after ``out_norm``; seed CNN: after
the last block's BatchNorm). In per-lead mode the 12 leads are 12 sequences on one time axis; the sequence is
their mean at every step (one sequence per record, ``D = 256``, the width of ``forward``), not the 12 sequences
side by side or one after the other.

Shapes: ``B`` batch, ``L`` leads (input channels), ``C`` channels, ``T`` time, ``D`` output features,
``N = B * L`` signals in per-lead mode.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PCLRCNN", "PreActUnit", "SeedCNN", "pclr_cnn", "seed_cnn"]

PCLR_WIDTHS = (64, 128, 196, 256, 320)   # stem, then the four residual units (build_model.py::get_model)
SEED_CNN_LAYERS = ((16, 7, 4), (32, 7, 3), (64, 5, 2), (64, 3, 1), (128, 3, 1), (256, 3, 1))   # (out, k, stride)

_KERAS_BN = {"eps": 1e-3, "momentum": 0.01}   # Keras BatchNormalization defaults (momentum 0.99 there)


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _same_pad(x_BCT: torch.Tensor, kernel_size: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad as TensorFlow's ``padding="same"``: output length ``ceil(T / stride)``, the odd sample on the right."""
    T = x_BCT.shape[-1]
    total = max((math.ceil(T / stride) - 1) * stride + kernel_size - T, 0)
    return F.pad(x_BCT, (total // 2, total - total // 2), value=value)


class _SameConv1d(nn.Conv1d):
    """``Conv1d`` without bias and with TensorFlow 'same' padding (asymmetric for even kernels)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(c_in, c_out, kernel_size, stride=stride, bias=False)

    def forward(self, x_BCT: torch.Tensor) -> torch.Tensor:
        return super().forward(_same_pad(x_BCT, self.kernel_size[0], self.stride[0]))


class PreActUnit(nn.Module):
    """One PCLR/Ribeiro residual unit, ``y_prev -> y``, including the activation of its input.

    ``x = ReLU(BN(y_prev))`` (or ``y_prev`` itself for the first unit, whose input the stem activated),
    ``y = conv_k stride s (ReLU(BN(conv_k(x)))) + conv_1x1(maxpool_s(y_prev))``.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, downsample: int, pre_act: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.in_norm = nn.BatchNorm1d(c_in, **_KERAS_BN) if pre_act else None
        self.conv1 = _SameConv1d(c_in, c_out, kernel_size)
        self.bn1 = nn.BatchNorm1d(c_out, **_KERAS_BN)
        self.conv2 = _SameConv1d(c_out, c_out, kernel_size, stride=downsample)
        self.skip_conv = _SameConv1d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, y_BCT: torch.Tensor) -> torch.Tensor:
        x_BCT = F.relu(self.in_norm(y_BCT)) if self.in_norm is not None else y_BCT
        h_BCT = self.conv2(F.relu(self.bn1(self.conv1(x_BCT))))
        s_BCT = y_BCT
        if self.downsample > 1:
            # Keras MaxPooling1D(padding="same") ignores padded positions: pad with -inf.
            s_BCT = F.max_pool1d(_same_pad(s_BCT, self.downsample, self.downsample, float("-inf")), self.downsample)
        if self.skip_conv is not None:
            s_BCT = self.skip_conv(s_BCT)
        return h_BCT + s_BCT


class PCLRCNN(nn.Module):
    """PCLR's encoder (see the module docstring): ``x_BLT -> z_BD`` with ``D = widths[-1]`` (320).

    Args:
        in_leads: input channels (12).
        widths: stem filters, then one entry per residual unit.
        kernel_size: kernel of every non-1x1 convolution (16 in the seed).
        downsample: time reduction of each unit (4 in the seed: 4096 samples -> 16).
    """

    def __init__(self, in_leads: int = 12, widths: Sequence[int] = PCLR_WIDTHS, kernel_size: int = 16,
                 downsample: int = 4) -> None:
        super().__init__()
        _check_int("in_leads", in_leads, 1)
        _check_int("kernel_size", kernel_size, 1)
        _check_int("downsample", downsample, 1)
        if len(widths) < 2:
            raise ValueError(f"widths must name the stem and at least one unit, got {list(widths)}")
        for w in widths:
            _check_int("widths", w, 1)
        self.stem = nn.Sequential(_SameConv1d(in_leads, widths[0], kernel_size),
                                  nn.BatchNorm1d(widths[0], **_KERAS_BN), nn.ReLU(inplace=True))
        self.units = nn.ModuleList(
            PreActUnit(widths[i], widths[i + 1], kernel_size, downsample, pre_act=i > 0)
            for i in range(len(widths) - 1))
        self.out_norm = nn.Sequential(nn.BatchNorm1d(widths[-1], **_KERAS_BN), nn.ReLU(inplace=True))
        self.out_dim: int = widths[-1]
        self.sequence_dim: int = widths[-1]
        self._init_weights()

    def _init_weights(self) -> None:
        if any(p.is_meta for p in self.parameters()):
            return   # built on the meta device to check a config: nothing to initialise
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                # Keras he_normal: truncated normal (+-2 std) rescaled so the truncated std is sqrt(2 / fan_in).
                fan_in = m.in_channels * m.kernel_size[0]
                std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def blocks(self) -> list[nn.Module]:
        """Units for FSDP2 ``fully_shard``: the stem, each residual unit and the output norm (every parameter)."""
        return [self.stem, *self.units, self.out_norm]

    def features(self, x_BLT: torch.Tensor) -> torch.Tensor:
        """``h_BCT``: the activated output of the last unit (``ReLU(BN(y))``), before global pooling."""
        y_BCT = self.stem(x_BLT)
        for unit in self.units:
            y_BCT = unit(y_BCT)
        return self.out_norm(y_BCT)

    def sequence(self, x_BLT: torch.Tensor) -> torch.Tensor:
        """``h_BSD``: the time steps that :meth:`forward` averages (``D = sequence_dim = out_dim``)."""
        return self.features(x_BLT).transpose(1, 2)

    def forward(self, x_BLT: torch.Tensor) -> torch.Tensor:
        return self.features(x_BLT).mean(dim=-1)   # GlobalAveragePooling1D "embed"


class SeedCNN(nn.Module):
    """Seed 1's ``basic_cnn`` (see the module docstring): ``x_BLT -> z_BD`` with ``D = 256`` (standard widths).

    Args:
        in_leads: leads of the input ``x_BLT``.
        layers: ``(out_channels, kernel, stride)`` per block.
        per_lead: encode each lead as a one-channel signal and average the embeddings over leads (seed 1's
            3KG SimCLR); otherwise the leads are the input channels of the first convolution.
    """

    def __init__(self, in_leads: int = 12, layers: Sequence[tuple[int, int, int]] = SEED_CNN_LAYERS,
                 per_lead: bool = False) -> None:
        super().__init__()
        _check_int("in_leads", in_leads, 1)
        if not isinstance(per_lead, bool):
            raise ValueError(f"per_lead must be true or false, got {per_lead!r}")
        self.per_lead = per_lead
        c_in = 1 if per_lead else in_leads
        convs = []
        for c_out, k, s in layers:
            for name, v in (("widths", c_out), ("kernel", k), ("stride", s)):
                _check_int(name, v, 1)
            convs.append(nn.Sequential(nn.Conv1d(c_in, c_out, k, stride=s, bias=False),
                                       nn.LeakyReLU(0.2, inplace=True), nn.BatchNorm1d(c_out)))
            c_in = c_out
        self.convs = nn.ModuleList(convs)
        self.layers = tuple(tuple(layer) for layer in layers)
        self.out_dim: int = c_in
        self.sequence_dim: int = c_in
        # min_window: the shortest input that leaves one sample after the last (unpadded) convolution.
        n = 1
        for _, k, s in reversed(self.layers):
            n = (n - 1) * s + k
        self.min_window = n

    def check_window(self, window: int) -> None:
        """Raise ``ValueError`` when ``window`` samples are too few for the unpadded convolutions."""
        if window < self.min_window:
            raise ValueError(f"window of {window} samples is too short for seed_cnn's unpadded convolutions "
                             f"(needs >= {self.min_window})")

    def blocks(self) -> list[nn.Module]:
        """Units for FSDP2 ``fully_shard``: each conv block (together: every parameter)."""
        return list(self.convs)

    def features(self, x_BLT: torch.Tensor) -> torch.Tensor:
        """``h_NCT``: the last block's output before global pooling, one row per signal: ``N = B`` (leads as
        channels) or ``N = B * L`` with ``per_lead`` (row ``b * L + l`` is lead ``l`` of record ``b``)."""
        B, L, T = x_BLT.shape
        h_NCT = x_BLT.reshape(B * L, 1, T) if self.per_lead else x_BLT
        for conv in self.convs:
            h_NCT = conv(h_NCT)
        return h_NCT

    def sequence(self, x_BLT: torch.Tensor) -> torch.Tensor:
        """``h_BSD``: the time steps that :meth:`forward` averages. With ``per_lead`` each time step is the mean
        over the leads of their encodings at that step: the leads share one time axis (same network, same
        input length), and the mean over time of this sequence is the mean of the lead embeddings, which
        is :meth:`forward` (equal up to rounding: ``forward`` keeps the seed's order, time first)."""
        h_NCT = self.features(x_BLT)
        if self.per_lead:
            B, L = x_BLT.shape[:2]
            h_NCT = h_NCT.reshape(B, L, *h_NCT.shape[1:]).mean(dim=1)
        return h_NCT.transpose(1, 2)

    def forward(self, x_BLT: torch.Tensor) -> torch.Tensor:
        z_ND = self.features(x_BLT).mean(dim=-1)
        if not self.per_lead:
            return z_ND
        return z_ND.reshape(*x_BLT.shape[:2], -1).mean(dim=1)   # seed 1: the mean of the lead embeddings


def pclr_cnn(in_leads: int = 12, base_width: int = 64, kernel_size: int = 16) -> PCLRCNN:
    """PCLR's residual CNN: 6,391,184 parameters and a 320-d output at ``base_width=64`` (seed-methods.md 3.2)."""
    _check_int("base_width", base_width, 1)
    return PCLRCNN(in_leads, [max(1, w * base_width // 64) for w in PCLR_WIDTHS], kernel_size=kernel_size)


def seed_cnn(in_leads: int = 12, base_width: int = 16, per_lead: bool = False) -> SeedCNN:
    """Seed 1's ``basic_cnn``: 256-d output at ``base_width=16``; 150,224 parameters per lead (seed-methods.md 1.4),
    151,456 with 12 input channels."""
    _check_int("base_width", base_width, 1)
    layers = [(max(1, c * base_width // 16), k, s) for c, k, s in SEED_CNN_LAYERS]
    return SeedCNN(in_leads, layers, per_lead=per_lead)
