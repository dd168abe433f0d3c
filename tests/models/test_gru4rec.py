"""GRU4Rec: conformance (shape, seed, shared state, no private params) and causality."""

import numpy as np
import pytest
import torch

from florec.models.registry import build_sequential_model

N_ITEMS, L = 30, 8


def make(seed=0):
    return build_sequential_model("gru4rec", N_ITEMS, seed=seed, max_len=L, dim=8, layers=1,
                                  dropout=0.0).eval()


def seqs(n=5):
    s = torch.randint(1, N_ITEMS + 1, (n, L), generator=torch.Generator().manual_seed(0))
    s[0, :3] = 0
    return s


def test_scores_every_item_for_each_sequence():
    scores = make().score(seqs())
    assert scores.shape == (5, N_ITEMS) and torch.isfinite(scores).all()


def test_same_seed_gives_the_same_model_and_another_seed_does_not():
    torch.testing.assert_close(make(1).score(seqs()), make(1).score(seqs()))
    assert not torch.allclose(make(1).score(seqs()), make(2).score(seqs()))


def test_every_parameter_is_shared_and_the_state_round_trips():
    a, b = make(0), make(5)
    assert a.private_state() == {} and set(a.shared_state()) == set(a.state_dict())
    assert not any(k.startswith("embedding.position") for k in a.shared_state())
    b.load_shared_state(a.shared_state())
    torch.testing.assert_close(a.score(seqs()), b.score(seqs()))
    with pytest.raises(KeyError):
        b.load_shared_state({"user_emb": np.zeros(1)})


def test_the_padding_row_is_zero():
    assert torch.count_nonzero(make().embedding.item.weight[0]) == 0


def test_a_position_never_sees_later_items():
    model, s = make(), seqs(4)
    changed = s.clone()
    changed[:, 6:] = (s[:, 6:] % N_ITEMS) + 1
    with torch.no_grad():
        torch.testing.assert_close(model.encode(s)[:, :6], model.encode(changed)[:, :6])


def test_training_lowers_the_next_item_loss():
    model = make().train()
    s, pos = seqs(16), torch.randint(1, N_ITEMS + 1, (16,))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    first = model.loss(s, pos, pos, kind="ce").item()
    for _ in range(30):
        opt.zero_grad()
        model.loss(s, pos, pos, kind="ce").backward()
        opt.step()
    assert float(model.loss(s, pos, pos, kind="ce")) < first
