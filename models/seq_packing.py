"""Packed layout of a batch of left-padded prefixes for a causal encoder's last state.

SASRec trains on one sample per prefix (:func:`florec.recdata.sequences.past_samples`): rows of
1..L real tokens, left-padded to L, on average less than half of them real. A causal encoder's
state at a real position depends only on the real tokens up to it (padding keys are masked with
-10000, exactly 0 after the softmax in float32), so :class:`PackedPrefixes` keeps only each row's
columns from its first real token on, with their absolute positions:

- position-wise layers (embeddings, LayerNorm, dropout, the dense and feed-forward layers) run
  once per batch on the packed ``(T, d)`` tokens, ``T`` the rows' total length, no padding;
- attention runs per group of rows of similar length on a grid trimmed to the group's longest
  row (:meth:`PackedPrefixes.attend`); grid cells before a row's first token read an arbitrary
  packed token as key, masked, and their outputs are dropped, so they add exactly 0 to every
  output and gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from florec.models.seq_layers import causal_padding_mask, masked_attention


@dataclass
class PackedPrefixes:
    """Index tensors of one packed batch (see :meth:`from_batch`).

    Attributes
    ----------
    inverse : torch.Tensor
        ``(B,)`` position of each input row in the length-sorted order (``sorted[inverse]``
        restores the input order).
    tokens, positions : torch.Tensor
        ``(T,)`` packed token ids and their absolute positions (0..L-1), row after row.
    last : torch.Tensor
        ``(B,)`` packed index of each sorted row's last token.
    grid : torch.Tensor
        ``(C,)`` packed token read by each cell of the groups' grids, group after group, each
        grid ``(rows, width)`` row-major.
    back : torch.Tensor
        ``(T,)`` grid cell of each packed token.
    groups : list of (int, int, int)
        (first sorted row, rows, width) of each group.
    masks : list of torch.Tensor
        Each group's additive mask ``(rows, 1, width, width)``
        (:func:`florec.models.seq_layers.causal_padding_mask` of its trimmed rows).

    """

    inverse: torch.Tensor
    tokens: torch.Tensor
    positions: torch.Tensor
    last: torch.Tensor
    grid: torch.Tensor
    back: torch.Tensor
    groups: list[tuple[int, int, int]]
    masks: list[torch.Tensor]

    @classmethod
    def from_batch(cls, seq: torch.Tensor, n_groups: int = 8) -> PackedPrefixes:
        """Pack a non-empty left-padded batch ``seq`` (B, L) in ``n_groups`` length groups.

        A row's length is the number of its columns from its first real token on (1 for a row
        of padding only, which keeps its last column). Rows are sorted by length, longest
        first, and split as :meth:`torch.Tensor.tensor_split` would.
        """
        n_rows, length = seq.shape
        device = seq.device
        real = seq > 0
        need = torch.where(real.any(1), length - real.int().argmax(1), 1)
        order = torch.argsort(need, descending=True, stable=True)
        need, seq = need[order], seq[order]
        cols = torch.arange(length, device=device)
        kept = cols[None, :] >= (length - need)[:, None]
        starts = need.cumsum(0) - need
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(n_rows, device=device)
        widths = need.tolist()
        groups, grid, back, masks = [], [], [], []
        first, cell = 0, 0
        for rows in _split_sizes(n_rows, n_groups):
            width = widths[first]
            local = cols[None, :width] - (width - need[first:first + rows])[:, None]
            grid.append((starts[first:first + rows, None] + local.clamp(min=0)).reshape(-1))
            cells = cell + torch.arange(rows * width, device=device).view(rows, width)
            back.append(cells[local >= 0])
            masks.append(causal_padding_mask(seq[first:first + rows, length - width:]))
            groups.append((first, rows, width))
            first, cell = first + rows, cell + rows * width
        return cls(inverse=inverse, tokens=seq[kept], positions=cols.expand(n_rows, -1)[kept],
                   last=starts + need - 1, grid=torch.cat(grid), back=torch.cat(back),
                   groups=groups, masks=masks)

    def attend(self, qkv: torch.Tensor, heads: int) -> torch.Tensor:
        """Causal self-attention of packed ``qkv`` (T, 3d) (query, key, value) -> (T, d)."""
        dim = qkv.shape[1] // 3
        out = []
        for (_, rows, width), mask, cells in zip(self.groups, self.masks, self._grids(qkv),
                                                 strict=True):
            q, k, v = cells.view(rows, width, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            out.append(masked_attention(q, k, v, mask).transpose(1, 2).reshape(-1, dim))
        return torch.cat(out).index_select(0, self.back)

    def attend_last(self, q: torch.Tensor, kv: torch.Tensor, heads: int) -> torch.Tensor:
        """Attention of each sorted row's last query ``q`` (B, d) over packed ``kv`` (T, 2d).

        Returns the ``(B, d)`` contexts in the sorted order.
        """
        dim = q.shape[1]
        queries = q.split([rows for _, rows, _ in self.groups])
        out = []
        for (_, rows, width), mask, cells, query in zip(self.groups, self.masks, self._grids(kv),
                                                        queries, strict=True):
            k, v = cells.view(rows, width, 2, heads, dim // heads).permute(2, 0, 3, 1, 4)
            query = query.view(rows, heads, 1, dim // heads)
            out.append(masked_attention(query, k, v, mask[:, :, -1:, :]).reshape(rows, dim))
        return torch.cat(out)

    def _grids(self, packed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each group's grid cells ``(rows * width, ...)`` of packed rows ``packed`` (T, ...).

        One gather and one split, so the backward pass is one scatter-add and one concatenation
        (slicing per group would add a zero-filled ``(C, ...)`` gradient per group).
        """
        return packed.index_select(0, self.grid).split(
            [rows * width for _, rows, width in self.groups])


def _split_sizes(n: int, parts: int) -> list[int]:
    """Sizes of ``torch.arange(n).tensor_split(min(parts, n))``: the first ``n % parts`` larger."""
    parts = min(parts, n)
    size, extra = divmod(n, parts)
    return [size + 1] * extra + [size] * (parts - extra)
