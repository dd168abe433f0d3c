"""Baselines that rank the identical 1 + 9 candidates of a :class:`DomainData`.

Random, Pop (training counts among the sampled users), BPR-MF (:class:`florec.models.mf.MF`),
SASRec (:class:`florec.models.sasrec.SASRec`, full-softmax CE on every training prefix) and
zero-shot LLMRank (history titles -> the letter distribution). Every method's scores go through
the same seeded display order (:func:`florec.models.agentcf.rank.slot_order`), so ties rank at
random exactly as the agents' do.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from florec.models.agentcf.data import DomainData
from florec.models.agentcf.prompts import llmrank_prompt
from florec.models.agentcf.rank import rank_metrics, ranks_from_scores, slot_order
from florec.recdata.seeds import Salt, stream

#: ``score(row, candidates) -> scores`` of one test row's candidates (candidate order).
Scorer = Callable[[int, np.ndarray], np.ndarray]


def ranks_of(data: DomainData, score: Scorer, seed: int) -> list[int]:
    """1-based rank of the true item of every test row under ``score``."""
    ranks = []
    for row in range(len(data.test)):
        cands = data.candidates[row]
        slots = slot_order(seed, row, len(cands))
        ranks.append(ranks_from_scores(score(row, cands)[slots], slots))
    return ranks


def random_scorer(seed: int) -> Scorer:
    """Uniform random scores (seeded per row)."""
    return lambda row, cands: stream(seed, Salt.AGENTCF_RANDOM, row).random(len(cands))


def pop_scorer(data: DomainData) -> Scorer:
    """Training interactions of each item among the sampled users."""
    counts = np.zeros(len(data.item_domain))
    for rows in data.train.values():
        for item, _ in rows:
            counts[item] += 1
    return lambda row, cands: counts[cands]


def bpr_scorer(data: DomainData, seed: int, dim: int = 32, epochs: int = 60,
               lr: float = 0.01, reg: float = 1e-4) -> Scorer:
    """MF trained with BPR (uniform negatives) on the training interactions."""
    from florec.models.mf import MF

    users = {int(u): k for k, u in enumerate(data.users)}
    pairs = np.array([(users[u], i) for u, rows in data.train.items() for i, _ in rows],
                     dtype=np.int64).reshape(-1, 2)
    n_items = len(data.item_domain)
    model = MF(len(users), n_items, dim=dim, seed=seed, reg=reg)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = stream(seed, Salt.AGENTCF_BPR)
    u_t, i_t = torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1])
    for _ in range(epochs if len(pairs) else 0):
        neg = torch.from_numpy(rng.integers(0, n_items, len(pairs)))
        opt.zero_grad()
        model.loss(u_t, i_t, neg).backward()
        opt.step()
    with torch.no_grad():
        table = model.score(torch.arange(len(users))).numpy()
    return lambda row, cands: table[users[data.test[row][0]], cands]


def sasrec_scorer(data: DomainData, seed: int, max_len: int = 20, dim: int = 32,
                  epochs: int = 40, lr: float = 1e-3) -> Scorer:
    """SASRec (CE over all items) trained on every prefix of the training sequences."""
    from florec.models.sasrec import SASRec

    def window(seq: list[int]) -> list[int]:
        seq = seq[-max_len:]
        return [0] * (max_len - len(seq)) + seq

    seqs = {u: [i + 1 for i, _ in rows] for u, rows in data.train.items()}
    inputs, targets = [], []
    for seq in seqs.values():
        for t in range(1, len(seq)):
            inputs.append(window(seq[:t]))
            targets.append(seq[t])
    n_items = len(data.item_domain)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SASRec(n_items, max_len=max_len, dim=dim, heads=2, layers=2, dropout=0.2)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        x, y = torch.tensor(inputs).reshape(-1, max_len), torch.tensor(targets)
        for _ in range(epochs if len(targets) else 0):
            model.train()
            opt.zero_grad()
            model.loss(x, y, y, "ce").backward()
            opt.step()
    model.eval()
    users = sorted(seqs)
    with torch.no_grad():
        table = model.score(torch.tensor([window(seqs[u]) for u in users])).numpy()
    index = {u: k for k, u in enumerate(users)}
    # score() covers tokens 1..n (embedding.items()): item i is column i.
    return lambda row, cands: table[index[data.test[row][0]], cands]


def llmrank_ranks(llm, data: DomainData, seed: int, history: int = 10) -> list[int]:
    """Zero-shot LLMRank: the last ``history`` training titles and the lettered candidates."""
    prompts, slots_all = [], []
    for row, (user, _) in enumerate(data.test):
        cands = data.candidates[row]
        slots = slot_order(seed, row, len(cands))
        hist = [data.item_title[i] for i, _ in data.train.get(user, [])][-history:]
        domain = data.domains[int(data.item_domain[cands[0]])]
        prompts.append(llmrank_prompt(hist, [data.item_text[int(cands[j])] for j in slots],
                                      domain))
        slots_all.append(slots)
    if not prompts:
        return []
    probs = llm.choice_distribution(prompts, data.candidates.shape[1], desc="llmrank")
    return [ranks_from_scores(p, s) for p, s in zip(probs, slots_all, strict=True)]


def run_baselines(data: DomainData, seed: int, llm=None) -> dict[str, dict[str, float]]:
    """Metrics of every baseline (LLMRank only when ``llm`` is given)."""
    out = {"random": rank_metrics(ranks_of(data, random_scorer(seed), seed)),
           "pop": rank_metrics(ranks_of(data, pop_scorer(data), seed)),
           "bpr-mf": rank_metrics(ranks_of(data, bpr_scorer(data, seed), seed)),
           "sasrec": rank_metrics(ranks_of(data, sasrec_scorer(data, seed), seed))}
    if llm is not None:
        out["llmrank"] = rank_metrics(llmrank_ranks(llm, data, seed))
    return out
