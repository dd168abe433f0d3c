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

import math
from dataclasses import dataclass, field

import torch

from florec.models.seq_layers import causal_padding_mask


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

    Attention reads and writes the packed rows through per-head indices built from ``grid`` and
    ``back`` once per head count (:meth:`_head_index`), so queries, keys and values arrive in
    the ``(rows * heads, width, dh)`` layout of a batched matrix product without a copy.
    """

    inverse: torch.Tensor
    tokens: torch.Tensor
    positions: torch.Tensor
    last: torch.Tensor
    grid: torch.Tensor
    back: torch.Tensor
    groups: list[tuple[int, int, int]]
    masks: list[torch.Tensor]
    _cache: dict[tuple[str, int], list[torch.Tensor]] = field(default_factory=dict, repr=False)

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
        dh = dim // heads
        grids = self._gather(qkv, 3, heads)
        out = []
        for (_, rows, width), mask, cells in zip(self.groups, self._head_index("mask", heads),
                                                 grids, strict=True):
            q, k, v = cells.view(3, rows * heads, width, dh)
            att = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=1 / math.sqrt(dh))
            out.append(torch.bmm(att.softmax(-1), v).view(-1, dh))
        back = self._head_index("back", heads)[0]
        return torch.cat(out).index_select(0, back).view(-1, dim)

    def attend_last(self, q: torch.Tensor, kv: torch.Tensor, heads: int) -> torch.Tensor:
        """Attention of each sorted row's last query ``q`` (B, d) over packed ``kv`` (T, 2d).

        Returns the ``(B, d)`` contexts in the sorted order.
        """
        dim = q.shape[1]
        dh = dim // heads
        queries = q.split([rows for _, rows, _ in self.groups])
        out = []
        for (_, rows, width), mask, cells, query in zip(
                self.groups, self._head_index("mask", heads), self._gather(kv, 2, heads),
                queries, strict=True):
            k, v = cells.view(2, rows * heads, width, dh)
            att = torch.baddbmm(mask[:, -1:, :], query.reshape(rows * heads, 1, dh),
                                k.transpose(1, 2), alpha=1 / math.sqrt(dh))
            out.append(torch.bmm(att.softmax(-1), v).view(rows, dim))
        return torch.cat(out)

    def _gather(self, packed: torch.Tensor, parts: int, heads: int) -> tuple[torch.Tensor, ...]:
        """Each group's ``(parts, rows * heads, width, dh)`` cells of packed ``(T, parts * d)``.

        One gather and one split, so the backward pass is one scatter-add and one concatenation
        (slicing per group would add a zero-filled full-size gradient per group).
        """
        index = self._head_index(f"grid{parts}", heads)[0]
        dh = packed.shape[1] // (parts * heads)
        return packed.reshape(-1, dh).index_select(0, index).split(
            [parts * rows * heads * width for _, rows, width in self.groups])

    def _head_index(self, kind: str, heads: int) -> list[torch.Tensor]:
        """Per-head indices, built once per ``kind`` and head count.

        ``grid<p>``: for ``p`` parts (q, k, v or k, v) of ``heads`` heads each, the row of the
        packed ``(T * p * heads, dh)`` view read by each group's ``(p, rows, heads, width)``
        cell, groups concatenated. ``back``: the row of the concatenated ``(rows, heads,
        width)`` outputs that holds each packed token's heads, ``(T * heads,)``. ``mask``: each
        group's mask repeated per head, ``(rows * heads, width, width)``.
        """
        key = (kind, heads)
        if key not in self._cache:
            head = torch.arange(heads, device=self.grid.device)
            if kind == "mask":
                self._cache[key] = [m.expand(-1, heads, -1, -1).reshape(-1, *m.shape[2:])
                                    for m in self.masks]
            elif kind == "back":  # a group's tokens are a contiguous range of cells
                out, cells = [], 0
                for _, rows, w in self.groups:
                    local = self.back[(self.back >= cells) & (self.back < cells + rows * w)]
                    local = local - cells
                    row, col = (local // w)[:, None], (local % w)[:, None]
                    out.append(heads * cells + (row * heads + head) * w + col)
                    cells += rows * w
                self._cache[key] = [torch.cat(out).reshape(-1)]
            else:
                parts = int(kind[4:])
                part = torch.arange(parts, device=self.grid.device)
                out, cells = [], 0
                for _, rows, w in self.groups:
                    tok = self.grid[cells:cells + rows * w].view(1, rows, 1, w)
                    out.append((tok * parts * heads + part.view(-1, 1, 1, 1) * heads
                                + head.view(1, 1, -1, 1)).reshape(-1))
                    cells += rows * w
                self._cache[key] = [torch.cat(out)]
        return self._cache[key]


def _split_sizes(n: int, parts: int) -> list[int]:
    """Sizes of ``torch.arange(n).tensor_split(min(parts, n))``: the first ``n % parts`` larger."""
    parts = min(parts, n)
    size, extra = divmod(n, parts)
    return [size + 1] * extra + [size] * (parts - extra)
