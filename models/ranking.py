"""Top-K lists in FloRec's total order: score descending, then item id ascending.

Masked items carry the score ``-inf`` and are never listed; a NaN score is an error. The order
makes every list independent of batch size, chunking and device (evaluation.md section 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def check_scores(scores: torch.Tensor) -> torch.Tensor:
    """Validate ``(B, n)`` scores and return them as floats (no copy for float32/64)."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (batch, n_items), got {tuple(scores.shape)}")
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # exact, keeps every comparison and tie
    elif not scores.is_floating_point():
        if scores.is_complex():
            raise TypeError("complex scores cannot be ranked")
        scores = scores.double()
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN; a NaN score is an error, not a low score")
    return scores


def check_k(k: int, name: str = "k") -> int:
    """``k`` as an int; a ValueError naming ``name`` unless it is a positive integer."""
    if isinstance(k, bool) or int(k) != k or int(k) < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def check_ks(ks: Sequence[int]) -> list[int]:
    """Cut-offs ``ks`` (one int or a sequence) as a sorted list of distinct positive ints."""
    if isinstance(ks, (int, np.integer)):
        ks = [int(ks)]
    out = sorted({check_k(k, "each k in ks") for k in ks})
    if not out:
        raise ValueError("ks must hold at least one cut-off")
    return out


def ranked_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k ids and the sorted top-(k+1) values of validated float scores.

    Returns ``ids`` ``(B, k)`` int64 (``-1`` pads) in the total order, and ``vals``
    ``(B, min(k + 1, n))``: the largest scores of each row, descending.
    """
    n_rows, n = scores.shape
    dev = scores.device
    ids = torch.full((n_rows, k), -1, dtype=torch.int64, device=dev)
    if n_rows == 0 or n == 0:
        return ids, scores.new_empty((n_rows, 0))

    kk = min(k + 1, n)
    vals, idx = torch.topk(scores, kk, dim=1, largest=True, sorted=True)
    kt = min(k, n)
    top_vals, top_idx = vals[:, :kt], idx[:, :kt]
    # The topk set is exact unless the k-th score is tied with the (k+1)-th one (a boundary tie):
    # then which tied items topk returned is unspecified and must be redone in id order.
    if kt < kk:
        kth = vals[:, kt - 1]
        fix = torch.nonzero((vals[:, kt] == kth) & (kth > -math.inf)).squeeze(1)
        if fix.numel() > 0:
            top_idx = top_idx.clone()
            top_idx[fix] = _fill_boundary_ties(scores[fix], top_vals[fix], top_idx[fix], kth[fix])
    # Masked (-inf) items are never listed: they become -1 pads.
    top_idx = torch.where(top_vals > -math.inf, top_idx, torch.full_like(top_idx, -1))

    # Order the exact set: id ascending, then a stable sort by score descending.
    key = torch.where(top_idx < 0, torch.full_like(top_idx, n), top_idx)
    order = torch.argsort(key, dim=1)
    top_idx = torch.gather(top_idx, 1, order)
    s = torch.gather(scores, 1, top_idx.clamp(min=0))
    s = torch.where(top_idx < 0, torch.full_like(s, -math.inf), s)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    ids[:, :kt] = torch.gather(top_idx, 1, order)
    return ids, vals


def _fill_boundary_ties(
    scores: torch.Tensor, top_vals: torch.Tensor, top_idx: torch.Tensor, kth: torch.Tensor
) -> torch.Tensor:
    """Redo the top-k set of rows whose k-th score is tied with the (k+1)-th one.

    The set is all items strictly above the k-th score (fewer than k, and the leading entries of
    the sorted topk output), then the items equal to it in ascending id order.
    """
    n_rows, n = scores.shape
    k = top_idx.shape[1]
    n_above = (top_vals > kth[:, None]).sum(1)
    key_dtype = torch.int32 if n < 2**31 - 1 else torch.int64
    rev_id = torch.arange(n, 0, -1, dtype=key_dtype, device=scores.device)  # smaller id, larger key
    key = torch.where(scores == kth[:, None], rev_id, torch.zeros((), dtype=key_dtype))
    tied = torch.topk(key, k, dim=1, largest=True, sorted=True).indices  # tied ids, ascending
    pos = torch.arange(k, device=scores.device).expand(n_rows, k)
    take_tied = pos >= n_above[:, None]
    from_tied = torch.gather(tied, 1, (pos - n_above[:, None]).clamp(min=0))
    return torch.where(take_tied, from_tied, top_idx)


def topk_items(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-``k`` item ids of each row in FloRec's total order.

    The order is score descending, then item id ascending: the same list as the first ``k``
    entries of ``torch.sort(scores, descending=True, stable=True)``, without the full sort.
    Items scored ``-inf`` (masked) are never listed.

    Parameters
    ----------
    scores : torch.Tensor
        ``(B, n_items)`` scores, masked items at ``-inf``. Must not contain NaN.
    k : int
        List length, at least 1.

    Returns
    -------
    torch.Tensor
        ``(B, k)`` int64 item ids, on the device of ``scores``; ``-1`` fills the places beyond the
        number of finite candidates.

    Raises
    ------
    ValueError
        If ``scores`` contains NaN, is not 2-D, or ``k`` is not a positive integer.

    """
    k = check_k(k)
    ids, _ = ranked_topk(check_scores(scores), k)
    return ids
