"""AgentCF's phases over a :class:`DomainData`, shared by the central runner and the bench.

:func:`load_domain_data` (dataset -> domains -> protocol), :func:`make_agent_llm` (the run's
LLM; ``scripted`` is the positive control), :func:`train_agents` (all steps, item updates applied
in the schedule's order), :func:`build_group_text` (AgentCF++ groups) and :func:`evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from florec.models.agentcf.agents import (
    AgentSettings,
    Interaction,
    sample_negative,
    training_steps,
    user_side_step,
)
from florec.models.agentcf.data import DomainData, build_protocol
from florec.models.agentcf.groups import (
    Groups,
    build_groups,
    closest,
    group_memories,
    tag_users,
)
from florec.models.agentcf.memory import ItemMemories, UserMemory
from florec.models.agentcf.rank import RankSettings, rank_metrics, rank_rows
from florec.recdata.runconfig import RunConfig
from florec.recdata.seeds import Salt, stream


def is_dual(cfg: RunConfig) -> bool:
    """AgentCF++ with the dual-layer memory (``agentcf-memory='dual'``)."""
    return cfg.model == "agentcf++" and cfg.agentcf_memory == "dual"


def uses_groups(cfg: RunConfig) -> bool:
    """AgentCF++ with interest groups (``agentcf-groups > 0``)."""
    return cfg.model == "agentcf++" and cfg.agentcf_groups > 0


def agentcf_method_name(cfg: RunConfig) -> str:
    """The method's name: ``agentcf`` or ``agentcf++`` plus its non-default choices.

    Suffixes: ``-shared``, ``-nogroups``, ``-bh`` / ``-br``, ``-titles``.
    """
    name = cfg.model
    if cfg.model == "agentcf++":
        name += "-shared" if cfg.agentcf_memory == "shared" else ""
        name += "-nogroups" if cfg.agentcf_groups == 0 else ""
    name += "" if cfg.agentcf_strategy == "b" else f"-{cfg.agentcf_strategy}"
    return name + ("-titles" if cfg.agentcf_rank == "titles" else "")


def load_domain_data(cfg: RunConfig) -> DomainData:
    """The run's dataset as domains, sampled users, split and candidates.

    ``synthetic`` is :func:`florec.recdata.domains.synthetic_multidomain` (``agentcf-users``
    users, trend ``agentcf-synthetic-trend``, seed ``split-seed``); other datasets go through
    :func:`florec.recdata.datasets.load_dataset` and their item text. Datasets without
    timestamps (Amazon-Scientific's UniSRec files hold only each user's order) use the per-user
    split.
    """
    from florec.recdata.domains import assign_domains, item_labels, synthetic_multidomain
    from florec.recdata.item_text import item_text_string

    common = dict(n_users=cfg.agentcf_users, min_domains=cfg.agentcf_min_domains,
                  min_inter=cfg.agentcf_min_interactions,
                  max_inter=cfg.agentcf_max_interactions, test_frac=cfg.agentcf_test_fraction,
                  n_neg=cfg.agentcf_negatives, seed=cfg.split_seed)
    if cfg.dataset == "synthetic":
        syn = synthetic_multidomain(n_users=cfg.agentcf_users,
                                    n_domains=min(cfg.agentcf_domains, 4),
                                    trend=cfg.agentcf_synthetic_trend, seed=cfg.split_seed)
        data = build_protocol(syn.user, syn.item, syn.time, item_domain=syn.item_domain,
                              domains=syn.domains,
                              item_text=[item_text_string(t) for t in syn.texts],
                              item_title=[t.title for t in syn.texts], split="global", **common)
        data.meta["dataset"] = "synthetic-multidomain"
        return data
    from florec.recdata.datasets import load_dataset
    from florec.recdata.item_text import load_item_text

    inter = load_dataset(cfg.dataset, cfg.data_dir or None, min_rating=cfg.min_rating)
    texts = load_item_text(cfg.dataset, cfg.data_dir or None, inter.item_ids)
    counts = np.bincount(inter.item, minlength=inter.n_items)
    domains, item_domain = assign_domains(item_labels(cfg.dataset, texts), cfg.agentcf_domains,
                                          counts)
    data = build_protocol(inter.user, inter.item, inter.time, item_domain=item_domain,
                          domains=domains, item_text=[item_text_string(t) for t in texts],
                          item_title=[t.title for t in texts],
                          split="user" if user_order_only(cfg.dataset, inter.has_time)
                          else "global", **common)
    data.meta["dataset"] = cfg.dataset
    return data


def user_order_only(dataset: str, has_time: bool) -> bool:
    """Whether a dataset's times order each user's interactions only (no global clock).

    Amazon-Scientific's UniSRec files store positions in each user's sequence, which the loader
    passes as times; they cannot be compared across users.
    """
    return dataset == "amazon-scientific" or not has_time


def make_agent_llm(cfg: RunConfig) -> Any:
    """The run's LLM (``llm-*`` keys); ``scripted`` answers with the positive-control rules."""
    from florec.models.llm.config import LLMConfig
    from florec.models.llm.factory import build_llm

    llm_cfg = LLMConfig.from_run_config(cfg)
    if llm_cfg.backend != "scripted":
        return build_llm(llm_cfg)
    from florec.models.agentcf.scripted import control_choice_rule, control_text_rule

    rule, text = control_choice_rule(), control_text_rule()
    return build_llm(llm_cfg, scripted_rule=rule, scripted_text=text,
                     scripted_name=f"{rule.__name__}+{text.__name__}")


def settings_of(cfg: RunConfig) -> AgentSettings:
    """The agents' settings of a run."""
    return AgentSettings(dual=is_dual(cfg), temperature=cfg.agentcf_temperature,
                         max_new_tokens=cfg.agentcf_max_tokens, seed=cfg.seed)


def display_seed(cfg: RunConfig) -> int:
    """Seed of the candidates' display order and of the random baseline.

    It depends on ``seed`` and ``split-seed`` (stream ``AGENTCF_DISPLAY``), so every user
    sample gets its own order.
    """
    return int(stream(cfg.seed, Salt.AGENTCF_DISPLAY, cfg.split_seed).integers(2**31))


def rank_settings_of(cfg: RunConfig) -> RankSettings:
    """The inference settings of a run."""
    return RankSettings(strategy=cfg.agentcf_strategy, mode=cfg.agentcf_rank,
                        history=cfg.agentcf_history, seed=display_seed(cfg),
                        temperature=cfg.agentcf_temperature,
                        max_new_tokens=max(cfg.agentcf_max_tokens, 200))


def step_batch(data: DomainData, pairs: list[tuple[int, int]], step: int,
               seed: int) -> list[Interaction]:
    """One step's interactions with their seeded same-domain negatives."""
    out = []
    for user, item in pairs:
        d = int(data.item_domain[item])
        neg = sample_negative(user, step, data.domain_items(d), data.seen(user), seed)
        out.append(Interaction(user, item, neg, d))
    return out


def train_agents(llm, data: DomainData, memories: dict[int, UserMemory], items: ItemMemories,
                 settings: AgentSettings, cap: int = 0) -> dict[str, float]:
    """Run every training step; item updates are applied in batch order (the last one wins).

    Returns
    -------
    dict
        ``steps``, ``interactions``, ``decision_accuracy`` (forward picks that were right) and
        ``item_update_bytes`` (UTF-8 bytes of the item texts a federation would upload).
    """
    steps = training_steps(data.train, data.users.tolist(), cap)
    n, right, nbytes = 0, 0, 0
    for t, pairs in enumerate(steps):
        batch = step_batch(data, pairs, t, settings.seed)
        updates, correct = user_side_step(llm, memories, batch, items.__getitem__,
                                          data.item_title, data.domains, settings, t)
        for item, text in updates:
            items.update(item, text)
            nbytes += len(text.encode())
        n, right = n + len(batch), right + correct
    return {"steps": len(steps), "interactions": n,
            "decision_accuracy": right / n if n else float("nan"), "item_update_bytes": nbytes}


def build_group_text(llm, encoder, data: DomainData, memories: dict[int, UserMemory],
                     cfg: RunConfig) -> tuple[Groups, Callable[[int, int, str], str]]:
    """AgentCF++ groups and ``group_text(user, domain, memory)`` for the ranking prompts."""
    tags = tag_users(llm, memories, data.domains, temperature=cfg.agentcf_temperature,
                     seed=cfg.seed)
    groups = build_groups(tags, encoder, cfg.agentcf_kmeans_k, cfg.agentcf_groups, cfg.seed)
    texts = group_memories(groups, data.train, data.item_domain, data.item_title)
    return groups, group_text_fn(groups, texts)


def group_text_fn(groups: Groups, texts: list[dict[int, str]]
                  ) -> Callable[[int, int, str], str]:
    """``(user, domain, memory) -> `` the TF-IDF-closest memory of the user's groups in domain."""

    def group_text(user: int, domain: int, memory: str) -> str:
        options = [texts[g][domain] for g in groups.of_user(user) if domain in texts[g]]
        return options[closest(memory, options)] if options else ""

    return group_text


def evaluate(llm, data: DomainData, memories: dict[int, UserMemory], items: ItemMemories,
             rank: RankSettings, group_text: Callable | None = None) -> dict[str, Any]:
    """Rank every test row; metrics, per-row ranks and the title-match failures."""
    rows = list(range(len(data.test)))
    out = rank_rows(llm, rows, data.test, data.candidates, memories, items.__getitem__,
                    data.item_title, data.item_domain, data.domains, data.train, rank,
                    group_text)
    return {"metrics": rank_metrics(out["ranks"]), "ranks": out["ranks"],
            "match_failures": out["match_failures"]}
