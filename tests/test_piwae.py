"""PIWAE (Rainforth et al. 2018, sec. 5): the decoder's gradient is the IWAE bound's over all M·K samples, the
encoder's the MIWAE bound's (M groups of K), from one `loss.backward()`.

The reference is autograd of each bound separately, on the same weights and the same samples: an IWAEModel with
K = M·K and an MIWAEModel with (M, K) draw the same M·K latents from the same generator."""

import pytest
import torch

from hf_vae import IWAEConfig, IWAEModel, MIWAEConfig, MIWAEModel, PIWAEConfig, PIWAEModel

M, K = 3, 4
ARCHITECTURE = dict(in_channels=1, image_size=8, latent_dim=3, backbone="mlp", hidden_dims=[16])
TWO_LEVEL = dict(in_channels=1, image_size=32, backbone="burgess", block_out_channels=[8, 8, 8], hidden_dims=[16],
                 latent_dim=3, local_latent_channels=1)


def _loss_and_gradients(model_class, config, state, x, **forward):
    torch.manual_seed(0)
    model = model_class(config)
    model.load_state_dict(state)
    model.double().train().zero_grad(set_to_none=True)  # float64: the comparison is of formulas, not roundings
    loss = model(x.double(), generator=torch.Generator().manual_seed(1), sample_posterior=True, **forward).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def _three_bounds(architecture, x, likelihood="bernoulli"):
    torch.manual_seed(0)
    config = dict(architecture, likelihood=likelihood)
    state = PIWAEModel(PIWAEConfig(num_bounds=M, num_importance_samples=K, **config)).state_dict()
    piwae = _loss_and_gradients(PIWAEModel, PIWAEConfig(num_bounds=M, num_importance_samples=K, **config), state, x)
    iwae = _loss_and_gradients(IWAEModel, IWAEConfig(num_importance_samples=M * K, **config), state, x)
    miwae = _loss_and_gradients(MIWAEModel, MIWAEConfig(num_bounds=M, num_importance_samples=K, **config), state, x)
    return piwae, iwae, miwae


def _assert_routed(piwae, iwae, miwae):
    (loss, gradients), (iwae_loss, iwae_gradients), (_, miwae_gradients) = piwae, iwae, miwae
    torch.testing.assert_close(loss, iwae_loss)  # the value is −L_{MK}
    for name, gradient in gradients.items():
        reference = miwae_gradients[name] if name.startswith("encoder.") else iwae_gradients[name]
        torch.testing.assert_close(gradient, reference, rtol=1e-9, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


def test_decoder_gets_the_iwae_gradient_and_encoder_the_miwae_gradient():
    x = (torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    piwae, iwae, miwae = _three_bounds(ARCHITECTURE, x)
    _assert_routed(piwae, iwae, miwae)
    # the two references differ, so the check above tells the routes apart
    encoder = [n for n in piwae[1] if n.startswith("encoder.")]
    assert not all(torch.allclose(iwae[1][n], miwae[1][n]) for n in encoder)


def test_routing_with_a_learned_likelihood_scale():
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    piwae, iwae, miwae = _three_bounds(dict(ARCHITECTURE, learn_likelihood_scale=True), x, likelihood="gaussian")
    assert any(n.startswith("likelihood.") for n in piwae[1])
    _assert_routed(piwae, iwae, miwae)


def test_routing_with_a_learned_prior():
    """p(z_local | z_global) is a network of the decoder: θ, so it follows the IWAE bound, while its dependence on
    z carries the encoder's share."""
    x = (torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(4)) > 0.6).float()
    piwae, iwae, miwae = _three_bounds(TWO_LEVEL, x)
    assert any("local_prior" in n for n in piwae[1])
    _assert_routed(piwae, iwae, miwae)


def test_weights_are_the_normalised_importance_weights():
    model = PIWAEModel(PIWAEConfig(num_bounds=M, num_importance_samples=K, **ARCHITECTURE))
    log_weights = torch.randn(M * K, 2, dtype=torch.float64) * 5
    iwae, miwae = model.bound_weights(log_weights)
    # by autograd of each bound with respect to the log-weights themselves
    leaf = log_weights.clone().requires_grad_()
    bound = torch.logsumexp(leaf, 0) - torch.log(torch.tensor(M * K.__float__()))
    torch.testing.assert_close(iwae, torch.autograd.grad(bound.sum(), leaf)[0])
    groups = leaf.view(M, K, 2)
    miwae_bound = (torch.logsumexp(groups, 1) - torch.log(torch.tensor(float(K)))).mean(0)
    torch.testing.assert_close(miwae, torch.autograd.grad(miwae_bound.sum(), leaf)[0])


def test_without_gradients_the_loss_is_the_iwae_bound():
    torch.manual_seed(0)
    config = dict(ARCHITECTURE, num_bounds=M, num_importance_samples=K)
    model = PIWAEModel(PIWAEConfig(**config)).eval()
    reference = IWAEModel(IWAEConfig(**dict(ARCHITECTURE, num_importance_samples=M * K))).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        loss = model(x, generator=torch.Generator().manual_seed(1)).loss
        expected = reference(x, generator=torch.Generator().manual_seed(1)).loss
    torch.testing.assert_close(loss, expected)
    assert model._routing_inputs is None  # the pass's latents are not kept


def test_frozen_encoder_trains_the_decoder_on_the_iwae_bound():
    x = (torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    torch.manual_seed(0)
    model = PIWAEModel(PIWAEConfig(num_bounds=M, num_importance_samples=K, **ARCHITECTURE)).train()
    reference = IWAEModel(IWAEConfig(num_importance_samples=M * K, **ARCHITECTURE)).train()
    reference.load_state_dict(model.state_dict())
    for network in (model, reference):
        network.encoder.requires_grad_(False)
        network(x, generator=torch.Generator().manual_seed(1)).loss.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, msg=lambda m, n=name: f"{n}: {m}")


def test_transformers_trainer_trains_both_networks(tmp_path):
    """transformers' Trainer calls loss.backward() on the model's own loss: a step moves encoder and decoder."""
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = PIWAEModel(PIWAEConfig(num_bounds=M, num_importance_samples=K, **ARCHITECTURE))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = (torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=4, max_steps=1, learning_rate=0.1,
                             optim="sgd", report_to=[], save_strategy="no", use_cpu=True)
    Trainer(model=model, args=args, train_dataset=[{"pixel_values": image} for image in x]).train()
    moved = {n: (start[n] - p.detach()).abs().sum() for n, p in model.named_parameters()}
    assert all(moved[n] > 0 for n in moved), [n for n in moved if not moved[n] > 0]


def test_model_card_states_both_bounds():
    from hf_vae.integrations.model_card import render_model_card

    model = PIWAEModel(PIWAEConfig(num_bounds=M, num_importance_samples=K, **ARCHITECTURE))
    card = render_model_card(model, repo_id="alice/piwae", metrics={"nll": 80.0}).text
    assert "PIWAEModel" in card and "## Training objective" in card
    assert f"M·K = {M * K} samples" in card and f"M = {M} bounds of K = {K} samples" in card


def test_reentrant_checkpointing_is_refused_and_the_default_checkpointing_trains():
    torch.manual_seed(0)
    model = PIWAEModel(PIWAEConfig(image_size=8, in_channels=1, hidden_dims=[16], latent_dim=4, num_bounds=2,
                                   num_importance_samples=3)).train()
    with pytest.raises(ValueError, match="reentrant checkpointing does not allow: expected use_reentrant=False"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.gradient_checkpointing_enable()
    model(torch.rand(4, 1, 8, 8).round()).loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())

