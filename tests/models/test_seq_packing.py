"""Packed prefixes: layout, attention against the dense block, and the CPU dropout."""

import numpy as np
import pytest
import torch

from florec.models.seq_layers import Dropout, TransformerBlock, causal_padding_mask
from florec.models.seq_packing import PackedPrefixes

L = 10


def ragged_batch(seed=0, rows=13):
    """Left-padded rows of 0..L real tokens, one with a padding token inside its history."""
    rng = np.random.default_rng(seed)
    seq = np.zeros((rows, L), dtype=np.int64)
    for r, n in enumerate(rng.integers(0, L + 1, rows)):
        seq[r, L - n:] = rng.integers(1, 20, n)
    seq[0] = [0, 0, 3, 4, 0, 5, 6, 7, 8, 9]  # interior padding is kept (and masked as a key)
    return torch.as_tensor(seq)


def kept_columns(seq):
    """Per row: columns from the first real token on (the last column for an empty row)."""
    out = []
    for row in seq.numpy():
        nz = np.flatnonzero(row)
        out.append(np.arange(nz[0] if len(nz) else L - 1, L))
    return out


@pytest.mark.parametrize("groups", [1, 3, 8, 40])
def test_packing_keeps_each_rows_tokens_at_their_absolute_positions(groups):
    seq = ragged_batch()
    packed = PackedPrefixes.from_batch(seq, groups)
    order = torch.argsort(packed.inverse)  # sorted position -> input row
    cols = kept_columns(seq)
    want_tokens = np.concatenate([seq[r, cols[r]].numpy() for r in order.tolist()])
    want_pos = np.concatenate([cols[r] for r in order.tolist()])
    np.testing.assert_array_equal(packed.tokens.numpy(), want_tokens)
    np.testing.assert_array_equal(packed.positions.numpy(), want_pos)
    lengths = np.array([len(cols[r]) for r in order.tolist()])
    assert np.all(np.diff(lengths) <= 0)  # longest first
    np.testing.assert_array_equal(packed.last.numpy(), np.cumsum(lengths) - 1)
    # the grid cell of each packed token reads that token back
    np.testing.assert_array_equal(packed.grid[packed.back].numpy(), np.arange(len(want_tokens)))
    assert sum(rows for _, rows, _ in packed.groups) == len(seq)
    assert len(packed.groups) == min(groups, len(seq))


def test_packed_block_equals_the_dense_block_at_every_kept_position():
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, 0.0)
    seq = ragged_batch(1)
    x = torch.randn(len(seq), L, 8)
    dense = block(x, causal_padding_mask(seq))
    packed = PackedPrefixes.from_batch(seq, 4)
    rows = torch.argsort(packed.inverse).repeat_interleave(
        torch.diff(torch.cat([torch.tensor([-1]), packed.last])))
    got = block.forward_packed(x[rows, packed.positions], packed)
    np.testing.assert_allclose(got.detach().numpy(),
                               dense[rows, packed.positions].detach().numpy(), atol=1e-5)
    last = block.forward_last_packed(x[rows, packed.positions], packed)[packed.inverse]
    np.testing.assert_allclose(last.detach().numpy(), dense[:, -1].detach().numpy(), atol=1e-5)


def test_dropout_zeroes_a_p_share_and_scales_the_rest():
    torch.manual_seed(0)
    drop = Dropout(0.3).train()
    x = torch.ones(400, 500, requires_grad=True)
    y = drop(x)
    zero = float((y == 0).float().mean())
    assert zero == pytest.approx(0.3, abs=4 * np.sqrt(0.21 / y.numel()))
    np.testing.assert_allclose(y[y != 0].detach().numpy(), 1 / 0.7, rtol=1e-6)
    y.sum().backward()  # the gradient is the same mask and scale
    np.testing.assert_array_equal(x.grad.numpy(), y.detach().numpy())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dropout_keeps_a_1_minus_p_share_of_a_half_precision_input(dtype):
    torch.manual_seed(0)
    x = torch.ones(2000, 1000, dtype=dtype)
    y = Dropout(0.2).train()(x)
    assert y.dtype == dtype
    kept = float((y != 0).float().mean())  # bfloat16 uniforms >= 0.2 would keep ~79.7%
    assert kept == pytest.approx(0.8, abs=4 * np.sqrt(0.16 / y.numel()))
    np.testing.assert_allclose(y[y != 0].float().numpy(), 1 / 0.8, rtol=1e-2)


def test_dropout_is_seeded_by_torch_and_off_in_eval():
    drop = Dropout(0.5).train()
    x = torch.randn(64, 8)
    torch.manual_seed(7)
    a = drop(x)
    torch.manual_seed(7)
    np.testing.assert_array_equal(a.numpy(), drop(x).numpy())
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.count_nonzero(Dropout(1.0).train()(x)) == 0
