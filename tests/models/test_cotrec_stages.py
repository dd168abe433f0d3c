"""CoT-Rec's stage keys and lookups (models/cotrec/stages.py) on small stand-ins."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from florec.models.cotrec.stages import (
    ADAPTER_CODE,
    RETRIEVER,
    RETRIEVER_CODE,
    RETRIEVER_KNOBS,
    adapter_key,
    cached_finetune,
    cached_retriever,
    retriever_key,
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


def _retriever_key() -> str:
    cfg = SimpleNamespace(**{k: 1 for k in RETRIEVER_KNOBS})
    return retriever_key(cfg, "split-abc", {"windows": np.ones((2, 3))}, None, None, 2, 64,
                         "cpu")


def _edited(monkeypatch, module: str) -> None:
    """``inspect.getsource`` sees ``module`` with one more line (an edit to its code)."""
    import inspect

    real = inspect.getsource

    def getsource(obj):
        text = real(obj)
        return text + "# edited\n" if getattr(obj, "__name__", "") == module else text

    monkeypatch.setattr(inspect, "getsource", getsource)


@pytest.mark.parametrize("module", ["florec.models.sasrec", "florec.models.cotrec.retriever",
                                    "florec.sim.central_loop"])
def test_an_edit_to_the_retriever_training_code_misses_its_entry(monkeypatch, module):
    assert module in RETRIEVER_CODE
    llm = SimpleNamespace(key="hf:m:abc:bfloat16", device="cpu")
    base, adapter = _retriever_key(), adapter_key(llm, ["p"], [0], 10, KNOBS)
    _edited(monkeypatch, module)
    assert _retriever_key() != base
    assert adapter_key(llm, ["p"], [0], 10, KNOBS) == adapter  # not the adapter's code


def test_an_edit_to_the_lora_code_or_another_transformers_misses_the_adapter(monkeypatch):
    import transformers

    assert "florec.models.llm.lora" in ADAPTER_CODE
    llm = SimpleNamespace(key="hf:m:abc:bfloat16", device="cpu")
    torch.manual_seed(0)
    base, retriever = adapter_key(llm, ["p"], [0], 10, KNOBS), _retriever_key()
    with monkeypatch.context() as mp:
        mp.setattr(transformers, "__version__", "0.0.1")
        assert adapter_key(llm, ["p"], [0], 10, KNOBS) != base
    _edited(monkeypatch, "florec.models.llm.lora")
    assert adapter_key(llm, ["p"], [0], 10, KNOBS) != base
    assert _retriever_key() == retriever


def test_a_module_without_source_enters_by_its_bytecode(monkeypatch):
    import inspect

    from florec.models.cotrec.stages import code_digest

    with_source = code_digest(RETRIEVER_CODE)

    def no_source(obj):
        raise OSError("could not get source code")

    monkeypatch.setattr(inspect, "getsource", no_source)
    assert code_digest(RETRIEVER_CODE) == code_digest(RETRIEVER_CODE) != with_source
    assert code_digest(RETRIEVER_CODE[:1]) != code_digest(RETRIEVER_CODE[1:2])


class FakeCuda:
    """An initialised CUDA with one device whose generator state is ``state``."""

    def __init__(self, monkeypatch, state: list[int]) -> None:
        self.state = torch.tensor(state, dtype=torch.uint8)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [self.state.clone()])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.set_all)

    def set_all(self, states) -> None:
        (self.state,) = (s.clone() for s in states)


def test_the_cuda_rng_state_is_keyed_stored_and_restored(monkeypatch, tmp_path):
    llm = SimpleNamespace(key="hf:m:abc:bfloat16", device="cuda")
    torch.manual_seed(0)
    cpu_only = adapter_key(llm, ["p"], [0], 10, KNOBS)
    cuda = FakeCuda(monkeypatch, [1, 2, 3])
    torch.manual_seed(0)
    with_cuda = adapter_key(llm, ["p"], [0], 10, KNOBS)
    cuda.state = torch.tensor([1, 2, 4], dtype=torch.uint8)
    torch.manual_seed(0)
    assert len({cpu_only, with_cuda, adapter_key(llm, ["p"], [0], 10, KNOBS)}) == 3

    stages = StageCache(tmp_path)
    model = torch.nn.Linear(2, 2, bias=False)
    cuda.state = torch.tensor([7, 8, 9], dtype=torch.uint8)  # the state after training
    cached_retriever(stages, "k", model, lambda: ({}, []))
    cuda.state = torch.tensor([0, 0, 0], dtype=torch.uint8)
    cached_retriever(stages, "k", torch.nn.Linear(2, 2, bias=False), lambda: ({}, []))
    assert stages.events[RETRIEVER] == "hit"
    assert cuda.state.tolist() == [7, 8, 9]  # restored with the weights
