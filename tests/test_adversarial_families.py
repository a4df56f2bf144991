"""The adversarial families: the VAE-GAN (Larsen et al. 2016) and the adversarial autoencoder (Makhzani et al. 2016).

Their discriminators are trained by the objective (hf_vae/training/vae_gan.py, aae.py) with the trainer's
discriminator optimiser. The gradients each network receives are checked against autograd of that network's own
loss, written out here from the papers' (and pythae's) formulas.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_vae import AAEConfig, AAEModel, VAEGANConfig, VAEGANModel

TINY = dict(image_size=8, in_channels=1, hidden_dims=[16], latent_dim=3)


def binary_images(n, seed=0):
    return (torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


def _grads(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)


# ---- VAE-GAN ---------------------------------------------------------------------------------------------------
def _vae_gan(**fields):
    from hf_vae.training.vae_gan import VAEGANObjective

    torch.manual_seed(0)
    model = VAEGANModel(VAEGANConfig(**TINY, discriminator_hidden_dims=[12, 10], **fields))
    return model, VAEGANObjective(model)


def _vae_gan_reference_losses(model, objective, x, seed):
    """pythae's three losses (VAEGAN.loss_function), computed from the networks' layers with the same draws."""
    torch.manual_seed(seed)
    mean, logvar = model.encoder(x, None).chunk(2, dim=1)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    x_rec = torch.sigmoid(model.decoder(z, None))
    z_prior = torch.randn_like(mean)
    x_prior = torch.sigmoid(model.decoder(z_prior, None))
    layers = list(objective.discriminator.layers)

    def features(images, depth):
        out = images.flatten(1)
        for layer in layers[:depth]:
            out = layer(out)
        return out

    layer = model.config.reconstruction_layer
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    feature = 0.5 * (features(x, layer) - features(x_rec, layer)).pow(2).sum(1)
    prob_real = torch.sigmoid(features(x, len(layers))).squeeze(1)
    prob_prior = torch.sigmoid(features(x_prior, len(layers))).squeeze(1)
    gan = F.binary_cross_entropy(prob_real, torch.ones_like(prob_real)) + \
        F.binary_cross_entropy(prob_prior, torch.zeros_like(prob_prior))
    gamma = model.config.adversarial_loss_scale
    encoder_loss = (kl + feature).mean()
    decoder_loss = ((1 - gamma) * feature).mean() - gamma * gan
    return encoder_loss, decoder_loss, gan


@pytest.mark.parametrize("gamma", [0.5, 0.2])
def test_vae_gan_routes_each_network_the_gradient_of_its_own_loss(gamma):
    """Encoder: ∇(KL + L_feature); decoder: ∇((1 − γ)·L_feature − γ·L_GAN) / (1 − γ) (an Adam-invariant factor);
    discriminator: nothing from the generator's step, ∇L_GAN from its own."""
    model, objective = _vae_gan(adversarial_loss_scale=gamma)
    objective.equilibrium, objective.margin = 0.5, 10.0  # both players on
    x = binary_images(6)
    encoder, decoder = list(model.encoder.parameters()), list(model.decoder.parameters())
    discriminator = objective.discriminator_parameters()
    torch.manual_seed(3)
    loss, logs, output = objective.generator_loss(model, {"pixel_values": x}, 0)
    ours_encoder, ours_decoder = _grads(loss, encoder), _grads(loss, decoder)
    loss.backward()
    assert all(p.grad is None for p in discriminator)
    d_loss, _ = objective.discriminator_loss({"pixel_values": x}, output, 0)
    ours_discriminator = _grads(d_loss, discriminator)
    assert all(g is None for g in _grads(d_loss, encoder + decoder))  # D's step reads detached images

    encoder_loss, decoder_loss, gan = _vae_gan_reference_losses(model, objective, x, seed=3)
    for ours, theirs in zip(ours_encoder, _grads(encoder_loss, encoder)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    for ours, theirs in zip(ours_decoder, _grads(decoder_loss, decoder)):
        torch.testing.assert_close(ours, theirs / (1 - gamma), rtol=1e-4, atol=1e-6)
    for ours, theirs in zip(ours_discriminator, _grads(gan, discriminator)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logs["rec"], ((encoder_loss - output.kl) * 1.0).detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("real, fake, expected", [
    (0.7, 0.7, (True, True)),     # inside the band: both play
    (0.2, 0.7, (True, False)),    # D too good on real images: D pauses
    (0.7, 1.2, (False, True)),    # D losing: the decoder's GAN term pauses
    (0.2, 1.2, (True, True)),     # both would pause: both play
])
def test_vae_gan_equilibrium_switches_are_pythaes(real, fake, expected):
    from hf_vae.training.vae_gan import players_on

    assert players_on(real, fake, 0.68, 0.4) == expected


def test_vae_gan_paused_decoder_term_and_discriminator():
    model, objective = _vae_gan()
    objective.equilibrium, objective.margin = 100.0, 1.0  # every cost is far below: D pauses, the decoder plays
    x = binary_images(4)
    loss, logs, output = objective.generator_loss(model, {"pixel_values": x}, 0)
    assert not objective.discriminator_active(1) and float(logs["gan_on"]) == 1.0
    objective.equilibrium, objective.margin = 0.0, 0.0  # every cost is above: the decoder's GAN term pauses
    loss, logs, output = objective.generator_loss(model, {"pixel_values": x}, 1)
    assert objective.discriminator_active(2) and float(logs["gan_on"]) == 0.0
    torch.testing.assert_close(loss.detach(), (logs["rec"] + logs["kl"]).to(loss.dtype))


def test_vae_gan_output_layer_features_are_the_probability():
    """reconstruction_layer = depth is pythae's default (−1): the compared "features" are D(x) itself."""
    model, objective = _vae_gan(reconstruction_layer=3)
    x = binary_images(3)
    logits, features = objective.discriminator(x, 3)
    torch.testing.assert_close(features.squeeze(1), torch.sigmoid(logits))


def test_vae_gan_forward_is_the_vae_negative_elbo():
    """What a trainer without the objective (transformers' Trainer) minimises: the VAE's loss, nothing silently."""
    from hf_vae import VAEConfig, VAEModel

    model, _ = _vae_gan()
    torch.manual_seed(0)
    vae = VAEModel(VAEConfig(**TINY))
    vae.load_state_dict(model.state_dict())
    x = binary_images(4)
    ours = model(x, generator=torch.Generator().manual_seed(1))
    theirs = vae(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours.loss, theirs.loss)
    assert not any("discriminator" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize("fields, message", [(dict(adversarial_loss_scale=1.0), "adversarial_loss_scale"),
                                             (dict(reconstruction_layer=4, discriminator_hidden_dims=[4, 4]),
                                              "1 … 3"),
                                             (dict(margin=-0.1), "margin")])
def test_vae_gan_bad_fields_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        VAEGANConfig(**fields)


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("name, logged", [("vae_gan", {"d_loss", "rec", "d_real", "d_fake"}), ("aae", {"d_loss", "adv"})])
def test_discriminator_trains_in_the_trainer_checkpointed_not_published(tmp_path, monkeypatch, name, logged):
    from safetensors.torch import load_file

    from hf_vae.families import get
    from hf_vae.training import DataArguments, TrainArguments, train
    from hf_vae.training.aae import AAEObjective
    from hf_vae.training.vae_gan import VAEGANObjective

    objective_class = {"vae_gan": VAEGANObjective, "aae": AAEObjective}[name]

    betas = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, params, *args, **kwargs):
            super().__init__(params, *args, **kwargs)
            betas.append(tuple(self.defaults["betas"]))

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    args = TrainArguments(model=name, output_dir=str(tmp_path / "run"), max_steps=4, batch_size=8,
                          eval_steps=0, checkpointing_steps=2, report_to="jsonl", logging_steps=1,
                          eval_importance_samples=4, final_eval_max_examples=16, eval_batch_size=16,
                          num_sample_images=4)
    fields = dict(image_size=16, hidden_dims=[16], latent_dim=3, discriminator_hidden_dims=[8])
    record = train(args, DataArguments(num_train_examples=100), fields)
    assert logged <= set(record["train"]["last_logs"])
    published = load_file(tmp_path / "run" / "model.safetensors")
    assert not any("discriminator" in key for key in published)
    state = load_file(tmp_path / "run" / "checkpoints" / "checkpoint-4" / "training_state.safetensors")
    assert len([key for key in state if "objective" in key and "discriminator" in key]) == 4, list(state)
    assert betas == [(0.9, 0.999), (0.9, 0.999)], betas  # pythae's Adam defaults for every network
    assert get(name).objective_factory.__module__ == objective_class.__module__

    restored, original = [], objective_class.load_state_dict

    def recording_load(self, saved):
        original(self, saved)
        restored.append({k: v.clone() for k, v in self.discriminator.state_dict().items()})

    monkeypatch.setattr(objective_class, "load_state_dict", recording_load)
    args.max_steps, args.resume_from_checkpoint = 6, "latest"
    resumed = train(args, DataArguments(num_train_examples=100), fields)
    assert resumed["step"] == 6 and len(restored) == 1
    for key, value in restored[0].items():
        assert torch.equal(value, next(v for k, v in state.items() if k.endswith("discriminator." + key))), key


def test_adversarial_objectives_refuse_the_patchgan_flags():
    from hf_vae.training import TrainArguments
    from hf_vae.training.vae_gan import build_vae_gan_objective

    model, _ = _vae_gan()
    with pytest.raises(ValueError, match="--disc_start"):
        build_vae_gan_objective(TrainArguments(model="vae_gan", disc_start=10), model, (0, 1), "x")


# ---- adversarial autoencoder -----------------------------------------------------------------------------------
def _aae(**fields):
    from hf_vae.training.aae import AAEObjective

    torch.manual_seed(0)
    model = AAEModel(AAEConfig(**TINY, discriminator_hidden_dims=[12], **fields))
    return model, AAEObjective(model)


def test_aae_routes_each_network_the_gradient_of_its_own_loss():
    """pythae's Adversarial_AE.loss_function, written out: the autoencoder minimises s·rec + λ·BCE(D(z), 1), D
    minimises BCE(D(z_p), 1) + BCE(D(z), 0) on detached codes."""
    model, objective = _aae(adversarial_loss_scale=0.7, reconstruction_loss_scale=2.0)
    x = binary_images(6)
    autoencoder = list(model.parameters())
    discriminator = objective.discriminator_parameters()
    torch.manual_seed(5)
    loss, logs, output = objective.generator_loss(model, {"pixel_values": x}, 0)
    ours = _grads(loss, autoencoder)
    loss.backward()
    assert all(p.grad is None for p in discriminator)
    torch.manual_seed(6)
    d_loss, _ = objective.discriminator_loss({"pixel_values": x}, output, 0)
    ours_d = _grads(d_loss, discriminator)
    assert all(g is None for g in _grads(d_loss, autoencoder))

    torch.manual_seed(5)
    mean, logvar = model.encoder(x, None).chunk(2, dim=1)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    rec = F.binary_cross_entropy_with_logits(model.decoder(z, None), x, reduction="none").flatten(1).sum(1)
    prob = lambda codes: torch.sigmoid(objective.discriminator.layers[1](objective.discriminator.layers[0](codes)))
    adversarial = F.binary_cross_entropy(prob(z).squeeze(1), torch.ones(6))
    theirs = _grads(2.0 * rec.mean() + 0.7 * adversarial, autoencoder)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.manual_seed(6)
    z_prior = torch.randn_like(z)
    theirs_d = F.binary_cross_entropy(prob(z_prior).squeeze(1), torch.ones(6)) + \
        F.binary_cross_entropy(prob(z.detach()).squeeze(1), torch.zeros(6))
    for a, b in zip(ours_d, _grads(theirs_d, discriminator)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_aae_forward_is_the_reconstruction_term_alone():
    model, _ = _aae()
    output = model(binary_images(4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(output.loss, output.reconstruction_loss)
    assert float(output.regularisation_loss) == 0.0
    posterior = model.encode(binary_images(4)).latent_dist  # the KL is reported, not trained
    torch.testing.assert_close(output.kl, posterior.kl().mean())
    assert not output.kl.requires_grad
    assert not any("discriminator" in name for name, _ in model.named_parameters())


def test_aae_game_pulls_the_codes_towards_the_prior():
    """A few hundred steps of the game alone (no reconstruction) move the codes' mean and spread towards N(0, I)."""
    model, objective = _aae(reconstruction_loss_scale=0.0, adversarial_loss_scale=1.0)
    x = binary_images(64, seed=1)
    generator_opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    discriminator_opt = torch.optim.Adam(objective.discriminator_parameters(), lr=3e-3)

    def distance():
        with torch.no_grad():
            codes = model(x, generator=torch.Generator().manual_seed(0)).latents
        return float(codes.mean(0).norm() + (codes.std(0) - 1).abs().sum())

    last = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # codes far from the prior: mean 3, spread e^(−2)
        last.bias[:3] += 3.0
        last.bias[3:] = -4.0
    before = distance()
    for step in range(300):
        loss, _, output = objective.generator_loss(model, {"pixel_values": x}, step)
        d_loss, _ = objective.discriminator_loss({"pixel_values": x}, output, step)
        generator_opt.zero_grad(), discriminator_opt.zero_grad()
        (loss + d_loss).backward()
        generator_opt.step(), discriminator_opt.step()
    assert distance() < 0.5 * before, (before, distance())


def test_aae_needs_a_vector_latent():
    with pytest.raises(ValueError, match="vector latent"):
        AAEConfig(backbone="conv", latent_dim=None, block_out_channels=[8], norm_num_groups=4)
