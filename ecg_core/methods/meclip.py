"""MECLIP: ECG-report contrastive pretraining (CLIP) with same-report pairs handled explicitly.

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision" (ICML, arXiv
2103.00020), Figure 3 and section 2.4: an encoder per modality, a linear/MLP projection of each into a joint
space, L2 normalisation, cosine similarities scaled by a learned temperature ``exp(t)`` (initialised to
1 / 0.07, clipped at 100), symmetric cross-entropy over the batch. Here the image side is the ECG encoder
(``self.encoder``, what evaluation exports) and the text side the record's free-text report.

Seed 4 (ECG-SSL, ``ssls/meclip/objective.py``, ``configs/meclip.yaml``; seed-methods.md 4.4): ECG encoder +
projection 512 -> 512 -> 192 against a text transformer (``textt_tiny``: 192 wide, 12 layers, 3 heads,
sentencepiece vocabulary), tau 0.1, embeddings gathered from all GPUs, three modes (the loss in
:mod:`ecg_core.losses.clip`): classic CLIP, ``mutually_exclusive`` (pairs with the same report are not
negatives of each other) and ``off_diagonal`` (they are positives). The seed compares diagnosis ids; this
project compares report texts (a 63-bit hash of the normalised text), the identity that ECG-report pairs
have in PTB-XL. Differences from the seed, said why:

- tokenizer: a byte-level BPE (HuggingFace ``tokenizers``, Sennrich et al. 2016) trained at construction
  on the sorted reports of the records the loader draws (the stores' ``folds``/``records`` filters), with a
  fixed configuration. It is re-derived identically from the stores on resume (nothing to checkpoint) and
  decodes back to the exact text (the seed's sentencepiece model is an external file).
- pooling: the output of a ``<cls>`` token prepended to every report (CLIP uses the ``[EOS]`` token's output);
  padding is masked out of attention;
- a learnable temperature initialised to CLIP's 0.07 (set ``learn_temperature: false, temperature: 0.1``
  for the seed's fixed tau);
- the two directions are averaged, not summed, and off-diagonal terms averaged per anchor (see the loss).

Records whose report is empty (stores without reports) are encoded as the ``<cls>`` token alone and share
one identity: in the two seed modes they are then never negatives of each other.

Shapes: ``B`` local batch, ``N`` gathered batch, ``L`` leads, ``T`` time, ``D`` ECG representation,
``K`` tokens, ``E`` text width, ``P`` joint embedding, ``R`` records of all stores (row
``store_offset_S[s] + record``), ``S`` stores.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecg_core import distributed as D
from ecg_core.config import ConfigError
from ecg_core.encoders.vit1d import Block, _init_transformer, sincos_pos_embed
from ecg_core.heads import ProjectionHead
from ecg_core.losses.clip import CLIP_MODES, clip_loss
from ecg_core.methods.base import Method

__all__ = ["MECLIP", "MECLIPConfig", "TextTransformer", "normalize_report", "report_id", "report_tables",
           "train_tokenizer"]

_SOURCE = "method registry"
PAD, CLS = "<pad>", "<cls>"   # ids 0 and 1 of every trained vocabulary (special tokens come first)


@dataclass
class MECLIPConfig:
    """MECLIP hyper-parameters (``method.params``); sources in the module docstring and the recipe."""

    mode: str = "mutually_exclusive"     # clip | mutually_exclusive | off_diagonal (ecg_core.losses.clip)
    temperature: float = 0.07            # initial tau (CLIP); seed: 0.1, fixed
    learn_temperature: bool = True       # CLIP learns t = log(1 / tau)
    max_logit_scale: float = 100.0       # CLIP clips exp(t) at 100
    projection_hidden_dim: int = 512     # seed: ECG projection 512 -> 512 -> 192
    projection_dim: int = 192            # seed: joint width = textt_tiny width
    projection_layers: int = 2
    projection_batch_norm: bool = False
    text_dim: int = 192                  # seed textt_tiny
    text_depth: int = 12                 # seed textt_tiny
    text_heads: int = 3                  # seed textt_tiny
    text_mlp_ratio: float = 4.0
    text_projection_layers: int = 1      # CLIP: a linear map of the text feature
    vocab_size: int = 2000               # BPE vocabulary (embedding rows); smaller corpora use fewer
    min_frequency: int = 2               # BPE: merges seen at least this often
    max_tokens: int = 128                # tokens per report with <cls>; longer reports are truncated


def normalize_report(text: str) -> str:
    """Lower case, single spaces, stripped: the form that is tokenised and whose identity is compared."""
    return " ".join(str(text).lower().split())


def report_id(text: str) -> int:
    """A non-negative 63-bit int64 identity of the normalised report (BLAKE2b; stable across processes)."""
    digest = hashlib.blake2b(normalize_report(text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def train_tokenizer(texts: list[str], vocab_size: int, min_frequency: int = 2) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts`` (normalised and sorted first).

    Same texts (in any order) and arguments give the same vocabulary and merges: the trainer's counts do not
    depend on the order, and its ties are broken by token ids, themselves fixed by the sorted byte alphabet.
    ``<pad>`` is id 0, ``<cls>`` id 1; decoding an encoding gives back the normalised text.
    """
    # The Rust trainer's thread pool and forked loader workers do not mix (it would print a warning at the
    # fork and turn parallelism off anyway): stay single-threaded unless the user chose otherwise.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, CLS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(sorted(normalize_report(t) for t in texts), trainer)
    return tokenizer


def report_tables(data: Any, cfg: MECLIPConfig) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """Tokenizer and per-record tables of ``data.stores``: ``(tokenizer, tokens_RK, id_R, offset_S)``.

    ``tokens_RK`` int64 ``<cls>`` + BPE ids, right-padded with ``<pad>`` (0) to the longest report (at most
    ``cfg.max_tokens``); ``id_R`` int64 :func:`report_id`; ``offset_S`` first row of each store. The
    tokenizer is trained on the reports of the records inside each store's ``folds``/``records`` filters.

    Raises:
        ValueError: no data config or stores, or no non-empty report among the training records.
    """
    from ecg_core.data.store import open_store

    if data is None or not data.stores:
        raise ValueError("meclip needs the run's data config with at least one store (build it with "
                         "ecg_core.methods.build_method)")
    reports, train_texts, offsets = [], [], [0]
    for src in data.stores:
        rec = open_store(src.path).records
        text = rec["report"].fillna("").astype(str).map(normalize_report) if "report" in rec else None
        if text is None:
            text = rec["record_id"].astype(str).map(lambda _: "")
        pool = np.ones(len(rec), dtype=bool)
        if src.folds:
            pool &= rec["fold"].isin(src.folds).to_numpy()
        if src.records:
            pool &= rec["record_id"].astype(str).isin(set(map(str, src.records))).to_numpy()
        reports += text.tolist()
        train_texts += [t for t in text[pool].tolist() if t]
        offsets.append(offsets[-1] + len(rec))
    if not train_texts:
        raise ValueError("meclip: no record of the stores' training filters has a report (column `report`)")
    tokenizer = train_tokenizer(train_texts, cfg.vocab_size, cfg.min_frequency)
    cls_id = tokenizer.token_to_id(CLS)
    encoded = [[cls_id, *e.ids][:cfg.max_tokens] for e in tokenizer.encode_batch(reports)]
    K = max(len(ids) for ids in encoded)
    tokens_RK = np.zeros((len(encoded), K), dtype=np.int64)   # 0 = <pad>
    for r, ids in enumerate(encoded):
        tokens_RK[r, :len(ids)] = ids
    id_R = np.asarray([report_id(t) for t in reports], dtype=np.int64)
    return tokenizer, tokens_RK, id_R, np.asarray(offsets[:-1], dtype=np.int64)


class _MaskedBlock(Block):
    """:class:`ecg_core.encoders.vit1d.Block` with a key-padding mask (its weights and layout, unchanged)."""

    def forward(self, h_BKE: torch.Tensor, keep_B11K: torch.Tensor | None = None) -> torch.Tensor:
        B, K, E = h_BKE.shape
        qkv_3BHKe = self.qkv(self.norm1(h_BKE)).reshape(B, K, 3, self.heads, E // self.heads).permute(2, 0, 3, 1, 4)
        q_BHKe, k_BHKe, v_BHKe = qkv_3BHKe.unbind(0)
        a_BKE = F.scaled_dot_product_attention(q_BHKe, k_BHKe, v_BHKe, attn_mask=keep_B11K)
        h_BKE = h_BKE + self.proj(a_BKE.transpose(1, 2).reshape(B, K, E))
        return h_BKE + self.fc2(F.gelu(self.fc1(self.norm2(h_BKE))))


class TextTransformer(nn.Module):
    """Token embedding + fixed sin-cos positions, pre-norm blocks (padding masked), final LayerNorm;
    the representation is the output of the first (``<cls>``) token. ``tokens_BK -> t_BE``."""

    def __init__(self, vocab_size: int, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % heads or dim % 2:
            raise ValueError(f"text_heads must divide text_dim and text_dim be even, got {dim}, {heads}")
        self.out_dim = dim
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(_MaskedBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        _init_transformer(self, self.layers)   # ViT/I-JEPA init of the blocks
        if not self.token_embed.weight.is_meta:
            nn.init.trunc_normal_(self.token_embed.weight, std=0.02)

    def forward(self, tokens_BK: torch.Tensor) -> torch.Tensor:
        K = tokens_BK.shape[1]
        h_BKE = self.token_embed(tokens_BK) + sincos_pos_embed(K, self.out_dim, tokens_BK.device)
        keep_B11K = (tokens_BK != 0)[:, None, None, :]   # attend to real tokens only (<cls> always is one)
        for layer in self.layers:
            h_BKE = layer(h_BKE, keep_B11K)
        return self.norm(h_BKE[:, 0])


class MECLIP(Method):
    """ECG encoder vs report text transformer, CLIP loss in one of three modes (see the module docstring)."""

    Config = MECLIPConfig

    def __init__(self, cfg: MECLIPConfig, encoder: nn.Module, *, window: int, generator_seed: int,
                 data: Any = None) -> None:
        super().__init__(cfg, encoder, window=window, generator_seed=generator_seed, data=data)
        self.check_config(cfg, window=window)
        self.tokenizer, tokens_RK, id_R, offset_S = report_tables(data, cfg)
        self.ecg_projector = ProjectionHead(encoder.out_dim, cfg.projection_hidden_dim, cfg.projection_dim,
                                            num_layers=cfg.projection_layers, batch_norm=cfg.projection_batch_norm)
        self.text_encoder = TextTransformer(cfg.vocab_size, cfg.text_dim, cfg.text_depth, cfg.text_heads,
                                            cfg.text_mlp_ratio)
        self.text_projector = ProjectionHead(cfg.text_dim, cfg.projection_hidden_dim, cfg.projection_dim,
                                             num_layers=cfg.text_projection_layers, batch_norm=False)
        # t = log(1 / tau), shape (1,) (FSDP2 shards parameters along dim 0); frozen when not learnt.
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1.0 / cfg.temperature)),
                                        requires_grad=cfg.learn_temperature)
        # Non-persistent: re-derived identically from the stores and the config (as the supervised labels).
        self.register_buffer("tokens_RK", torch.from_numpy(tokens_RK), persistent=False)
        self.register_buffer("report_id_R", torch.from_numpy(id_R), persistent=False)
        self.register_buffer("store_offset_S", torch.from_numpy(offset_S), persistent=False)

    @classmethod
    def check_config(cls, cfg: MECLIPConfig, key_prefix: str = "method.params", window: int | None = None) -> None:
        if cfg.mode not in CLIP_MODES:
            raise ConfigError(_SOURCE, f"{key_prefix}.mode",
                              f"must be one of {', '.join(CLIP_MODES)}, got {cfg.mode!r}")
        if not 0 < cfg.temperature:
            raise ConfigError(_SOURCE, f"{key_prefix}.temperature", f"must be > 0, got {cfg.temperature}")
        if not cfg.max_logit_scale >= 1.0 / cfg.temperature:
            raise ConfigError(_SOURCE, f"{key_prefix}.max_logit_scale",
                              f"must be >= 1 / temperature = {1.0 / cfg.temperature}, got {cfg.max_logit_scale}")
        for name in ("projection_hidden_dim", "projection_dim", "projection_layers", "text_depth", "text_heads",
                     "text_projection_layers", "min_frequency"):
            if getattr(cfg, name) < 1:
                raise ConfigError(_SOURCE, f"{key_prefix}.{name}", f"must be >= 1, got {getattr(cfg, name)}")
        if cfg.text_dim < 2 or cfg.text_dim % 2 or cfg.text_dim % cfg.text_heads:
            raise ConfigError(_SOURCE, f"{key_prefix}.text_dim",
                              f"must be even and divisible by text_heads ({cfg.text_heads}), got {cfg.text_dim}")
        if not cfg.text_mlp_ratio > 0:
            raise ConfigError(_SOURCE, f"{key_prefix}.text_mlp_ratio", f"must be > 0, got {cfg.text_mlp_ratio}")
        if cfg.vocab_size < 258:
            raise ConfigError(_SOURCE, f"{key_prefix}.vocab_size",
                              f"must be >= 258 (256 bytes + <pad> + <cls>), got {cfg.vocab_size}")
        if cfg.max_tokens < 2:
            raise ConfigError(_SOURCE, f"{key_prefix}.max_tokens", f"must be >= 2, got {cfg.max_tokens}")

    def fsdp_blocks(self) -> list[nn.Module]:
        return [*self.encoder.blocks(), self.ecg_projector, *self.text_encoder.layers, self.text_projector]

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x_BLT = batch["x"]
        B = x_BLT.shape[0]
        row_B = self.store_offset_S[batch["store"].to(x_BLT.device)] + batch["record"].to(x_BLT.device)
        tokens_BK = self.tokens_RK[row_B]
        K = int((tokens_BK != 0).sum(dim=1).max())   # drop the columns that are padding in the whole batch
        tokens_BK = tokens_BK[:, :K]
        z_BP = self.ecg_projector(self.encoder(x_BLT))
        t_BP = self.text_projector(self.text_encoder(tokens_BK))
        # Normalise in float32 before gathering (what the other ranks' rows are compared with).
        with torch.autocast(device_type=x_BLT.device.type, enabled=False):
            z_BP = F.normalize(z_BP.float(), dim=1)
            t_BP = F.normalize(t_BP.float(), dim=1)
        z_NP, t_NP = D.all_gather_with_grad(z_BP), D.all_gather_with_grad(t_BP)
        id_N = D.all_gather_with_grad(self.report_id_R[row_B])
        rows_B = torch.arange(B, device=x_BLT.device) + D.get_rank() * B
        # CLIP: exp(t) clipped at max_logit_scale (clamp's gradient is 0 beyond it, as CLIP's in-place clip).
        scale = self.logit_scale.float().exp().clamp(max=self.cfg.max_logit_scale)[0]
        loss = clip_loss(z_NP, t_NP, scale, id_N=id_N, mode=self.cfg.mode, rows=rows_B)
        with torch.no_grad():
            positive_similarity = (z_BP * t_BP).sum(dim=1).mean()
            duplicates = (id_N[rows_B][:, None] == id_N[None, :]).float().sum(dim=1).mean() - 1
        return {"loss": loss, "logit_scale": scale.detach(), "positive_similarity": positive_similarity,
                "same_report_pairs": duplicates}
