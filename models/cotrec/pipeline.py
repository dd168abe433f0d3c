"""CoT-Rec's steps shared by the central and the federated runner (no Flower here).

* :func:`item_texts` / :func:`histories`: public item text and a user's recent items as text.
* :func:`item_side`: the server's part of the init (item perception -> embeddings -> PCA).
* :func:`user_side`: a node's part (user perception of its own users -> the same projection).
* :class:`PhaseLog`: seconds and LLM statistics per phase (results.json ``phases``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from florec.models.cotrec.perception import (
    Projection,
    TextEncoder,
    TextLLM,
    item_perception,
    user_perception,
    write_jsonl,
)
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig
from florec.recdata.sequences import UserSequences


def item_texts(cfg: RunConfig, split_path: Path, n_items: int) -> list[str]:
    """One public text per internal item id (title and genres/categories/brand).

    Raises
    ------
    ConfigError
        If the split's item map does not cover ``n_items`` items.

    """
    from florec.recdata.item_text import item_text_string, load_item_text, split_item_ids

    ids = split_item_ids(Path(split_path), cfg.dataset)
    if len(ids) != n_items:
        raise ConfigError(f"the split in {split_path} maps {len(ids)} items, expected {n_items}; "
                          "delete the split folder to rebuild it")
    synthetic = cfg.synthetic_params() if cfg.dataset == "synthetic" else None
    texts = load_item_text(cfg.dataset, cfg.data_dir or None, ids, synthetic=synthetic)
    return [item_text_string(t) for t in texts]


def histories(seqs: UserSequences, users: np.ndarray, part: str, n: int,
              texts: Sequence[str]) -> list[list[str]]:
    """Each user's last ``n`` items of ``part`` (train for train/valid, + valid for test)."""
    rows = seqs.inputs(np.asarray(users, dtype=np.int64), part, n)
    return [[texts[t - 1] for t in row if t > 0] for row in rows]


def item_side(cfg: RunConfig, llm: TextLLM | None, encoder: TextEncoder,
              texts: Sequence[str], out_dir: Path | None = None
              ) -> tuple[np.ndarray | None, Projection | None, list[str]]:
    """Initial item rows, the projection and the item texts embedded (server side).

    ``cotrec``: item perception of every item's public text; ``title``: the text itself;
    ``random``: nothing. The projection is PCA on the embedded item texts (see
    :class:`florec.models.cotrec.perception.Projection`).
    """
    if cfg.cotrec_init == "random":
        return None, None, []
    used = list(texts)
    if cfg.cotrec_init == "cotrec":
        if llm is None:
            raise ConfigError("cotrec-init='cotrec' needs an LLM; set llm-backend")
        used = item_perception(llm, texts, cfg.cotrec_item_tokens)
        if out_dir is not None:
            write_jsonl(Path(out_dir) / "perception_items.jsonl", "item", range(len(texts)),
                        texts, used, getattr(llm, "key", ""))
    vectors = encode_cached(encoder, used)
    projection = Projection.fit(vectors, cfg.dim, cfg.cotrec_init_scale)
    return projection(vectors), projection, used


def user_side(cfg: RunConfig, llm: TextLLM | None, encoder: TextEncoder,
              projection: Projection | None, users: np.ndarray,
              hists: Sequence[Sequence[str]], out_dir: Path | None = None
              ) -> tuple[np.ndarray | None, list[str]]:
    """Initial user-token rows of ``users`` and their preference texts (on the users' node).

    ``cotrec``: user perception of each user's history; ``title``: the history titles joined
    (no LLM); ``random`` or no user token: ``None``. Without a user token and without a ranker
    the preference texts have no use, so no LLM call is made (empty texts).
    """
    if cfg.cotrec_init == "random" or projection is None or (
            not cfg.cotrec_user_token and cfg.cotrec_ranker == "none"):
        return None, [""] * len(hists)
    if cfg.cotrec_init == "cotrec":
        if llm is None:
            raise ConfigError("cotrec-init='cotrec' needs an LLM; set llm-backend")
        texts = user_perception(llm, hists, cfg.cotrec_user_tokens)
        if out_dir is not None:
            write_jsonl(Path(out_dir) / "perception_users.jsonl", "user", users,
                        ["\n".join(h) for h in hists], texts, getattr(llm, "key", ""))
    else:
        texts = ["; ".join(h) for h in hists]
    if not cfg.cotrec_user_token:
        return None, texts
    return projection(encode_cached(encoder, texts)), texts


def encode_cached(encoder: TextEncoder, texts: Sequence[str]) -> np.ndarray:
    """``encoder.encode(texts)``, stored on disk by the sha256 of the encoder and the texts.

    The LLM layer caches LLM calls, not embeddings; CoT-Rec encodes the same item titles and
    histories in every cell of a benchmark, so the vectors are kept under
    ``<florec cache>/cotrec-embeddings`` (an encoder without a ``key``/``name`` attribute is
    never cached).
    """
    name = getattr(encoder, "key", None) or getattr(encoder, "name", None)
    if not name or not texts:
        return encoder.encode(list(texts))
    from florec.recdata.download import cache_root

    digest = hashlib.sha256(json.dumps([str(name), list(texts)]).encode()).hexdigest()[:32]
    path = cache_root() / "cotrec-embeddings" / f"{digest}.npy"
    if path.is_file():
        return np.load(path)
    vectors = encoder.encode(list(texts))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors


class PhaseLog:
    """Seconds and LLM statistics of each named phase.

    ``with log.phase("item-perception", llm): ...`` records the phase's wall seconds and the
    change of ``llm.stats`` (calls, cache hits, tokens, LLM seconds).
    """

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def phase(self, name: str, *llms: Any) -> Iterator[None]:
        """Time the block and add the LLMs' statistics deltas under ``name``."""
        before = [dict(m.stats.as_dict()) for m in llms if m is not None]
        t0 = time.perf_counter()
        try:
            yield
        finally:
            row = self.phases.setdefault(name, {"seconds": 0.0})
            row["seconds"] += time.perf_counter() - t0
            for m, b in zip([m for m in llms if m is not None], before, strict=True):
                for key, value in m.stats.as_dict().items():
                    row[key] = row.get(key, 0) + value - b[key]

    def minutes(self) -> dict[str, float]:
        """Minutes per phase."""
        return {k: v["seconds"] / 60 for k, v in self.phases.items()}


def make_llm(cfg: RunConfig, book: Any = None) -> Any:
    """The run's LLM (``llm-*`` keys), or ``None`` when no phase needs one.

    With ``llm-backend='scripted'`` the letter rule is the positive control
    :func:`florec.models.llm.scripted.pick_target_rule` over ``book`` (an
    :class:`florec.models.cotrec.rank_eval.AnswerBook`) with ``scripted-p``.
    """
    if cfg.cotrec_init != "cotrec" and cfg.cotrec_ranker == "none":
        return None
    from florec.models.llm.config import LLMConfig
    from florec.models.llm.factory import build_llm

    llm_cfg = LLMConfig.from_run_config(cfg)
    rule = None
    if llm_cfg.backend == "scripted" and book is not None:
        from florec.models.llm.scripted import pick_target_rule

        rule = pick_target_rule(book, llm_cfg.scripted_p)
    return build_llm(llm_cfg, scripted_rule=rule,
                     scripted_name=f"cotrec-target-p{llm_cfg.scripted_p:g}" if rule else None)


def make_encoder(cfg: RunConfig, device: str = "cpu") -> Any:
    """The sentence encoder of ``encoder`` (MiniLM by default), or ``None`` for random init."""
    if cfg.cotrec_init == "random":
        return None
    from florec.models.llm.encoder import SentenceEncoder

    return SentenceEncoder(cfg.encoder, device=device)
