r"""Update rules of the poisoning attacks on FedAvg-MF (each follows its paper's rule).

Every rule returns :class:`AttackRows`: item-row changes ``(delta, bias_delta)`` of each
malicious user against the round's global table ``V, b``, which the node uploads like a benign
user's rows. ``attack-norm`` ``kappa > 0`` then clips each row's change
``[delta_i, bias_delta_i]`` to L2 norm ``kappa`` (the papers' stealth bound). Notation:
``T`` target items, ``s_ui = p_u . v_i + b_i``, ``sigma`` the logistic function,
``softplus(x) = log(1 + e^x)``, ``eta`` = ``attack-lr``, ``S`` = ``attack-steps``.

- ``random`` / ``bandwagon`` (data poisoning; Lam and Riedl, WWW 2004; Burke et al., 2005):
  a fake profile ``T`` + ``attack-fillers`` items (uniform / drawn from the 50 or
  ``2 * fillers`` most popular items), fixed per user, trained with the benign BPR trainer.
- ``pipattack`` (Zhang et al., "PipAttack: Poisoning Federated Recommender Systems for
  Manipulating Item Promotion", WSDM 2022): explicit boosting plus popularity enhancement,
  ``L = -sum_t log sigma(s_mt) + sum_t ||v_t - c_pop||^2`` with ``c_pop`` the mean embedding
  of the 5% most popular items (the paper's popularity classifier replaced by its class
  centroid), ``S`` gradient steps on the target rows.
- ``fedrecattack`` (Rong et al., "FedRecAttack: Model Poisoning Attack to Federated
  Recommendation", ICDE 2022): approximate user embeddings ``u_hat`` from the public
  interactions (ridge fit to the global table: ``(V_P^T V_P + w_0 V^T V + I) u = V_P^T 1``,
  ``w_0 = |P_u| / n``), then ``S`` normalised gradient steps (each moves a target row by
  ``eta``) on ``L = mean_u mean_{t, i in topK(u)} softplus(s_ui - s_ut)`` over the target
  rows (:func:`promotion_step`).
- ``a-ra`` / ``a-hum`` (Rong et al., "Poisoning Deep Learning Based Recommender Model in
  Federated Learning Scenarios", IJCAI 2022): the same promotion loss over ``attack-users``
  synthetic users: A-ra draws them from ``N(0, sigma_V^2 I)``; A-hum mines hard users by ``S``
  steps of ``u <- u - eta grad_u sum_t log sigma(s_ut)`` (norms kept), users the targets are
  least recommended to.
- ``fedattack`` (Wu et al., "FedAttack: Effective and Covert Poisoning Attack on Federated
  Recommendation via Hard Sampling", KDD 2022), untargeted: with its own embedding ``p_m``,
  the user takes its ``attack-fillers`` farthest items as positives and its closest as
  negatives (globally hardest samples, reversed) and takes ``S`` BPR steps on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from florec.client.attack_knowledge import AttackKnowledge
from florec.client.trainers.bpr_embedding import LocalConfig, local_update
from florec.client.trainers.bucket import Bucket
from florec.recdata.runconfig import RunConfig
from florec.recdata.seeds import Salt, stream

__all__ = ["AttackRows", "attack_rows", "clip_rows", "promotion_step"]


@dataclass
class AttackRows:
    """Rows of the malicious users: ``row_user`` indexes the malicious users passed in."""

    row_user: np.ndarray
    row_item: np.ndarray
    delta: np.ndarray
    bias_delta: np.ndarray


def clip_rows(rows: AttackRows, kappa: float) -> AttackRows:
    r"""Clip each row change to ``||[delta_i, bias_delta_i]||_2 <= kappa`` (no-op if 0)."""
    if kappa <= 0 or len(rows.row_item) == 0:
        return rows
    norm = np.sqrt((rows.delta.astype(np.float64) ** 2).sum(1) + rows.bias_delta ** 2)
    scale = np.minimum(1.0, kappa / np.maximum(norm, 1e-12))
    return AttackRows(rows.row_user, rows.row_item, rows.delta * scale[:, None],
                      rows.bias_delta * scale)


def _profiles(cfg: RunConfig, know: AttackKnowledge, users: np.ndarray) -> sp.csr_matrix:
    """Fixed fake profiles: targets + fillers (uniform, or popular for bandwagon)."""
    n = len(know.popularity)
    others = np.setdiff1d(np.arange(n), know.targets)
    if cfg.attack == "bandwagon":
        top = np.argsort(-know.popularity, kind="stable")
        others = np.setdiff1d(top[:max(50, 2 * cfg.attack_fillers)], know.targets)
    rows, cols = [], []
    for j, u in enumerate(users.tolist()):
        rng = stream(cfg.seed, Salt.ATTACK_ROUND, 0, u)
        fill = rng.choice(others, size=min(cfg.attack_fillers, len(others)), replace=False)
        items = np.concatenate([know.targets, fill])
        rows.append(np.full(len(items), j))
        cols.append(items)
    r, c = np.concatenate(rows), np.concatenate(cols)
    m = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(users), n))
    m.sort_indices()
    return m


def _data_poisoning(cfg: RunConfig, know: AttackKnowledge, users: np.ndarray,
                    user_emb: np.ndarray, emb: np.ndarray, bias: np.ndarray, rnd: int,
                    local: LocalConfig) -> AttackRows:
    train = _profiles(cfg, know, users)
    empty = sp.csr_matrix(train.shape, dtype=np.float32)
    fake = Bucket(users, train, empty, empty, population=0)
    res = local_update(fake, emb, bias, user_emb, local, rnd)
    return AttackRows(res.row_user, res.row_item, res.delta, res.bias_delta)


def promotion_step(emb: np.ndarray, bias: np.ndarray, users: np.ndarray, targets: np.ndarray,
                   k: int, lr: float, steps: int, seen: sp.csr_matrix | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    r"""Target-row changes that lift ``targets`` into the top-``k`` of ``users``.

    ``S`` normalised gradient steps on the target rows of
    ``L = mean_u mean_{t, i in topK(u)} softplus(s_ui - s_ut)`` (topK over non-target items,
    ``seen`` items excluded, fixed at the start): each step moves each target row
    ``[v_t, b_t]`` by ``lr`` along its negative gradient, so ``lr * steps`` bounds the move.

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``delta`` (T, d) and ``bias_delta`` (T,).

    """
    v = torch.as_tensor(emb, dtype=torch.float64)
    bt = torch.as_tensor(bias, dtype=torch.float64)
    u = torch.as_tensor(users, dtype=torch.float64)
    tgt = torch.as_tensor(targets, dtype=torch.long)
    with torch.no_grad():
        scores = u @ v.T + bt
        scores[:, tgt] = -torch.inf
        if seen is not None:
            coo = seen.tocoo()
            scores[torch.as_tensor(coo.row), torch.as_tensor(coo.col)] = -torch.inf
        top = scores.topk(min(k, v.shape[0] - len(targets)), dim=1).indices
        s_top = (scores.gather(1, top))  # (m, k)
    vt, bb = v[tgt].clone().requires_grad_(True), bt[tgt].clone().requires_grad_(True)
    for _ in range(steps):
        s_t = u @ vt.T + bb  # (m, T)
        loss = torch.nn.functional.softplus(s_top[:, None, :] - s_t[:, :, None]).mean()
        g_v, g_b = torch.autograd.grad(loss, [vt, bb])
        with torch.no_grad():  # each target row moves by lr along its descent direction
            norm = (g_v.pow(2).sum(1) + g_b.pow(2)).sqrt().clamp(min=1e-12)
            vt -= lr * g_v / norm[:, None]
            bb -= lr * g_b / norm
    return (vt.detach() - v[tgt]).numpy(), (bb.detach() - bt[tgt]).numpy()


def _public_users(know: AttackKnowledge, emb: np.ndarray) -> tuple[np.ndarray, sp.csr_matrix]:
    """FedRecAttack's ridge approximation of the users with public interactions."""
    pub = know.public[np.flatnonzero(np.diff(know.public.indptr) > 0)]
    v = emb.astype(np.float64)
    d, n = v.shape[1], v.shape[0]
    gram_all = v.T @ v
    out = np.zeros((pub.shape[0], d))
    for j in range(pub.shape[0]):
        items = pub.indices[pub.indptr[j]:pub.indptr[j + 1]]
        vp = v[items]
        a = vp.T @ vp + (len(items) / n) * gram_all + np.eye(d)
        out[j] = np.linalg.solve(a, vp.sum(0))
    return out, pub


def _synthetic_users(cfg: RunConfig, emb: np.ndarray, bias: np.ndarray, targets: np.ndarray,
                     rnd: int, user: int) -> np.ndarray:
    """A-ra's Gaussian users; A-hum's hard users mined from them."""
    rng = stream(cfg.seed, Salt.ATTACK_ROUND, rnd, user)
    u = rng.normal(0.0, float(emb.std()), (cfg.attack_users, emb.shape[1]))
    if cfg.attack == "a-ra":
        return u
    ut = torch.as_tensor(u).requires_grad_(True)
    vt = torch.as_tensor(emb[targets], dtype=torch.float64)
    bt = torch.as_tensor(bias[targets], dtype=torch.float64)
    norm = ut.detach().norm(dim=1, keepdim=True)
    for _ in range(cfg.attack_steps):
        loss = torch.nn.functional.logsigmoid(ut @ vt.T + bt).sum()
        (g,) = torch.autograd.grad(loss, [ut])
        with torch.no_grad():
            ut -= cfg.attack_lr * g
            ut *= norm / ut.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return ut.detach().numpy()


def _pipattack(cfg: RunConfig, know: AttackKnowledge, user_emb: np.ndarray, emb: np.ndarray,
               bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    top = np.argsort(-know.popularity, kind="stable")[:max(1, len(emb) // 20)]
    c_pop = torch.as_tensor(emb[top].mean(0), dtype=torch.float64)
    p = torch.as_tensor(user_emb, dtype=torch.float64)
    v0 = torch.as_tensor(emb[know.targets], dtype=torch.float64)
    b0 = torch.as_tensor(bias[know.targets], dtype=torch.float64)
    vt, bt = v0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    for _ in range(cfg.attack_steps):
        loss = -torch.nn.functional.logsigmoid(vt @ p + bt).sum() \
            + ((vt - c_pop) ** 2).sum()
        g_v, g_b = torch.autograd.grad(loss, [vt, bt])
        with torch.no_grad():
            vt -= cfg.attack_lr * g_v
            bt -= cfg.attack_lr * g_b
    return (vt.detach() - v0).numpy(), (bt.detach() - b0).numpy()


def _fedattack(cfg: RunConfig, user_emb: np.ndarray, emb: np.ndarray, bias: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = torch.as_tensor(user_emb, dtype=torch.float64)
    order = np.argsort(emb @ user_emb + bias, kind="stable")
    n = max(1, min(cfg.attack_fillers, len(order) // 2))
    pos, neg = order[:n], order[::-1][:n]  # farthest as positives, closest as negatives
    items = np.concatenate([pos, neg])
    v0 = torch.as_tensor(emb[items], dtype=torch.float64)
    b0 = torch.as_tensor(bias[items], dtype=torch.float64)
    v, b = v0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    for _ in range(cfg.attack_steps):
        s = v @ p + b
        loss = -torch.nn.functional.logsigmoid(s[:n] - s[n:]).mean()
        g_v, g_b = torch.autograd.grad(loss, [v, b])
        with torch.no_grad():
            v -= cfg.attack_lr * g_v
            b -= cfg.attack_lr * g_b
    return items, (v.detach() - v0).numpy(), (b.detach() - b0).numpy()


def attack_rows(cfg: RunConfig, know: AttackKnowledge, users: np.ndarray, user_emb: np.ndarray,
                emb: np.ndarray, bias: np.ndarray, rnd: int, local: LocalConfig) -> AttackRows:
    """The uploads of the malicious ``users`` this round under ``cfg.attack``.

    Parameters
    ----------
    cfg : RunConfig
        ``attack`` and its ``attack-*`` knobs.
    know : AttackKnowledge
        Targets, popularity and public interactions.
    users, user_emb : np.ndarray
        Global ids of the malicious users and their private embeddings (m, d).
    emb, bias : np.ndarray
        The round's global item table.
    rnd : int
        The round (keys the random streams).
    local : LocalConfig
        The benign trainer's knobs (data-poisoning attacks train with them).

    Returns
    -------
    AttackRows
        Each malicious user's item-row changes (clipped to ``attack-norm``).

    """
    if cfg.attack in ("random", "bandwagon"):
        return clip_rows(_data_poisoning(cfg, know, users, user_emb, emb, bias, rnd, local),
                         cfg.attack_norm)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    shared = None
    for j, user in enumerate(users.tolist()):
        if cfg.attack == "pipattack":
            d, db = _pipattack(cfg, know, user_emb[j], emb, bias)
            parts.append((know.targets, d, db))
        elif cfg.attack == "fedattack":
            parts.append(_fedattack(cfg, user_emb[j], emb, bias))
        elif cfg.attack == "fedrecattack":
            if shared is None:  # the public approximation is the same for every attacker
                approx, seen = _public_users(know, emb)
                shared = promotion_step(emb, bias, approx, know.targets, cfg.attack_k,
                                        cfg.attack_lr, cfg.attack_steps, seen)
            parts.append((know.targets, *shared))
        elif cfg.attack in ("a-ra", "a-hum"):
            approx = _synthetic_users(cfg, emb, bias, know.targets, rnd, user)
            d, db = promotion_step(emb, bias, approx, know.targets, cfg.attack_k,
                                   cfg.attack_lr, cfg.attack_steps)
            parts.append((know.targets, d, db))
        else:
            raise ValueError(f"attack '{cfg.attack}' has no update rule")
    rows = AttackRows(
        row_user=np.concatenate([np.full(len(p[0]), j) for j, p in enumerate(parts)]),
        row_item=np.concatenate([p[0] for p in parts]).astype(np.int64),
        delta=np.concatenate([p[1] for p in parts]).astype(np.float32),
        bias_delta=np.concatenate([p[2] for p in parts]).astype(np.float32))
    return clip_rows(rows, cfg.attack_norm)
