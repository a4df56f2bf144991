"""The "burgess" backbone: Burgess et al. (2018)'s β-VAE network, checked against the paper's layer list."""

import pytest
import torch

import hf_vae

PAPER = dict(in_channels=1, image_size=64, backbone="burgess", block_out_channels=[32, 32, 32, 32],
             hidden_dims=[256, 256], latent_dim=10)


def test_layers_and_parameter_count_are_those_of_the_paper():
    # Burgess et al. 2018, appendix A.1: 4 convs 32x4x4 stride 2 (64 -> 4), FC 256, FC 256, FC 2x10; decoder the
    # transpose. Parameters counted by hand from that list.
    conv = lambda c_in, c_out: c_in * c_out * 16 + c_out  # noqa: E731
    fc = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731
    encoder = conv(1, 32) + 3 * conv(32, 32) + fc(32 * 4 * 4, 256) + fc(256, 256) + fc(256, 2 * 10)
    decoder = fc(10, 256) + fc(256, 256) + fc(256, 32 * 4 * 4) + 3 * conv(32, 32) + (32 * 1 * 16 + 1)
    model = hf_vae.BetaVAEModel(hf_vae.BetaVAEConfig(**PAPER))
    assert sum(p.numel() for p in model.parameters()) == encoder + decoder == 502005
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(m.kernel_size, m.stride, m.out_channels) for m in convs] == [((4, 4), (2, 2), 32)] * 4
    assert model.config.act_fn == "relu" and model.config.downsampling_factor == 16 and model.config.vector_latent


def test_he_initialisation_keeps_the_signal_through_the_relu_stack(tmp_path):
    # He et al. (2015): weights N(0, 2 / fan_in), zero biases, so that the activations' second moment neither
    # shrinks nor grows from layer to layer. PyTorch's default (variance 1 / (3 fan_in)) shrinks it about 6x per
    # ReLU layer; the decoder's logits would then be nearly constant at the start of training.
    torch.manual_seed(0)
    model = hf_vae.VAEModel(hf_vae.VAEConfig(**PAPER))
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(layers) == 14 and all(getattr(m, "he_init", False) for m in layers)
    for m in layers:
        w = m.weight
        if isinstance(m, torch.nn.ConvTranspose2d):  # (in, out, k, k), initialised on in * k * k (see _init_weights)
            fan_in = w.shape[0] * w.shape[2] * w.shape[3]
        else:
            fan_in = w[0].numel()
        assert abs(w.std().item() / (2.0 / fan_in) ** 0.5 - 1) < 0.1, (m, w.std().item(), (2.0 / fan_in) ** 0.5)
        assert torch.count_nonzero(m.bias) == 0
    # The signal through the encoder's convs keeps its scale (the default init would shrink it ~6**4-fold in
    # second moment).
    x = (torch.rand(64, 1, 64, 64) < 0.5).float()
    h = model.encoder.convs(x)
    assert 0.2 < (h ** 2).mean().item() / (x ** 2).mean().item() < 5
    # Loading a checkpoint keeps its weights: the initialisation runs on new models only.
    model.save_pretrained(tmp_path)
    loaded = hf_vae.VAEModel.from_pretrained(tmp_path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_shapes_through_encoder_decoder_and_stacks_of_samples():
    model = hf_vae.VAEModel(hf_vae.VAEConfig(**PAPER)).eval()
    x = (torch.rand(3, 1, 64, 64) > 0.7).float()
    out = model(x)
    assert out.reconstruction.shape == x.shape and torch.isfinite(out.loss)
    z = torch.randn(5, 3, 10)  # (K, B, D): K importance samples decode as one batch
    stacked = model.decoder(z)
    assert stacked.shape == (5, 3, 1, 64, 64)
    torch.testing.assert_close(stacked[2], model.decoder(z[2]))
    assert model.log_likelihood(x, num_samples=4).shape == (3,)


def test_cvae_on_the_burgess_backbone_conditions_both_networks():
    config = hf_vae.CVAEConfig(**dict(PAPER, image_size=32, block_out_channels=[16, 16]), num_classes=3)
    model = hf_vae.CVAEModel(config).eval()
    samples = model.generate(6, labels=torch.tensor([0, 1, 2, 0, 1, 2]), generator=torch.Generator().manual_seed(0))
    assert samples.shape == (6, 1, 32, 32)
    z = torch.zeros(1, 10)
    a, b = (model.decoder(z, model.embed_condition(torch.tensor([c]), 1)) for c in (0, 2))
    assert not torch.allclose(a, b)  # the class changes the decoded image
    # A stack of K latents (K, B, D) with the batch's condition (B, c) decodes as K batches with that condition.
    condition = model.embed_condition(torch.tensor([0, 2]), 2)
    stack = torch.randn(3, 2, 10)
    decoded = model.decoder(stack, condition)
    assert decoded.shape == (3, 2, 1, 32, 32)
    for k in range(3):
        assert torch.allclose(decoded[k], model.decoder(stack[k], condition), atol=1e-6)


def test_bad_burgess_configs_are_clear_errors():
    with pytest.raises(ValueError, match=r"divisible by 2\^len\(block_out_channels\) = 16.*image_size=28"):
        hf_vae.VAEConfig(**dict(PAPER, image_size=28))
    with pytest.raises(ValueError, match="burgess backbone needs images"):
        hf_vae.VAEConfig(**dict(PAPER, image_size=None))
