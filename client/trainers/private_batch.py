r"""FedCIA-MF: the local epochs of one node's clients, batched, each client still its own model.

Every FedCIA client keeps a private MF (its users' rows, the whole item table, item biases) and
its own ``torch.optim.Adam``; :func:`florec.client.trainers.private_model.local_epoch` trains
one such model at a time. :func:`train_mf_clients` trains all of a node's MF clients together
and gives what that loop gives, bit for bit on x86-64 CPU with torch 2.13 (stacking changes
which elements fall in the vector kernels' tails, so elsewhere it may differ by float rounding;
``tests/client/test_private_batch.py``):

- **Same draws.** Each client shuffles its own fixed triples with its own generator, one
  ``rng.permutation`` per epoch as ``local_epoch`` does, and keeps its batches and step count.
- **Only rows that can move.** An Adam row with zero gradient and zero moments stays exactly
  where it is (:math:`m = v = 0 \Rightarrow p \leftarrow p - \eta\,0/(0 + \epsilon) = p`), so a
  client's item rows outside its triples' items and its stored non-zero moments never move.
  The others are gathered once per call into a compact table and scattered back after; each
  of them moves as torch's dense Adam moves it.
- **Clients stacked.** The clients' compact tables lie client after client in one tensor, the
  clients ordered by step count (most first), so the clients still stepping at step ``s`` are a
  leading slice. One step: the BPR terms of all their batches in one pass, each client's loss
  the mean over its own batch (what ``MF.loss`` returns), one backward of the sum (each client's
  gradient lands in its own rows, accumulated in its own order), and torch's single-tensor Adam
  (``torch.optim.adam.adam``, as ``torch.optim.Adam`` runs on CPU) once per run of clients at
  the same step count, on their slice.

State goes in and out in the node store's layout (:func:`florec.client.trainers.private_model
.state_arrays`: ``model`` = ``user_emb``, ``item_emb``, ``item_bias``; ``optimizer`` =
``<p>.step``/``.exp_avg``/``.exp_avg_sq`` for parameters p = 0, 1, 2 in that order), except
that the item moments are stored for the rows that may move only, listed in ``<p>.rows``
(p = 1, 2; every other row's moments are exactly 0):
:func:`florec.client.trainers.private_model.restore` expands them for evaluation; this
trainer reads them as they are.
:func:`fresh_states` are new clients' states, the rows
:func:`florec.client.trainers.private_model.build_node_model` gives an MF.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.adam import adam as adam_step

from florec.client.trainers.bucket import Bucket
from florec.client.trainers.private_model import MODEL_KEY, OPT_KEY
from florec.client.trainers.user_adam import ADAM_BETAS, ADAM_EPS
from florec.models.base import SEEDED_CACHE_MIN_ROWS, seeded_rows
from florec.models.mf import ITEM_SALT, USER_SALT, bpr_terms

State = dict[str, dict[str, np.ndarray]]
PARAMS = ("user_emb", "item_emb", "item_bias")
CACHE_FACTOR = 64  # largest population / users asked for that draws the whole user table


def fresh_states(clients: list[Bucket], dim: int, seed: int, init_std: float) -> list[State]:
    """New MF clients' models (the rows :func:`build_node_model` gives) and empty Adams.

    User rows depend on (seed, global id) alone and item rows on (seed, item id), so they are
    read from :func:`seeded_rows`' process-wide cached tables instead of one generator per user
    and call: the whole population's user rows are drawn once per process when every id lies in
    it and it is at most ``CACHE_FACTOR`` times the users asked for (a node of a huge population
    draws its own users' rows). The item table and biases are one array shared by every
    client's state: states are read-only.
    """
    if not clients:
        return []
    users = np.concatenate([c.users for c in clients]).astype(np.int64)
    population = clients[0].population
    if (len(users) and SEEDED_CACHE_MIN_ROWS < population <= CACHE_FACTOR * len(users)
            and int(users.max()) < population):  # seeded_rows caches the table 0..n-1
        rows = seeded_rows(np.arange(population), dim, seed, init_std, USER_SALT)[users]
    else:
        rows = seeded_rows(users, dim, seed, init_std, USER_SALT)
    n_items = clients[0].n_items
    items = seeded_rows(np.arange(n_items), dim, seed, init_std, ITEM_SALT)
    bias = np.zeros(n_items, dtype=np.float32)
    bounds = np.cumsum([0] + [len(c.users) for c in clients])
    return [{MODEL_KEY: {"user_emb": rows[a:b], "item_emb": items, "item_bias": bias},
             OPT_KEY: {}} for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _movable_items(state: State, triples: tuple[np.ndarray, ...], n_items: int) -> np.ndarray:
    """Sorted item rows that may move: the triples' items and rows with stored moments."""
    mask = np.zeros(n_items, dtype=bool)
    mask[triples[1]] = True
    mask[triples[2]] = True
    opt = state.get(OPT_KEY) or {}
    if "1.rows" in opt:
        mask[opt["1.rows"]] = True
    else:  # moments of every row (a torch Adam's state): rows with a non-zero moment
        for key in ("1.exp_avg", "1.exp_avg_sq", "2.exp_avg", "2.exp_avg_sq"):
            if key in opt:
                moved = opt[key] != 0
                mask |= moved.any(axis=1) if moved.ndim == 2 else moved
    return np.flatnonzero(mask)


def _steps_taken(state: State) -> float:
    opt = state.get(OPT_KEY) or {}
    steps = {float(np.ravel(opt[f"{i}.step"])[0]) for i in range(3) if f"{i}.step" in opt}
    if len(steps) > 1:
        raise ValueError(f"MF client state has parameters at different Adam steps {steps}")
    return steps.pop() if steps else 0.0


def _batches(triples: tuple[np.ndarray, ...], rng: np.random.Generator, epochs: int,
             batch_size: int) -> list[np.ndarray]:
    """The client's batches (triple indices) of ``epochs`` shuffled passes, in order."""
    out = []
    for _ in range(epochs):
        order = rng.permutation(len(triples[0]))
        out += [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    return out


def _moments(state: State, param: int, take: np.ndarray | None, like: np.ndarray
             ) -> list[np.ndarray] | None:
    """Adam's moments (m, v) of parameter ``param`` at rows ``take`` (all if None).

    None before a first step; ``take`` must hold every row a compact state stores.
    """
    opt = state.get(OPT_KEY) or {}
    if f"{param}.exp_avg" not in opt:
        return None
    stored = [opt[f"{param}.exp_avg"], opt[f"{param}.exp_avg_sq"]]
    if f"{param}.rows" not in opt:
        return stored if take is None else [x[take] for x in stored]
    at = np.searchsorted(take, opt[f"{param}.rows"])
    out = [np.zeros_like(like), np.zeros_like(like)]
    for o, x in zip(out, stored, strict=True):
        o[at] = x
    return out


class _Stack:
    """The clients' user rows and movable item rows, client after client, with Adam's state.

    ``params[p]`` stacks parameter ``p`` (``PARAMS``) of every client, ``offsets[p][j]`` is
    where client ``j``'s rows start in it, ``m[p]``/``v[p]`` are the moments and ``steps[j]``
    client ``j``'s Adam step count.
    """

    def __init__(self, states: list[State], rows: list[np.ndarray], device: str) -> None:
        takes = [[None] * len(states), rows, rows]
        self.params, self.offsets, self.m, self.v = [], [], [], []
        for p, name in enumerate(PARAMS):
            full = [state[MODEL_KEY][name] for state in states]
            self.offsets.append(np.cumsum([0] + [len(f) if t is None else len(t)
                                                 for f, t in zip(full, takes[p], strict=True)]))
            table = np.empty((self.offsets[p][-1], *full[0].shape[1:]), dtype=np.float32)
            for j, (f, t) in enumerate(zip(full, takes[p], strict=True)):
                at = table[self.offsets[p][j]: self.offsets[p][j + 1]]
                if t is None:
                    at[...] = f
                else:
                    np.take(f, t, axis=0, out=at)
            pieces = [table[a:b] for a, b in zip(self.offsets[p][:-1], self.offsets[p][1:],
                                                 strict=True)]
            self.params.append(torch.from_numpy(table).to(device))
            stored = [_moments(state, p, t, x)
                      for state, t, x in zip(states, takes[p], pieces, strict=True)]
            for i, out in enumerate((self.m, self.v)):
                out.append(torch.zeros_like(self.params[p]) if all(s is None for s in stored)
                           else torch.from_numpy(np.concatenate([
                               np.zeros_like(x) if mv is None else mv[i]
                               for x, mv in zip(pieces, stored, strict=True)])).to(device))
        self.steps = [_steps_taken(state) for state in states]

    def step(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
             bounds: np.ndarray, lr: float, reg: float) -> list[float]:
        """One step of clients ``0..a-1`` (``a = len(bounds) - 1``); their batches' mean losses.

        Client ``j``'s triples are ``bounds[j]:bounds[j + 1]`` of ``users``/``pos``/``neg``
        (rows of the stacked tables). Its loss is its batch's mean BPR term, as ``MF.loss``
        computes it, so autograd gives each client the gradient its own model would get.
        """
        a = len(bounds) - 1
        leaves = [x[: o[a]].detach().requires_grad_() for x, o in zip(self.params, self.offsets,
                                                                       strict=True)]
        user_vec, pos_vec, neg_vec = leaves[0][users], leaves[1][pos], leaves[1][neg]
        if reg:
            terms = bpr_terms(user_vec, pos_vec, neg_vec, leaves[2][pos], leaves[2][neg], reg)
        else:  # bpr_terms at reg = 0 (its penalty adds exactly 0), without the penalty's work
            terms = -F.logsigmoid((user_vec * (pos_vec - neg_vec)).sum(-1) + leaves[2][pos]
                                  - leaves[2][neg])
        means = torch.stack([terms[b:e].mean() for b, e in zip(bounds[:-1], bounds[1:],
                                                                strict=True)])
        grads = torch.autograd.grad(means.sum(), leaves)
        with torch.no_grad():
            first = 0
            while first < a:  # clients at the same step count take one torch Adam step
                last = first + 1
                while last < a and self.steps[last] == self.steps[first]:
                    last += 1
                blocks = [slice(o[first], o[last]) for o in self.offsets]
                adam_step([x[b] for x, b in zip(self.params, blocks, strict=True)],
                          [g[b] for g, b in zip(grads, blocks, strict=True)],
                          [x[b] for x, b in zip(self.m, blocks, strict=True)],
                          [x[b] for x, b in zip(self.v, blocks, strict=True)], [],
                          [torch.tensor(self.steps[first]) for _ in blocks], foreach=False,
                          fused=False, amsgrad=False, beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1],
                          lr=lr, weight_decay=0.0, eps=ADAM_EPS, maximize=False)
                for j in range(first, last):
                    self.steps[j] += 1
                first = last
        return means.tolist()


def train_mf_clients(states: list[State], triples: list[tuple[np.ndarray, ...]],
                     rngs: list[np.random.Generator], epochs: int, batch_size: int, lr: float,
                     reg: float = 0.0, device: str = "cpu"
                     ) -> tuple[list[State], list[list[float]]]:
    r"""``epochs`` local epochs of every client, batched; new states and per-epoch mean losses.

    Client ``k`` does what ``local_epoch(model_k, Adam(model_k.parameters(), lr), triples[k],
    batch_size, rngs[k])`` does ``epochs`` times, from ``states[k]``: minimises the mean BPR
    loss of each batch (:func:`florec.models.mf.bpr_terms`, L2 weight ``reg``),

    .. math:: \mathcal{L}_b = \frac{1}{|b|}\sum_{(u,i,j) \in b}
              -\log\sigma(p_u^\top q_i + b_i - p_u^\top q_j - b_j)
              + \lambda(\lVert p_u\rVert^2 + \lVert q_i\rVert^2 + \lVert q_j\rVert^2),

    with one Adam step per batch over all of the client's parameters.

    Parameters
    ----------
    states : list of dict
        Each client's stored state (:func:`fresh_states` or what the node saved); not changed.
    triples : list of tuple of np.ndarray
        Each client's (local user row, positive, negative) triples.
    rngs : list of np.random.Generator
        Each client's round stream; one permutation is drawn per epoch, as ``local_epoch`` does.
    epochs, batch_size : int
        Local epochs and triples per batch.
    lr, reg : float
        Adam's learning rate and the L2 weight of the loss.
    device : str
        Where the arithmetic runs.

    Returns
    -------
    (states, losses)
        Each client's new state (same layout) and its mean loss of each epoch (0 without
        triples).

    """
    batches = [_batches(t, r, epochs, batch_size)
               for t, r in zip(triples, rngs, strict=True)]
    losses = [[0.0] * epochs for _ in states]
    order = sorted((k for k in range(len(states)) if batches[k]), key=lambda k: -len(batches[k]))
    new = list(states)
    if not order:
        return new, losses
    rows = {k: _movable_items(states[k], triples[k], len(states[k][MODEL_KEY]["item_bias"]))
            for k in order}
    stack = _Stack([states[k] for k in order], [rows[k] for k in order], device)
    local = []
    for j, k in enumerate(order):
        to_row = np.empty(len(states[k][MODEL_KEY]["item_bias"]), dtype=np.int64)
        to_row[rows[k]] = np.arange(len(rows[k])) + stack.offsets[1][j]
        local.append((triples[k][0] + stack.offsets[0][j], to_row[triples[k][1]],
                      to_row[triples[k][2]]))
    for s in range(len(batches[order[0]])):
        active = [k for k in order if s < len(batches[k])]
        idx = [batches[k][s] for k in active]
        users, pos, neg = (torch.from_numpy(np.concatenate([t[x][i] for t, i in
                                                            zip(local, idx, strict=False)]))
                           .to(device) for x in range(3))
        means = stack.step(users, pos, neg, np.cumsum([0] + [len(i) for i in idx]), lr, reg)
        for k, value, i in zip(active, means, idx, strict=True):
            losses[k][s * epochs // len(batches[k])] += value * len(i)
    out = [[t.cpu().numpy() for t in group] for group in (stack.params, stack.m, stack.v)]
    for j, k in enumerate(order):
        new[k] = _unstack(states[k], rows[k], [slice(o[j], o[j + 1]) for o in stack.offsets],
                          *out, stack.steps[j])
        losses[k] = [x / len(triples[k][0]) for x in losses[k]]
    return new, losses


def _unstack(state: State, rows: np.ndarray, blocks: list[slice], params: list[np.ndarray],
             m: list[np.ndarray], v: list[np.ndarray], step: float) -> State:
    """A client's blocks of the stacked tables (``blocks[p]`` of parameter ``p``) as its state.

    The item table and biases are whole (the rows outside ``rows`` as stored); their moments
    are the ``rows`` only (``<p>.rows``). User rows and moments are views of the stacked arrays,
    which nothing else holds.
    """
    model_out, opt_out = {}, {}
    for p, name in enumerate(PARAMS):
        block = blocks[p]
        if p == 0:  # the client's users: every row is in the block
            model_out[name] = params[p][block]
        else:
            full = state[MODEL_KEY][name].copy()
            full[rows] = params[p][block]
            model_out[name] = full
            opt_out[f"{p}.rows"] = rows
        opt_out[f"{p}.exp_avg"], opt_out[f"{p}.exp_avg_sq"] = m[p][block], v[p][block]
        opt_out[f"{p}.step"] = np.array(step, dtype=np.float32)
    return {MODEL_KEY: model_out, OPT_KEY: opt_out}
