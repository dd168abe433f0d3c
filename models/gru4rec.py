"""GRU4Rec (Hidasi et al., ICLR 2016) as a next-item model over left-padded windows.

Item embedding -> dropout -> optional low-pass filter layers (Oracle4Rec's) -> a stacked GRU
(hidden size d) -> a linear map back to d. The GRU has no position table: order comes from the
recurrence. The last hidden state represents the user.
"""

from __future__ import annotations

import torch
from torch import nn

from florec.models.seq_layers import FilterLayer, SeqEmbedding, SequentialRecommender, init_weights


class GRU4RecBody(nn.Module):
    """Everything of GRU4Rec after the (shareable) item table.

    Parameters
    ----------
    dim, layers : int
        Hidden size and GRU layers.
    dropout : float
        Dropout on the embeddings (and between GRU layers).
    max_len : int
        Sequence length L (the filter's FFT size).
    filter_layers : int
        Low-pass filter layers before the GRU (0 for plain GRU4Rec).
    ratio : float
        Filter quantile (see :func:`florec.models.seq_layers.low_pass_mask`).

    """

    def __init__(self, dim: int, layers: int, dropout: float, max_len: int,
                 filter_layers: int = 0, ratio: float = 0.75) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.filters = nn.ModuleList(
            [FilterLayer(dim, max_len, ratio, dropout) for _ in range(filter_layers)])
        self.gru = nn.GRU(dim, dim, num_layers=layers, batch_first=True, bias=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(dim, dim)

    def forward(self, emb: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(B, L, d)``; ``seq`` is unused (padding embeds to 0)."""
        x = self.dropout(emb)
        for layer in self.filters:
            x = layer(x)
        h, _ = self.gru(x)
        return self.out(h)


class GRU4Rec(SequentialRecommender):
    """Recurrent session/sequence recommender.

    Parameters
    ----------
    n_items : int
        Catalogue size (tokens 1..n_items; 0 is padding).
    max_len, dim, layers : int
        Sequence length, hidden size, GRU layers.
    dropout : float
        Embedding dropout.
    filter_layers : int
        Low-pass filter layers (Oracle4Rec's encoders use them; 0 for plain GRU4Rec).
    ratio : float
        Filter quantile.

    """

    def __init__(self, n_items: int, max_len: int = 50, dim: int = 64, layers: int = 1,
                 dropout: float = 0.2, filter_layers: int = 0, ratio: float = 0.75) -> None:
        super().__init__()
        self.embedding = SeqEmbedding(n_items, max_len, dim, positions=False)
        self.body = GRU4RecBody(dim, layers, dropout, max_len, filter_layers, ratio)
        self.apply(init_weights)
        with torch.no_grad():
            self.embedding.item.weight[0].zero_()

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(B, L, d)`` of a left-padded token batch."""
        return self.body(self.embedding(seq), seq)
