"""FSQ and LFQ (hf_vae/scalar_quantization.py): their grids and indices, checked directly, and their numerics
against vector-quantize-pytorch, the reference implementation, where it is installed."""

import itertools
import math

import pytest
import torch

from hf_vae.scalar_quantization import FiniteScalarQuantizer, LookupFreeQuantizer


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [7, 6], [3]])
def test_fsq_gives_each_channel_exactly_its_levels(levels):
    fsq = FiniteScalarQuantizer(levels)
    sweep = torch.linspace(-20, 20, 4001)
    z = sweep[:, None].expand(-1, len(levels)).T[None]  # (1, d, N): every channel sweeps the real line
    codes, indices = fsq(z)
    for channel, level in enumerate(levels):
        assert codes[0, channel].unique().numel() == level
    assert codes.abs().max() <= 1
    assert fsq.codebook_size == math.prod(levels)
    assert 0 <= indices.min() and indices.max() < fsq.codebook_size


def test_fsq_indices_and_codes_are_inverse():
    fsq = FiniteScalarQuantizer([8, 5, 5, 5])
    every = torch.arange(fsq.codebook_size)
    codes = fsq.indices_to_codes(every[None])  # (1, d, N)
    assert codes.unique(dim=2).shape[2] == fsq.codebook_size
    assert torch.equal(fsq.codes_to_indices(codes.movedim(1, -1)), every[None])


def test_fsq_gradient_is_straight_through_the_rounding():
    fsq = FiniteScalarQuantizer([5, 5])
    z = torch.randn(2, 2, 3, 3, requires_grad=True)
    codes, _ = fsq(z)
    codes.sum().backward()
    assert torch.all(z.grad > 0)  # tanh's slope, not round's zero gradient


def test_lfq_indices_are_the_sign_bits_most_significant_first():
    lfq = LookupFreeQuantizer(3).eval()
    z = torch.tensor([[1.0, -2.0, 0.5], [-1.0, -1.0, -1.0], [0.1, 0.2, 0.3]])[:, :, None]  # (3, d, 1)
    codes, indices, penalty = lfq(z)
    assert indices[:, 0].tolist() == [0b101, 0b000, 0b111]
    assert torch.equal(codes, torch.where(z > 0, 1.0, -1.0))
    assert torch.equal(lfq.indices_to_codes(indices), codes)
    assert penalty == 0


def test_lfq_entropy_penalty_by_enumeration():
    """Eq. 5 computed directly: per-example distributions over the 2^d codes from exp(2 z·c/τ)."""
    torch.manual_seed(0)
    lfq = LookupFreeQuantizer(2, diversity_weight=0.7, inverse_temperature=3.0)
    z = torch.randn(5, 2)
    codes = [torch.tensor(bits, dtype=torch.float32) * 2 - 1 for bits in itertools.product([0, 1], repeat=2)]
    per_example, mean_q = [], torch.zeros(4)
    for row in z:
        weights = torch.stack([torch.exp(2 * row @ code * 3.0) for code in codes])
        q = weights / weights.sum()
        per_example.append(-(q * q.log()).sum())
        mean_q += q / len(z)
    expected = torch.stack(per_example).mean() - 0.7 * -(mean_q * mean_q.log()).sum()
    torch.testing.assert_close(lfq.entropy_penalty(z), expected, rtol=1e-5, atol=1e-6)


def test_bad_shapes_name_what_was_expected():
    with pytest.raises(ValueError, match="Expected latents with 4 channels"):
        FiniteScalarQuantizer([8, 5, 5, 5])(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="Expected `levels`"):
        FiniteScalarQuantizer([1, 5])
    with pytest.raises(ValueError, match="Expected 1 <= num_channels <= 24"):
        LookupFreeQuantizer(40)


# -- against vector-quantize-pytorch ---------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [7, 5, 5, 5, 5]])
def test_fsq_matches_vector_quantize_pytorch(levels):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    z = torch.randn(4, len(levels), 6, 6) * 2
    reference = vqp.FSQ(levels=levels)
    expected_codes, expected_indices = reference(z)
    codes, indices = FiniteScalarQuantizer(levels)(z)
    torch.testing.assert_close(codes, expected_codes)
    assert torch.equal(indices, expected_indices.long())
    torch.testing.assert_close(FiniteScalarQuantizer(levels).indices_to_codes(indices),
                               reference.indices_to_codes(expected_indices))


def test_lfq_matches_vector_quantize_pytorch():
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    z = torch.randn(4, 6, 5, 5)
    reference = vqp.LFQ(dim=6, codebook_size=64, entropy_loss_weight=1.0, diversity_gamma=1.0, channel_first=True)
    ours = LookupFreeQuantizer(6)
    for training in (True, False):
        reference.train(training), ours.train(training)
        expected_codes, expected_indices, expected_loss = reference(z)
        codes, indices, penalty = ours(z)
        torch.testing.assert_close(codes, expected_codes)
        assert torch.equal(indices, expected_indices.long())
        torch.testing.assert_close(penalty, expected_loss, rtol=1e-5, atol=1e-6)
