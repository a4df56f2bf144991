"""Vector quantisation: nearest codes, straight-through gradients, what each loss term moves, EMA, restarts."""

import math

import numpy as np
import pytest
import torch

from hf_vae import VQVAEConfig, VQVAEModel
from hf_vae.quantizers import VectorQuantizer


def test_nearest_codes_match_brute_force():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 3)
    z = torch.randn(2, 3, 5, 5)
    out = vq(z)
    flat = z.movedim(1, -1).reshape(-1, 3)
    expected = torch.cdist(flat, vq.embedding.weight).argmin(-1).view(2, 5, 5)
    assert torch.equal(out.indices, expected)
    torch.testing.assert_close(out.quantized, vq.embedding.weight[expected].movedim(-1, 1))


def test_straight_through_gradient_reaches_the_encoder_unchanged():
    vq = VectorQuantizer(8, 4)
    z = torch.randn(3, 4, 2, 2, requires_grad=True)
    upstream = torch.randn(3, 4, 2, 2)
    (vq(z).quantized * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)  # the identity, exactly (van den Oord et al. 2017, sec. 3.1)


def test_loss_terms_and_beta_placement():
    torch.manual_seed(0)
    z = torch.randn(2, 4, 3, 3)
    vq = VectorQuantizer(8, 4, commitment_cost=0.25)
    out = vq(z)
    codes = vq.embedding.weight[out.indices].movedim(-1, 1)
    sq = (z - codes).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(out.codebook_loss, sq)
    torch.testing.assert_close(out.commitment_loss, sq)
    torch.testing.assert_close(out.loss, out.codebook_loss + 0.25 * out.commitment_loss)
    legacy = VectorQuantizer(8, 4, commitment_cost=0.25, beta_on_codebook=True)
    legacy.load_state_dict(vq.state_dict())
    out_legacy = legacy(z)
    torch.testing.assert_close(out_legacy.loss, out_legacy.commitment_loss + 0.25 * out_legacy.codebook_loss)


def _vq_model(**kwargs):
    config = VQVAEConfig(in_channels=1, image_size=8, backbone="mlp", hidden_dims=[32], embedding_dim=4,
                         latent_dim=8, num_embeddings=16, **kwargs)
    return VQVAEModel(config)


def _grad_norms(model):
    encoder = sum(p.grad.abs().sum() for p in model.encoder.parameters() if p.grad is not None)
    codebook = model.quantizer.embedding.weight.grad
    decoder = sum(p.grad.abs().sum() for p in model.decoder.parameters() if p.grad is not None)
    return float(encoder), 0.0 if codebook is None else float(codebook.abs().sum()), float(decoder)


def test_commitment_term_moves_only_the_encoder_and_codebook_term_only_the_codebook():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8)
    model = _vq_model()
    model(x).codebook_loss.backward()
    encoder, codebook, decoder = _grad_norms(model)
    assert encoder == 0 and decoder == 0 and codebook > 0

    model.zero_grad(set_to_none=True)
    model(x).commitment_loss.backward()
    encoder, codebook, decoder = _grad_norms(model)
    assert encoder > 0 and codebook == 0 and decoder == 0

    model.zero_grad(set_to_none=True)
    model(x).reconstruction_loss.backward()  # through the straight-through estimator: encoder and decoder
    encoder, codebook, decoder = _grad_norms(model)
    assert encoder > 0 and decoder > 0 and codebook == 0


def test_one_ema_update_matches_a_hand_computation():
    torch.manual_seed(0)
    k, d, gamma, eps = 4, 2, 0.9, 1e-5
    vq = VectorQuantizer(k, d, use_ema=True, ema_decay=gamma, ema_epsilon=eps).train()
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 1.0], [5.0, 5.0]]))
        vq.ema_embed_sum.copy_(vq.embedding.weight)
        vq.ema_cluster_size.copy_(torch.tensor([1.0, 2.0, 0.5, 0.0]))
    old_n, old_m = vq.ema_cluster_size.numpy().copy(), vq.ema_embed_sum.numpy().copy()
    z = torch.tensor([[0.1, -0.1], [0.9, 1.2], [1.1, 0.8], [-0.8, 0.9]]).requires_grad_()
    out = vq(z)  # (B, D) input: four vectors
    assign = np.array([0, 1, 1, 2])
    assert out.indices.tolist() == assign.tolist()

    counts = np.bincount(assign, minlength=k).astype(np.float64)
    sums = np.zeros((k, d))
    np.add.at(sums, assign, z.detach().numpy())
    n = gamma * old_n + (1 - gamma) * counts
    m = gamma * old_m + (1 - gamma) * sums
    smoothed = (n + eps) / (n.sum() + k * eps) * n.sum()
    np.testing.assert_allclose(vq.ema_cluster_size.numpy(), n, rtol=1e-6)
    np.testing.assert_allclose(vq.embedding.weight.detach().numpy(), m / smoothed[:, None], rtol=1e-5)
    assert not vq.embedding.weight.requires_grad  # EMA codes get no gradient; the codebook term is dropped
    torch.testing.assert_close(out.loss, 0.25 * out.commitment_loss)


def test_dead_codes_restart_from_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, dead_code_threshold=0.5).train()
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.cat([torch.zeros(1, 2), torch.full((7, 2), 100.0)]))
    z = (torch.randn(64, 2) * 0.1).requires_grad_()
    for _ in range(80):  # usage of codes 1..7 decays from 1 to below 0.5 (decay 0.99 -> ~70 steps)
        vq(z)
    codebook = vq.embedding.weight.detach()
    restarted = (codebook.abs() < 50).all(dim=1)
    assert restarted.sum() == 8
    # every restarted code is one of the batch's encoder outputs
    distances = torch.cdist(codebook[1:], z.detach()).min(dim=1).values
    assert torch.all(distances < 1e-4)


def test_kmeans_initialisation_finds_the_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [0.0, -5.0]])
    z = (centres.repeat(100, 1) + 0.1 * torch.randn(300, 2)).requires_grad_()
    vq = VectorQuantizer(3, 2, kmeans_init=True, kmeans_iters=20).train()
    assert not bool(vq.initialized)
    vq(z)
    assert bool(vq.initialized)
    nearest = torch.cdist(centres, vq.embedding.weight.detach()).min(dim=1).values
    assert torch.all(nearest < 0.1), vq.embedding.weight


def test_cosine_similarity_codes_are_unit_vectors():
    vq = VectorQuantizer(8, 3, use_cosine_sim=True)
    z = torch.randn(5, 3) * 10
    out = vq(z)
    assert torch.allclose(out.quantized.norm(dim=1), torch.ones(5), atol=1e-5)
    expected = (torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(vq.embedding.weight, dim=1).t()).argmax(1)
    assert torch.equal(out.indices, expected)


def test_perplexity_and_usage_on_a_hand_made_batch():
    vq = VectorQuantizer(4, 1)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor([[0.0], [1.0], [2.0], [3.0]]))
    out = vq(torch.tensor([[0.0], [0.1], [1.0], [1.1]]))  # codes 0, 0, 1, 1
    assert math.isclose(float(out.perplexity), 2.0, rel_tol=1e-5)
    assert float(out.codebook_usage) == 0.5


def test_codebook_state_changes_only_in_training_passes_with_autograd():
    model = _vq_model(use_ema=True, dead_code_threshold=1.0, kmeans_init=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 8, 8)
    model.train()
    with torch.no_grad():
        model(x)
    model.reconstruct(x)
    model.eval()
    model(x)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    model.train()
    model(x)
    assert not torch.equal(state["quantizer.embedding.weight"], model.quantizer.embedding.weight)


def test_input_with_wrong_code_dimension_is_rejected():
    with pytest.raises(ValueError, match="Expected encoder output with 4 channels"):
        VectorQuantizer(8, 4)(torch.randn(2, 3, 2, 2))


def test_ema_codebook_starts_consistent_so_unused_codes_stay_in_place():
    # With the running sums at the initial codebook, the counts must start at 1 (as after k-means): e = m / N
    # then leaves a code that the first batch does not use where it was (up to the smoothing), instead of
    # dividing it by ε ≈ 1e-5 and stranding it far outside the data.
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 2, use_ema=True).train()
    initial = vq.embedding.weight.detach().clone()
    z = (initial[:1] + 1e-5 * torch.randn(64, 2)).requires_grad_()  # every vector next to code 0
    assert (vq(z).indices == 0).all()
    torch.testing.assert_close(vq.embedding.weight[1:], initial[1:], rtol=2e-4, atol=0.0)


def test_ema_codebook_toy_run_keeps_its_codes_in_use():
    # The stranded-code bug in a toy run: 2-d Gaussian data, 128 codes, EMA only (no k-means, no restarts).
    # With an inconsistent start every code missed by the first batch jumps ~1e5 times its initial value away
    # and is never selected again (measured: 16 of 128 codes in use after 100 steps; 110 with a consistent start).
    torch.manual_seed(0)
    vq = VectorQuantizer(128, 2, use_ema=True).train()
    for _ in range(100):
        vq((torch.randn(256, 2) * 0.05).requires_grad_())
    codebook = vq.embedding.weight.detach()
    assert codebook.abs().max() < 1.0  # nothing stranded outside the data
    with torch.no_grad():
        used = vq.eval()(torch.randn(20000, 2) * 0.05).indices.unique().numel()
    assert used >= 90, used
