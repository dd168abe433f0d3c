"""LLMD4Rec (Wu et al., arXiv:2505.18120): mutual distillation of an LLM ranker and SASRec.

* :mod:`~florec.models.llmd4rec.losses`: tempered candidate distributions, the detached-teacher
  KL term and the sample-wise weights;
* :mod:`~florec.models.llmd4rec.candidates`: distillation samples, the CRM's top-K candidates
  and its distribution over them;
* :mod:`~florec.models.llmd4rec.teachers`: the teachers the CRM distils from (the LLM ranker,
  a SASRec ensemble, the scripted oracle) behind one interface;
* :mod:`~florec.models.llmd4rec.llm_step`: the LLM's LoRA step on CE + KL toward the CRM;
* :mod:`~florec.models.llmd4rec.crm_step`: the CRM's epoch on CE + weighted KL toward the
  teacher, and the re-ranking evaluation.

Runners: :mod:`florec.sim.central_llmd4rec` (central), :mod:`florec.client.llmd4rec_node` and
:mod:`florec.strategies.llmd4rec` (federated). No Flower import in this package; see
docs/methods/llmd4rec.md.
"""
