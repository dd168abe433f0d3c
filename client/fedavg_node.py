"""FedAvg on a node: every user of the bucket is a logical client with a private embedding.

Each round only the users of the round's cohort train (:func:`florec.recdata.cohort.sample_cohort`,
recomputed here from the seed, the round and the population); the other users' embeddings stay
as they are. Private embeddings live in the node's :class:`florec.client.node_store.NodeStore`,
and with ``keep-user-opt-state`` so does their optimizer's state (``opt-*`` arrays, one row per
user), so a user's Adam continues across rounds (and across checkpoint/resume, which snapshots
the store).
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict

from florec.client import secagg_node
from florec.client.attacks import apply_attack, node_knowledge
from florec.client.evaluation import bucket_metric_sums
from florec.client.node_store import NodeStore, open_store
from florec.client.trainers import dp_clip
from florec.client.trainers.bpr_embedding import LocalConfig, local_update
from florec.client.trainers.bucket import Bucket
from florec.models.base import seeded_rows
from florec.models.mf import MF, USER_SALT
from florec.models.user_refit import TRAIN, refit_user_emb
from florec.protocol.codec import from_record, to_record
from florec.protocol.user_rows import fedavg_upload
from florec.recdata.cohort import sample_cohort
from florec.recdata.runconfig import RunConfig

PRIVATE_KEY = "private"
OPT_PREFIX = "opt-"


def upload_mode(aggregation: str) -> str:
    """The payload layout of an aggregation mode (``sum`` uploads the sparse rows)."""
    return "dense" if aggregation == "dense" else "sparse"


def user_opt_state(saved: dict[str, np.ndarray] | None, rows: np.ndarray | None
                   ) -> dict[str, np.ndarray] | None:
    """The stored optimizer state of the bucket users ``rows`` (all if None), or None."""
    if saved is None or not any(k.startswith(OPT_PREFIX) for k in saved):
        return None
    return {k[len(OPT_PREFIX):]: (v if rows is None else v[rows])
            for k, v in saved.items() if k.startswith(OPT_PREFIX)}


def private_user_emb(context: Context, cfg: RunConfig, bucket: Bucket,
                     store: NodeStore | None = None) -> np.ndarray:
    """The bucket users' private embeddings, initialised on first use from (seed, user id)."""
    store = store if store is not None else open_store(context, cfg.store_spill_mb)
    saved = store.get(PRIVATE_KEY)
    if saved is None:
        return seeded_rows(bucket.users, cfg.dim, cfg.seed, cfg.init_std, USER_SALT)
    return saved["user_emb"]


def cohort_rows(cfg: RunConfig, bucket: Bucket, server_round: int) -> np.ndarray:
    """Local rows of the bucket users that belong to this round's cohort."""
    if cfg.dp:  # user-level DP samples users by Poisson sampling instead
        return dp_clip.dp_rows(cfg, bucket, server_round)
    population = bucket.population or int(bucket.users.max(initial=-1)) + 1
    cohort = sample_cohort(cfg.seed, server_round, population, cfg.cohort_fraction,
                           cfg.cohort_size)
    return np.flatnonzero(np.isin(bucket.users, cohort))


def _empty_reply(cfg: RunConfig, bucket: Bucket, pid: int, t0: float) -> RecordDict:
    arrays, weight = fedavg_upload(cfg.defense, upload_mode(cfg.aggregation), bucket.n_items,
                                  np.zeros(0, np.int64),
                                  np.zeros(0, np.int64), np.zeros((0, cfg.dim), np.float32),
                                  np.zeros(0, np.float32), np.zeros(0))
    metrics = MetricRecord({"partition-id": pid, "num-users": 0, "num-pairs": 0,
                            "loss-sum": 0.0, "weight": weight, "num-examples": 0,
                            "seconds": time.perf_counter() - t0})
    return RecordDict({"arrays": to_record(arrays), "metrics": metrics})


def train(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """Local training of the bucket's cohort users; returns the node's summed item update."""
    t0 = time.perf_counter()
    secagg_node.forget(context)  # a setup's or last round's aggregation is over
    glob = from_record(msg.content.array_records["arrays"])
    server_round = int(msg.content.config_records["config"]["server-round"])
    rows = cohort_rows(cfg, bucket, server_round)
    if len(rows) == 0:
        return secagg_node.fedavg_reply(cfg, msg, context, bucket.n_items, dp_clip.noise_reply(
            cfg, msg, bucket, _empty_reply(cfg, bucket, pid, t0)))
    store = open_store(context, cfg.store_spill_mb)
    user_emb = private_user_emb(context, cfg, bucket, store)
    whole = len(rows) == len(bucket.users)
    sub = bucket if whole else bucket.subset(rows)
    saved = store.get(PRIVATE_KEY) if cfg.keep_user_opt_state else None
    start = user_emb if whole else user_emb[rows]
    if cfg.user_refit_steps > 0:  # FCF: fit p_u to the current item table, then train
        start = refit_user_emb(sub.train, sub.users, start, glob["item_emb"], glob["item_bias"],
                               cfg.user_refit_steps, cfg.user_refit_lr, cfg.reg, cfg.seed,
                               server_round, TRAIN)
    res = local_update(sub, glob["item_emb"], glob["item_bias"], start,
                       LocalConfig.from_run_config(cfg, server_round),
                       server_round, device, item_pop=glob.get("item_pop"),
                       n_users=int(glob["n_users"][0]) if "n_users" in glob else None,
                       user_opt_state=user_opt_state(saved, None if whole else rows))
    res = apply_attack(cfg, node_knowledge(cfg, context),
                       sub, res, glob, server_round, pid)  # malicious users (issue 18)
    private = {"user_emb": _merge(user_emb, res.user_emb, rows, whole)}
    if cfg.keep_user_opt_state and res.user_opt_state is not None:
        old = user_opt_state(saved, None)
        for key, new in res.user_opt_state.items():
            base = old[key] if old is not None else np.zeros((len(bucket.users), *new.shape[1:]),
                                                              new.dtype)
            private[OPT_PREFIX + key] = _merge(base, new, rows, whole)
    if cfg.dp:  # bound every user's whole item update before the node pre-sums
        res, _ = dp_clip.clip_result(res, cfg.dp_clip)
    store.put(PRIVATE_KEY, private)
    store.commit()
    deg = np.diff(sub.train.indptr)
    weight = deg.astype(np.float64) if cfg.weighting == "interactions" else (deg > 0) * 1.0
    arrays, total_weight = fedavg_upload(cfg.defense, upload_mode(cfg.aggregation), sub.n_items,
                                         res.row_user, res.row_item, res.delta, res.bias_delta,
                                         weight)
    metrics = MetricRecord({
        "partition-id": pid, "num-users": int((deg > 0).sum()), "num-pairs": res.num_pairs,
        "loss-sum": res.loss_sum, "weight": total_weight, "num-examples": int(deg.sum()),
        "seconds": time.perf_counter() - t0,
    })
    content = dp_clip.noise_reply(cfg, msg, bucket, RecordDict({"arrays": to_record(arrays),
                                                                "metrics": metrics}))
    return secagg_node.fedavg_reply(cfg, msg, context, bucket.n_items, content)


def _merge(old: np.ndarray, new: np.ndarray, rows: np.ndarray, whole: bool) -> np.ndarray:
    """``old`` with the cohort rows ``rows`` replaced by ``new`` (``new`` itself if whole)."""
    if whole:
        return new
    out = old.copy()
    out[rows] = new
    return out


def align(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """FedAvg has no second phase."""
    raise RuntimeError("fedavg nodes receive no align messages")


def evaluate(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
             device: str) -> RecordDict:
    """Full-ranking metric sums of the bucket's users on validation and test."""
    glob = from_record(msg.content.array_records["arrays"])
    user_emb = private_user_emb(context, cfg, bucket)
    if cfg.user_refit_steps > 0:  # FCF / joint-DP view: post-processing on the node, not stored
        server_round = int(msg.content.config_records["config"]["server-round"])
        user_emb = refit_user_emb(bucket.train, bucket.users, user_emb, glob["item_emb"],
                                  glob["item_bias"], cfg.user_refit_steps, cfg.user_refit_lr,
                                  cfg.reg, cfg.seed, server_round)
    model = MF.from_arrays(user_emb, glob["item_emb"], glob["item_bias"]).to(device)
    know = node_knowledge(cfg, context)  # issue 18
    sums = bucket_metric_sums(model.score, bucket, cfg, pid, device, item_pop=glob.get("item_pop"),
                              know=know)
    return RecordDict({"metrics": MetricRecord(sums)})
