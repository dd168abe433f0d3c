"""CoT-Rec (Liu et al., arXiv:2502.13845) on FloRec's LLM layer; see docs/methods/cotrec.md.

* :mod:`~florec.models.cotrec.prompts`: versioned prompts (item, user, ranker);
* :mod:`~florec.models.cotrec.perception`: perception calls, PCA projection, JSONL files;
* :mod:`~florec.models.cotrec.retriever`: SASRec with text rows and a private user token;
* :mod:`~florec.models.cotrec.ranker`: letter re-ranking and MAPB;
* :mod:`~florec.models.cotrec.rank_eval`: the ranker stage (metrics, LoRA samples);
* :mod:`~florec.models.cotrec.pipeline`: steps shared by the central and federated runners.
* :mod:`~florec.models.cotrec.stages`: the trained retriever and adapter in the stage cache.

Runners: :mod:`florec.sim.central_cotrec` (central), :mod:`florec.client.cotrec_node` and
:mod:`florec.strategies.fedavg_lora` (federated). No Flower import in this package.
"""
