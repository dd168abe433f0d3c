"""A sequential model's seeded init leaves the global torch RNGs as it found them."""

from __future__ import annotations

import torch

from florec.models.registry import build_sequential_model


def test_building_a_sequential_model_is_seeded_and_leaves_the_global_rngs(monkeypatch):
    cuda: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", cuda.append)
    monkeypatch.setattr(torch.cuda, "manual_seed", cuda.append)
    before = torch.get_rng_state()
    first = build_sequential_model("sasrec", 50, seed=3, dim=16, heads=2, layers=1, max_len=8)
    second = build_sequential_model("sasrec", 50, seed=3, dim=16, heads=2, layers=1, max_len=8)
    assert torch.equal(torch.get_rng_state(), before)
    assert cuda == [], "a seeded init reseeded CUDA for the rest of the process"
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
