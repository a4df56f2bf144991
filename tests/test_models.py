"""Every family of the table: shapes, the loss and its gradients, generation and reconstruction, save/load and
remote code; then the first five families' objectives, checkpointing and bad input."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel

try:
    from tests.support.scripts import same_threads
except ImportError:  # `tests` not importable as a package: pytest put tests/ itself on sys.path
    from support.scripts import same_threads

import hf_vae
from hf_vae.distributions import DiagonalGaussianDistribution
from hf_vae import (
    BetaVAEConfig,
    BetaVAEModel,
    CVAEConfig,
    CVAEModel,
    KLAEConfig,
    KLAEModel,
    VAEConfig,
    VAEModel,
    VQVAEConfig,
    VQVAEModel,
)

try:
    from tests.support.tiny_models import condition_name, tiny_config
    from tests.support.tiny_models import example_images as example_inputs
except ImportError:  # `tests` not importable as a package: pytest put tests/ itself on sys.path
    from support.tiny_models import condition_name, tiny_config
    from support.tiny_models import example_images as example_inputs


def backbones(family):
    """The backbones a family is built with here: a diffusers twin has its own (convolutional) architecture."""
    return ("conv",) if family.capabilities.diffusers_twin else ("mlp", "conv")


#: every autoencoder of the table with each backbone it takes (a family added to the table is covered here; the
#: model battery, tests/test_model_battery.py, covers every family, the code prior included)
AUTOENCODERS = [(family.name, backbone) for family in hf_vae.families.autoencoders() for backbone in backbones(family)]


# ---- shapes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,backbone", AUTOENCODERS)
@pytest.mark.parametrize("in_channels,image_size", [(1, 16), (3, 8)])
def test_forward_shapes_and_loss_terms(name, backbone, in_channels, image_size):
    """The basic battery of every family: forward, the loss and its gradients, generate and reconstruct."""
    config = tiny_config(name, backbone, in_channels, image_size)
    model = AutoModel.from_config(config)
    family = hf_vae.families.get(name)
    assert type(model) is family.model_class
    x, labels = example_inputs(config)
    out = model(pixel_values=x, labels=labels, return_loss=True)
    assert out.reconstruction.shape == x.shape
    assert out.loss.shape == ()
    # the negative ELBO is reconstruction + regularisation; a K-sample importance-weighted bound (IWAE, MIWAE, and
    # CIWAE's mix of it with the ELBO) is tighter: -log mean_k w_k <= -mean_k log w_k by Jensen's inequality
    # (Burda et al. 2016, Theorem 1)
    terms = out.reconstruction_loss + out.regularisation_loss
    if getattr(config, "num_importance_samples", 1) > 1:
        assert out.loss <= terms + 1e-5 * terms.abs(), (out.loss, terms)
    else:
        torch.testing.assert_close(out.loss, terms)
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "class_embedding" not in n)
    condition = {condition_name(model.generate): 3} if family.capabilities.conditional else {}
    assert model.generate(5, generator=torch.Generator().manual_seed(0), **condition).shape == (5, *x.shape[1:])
    assert model.reconstruct(x, labels=labels).shape == x.shape


@pytest.mark.parametrize("name", ["vae", "vq_vae", "klae"])
def test_spatial_conv_latents_accept_any_size_the_downsampling_divides(name):
    model = AutoModel.from_config(tiny_config(name, "conv", image_size=16))
    x, _ = example_inputs(model.config, size=(8, 24))
    out = model(pixel_values=x)
    assert out.reconstruction.shape == x.shape
    assert out.latents.shape[-2:] == (4, 12)
    with pytest.raises(ValueError, match="divisible by the down-sampling factor 2"):
        model(pixel_values=example_inputs(model.config, size=(9, 24))[0])


def test_flat_data_with_the_mlp_backbone():
    model = VAEModel(VAEConfig(in_channels=10, image_size=None, hidden_dims=[32], latent_dim=3, likelihood="gaussian"))
    x = torch.randn(6, 10)
    out = model(pixel_values=x)
    assert out.reconstruction.shape == (6, 10) and out.latents.shape == (6, 3)
    assert model.log_likelihood(x, num_samples=4).shape == (6,)
    with pytest.raises(ValueError, match=r"\(B, D\) = \(B, 10\)"):
        model(pixel_values=torch.randn(6, 1, 10))


def test_conv_vector_latent_is_a_dense_bottleneck():
    model = BetaVAEModel(tiny_config("beta_vae", "conv", latent_dim=6))
    x, _ = example_inputs(model.config)
    assert model(pixel_values=x).latents.shape == (4, 6)
    assert model.latent_shape == (6,)


# ---- objectives ---------------------------------------------------------------------------------------


def test_vae_loss_is_the_negative_elbo_in_nats_per_example():
    model = VAEModel(tiny_config("vae"))
    x, _ = example_inputs(model.config)
    out = model(pixel_values=x, generator=torch.Generator().manual_seed(1))
    posterior = DiagonalGaussianDistribution(mean=out.posterior_mean, logvar=out.posterior_logvar)
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(1))
    logits = model.decoder(z)
    # Independent computation: summed Bernoulli log-likelihood and closed-form KL, averaged over the batch.
    log_px = (x * torch.nn.functional.logsigmoid(logits) + (1 - x) * torch.nn.functional.logsigmoid(-logits)).flatten(1).sum(1)
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1 - posterior.logvar).sum(1)
    torch.testing.assert_close(out.loss, (-log_px + kl).mean())
    torch.testing.assert_close(out.kl, kl.mean())


def test_gaussian_likelihood_sums_over_pixels_instead_of_averaging():
    model = VAEModel(tiny_config("vae", likelihood="gaussian", likelihood_scale=0.5))
    x, _ = example_inputs(model.config)
    out = model(pixel_values=x, sample_posterior=False)
    mean = out.reconstruction
    expected = (0.5 * (x - mean).pow(2) / 0.25 + math.log(0.5) + 0.5 * math.log(2 * math.pi)).flatten(1).sum(1).mean()
    torch.testing.assert_close(out.reconstruction_loss, expected)


def test_iwae_bound_is_above_the_elbo_and_tightens_with_k():
    torch.manual_seed(0)
    model = VAEModel(tiny_config("vae", hidden_dims=[32], latent_dim=4))
    x, _ = example_inputs(model.config, batch=16)
    x = x.round()
    # A few steps of training make the decoder depend on z, so that the ELBO's gap (KL from q to the true
    # posterior) is large enough to see the bound tighten.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        model(pixel_values=x).loss.backward()
        optimizer.step()
    model.eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        elbo = torch.stack([-model(pixel_values=x, generator=g).loss for _ in range(200)]).mean()
    k1 = model.log_likelihood(x, num_samples=1, generator=torch.Generator().manual_seed(1))
    bounds = {k: model.log_likelihood(x, num_samples=k, generator=torch.Generator().manual_seed(2)).mean()
              for k in (10, 100, 1000)}
    # K = 1 is an unbiased estimate of the ELBO; larger K gives a tighter (larger) bound on log p(x).
    assert abs(float(k1.mean() - elbo)) < 3.0
    assert elbo < bounds[10] < bounds[100] < bounds[1000]
    # Chunking the importance samples does not change the estimate.
    a = model.log_likelihood(x, num_samples=30, chunk_size=7, generator=torch.Generator().manual_seed(3))
    b = model.log_likelihood(x, num_samples=30, chunk_size=30, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_iwae_is_exact_for_a_linear_gaussian_model():
    # With a linear decoder and Gaussian likelihood, p(x) is Gaussian in closed form: N(b, WWᵀ + σ²I).
    torch.manual_seed(0)
    config = VAEConfig(in_channels=3, image_size=None, hidden_dims=[8], latent_dim=2, likelihood="gaussian",
                       likelihood_scale=0.5)
    model = VAEModel(config).eval()
    model.decoder.net = torch.nn.Sequential(torch.nn.Linear(2, 3))
    w, b = model.decoder.net[0].weight.detach(), model.decoder.net[0].bias.detach()
    x = torch.randn(5, 3)
    exact = torch.distributions.MultivariateNormal(b, w @ w.t() + 0.25 * torch.eye(3)).log_prob(x)
    estimate = model.log_likelihood(x, num_samples=20000, chunk_size=5000, generator=torch.Generator().manual_seed(0))
    assert torch.all(estimate <= exact + 0.05) and torch.all(estimate > exact - 0.5), (estimate, exact)


def test_beta_vae_weights_the_kl_and_the_capacity_schedule():
    config = tiny_config("beta_vae", beta=4.0)
    model = BetaVAEModel(config)
    x, _ = example_inputs(config)
    out = model(pixel_values=x)
    torch.testing.assert_close(out.regularisation_loss, 4.0 * out.kl)

    capacity = BetaVAEModel(tiny_config("beta_vae", use_capacity=True, gamma=10.0, capacity_max=20.0,
                                        capacity_steps=100))
    for step, expected_c in [(0, 0.0), (50, 10.0), (100, 20.0), (500, 20.0)]:
        capacity.set_training_step(step)
        assert capacity.capacity == pytest.approx(expected_c)
        out = capacity(pixel_values=x)
        torch.testing.assert_close(out.regularisation_loss, 10.0 * (out.kl - expected_c).abs())
    assert int(capacity.state_dict()["training_step"]) == 500  # checkpointed with the weights


def test_cvae_conditions_encoder_and_decoder():
    for backbone in ("mlp", "conv"):
        model = CVAEModel(tiny_config("cvae", backbone)).eval()
        g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        zero, seven = model.generate(2, labels=0, generator=g()), model.generate(2, labels=7, generator=g())
        assert not torch.allclose(zero, seven)
        assert torch.equal(zero, model.generate(2, labels=torch.tensor([0, 0]), generator=g()))
        x, labels = example_inputs(model.config)
        posterior_a = model.encode(x, labels=labels).latent_dist.mean
        posterior_b = model.encode(x, labels=(labels + 1) % 10).latent_dist.mean
        assert not torch.allclose(posterior_a, posterior_b)


def test_cvae_with_condition_vectors():
    model = CVAEModel(tiny_config("cvae", condition_dim=3))
    assert model.config.num_classes is None
    x, _ = example_inputs(model.config)
    assert model(pixel_values=x, labels=torch.randn(4, 3)).reconstruction.shape == x.shape
    with pytest.raises(ValueError, match=r"float condition vectors of shape \(4, 3\)"):
        model(pixel_values=x, labels=torch.randint(0, 3, (4,)))


def test_vq_vae_codes_round_trip_and_decode_quantises():
    model = VQVAEModel(tiny_config("vq_vae", "conv")).eval()
    x, _ = example_inputs(model.config)
    out = model(pixel_values=x)
    indices = model.encode_to_indices(x)
    assert indices.shape == (4, 8, 8) and torch.equal(indices, out.indices)
    torch.testing.assert_close(model.decode_indices(indices), model.reconstruct(x))
    z_e = model.encode(x).latent_dist.latents
    torch.testing.assert_close(model.decode(z_e).sample, model.reconstruct(x))  # diffusers VQModel contract
    assert 0 < float(out.codebook_usage) <= 1 and 1 <= float(out.perplexity) <= 32
    with pytest.raises(ValueError, match=r"code indices in \[0, 32\)"):
        model.decode_indices(torch.full((1, 8, 8), 32))


def test_klae_follows_diffusers_interface_and_latent_diffusion_loss():
    model = KLAEModel(tiny_config("klae", image_size=16, kl_weight=1e-3))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    posterior = model.encode(x).latent_dist
    assert posterior.sample(generator=torch.Generator().manual_seed(0)).shape == (2, 4, 8, 8)
    (posterior_tuple,) = model.encode(x, return_dict=False)
    torch.testing.assert_close(posterior_tuple.mean, posterior.mode())
    decoded = model.decode(posterior.mode()).sample
    assert model.decode(posterior.mode(), return_dict=False)[0].shape == decoded.shape == x.shape
    out = model(pixel_values=x, sample_posterior=False, return_loss=True)
    expected = (x - decoded).abs().flatten(1).sum(1).mean() + 1e-3 * posterior.kl().mean()
    torch.testing.assert_close(out.loss, expected)
    assert set(k.split(".")[0] for k in model.state_dict()) == {"encoder", "decoder", "quant_conv", "post_quant_conv"}


# ---- save / load --------------------------------------------------------------------------------------


def _outputs(model, config):
    model.eval()
    x, labels = example_inputs(config, seed=7)
    kwargs = {"labels": 2} if config.model_type == "cvae" else {}
    return {
        "reconstruction": model.reconstruct(x, labels=labels),
        "forward": model(pixel_values=x, labels=labels, generator=torch.Generator().manual_seed(0)).reconstruction,
        "samples": model.generate(3, generator=torch.Generator().manual_seed(0), **kwargs),
    }


@pytest.mark.parametrize("name,backbone", AUTOENCODERS)
def test_save_pretrained_and_auto_model_round_trip(tmp_path, name, backbone):
    config = tiny_config(name, backbone)
    model = AutoModel.from_config(config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == config.model_type and "AutoModel" in saved["auto_map"]
    assert type(AutoConfig.from_pretrained(tmp_path)) is type(config)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    expected, actual = _outputs(model, config), _outputs(loaded, config)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


# a fresh interpreter loads every family's remote code; fast siblings:
# test_model_code_imports_only_the_standard_library_torch_and_transformers (every family) and
# test_a_remote_code_model_behaves_like_the_installed_class
@pytest.mark.slow
def test_trust_remote_code_loads_every_family_without_hf_vae_or_diffusers(tmp_path):
    """A fresh interpreter that can import neither hf_vae nor diffusers (an optional dependency) loads each
    checkpoint from its copied model code: transformers refuses remote code whose files import a module that is
    not installed, outside a try block, at any depth."""
    cases = {}
    # every family's modeling file travels with its conv build; the MLP backbone's file with the VAE's
    configs = {f"{name}-{backbone}": tiny_config(name, backbone) for name, backbone in AUTOENCODERS
               if backbone == "conv" or name == "vae"}
    # the no-argument run's kind of model: the Burgess network with a local latent under the global one
    configs["vae-two-level"] = hf_vae.VAEConfig(in_channels=1, image_size=32, backbone="burgess",
                                                block_out_channels=[8, 8, 8], hidden_dims=[16], latent_dim=4,
                                                local_latent_channels=1)
    for name, config in configs.items():
        model = AutoModel.from_config(config)
        path = tmp_path / name
        model.save_pretrained(path)
        x, labels = example_inputs(config, seed=7)
        tensors = {"x": x, "expected": model.eval().reconstruct(x, labels=labels)}
        if labels is not None:
            tensors["labels"] = labels
        save_file(tensors, path / "expected.safetensors")
        cases[str(path)] = type(model).__name__
    script = textwrap.dedent(f"""
        import sys
        class BlockHfVaeAndDiffusers:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("hf_vae", "diffusers"):
                    raise ImportError(f"{{name}} is not installed in this environment")
        sys.meta_path.insert(0, BlockHfVaeAndDiffusers())
        for module in ("hf_vae", "diffusers"):
            try:
                __import__(module)
                raise SystemExit(f"{{module}} should not be importable here")
            except ImportError:
                pass
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel
        for path, class_name in {cases!r}.items():
            model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
            assert type(model).__name__ == class_name, type(model)
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            t = load_file(path + "/expected.safetensors")
            out = model.reconstruct(t["x"], labels=t.get("labels"))
            assert torch.equal(out, t["expected"]), path
        assert not [name for name in sys.modules if name.split(".")[0] in ("hf_vae", "diffusers")]
        print("remote-code-ok", len({cases!r}))
    """)
    env = same_threads(dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home")))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"remote-code-ok {len(cases)}" in result.stdout


@pytest.mark.parametrize("name", list(hf_vae.families.FAMILIES))
def test_model_code_imports_only_the_standard_library_torch_and_transformers(name):
    """trust_remote_code copies a family's configuration and modeling files with their relative imports, and a user
    has only torch and transformers (with transformers' own requirement safetensors) beside them. The imports are
    read as transformers reads them before it runs remote code: at any depth, except inside a try block (an
    optional dependency, such as diffusers in `KLAEModel.to_diffusers`)."""
    from transformers.dynamic_module_utils import get_imports, get_relative_import_files

    family = hf_vae.families.get(name)
    allowed = set(sys.stdlib_module_names) | {"torch", "transformers", "safetensors"}
    for cls in (family.config_class, family.model_class):
        top = sys.modules[cls.__module__].__file__
        for path in [top, *get_relative_import_files(top)]:
            extra = sorted(set(get_imports(path)) - allowed)
            assert not extra, f"{os.path.basename(path)} (remote code of {name}) imports {extra}"


def test_a_remote_code_model_behaves_like_the_installed_class(tmp_path):
    """transformers mixes GenerationMixin into remote classes that define `generate`; that must change nothing:
    no generation_config, no custom_generate probe, the same files written by save_pretrained, the same outputs.
    Neither hf_vae nor diffusers (optional) can be imported there."""
    installed = {}
    for name in ("vae", "klae"):
        model = AutoModel.from_config(tiny_config(name, "conv"))
        path = tmp_path / name
        model.save_pretrained(path)
        model.save_pretrained(tmp_path / f"{name}-resaved")
        x, _ = example_inputs(model.config, seed=3)
        save_file({"x": x, "expected": model.eval().reconstruct(x)}, tmp_path / f"{name}.safetensors")
        assert not model.can_generate() and not hasattr(model, "generation_config")
        installed[str(path)] = sorted(p.name for p in (tmp_path / f"{name}-resaved").iterdir())
    script = textwrap.dedent(f"""
        import filecmp, os, sys
        class BlockHfVaeAndDiffusers:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("hf_vae", "diffusers"):
                    raise ImportError(f"{{name}} is not installed in this environment")
        sys.meta_path.insert(0, BlockHfVaeAndDiffusers())
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel
        from transformers.generation import GenerationMixin

        def no_probe(*args, **kwargs):
            raise AssertionError("from_pretrained looked for generation files (custom_generate/generate.py)")
        GenerationMixin.adjust_generation_fn = no_probe
        for path, files in {installed!r}.items():
            model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            assert model.can_generate() is False and not hasattr(model, "generation_config")
            t = load_file(path + ".safetensors")
            assert torch.equal(model.reconstruct(t["x"]), t["expected"]), path
            assert model.generate(2, generator=torch.Generator().manual_seed(0)).shape[0] == 2  # ours, not GenerationMixin's
            model.save_pretrained(path + "-remote")
            written = sorted(os.listdir(path + "-remote"))
            assert written == files, (written, files)
            for name in written:
                assert filecmp.cmp(os.path.join(path + "-remote", name), os.path.join(path + "-resaved", name),
                                   shallow=False), name
        assert not [name for name in sys.modules if name.split(".")[0] in ("hf_vae", "diffusers")]
        print("remote-like-installed-ok")
    """)
    env = same_threads(dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home")))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "remote-like-installed-ok" in result.stdout


# ---- generation, checkpointing, training ------------------------------------------------------------


@pytest.mark.parametrize("name", ["vae", "vq_vae", "klae"])
def test_seeded_generation_is_reproducible(name):
    model = AutoModel.from_config(tiny_config(name, "conv")).eval()
    a = model.generate(4, generator=torch.Generator().manual_seed(0))
    b = model.generate(4, generator=torch.Generator().manual_seed(0))
    c = model.generate(4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", ["vae", "klae"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_config(name, "conv", in_channels=3, dropout=0.0) if name != "klae"
                                  else tiny_config(name, in_channels=3))
    x, _ = example_inputs(model.config)

    def grads():
        model.zero_grad()
        model(pixel_values=x, generator=torch.Generator().manual_seed(0), return_loss=True).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    reference = grads()
    calls = []  # a layer inside a checkpointed block: the block's own hooks run outside the checkpoint
    encoder = model.encoder if name == "klae" else model.encoder.body
    handle = encoder.down_blocks[0].resnets[0].register_forward_pre_hook(lambda *a: calls.append(1))
    model.activation_checkpointing_enable()
    assert model.is_gradient_checkpointing
    checkpointed = grads()
    handle.remove()
    assert len(calls) == 2  # the block ran again during backward: checkpointing is really on
    for key in reference:
        torch.testing.assert_close(checkpointed[key], reference[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,backbone", [("vae", "mlp"), ("vq_vae", "conv"), ("klae", "conv")])
def test_a_few_training_steps_reduce_the_loss(name, backbone):
    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_config(name, backbone)).train()
    x, labels = example_inputs(model.config, batch=16)
    # Blocky binary images: learnable structure, unlike uniform noise.
    x = torch.nn.functional.interpolate(x[..., ::4, ::4], scale_factor=4.0).round()
    x = x if model.config.likelihood == "bernoulli" else x.clamp(min=0) * 2 - 1  # {-1, 1}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = model(pixel_values=x, labels=labels, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert max(losses[-3:]) < 0.9 * losses[0], losses


# ---- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad,match", [
    (lambda: torch.rand(4, 16, 16), r"shape \(B, C, H, W\) = \(B, 1, 16, 16\), got shape \(4, 16, 16\)"),
    (lambda: torch.rand(4, 3, 16, 16), r"Expected 1 channels at dim 1"),
    (lambda: torch.rand(4, 1, 12, 12), r"Expected images of size 16x16 .* got 12x12"),
    (lambda: torch.full((4, 1, 16, 16), float("nan")), "Expected finite"),
    (lambda: torch.randint(0, 255, (4, 1, 16, 16), dtype=torch.uint8), "Expected floating-point"),
    (lambda: torch.rand(4, 1, 16, 16) * 2, r"Expected `pixel_values` in \[0.0, 1.0\] for the bernoulli"),
    (lambda: [[0.0]], "Expected `pixel_values` to be a torch.Tensor"),
])
def test_bad_pixel_values_are_clear_errors(bad, match):
    model = VAEModel(tiny_config("vae"))
    with pytest.raises(ValueError, match=match):
        model(pixel_values=bad())


@pytest.mark.parametrize("labels,match", [
    (None, r"needs `labels`: expected class indices in \[0, 10\), got None"),
    (torch.tensor([0, 1, 2, 10]), r"class labels in \[0, 10\), got values in \[0, 10\]"),
    (torch.tensor([0, 1, -1, 3]), r"got values in \[-1, 3\]"),
    (torch.tensor([0, 1]), r"labels of shape \(4,\), got \(2,\)"),
    (torch.rand(4), "integer class labels"),
])
def test_bad_labels_are_clear_errors(labels, match):
    model = CVAEModel(tiny_config("cvae"))
    x, _ = example_inputs(model.config)
    with pytest.raises(ValueError, match=match):
        model(pixel_values=x, labels=labels)
    if labels is None:
        with pytest.raises(ValueError, match="needs `labels`"):
            model.generate(2)


@pytest.mark.parametrize("make,match", [
    (lambda: VAEConfig(backbone="transformer"), r"`backbone` in \('mlp', 'conv', 'burgess'\), got 'transformer'"),
    (lambda: VAEConfig(likelihood="poisson"), "`likelihood` in"),
    (lambda: VAEConfig(backbone="conv", block_out_channels=[12, 32], norm_num_groups=8), r"\[12\] are not"),
    (lambda: VAEConfig(backbone="conv", image_size=30, block_out_channels=[8, 8, 8]), "divisible by the down-sampling factor 4"),
    (lambda: VAEConfig(latent_dim=0), "`latent_dim` to be a positive int, got 0"),
    (lambda: VAEConfig(backbone="conv", image_size=None), "conv backbone needs images"),
    (lambda: BetaVAEConfig(beta=-1.0), "`beta` to be a finite number >= 0, got -1.0"),
    (lambda: VQVAEConfig(backbone="conv", latent_dim=8), "spatial codes"),
    (lambda: VQVAEConfig(latent_dim=30, embedding_dim=4), "divisible by `embedding_dim`"),
    (lambda: CVAEConfig(num_classes=3, condition_dim=4), "exactly one of `num_classes` and `condition_dim`"),
    (lambda: KLAEConfig(block_out_channels=[48], norm_num_groups=32), r"\[48\] are not"),
    (lambda: KLAEConfig(latents_mean=[0.0, 1.0]), "latents_mean"),
])
def test_bad_configs_are_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_latents_are_clear_errors():
    model = VAEModel(tiny_config("vae"))
    with pytest.raises(ValueError, match=r"latents of shape \(B, 8\), got \(2, 9\)"):
        model.decode(torch.randn(2, 9))
    with pytest.raises(ValueError, match="positive int `num_samples`"):
        model.generate(0)
