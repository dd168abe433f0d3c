"""SASRec's packed, last-position-only representation equals the full encoder's last state."""

import numpy as np
import pytest
import torch

from florec.models.sasrec import SASRec
from florec.models.seq_layers import TransformerBlock, causal_padding_mask
from florec.recdata.sequences import past_samples, sample_positions

N_ITEMS, L = 30, 12


def prefix_batch(seed=0, users=9):
    """Past samples of left-padded windows of several lengths (one user with no item)."""
    rng = np.random.default_rng(seed)
    windows = np.zeros((users, L), dtype=np.int64)
    for u, n in enumerate(rng.integers(0, L + 1, users)):
        windows[u, L - n:] = rng.integers(1, N_ITEMS + 1, n)
    rows, cols = sample_positions(windows)
    seq, pos = past_samples(windows, rows, cols)
    seq = np.concatenate([seq, np.zeros((1, L), dtype=np.int64)])  # an all-padding row
    pos = np.concatenate([pos, [1]])
    return torch.as_tensor(seq), torch.as_tensor(pos)


def full_last_state(model, seq):
    return model.encode(seq)[:, -1]


@pytest.mark.parametrize("filter_layers", [0, 1])
def test_represent_equals_the_full_encoders_last_state(filter_layers):
    torch.manual_seed(0)
    model = SASRec(N_ITEMS, max_len=L, dim=8, heads=2, layers=2, dropout=0.3,
                   filter_layers=filter_layers).eval()
    seq, _ = prefix_batch()
    with torch.no_grad():
        np.testing.assert_allclose(model.represent(seq).numpy(),
                                   full_last_state(model, seq).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("layers", "groups"), [(3, 8), (1, 8), (2, 1), (2, 64)])
def test_fast_loss_and_gradients_equal_the_full_pass(layers, groups, monkeypatch):
    """The training objective (full softmax) and every parameter's gradient are unchanged.

    For any number of length groups (one, the default, more than rows) and of blocks (one
    block: only the last-position block runs on the packed tokens).
    """
    monkeypatch.setattr("florec.models.sasrec.REPRESENT_CHUNKS", groups)
    torch.manual_seed(1)
    model = SASRec(N_ITEMS, max_len=L, dim=8, heads=2, layers=layers, dropout=0.0)
    seq, pos = prefix_batch(1)
    neg = torch.zeros_like(pos)
    fast = model.loss(seq, pos, neg, "ce")
    fast_grads = torch.autograd.grad(fast, list(model.parameters()))
    from florec.models.seq_layers import rec_loss

    full = rec_loss(full_last_state(model, seq), model.embedding.item.weight, pos, neg, "ce")
    full_grads = torch.autograd.grad(full, list(model.parameters()))
    assert float(fast.detach()) == pytest.approx(float(full.detach()), abs=1e-6)
    for (name, _), a, b in zip(model.named_parameters(), fast_grads, full_grads, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-5, err_msg=name)


def test_transformer_block_last_position_equals_its_full_output():
    torch.manual_seed(2)
    block = TransformerBlock(8, 2, 0.0)
    seq, _ = prefix_batch(2)
    x = torch.randn(len(seq), L, 8)
    mask = causal_padding_mask(seq)
    np.testing.assert_allclose(block.forward_last(x, mask).detach().numpy(),
                               block(x, mask)[:, -1].detach().numpy(), rtol=0, atol=1e-6)


def test_scores_keep_the_row_order_of_the_batch():
    torch.manual_seed(3)
    model = SASRec(N_ITEMS, max_len=L, dim=8, heads=2, layers=1, dropout=0.0).eval()
    seq, _ = prefix_batch(3)
    perm = torch.randperm(len(seq))
    with torch.no_grad():
        np.testing.assert_allclose(model.score(seq)[perm].numpy(), model.score(seq[perm]).numpy(),
                                   rtol=0, atol=1e-5)

