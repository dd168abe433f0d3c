"""The in-memory form of a dataset: implicit-feedback interactions with contiguous ids."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from florec.recdata.errors import DataError


@dataclass
class Interactions:
    """Implicit-feedback interactions of one dataset, ids contiguous from 0.

    Attributes
    ----------
    user, item : np.ndarray
        int64 arrays of equal length: internal user and item ids.
    time : np.ndarray
        float64 timestamps (or the original file order where the source has none).
    n_users, n_items : int
        Catalogue sizes (items may include some that no user interacted with).
    user_ids, item_ids : np.ndarray
        Raw ids of the source, indexed by internal id (``user_ids[u]`` is user ``u``'s raw id).
    has_time : bool
        Whether ``time`` holds real timestamps.
    item_titles : list of str, optional
        Item text (titles), indexed by internal item id, where the source has it.
    presplit : np.ndarray, optional
        int8 array (0 train, 1 valid, 2 test) where the source ships its own split.

    """

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray
    n_users: int
    n_items: int
    user_ids: np.ndarray
    item_ids: np.ndarray
    has_time: bool = True
    item_titles: list[str] | None = None
    presplit: np.ndarray | None = None
    name: str = field(default="")

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @classmethod
    def from_raw(
        cls,
        raw_user: np.ndarray,
        raw_item: np.ndarray,
        time: np.ndarray | None,
        *,
        name: str = "",
        item_catalogue: np.ndarray | None = None,
        item_titles: dict | None = None,
        presplit: np.ndarray | None = None,
    ) -> Interactions:
        """Map raw ids to contiguous internal ids (sorted raw order) and build the object.

        Parameters
        ----------
        raw_user, raw_item : np.ndarray
            Raw ids, one entry per interaction.
        time : np.ndarray or None
            Timestamps; ``None`` uses the file order as time and sets ``has_time=False``.
        name : str
            Dataset name.
        item_catalogue : np.ndarray, optional
            All raw item ids of the catalogue (items without interactions included).
        item_titles : dict, optional
            Raw item id -> title.
        presplit : np.ndarray, optional
            Per-interaction split labels (0 train, 1 valid, 2 test).

        Raises
        ------
        DataError
            A timestamp is NaN or infinite.

        """
        user_ids, user = np.unique(np.asarray(raw_user), return_inverse=True)
        items_all = (
            np.asarray(raw_item)
            if item_catalogue is None
            else np.concatenate([np.asarray(item_catalogue), np.asarray(raw_item)])
        )
        item_ids = np.unique(items_all)
        item = np.searchsorted(item_ids, np.asarray(raw_item))
        has_time = time is not None
        t = np.arange(len(user), dtype=np.float64) if time is None else np.asarray(time, np.float64)
        if not np.isfinite(t).all():
            raise DataError(f"dataset {name or '(unnamed)'!r}: {int((~np.isfinite(t)).sum())} "
                            "timestamps are NaN or infinite; fix them in the source file")
        titles = None
        if item_titles is not None:
            titles = [str(item_titles.get(raw, "")) for raw in item_ids.tolist()]
        return cls(
            user=user.astype(np.int64),
            item=item.astype(np.int64),
            time=t,
            n_users=len(user_ids),
            n_items=len(item_ids),
            user_ids=user_ids,
            item_ids=item_ids,
            has_time=has_time,
            item_titles=titles,
            presplit=None if presplit is None else np.asarray(presplit, np.int8),
            name=name,
        )
