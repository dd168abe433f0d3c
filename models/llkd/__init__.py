"""LLKD: distil an LLM teacher's pseudo-labels into a small student on unlabeled item text.

The task (:mod:`~florec.models.llkd.task`: item category from the title), the teacher
(:mod:`~florec.models.llkd.teacher`: the LLM's choice distribution over the class names, or a
scripted teacher with confidence-linked noise), the student (:mod:`~florec.models.llkd.student`:
frozen MiniLM embeddings + a linear head), the selection rule with dynamic class-wise thresholds
and the weighted loss (:mod:`~florec.models.llkd.selection`) and the training loop
(:mod:`~florec.models.llkd.train`). No Flower here; see docs/methods/llkd.md.
"""
