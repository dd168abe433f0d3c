"""Pieces shared by the sequential recommenders: embeddings, low-pass filter, transformer block.

The layers follow the FMLP-Rec / Oracle4Rec code (oracle4rec.md §2): post-LayerNorm residual
blocks with eps 1e-12, erf-GELU, no attention-probability dropout, additive -10000 masks, and
weights initialised N(0, 0.02). Token 0 is padding (see :mod:`florec.recdata.sequences`).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from florec.models.base import Recommender

if TYPE_CHECKING:
    from florec.models.seq_packing import PackedPrefixes

INIT_STD = 0.02
LN_EPS = 1e-12


def init_weights(module: nn.Module) -> None:
    """Linear/embedding weights ~ N(0, 0.02), zero biases, LayerNorm at identity."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class SeqEmbedding(nn.Module):
    """Item table (row 0 = padding) and an optional learned position table.

    One instance is shared by both encoders of Oracle4Rec (oracle4rec.md §6.1).
    """

    def __init__(self, n_items: int, max_len: int, dim: int, positions: bool = True) -> None:
        super().__init__()
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.position = nn.Embedding(max_len, dim) if positions else None

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Item (+ position) embeddings of a ``(B, L)`` token batch, ``(B, L, d)``."""
        x = self.item(seq)
        if self.position is not None:
            x = x + self.position(torch.arange(seq.shape[1], device=seq.device))[None]
        return x

    def items(self) -> torch.Tensor:
        """The ``(n_items, d)`` table of real items (padding row dropped)."""
        return self.item.weight[1:]


class Dropout(nn.Dropout):
    r"""Inverted dropout whose CPU mask comes from one ``torch.rand`` draw.

    .. math:: y = x \odot m / (1 - p), \quad m_j = \mathbb{1}[u_j \ge p],
              \; u_j \sim U[0, 1) \text{ i.i.d.}

    The distribution of :class:`torch.nn.Dropout` (keep probability ``1 - p`` up to the 2^-24
    grid of float32 uniforms, exact for p = 0.5), at a third of the cost of
    ``bernoulli_``'s CPU kernel, which made up ~16% of a SASRec epoch. Other devices and
    other dtypes use :func:`torch.nn.functional.dropout` (the uniforms of bfloat16 and float16
    lie on too coarse a grid: at p = 0.2 in bfloat16 ~79.7% would be kept). Seeded runs draw
    other masks than ``nn.Dropout``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with each entry zeroed with probability ``p`` (training only), rest scaled."""
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.p == 1.0 \
                or x.dtype not in (torch.float32, torch.float64):
            return F.dropout(x, self.p, self.training)
        noise = torch.rand(x.shape, dtype=x.dtype, device=x.device).ge_(self.p)
        return x * noise.mul_(1.0 / (1.0 - self.p))


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    r"""Scaled dot-product attention with an additive mask, no attention dropout.

    .. math:: \mathrm{softmax}\left(q k^\top / \sqrt{d_h} + M\right) v

    ``q`` (..., Lq, dh), ``k``/``v`` (..., Lk, dh), ``mask`` broadcastable to (..., Lq, Lk).
    """
    att = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + mask
    return att.softmax(-1) @ v


def low_pass_mask(seq_len: int, ratio: float) -> torch.Tensor:
    r"""Kept rFFT bins: frequency strictly below the ``ratio`` quantile of all bin frequencies.

    .. math:: m_j = \mathbb{1}\left[f_j < Q_{ratio}(f_0, \dots, f_{\lfloor L/2 \rfloor})\right],
              \quad f_j = j / L

    As the Oracle4Rec code (``torch.quantile``, linear interpolation): with L=50 there are 26
    bins and ratio 0.75 keeps 19 of them.
    """
    freq = torch.fft.rfftfreq(seq_len).abs()
    return freq < torch.quantile(freq, ratio).item()


class FilterLayer(nn.Module):
    """Fixed low-pass filter along time: rFFT, zero high bins, irFFT, dropout, LN(x + residual).

    The filter has no learnable weights (unlike FMLP-Rec); see :func:`low_pass_mask`.
    """

    def __init__(self, dim: int, seq_len: int, ratio: float, dropout: float) -> None:
        super().__init__()
        self.register_buffer("mask", low_pass_mask(seq_len, ratio), persistent=False)
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Filter a ``(B, L, d)`` batch along L."""
        spec = torch.fft.rfft(x, dim=1, norm="ortho") * self.mask[None, :, None]
        y = torch.fft.irfft(spec, n=x.shape[1], dim=1, norm="ortho")
        return self.norm(self.dropout(y) + x)


def causal_padding_mask(seq: torch.Tensor) -> torch.Tensor:
    """Additive attention mask ``(B, 1, L, L)``: 0 where key j <= query i and j is no padding.

    A padding query also keeps itself (j = i), so no row is fully masked and no position ever
    attends to a later one (with a fully masked row, -10000 everywhere would spread attention
    uniformly over future keys). Outputs at real positions are as in the Oracle4Rec code.
    """
    length = seq.shape[1]
    eye = torch.eye(length, dtype=torch.bool, device=seq.device)
    causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
    keep = causal[None, None] & ((seq > 0)[:, None, None, :] | eye[None, None])
    return (~keep).float() * -10000.0


class TransformerBlock(nn.Module):
    """Multi-head self-attention, dense, dropout, LN(residual); 4x FFN (erf-GELU), LN(residual)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not a multiple of heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.dense = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.ffn1 = nn.Linear(dim, 4 * dim)
        self.ffn2 = nn.Linear(4 * dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` (B, L, d), ``mask`` additive (B, 1, L, L)."""
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)
        ctx = masked_attention(q, k, v, mask).transpose(1, 2).reshape(b, length, d)
        return self.position_wise(ctx, x)

    def position_wise(self, ctx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Everything after attention, position by position: ``ctx`` and input ``x`` (..., d)."""
        h = self.norm1(self.dropout(self.dense(ctx)) + x)
        return self.norm2(self.dropout(self.ffn2(F.gelu(self.ffn1(h)))) + h)

    def forward_last(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The block's output at the last position only, ``(B, d)``: ``forward(x, mask)[:, -1]``.

        Keys and values are computed at every position, the query, attention, dense layer and
        feed-forward network at the last one alone (a causal block's last output needs no other
        position's output). Dropout draws masks of the ``(B, d)`` shape it uses.
        """
        b, length, d = x.shape
        dh = d // self.heads
        w, bias = self.qkv.weight, self.qkv.bias
        k, v = F.linear(x, w[d:], bias[d:]).view(b, length, 2, self.heads, dh).permute(
            2, 0, 3, 1, 4)
        q = F.linear(x[:, -1], w[:d], bias[:d]).view(b, self.heads, 1, dh)
        ctx = masked_attention(q, k, v, mask[:, :, -1:, :]).reshape(b, d)
        return self.position_wise(ctx, x[:, -1])

    def forward_packed(self, x: torch.Tensor, packed: PackedPrefixes) -> torch.Tensor:
        """:meth:`forward` on the packed tokens ``x`` (T, d) of ``packed``, ``(T, d)``."""
        return self.position_wise(packed.attend(self.qkv(x), self.heads), x)

    def forward_last_packed(self, x: torch.Tensor, packed: PackedPrefixes) -> torch.Tensor:
        """:meth:`forward_last` on packed tokens: the output at each row's last token, (B, d).

        Rows come in ``packed``'s (length-sorted) order.
        """
        d = x.shape[-1]
        w, bias = self.qkv.weight, self.qkv.bias
        last = x[packed.last]
        ctx = packed.attend_last(F.linear(last, w[:d], bias[:d]), F.linear(x, w[d:], bias[d:]),
                                 self.heads)
        return self.position_wise(ctx, last)


class SequentialRecommender(Recommender):
    """A next-item model: ``score(seq)`` ranks every item after a ``(B, L)`` token sequence.

    Subclasses set ``self.embedding`` (:class:`SeqEmbedding`) and implement :meth:`encode`.
    Nothing is private: personalisation comes from the input sequence alone.
    """

    embedding: SeqEmbedding

    @abstractmethod
    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(B, L, d)`` of a left-padded token batch."""

    def represent(self, seq: torch.Tensor) -> torch.Tensor:
        """The last hidden state ``(B, d)``: the user's representation."""
        return self.encode(seq)[:, -1]

    def score(self, seq: torch.Tensor) -> torch.Tensor:
        """Scores of all items ``(B, n_items)``: ``z . e_i``."""
        return self.represent(seq) @ self.embedding.items().T

    def loss(self, seq: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
             kind: str = "ce") -> torch.Tensor:
        """Mean next-item loss of past samples (see :func:`rec_loss`)."""
        return rec_loss(self.represent(seq), self.embedding.item.weight, pos, neg, kind)


def rec_loss(z: torch.Tensor, table: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
             kind: str = "ce") -> torch.Tensor:
    r"""Mean next-item loss of representations ``z`` (..., d) over positions with ``pos > 0``.

    ``ce`` (full softmax over the real items, ``table`` row 0 is padding and excluded):

    .. math:: \ell = -\log \frac{\exp(z \cdot e_{pos})}{\sum_{i=1}^{n} \exp(z \cdot e_i)}

    ``bpr`` (one sampled negative): :math:`\ell = -\log\sigma(z \cdot e_{pos} - z \cdot e_{neg})`.

    ``bce`` (the Oracle4Rec code's loss):
    :math:`\ell = -\log\sigma(z \cdot e_{pos}) - \log(1 - \sigma(z \cdot e_{neg}))`.

    Returns 0 (with a gradient path) when no position has a target.
    """
    keep = pos > 0
    z, pos, neg = z[keep], pos[keep], neg[keep]
    if pos.numel() == 0:
        return z.sum() * 0.0
    if kind == "ce":
        return F.cross_entropy(z @ table[1:].T, pos - 1)
    s_pos = (z * table[pos]).sum(-1)
    s_neg = (z * table[neg]).sum(-1)
    if kind == "bpr":
        return -F.logsigmoid(s_pos - s_neg).mean()
    if kind == "bce":
        return (-F.logsigmoid(s_pos) - F.logsigmoid(-s_neg)).mean()
    raise ValueError(f"loss '{kind}' is unknown; use ce, bpr or bce")
