"""AgentCF and AgentCF++: LLM user and item agents with text memories (docs/methods/agentcf.md).

``data`` (protocol: sampled cross-domain users, time split, 1 + 9 candidates), ``memory``
(user / item memories, word limits), ``prompts``, ``agents`` (forward choice and collaborative
reflection), ``groups`` (AgentCF++ interest groups), ``rank`` (inference and metrics),
``baselines`` (the same candidates ranked by random, Pop, BPR-MF, SASRec, LLMRank),
``scripted`` (the positive control) and ``pipeline`` (the phases of one run). No Flower here.
"""
