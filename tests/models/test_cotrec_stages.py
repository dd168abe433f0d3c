"""CoT-Rec's stage keys and lookups (models/cotrec/stages.py) on small stand-ins."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from florec.models.cotrec.stages import (
    RETRIEVER,
    adapter_key,
    cached_finetune,
    cached_retriever,
)
from florec.models.stage_cache import StageCache, StageCacheWarning

KNOBS = {"epochs": 1, "lr": 2e-4, "lora_r": 8, "batch_size": 4, "seed": 0}


def test_adapter_key_follows_prompts_targets_knobs_model_and_rng_state():
    llm = SimpleNamespace(key="hf:m:abc:bfloat16", device="cpu")
    torch.manual_seed(0)
    base = adapter_key(llm, ["p1", "p2"], [0, 3], 10, KNOBS)
    torch.manual_seed(0)
    assert adapter_key(llm, ["p1", "p2"], [0, 3], 10, KNOBS) == base
    changed = [
        adapter_key(llm, ["p1", "p2 "], [0, 3], 10, KNOBS),
        adapter_key(llm, ["p1", "p2"], [0, 4], 10, KNOBS),
        adapter_key(llm, ["p1", "p2"], [0, 3], 9, KNOBS),
        adapter_key(llm, ["p1", "p2"], [0, 3], 10, KNOBS | {"lora_r": 4}),
        adapter_key(llm, ["p1", "p2"], [0, 3], 10, KNOBS | {"seed": 1}),
        adapter_key(SimpleNamespace(key="hf:m:abd:bfloat16", device="cpu"), ["p1", "p2"],
                    [0, 3], 10, KNOBS),
    ]
    torch.manual_seed(1)  # the adapter's random A init draws from the global generator
    changed.append(adapter_key(llm, ["p1", "p2"], [0, 3], 10, KNOBS))
    assert len({base, *changed}) == len(changed) + 1


def test_a_retriever_entry_that_does_not_fit_the_model_warns_and_retrains(tmp_path):
    stages = StageCache(tmp_path)
    stages.save(RETRIEVER, "k", {"weight": np.zeros((3, 2), np.float32),
                                 "__torch_rng_state__": torch.get_rng_state().numpy()},
                {"run": {}, "rows": []})
    model = torch.nn.Linear(2, 2, bias=False)
    calls = []

    def train():
        calls.append(1)
        return {"metrics": {"ndcg@10": 0.5}}, [{"round": 1}]

    with pytest.warns(StageCacheWarning, match="does not fit this model"):
        run, rows = cached_retriever(stages, "k", model, train)
    assert calls == [1] and stages.events[RETRIEVER] == "corrupt"
    assert run == {"metrics": {"ndcg@10": 0.5}} and rows == [{"round": 1}]
    with torch.no_grad():
        model.weight.fill_(0.25)
    # the retrained entry replaced the bad one: a new model loads the trained weights
    fresh = torch.nn.Linear(2, 2, bias=False)
    stages.save(RETRIEVER, "k", {"weight": model.weight.detach().numpy(),
                                 "__torch_rng_state__": torch.get_rng_state().numpy()},
                {"run": run, "rows": rows})
    assert cached_retriever(stages, "k", fresh, train) == (run, rows)
    assert calls == [1] and torch.equal(fresh.weight, model.weight)


def test_a_backend_without_weights_is_not_looked_up(tmp_path):
    class Scripted:
        key = "scripted:rule"

        def finetune_choices(self, *args, **kwargs):
            raise NotImplementedError("Scripted cannot be fine-tuned")

    stages = StageCache(tmp_path)
    with pytest.raises(NotImplementedError):
        cached_finetune(stages, Scripted(), ["p"], [0], 10, **KNOBS)
    assert stages.events == {}
