"""Token-level properties shared by the adapters: permutation equivariance
over tokens, and padded tokens never changing the outputs of real ones."""

import pytest
import torch
from random_init import randomize

from speechbrain_moe.adapters import Convpass, DenseMoA, SoftMoA, SparseMoE

MIXTURES = {
    "soft_moa": lambda: SoftMoA(8, num_experts=3, bottleneck=2, slots_per_expert=2),
    "soft_moa_raw": lambda: SoftMoA(8, num_experts=3, bottleneck=2, normalize=False),
    "dense_moa": lambda: DenseMoA(8, num_experts=3, bottleneck=2),
    "sparse_moe": lambda: SparseMoE(
        8, num_experts=4, top_k=2, hidden_size=4, num_shared_experts=1
    ),
}


@pytest.mark.parametrize("name", sorted(MIXTURES))
def test_permutation_equivariant_over_tokens(name):
    module = randomize(MIXTURES[name]())
    x = torch.randn(2, 9, 8)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    y = module(x, mask)
    y_perm = module(x[:, perm], mask[:, perm])
    torch.testing.assert_close(y_perm, y[:, perm], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(y_perm, y, atol=1e-3), "the test needs a real permutation"


@pytest.mark.parametrize("name", sorted(MIXTURES))
def test_padding_does_not_change_real_tokens(name):
    module = randomize(MIXTURES[name]())
    torch.manual_seed(1)
    x = torch.randn(2, 9, 8)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    y = module(x, mask)
    garbage = x.clone()
    garbage[1, 5:] = 50.0 * torch.randn(4, 8)
    y_garbage = module(garbage, mask)
    torch.testing.assert_close(y_garbage[mask], y[mask], atol=1e-5, rtol=1e-4)
    # The padded sequence gives what its unpadded version gives alone.
    alone = module(x[1:, :5])
    torch.testing.assert_close(y[1, :5], alone[0], atol=1e-5, rtol=1e-4)


def grid_tokens(x_special, grid):
    """``[B, prefix + H * W, d]`` from special tokens and a ``[B, H, W, d]`` grid."""
    return torch.cat([x_special, grid.flatten(1, 2)], dim=1)


def test_convpass_padding_at_the_end_of_time():
    """AST layout: 2 special tokens, then a frequency-major 3 x 6 grid whose
    last 2 time columns are padding."""
    conv = randomize(Convpass(8, bottleneck=4, num_prefix_tokens=2, grid_height=3))
    torch.manual_seed(1)
    special = torch.randn(1, 2, 8)
    grid = torch.randn(1, 3, 6, 8)
    real = torch.ones(1, 3, 6, dtype=torch.bool)
    real[:, :, 4:] = False
    mask = torch.cat([torch.ones(1, 2, dtype=torch.bool), real.flatten(1)], dim=1)
    y = conv(grid_tokens(special, grid), mask)

    noisy = grid.clone()
    noisy[:, :, 4:] = 50.0 * torch.randn(1, 3, 2, 8)
    y_noisy = conv(grid_tokens(special, noisy), mask)
    torch.testing.assert_close(y_noisy[mask], y[mask], atol=1e-5, rtol=1e-4)

    # Real tokens get what the 3 x 4 grid alone gives them.
    alone = conv(grid_tokens(special, grid[:, :, :4]))
    torch.testing.assert_close(y[mask], alone[0], atol=1e-5, rtol=1e-4)


def test_convpass_mixes_neighbours_but_special_tokens_bypass():
    conv = randomize(Convpass(8, bottleneck=4, num_prefix_tokens=2, grid_height=3))
    torch.manual_seed(1)
    x = torch.randn(1, 2 + 3 * 5, 8)
    y = conv(x)
    # Changing grid cell (row 1, column 2) changes its 3 x 3 neighbourhood only.
    x2 = x.clone()
    x2[0, 2 + 1 * 5 + 2] += 1.0
    changed = (conv(x2) - y).abs().sum(-1)[0] > 1e-6
    grid_changed = changed[2:].reshape(3, 5)
    expected = torch.zeros(3, 5, dtype=torch.bool)
    expected[0:3, 1:4] = True
    assert torch.equal(grid_changed, expected)
    assert not changed[:2].any()
    # Special tokens see no grid token: they are a plain bottleneck adapter.
    down = torch.nn.functional.gelu(conv.down(x[:, :2]))
    torch.testing.assert_close(y[:, :2], conv.up(down), atol=1e-5, rtol=1e-5)
