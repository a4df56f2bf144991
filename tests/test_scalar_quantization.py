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
    codes, indices = fsq.quantize(z)
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
    codes, _ = fsq.quantize(z)
    codes.sum().backward()
    assert torch.all(z.grad > 0)  # tanh's slope, not round's zero gradient


def test_lfq_indices_are_the_sign_bits_most_significant_first():
    lfq = LookupFreeQuantizer(3).eval()
    z = torch.tensor([[1.0, -2.0, 0.5], [-1.0, -1.0, -1.0], [0.1, 0.2, 0.3]])[:, :, None]  # (3, d, 1)
    codes, indices, penalty = lfq.quantize(z)
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
        FiniteScalarQuantizer([8, 5, 5, 5]).quantize(torch.randn(1, 3, 2, 2))
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
    codes, indices = FiniteScalarQuantizer(levels).quantize(z)
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
        codes, indices, penalty = ours.quantize(z)
        torch.testing.assert_close(codes, expected_codes)
        assert torch.equal(indices, expected_indices.long())
        torch.testing.assert_close(penalty, expected_loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 6, 5, 3), (4, 6)])
def test_lfq_loss_is_the_weighted_penalty_summed_over_the_code_positions(shape):
    torch.manual_seed(0)
    z = torch.randn(*shape)
    lfq = LookupFreeQuantizer(6, entropy_weight=0.3).train()
    positions = 15 if len(shape) == 4 else 1
    _, _, penalty = lfq.quantize(z)
    torch.testing.assert_close(lfq(z).loss, torch.full((4,), 0.3 * positions * penalty.item()))


# -- as the VQ-VAE's quantiser ----------------------------------------------------------------------------------


def _vq_vae(quantizer, backbone, **fields):
    from hf_vae import VQVAEConfig, VQVAEModel

    network = dict(block_out_channels=[8, 16], norm_num_groups=4, mid_block_add_attention=False) \
        if backbone == "conv" else dict(hidden_dims=[32])
    torch.manual_seed(0)
    return VQVAEModel(VQVAEConfig(in_channels=1, image_size=16, backbone=backbone, quantizer=quantizer,
                                  **network, **fields))


@pytest.mark.parametrize("quantizer", ["fsq", "lfq"])
@pytest.mark.parametrize("backbone", ["mlp", "conv"])
def test_vq_vae_with_an_implicit_codebook_trains_saves_and_decodes_codes(tmp_path, quantizer, backbone):
    from transformers import AutoModel

    model = _vq_vae(quantizer, backbone, **({"embedding_dim": 6} if quantizer == "lfq" else {})).train()
    x = torch.rand(4, 1, 16, 16)
    output = model(x)
    output.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert 0 < output.codebook_usage <= 1 and 1 <= output.perplexity <= model.config.num_embeddings
    model.eval()
    indices = model.encode_to_indices(x)
    assert torch.equal(indices, output.indices)
    assert indices.max() < model.config.num_embeddings  # the GPT-2 prior's vocabulary
    latents = model.indices_to_latents(indices)
    torch.testing.assert_close(model.decode(latents + 0.02).sample, model.decode(latents).sample)  # snapped
    model.save_pretrained(tmp_path)
    assert torch.equal(AutoModel.from_pretrained(tmp_path).encode_to_indices(x), indices)


def test_implicit_codebooks_set_the_code_dimension_and_the_codebook_size():
    from hf_vae import VQVAEConfig

    fsq = VQVAEConfig(quantizer="fsq", fsq_levels=[7, 5, 5])
    assert (fsq.embedding_dim, fsq.num_embeddings) == (3, 175)
    lfq = VQVAEConfig(quantizer="lfq", embedding_dim=8)
    assert lfq.num_embeddings == 256
    with pytest.raises(ValueError, match=r"Expected FSQ's embedding_dim = len\(fsq_levels\) = 3"):
        VQVAEConfig(quantizer="fsq", fsq_levels=[7, 5, 5], embedding_dim=4)
    with pytest.raises(ValueError, match="Expected LFQ's embedding_dim \\(bits per code\\) <= 16"):
        VQVAEConfig(quantizer="lfq", embedding_dim=20)
    with pytest.raises(ValueError, match="Expected `quantizer` in \\('vq', 'fsq', 'lfq', 'rvq'\\)"):
        VQVAEConfig(quantizer="bsq")
    with pytest.raises(ValueError, match="Expected fsq_levels only with quantizer='fsq'"):
        VQVAEConfig(fsq_levels=[8, 5])
