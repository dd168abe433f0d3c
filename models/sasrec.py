"""SASRec (Kang & McAuley, ICDM 2018) in the FMLP-Rec/Oracle4Rec layer style.

Embedding (item + learned position) -> LayerNorm -> dropout -> optional low-pass filter layers
(Oracle4Rec's, :class:`florec.models.seq_layers.FilterLayer`) -> causal transformer blocks. The last
hidden state represents the user; ``score`` ranks all items by dot product with it.
"""

from __future__ import annotations

import torch
from torch import nn

from florec.models.seq_layers import (
    LN_EPS,
    FilterLayer,
    SeqEmbedding,
    SequentialRecommender,
    TransformerBlock,
    causal_padding_mask,
    init_weights,
)


class SASRecBody(nn.Module):
    """Everything of SASRec after the (shareable) embedding tables.

    Parameters
    ----------
    dim, heads, layers : int
        Hidden size, attention heads and transformer blocks.
    dropout : float
        Hidden dropout.
    max_len : int
        Sequence length L (the filter's FFT size).
    filter_layers : int
        Low-pass filter layers before the blocks (0 for plain SASRec).
    ratio : float
        Filter quantile (see :func:`florec.models.seq_layers.low_pass_mask`).

    """

    def __init__(self, dim: int, heads: int, layers: int, dropout: float, max_len: int,
                 filter_layers: int = 0, ratio: float = 0.75) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.dropout = nn.Dropout(dropout)
        self.filters = nn.ModuleList(
            [FilterLayer(dim, max_len, ratio, dropout) for _ in range(filter_layers)])
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, dropout) for _ in range(layers)])

    def forward(self, emb: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(B, L, d)`` from embeddings ``emb`` of the tokens ``seq``."""
        x = self.dropout(self.norm(emb))
        for layer in self.filters:
            x = layer(x)
        mask = causal_padding_mask(seq)
        for block in self.blocks:
            x = block(x, mask)
        return x


class SASRec(SequentialRecommender):
    """Self-attentive sequential recommender.

    Parameters
    ----------
    n_items : int
        Catalogue size (tokens 1..n_items; 0 is padding).
    max_len, dim, heads, layers : int
        Sequence length, hidden size, attention heads, transformer blocks.
    dropout : float
        Hidden dropout.
    filter_layers : int
        Low-pass filter layers (Oracle4Rec's encoders use them; 0 for plain SASRec).
    ratio : float
        Filter quantile.

    """

    def __init__(self, n_items: int, max_len: int = 50, dim: int = 64, heads: int = 2,
                 layers: int = 2, dropout: float = 0.2, filter_layers: int = 0,
                 ratio: float = 0.75, **_: object) -> None:
        super().__init__()
        self.embedding = SeqEmbedding(n_items, max_len, dim, positions=True)
        self.body = SASRecBody(dim, heads, layers, dropout, max_len, filter_layers, ratio)
        self.apply(init_weights)
        with torch.no_grad():
            self.embedding.item.weight[0].zero_()

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(B, L, d)`` of a left-padded token batch."""
        return self.body(self.embedding(seq), seq)
