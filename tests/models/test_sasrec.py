"""SASRec: conformance (shape, seed, shared state, no private params) and the causal mask."""

import numpy as np
import pytest
import torch

from florec.models.registry import build_sequential_model
from florec.recdata.errors import ConfigError

N_ITEMS, L = 30, 8


def make(seed=0, **kw):
    return build_sequential_model("sasrec", N_ITEMS, seed=seed, max_len=L, dim=8, heads=2,
                                  layers=2, dropout=0.0, **kw).eval()


def seqs(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(1, N_ITEMS + 1, (n, L), generator=g)
    s[0, :3] = 0  # a left-padded row
    return s


def test_scores_every_item_for_each_sequence():
    scores = make().score(seqs())
    assert scores.shape == (5, N_ITEMS) and torch.isfinite(scores).all()


def test_same_seed_gives_the_same_model_and_another_seed_does_not():
    s = seqs()
    torch.testing.assert_close(make(1).score(s), make(1).score(s))
    assert not torch.allclose(make(1).score(s), make(2).score(s))


def test_building_leaves_the_global_torch_rng_alone():
    torch.manual_seed(7)
    a = torch.rand(3)
    torch.manual_seed(7)
    make(3)
    torch.testing.assert_close(torch.rand(3), a)


def test_every_parameter_is_shared_and_the_state_round_trips():
    a, b = make(0), make(5)
    assert a.private_state() == {} and set(a.shared_state()) == set(a.state_dict())
    b.load_shared_state(a.shared_state())
    torch.testing.assert_close(a.score(seqs()), b.score(seqs()))
    with pytest.raises(KeyError):
        b.load_shared_state({"user_emb": np.zeros(1)})


def test_a_position_never_sees_later_items():
    model, s = make(), seqs(4)
    changed = s.clone()
    changed[:, 5:] = torch.randint(1, N_ITEMS + 1, (4, L - 5))
    with torch.no_grad():
        h, h2 = model.encode(s), model.encode(changed)
    torch.testing.assert_close(h[:, :5], h2[:, :5])
    assert not torch.allclose(h[:, 5:], h2[:, 5:])


def test_what_sits_at_padded_positions_does_not_change_the_representation():
    """Padded keys are masked: a different padding embedding changes only the padded states."""
    model = make()
    a = torch.tensor([[0, 0, 0, 0, 3, 4, 5, 6]])
    with torch.no_grad():
        before = model.encode(a)
        model.embedding.item.weight[0] = torch.randn(8, generator=torch.Generator().manual_seed(1))
        after = model.encode(a)
    assert not torch.allclose(before[:, :4], after[:, :4])  # the change reaches the padded states
    torch.testing.assert_close(after[:, 4:], before[:, 4:])  # and never the real positions


@pytest.mark.parametrize("kind", ["ce", "bpr", "bce"])
def test_training_lowers_the_next_item_loss(kind):
    model = make().train()
    s, pos = seqs(16), torch.randint(1, N_ITEMS + 1, (16,))
    neg = torch.randint(1, N_ITEMS + 1, (16,))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    first = model.loss(s, pos, neg, kind=kind).item()
    for _ in range(30):
        opt.zero_grad()
        model.loss(s, pos, neg, kind=kind).backward()
        opt.step()
    assert float(model.loss(s, pos, neg, kind=kind)) < first


def test_dim_not_divisible_by_heads_is_a_config_error():
    with pytest.raises(ConfigError, match="heads"):
        build_sequential_model("sasrec", N_ITEMS, dim=9, heads=2)


def test_unknown_sequential_model_is_a_config_error():
    with pytest.raises(ConfigError, match="sasrec"):
        build_sequential_model("bert4rec", N_ITEMS)


def test_bce_loss_is_the_oracle4rec_codes_binary_cross_entropy_with_one_negative():
    import torch.nn.functional as F

    from florec.models.seq_layers import rec_loss

    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    pos, neg = torch.tensor([1, 3]), torch.tensor([2, 2])
    s_pos = torch.tensor([0.5, 2.0])
    s_neg = torch.tensor([-1.0, 0.0])
    expected = (-F.logsigmoid(s_pos) - torch.log(1 - torch.sigmoid(s_neg))).mean()
    assert float(rec_loss(z, table, pos, neg, "bce")) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_backbone_filter_layers_add_filters_to_the_plain_backbone_only(name):
    kw = dict(seed=1, max_len=L, dim=8, layers=1, dropout=0.0)
    plain = build_sequential_model(name, N_ITEMS, **kw)
    filtered = build_sequential_model(name, N_ITEMS, backbone_filter_layers=2, **kw)
    assert len(plain.body.filters) == 0 and len(filtered.body.filters) == 2
    assert set(plain.state_dict()) < set(filtered.state_dict())  # + the filters' LayerNorms
    s = seqs()
    assert not torch.allclose(plain.eval().score(s), filtered.eval().score(s), atol=1e-4)
    oracle = build_sequential_model(name, N_ITEMS, oracle=True, filter_layers=1,
                                    backbone_filter_layers=0, **kw)
    assert len(oracle.past.filters) == 1


def test_backbone_filter_layers_with_oracle_is_a_one_line_config_error():
    from florec.recdata.runconfig import parse_run_config

    with pytest.raises(ConfigError, match="backbone-filter-layers.*filter-layers"):
        parse_run_config({"oracle": True, "backbone-filter-layers": 1})
