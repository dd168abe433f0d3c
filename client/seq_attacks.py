r"""Poisoning attacks on FedAvg of sequential recommenders (SASRec, GRU4Rec) (issue 18).

A sequential node trains one model on its users' windows and uploads all of its arrays
(:mod:`florec.client.seq_node`), so malicious users cannot replace rows as under FedAvg-MF.
Their share enters the node's upload as a weighted model instead: the benign users' windows
train the benign model ``theta_b`` (``P_b`` positions); the malicious users train a copy of the
global model ``theta_g`` under the attack for ``P_m`` positions, ending at ``theta_m``, and the
node uploads

.. math:: \theta = \frac{P_b \theta_b + P_m (\theta_g + s (\theta_m - \theta_g))}{P_b + P_m}

with weight ``P_b + P_m``, i.e. the FedAvg the node would compute if the malicious users had been
ordinary users with update ``s (theta_m - theta_g)``. Attacks (``s`` from ``attack-lr`` =
``eta``):

- ``bandwagon`` (targeted promotion; the bandwagon profile of Burke et al., 2005, written as
  the fake-sequence injection of Yue et al., "Black-Box Attacks on Sequential Recommenders via
  Data-Free Model Extraction", RecSys 2021): each malicious user's window is a fake sequence
  ``f_1, t_1, f_2, t_2, ...`` that puts a target right after each popular filler (fillers drawn
  per user from the most popular items, as for MF; targets cycled), so next-item training learns
  ``popular -> target`` transitions; ``s = eta`` scales the change (explicit boosting, as the
  model-replacement boost of Bagdasaryan et al., AISTATS 2020; ``eta = 1``: none).
- ``sign-flip`` (untargeted; the sign-flipping attack of Damaskinos et al., ICML 2018, as
  evaluated by Fang et al., USENIX Security 2020): the malicious users train on their own
  windows and upload the reversed change, ``s = -eta``.

Malicious users are drawn by seed as for MF (:func:`florec.client.attacks.malicious_users`) and
left out of every evaluation. Attackers know the targets and the public popularity only.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from florec.client.attacks import AttackKnowledge, log_hosted
from florec.client.trainers.sequential import make_optimizers, train_epoch
from florec.models.exposure import exposure_sums
from florec.models.seq_layers import SequentialRecommender
from florec.recdata.runconfig import RunConfig
from florec.recdata.seeds import Salt, stream, torch_seed
from florec.recdata.sequences import UserSequences

__all__ = ["SEQ_ATTACKS", "fake_windows", "mix_states", "poisoned_state",
           "sequence_exposure_sums"]

#: attacks implemented for sequential models
SEQ_ATTACKS = ("none", "bandwagon", "sign-flip")


def fake_windows(cfg: RunConfig, know: AttackKnowledge, users: np.ndarray, length: int
                 ) -> np.ndarray:
    """Left-padded bandwagon sequences ``f_1, t_1, f_2, t_2, ...`` of the malicious ``users``.

    ``attack-fillers`` popular fillers per user (drawn, per user, from the ``max(50, 2 *
    fillers)`` most popular non-target items), each followed by a target (cycled), truncated to
    the last ``length`` tokens. Tokens are item ids + 1 (0 pads), as in
    :class:`florec.recdata.sequences.UserSequences`.
    """
    top = np.argsort(-know.popularity, kind="stable")
    pool = np.setdiff1d(top[:max(50, 2 * cfg.attack_fillers)], know.targets)
    out = np.zeros((len(users), length), np.int64)
    n_fill = max(1, min(cfg.attack_fillers, len(pool)))
    for j, user in enumerate(np.asarray(users).tolist()):
        fill = stream(cfg.seed, Salt.ATTACK_ROUND, 0, user).choice(pool, n_fill, replace=False)
        tgt = know.targets[np.arange(n_fill) % len(know.targets)]
        seq = (np.stack([fill, tgt], axis=1).ravel() + 1)[-length:]
        out[j, length - len(seq):] = seq
    return out


def poisoned_state(cfg: RunConfig, know: AttackKnowledge, model: SequentialRecommender,
                   users: np.ndarray, seqs: UserSequences, n_items: int, rnd: int, pid: int,
                   device: str) -> tuple[dict[str, np.ndarray], int]:
    """The malicious users' model ``theta_g + s (theta_m - theta_g)`` and its positions ``P_m``.

    Parameters
    ----------
    cfg : RunConfig
        ``attack`` (``bandwagon`` or ``sign-flip``) and its knobs.
    know : AttackKnowledge
        Targets and popularity.
    model : SequentialRecommender
        A fresh copy of the round's global model (trained in place).
    users : np.ndarray
        Global ids of the node's malicious users.
    seqs : UserSequences
        The node's sequences (``sign-flip`` trains on the malicious users' own windows).
    n_items, rnd, pid : int
        Catalogue size, round and partition (key the random streams).
    device : str
        Torch device.

    Returns
    -------
    (dict of str to np.ndarray, int)
        The shared arrays to mix into the node's upload, and their weight ``P_m``.

    Raises
    ------
    ValueError
        An attack without a rule for sequential models.

    """
    if cfg.attack not in SEQ_ATTACKS[1:]:
        raise ValueError(f"attack '{cfg.attack}' has no rule for sequential models")
    log_hosted(pid, tuple(int(u) for u in users))
    start = model.shared_state()
    windows = fake_windows(cfg, know, users, cfg.max_seq_len) if cfg.attack == "bandwagon" \
        else seqs.inputs(users, "train", cfg.max_seq_len)
    rng = stream(cfg.seed, Salt.ATTACK_ROUND, rnd, pid)
    torch.manual_seed(torch_seed(cfg.seed, Salt.ATTACK_ROUND, rnd, pid))
    optimizers = make_optimizers(model, cfg.lr, cfg.weight_decay)
    positions = 0
    for _ in range(cfg.local_epochs):
        positions = train_epoch(model, optimizers, windows, n_items, rng, cfg.local_batch_size,
                                cfg.seq_loss, device).positions
    scale = cfg.attack_lr if cfg.attack == "bandwagon" else -cfg.attack_lr
    end = model.shared_state()
    return {k: (start[k] + scale * (end[k] - start[k])).astype(start[k].dtype)
            for k in start}, positions


def mix_states(benign: dict[str, np.ndarray], p_b: int, bad: dict[str, np.ndarray], p_m: int
               ) -> dict[str, np.ndarray]:
    """``(P_b theta_b + P_m theta_m) / (P_b + P_m)`` per array (``benign`` if no positions)."""
    if p_m == 0:
        return benign
    total = float(p_b + p_m)
    return {k: ((p_b * benign[k].astype(np.float64) + p_m * bad[k].astype(np.float64))
                / total).astype(benign[k].dtype) for k in benign}


def sequence_exposure_sums(model: SequentialRecommender, inputs: np.ndarray,
                           mask: sp.csr_matrix, interacted: sp.csr_matrix,
                           targets: np.ndarray, ks: list[int], chunk: int = 1024,
                           device: str = "cpu") -> dict[str, float]:
    """ER@K and target-rank sums of rows ``0..U-1`` ranked from their test ``inputs``.

    :func:`florec.models.exposure.exposure_sums` with the sequence model's scores.
    """
    seq = torch.as_tensor(inputs, dtype=torch.int64, device=device)
    model.eval()
    with torch.no_grad():
        out = exposure_sums(lambda u: model.score(seq[u]), np.arange(len(seq)), mask,
                            interacted, targets, ks, chunk, device)
    model.train()
    return out
