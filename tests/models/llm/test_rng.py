"""Seeded inits (tiny model, LoRA adapters) leave the process's global torch RNGs untouched."""

from __future__ import annotations

import numpy as np
import torch

from florec.models.llm import build_llm
from florec.models.rng import cpu_seeded


def _cuda_seeds(monkeypatch) -> list[int]:
    """Record every CUDA seeding (``torch.manual_seed`` seeds CUDA too, lazily on a CPU box)."""
    seeds: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeds.append)
    monkeypatch.setattr(torch.cuda, "manual_seed", seeds.append)
    return seeds


def test_cpu_seeded_draws_as_manual_seed_and_restores_the_cpu_generator(monkeypatch):
    cuda = _cuda_seeds(monkeypatch)
    before = torch.get_rng_state()
    with cpu_seeded(5):
        inside = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(5)
    assert torch.equal(inside, torch.rand(4))  # the same weights as the old manual_seed init
    torch.set_rng_state(before)
    assert cuda == [5]  # only the explicit torch.manual_seed above reached CUDA


def test_creating_an_adapter_leaves_the_global_rngs_unchanged(tiny_cfg, monkeypatch):
    from florec.models.llmd4rec.llm_step import ensure_adapter

    cuda = _cuda_seeds(monkeypatch)
    torch.manual_seed(123)
    cuda.clear()
    before = torch.get_rng_state()
    first = build_llm(tiny_cfg).new_adapter(2, seed=7)
    other = build_llm(tiny_cfg)
    ensure_adapter(other, 2, 4, 7)  # LLMD4Rec's init: PEFT's own wrapper, the same draws
    assert torch.equal(torch.get_rng_state(), before)
    assert cuda == [], "a seeded init reseeded CUDA for the rest of the process"
    second = other.adapter_state()
    assert first.keys() == second.keys()
    for key, value in first.items():  # still seeded: the same A from the same seed
        np.testing.assert_array_equal(second[key], value)
    assert any(v.any() for k, v in first.items() if "lora_A" in k)


def test_seed_torch_draws_as_manual_seed_and_seeds_cuda_only_where_it_exists(monkeypatch):
    from florec.models.rng import seed_torch

    before = torch.get_rng_state()
    cuda = _cuda_seeds(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seed_torch(7)
    ours = torch.rand(4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seed_torch(7)
    assert cuda == [7]  # CUDA seeded as torch.manual_seed would, only when present
    torch.manual_seed(7)
    assert torch.equal(ours, torch.rand(4))
    torch.set_rng_state(before)
