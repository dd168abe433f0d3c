"""Train/valid/test splits (leave-one-out, per-user ratio, global ratio, given), written once.

A split is built globally from a dataset, saved as RecBole atomic files
(``<dataset>.train.inter``, ``.valid.inter``, ``.test.inter``; header
``user_id:token item_id:token timestamp:float``, internal ids) with the id maps next to them,
and reused by every central and federated run of the same (dataset, split, seed).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from florec.recdata.errors import ConfigError, DataError
from florec.recdata.interactions import Interactions

SPLIT_KINDS = ("loo", "ratio", "global", "given", "ratio-fs")
PARTS = ("train", "valid", "test")
HEADER = "user_id:token\titem_id:token\ttimestamp:float"
log = logging.getLogger(__name__)


@dataclass
class Split:
    """Three interaction parts over one id space.

    Attributes
    ----------
    parts : dict
        ``{"train"|"valid"|"test": (user, item, time)}`` int64/int64/float64 arrays.
    n_users, n_items : int
        Sizes of the id space (internal ids are contiguous from 0).

    """

    parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    n_users: int
    n_items: int
    _csr: dict[str, sp.csr_matrix] = field(default_factory=dict, repr=False)

    def matrix(self, part: str) -> sp.csr_matrix:
        """Binary user x item CSR matrix of one part (cached)."""
        if part not in self._csr:
            user, item, _ = self.parts[part]
            data = np.ones(len(user), dtype=np.float32)
            m = sp.csr_matrix((data, (user, item)), shape=(self.n_users, self.n_items))
            m.sum_duplicates()
            m.data[:] = 1.0
            self._csr[part] = m
        return self._csr[part]

    def mask_for(self, part: str) -> sp.csr_matrix:
        """Items excluded from ranking ``part`` (see :func:`ranking_mask`)."""
        return ranking_mask(part, self.matrix("train"), self.matrix("valid"))


def ranking_mask(part: str, train: sp.csr_matrix, valid: sp.csr_matrix) -> sp.csr_matrix:
    """Items excluded from ranking: train for ``valid``, train + valid for ``test``.

    The one definition for the whole split (:meth:`Split.mask_for`) and for a node's rows of it
    (:class:`florec.client.trainers.bucket.Bucket`).

    Raises
    ------
    ValueError
        If ``part`` is neither ``valid`` nor ``test``.

    """
    if part == "valid":
        return train
    if part != "test":
        raise ValueError(f"no ranking mask for part '{part}'; use 'valid' or 'test'")
    m = (train + valid).tocsr()
    m.data[:] = 1.0
    return m


def _rank_within_user(user: np.ndarray, order_keys: tuple[np.ndarray, ...]) -> tuple:
    """Sort interactions by (user, *keys) and return (order, position in user, user counts)."""
    order = (
        np.lexsort(order_keys[::-1] + (user,)) if order_keys else np.argsort(user, kind="stable")
    )
    su = user[order]
    counts = np.bincount(su, minlength=int(user.max()) + 1 if len(user) else 0)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(su)) - starts[su]
    return order, pos, counts


def leave_one_out(inter: Interactions) -> np.ndarray:
    """Label interactions 0/1/2 (train/valid/test) leave-one-out by time.

    Per user, the last event goes to test and the second-last to valid. Ties in time keep the
    file order (stable sort). Users with fewer than 3 interactions stay in train. A dataset
    without timestamps (``has_time`` False) is split in file order, with a warning: there the
    held-out item follows the file's sort order (ML-1M's ``ratings_no_timestamp.csv``: the
    highest movie id), which biases accuracy.
    """
    if inter.presplit is not None:
        return inter.presplit.copy()
    if not inter.has_time:
        log.warning("split 'loo' on dataset %s, which has no timestamps: each user's held-out "
                    "items are the last in file order, not in time; use split='ratio' for "
                    "accuracy numbers (or a copy with timestamps, e.g. ML-1M's ratings.dat)",
                    inter.name or "(unnamed)")
    file_order = np.arange(len(inter))
    order, pos, counts = _rank_within_user(inter.user, (inter.time, file_order))
    n_u = counts[inter.user[order]]
    labels_sorted = np.zeros(len(order), dtype=np.int8)
    eligible = n_u >= 3
    labels_sorted[eligible & (pos == n_u - 1)] = 2
    labels_sorted[eligible & (pos == n_u - 2)] = 1
    labels = np.empty_like(labels_sorted)
    labels[order] = labels_sorted
    return labels


def ratio_counts(n: np.ndarray, ratios: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """RecBole's per-user part sizes: floor for valid/test, then move one item for tiny parts."""
    n = np.asarray(n, dtype=np.int64)
    n_valid = np.floor(ratios[1] * n).astype(np.int64)
    n_test = np.floor(ratios[2] * n).astype(np.int64)
    n_train = n - n_valid - n_test
    for part, r in ((n_test, ratios[2]), (n_valid, ratios[1])):
        move = (n_train > 1) & (r * n > 0) & (r * n < 1)
        part += move
        n_train -= move
    return n_train, n_valid, n_test


def _labels_by_rank(user: np.ndarray, idx: np.ndarray, pos: np.ndarray, n_train: np.ndarray,
                    n_valid: np.ndarray) -> np.ndarray:
    """Labels 0/1/2 from each interaction's rank within its user and the users' part sizes."""
    su = user[idx]
    labels_sorted = np.where(
        pos < n_train[su], 0, np.where(pos < n_train[su] + n_valid[su], 1, 2)
    ).astype(np.int8)
    labels = np.empty_like(labels_sorted)
    labels[idx] = labels_sorted
    return labels


def per_user_ratio(
    inter: Interactions, seed: int, ratios=(0.8, 0.1, 0.1), order: str = "random"
) -> np.ndarray:
    """Label interactions by a per-user ratio split (RecBole's rule), random or time order."""
    if order == "time":
        keys: tuple[np.ndarray, ...] = (inter.time, np.arange(len(inter)))
    else:
        keys = (np.random.default_rng(seed).random(len(inter)),)
    idx, pos, counts = _rank_within_user(inter.user, keys)
    n_train, n_valid, _ = ratio_counts(counts, ratios)
    return _labels_by_rank(inter.user, idx, pos, n_train, n_valid)


def fair_sampling_ratio(inter: Interactions, seed: int, test: float = 0.2,
                        valid_of_train: float = 0.1) -> np.ndarray:
    """Label Fair Sampling's split: per user a random 20% to test, then 10% of the rest to valid.

    Part sizes follow RecBole's rule (:func:`ratio_counts`) applied twice: first (1-test, 0,
    test) over the user's items, then (1-valid_of_train, valid_of_train, 0) over what is left.
    """
    keys = (np.random.default_rng(seed).random(len(inter)),)
    idx, pos, counts = _rank_within_user(inter.user, keys)
    rest, _, n_test = ratio_counts(counts, (1 - test, 0.0, test))
    n_train, n_valid, _ = ratio_counts(rest, (1 - valid_of_train, valid_of_train, 0.0))
    return _labels_by_rank(inter.user, idx, pos, n_train, n_valid)


def global_ratio(inter: Interactions, seed: int, ratios=(0.72, 0.08, 0.2)) -> np.ndarray:
    """Label a random split of all interactions, not grouped by user (FedCIA's protocol)."""
    perm = np.random.default_rng(seed).permutation(len(inter))
    n_train = int(round(ratios[0] * len(inter)))
    n_valid = int(round(ratios[1] * len(inter)))
    labels = np.full(len(inter), 2, dtype=np.int8)
    labels[perm[:n_train]] = 0
    labels[perm[n_train : n_train + n_valid]] = 1
    return labels


def given_split(inter: Interactions) -> np.ndarray:
    """Return the split that ships with the dataset (``inter.presplit``, labels 0/1/2).

    Raises
    ------
    ConfigError
        The dataset ships no split.

    """
    if inter.presplit is None:
        raise ConfigError(f"dataset {inter.name or '(unnamed)'!r} ships no split; "
                          "use loo, ratio or global")
    return inter.presplit.copy()


def make_split(inter: Interactions, kind: str, seed: int, ratios=None) -> Split:
    """Split a dataset.

    ``kind`` is ``loo``, ``ratio`` (per user, 0.8/0.1/0.1), ``ratio-fs`` (per user 80/20, then
    10% of train to valid: Fair Sampling's protocol), ``global`` or ``given`` (the dataset's own
    split, e.g. the FedCIA authors'; ``loo`` also uses a shipped split).
    """
    if kind == "given":
        labels = given_split(inter)
    elif kind == "loo":
        labels = leave_one_out(inter)
    elif kind == "ratio":
        labels = per_user_ratio(inter, seed, ratios or (0.8, 0.1, 0.1))
    elif kind == "ratio-fs":
        labels = fair_sampling_ratio(inter, seed)
    elif kind == "global":
        labels = global_ratio(inter, seed, ratios or (0.72, 0.08, 0.2))
    else:
        raise ConfigError(f"split '{kind}' is unknown; choose one of {', '.join(SPLIT_KINDS)}")
    parts = {
        name: (inter.user[labels == k], inter.item[labels == k], inter.time[labels == k])
        for k, name in enumerate(PARTS)
    }
    return Split(parts=parts, n_users=inter.n_users, n_items=inter.n_items)


def write_split(
    split: Split, out_dir: Path, dataset: str, inter: Interactions | None = None
) -> None:
    """Write the split as RecBole atomic files plus id maps into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        for part, (user, item, time) in split.parts.items():
            table = np.column_stack([user, item, time]).astype(object)
            np.savetxt(
                tmp / f"{dataset}.{part}.inter",
                table,
                fmt=["%d", "%d", "%.6f"],
                delimiter="\t",
                header=HEADER,
                comments="",
            )
        for kind, n, raw in (
            ("user", split.n_users, None if inter is None else inter.user_ids),
            ("item", split.n_items, None if inter is None else inter.item_ids),
        ):
            raw = np.arange(n) if raw is None else raw
            lines = "\n".join(f"{i}\t{r}" for i, r in enumerate(raw.tolist()))
            (tmp / f"{dataset}.{kind}.map").write_text(f"internal\traw\n{lines}\n")
        try:
            os.rename(tmp, out_dir)
        except OSError:  # another process wrote the same split first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_split(split_dir: Path, dataset: str) -> Split:
    """Read a split written by :func:`write_split` (or any RecBole atomic files with int ids)."""
    split_dir = Path(split_dir)
    parts = {}
    for part in PARTS:
        path = split_dir / f"{dataset}.{part}.inter"
        if not path.exists():
            raise DataError(
                f"split file {path} is missing; delete {split_dir} to rebuild the split"
            )
        with path.open() as fh:  # an empty part (e.g. no user has enough events for LOO)
            empty = next(fh, None) is None or next(fh, "").strip() == ""
        arr = np.zeros((0, 3)) if empty else np.loadtxt(path, delimiter="\t", skiprows=1,
                                                         ndmin=2, dtype=np.float64)
        parts[part] = (arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64),
                       arr[:, 2].copy())  # a view would keep the whole (n, 3) array alive
    sizes = []
    for kind in ("user", "item"):
        path = split_dir / f"{dataset}.{kind}.map"
        if path.exists():
            sizes.append(sum(1 for _ in path.open()) - 1)
        else:
            sizes.append(
                1 + max(int(p[0 if kind == "user" else 1].max(initial=-1)) for p in parts.values())
            )
    return Split(parts=parts, n_users=sizes[0], n_items=sizes[1])
