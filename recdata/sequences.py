"""Time-ordered per-user item sequences and Oracle4Rec-style training samples (numpy only).

Sequences are built from a :class:`florec.recdata.splits.Split`: each user's train items sorted by
time (ties keep the split file's order, as the leave-one-out split does). Item ids are shifted by
one (``token = item + 1``) so that token 0 is padding. Windows are **left-padded** to length ``L``.

Inputs at evaluation (evaluation.md §1): validation reads the last ``L`` train items, test reads
the last ``L`` items of train + validation (for leave-one-out: train + the validation item).

Training samples follow the Oracle4Rec code (oracle4rec.md §2): the window ``w`` is the last
``L`` train items; each position ``t`` of ``w`` is one sample whose **past input** is ``w[:t]``
left-padded to ``L`` and whose target is ``w[t]``; its **future input** is the last ``L-F``
past items followed by ``w[t : t+F]`` (the window's last item excluded unless ``t`` is last),
right-padded, with the targets shifted by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from florec.recdata.errors import ConfigError
from florec.recdata.splits import Split

PAD = 0


def _ragged(user: np.ndarray, item: np.ndarray, time: np.ndarray, n_users: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Items sorted by (user, time, input order) as CSR-style ``(indptr, tokens)``."""
    order = np.lexsort((np.arange(len(user)), time, user))
    counts = np.bincount(user, minlength=n_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, item[order].astype(np.int64) + 1


def _left_padded(indptr: np.ndarray, tokens: np.ndarray, users: np.ndarray, length: int
                 ) -> np.ndarray:
    """The last ``length`` tokens of each user's row, left-padded with 0."""
    users = np.asarray(users, dtype=np.int64)
    ends = indptr[users + 1]
    idx = ends[:, None] - length + np.arange(length)[None, :]
    valid = idx >= indptr[users][:, None]
    out = np.where(valid, tokens[np.clip(idx, 0, max(len(tokens) - 1, 0))] if len(tokens) else 0,
                   PAD)
    return out.astype(np.int64)


@dataclass
class UserSequences:
    """Time-ordered token sequences of every user: train, and train followed by validation.

    Attributes
    ----------
    n_users, n_items : int
        Sizes of the split's id space (tokens run 1..n_items).
    train_ptr, train_tokens : np.ndarray
        CSR-style rows of the train items in time order.
    seen_ptr, seen_tokens : np.ndarray
        Rows of train + validation items in time order (the test input).

    """

    n_users: int
    n_items: int
    train_ptr: np.ndarray
    train_tokens: np.ndarray
    seen_ptr: np.ndarray
    seen_tokens: np.ndarray

    @classmethod
    def from_split(cls, split: Split) -> UserSequences:
        """Sort each user's train (and train + valid) interactions by time."""
        tu, ti, tt = split.parts["train"]
        vu, vi, vt = split.parts["valid"]
        train_ptr, train_tokens = _ragged(tu, ti, tt, split.n_users)
        # validation items come after every train item of the same time (stable: train first)
        seen_ptr, seen_tokens = _ragged(np.concatenate([tu, vu]), np.concatenate([ti, vi]),
                                        np.concatenate([tt, vt]), split.n_users)
        return cls(split.n_users, split.n_items, train_ptr, train_tokens, seen_ptr, seen_tokens)

    def inputs(self, users: np.ndarray, part: str, length: int) -> np.ndarray:
        """Left-padded model inputs ``(len(users), length)`` for ``part``.

        ``train`` and ``valid`` read the last ``length`` train items; ``test`` reads the last
        ``length`` items of train + validation.

        Raises
        ------
        ConfigError
            If ``part`` is not train, valid or test.

        """
        if part in ("train", "valid"):
            return _left_padded(self.train_ptr, self.train_tokens, users, length)
        if part == "test":
            return _left_padded(self.seen_ptr, self.seen_tokens, users, length)
        raise ConfigError(f"sequence part '{part}' is unknown; use train, valid or test")

    def train_lengths(self, users: np.ndarray) -> np.ndarray:
        """Number of train items of each user."""
        users = np.asarray(users, dtype=np.int64)
        return self.train_ptr[users + 1] - self.train_ptr[users]


def sample_positions(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of every training position: each non-padding cell of the windows."""
    rows, cols = np.nonzero(windows != PAD)
    return rows.astype(np.int64), cols.astype(np.int64)


def _gather(windows: np.ndarray, rows: np.ndarray, idx: np.ndarray, valid: np.ndarray
            ) -> np.ndarray:
    length = windows.shape[1]
    picked = windows[rows[:, None], np.clip(idx, 0, length - 1)]
    return np.where(valid, picked, PAD)


def past_samples(windows: np.ndarray, rows: np.ndarray, cols: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Past inputs ``(N, L)`` (the window's items before the target, left-padded) and targets.

    Windows are left-padded, so the items before column ``c`` are columns ``c-L .. c-1``.
    """
    length = windows.shape[1]
    idx = cols[:, None] - length + np.arange(length)[None, :]
    return _gather(windows, rows, idx, idx >= 0), windows[rows, cols]


def future_samples(windows: np.ndarray, rows: np.ndarray, cols: np.ndarray, future: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Future inputs and targets ``(N, L)`` of the future encoder (oracle4rec.md §2).

    Input: the last ``L-F`` items before the target, then ``w[t], ..., w[t+F-1]`` (only items
    before the window's last one, except ``w[t]`` itself when ``t`` is last), right-padded.
    Targets: the input shifted by one, i.e. the items ``w[t-L+F+1] .. w[t+F]`` (0 beyond the
    window). The last ``F+1`` target positions are ``w[t], ..., w[t+F]``.

    Raises
    ------
    ConfigError
        If ``future`` is not in ``1 .. L-2``.

    """
    length = windows.shape[1]
    if not 1 <= future <= length - 2:
        raise ConfigError(f"oracle-future={future} must be in 1..max-seq-len-2={length - 2}; "
                          "lower oracle-future or raise max-seq-len")
    n_past = length - future
    c = cols[:, None]
    past_idx = c - n_past + np.arange(n_past)[None, :]
    k = np.arange(future)[None, :]
    fut_idx = c + k
    fut_ok = (fut_idx <= length - 2) | (k == 0)
    inputs = np.concatenate([_gather(windows, rows, past_idx, past_idx >= 0),
                             _gather(windows, rows, fut_idx, fut_ok)], axis=1)
    tgt_idx = c - n_past + 1 + np.arange(length)[None, :]
    targets = _gather(windows, rows, tgt_idx, (tgt_idx >= 0) & (tgt_idx <= length - 1))
    return inputs, targets


def sample_negatives(windows: np.ndarray, rows: np.ndarray, n_items: int, shape: tuple[int, ...],
                     rng: np.random.Generator, max_tries: int = 100) -> np.ndarray:
    """Uniform negative tokens in ``1..n_items`` that avoid the sample's window items.

    As in the Oracle4Rec code, only the current window's items are avoided, not the user's
    whole history. ``shape`` is ``(N,)`` or ``(N, m)``; rows whose window holds every item keep
    their last draw.
    """
    neg = rng.integers(1, n_items + 1, size=shape)
    win = windows[rows]
    for _ in range(max_tries):
        flat = neg.reshape(len(rows), -1)
        clash = (flat[:, :, None] == win[:, None, :]).any(-1)
        if not clash.any():
            break
        flat[clash] = rng.integers(1, n_items + 1, size=int(clash.sum()))
        neg = flat.reshape(shape)
    return neg
