"""A CoT-Rec node: user perception, the retriever's FedAvg rounds and the ranker's LoRA rounds.

Everything that reads a user's history runs here, on the user's node (docs/methods/cotrec.md,
protocol card): the user-perception prompts, the ranker prompts (history + candidates), the LLM that
answers them and the LoRA training on them. Only these leave the node: the retriever's shared
arrays (item table and body, as in :mod:`florec.client.seq_node`), LoRA adapter weights, and
metric sums / counts. User-token rows and preference texts stay in the node's store.

Message kinds (``config['cotrec-phase']``):

* ``train.setup`` (``setup='cotrec-user'``, arrays ``projection``): user perception of the
  node's users -> user-token rows (through the server's projection) kept in the store;
* ``train`` ``retriever`` / ``evaluate`` ``retriever``: local SASRec epochs (the trained user
  tokens go back to the store) / metric sums; an evaluation keeps a copy of the user tokens of
  its round (the ranker uses the best round's) and drops the copies of rounds the server no
  longer holds (``kept-rounds``: the best so far), so the store holds at most two copies;
* ``train`` ``lora``: the ranker's LoRA on the node's validation targets, from the global adapter;
* ``evaluate`` ``ranker``: re-ranking metric sums and MAPB sums of the node's test users.
"""

from __future__ import annotations

import functools
import json
import time
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.common.logger import log

from florec.client.node_store import NodeStore, open_store
from florec.client.seq_node import node_sequences
from florec.client.trainers.bucket import Bucket
from florec.client.trainers.sequential import (
    load_optimizer_arrays,
    optimizer_arrays,
    sequence_metric_sums,
)
from florec.models.cotrec.perception import Projection
from florec.models.cotrec.pipeline import histories, make_encoder, make_llm, user_side
from florec.models.cotrec.rank_eval import (
    AnswerBook,
    RankInputs,
    evaluate_ranker,
    lora_samples,
    retriever_metrics,
    single_targets,
)
from florec.models.cotrec.ranker import K, prompt_builder, shuffled_slots
from florec.models.cotrec.retriever import build_retriever, top_k, train_epoch, with_users
from florec.models.sasrec import SASRec
from florec.protocol.codec import from_record, to_record
from florec.recdata.runconfig import RunConfig
from florec.recdata.seeds import Salt, stream, torch_seed
from florec.recdata.shard import shard_of_node

USER_KEY = "cotrec-user"
OPT_KEY = "cotrec-optimizer"
#: the copy of the user tokens evaluated in round r is ``<ROUND_TOKENS><r>``
ROUND_TOKENS = f"{USER_KEY}-r"


@functools.lru_cache(maxsize=2)
def _texts(config_json: str, node_config: tuple) -> list[str]:
    cfg = RunConfig.model_validate(json.loads(config_json))
    return shard_of_node(cfg, dict(node_config)).item_texts()  # public, in every shard


@functools.lru_cache(maxsize=2)
def _llm_and_encoder(config_json: str) -> tuple[Any, Any, AnswerBook]:
    cfg = RunConfig.model_validate(json.loads(config_json))
    book = AnswerBook()  # the scripted control's oracle: this node's own targets only
    return make_llm(cfg, book), make_encoder(cfg), book


def node_tools(cfg: RunConfig, context: Context) -> tuple[list[str], Any, Any]:
    """Public item texts (of the node's shard), this node's LLM and encoder (built once)."""
    key = json.dumps(cfg.to_flower(), sort_keys=True)
    node = context.node_config
    keys = ("partition-id", "num-partitions", "data-dir")
    texts = _texts(key, tuple((k, node[k]) for k in keys if k in node))
    return (texts, *_llm_and_encoder(key)[:2])


def _book(cfg: RunConfig) -> AnswerBook:
    return _llm_and_encoder(json.dumps(cfg.to_flower(), sort_keys=True))[2]


def _stats(llm: Any) -> dict[str, float]:
    return dict(llm.stats.as_dict()) if llm is not None else {}


def _delta(llm: Any, before: dict[str, float]) -> dict[str, float]:
    return {f"llm/{k}": v - before[k] for k, v in _stats(llm).items()}


def setup(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """User perception of the node's users; keeps token rows and preference texts in the store."""
    t0 = time.perf_counter()
    texts, llm, encoder = node_tools(cfg, context)
    seqs = node_sequences(context, cfg)
    hists = histories(seqs, bucket.users, "train", cfg.cotrec_history, texts)
    arrays = msg.content.array_records.get("projection")
    projection = Projection.from_arrays(from_record(arrays)) if arrays else None
    before = _stats(llm)
    out_dir = Path(cfg.out_dir) / f"node-{pid}" if cfg.out_dir else None  # the node's own disk
    rows, prefs = user_side(cfg, llm, encoder, projection, bucket.users, hists, out_dir)
    saved = {"prefs": np.asarray(prefs, dtype=str)}
    if rows is not None:
        saved["rows"] = rows
    store = open_store(context, cfg.store_spill_mb)
    store.put(USER_KEY, saved)
    store.commit()
    return RecordDict({"metrics": MetricRecord(
        {"partition-id": pid, "num-users": len(bucket.users), "seconds": time.perf_counter() - t0}
        | _delta(llm, before))})


def _model(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, device: str,
           best: int | None = None) -> tuple[SASRec, dict[str, np.ndarray], int]:
    """The global retriever with this node's user-token rows put in, and the fallback count.

    The rows are the last trained ones (``best=None``) or the copy of round ``best``. A node
    that did not evaluate round ``best`` (it missed that round, or its store was lost) has no
    copy: it uses the last trained rows (or the initial ones if it has none either), logs a
    warning and counts its users as ``tokens-fallback`` (the third value, 0 otherwise), which
    the server reports beside the ranker's metrics.
    """
    model = build_retriever(cfg, bucket.n_items, bucket.population or int(bucket.users.max()) + 1)
    model.load_shared_state(from_record(msg.content.array_records["arrays"]))
    store = open_store(context, cfg.store_spill_mb)
    mine = store.get(USER_KEY if best is None else f"{ROUND_TOKENS}{best}")
    fallback = 0
    if mine is None and best is not None:
        mine = store.get(USER_KEY)
        if model.user_token is not None:
            fallback = len(bucket.users)
            log(WARNING, "CoT-Rec node %s: no user tokens of the best round %d (the node did "
                "not evaluate it); its %d users take the %s ones", context.node_config.get(
                    "partition-id"), best, fallback, "last trained" if mine else "initial")
    mine = mine or {}
    if model.user_token is not None and "rows" in mine:
        with torch.no_grad():
            model.user_token.weight[torch.as_tensor(bucket.users)] = torch.as_tensor(mine["rows"])
    return model.to(device), mine, fallback


def _save_tokens(store: NodeStore, model: SASRec, bucket: Bucket, key: str,
                 prefs: np.ndarray | None) -> None:
    """Put the node's user-token rows (and preference texts) under ``key`` in ``store``."""
    saved: dict[str, np.ndarray] = {} if prefs is None else {"prefs": prefs}
    if model.user_token is not None:
        idx = torch.as_tensor(bucket.users)
        saved["rows"] = model.user_token.weight.detach()[idx].cpu().numpy().copy()
    store.put(key, saved)


def keep_round_tokens(store: NodeStore, keep: set[int]) -> list[str]:
    """Drop the per-round token copies of rounds not in ``keep``; returns the dropped names."""
    names = store.names()
    stale = [n for n in names if n.startswith(ROUND_TOKENS)
             and int(n[len(ROUND_TOKENS):]) not in keep]
    if stale:
        store.replace_all({n: store.get(n) for n in names if n not in stale})
    return stale


def train(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """Retriever epochs (phase ``retriever``) or the ranker's LoRA (phase ``lora``)."""
    config = msg.content.config_records["config"]
    if str(config.get("cotrec-phase", "retriever")) == "lora":
        return train_lora(msg, context, cfg, bucket, pid, device)
    t0 = time.perf_counter()
    rnd = int(config["server-round"])
    seqs = node_sequences(context, cfg)
    model, mine, _ = _model(msg, context, cfg, bucket, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    store = open_store(context, cfg.store_spill_mb)
    saved = store.get(OPT_KEY)
    if saved is not None:
        load_optimizer_arrays([optimizer], saved)
    rng = stream(cfg.seed, Salt.SEQ_ROUND, rnd, pid)
    torch.manual_seed(torch_seed(cfg.seed, Salt.SEQ_DROPOUT, rnd, pid))  # dropout
    windows = seqs.inputs(bucket.users, "train", cfg.max_seq_len)
    positions, loss_sum = 0, 0.0
    for _ in range(cfg.local_epochs):
        stats = train_epoch(model, optimizer, windows, bucket.users, rng, cfg.local_batch_size,
                            device)
        positions, loss_sum = stats.positions, loss_sum + stats.loss_sum
    if positions:
        store.put(OPT_KEY, optimizer_arrays([optimizer]))
        _save_tokens(store, model, bucket, USER_KEY, mine.get("prefs"))
        store.commit()
    metrics = MetricRecord({
        "partition-id": pid, "num-users": int((seqs.train_lengths(bucket.users) > 0).sum()),
        "num-positions": positions, "num-examples": positions,
        "loss-sum": loss_sum / max(cfg.local_epochs, 1), "seconds": time.perf_counter() - t0})
    return RecordDict({"arrays": to_record(model.shared_state()), "metrics": metrics})


def _rank_inputs(context: Context, cfg: RunConfig, bucket: Bucket, model: SASRec,
                 prefs: np.ndarray, part: str) -> RankInputs:
    texts, _, _ = node_tools(cfg, context)
    seqs = node_sequences(context, cfg)
    hist = histories(seqs, bucket.users, "train" if part == "valid" else "test",
                     cfg.cotrec_history, texts)
    inputs = with_users(model, bucket.users, seqs.inputs(bucket.users, part, cfg.max_seq_len))
    local = np.arange(len(bucket.users))
    truth = bucket.valid if part == "valid" else bucket.test
    slots = shuffled_slots(int(bucket.users.max()) + 1, K, cfg.seed + (part == "test"))
    pref_list = [str(p) for p in prefs] if len(prefs) else [""] * len(local)
    return RankInputs(local, top_k(model, inputs, bucket.mask_for(part), K, cfg.eval_chunk),
                      single_targets(truth, local),
                      prompt_builder(texts.__getitem__, hist.__getitem__, pref_list.__getitem__),
                      slots[bucket.users])


def _load_adapter(llm: Any, msg: Message) -> None:
    record = msg.content.array_records.get("adapter")
    if record is not None and len(record):
        llm.load_adapter_state(from_record(record))


def train_lora(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
               device: str) -> RecordDict:
    """LoRA on the node's validation targets, from the global adapter; uploads the adapter."""
    t0 = time.perf_counter()
    best = int(msg.content.config_records["config"]["best-round"])
    _, llm, _ = node_tools(cfg, context)
    model, mine, fallback = _model(msg, context, cfg, bucket, device, best)
    inp = _rank_inputs(context, cfg, bucket, model, mine.get("prefs", np.array([])), "valid")
    prompts, targets = lora_samples(inp, _book(cfg))
    _load_adapter(llm, msg)
    before = _stats(llm)
    metrics: dict[str, float] = {"partition-id": pid, "num-samples": len(prompts),
                                 "tokens-fallback": fallback}
    if prompts:
        torch.manual_seed(torch_seed(cfg.seed, Salt.COTREC_LORA_INIT, pid))
        stats = llm.finetune_choices(prompts, targets, K, epochs=cfg.cotrec_lora_epochs,
                                     lr=cfg.cotrec_lora_lr, lora_r=cfg.cotrec_lora_r,
                                     seed=torch_seed(cfg.seed, Salt.COTREC_LORA, pid))
        metrics["loss-sum"] = float(stats.get("loss_last_epoch", 0.0)) * len(prompts)
    adapter = llm.adapter_state() if prompts else from_record(msg.content.array_records["adapter"])
    metrics |= _delta(llm, before) | {"seconds": time.perf_counter() - t0}
    return RecordDict({"adapter": to_record(adapter), "metrics": MetricRecord(metrics)})


def evaluate(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
             device: str) -> RecordDict:
    """Retriever metric sums (and a copy of this round's user tokens), or ranker sums."""
    config = msg.content.config_records["config"]
    if str(config.get("cotrec-phase", "retriever")) == "ranker":
        return evaluate_ranker_node(msg, context, cfg, bucket, pid, device)
    seqs = node_sequences(context, cfg)
    model, mine, _ = _model(msg, context, cfg, bucket, device)
    rnd = int(config["server-round"])
    store = open_store(context, cfg.store_spill_mb)
    _save_tokens(store, model, bucket, f"{ROUND_TOKENS}{rnd}", mine.get("prefs"))
    keep_round_tokens(store, {rnd, *(int(r) for r in config.get("kept-rounds", []))})
    store.commit()
    inputs = {p: with_users(model, bucket.users, seqs.inputs(bucket.users, p, cfg.max_seq_len))
              for p in ("valid", "test")}
    masks = {p: bucket.mask_for(p) for p in ("valid", "test")}
    sums = sequence_metric_sums(model, inputs, masks, {"valid": bucket.valid,
                                                       "test": bucket.test},
                                cfg.k_list, cfg.eval_chunk, device)
    return RecordDict({"metrics": MetricRecord(sums | {"partition-id": pid})})


def evaluate_ranker_node(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket,
                         pid: int, device: str) -> RecordDict:
    """Sums over the node's test users: retriever and re-ranked NDCG/HR@10, MAPB of a share."""
    config = msg.content.config_records["config"]
    best, label = int(config["best-round"]), str(config["label"])
    _, llm, _ = node_tools(cfg, context)
    model, mine, fallback = _model(msg, context, cfg, bucket, device, best)
    inp = _rank_inputs(context, cfg, bucket, model, mine.get("prefs", np.array([])), "test")
    _load_adapter(llm, msg)
    before = _stats(llm)
    n = inp.n_evaluated()
    ranked = evaluate_ranker(llm, inp, int(config["mapb-users"]), label, _book(cfg))
    base = retriever_metrics(inp)
    sums = {f"ndcg@{K}": ranked[f"ndcg@{K}"] * n, f"hr@{K}": ranked[f"hr@{K}"] * n,
            f"retriever/ndcg@{K}": base[f"ndcg@{K}"] * n, f"retriever/hr@{K}": base[f"hr@{K}"] * n,
            "num-users": n, "covered": base["coverage"] * n,
            "mapb-users": ranked.get("mapb_users", 0), "tokens-fallback": fallback,
            "mapb-sum": ranked["mapb"] * ranked.get("mapb_users", 0) if "mapb_users" in ranked
            else 0.0}
    return RecordDict({"metrics": MetricRecord(sums | {"partition-id": pid}
                                               | _delta(llm, before))})
