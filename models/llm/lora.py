"""LoRA on the choice head: PEFT adapters trained with CE on the target letter, moved as arrays.

The adapter state is a dict of float32 arrays keyed by PEFT's names, so a federation can average
it like any other model (federated LoRA: each node trains on its users' prompts, the server
takes the FedAvg mean of the ``lora_A`` / ``lora_B`` matrices).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from florec.models.llm.base import check_choices

if TYPE_CHECKING:
    from florec.models.llm.hf import HFLLM

TARGET_MODULES = ("q_proj", "v_proj")


def has_adapter(model) -> bool:
    """Whether ``model`` is already wrapped by PEFT."""
    return hasattr(model, "peft_config")


def wrap(model, lora_r: int):
    """Wrap ``model`` with a fresh LoRA adapter of rank ``lora_r`` (alpha = 2r, no dropout)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0,
                        target_modules=list(TARGET_MODULES), bias="none")
    return get_peft_model(model, config)


def get_state(model) -> dict[str, np.ndarray]:
    """The adapter's weights as float32 arrays (empty when there is no adapter)."""
    if not has_adapter(model):
        return {}
    from peft import get_peft_model_state_dict

    return {k: v.detach().float().cpu().numpy().copy()
            for k, v in get_peft_model_state_dict(model).items()}


def set_state(model, state: dict[str, np.ndarray]):
    """Load adapter weights, wrapping ``model`` first (rank read off ``lora_A``); returns it.

    Raises
    ------
    ValueError
        ``state`` is empty, or its names or shapes do not match the adapter.

    """
    from peft import set_peft_model_state_dict

    if not state:
        raise ValueError("the adapter state is empty; pass the dict adapter_state() returned")
    if not has_adapter(model):
        ranks = {v.shape[0] for k, v in state.items() if "lora_A" in k}
        if len(ranks) != 1:
            raise ValueError("the adapter state has no consistent lora_A rank; pass the dict "
                             "adapter_state() returned")
        model = wrap(model, ranks.pop())
    own = get_state(model)
    if set(own) != set(state) or any(own[k].shape != np.shape(state[k]) for k in own):
        raise ValueError("the adapter state does not match this model's adapter (names or "
                         "shapes differ); train both with the same model and lora_r")
    device = next(model.parameters()).device
    tensors = {k: torch.as_tensor(np.asarray(v, np.float32), device=device)
               for k, v in state.items()}
    set_peft_model_state_dict(model, tensors)
    return model


def train_choices(llm: HFLLM, prompts: list[str], targets: list[int], n_choices: int, *,
                  epochs: int, lr: float, lora_r: int, batch_size: int, seed: int) -> dict:
    """Train the LoRA adapter of ``llm.model`` (created on the first call) in place.

    Minimises the mean over prompts of ``-log p(target letter)``, with ``p`` the softmax over
    the first ``n_choices`` letters' next-token logits. AdamW, shuffled mini-batches (seeded).

    Returns
    -------
    dict
        ``n``, ``epochs``, ``steps``, ``loss_first_epoch``, ``loss_last_epoch``,
        ``accuracy_last_epoch``, ``seconds``, ``lora_r``.

    """
    letters = check_choices(n_choices, llm.letters)
    if len(prompts) != len(targets) or not prompts:
        raise ValueError(f"{len(prompts)} prompts and {len(targets)} targets; give one target "
                         "per prompt, at least one")
    if min(targets) < 0 or max(targets) >= n_choices:
        raise ValueError(f"targets must be in 0..{n_choices - 1} (letters {letters})")
    if not has_adapter(llm.model):
        llm.model = wrap(llm.model, lora_r)
    letter_ids = llm.letter_ids(None)[:n_choices]
    texts = [llm.chat_text(p) for p in prompts]
    y = torch.as_tensor(targets, dtype=torch.long, device=llm.device)
    params = [p for p in llm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    began, steps, epoch_loss, epoch_acc = time.perf_counter(), 0, [], 0.0
    bar = tqdm(total=epochs * math.ceil(len(texts) / batch_size), desc="lora", unit="step",
               disable=not llm.progress, dynamic_ncols=True)
    llm.model.train()
    try:
        for _ in range(epochs):
            order = torch.randperm(len(texts), generator=gen).tolist()
            total, correct = 0.0, 0
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                logits = llm.letter_logits([texts[i] for i in idx], letter_ids, count=False)
                loss = torch.nn.functional.cross_entropy(logits, y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                total += loss.item() * len(idx)
                correct += int((logits.argmax(-1) == y[idx]).sum())
            epoch_loss.append(total / len(texts))
            epoch_acc = correct / len(texts)
    finally:
        bar.close()
        llm.model.eval()
    if not all(math.isfinite(v) for v in epoch_loss):
        raise FloatingPointError("LoRA training diverged (non-finite loss); lower lr")
    return {"n": len(texts), "epochs": epochs, "steps": steps, "lora_r": lora_r,
            "loss_first_epoch": epoch_loss[0], "loss_last_epoch": epoch_loss[-1],
            "accuracy_last_epoch": epoch_acc, "seconds": time.perf_counter() - began}
