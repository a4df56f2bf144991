"""Residual VQ and the learned codebook's options (cosine codebook, projections, rotation trick, orthogonal penalty):
brute force, a direct computation of the rotation's gradient, and vector-quantize-pytorch where it defines the
behaviour (same inputs and codebook -> same codes and quantised outputs)."""

import pytest
import torch

from hf_vae.quantizers import VectorQuantizer, rotate_to
from hf_vae.residual_quantization import ResidualVectorQuantizer

D, K = 8, 32


def _copy_projections(ours, theirs):
    ours.project_in.load_state_dict(theirs.project_in.state_dict())
    ours.project_out.load_state_dict(theirs.project_out.state_dict())


# -- the residual quantiser by brute force ----------------------------------------------------------------------


def test_residual_codes_are_each_levels_nearest_code_to_the_residual():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(3, K, D).eval()
    z = torch.randn(2, D, 4, 4)
    out = rvq(z)
    residual = z.movedim(1, -1).reshape(-1, D)
    expected, total = [], torch.zeros_like(residual)
    for level in rvq.levels:
        codebook = level.embedding.weight
        index = torch.cdist(residual, codebook).argmin(-1)
        expected.append(index)
        residual = residual - codebook[index]
        total = total + codebook[index]
    assert out.indices.shape == (2, 4, 4, 3)
    assert torch.equal(out.indices.reshape(-1, 3), torch.stack(expected, -1))
    torch.testing.assert_close(out.quantized, total.view(2, 4, 4, D).movedim(-1, 1))
    torch.testing.assert_close(rvq.lookup(out.indices).movedim(-1, 1), out.quantized)
    assert torch.equal(rvq.quantize_indices(z), out.indices)


def test_residual_losses_are_the_levels_losses_on_their_residuals():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(2, K, D, commitment_cost=0.25)
    z = torch.randn(3, D, 2, 2)
    out = rvq(z)
    flat = z.movedim(1, -1)
    first = rvq.levels[0].embedding.weight[out.indices[..., 0]]
    second = rvq.levels[1].embedding.weight[out.indices[..., 1]]
    squared = ((flat - first).pow(2).flatten(1).sum(1) + (flat - first - second).pow(2).flatten(1).sum(1))
    torch.testing.assert_close(out.codebook_loss, squared)
    torch.testing.assert_close(out.loss, 1.25 * squared)


def test_residual_gradient_is_straight_through_the_whole_stack():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(3, K, D)
    z = torch.randn(2, D, 3, 3, requires_grad=True)
    upstream = torch.randn(2, D, 3, 3)
    (rvq(z).quantized * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)


def test_residual_usage_and_perplexity_average_the_levels():
    rvq = ResidualVectorQuantizer(2, 4, 1).eval()
    with torch.no_grad():
        rvq.levels[0].embedding.weight.copy_(torch.tensor([[0.0], [10.0], [20.0], [30.0]]))
        rvq.levels[1].embedding.weight.copy_(torch.tensor([[0.0], [1.0], [2.0], [3.0]]))
    z = torch.tensor([0.0, 10.0, 21.0, 32.0]).view(4, 1)  # level 1: all four codes; level 2: codes 0, 0, 1, 2
    out = rvq(z)
    assert torch.equal(out.indices, torch.tensor([[0, 0], [1, 0], [2, 1], [3, 2]]))
    torch.testing.assert_close(out.codebook_usage, torch.tensor((1.0 + 0.75) / 2))
    second = torch.tensor([0.5, 0.25, 0.25])
    expected = (torch.tensor(4.0) + torch.exp(-(second * second.log()).sum())) / 2
    torch.testing.assert_close(out.perplexity, expected)


def test_bad_residual_codes_name_what_was_expected():
    rvq = ResidualVectorQuantizer(3, K, D)
    with pytest.raises(ValueError, match="last dimension of 3"):
        rvq.lookup(torch.zeros(2, 4, 4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="positive int"):
        ResidualVectorQuantizer(0, K, D)


# -- the rotation trick, computed directly ----------------------------------------------------------------------


def test_rotation_trick_forwards_the_code_and_backwards_the_scaled_rotation():
    torch.manual_seed(0)
    source = torch.randn(5, D, dtype=torch.float64, requires_grad=True)
    target = torch.randn(5, D, dtype=torch.float64)
    upstream = torch.randn(5, D, dtype=torch.float64)
    out = rotate_to(source, target)
    torch.testing.assert_close(out, target)
    (out * upstream).sum().backward()
    for e, q, g, grad in zip(source.detach(), target, upstream, source.grad):
        u, v = e / e.norm(), q / q.norm()
        w = (u + v) / (u + v).norm()
        rotation = torch.eye(D, dtype=torch.float64) - 2 * torch.outer(w, w) + 2 * torch.outer(v, u)
        torch.testing.assert_close(rotation @ u, v)  # the rotation takes the source direction to the target's
        torch.testing.assert_close(rotation.T @ rotation, torch.eye(D, dtype=torch.float64))
        torch.testing.assert_close(grad, q.norm() / e.norm() * rotation.T @ g)


def test_orthogonal_penalty_is_zero_for_orthonormal_codes_and_moves_the_codebook():
    vq = VectorQuantizer(D, D, orthogonal_reg_weight=2.0)
    with torch.no_grad():
        vq.embedding.weight.copy_(3 * torch.eye(D))
    torch.testing.assert_close(vq.orthogonal_loss(), torch.tensor(0.0))
    with torch.no_grad():
        vq.embedding.weight.fill_(1.0)  # every pair parallel: mean squared cosine 1
    torch.testing.assert_close(vq.orthogonal_loss(), torch.tensor(1.0 - 1.0 / D))
    z = torch.randn(2, D)
    out = vq(z)
    torch.testing.assert_close(out.loss, out.codebook_loss + 0.25 * out.commitment_loss + 2.0 * (1.0 - 1.0 / D))


# -- parity with vector-quantize-pytorch -----------------------------------------------------------------------


@pytest.mark.parametrize("use_cosine_sim", [False, True])
@pytest.mark.parametrize("codebook_dim", [None, 4])
def test_vq_options_match_vector_quantize_pytorch(use_cosine_sim, codebook_dim):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    theirs = vqp.VectorQuantize(dim=D, codebook_size=K, codebook_dim=codebook_dim, use_cosine_sim=use_cosine_sim,
                                accept_image_fmap=True).eval()
    ours = VectorQuantizer(K, D, codebook_dim=codebook_dim, use_cosine_sim=use_cosine_sim).eval()
    with torch.no_grad():
        ours.embedding.weight.copy_(theirs.codebook)
    if codebook_dim:
        _copy_projections(ours, theirs)
    x = torch.randn(4, D, 6, 6)
    quantized, indices, _ = theirs(x)
    out = ours(x)
    assert torch.equal(out.indices, indices)
    torch.testing.assert_close(out.quantized, quantized)
    torch.testing.assert_close(ours.lookup(indices).movedim(-1, 1), quantized)


@pytest.mark.parametrize("use_cosine_sim", [False, True])
@pytest.mark.parametrize("codebook_dim", [None, 4])
def test_rotation_trick_gradient_matches_vector_quantize_pytorch(use_cosine_sim, codebook_dim):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    theirs = vqp.VectorQuantize(dim=D, codebook_size=K, codebook_dim=codebook_dim, use_cosine_sim=use_cosine_sim,
                                accept_image_fmap=True, rotation_trick=True, ema_update=False).train()
    ours = VectorQuantizer(K, D, codebook_dim=codebook_dim, use_cosine_sim=use_cosine_sim, rotation_trick=True)
    with torch.no_grad():
        ours.embedding.weight.copy_(theirs.codebook)
    if codebook_dim:
        _copy_projections(ours, theirs)
    x, upstream = torch.randn(2, D, 5, 5), torch.randn(2, D, 5, 5)
    x_theirs, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    quantized, indices, _ = theirs(x_theirs)
    (quantized * upstream).sum().backward()
    out = ours(x_ours)
    (out.quantized * upstream).sum().backward()
    assert torch.equal(out.indices, indices)
    torch.testing.assert_close(out.quantized, quantized)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad)
    assert not torch.allclose(x_ours.grad, upstream)  # not the identity's gradient


def test_orthogonal_penalty_matches_vector_quantize_pytorch():
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    theirs = vqp.VectorQuantize(dim=D, codebook_size=K, orthogonal_reg_weight=1.0, accept_image_fmap=True).train()
    ours = VectorQuantizer(K, D, orthogonal_reg_weight=1.0)
    with torch.no_grad():
        ours.embedding.weight.copy_(theirs.codebook)
    *_, breakdown = theirs(torch.randn(2, D, 3, 3), return_loss_breakdown=True, freeze_codebook=True)
    torch.testing.assert_close(ours.orthogonal_loss(), breakdown.orthogonal_reg)


@pytest.mark.parametrize("use_cosine_sim", [False, True])
@pytest.mark.parametrize("codebook_dim", [None, 4])
def test_residual_vq_matches_vector_quantize_pytorch(use_cosine_sim, codebook_dim):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    theirs = vqp.ResidualVQ(dim=D, num_quantizers=3, codebook_size=K, codebook_dim=codebook_dim,
                            use_cosine_sim=use_cosine_sim).eval()
    ours = ResidualVectorQuantizer(3, K, D, codebook_dim=codebook_dim, use_cosine_sim=use_cosine_sim).eval()
    with torch.no_grad():
        for level, layer in zip(ours.levels, theirs.layers):
            level.embedding.weight.copy_(layer.codebook)
    if codebook_dim:
        _copy_projections(ours, theirs)
    x = torch.randn(4, 20, D)  # theirs: channel-last sequences
    quantized, indices, _ = theirs(x)
    out = ours(x.transpose(1, 2))
    assert torch.equal(out.indices, indices)
    torch.testing.assert_close(out.quantized, quantized.transpose(1, 2))
    torch.testing.assert_close(ours.lookup(indices), theirs.get_output_from_indices(indices))


# -- in the VQ-VAE: configuration, codes for the prior, saving -------------------------------------------------


def _vq_vae(backbone="conv", **fields):
    from hf_vae import VQVAEConfig, VQVAEModel

    network = dict(block_out_channels=[8, 16], norm_num_groups=4, mid_block_add_attention=False) \
        if backbone == "conv" else dict(hidden_dims=[32], latent_dim=16)
    torch.manual_seed(0)
    return VQVAEModel(VQVAEConfig(in_channels=1, image_size=16, backbone=backbone, num_embeddings=16, embedding_dim=4,
                                  **network, **fields))


@pytest.mark.parametrize("backbone", ["conv", "mlp"])
def test_rvq_vae_trains_saves_and_converts_its_codes_for_the_prior(tmp_path, backbone):
    from transformers import AutoModel

    from hf_vae import VQPriorConfig, VQPriorModel

    model = _vq_vae(backbone, quantizer="rvq", num_quantizers=3, codebook_dim=2, rotation_trick=True,
                    orthogonal_reg_weight=0.1).train()
    x = torch.rand(4, 1, 16, 16)
    output = model(x)
    output.loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert all(level.embedding.weight.grad is not None for level in model.quantizer.levels)
    assert 0 < output.codebook_usage <= 1 and 1 <= output.perplexity <= 16
    model.eval()
    indices = model.encode_to_indices(x)
    assert tuple(indices.shape[1:]) == model.code_shape and model.code_shape[-1] == 3
    assert torch.equal(indices, model(x).indices)
    latents = model.indices_to_latents(indices)
    torch.testing.assert_close(model.decode_indices(indices), model.decode(latents, force_not_quantize=True).sample)
    # `decode` snaps latents to their codes (diffusers' VQModel contract): the residual codes of the latents'
    snapped = model.quantizer.quantize_indices(model._to_code_layout(latents))
    torch.testing.assert_close(model.decode(latents).sample, model.decode_indices(snapped))
    # the prior reads an (h, w, depth) map as h·w·depth tokens of the per-level vocabulary
    prior = VQPriorModel(VQPriorConfig(num_embeddings=16, code_shape=list(model.code_shape), n_embd=16, n_layer=1,
                                       n_head=2))
    model.attach_prior(prior)
    assert prior(indices).nll.shape == (4,)
    assert tuple(model.draw_latents(2).shape) == (2, *model.latent_shape)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.encode_to_indices(x), indices)
    assert loaded.prior is not None


def test_codebook_options_in_the_vq_vae_reproduce_the_quantiser_alone():
    model = _vq_vae(codebook_dim=2, use_cosine_sim=True).eval()
    x = torch.rand(2, 1, 16, 16)
    z_e = model.encoder(x, None)
    out = model.quantizer(z_e)
    assert torch.equal(model.encode_to_indices(x), out.indices)
    torch.testing.assert_close(model.decode(out.quantized + 0.01).sample, model.decode(out.quantized).sample)


def test_codebook_options_are_checked():
    from hf_vae import VQVAEConfig

    assert VQVAEConfig(quantizer="rvq").num_quantizers == 4
    with pytest.raises(ValueError, match="Expected num_quantizers only with quantizer='rvq'"):
        VQVAEConfig(num_quantizers=2)
    with pytest.raises(ValueError, match=r"Expected \['codebook_dim', 'rotation_trick'\] only with a learned codebook"):
        VQVAEConfig(quantizer="fsq", codebook_dim=2, rotation_trick=True)
    with pytest.raises(ValueError, match="Expected orthogonal_reg_weight 0 with use_ema=True"):
        VQVAEConfig(use_ema=True, orthogonal_reg_weight=0.1)
    with pytest.raises(ValueError, match="codebook_dim"):
        VQVAEConfig(codebook_dim=0)
