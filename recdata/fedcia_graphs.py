"""The FedCIA authors' per-client training graphs of Book-Crossing, Amazon Beauty and Netflix.

Data root layout (``<root>/fedcia/``): ``bx/<c>/norm_adj.npz`` (and ``beauty/``, ``netflix/``)
for clients ``c = 0..99`` (github.com/Mingzhe-Han/FedCIA @ bbc4224). Each file is the client's
symmetric normalised adjacency over ``[its users; all items]``: the upper-right block (client
users x items) holds one non-zero per training interaction. Client ``c`` holds the consecutive
global users after those of clients ``0..c-1``. Only the training graph ships, so these datasets
carry no split: build a seeded one (``split=ratio`` or ``global``) from it.

Integrity: every file read is hashed, and the digests must reproduce the embedded *manifest
digest* (the sha256 of the sorted ``<sha256>  <path>`` lines, as in ``fedcia/bx.sha256``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from florec.recdata.checksums import sha256_bytes
from florec.recdata.errors import DataError
from florec.recdata.interactions import Interactions

N_CLIENTS = 100


@dataclass(frozen=True)
class GraphSource:
    """One FedCIA graph dataset: its folder under ``fedcia/``, item count and manifest digest."""

    name: str
    folder: str
    n_items: int
    manifest_sha256: str


GRAPH_SOURCES: dict[str, GraphSource] = {s.name: s for s in (
    GraphSource("fedcia-bx", "bx", 19_997,
                "8cf35e6ce0558119bcdb5187c59a837650010a4be5e1e2bb4ef22baa32be3097"),
    GraphSource("fedcia-beauty", "beauty", 12_100,
                "2032986520d71257f3ea28afa49ceed97b7c312b7823b2b86768b9de2c7dd570"),
    GraphSource("fedcia-netflix", "netflix", 17_719,
                "3423d4f80a3275c1db58ca866eec52ec87e8318996ed439b03c50dd0a1e88f29"),
)}


def _fix(src: GraphSource, root: Path | None) -> str:
    where = f"{'<data_root>' if root is None else root}/fedcia/{src.folder}"
    return (f"put the authors' per-client folders <c>/norm_adj.npz (github.com/Mingzhe-Han/FedCIA"
            f" @ bbc4224) at {where} (set FLOREC_DATA_DIR)")


def _client_block(data: bytes, rel: str, src: GraphSource, fix: str) -> sp.coo_matrix:
    """The (client users x items) block of one ``norm_adj.npz``."""
    try:
        adj = sp.load_npz(io.BytesIO(data)).tocsr()
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{rel} is not a readable scipy .npz matrix ({str(exc)[:80]}); {fix}"
                        ) from None
    n_users = adj.shape[0] - src.n_items
    if adj.shape[0] != adj.shape[1] or n_users < 0:
        raise DataError(f"{rel} has shape {adj.shape}, not (users + {src.n_items}) squared; {fix}")
    return adj[:n_users, n_users:].tocoo()


def load_fedcia_graph(name: str, root: Path | None) -> Interactions:
    """Load one FedCIA training graph as implicit interactions (no split, no timestamps).

    Parameters
    ----------
    name : {"fedcia-bx", "fedcia-beauty", "fedcia-netflix"}
        The dataset.
    root : Path or None
        The data root (holding ``fedcia/``); ``None`` means none is set.

    Returns
    -------
    Interactions
        One row per training edge, sorted by (user, item); ``has_time`` is False (``time`` is
        that order); users numbered client by client, items by column.

    Raises
    ------
    DataError
        The folder is missing, a file is unreadable or malformed, or the files are not the
        authors' (manifest sha256).

    """
    src = GRAPH_SOURCES[name]
    folder = None if root is None else root / "fedcia" / src.folder
    fix = _fix(src, root)
    if folder is None or not folder.is_dir():
        where = "no data folder is set" if folder is None else f"{folder} does not exist"
        raise DataError(f"dataset {name!r} is not on this machine ({where}); {fix}")
    digests, users, items = {}, [], []
    offset = 0
    for c in range(N_CLIENTS):
        rel = f"{src.folder}/{c}/norm_adj.npz"
        path = folder / str(c) / "norm_adj.npz"
        if not path.is_file():
            raise DataError(f"dataset {name!r}: {path} is missing; {fix}")
        data = path.read_bytes()
        digests[rel] = sha256_bytes(data)
        block = _client_block(data, rel, src, fix)
        users.append(block.row.astype(np.int64) + offset)
        items.append(block.col.astype(np.int64))
        offset += block.shape[0]
    manifest = "".join(f"{digests[p]}  {p}\n" for p in sorted(digests))
    if sha256_bytes(manifest.encode()) != src.manifest_sha256:
        listed = folder.parent / f"{src.folder}.sha256"
        bad = ""
        if listed.is_file():
            expected = {p: h for h, p in (line.split(None, 1) for line in
                                          listed.read_text().splitlines() if line.strip())}
            bad = next((p for p in sorted(digests) if expected.get(p) != digests[p]), "")
        what = f"{bad} fails its sha256 check" if bad else "the files' sha256 do not match"
        raise DataError(f"dataset {name!r} in {folder} is not the authors' graph ({what}); {fix}")
    user, item = np.concatenate(users), np.concatenate(items)
    order = np.lexsort((item, user))
    user, item = user[order], item[order]
    return Interactions(user=user, item=item, time=np.arange(len(user), dtype=np.float64),
                        n_users=offset, n_items=src.n_items, user_ids=np.arange(offset),
                        item_ids=np.arange(src.n_items), has_time=False, name=name)
