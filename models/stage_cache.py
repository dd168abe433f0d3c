"""The stage cache: trained artefacts stored on disk under the sha256 of what produced them.

The call cache (:mod:`florec.models.llm.cache`) makes a rerun's LLM calls free; this module does
the same for the stages a run *trains* (CoT-Rec's retriever weights at the best epoch, its
ranker's LoRA adapter). A stage's key is :func:`stage_key` of everything that determines its
result (data, initial arrays, knobs, seed, base model), with arrays entering by their
:func:`array_digest`; a rerun with an equal key loads the entry instead of training.

An entry is one safetensors file ``<florec cache>/stages/<stage>/<key>.safetensors``: the arrays,
plus JSON metadata (what the stage reported, e.g. its metrics) and the sha256 of the arrays.
It is written to a temporary file and renamed, so a killed run never leaves half an entry; an
entry that cannot be read or whose arrays do not match their digest (truncated, edited, a
different format) draws a one-line :class:`StageCacheWarning` and counts as a miss, and the
retrained stage overwrites it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

#: Bump when the format of an entry changes (older entries then miss).
FORMAT_VERSION = 1


class StageCacheWarning(UserWarning):
    """A stage-cache entry was unreadable (retrained) or could not be written (run goes on)."""


def array_digest(value: Any) -> str:
    """sha256 of an array's dtype, shape and bytes (sparse: of its CSR parts; ``None``: "none").

    Two arrays share a digest exactly when they are equal element for element with the same
    dtype and shape, so an array can stand in a key by its digest.
    """
    if value is None:
        return "none"
    h = hashlib.sha256()
    if sp.issparse(value):
        csr = sp.csr_matrix(value)
        csr.sort_indices()
        h.update(f"csr{csr.shape}".encode())
        for part in (csr.indptr, csr.indices, csr.data):
            h.update(array_digest(part).encode())
        return h.hexdigest()
    arr = np.ascontiguousarray(np.asarray(value))
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def stage_key(stage: str, parts: dict[str, Any]) -> str:
    """sha256 of ``stage`` and ``parts`` as canonical JSON (arrays must enter as digests).

    Raises
    ------
    TypeError
        A part is not JSON (e.g. a raw array: pass :func:`array_digest` of it).

    """
    blob = json.dumps([FORMAT_VERSION, stage, parts], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(array_digest(arrays[name]).encode())
    return h.hexdigest()


class StageCache:
    """Entries of trained stages under ``root`` (default ``<florec cache>/stages``).

    ``events`` records, per stage looked up, ``hit``, ``miss``, ``corrupt`` (an unreadable
    entry, retrained) or ``off`` (the cache disabled): what ``results.json`` reports.

    Parameters
    ----------
    root : Path, optional
        Folder of the entries.
    enabled : bool
        ``False``: every lookup misses and nothing is written (``cotrec-stage-cache=false``).

    """

    def __init__(self, root: Path | None = None, enabled: bool = True) -> None:
        if root is None:
            from florec.recdata.download import cache_root

            root = cache_root() / "stages"
        self.root, self.enabled = Path(root), enabled
        self.events: dict[str, str] = {}

    def path(self, stage: str, key: str) -> Path:
        """The file of one entry."""
        return self.root / stage / f"{key}.safetensors"

    @property
    def hits(self) -> int:
        """Stages loaded instead of trained."""
        return sum(v == "hit" for v in self.events.values())

    def load(self, stage: str, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The arrays and metadata stored under ``key``, or ``None`` (a miss).

        A present entry that cannot be read, lacks its metadata or fails its digest check is a
        miss with a one-line :class:`StageCacheWarning` (never an exception).
        """
        if not self.enabled:
            self.events[stage] = "off"
            return None
        path = self.path(stage, key)
        if not path.is_file():
            self.events[stage] = "miss"
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as fh:
                header = fh.metadata() or {}
                arrays = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
            meta = json.loads(header["meta"])
            if header.get("digest") != _arrays_digest(arrays) or header.get("key") != key:
                raise ValueError("its arrays do not match the digest stored with them")
        except Exception as err:  # a truncated/garbled file raises many kinds of errors
            warnings.warn(f"stage cache: ignoring unreadable {stage} entry {path} "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                          "); retraining and overwriting it", StageCacheWarning, stacklevel=2)
            self.events[stage] = "corrupt"
            return None
        self.events[stage] = "hit"
        return arrays, meta

    def save(self, stage: str, key: str, arrays: dict[str, np.ndarray],
             meta: dict[str, Any]) -> Path | None:
        """Store an entry atomically (temporary file, then rename).

        Returns the entry's path; ``None`` when disabled or when the write failed: an
        ``OSError`` (disk full, unwritable folder) draws a one-line :class:`StageCacheWarning`
        and the run goes on with the stage it trained (the next run retrains it).
        """
        if not self.enabled:
            return None
        from safetensors.numpy import save_file

        path = self.path(stage, key)
        plain = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(plain, str(tmp), metadata={
                "meta": json.dumps(meta, sort_keys=True, default=float), "key": key,
                "digest": _arrays_digest(plain)})
            os.replace(tmp, path)
        except OSError as err:
            warnings.warn(f"stage cache: could not store the {stage} entry {path} "
                          f"({type(err).__name__}: {err.strerror or err}); the run goes on "
                          "without it: free disk space or make the cache folder writable "
                          "(FLOREC_CACHE_DIR), or set cotrec-stage-cache=false",
                          StageCacheWarning, stacklevel=2)
            return None
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        return path
