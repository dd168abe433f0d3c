"""SASRec (Kang & McAuley, ICDM 2018) in the FMLP-Rec/Oracle4Rec layer style.

Embedding (item + learned position) -> LayerNorm -> dropout -> optional low-pass filter layers
(Oracle4Rec's, :class:`florec.models.seq_layers.FilterLayer`) -> causal transformer blocks. The last
hidden state represents the user; ``score`` ranks all items by dot product with it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from florec.models.seq_layers import (
    LN_EPS,
    Dropout,
    FilterLayer,
    SeqEmbedding,
    SequentialRecommender,
    TransformerBlock,
    causal_padding_mask,
    init_weights,
)
from florec.models.seq_packing import PackedPrefixes

#: groups of similar length that :meth:`SASRec.represent` runs attention in
REPRESENT_CHUNKS = 8


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
        self.dropout = Dropout(dropout)
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

    def last_state(self, emb: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """The last hidden state ``(B, d)``, ``forward(emb, seq)[:, -1]``.

        The last block runs at the last position only
        (:meth:`florec.models.seq_layers.TransformerBlock.forward_last`).
        """
        x = self.dropout(self.norm(emb))
        for layer in self.filters:
            x = layer(x)
        mask = causal_padding_mask(seq)
        for block in self.blocks[:-1]:
            x = block(x, mask)
        return self.blocks[-1].forward_last(x, mask)

    def packed_last_state(self, emb: torch.Tensor, packed: PackedPrefixes) -> torch.Tensor:
        """:meth:`last_state` from packed embeddings ``emb`` (T, d) (no filter layers).

        Position-wise layers run on the packed tokens, attention per length group
        (:class:`florec.models.seq_packing.PackedPrefixes`), the last block at each row's last
        token only. Returns ``(B, d)`` in ``packed``'s sorted row order.
        """
        if len(self.filters):
            raise ValueError("packed encoding needs filter_layers=0 (the filter mixes every "
                             "column, padding included)")
        x = self.dropout(self.norm(emb))
        for block in self.blocks[:-1]:
            x = block.forward_packed(x, packed)
        return self.blocks[-1].forward_last_packed(x, packed)


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
    n_user_tokens : int
        If > 0 (CoT-Rec), a private table ``user_token`` of that many rows: every input then
        carries the user id in column 0 (``(B, 1 + L)``) and that user's row is prepended to the
        item embeddings as an always-visible token without a position embedding.
    item_init, user_init : np.ndarray, optional
        ``(n_items, dim)`` initial item rows / ``(n_user_tokens, dim)`` initial user-token rows,
        copied in after the random initialisation. With every option off the model (weights
        included, for the same seed) is plain SASRec.

    """

    def __init__(self, n_items: int, max_len: int = 50, dim: int = 64, heads: int = 2,
                 layers: int = 2, dropout: float = 0.2, filter_layers: int = 0,
                 ratio: float = 0.75, n_user_tokens: int = 0,
                 item_init: np.ndarray | None = None, user_init: np.ndarray | None = None
                 ) -> None:
        super().__init__()
        self.embedding = SeqEmbedding(n_items, max_len, dim, positions=True)
        self.body = SASRecBody(dim, heads, layers, dropout, max_len, filter_layers, ratio)
        self.apply(init_weights)
        with torch.no_grad():
            self.embedding.item.weight[0].zero_()
        self.user_token: nn.Embedding | None = None
        if n_user_tokens:
            if filter_layers:
                raise ValueError("a user token needs filter_layers=0 (the filter's FFT size is L)")
            self.user_token = nn.Embedding(n_user_tokens, dim)  # 'user_' prefix: private
            init_weights(self.user_token)
        with torch.no_grad():
            if item_init is not None:
                self.embedding.item.weight[1:] = torch.as_tensor(item_init, dtype=torch.float32)
            if user_init is not None:
                if self.user_token is None:
                    raise ValueError("user_init needs n_user_tokens > 0")
                self.user_token.weight[:] = torch.as_tensor(user_init, dtype=torch.float32)

    def represent(self, seq: torch.Tensor) -> torch.Tensor:
        """The last hidden state ``(B, d)`` of each row, ``encode(seq)[:, -1]``, computed cheaply.

        Without filter layers or user token, a position's state depends on the real tokens up
        to it only (padding keys are masked, and ``exp(-10000)`` is 0 in float32), so each row
        needs only its columns from its first real token on, at their absolute positions. These
        are packed (:class:`florec.models.seq_packing.PackedPrefixes`): position-wise layers
        run on the rows' real tokens alone, attention in :data:`REPRESENT_CHUNKS` groups of
        similar length, and the last block at each row's last token only
        (:meth:`SASRecBody.packed_last_state`). The states equal ``encode(seq)[:, -1]`` up to
        float rounding; in training, dropout draws masks for the packed tokens only.
        """
        if self.user_token is not None:
            return self.encode(seq)[:, -1]
        if len(self.body.filters) or len(seq) == 0:  # the filter mixes every column
            return self.body.last_state(self.embedding(seq), seq)
        packed = PackedPrefixes.from_batch(seq, REPRESENT_CHUNKS)
        emb = self.embedding.item(packed.tokens)
        if self.embedding.position is not None:
            emb = emb + self.embedding.position(packed.positions)
        return self.body.packed_last_state(emb, packed)[packed.inverse]

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(B, L, d)`` of a left-padded token batch.

        With a user token, ``seq`` is ``(B, 1 + L)`` (user id, then the tokens) and the states are
        ``(B, 1 + L, d)``; the last one still belongs to the newest item.
        """
        if self.user_token is None:
            return self.body(self.embedding(seq), seq)
        users, tokens = seq[:, :1], seq[:, 1:]
        emb = torch.cat([self.user_token(users), self.embedding(tokens)], dim=1)
        return self.body(emb, torch.cat([torch.ones_like(users), tokens], dim=1))
