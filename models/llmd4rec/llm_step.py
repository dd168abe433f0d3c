r"""The LLM side of LLMD4Rec: letter-choice prompts over a sample's candidates, and its LoRA step.

**Prompts** (versioned by ``PROMPT_VERSION``, which enters every cached call through the text):
the titles of the sample's last ``llmd4rec-history`` input items and its K candidates labelled
A..J. ``llmd4rec-augment`` sets how CRM signals enter the prompt ("information augmentation"):
``rank`` shuffles the candidates (seeded per sample) and writes each one's CRM rank on its line,
``order`` lists them in CRM order, ``none`` shuffles them without ranks.

**LoRA step** (llmd4rec.md §2, step 2b) on the samples whose target is a candidate:

.. math:: L_L = \frac{1}{B}\sum_b \bigl[-\log \pi_b(y_b)
          + \lambda_L \, w'_b \, T^2 \, \mathrm{KL}(p^T_{CRM,b} \,\|\, \pi^T_b)\bigr]

with :math:`\pi_b = \mathrm{softmax}` of the letter logits (the verbaliser of
:meth:`florec.models.llm.base.LLM.choice_distribution`), the CRM's distribution detached and
:math:`w'` the CRM-side weights of :func:`florec.models.llmd4rec.losses.sample_weights`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from florec.models.cotrec.prompts import SYSTEM
from florec.models.llm import lora
from florec.models.llm.base import LETTERS
from florec.models.llmd4rec.losses import distill_kl, sample_weights
from florec.models.rng import cpu_seeded
from florec.recdata.errors import ConfigError
from florec.recdata.seeds import Salt, torch_seed

PROMPT_VERSION = "llmd4rec-v1"
AUGMENTS = ("rank", "order", "none")

_PROMPT = """### Instruction
The user watched or bought the items under History, oldest first. Recommend the one candidate \
the user is most likely to choose next. Only output its letter (one of {first}-{last}).

### History
{history}

### Candidates
{candidates}

### Response
"""


def ranking_prompt(history: Sequence[str], candidates: Sequence[str],
                   crm_ranks: Sequence[int] | None = None) -> str:
    """The letter-choice prompt; ``crm_ranks`` (1-based) adds the CRM's rank to each line.

    Raises
    ------
    ValueError
        If there are no candidates or more than ten.

    """
    if not 1 <= len(candidates) <= len(LETTERS):
        raise ValueError(f"{len(candidates)} candidates; the prompt takes 1..{len(LETTERS)}")
    lines = [f"{LETTERS[j]}. {c.strip()}" + (f" (recommender rank {crm_ranks[j]})"
                                              if crm_ranks is not None else "")
             for j, c in enumerate(candidates)]
    return _PROMPT.format(first=LETTERS[0], last=LETTERS[len(candidates) - 1],
                          history="\n".join(h.strip() for h in history) or "(none)",
                          candidates="\n".join(lines))


def slot_orders(users: np.ndarray, keys: np.ndarray, k: int, seed: int, augment: str
                ) -> np.ndarray:
    """``(S, k)``: the CRM rank (0-based) shown in each letter slot of each sample.

    ``order``: the identity; otherwise a permutation seeded by (seed, user, key), so a sample's
    shuffle is the same wherever it is built (central or on a node).

    Raises
    ------
    ConfigError
        If ``augment`` is unknown.

    """
    if augment not in AUGMENTS:
        raise ConfigError(f"llmd4rec-augment {augment!r} is unknown; use {', '.join(AUGMENTS)}")
    if augment == "order":
        return np.tile(np.arange(k), (len(users), 1))
    return np.stack([np.random.default_rng([seed, int(Salt.LLMD4REC_SLOTS), int(u), int(c) + 1])
                     .permutation(k) for u, c in zip(users, keys, strict=True)]) \
        if len(users) else np.zeros((0, k), dtype=np.int64)


def build_prompts(seqs: np.ndarray, candidates: np.ndarray, slots: np.ndarray,
                  texts: Sequence[str], history: int, augment: str) -> list[str]:
    """One prompt per sample: its last ``history`` input titles and candidates in slot order."""
    out = []
    for seq, cands, order in zip(seqs, candidates, slots, strict=True):
        hist = [texts[t - 1] for t in seq[seq > 0][-history:]]
        shown = [texts[int(cands[r])] for r in order]
        out.append(ranking_prompt(hist, shown, [int(r) + 1 for r in order]
                                  if augment == "rank" else None))
    return out


def _hf(llm: Any) -> Any:
    inner = getattr(llm, "inner", llm)
    if not hasattr(inner, "letter_logits"):
        raise NotImplementedError(f"{type(inner).__name__} cannot be fine-tuned")
    return inner


def lora_init_seed(seed: int) -> int:
    """The seed of the adapter's initial ``A`` (stream ``LLMD4REC_LORA_INIT``, run seed only)."""
    return torch_seed(seed, Salt.LLMD4REC_LORA_INIT)


#: the role component of the LoRA order stream: a central run's key, then a node's
CENTRAL, NODE = 0, 1


def lora_seeds(seed: int, iteration: int, pid: int | None = None) -> tuple[int, int]:
    """The LoRA step's (adapter init, minibatch order) seeds, from two distinct streams.

    The init (``Salt.LLMD4REC_LORA_INIT``, keyed by the run seed only) is the same centrally and
    on every node, so a server averages adapters of one initialisation. The minibatch order
    (``Salt.LLMD4REC_LORA``) is keyed ``[iteration, 0]`` centrally and ``[iteration, 1, pid]``
    on node ``pid``: numpy's ``SeedSequence`` pads keys with zeros, so without the role
    component the central ``[iteration]`` would be node 0's ``[iteration, 0]``.
    """
    keys = (CENTRAL,) if pid is None else (NODE, int(pid))
    return lora_init_seed(seed), torch_seed(seed, Salt.LLMD4REC_LORA, iteration, *keys)


def ensure_adapter(llm: Any, lora_r: int, lora_alpha: int, seed: int) -> None:
    """Wrap the HF model with a LoRA adapter (q/v, rank r, alpha, no dropout) if it has none.

    ``A`` is drawn from ``seed`` and ``B = 0`` (PEFT's init), so the answers are unchanged.

    Raises
    ------
    NotImplementedError
        The backend has no weights (``scripted``, ``openai``).

    """
    inner = _hf(llm)
    if lora.has_adapter(inner.model):
        return
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0,
                        target_modules=list(lora.TARGET_MODULES), bias="none")
    with cpu_seeded(seed):  # seeds no CUDA generator, restores every global one
        inner.model = get_peft_model(inner.model, config)
    inner.load_adapter_state(inner.adapter_state())  # refreshes the cache key's digest


def finetune_distill(llm: Any, prompts: Sequence[str], targets: Sequence[int],
                     crm_probs: np.ndarray, *, temperature: float, lam: float, weighting: str,
                     epochs: int, lr: float, lora_r: int, lora_alpha: int, batch_size: int = 4,
                     seed: int = 0, init_seed: int | None = None) -> dict[str, float]:
    """LoRA on :math:`L_L` (module formula); ``crm_probs`` are in the prompts' slot order.

    ``seed`` orders the minibatches; ``init_seed`` (default ``seed``) draws the adapter's ``A``
    if the model has no adapter yet (:func:`lora_seeds` gives both).

    Returns
    -------
    dict
        ``n``, ``steps``, ``loss_first_epoch``, ``loss_last_epoch``, ``kl_last_epoch``,
        ``accuracy_last_epoch``, ``seconds``.

    Raises
    ------
    NotImplementedError
        The backend cannot be fine-tuned.
    ValueError
        Inputs disagree in length or a target is out of range.

    """
    inner = _hf(llm)
    k = crm_probs.shape[1]
    if len(prompts) != len(targets) or len(prompts) != len(crm_probs) or not prompts:
        raise ValueError("give one target and one CRM row per prompt, at least one prompt")
    if min(targets) < 0 or max(targets) >= k:
        raise ValueError(f"targets must be slots 0..{k - 1} (only covered samples train)")
    ensure_adapter(llm, lora_r, lora_alpha, seed if init_seed is None else init_seed)
    letter_ids = inner.letter_ids(SYSTEM)[:k]
    texts = [inner.chat_text(p, SYSTEM) for p in prompts]
    y = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=inner.device)
    teacher = torch.as_tensor(crm_probs, dtype=torch.float32, device=inner.device)
    params = [p for p in inner.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    began, steps, losses, kls, acc = time.perf_counter(), 0, [], [], 0.0
    bar = tqdm(total=epochs * math.ceil(len(texts) / batch_size), desc="llmd4rec lora",
               unit="step", disable=not inner.progress, dynamic_ncols=True)
    inner.model.train()
    try:
        for _ in range(epochs):
            order = torch.randperm(len(texts), generator=gen).tolist()
            total = kl_total = 0.0
            correct = 0
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                logits = inner.letter_logits([texts[i] for i in idx], letter_ids, count=False)
                ce = torch.nn.functional.cross_entropy(logits, y[idx])
                kl = distill_kl(logits, teacher[idx], temperature)
                w = sample_weights(teacher[idx], y[idx], weighting)
                loss = ce + lam * (w * kl).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                bar.update(1)
                total += loss.item() * len(idx)
                kl_total += kl.mean().item() * len(idx)
                correct += int((logits.argmax(-1) == y[idx]).sum())
            losses.append(total / len(texts))
            kls.append(kl_total / len(texts))
            acc = correct / len(texts)
    finally:
        bar.close()
        inner.model.eval()
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError("the LLM's LoRA step diverged (non-finite loss); lower "
                                 "llmd4rec-lora-lr")
    inner.load_adapter_state(inner.adapter_state())  # new digest: no stale cached answers
    return {"n": len(texts), "steps": steps, "loss_first_epoch": losses[0],
            "loss_last_epoch": losses[-1], "kl_last_epoch": kls[-1],
            "accuracy_last_epoch": acc, "seconds": time.perf_counter() - began}
