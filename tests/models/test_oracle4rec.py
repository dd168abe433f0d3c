"""Oracle4Rec: inference with the past encoder only, the guiding loss, the shared embedding."""

import math

import numpy as np
import pytest
import torch

from florec.client.trainers.sequential import make_optimizers, oracle_step
from florec.models.oracle4rec import Oracle4Rec, decay_weights, guiding_loss, oracle_optimizers
from florec.models.registry import build_sequential_model
from florec.models.seq_layers import low_pass_mask
from florec.recdata.sequences import future_samples, past_samples, sample_positions

N_ITEMS, L, F = 25, 12, 3


def make(backbone="sasrec", seed=0, **kw):
    return build_sequential_model(backbone, N_ITEMS, seed=seed, oracle=True, max_len=L, dim=8,
                                  heads=2, layers=1, dropout=0.0, filter_layers=1, future=F,
                                  alpha=0.5, gamma=0.3, **kw)


def batch(n=6):
    g = np.random.default_rng(0)
    windows = g.integers(1, N_ITEMS + 1, size=(2, L))
    windows[1, :4] = 0
    rows, cols = sample_positions(windows)
    rows, cols = rows[:n], cols[:n]
    seq, pos = past_samples(windows, rows, cols)
    f_seq, f_tgt = future_samples(windows, rows, cols, F)
    t = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    neg = t(g.integers(1, N_ITEMS + 1, size=pos.shape))
    f_neg = t(g.integers(1, N_ITEMS + 1, size=f_tgt.shape))
    return (t(seq), t(pos), neg), (t(f_seq), t(f_tgt), f_neg)


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
def test_the_future_encoder_is_never_used_at_inference(backbone):
    model = make(backbone).eval()
    seq = batch()[0][0]
    before = model.score(seq)
    with torch.no_grad():
        for p in model.future.parameters():
            p.fill_(float("nan"))
    torch.testing.assert_close(model.score(seq), before)
    del model.future
    torch.testing.assert_close(model.score(seq), before)
    assert before.shape == (len(seq), N_ITEMS)


def test_guiding_loss_is_zero_when_past_and_future_coincide_and_positive_otherwise():
    z = torch.randn(4, 8)
    same = z[:, None, :].expand(4, F + 1, 8)
    mask = torch.ones(4, F + 1)
    assert guiding_loss(z, same, mask, 0.2).item() == pytest.approx(0.0, abs=1e-6)
    assert guiding_loss(z, same + torch.randn(4, F + 1, 8), mask, 0.2).item() > 0


def test_masked_positions_contribute_nothing():
    z, zf = torch.randn(3, 8), torch.randn(3, F + 1, 8)
    mask = torch.ones(3, F + 1)
    mask[1, 2:] = 0
    poisoned = zf.clone()
    poisoned[1, 2:] = 100.0
    torch.testing.assert_close(guiding_loss(z, zf, mask, 0.2), guiding_loss(z, poisoned, mask, 0.2))
    assert guiding_loss(z, zf, torch.zeros(3, F + 1), 0.2).item() == 0.0


def test_per_position_weights_decay_as_exp_minus_gamma_k():
    np.testing.assert_allclose(decay_weights(F, 0.3).numpy(),
                               [math.exp(-0.3 * k) for k in range(F + 1)], rtol=1e-6)
    z, zf = torch.randn(1, 8), torch.randn(1, F + 1, 8)
    for k in range(F + 1):
        only_k = torch.zeros(1, F + 1)
        only_k[0, k] = 1.0
        p, q = torch.softmax(z, -1), torch.softmax(zf[0, k], -1)
        kl = float((q * (q.log() - p.log())).sum())
        assert guiding_loss(z, zf, only_k, 0.3).item() == pytest.approx(
            math.exp(-0.3 * k) * kl, rel=1e-4)


def test_guiding_loss_is_summed_not_averaged_over_the_batch():
    z, zf, mask = torch.randn(2, 8), torch.randn(2, F + 1, 8), torch.ones(2, F + 1)
    total = guiding_loss(z, zf, mask, 0.1)
    parts = guiding_loss(z[:1], zf[:1], mask[:1], 0.1) + guiding_loss(z[1:], zf[1:], mask[1:], 0.1)
    torch.testing.assert_close(total, parts)


def test_one_shared_embedding_is_updated_by_both_optimisers():
    model = make()
    opt_f, opt_p = oracle_optimizers(model, 0.01)
    table = model.embedding.item.weight
    assert any(p is table for g in opt_f.param_groups for p in g["params"])
    assert any(p is table for g in opt_p.param_groups for p in g["params"])
    assert not any(p is q for p in model.past.parameters() for q in model.future.parameters())
    past, future = batch()
    start = table.detach().clone()
    opt_f.zero_grad()
    model.future_forward(*future)[0].backward()
    opt_f.step()
    after_future = table.detach().clone()
    assert not torch.equal(after_future, start)
    with torch.no_grad():
        _, zf, mask = model.future_forward(*future)
    opt_p.zero_grad()
    model.past_objective(*past, zf, mask)[0].backward()
    opt_p.step()
    assert not torch.equal(table.detach(), after_future)
    assert table.data_ptr() == model.embedding.item.weight.data_ptr()
    assert len(opt_f.state[table]) and len(opt_p.state[table])  # two Adam moment sets


def test_the_past_step_never_changes_the_future_encoder():
    model = make()
    opt_f, opt_p = make_optimizers(model, 0.01)
    past, future = batch()
    oracle_step(model, opt_f, opt_p, past, future, "bce")
    fut = {k: v.clone() for k, v in model.future.state_dict().items()}
    with torch.no_grad():
        _, zf, mask = model.future_forward(*future)
    opt_p.zero_grad()
    model.past_objective(*past, zf, mask)[0].backward()
    opt_p.step()
    for k, v in model.future.state_dict().items():
        torch.testing.assert_close(v, fut[k])


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
def test_two_phase_training_lowers_both_losses(backbone):
    model = make(backbone)
    opts = make_optimizers(model, 0.01)
    past, future = batch()
    first = [model.past_objective(*past, *model.future_forward(*future)[1:])[0].item(),
             model.future_forward(*future)[0].item()]
    for _ in range(25):
        oracle_step(model, *opts, past, future, "ce")
    last = [model.past_objective(*past, *model.future_forward(*future)[1:])[0].item(),
            model.future_forward(*future)[0].item()]
    assert last[0] < first[0] and last[1] < first[1]


def test_low_pass_mask_keeps_bins_strictly_below_the_quantile():
    mask = low_pass_mask(50, 0.75)
    assert mask.shape == (26,) and int(mask.sum()) == 19 and mask[:19].all()
    assert int(low_pass_mask(50, 1.0).sum()) == 25  # strict '<': the top bin always goes


def test_oracle_model_has_two_bodies_and_one_embedding_in_its_state():
    model = make()
    assert isinstance(model, Oracle4Rec)
    keys = set(model.shared_state())
    assert {k.split(".")[0] for k in keys} == {"embedding", "past", "future"}
    assert sum(k.startswith("embedding.item") for k in keys) == 1


@pytest.mark.parametrize("oracle", [False, True])
def test_weight_decay_reaches_every_sequential_optimiser(oracle):
    model = build_sequential_model("sasrec", N_ITEMS, seed=0, oracle=oracle, max_len=L, dim=8,
                                   heads=2, layers=1)
    opts = make_optimizers(model, 0.01, weight_decay=1e-3)
    assert len(opts) == (2 if oracle else 1)
    assert all(g["weight_decay"] == 1e-3 for o in opts for g in o.param_groups)
    assert all(g["weight_decay"] == 0.0 for o in make_optimizers(model, 0.01)
               for g in o.param_groups)


def test_future_states_are_future_forwards_states_without_the_loss():
    model = build_sequential_model("sasrec", N_ITEMS, seed=0, oracle=True, max_len=L, dim=8,
                                   heads=2, layers=1, dropout=0.3, future=F)
    model.train()  # dropout draws from the global torch RNG: same seed, same masks
    _, future = batch()
    torch.manual_seed(5)
    with torch.no_grad():
        _, z_full, mask_full = model.future_forward(*future)
    torch.manual_seed(5)
    with torch.no_grad():
        z, mask = model.future_states(future[0], future[1])
    assert torch.equal(z, z_full) and torch.equal(mask, mask_full)
    assert z.shape[1] == F + 1
