"""Per-prompt sampling for in-process backends: each batch row draws from its own generator.

``generate`` of :class:`florec.models.llm.hf.HFLLM` runs greedy decoding under
:class:`RowSampler` when ``temperature > 0``, so a sampled answer is a function of (seed, prompt)
only, whatever else shares its batch (the call cache's replay of a prompt is what the prompt
gets alone), up to the rounding of its logits, which in bf16 differs between batch layouts and
can flip a near-tie (docs/methods/llm.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from florec.recdata.seeds import Salt, torch_seed


def prompt_seed(seed: int, text: str) -> int:
    """The sampling seed of one prompt: stream ``LLM_SAMPLING`` keyed by (seed, sha256(text))."""
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "little")
    return torch_seed(seed, Salt.LLM_SAMPLING, digest)


class RowSampler(LogitsProcessor):
    r"""Temperature sampling with one generator per batch row (run under greedy ``generate``).

    Row ``b`` draws its token at every step by the Gumbel-max trick from its own generator
    ``g_b`` (seeded by :func:`prompt_seed`),

    .. math:: x_b = \arg\max_j \, (z_{bj} / \tau - \log E_{bj}), \qquad
              E_{bj} \sim \mathrm{Exp}(1) \text{ from } g_b,

    which is a draw from :math:`\mathrm{softmax}(z_b / \tau)`; the returned scores are 0 at
    the drawn token and :math:`-\infty` elsewhere, so greedy decoding emits it. A row consumes
    the same draws whatever its batch mates, its padding or the batch's length, so its answer
    is a function of (seed, prompt) alone (up to float rounding of its logits).

    Parameters
    ----------
    seeds : sequence of int
        One seed per batch row.
    temperature : float
        :math:`\tau > 0`.

    """

    def __init__(self, seeds: Sequence[int], temperature: float) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: RowSampler samples; use > 0")
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor
                 ) -> torch.FloatTensor:
        """Scores that are 0 at each row's drawn token, ``-inf`` elsewhere."""
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{scores.shape[0]} rows but {len(self.generators)} generators")
        z = scores.detach().float().cpu() / self.temperature
        picks = []
        for row, gen in zip(z, self.generators, strict=True):
            noise = torch.empty_like(row).exponential_(generator=gen)
            picks.append(int(torch.argmax(row - noise.log())))
        out = torch.full_like(scores, float("-inf"))
        rows = torch.arange(len(picks), device=scores.device)
        out[rows, torch.as_tensor(picks, device=scores.device)] = 0.0
        return out
