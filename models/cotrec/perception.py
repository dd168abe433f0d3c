"""CoT-Rec phase 1 and 2a: perception texts, their embeddings, and the projection to SASRec width.

* Item perception (public item text -> a short description) runs once, on the server in a
  federation. User perception (a user's last train items -> preference keywords) runs where the
  user's history lives: on the user's node.
* Texts are embedded by a sentence encoder (MiniLM, 384-d, not Matryoshka-trained), so a
  truncation to d coordinates (the authors' text-embedding-3 trick, cotrec.md §6.4) is replaced
  by a :class:`Projection`: PCA fitted on the public item-text embeddings (server side) and
  applied identically to user texts.
* Rows are L2-normalised after the projection and multiplied by ``scale`` (default 1: the
  authors' unit-norm rows, cotrec.md §2; FloRec's random rows have norm ~0.02 sqrt(d)).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from florec.models.cotrec.prompts import (
    PROMPT_VERSION,
    SYSTEM,
    clean_response,
    item_prompt,
    user_prompt,
)
from florec.recdata.errors import ConfigError


class TextLLM(Protocol):
    """The part of :class:`florec.models.llm.base.LLM` perception needs."""

    def generate(self, prompts: list[str], *, max_new_tokens: int = 128,
                 temperature: float = 0.0, seed: int = 0, system: str | None = None,
                 desc: str = "generate") -> list[str]:
        """One answer per prompt."""


class TextEncoder(Protocol):
    """The part of :class:`florec.models.llm.encoder.SentenceEncoder` perception needs."""

    dim: int

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """``(N, dim)`` L2-normalised float32 vectors."""


def item_perception(llm: TextLLM, item_texts: Sequence[str], max_new_tokens: int = 64
                    ) -> list[str]:
    """One description per item from its public text (greedy; cached by the LLM layer)."""
    prompts = [item_prompt(t) for t in item_texts]
    out = llm.generate(prompts, max_new_tokens=max_new_tokens, system=SYSTEM,
                       desc="cotrec item perception")
    return [clean_response(t) for t in out]


def user_perception(llm: TextLLM, histories: Sequence[Sequence[str]], max_new_tokens: int = 32
                    ) -> list[str]:
    """Preference keywords of each user from the titles of their last train items, oldest first.

    Users without history get an empty string (and no LLM call).
    """
    idx = [u for u, h in enumerate(histories) if len(h)]
    out = llm.generate([user_prompt(histories[u]) for u in idx], max_new_tokens=max_new_tokens,
                       system=SYSTEM, desc="cotrec user perception") if idx else []
    texts = [""] * len(histories)
    for u, text in zip(idx, out, strict=True):
        texts[u] = clean_response(text)
    return texts


@dataclass
class Projection:
    r"""A fixed linear map of encoder vectors to ``d`` coordinates, then L2 normalisation.

    .. math:: y = s \cdot \frac{(x - \mu) W}{\lVert (x - \mu) W \rVert_2}

    with :math:`\mu` the mean item embedding and :math:`W` (D x d) the top-d principal axes of the
    item embeddings (numpy SVD), :math:`s` = ``scale``. The server fits it once on public item
    text and broadcasts ``mean`` and ``axes``; every node applies it unchanged to its users.
    """

    mean: np.ndarray
    axes: np.ndarray
    scale: float = 1.0

    @classmethod
    def fit(cls, item_vectors: np.ndarray, dim: int, scale: float = 1.0) -> Projection:
        """PCA of ``(n, D)`` item vectors to ``dim`` axes (signs fixed: largest entry positive).

        Raises
        ------
        ConfigError
            If ``dim`` exceeds the encoder width or the number of items.

        """
        x = np.asarray(item_vectors, dtype=np.float64)
        if not 1 <= dim <= min(x.shape):
            raise ConfigError(f"dim={dim} cannot be projected from {x.shape[0]} item texts of "
                              f"width {x.shape[1]}; use dim <= {min(x.shape)}")
        mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        axes = vt[:dim].T
        axes *= np.sign(axes[np.abs(axes).argmax(0), np.arange(dim)])
        return cls(mean.astype(np.float32), axes.astype(np.float32), float(scale))

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        """Project and normalise ``(N, D)`` vectors to ``(N, d)`` float32 rows."""
        y = (np.asarray(vectors, dtype=np.float32) - self.mean) @ self.axes
        norm = np.linalg.norm(y, axis=1, keepdims=True)
        return (self.scale * y / np.maximum(norm, 1e-12)).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        """What the server broadcasts (``scale`` travels as a 1-element array)."""
        return {"mean": self.mean, "axes": self.axes,
                "scale": np.array([self.scale], dtype=np.float32)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Projection:
        """Inverse of :meth:`arrays`."""
        return cls(arrays["mean"], arrays["axes"], float(arrays["scale"][0]))


def write_jsonl(path: Path, kind: str, ids: Sequence[int], inputs: Sequence[str],
                texts: Sequence[str], llm_key: str) -> None:
    """Perception texts beside the results, one JSON object a line (prompt version included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i, inp, text in zip(ids, inputs, texts, strict=True):
            f.write(json.dumps({"kind": kind, "id": int(i), "input": inp, "text": text,
                                "prompt_version": PROMPT_VERSION, "llm": llm_key},
                               ensure_ascii=False) + "\n")
