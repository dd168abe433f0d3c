"""Centralised AgentCF / AgentCF++: simulate the agents on the training interactions, then rank.

Phases (each timed with its LLM calls, cache hits and tokens in ``results.json`` ``phases``):
``train`` (forward choice + reflections, step by step), ``groups`` (AgentCF++: tags, k-means,
group memories), ``rank`` (1 true + 9 same-domain candidates per test interaction) and, with
``agentcf-baselines=true``, ``baselines`` (random, Pop, BPR-MF, SASRec, LLMRank on the same
candidates). The folder also gets ``memories.jsonl`` (every agent's final memory) and
``ranks.json`` (the rank of each test row).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from florec.models.agentcf.baselines import run_baselines
from florec.models.agentcf.data import DomainData
from florec.models.agentcf.memory import ItemMemories, UserMemory
from florec.models.agentcf.pipeline import (
    agentcf_method_name,
    build_group_text,
    display_seed,
    evaluate,
    load_domain_data,
    make_agent_llm,
    rank_settings_of,
    settings_of,
    train_agents,
    uses_groups,
)
from florec.models.agentcf.prompts import PROMPT_VERSION
from florec.models.agentcf.rank import random_mrr
from florec.models.cotrec.pipeline import PhaseLog
from florec.recdata.runconfig import RunConfig
from florec.server.results import ResultsWriter, run_entry


def run_central_agentcf(cfg: RunConfig, out_dir: Path | None = None, *, llm: Any = None,
                        encoder: Any = None, data: DomainData | None = None) -> dict[str, Any]:
    """One centralised AgentCF(++) run; returns its entry of ``results.json``.

    Parameters
    ----------
    cfg : RunConfig
        ``model`` ``agentcf`` or ``agentcf++``, the ``agentcf-*`` and ``llm-*`` keys.
    out_dir : Path, optional
        Results folder (config.json, results.json, memories.jsonl, ranks.json).
    llm, encoder : optional
        Prebuilt LLM / sentence encoder (tests); default from the run config.
    data : DomainData, optional
        Prebuilt protocol (tests, bench); default :func:`load_domain_data`.

    """
    t_start = time.perf_counter()
    writer = ResultsWriter(Path(out_dir)) if out_dir is not None else None
    config = cfg.to_flower() | {"setting": "central", "prompt-version": PROMPT_VERSION}
    if writer is not None:
        writer.write_config(config)
    data = data if data is not None else load_domain_data(cfg)
    llm = llm if llm is not None else make_agent_llm(cfg)
    settings = settings_of(cfg)
    memories = {int(u): UserMemory(settings.dual) for u in data.users}
    items = ItemMemories(data.item_text)
    log = PhaseLog()
    with log.phase("train", llm):
        train_stats = train_agents(llm, data, memories, items, settings, cfg.agentcf_train_max)
    group_text, groups = None, None
    if uses_groups(cfg):
        with log.phase("groups", llm):
            if encoder is None:
                from florec.models.llm.encoder import SentenceEncoder

                encoder = SentenceEncoder(cfg.encoder)
            groups, group_text = build_group_text(llm, encoder, data, memories, cfg)
    with log.phase("rank", llm):
        result = evaluate(llm, data, memories, items, rank_settings_of(cfg), group_text)
    n_cands = data.candidates.shape[1]
    run = run_entry(agentcf_method_name(cfg), "central", cfg.dataset, "agentcf-time",
                    cfg.seed, split_seed=cfg.split_seed)
    run.update(metrics=result["metrics"], random_mrr=random_mrr(n_cands),
               match_failures=result["match_failures"], train=train_stats,
               data=data.meta | {"domains": data.domains, "users": len(data.users)},
               groups={"sizes": [len(m) for m in groups.members], "names": groups.names}
               if groups is not None else None)
    if cfg.agentcf_baselines:
        with log.phase("baselines", llm):
            run["baselines"] = run_baselines(data, display_seed(cfg), llm)
    run.update(phases=log.phases, llm=llm.stats.as_dict(),
               wall_s=time.perf_counter() - t_start)
    if writer is not None:
        write_memories(Path(out_dir), memories, items, result["ranks"])
        writer.write_results(config, [run])
    return run


def write_memories(out_dir: Path, memories: dict[int, UserMemory], items: ItemMemories,
                   ranks: list[int]) -> None:
    """``memories.jsonl`` (users, then learned item descriptions) and ``ranks.json``."""
    with (out_dir / "memories.jsonl").open("w", encoding="utf-8") as fh:
        for user, mem in sorted(memories.items()):
            fh.write(json.dumps({"user": user} | mem.to_dict(), ensure_ascii=False) + "\n")
        for item, text in sorted(items.learned.items()):
            fh.write(json.dumps({"item": item, "learned": text}, ensure_ascii=False) + "\n")
    (out_dir / "ranks.json").write_text(json.dumps(ranks) + "\n")


def run_federated_agentcf(cfg: RunConfig, n_nodes: int, out_dir: Path | None = None, *,
                          llm: Any = None, encoder: Any = None, data: DomainData | None = None,
                          on_message: Any = None) -> dict[str, Any]:
    """AgentCF(++) with user memories on ``n_nodes`` nodes, run in this process.

    Users are split into contiguous buckets (sorted ids), one per node; each node keeps its
    users' memories and answers their prompts with its own ``llm`` (here one shared object:
    the cache key does not depend on the node); the server
    (:class:`florec.strategies.agentcf.AgentCFServer`) keeps the item agents and the groups.
    The messages are Flower ``RecordDict`` objects handed over in process;
    ``on_message(direction, kind, msg)`` sees each of them. The same protocol runs under
    ``flwr run`` / ``florec sim --model agentcf`` (:mod:`florec.strategies.agentcf_flower`).
    """
    import numpy as np

    from florec.client.agentcf_node import AgentCFNode
    from florec.strategies.agentcf import AgentCFServer
    from florec.strategies.agentcf_flower import federate

    t_start = time.perf_counter()
    writer = ResultsWriter(Path(out_dir)) if out_dir is not None else None
    config = cfg.to_flower() | {"setting": "federated", "nodes": n_nodes,
                                "prompt-version": PROMPT_VERSION}
    if writer is not None:
        writer.write_config(config)
    data = data if data is not None else load_domain_data(cfg)
    llm = llm if llm is not None else make_agent_llm(cfg)
    if uses_groups(cfg) and encoder is None:
        from florec.models.llm.encoder import SentenceEncoder

        encoder = SentenceEncoder(cfg.encoder)
    nodes = [AgentCFNode(bucket, data, llm, settings_of(cfg), rank_settings_of(cfg),
                         cfg.agentcf_train_max)
             for bucket in np.array_split(data.users, n_nodes) if len(bucket)]
    server = AgentCFServer(data.item_text, data.item_domain, data.item_title, encoder=encoder,
                           kmeans_k=cfg.agentcf_kmeans_k,
                           n_groups=cfg.agentcf_groups if uses_groups(cfg) else 0,
                           seed=cfg.seed, on_message=on_message)
    run = federate(server, nodes, cfg,
                   data.meta | {"domains": data.domains, "users": len(data.users)})
    run["wall_s"] = time.perf_counter() - t_start
    if writer is not None:
        writer.write_results(config, [run])
    return run
