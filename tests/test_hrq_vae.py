"""The HRQ-VAE's quantiser (Hosking et al. 2022) against brute force and torch.distributions, and the family's
configuration. The model battery (tests/test_model_battery.py) covers forward, save/load, remote code and export."""

import math

import pytest
import torch

from hf_vae.hierarchical_quantization import HierarchicalResidualQuantizer, depth_mask, norm_loss, uniform_kl

D, K, L = 4, 8, 3


def _quantizer(**options):
    torch.manual_seed(0)
    return HierarchicalResidualQuantizer(L, K, D, **options)


def test_codebooks_start_on_spheres_of_decaying_radius():
    hrq = _quantizer(init_scale=2.0, init_decay=0.5)
    for depth, level in enumerate(hrq.levels):
        torch.testing.assert_close(level.embedding.weight.norm(dim=-1), torch.full((K,), 2.0 * 0.5 ** depth))


def test_evaluation_takes_each_levels_nearest_code_and_the_losses_by_brute_force():
    hrq = _quantizer(kl_weight=0.3, norm_loss_weight=0.7, norm_loss_scale=1.5).eval()
    z = torch.randn(2, D, 3, 3)
    out = hrq(z)
    residual = z.movedim(1, -1).reshape(-1, D)
    indices, codes, kl = [], [], torch.zeros(residual.shape[0])
    for level in hrq.levels:
        codebook = level.embedding.weight
        distances = torch.cdist(residual, codebook).pow(2)
        index = distances.argmin(-1)
        q = torch.distributions.Categorical(logits=-distances)
        uniform = torch.distributions.Categorical(probs=torch.full_like(distances, 1.0 / K))
        kl = kl + torch.distributions.kl_divergence(uniform, q)
        residual = residual - codebook[index]
        indices.append(index)
        codes.append(codebook[index])
    norms = torch.stack(codes, 1).norm(dim=-1)
    norm_term = torch.stack([(torch.clamp(norms[:, l + 1] / norms[:, l] * 1.5, min=1.0) - 1) ** 2
                             for l in range(L - 1)], -1).mean(-1)
    assert torch.equal(out.indices.reshape(-1, L), torch.stack(indices, -1))
    assert torch.equal(out.indices, hrq.quantize_indices(z))
    torch.testing.assert_close(out.quantized, sum(codes).view(2, 3, 3, D).movedim(-1, 1))
    torch.testing.assert_close(out.loss, (0.3 * kl + 0.7 * norm_term).view(2, 9).sum(-1))


def test_uniform_kl_and_norm_loss_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # q = (1/4, 3/4)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    torch.testing.assert_close(uniform_kl(logits), torch.tensor([expected]))
    codes = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])  # ratios 0.5 and 1
    torch.testing.assert_close(norm_loss(codes, 1.5), torch.tensor([(0.0 + 0.5 ** 2) / 2]))


def test_depth_dropout_keeps_prefixes_of_the_levels():
    torch.manual_seed(0)
    mask = depth_mask((10000, 4), 0.3, "cpu")
    assert torch.equal(mask, mask.cummin(dim=-1).values)  # once dropped, every finer level is dropped too
    kept = mask.float().mean(0)
    torch.testing.assert_close(kept, torch.tensor([0.7 ** (l + 1) for l in range(4)]), atol=0.02, rtol=0)


def test_training_codes_are_gumbel_samples_of_the_code_distribution():
    # Gumbel-max: the hard sample's index is distributed as softmax(logits), whatever the temperature.
    hrq = _quantizer(depth_drop_rate=0.0).train()
    z = torch.randn(1, D).expand(20000, D).clone().requires_grad_()
    out = hrq(z)
    codebook = hrq.levels[0].embedding.weight.detach()
    probabilities = torch.softmax(-torch.cdist(z[:1].detach(), codebook).pow(2), -1)[0]
    frequencies = torch.bincount(out.indices[:, 0], minlength=K).float() / z.shape[0]
    torch.testing.assert_close(frequencies, probabilities, atol=0.015, rtol=0)
    # the quantised vector is the sum of the sampled codes, and its gradient reaches the input and the codebooks
    sampled = sum(level.embedding.weight[out.indices[:, depth]] for depth, level in enumerate(hrq.levels))
    torch.testing.assert_close(out.quantized, sampled)
    out.quantized.square().sum().backward()
    assert z.grad.abs().sum() > 0 and all(level.embedding.weight.grad is not None for level in hrq.levels)


def test_training_output_is_a_prefix_sum_of_the_levels_codes():
    hrq = _quantizer(depth_drop_rate=0.5).train()
    out = hrq(torch.randn(200, D))
    codes = torch.stack([level.embedding.weight[out.indices[:, d]] for d, level in enumerate(hrq.levels)], 1).detach()
    prefixes = torch.cat([torch.zeros(200, 1, D), codes.cumsum(1)], 1)  # 0, q1, q1+q2, ...
    distance = (prefixes - out.quantized.detach()[:, None]).abs().amax(-1).min(-1).values
    assert distance.max() < 1e-5


def test_temperature_follows_the_schedule_and_counts_training_passes():
    hrq = _quantizer(temperature_decay_steps=10.0, min_temperature=0.5).train()
    for _ in range(3):
        hrq(torch.randn(4, D))
    with torch.no_grad():
        hrq(torch.randn(4, D))  # not a training pass
    assert int(hrq.steps) == 3
    expected = torch.tensor([max(math.exp(-3 / (10 * 1.5 ** l)), 0.5) for l in range(L)])
    torch.testing.assert_close(hrq.temperatures(), expected)
    hrq.steps.fill_(1000)
    torch.testing.assert_close(hrq.temperatures(), torch.full((L,), 0.5))


def test_hrq_vae_configuration():
    from hf_vae import HRQVAEConfig

    config = HRQVAEConfig()
    assert (config.quantizer, config.num_quantizers, config.num_embeddings) == ("rvq", 4, 64)
    with pytest.raises(ValueError, match=r"Expected the VQ codebook options \['use_ema'\] at their defaults"):
        HRQVAEConfig(use_ema=True)
    with pytest.raises(ValueError, match="Expected quantizer 'rvq' for the HRQ-VAE"):
        HRQVAEConfig(quantizer="fsq")
    with pytest.raises(ValueError, match="depth_drop_rate"):
        HRQVAEConfig(depth_drop_rate=1.0)


def test_hrq_vae_codes_for_the_prior_and_reload(tmp_path):
    from transformers import AutoModel

    from hf_vae import HRQVAEConfig, HRQVAEModel

    torch.manual_seed(0)
    model = HRQVAEModel(HRQVAEConfig(in_channels=1, image_size=16, backbone="conv", block_out_channels=[8, 16],
                                     norm_num_groups=4, mid_block_add_attention=False, embedding_dim=4,
                                     num_quantizers=3, num_embeddings=16))
    x = torch.rand(2, 1, 16, 16)
    model.train()(x).loss.backward()
    model.eval()
    indices = model.encode_to_indices(x)
    assert tuple(indices.shape[1:]) == model.code_shape == (8, 8, 3)
    assert torch.equal(model(x).indices, indices)
    torch.testing.assert_close(model.decode_indices(indices), model.reconstruct(x))
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "HRQVAEModel" and int(loaded.quantizer.steps) == 1
    assert torch.equal(loaded.encode_to_indices(x), indices)
