"""The node's half of user-level DP-FedAvg for MF: Poisson sampling, per-user clipping, node noise.

DP-FedAvg at the user level (McMahan et al., ICLR 2018): each round every user takes part
independently with probability ``q`` (``cohort-fraction``), trains as usual, and its whole
item update (every item row it changed, embedding and bias) is clipped to L2 norm ``C``
(``dp-clip``) *on the node, before the node pre-sums its users*. One user then moves the sum of
a round by at most ``C``; the server (``central`` mode, :mod:`florec.strategies.dp`) or the
nodes together (``distributed`` mode, :func:`node_noise`) add Gaussian noise of standard
deviation ``z C`` to that sum.

Each node draws its own users' participation from fresh OS entropy: the amplification by
sampling that the accountant credits holds only if the server cannot tell who took part, and the
run's seed is no secret (a sample recomputed from it, as the fixed-size cohorts of
:mod:`florec.recdata.cohort` are, would be known to the server). No user id travels; DP runs
with ``cohort-fraction < 1`` are therefore not bit-reproducible, like their noise.
"""

from __future__ import annotations

import functools
import json

import numpy as np
from flwr.app import Message, RecordDict

from florec.client.trainers.bpr_embedding import LocalResult
from florec.client.trainers.bucket import Bucket
from florec.protocol.codec import from_record, to_record
from florec.protocol.user_rows import clip_user_updates, user_norms
from florec.recdata.runconfig import RunConfig

__all__ = ["clip_result", "clip_user_updates", "dp_rows", "node_noise", "noise_reply",
           "poisson_sample", "user_norms"]


def poisson_sample(n_users: int, q: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """The users (indices ``0..n_users-1``) that take part in a round under Poisson sampling.

    Every user is included independently with probability ``q``: user ``u`` is in the sample
    when ``U_u < q`` for ``U = rng.random(n_users)``.

    Parameters
    ----------
    n_users : int
        Number of users to draw for (a node draws for its own users).
    q : float
        Sampling rate in (0, 1]; 1 takes every user.
    rng : numpy.random.Generator, optional
        Source of the draws; default fresh OS entropy (what a node uses: see the module
        docstring). Tests pass a seeded one.

    Returns
    -------
    np.ndarray
        Sorted int64 indices (possibly empty).

    """
    if q >= 1.0:
        return np.arange(n_users, dtype=np.int64)
    rng = rng if rng is not None else np.random.default_rng()
    return np.flatnonzero(rng.random(n_users) < q).astype(np.int64)


def clip_result(res: LocalResult, clip: float) -> tuple[LocalResult, float]:
    """``res`` with every user's item update clipped (:func:`clip_user_updates`).

    Returns
    -------
    (LocalResult, float)
        The clipped result and the share of the node's users whose update was clipped.

    """
    delta, bias, norms = clip_user_updates(res.row_user, res.delta, res.bias_delta, clip)
    users = norms[np.unique(res.row_user)]
    clipped = float((users > clip).mean()) if len(users) else 0.0
    res.delta, res.bias_delta = delta, bias
    return res, clipped


def _noise_shares(cfg: RunConfig) -> int:
    from florec.protocol.secagg import dp_noise_shares  # cryptography: only DP runs pay for it

    return dp_noise_shares(cfg.num_nodes, distributed_dp=True)


@functools.lru_cache(maxsize=8)
def _node_z(config_json: str, population: int) -> float:
    from florec.protocol import dp_account  # dp_accounting and scipy: only DP runs pay for them

    return dp_account.noise_multiplier(RunConfig.model_validate(json.loads(config_json)),
                                       population)


def dp_rows(cfg: RunConfig, bucket: Bucket, server_round: int) -> np.ndarray:
    """Local rows of the bucket users in this round's Poisson sample (:func:`poisson_sample`).

    ``server_round`` is unused: each round's draws are fresh OS entropy on the node.
    """
    return poisson_sample(len(bucket.users), cfg.cohort_fraction)


def node_noise(cfg: RunConfig, arrays: dict[str, np.ndarray], n_items: int,
               noise_multiplier: float, n_nodes: int) -> dict[str, np.ndarray]:
    r"""Distributed DP: add this node's share of the round's noise to its upload.

    Each of the ``n_nodes`` nodes adds :math:`\mathcal N(0, z^2 C^2 / n_{nodes})` to every entry
    of the whole item table (embedding and bias), so the sum carries :math:`\mathcal N(0, z^2
    C^2)` as in central mode. A sparse upload becomes one over every item (the noise must cover
    untouched rows too). Alone, a node's share protects little: the server sees each upload, so
    this is DP against the server only under secure aggregation (the server sees only the sum;
    ``check_dp`` requires ``secagg``), and ``n_nodes`` is the fewest shares a released sum can
    hold (:func:`florec.protocol.secagg.dp_noise_shares`). The noise is drawn from fresh OS entropy,
    never from the run's seed (which the server knows).

    Parameters
    ----------
    cfg : RunConfig
        Supplies ``dp-clip``.
    arrays : dict of str to np.ndarray
        The node's upload (:func:`florec.protocol.fedavg_upload.node_payload`).
    n_items : int
        Catalogue size.
    noise_multiplier : float
        ``z``.
    n_nodes : int
        The fewest nodes whose shares a released sum holds.

    Returns
    -------
    dict of str to np.ndarray
        The noised upload.

    """
    if noise_multiplier <= 0:
        return arrays
    std = noise_multiplier * cfg.dp_clip / np.sqrt(max(n_nodes, 1))
    rng = np.random.default_rng()
    if "items" in arrays:  # sparse layout: densify over the whole catalogue
        d = arrays["item_emb"].shape[1]
        emb, bias = np.zeros((n_items, d)), np.zeros(n_items)
        counts = np.zeros(n_items, np.int64)
        emb[arrays["items"]] = arrays["item_emb"]
        bias[arrays["items"]] = arrays["item_bias"]
        counts[arrays["items"]] = arrays["counts"]
        arrays = {"items": np.arange(n_items, dtype=np.int64), "item_emb": emb,
                  "item_bias": bias, "counts": counts}
    out = dict(arrays)
    out["item_emb"] = (arrays["item_emb"] + rng.normal(0.0, std, arrays["item_emb"].shape)
                       ).astype(np.float32)
    out["item_bias"] = (arrays["item_bias"] + rng.normal(0.0, std, arrays["item_bias"].shape)
                        ).astype(np.float32)
    return out


def noise_reply(cfg: RunConfig, msg: Message, bucket: Bucket, content: RecordDict
                ) -> RecordDict:
    """A train reply with the node's noise share added (``dp=true``, ``dp-mode=distributed``).

    The node computes ``z`` itself from the run config (calibrating ``dp-epsilon`` with the
    accountant, like the server) rather than take it from the server, and splits the noise
    over :func:`florec.protocol.secagg.dp_noise_shares` nodes, also from the run config: a
    server cannot shrink a node's share by claiming more nodes.
    """
    if not cfg.dp or cfg.dp_mode != "distributed":
        return content
    population = bucket.population or int(bucket.users.max(initial=-1)) + 1
    z = _node_z(json.dumps(cfg.to_flower(), sort_keys=True), population)
    arrays = node_noise(cfg, from_record(content.array_records["arrays"]), bucket.n_items, z,
                        _noise_shares(cfg))
    content["arrays"] = to_record(arrays)
    return content
