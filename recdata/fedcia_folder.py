"""Any folder in the FedCIA authors' per-client layout as a dataset: ``fedcia:<folder>``.

Layout (the authors' ``datasets/HiGSP/<name>/``): one sub-folder per client, named by its number
(``0``, ``1``, ...; read in numeric order), each holding ``train_dataset.npy`` and optionally
``valid_dataset.npy``/``test_dataset.npy`` (dense 0/1 matrices, client users x items, all with
the same item columns) and ``norm_adj.npz`` (the authors' graph; hashed when listed, not read).
Client ``c``'s rows become the consecutive global users after those of the clients before it,
so ``partition='floor'`` with ``num-nodes`` = the client count gives back the authors' clients
when they are of equal size, as in the authors' splits.

Integrity: a checksum list ``<folder>.sha256`` beside the folder (lines ``<sha256>  <name>/<c>/
<file>``, as ``sha256sum`` writes them) is optional; when present, every array file read must
be listed there with that digest.

Clients that lack a split file the others have are named in one line and refused; name the
dataset ``fedcia:<folder>?skip-missing`` to leave them out instead (a warning names them).
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np

from florec.recdata.checksums import sha256_bytes
from florec.recdata.errors import DataError
from florec.recdata.interactions import Interactions

PREFIX = "fedcia:"
SKIP_MISSING = "?skip-missing"
PARTS = ("train", "valid", "test")
log = logging.getLogger(__name__)


def is_fedcia_folder(dataset: str) -> bool:
    """Whether a dataset name points at a folder in the FedCIA layout."""
    return dataset.startswith(PREFIX)


def parse_name(dataset: str) -> tuple[Path, bool]:
    """``fedcia:<folder>[?skip-missing]`` -> (folder, whether to skip incomplete clients)."""
    body = dataset[len(PREFIX):]
    skip = body.endswith(SKIP_MISSING)
    return Path(body.removesuffix(SKIP_MISSING)).expanduser(), skip


def storage_name(dataset: str) -> str:
    """File-system-safe cache name: ``fedcia-<folder name>-<hash of path and options>``."""
    folder, skip = parse_name(dataset)
    key = f"{folder.resolve()}{SKIP_MISSING if skip else ''}"
    return f"fedcia-{folder.name}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def client_folders(folder: Path) -> list[Path]:
    """The numbered client sub-folders of ``folder``, in numeric order."""
    if not folder.is_dir():
        raise DataError(f"dataset 'fedcia:{folder}': {folder} is not a folder; point fedcia: at "
                        "a folder of numbered client folders <c>/train_dataset.npy")
    clients = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()),
                     key=lambda p: int(p.name))
    if not clients:
        raise DataError(f"dataset 'fedcia:{folder}' has no numbered client folders (0/, 1/, "
                        "...); point fedcia: at the authors' per-dataset folder")
    return clients


def source_files(dataset: str) -> list[Path]:
    """Every file a ``fedcia:`` dataset is read from (split arrays, graphs, checksum list)."""
    folder, _ = parse_name(dataset)
    if not folder.is_dir():
        return []
    files = sorted(p for c in client_folders(folder) for p in c.iterdir()
                   if p.name.endswith(("_dataset.npy", "norm_adj.npz")))
    listed = folder.parent / f"{folder.name}.sha256"
    return files + ([listed] if listed.is_file() else [])


def _checksums(folder: Path) -> dict[str, str] | None:
    listed = folder.parent / f"{folder.name}.sha256"
    if not listed.is_file():
        return None
    pairs = (line.split(None, 1) for line in listed.read_text().splitlines() if line.strip())
    return {rel.strip().lstrip("*"): digest for digest, rel in pairs}


def _read(path: Path, rel: str, expected: dict[str, str] | None, listed: Path) -> np.ndarray:
    data = path.read_bytes()
    if expected is not None and expected.get(rel) != sha256_bytes(data):
        state = "is not listed in" if rel not in expected else "fails its sha256 in"
        raise DataError(f"{path} {state} {listed}; restore the authors' file, or fix or remove "
                        "the checksum list")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npy file ({str(exc)[:80]}); restore the "
                        "authors' file") from None
    if arr.ndim != 2 or not np.isin(arr, (0, 1)).all():
        raise DataError(f"{path} is not a 2-D 0/1 matrix (users x items); restore the "
                        "authors' file")
    return arr


def load_fedcia_folder(dataset: str) -> Interactions:
    """Load ``fedcia:<folder>`` with the folder's split as ``presplit`` labels.

    Returns
    -------
    Interactions
        All interactions sorted by (user, item); ``presplit`` holds 0/1/2 (train/valid/test),
        ``has_time`` is False; users numbered client by client, items by column.

    Raises
    ------
    DataError
        The folder is not in the layout, a client lacks a split file the others have (unless
        ``?skip-missing``), a file is unreadable, malformed or fails the checksum list, the
        item columns disagree, or a (user, item) pair is in two parts.

    """
    folder, skip = parse_name(dataset)
    clients = client_folders(folder)
    have = {c: {p for p in PARTS if (c / f"{p}_dataset.npy").is_file()} for c in clients}
    parts = [p for p in PARTS if any(p in h for h in have.values())]
    if "train" not in parts:
        raise DataError(f"dataset {dataset!r}: no client folder holds train_dataset.npy; give "
                        "the authors' per-client split files <c>/{train,valid,test}_dataset.npy")
    missing = {c: [p for p in parts if p not in have[c]] for c in clients}
    missing = {c: m for c, m in missing.items() if m}
    if missing:
        text = "; ".join(f"{c.name}: {', '.join(m)}" for c, m in list(missing.items())[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        line = f"{len(missing)} of {len(clients)} clients lack split files ({text}{more})"
        if not skip:
            raise DataError(f"dataset {dataset!r}: {line}; restore them, or name the dataset "
                            f"fedcia:{folder}{SKIP_MISSING} to leave those clients out")
        log.warning("dataset %s: %s; those clients are left out", dataset, line)
        clients = [c for c in clients if c not in missing]
        if not clients:
            raise DataError(f"dataset {dataset!r}: every client lacks a split file; restore them")
    expected, listed = _checksums(folder), folder.parent / f"{folder.name}.sha256"
    users, items, labels, offset, n_items = [], [], [], 0, None
    for c in clients:
        rows_c = None
        for label, part in enumerate(PARTS):
            if part not in parts:
                continue
            path = c / f"{part}_dataset.npy"
            arr = _read(path, f"{folder.name}/{c.name}/{path.name}", expected, listed)
            if n_items is None:
                n_items = arr.shape[1]
            if arr.shape[1] != n_items or (rows_c is not None and arr.shape[0] != rows_c):
                raise DataError(f"{path} has shape {arr.shape}, unlike the other files "
                                f"({rows_c} users x {n_items} items); restore the authors' file")
            rows_c = arr.shape[0]
            r, i = np.nonzero(arr)
            users.append(r.astype(np.int64) + offset)
            items.append(i.astype(np.int64))
            labels.append(np.full(len(r), label, np.int8))
        offset += rows_c
    user, item, label = np.concatenate(users), np.concatenate(items), np.concatenate(labels)
    key = user * n_items + item
    order = np.argsort(key, kind="stable")
    key, label = key[order], label[order]
    if np.any(key[1:] == key[:-1]):
        raise DataError(f"dataset {dataset!r} lists a (user, item) pair in two parts; give "
                        "disjoint train/valid/test files")
    return Interactions(
        user=key // n_items, item=key % n_items, time=np.arange(len(key), dtype=np.float64),
        n_users=offset, n_items=int(n_items), user_ids=np.arange(offset, dtype=np.int64),
        item_ids=np.arange(n_items, dtype=np.int64), has_time=False, presplit=label,
        name=storage_name(dataset))
