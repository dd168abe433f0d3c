"""The LLKD teacher: an LLM's choice distribution over the class names, and its gate.

Verbalizer: the prompt lists the classes as lettered options and the teacher's distribution is
the LLM layer's :meth:`~florec.models.llm.base.LLM.choice_distribution` over those letters (each
letter one token, checked by the layer), so multi-token class names cannot bias the scores
(the spec's pitfall 1). Pseudo-label ``y_hat = argmax_c p_T(c|x)``, confidence
``c_T(x) = max_c p_T(c|x)``.

The scripted teacher (:func:`confidence_linked_rule`) is the positive control: its confidence
is informative by construction, so it tests the selection rule itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from florec.models.llm.base import LETTERS
from florec.models.llm.scripted import ChoiceRule
from florec.recdata.runconfig import RunConfig

PROMPT_VERSION = "llkd-v1"


def class_prompt(text: str, classes: Sequence[str], noun: str = "item") -> str:
    """The zero-shot prompt of one item: its title and the lettered class names."""
    options = "\n".join(f"{LETTERS[j]}. {name}" for j, name in enumerate(classes))
    return (f"Which category does this {noun} belong to?\n{noun.capitalize()}: {text}\n\n"
            f"Options:\n{options}\n\nAnswer with the letter of the category only.")


def teacher_distribution(llm, texts: Sequence[str], classes: Sequence[str],
                         noun: str = "item") -> np.ndarray:
    """``p_T(c|x)`` of every text, ``(len(texts), len(classes))`` rows summing to 1."""
    prompts = [class_prompt(t, classes, noun) for t in texts]
    return np.asarray(llm.choice_distribution(prompts, len(classes), desc="llkd teacher"),
                      np.float64)


def confidence_linked_rule(gold_of: Callable[[str], int], p: float) -> ChoiceRule:
    """A scripted teacher whose confidence predicts its correctness.

    Per prompt it draws ``z ~ U(0, 1)``; it answers the gold class with probability ``z^k``,
    ``k = 1/p - 1`` (so its mean accuracy is ``E[z^k] = 1/(k+1) = p``), else a uniformly drawn
    other class; its distribution is ``q_j = peak [j = pick] + (1 - peak)/C`` with
    ``peak = 0.1 + 0.85 z``, so the confidence ``c_T = peak + (1 - peak)/C`` rises with ``z``
    and with it the chance of being right.

    Parameters
    ----------
    gold_of : callable
        ``prompt -> gold class index``.
    p : float
        Mean accuracy, in (0, 1].

    Returns
    -------
    callable
        A rule for :class:`florec.models.llm.scripted.ScriptedLLM`.

    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"scripted-p={p} must be in (0, 1] for the LLKD scripted teacher")
    k = 1.0 / p - 1.0

    def rule(prompt: str, n_choices: int, rng: np.random.Generator) -> np.ndarray:
        gold = int(gold_of(prompt))
        z = rng.random()
        pick = gold
        if n_choices > 1 and rng.random() >= z ** k:
            pick = int(rng.choice([j for j in range(n_choices) if j != gold]))
        peak = 0.1 + 0.85 * z
        q = np.full(n_choices, (1.0 - peak) / n_choices)
        q[pick] += peak
        return q

    return rule


def gold_lookup(texts: Sequence[str], gold: Sequence[int], classes: Sequence[str],
                noun: str = "item") -> Mapping[str, int]:
    """``prompt -> gold class`` for the scripted teacher (same prompts as the real one)."""
    return {class_prompt(t, classes, noun): int(g) for t, g in zip(texts, gold, strict=True)}


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` vs the rest.

    ``AUROC = (sum of the positives' ranks - n_1 (n_1 + 1) / 2) / (n_1 n_0)`` with average
    ranks for ties (the Mann-Whitney U statistic); NaN if a class is empty.
    """
    positive = np.asarray(positive, bool)
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, np.float64))
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def teacher_gate(probs: np.ndarray, gold: np.ndarray, min_auroc: float = 0.6) -> dict:
    """The gate: the teacher beats the majority class and its confidence ranks right over wrong.

    Returns
    -------
    dict
        ``accuracy`` of ``argmax p_T``, ``majority`` (share of the most frequent gold class),
        ``auroc`` of ``c_T`` for correct vs wrong pseudo-labels, ``passed`` (accuracy >
        majority and AUROC > ``min_auroc``) and ``n``.

    """
    gold = np.asarray(gold)
    pseudo, conf = probs.argmax(1), probs.max(1)
    correct = pseudo == gold
    majority = float(np.bincount(gold).max() / len(gold)) if len(gold) else float("nan")
    accuracy = float(correct.mean()) if len(gold) else float("nan")
    area = auroc(conf, correct)
    return {"n": len(gold), "accuracy": accuracy, "majority": majority, "auroc": area,
            "passed": bool(accuracy > majority and area > min_auroc)}


def make_teacher(cfg: RunConfig, task: Any, items: np.ndarray) -> Any:
    """The run's LLM; ``scripted``: :func:`confidence_linked_rule`, mean accuracy ``scripted-p``.

    The scripted teacher looks up the gold class of the items in ``items`` (the control knows
    the truth by construction; no other backend does).
    """
    from florec.models.llm.config import LLMConfig
    from florec.models.llm.factory import build_llm

    llm_cfg = LLMConfig.from_run_config(cfg)
    if llm_cfg.backend != "scripted":
        return build_llm(llm_cfg)
    book = gold_lookup([task.inputs[i] for i in items], task.gold[items], task.classes, task.noun)
    return build_llm(llm_cfg, scripted_rule=confidence_linked_rule(book.__getitem__,
                                                                   cfg.scripted_p),
                     scripted_name=f"llkd-conf-linked-p{cfg.scripted_p:g}")
