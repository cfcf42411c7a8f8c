"""CPC encoder: a per-step convolutional encoder ``g_enc`` followed by an autoregressive context network
``g_ar``, as one encoder of :data:`ecg_core.encoders.ENCODERS` (``cpc_encoder``).

Oord, Li, Vinyals 2018, "Representation Learning with Contrastive Predictive Coding" (arXiv 1807.03748),
section 2.1 and figure 1: ``z_t = g_enc(x_t)`` per time step, ``c_t = g_ar(z_<=t)``. As applied to 12-lead
ECG by Mehari & Strodthoff 2022 (seed 2, ``../shared/reference/seed-methods.md`` section 2.1, repository
``tmehari/ecg-selfsupervised``, ``clinical_ts/cpc.py`` ``CPCModel`` and ``main_cpc_lightning.py``):

- ``g_enc``: a stack of ``Conv1d -> BatchNorm1d -> ReLU`` layers (convolution without bias: the
  BatchNorm shift replaces it), ``base_width`` (512) channels each. The README's pretraining command
  uses ``--fc-encoder``: four layers with kernel 1 and stride 1, i.e. the same MLP applied to every time
  step (the builder's defaults). The seed's alternative strided encoder is ``strides=[2, 2, 2, 2],
  kernel_sizes=[10, 4, 4, 4]`` (padding ``(k - 1) // 2`` as there).
- ``g_ar``: a unidirectional LSTM (or GRU), 2 layers, hidden size ``base_width`` (512).
- Representation for evaluation (``forward``): the seed's downstream head pools the context sequence
  with ``AdaptiveConcatPoolRNN``: mean, maximum and last step over time, concatenated (``pool="concat"``,
  ``out_dim = 3 * base_width`` = 1536); ``"last"`` (``c_T``, Oord et al.'s choice) and ``"mean"`` give
  ``base_width``.

Difference from the seed, for this project's stores: the seed resampled every record to 100 Hz before
training; the stores here keep 500 Hz. ``input_pool=5`` averages non-overlapping groups of 5 samples
first (a boxcar anti-aliasing filter and decimation to 100 Hz), so that one encoder step is 10 ms as in
the seed and ``k = 12`` steps ahead is 120 ms. ``input_pool=1`` feeds the signal unchanged.

Parameters at the seed's size (``base_width=512``, fc encoder, 2-layer LSTM): 796,672 in ``g_enc`` and
4,202,496 in ``g_ar`` (the counts of seed-methods.md section 2.1; the seed's 262,144-parameter
predictor belongs to the method, :mod:`ecg_core.methods.cpc`).

Shapes: ``B`` batch, ``L`` leads, ``T`` time samples, ``S`` encoder steps, ``F`` encoder features
(``z``), ``H`` context features (``c``), ``D`` pooled representation.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CPCEncoder", "ContextNetwork", "cpc_encoder"]

POOLS = ("concat", "last", "mean")
RNNS = ("lstm", "gru")


class ContextNetwork(nn.Module):
    """``g_ar``: an LSTM or GRU over ``z_SBF`` (time-major) returning only its output sequence ``c_SBH``.

    Both choices are for FSDP2, which warns about sharded modules that return views (an in-place use of
    one would skip a gradient hook): ``nn.LSTM`` also returns its final states, which are views, and with
    ``batch_first`` its output is a transposed view of the time-major result.
    """

    def __init__(self, rnn: str, width: int, layers: int) -> None:
        super().__init__()
        rnn_cls = nn.LSTM if rnn == "lstm" else nn.GRU
        self.rnn = rnn_cls(width, width, num_layers=layers)

    def forward(self, z_SBF: torch.Tensor) -> torch.Tensor:
        c_SBH, _ = self.rnn(z_SBF)
        return c_SBH


class CPCEncoder(nn.Module):
    """``g_enc`` (convolutions, one ``z_t`` per step) + ``g_ar`` (LSTM/GRU, ``c_t``); ``x_BLT -> z_BD``.

    Args:
        in_leads: input channels (12).
        base_width: channels of every convolution and hidden size of the recurrent network.
        strides, kernel_sizes: one entry per convolution layer (equal lengths).
        rnn: ``"lstm"`` or ``"gru"``.
        rnn_layers: stacked recurrent layers.
        pool: how :meth:`forward` pools ``c_BSH`` over time (``"concat"``, ``"last"``, ``"mean"``).
        input_pool: samples averaged into one before the convolutions (5: 500 Hz -> 100 Hz).
        batch_norm: BatchNorm after each convolution (the seed's default; without it the
            convolutions get a bias).
    """

    def __init__(self, in_leads: int, base_width: int, strides: Sequence[int], kernel_sizes: Sequence[int],
                 rnn: str, rnn_layers: int, pool: str, input_pool: int, batch_norm: bool) -> None:
        super().__init__()
        self.input_pool = input_pool
        self.pool = pool
        layers: list[nn.Module] = []
        c_in = in_leads
        for stride, k in zip(strides, kernel_sizes):
            layers.append(nn.Conv1d(c_in, base_width, k, stride=stride, padding=(k - 1) // 2, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(base_width))
            layers.append(nn.ReLU(inplace=True))
            c_in = base_width
        self.features = nn.Sequential(*layers)
        self.context = ContextNetwork(rnn, base_width, rnn_layers)
        self._conv_geometry = [(int(s), int(k)) for s, k in zip(strides, kernel_sizes)]
        self.feature_dim: int = base_width    # F: size of z_t, what the method's predictors aim at
        self.context_dim: int = base_width    # H: size of c_t
        self.out_dim: int = base_width * (3 if pool == "concat" else 1)
        self.sequence_dim: int = base_width   # the context states c_t that forward pools

    def blocks(self) -> list[nn.Module]:
        """Units for FSDP2 ``fully_shard``: ``g_enc`` and ``g_ar`` (together: every parameter)."""
        return [self.features, self.context]

    def num_steps(self, T: int) -> int:
        """``S``: encoder steps produced from ``T`` input samples (0 if too short)."""
        n = T // self.input_pool
        for stride, k in self._conv_geometry:
            padded = n + 2 * ((k - 1) // 2)
            n = (padded - k) // stride + 1 if n > 0 and padded >= k else 0
        return n

    def check_window(self, window: int) -> None:
        """Raise ``ValueError`` unless ``window`` samples give at least one encoder step (called by
        :func:`ecg_core.encoders.validate_encoder` with the training window when it knows it)."""
        if self.num_steps(window) < 1:
            raise ValueError(f"input_pool {self.input_pool} and the convolutions' strides/kernels "
                             f"{self._conv_geometry} turn a window of {window} samples into no encoder step")

    def downsampling(self) -> int:
        """Input samples per encoder step."""
        factor = self.input_pool
        for stride, _ in self._conv_geometry:
            factor *= stride
        return factor

    def sequences(self, x_BLT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_BSF, c_BSH)``: per-step encodings and context states (``c_t`` has seen ``z_0 .. z_t``)."""
        if self.input_pool > 1:
            x_BLT = F.avg_pool1d(x_BLT, self.input_pool)
        z_BFS = self.features(x_BLT)
        c_SBH = self.context(z_BFS.permute(2, 0, 1))
        return z_BFS.transpose(1, 2), c_SBH.transpose(0, 1)

    def sequence(self, x_BLT: torch.Tensor) -> torch.Tensor:
        """``c_BSH``: the context states that :meth:`forward` pools (last, mean, or both and the max)."""
        return self.sequences(x_BLT)[1]

    def forward(self, x_BLT: torch.Tensor, sequences: bool = False):
        """``z_BD`` (pooled context), or with ``sequences=True`` the pair of :meth:`sequences`.

        The CPC method calls ``encoder(x, sequences=True)`` rather than :meth:`sequences` so that the
        call goes through ``nn.Module.__call__`` like every other module call.
        """
        z_BSF, c_BSH = self.sequences(x_BLT)
        if sequences:
            return z_BSF, c_BSH
        if self.pool == "last":
            return c_BSH[:, -1].clone()          # a copy: no view of the recurrent output escapes
        mean_BH = c_BSH.mean(dim=1)
        if self.pool == "mean":
            return mean_BH
        return torch.cat([mean_BH, c_BSH.amax(dim=1), c_BSH[:, -1]], dim=1)


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def cpc_encoder(in_leads: int = 12, base_width: int = 512, strides: Sequence[int] = (1, 1, 1, 1),
                kernel_sizes: Sequence[int] = (1, 1, 1, 1), rnn: str = "lstm", rnn_layers: int = 2,
                pool: str = "concat", input_pool: int = 5, batch_norm: bool = True) -> CPCEncoder:
    """The seed's CPC network (fc encoder, 2-layer LSTM 512, concat pooling: ``out_dim`` 1536), see module docstring.

    Raises:
        ValueError: a message starting with the offending argument's name.
    """
    _check_int("in_leads", in_leads, 1)
    _check_int("base_width", base_width, 1)
    _check_int("rnn_layers", rnn_layers, 1)
    _check_int("input_pool", input_pool, 1)
    for name, values in (("strides", strides), ("kernel_sizes", kernel_sizes)):
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"{name} must be a non-empty list of integers, got {values!r}")
        for v in values:
            _check_int(name, v, 1)
    if len(strides) != len(kernel_sizes):
        raise ValueError(f"strides {list(strides)} and kernel_sizes {list(kernel_sizes)} must have equal lengths "
                         "(one entry per convolution)")
    if rnn not in RNNS:
        raise ValueError(f"rnn must be one of {RNNS}, got {rnn!r}")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if not isinstance(batch_norm, bool):
        raise ValueError(f"batch_norm must be true or false, got {batch_norm!r}")
    return CPCEncoder(in_leads, base_width, list(strides), list(kernel_sizes), rnn, rnn_layers, pool, input_pool,
                      batch_norm)
