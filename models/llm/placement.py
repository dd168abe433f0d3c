"""Where an LLM runs in a federation, and a check that no message carries private text.

Placement rule (docs/methods/llm.md): a prompt that holds a user's history is built and answered on
that user's node (an in-process backend there, or a server the node's operator names); prompts
over public item text only may run once on the server. Messages then carry numbers (embeddings,
model and adapter weights, metrics), never a user's history text. :func:`leaked_texts` checks
that on the payloads a run actually sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

import numpy as np


class Placement(StrEnum):
    """Where one kind of LLM prompt runs."""

    NODE = "node"  # holds a user's history: built and answered on that user's node
    SERVER = "server"  # public item text only: may run once on the server


def leaked_texts(payloads: Iterable[object], texts: Iterable[str], *,
                 min_chars: int = 12) -> list[str]:
    """The private texts that occur in any payload (empty list: nothing leaked).

    Parameters
    ----------
    payloads : iterable
        What was sent: ``bytes``, ``str``, numpy arrays (their raw bytes and, for string or
        object arrays, their elements), and dicts / lists / tuples of these, nested.
    texts : iterable of str
        Private texts (e.g. each user's history lines or prompts). Texts shorter than
        ``min_chars`` are skipped (short strings such as a year occur by chance).
    min_chars : int
        Shortest text checked.

    Returns
    -------
    list of str
        The texts found (UTF-8 bytes or UTF-16/32 as numpy stores unicode), each once.

    """
    blobs: list[bytes] = []
    _collect(payloads, blobs)
    found = []
    for text in dict.fromkeys(t for t in texts if len(t) >= min_chars):
        needles = (text.encode("utf-8"), text.encode("utf-32-le"), text.encode("utf-16-le"))
        if any(n in blob for blob in blobs for n in needles):
            found.append(text)
    return found


def _collect(obj: object, out: list[bytes]) -> None:
    if isinstance(obj, bytes | bytearray | memoryview):
        out.append(bytes(obj))
    elif isinstance(obj, str):
        out.append(obj.encode("utf-8"))
    elif isinstance(obj, np.ndarray):
        if obj.dtype == object:
            for item in obj.ravel().tolist():
                _collect(item, out)
        else:
            out.append(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _collect(key, out)
            _collect(value, out)
    elif isinstance(obj, list | tuple | set | frozenset):
        for item in obj:
            _collect(item, out)
    elif obj is not None and not isinstance(obj, int | float | bool | np.generic):
        raise TypeError(f"cannot scan a payload of type {type(obj).__name__}; pass bytes, "
                        "str, numpy arrays or containers of them")
