"""Every random stream of FloRec, keyed by (seed, salt, keys...): the salts, named, in one place.

A stream is ``numpy.random.default_rng([seed, salt, *keys])``: the run's seed, the stream's
salt and what the stream depends on (round, user, partition, ...), so the same draw comes out
on whichever node or process computes it, and two streams never share draws. Salts must be
distinct: numpy's ``SeedSequence`` pads a short key with zeros, so ``[seed, s]`` and
``[seed, s, 0]`` are the same stream, and only a distinct salt keeps two streams apart
(:func:`check_distinct` runs at import).

Changing a salt changes every draw of its stream (and so the run's numbers); add a new one for a
new stream instead of reusing one.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Salt(IntEnum):
    """The salt of each random stream, with the keys that follow it."""

    #: initial user embedding rows ``[seed, salt, user]`` (MF, LightGCN, MLP)
    USER_INIT = 1
    #: initial item embedding rows ``[seed, salt, item]``
    ITEM_INIT = 2
    #: MLP layer weights ``[seed, salt, layer]``
    MLP_INIT = 3
    #: FedAvg local BPR pairs of a user ``[seed, salt, round, user]``
    BPR_PAIRS = 11
    #: nodes sampled for training ``[seed, salt, round]`` (``fraction-train``)
    NODE_SAMPLING = 17
    #: central trainer's epoch shuffles ``[seed, salt]`` (MF, LightGCN, MLP)
    CENTRAL_SHUFFLE = 23
    #: a FedCIA/local client's fixed training triples ``[seed, salt, client]``
    PRIVATE_TRIPLES = 29
    #: a FedCIA/local client's round (shuffles, noise) ``[seed, salt, round, client]``
    PRIVATE_ROUND = 31
    #: central sequential trainer's batches and negatives ``[seed, salt]`` (also CoT-Rec's
    #: retriever)
    CENTRAL_SEQUENCE = 37
    #: a sequential node's batches and negatives ``[seed, salt, round, partition]`` (also
    #: CoT-Rec's retriever)
    SEQ_ROUND = 41
    #: a sequential node's dropout (torch) ``[seed, salt, round, partition]``
    SEQ_DROPOUT = 43
    #: CoT-Rec: torch state before a node's LoRA fine-tuning ``[seed, salt, partition]``
    COTREC_LORA_INIT = 47
    #: CoT-Rec: a node's LoRA fine-tuning ``[seed, salt, partition]``
    COTREC_LORA = 53
    #: FS-Pair's popularity negatives ``[seed, salt, round, user]``
    FS_PAIR_NEGATIVES = 59
    #: UBPR's uniform second items ``[seed, salt, round, user]``
    UBPR_ITEMS = 61
    #: central fair trainer's batches and negatives (torch) ``[seed, salt]``
    CENTRAL_FAIR = 67
    #: user cohort of a round ``[seed, salt, round]``
    COHORT = 71
    #: item chunks of the point-wise fair losses ``[seed, salt, round, epoch]``
    FAIR_ITEM_ORDER = 79
    #: retired (user-level DP now samples from OS entropy on the node); kept so it is not reused
    DP_SAMPLING = 83
    #: poisoning: malicious users ``[seed, salt]`` (``attack-fraction``)
    ATTACK_USERS = 101
    #: poisoning: ``unpopular:N`` target items ``[seed, salt]``, public interactions
    #: ``[seed, salt, 1]``
    ATTACK_TARGETS = 103
    #: poisoning: a fake profile ``[seed, salt, 0, user]``, synthetic users
    #: ``[seed, salt, round, user]``
    ATTACK_ROUND = 107
    #: MF user refit (phase 0 before evaluating, 1 before local training): a user's negatives
    #: ``[seed, salt, phase, round, user]``
    USER_REFIT = 113
    #: CoT-Rec: each user's shuffle of the retriever's candidates ``[seed', salt]``
    COTREC_SLOTS = 2025
    #: LLMD4Rec: a distillation sample's shuffle of its candidates ``[seed, salt, user, col]``
    LLMD4REC_SLOTS = 3011
    #: LLMD4Rec: the central CRM's distillation epochs ``[seed, salt, iteration, epoch]``
    LLMD4REC_CRM = 3019
    #: LLMD4Rec: minibatch order of the LLM step: centrally ``[seed, salt, iteration, 0]``, on
    #: a node ``[seed, salt, iteration, 1, pid]`` (the role component keeps pid 0 off central)
    LLMD4REC_LORA = 3023
    #: LLMD4Rec: the LoRA adapter's initial ``A`` (the same centrally and on every node)
    #: ``[seed, salt]``
    LLMD4REC_LORA_INIT = 3029
    #: LLMD4Rec: the central CRM's dropout (torch) in a distillation iteration
    #: ``[seed, salt, iteration]`` (apart from the epochs' batches of ``LLMD4REC_CRM``)
    LLMD4REC_CRM_DROPOUT = 3031
    #: LLM layer: a sampled prompt's generator ``[seed, salt, sha256(prompt)]`` (``hf``/``tiny``)
    LLM_SAMPLING = 4001
    #: LLKD: test/pool split of the labelled items ``[split-seed, salt]``
    LLKD_SPLIT = 1313
    #: LLKD: the teacher's item sample when ``llkd-teacher-items`` caps it ``[split-seed, salt]``
    LLKD_TEACHER_ITEMS = 7
    #: LLKD: the student's minibatch order ``[seed, salt]``
    LLKD_TRAIN = 2411
    #: LLKD: the dev half of the federated held-out items ``[split-seed, salt]``
    LLKD_HELD_OUT = 3041
    #: AgentCF: the sampled users ``[split-seed, salt]``
    AGENTCF_USERS = 7101
    #: AgentCF: the test rows' same-domain negatives ``[split-seed, salt]``
    AGENTCF_NEGATIVES = 7103
    #: AgentCF: the sampling seed of one batched LLM call ``[seed, salt, step, phase]``
    AGENTCF_CALL = 7107
    #: AgentCF: a forward step's negative ``[seed, salt, user, step]``
    AGENTCF_TRAIN_NEGATIVE = 7108
    #: AgentCF: a test row's display order of its candidates ``[seed, salt, row]``
    AGENTCF_SLOTS = 7109
    #: AgentCF: tie-breaking of fuzzy title matches ``[seed, salt, row]``
    AGENTCF_TITLE_TIES = 7110
    #: AgentCF: the random baseline's scores ``[seed, salt, row]``
    AGENTCF_RANDOM = 7111
    #: AgentCF: the BPR-MF baseline's negatives ``[seed, salt]``
    AGENTCF_BPR = 7112
    #: AgentCF: which of positive and negative a forward step shows first ``[seed, salt, step]``
    AGENTCF_PAIR_ORDER = 7113
    #: AgentCF: the synthetic multi-domain users of the positive control ``[seed, salt]``
    AGENTCF_SYNTHETIC = 9001
    #: personas: fields ``[seed, salt]``, texts ``[seed, salt, 1]``, anchors ``[seed, salt, 2]``
    PERSONA = 1401
    #: personas: fold-in noise of a closed-loop recommender ``[seed, salt]``
    PERSONA_FOLD_IN = 1403
    #: personas: a session's click draws ``[seed, salt, persona, session]``
    PERSONA_CLICK = 1409
    #: personas: an MF fold-in's uniform negatives (torch) ``[seed, salt, persona]``
    PERSONA_FOLD_IN_NEGATIVES = 1411
    #: AgentCF: the candidates' display order seed and the random baseline's
    #: ``[seed, salt, split-seed]``
    AGENTCF_DISPLAY = 7114


def check_distinct(salts: type[IntEnum] = Salt) -> None:
    """Fail if two names share a salt (an ``IntEnum`` would silently alias them).

    Parameters
    ----------
    salts : IntEnum subclass
        The salts to check (:class:`Salt`).

    Raises
    ------
    ValueError
        Naming the aliased salts.

    """
    aliases = [name for name, member in salts.__members__.items() if member.name != name]
    if aliases:
        raise ValueError(f"salts {aliases} reuse another stream's value; give each a new one")


def stream(seed: int, salt: Salt, *keys: int) -> np.random.Generator:
    """The numpy generator of stream ``salt`` keyed by ``keys`` (e.g. round, user)."""
    return np.random.default_rng([int(seed), int(salt), *(int(k) for k in keys)])


def torch_seed(seed: int, salt: Salt, *keys: int) -> int:
    """A 32-bit seed for ``torch.manual_seed`` / ``torch.Generator`` from the same key."""
    entropy = [int(seed), int(salt), *(int(k) for k in keys)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


check_distinct()
