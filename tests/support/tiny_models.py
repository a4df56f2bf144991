"""Tiny configurations and example inputs of every registered family, in one place.

`tiny_config(name)` builds a config small enough that a forward and backward take milliseconds on one CPU thread;
`example_inputs(config)` the keyword arguments of one forward. Every test that needs "a small model of family X"
takes it from here, so that a family registered in `hf_vae.MODELS` or `hf_vae.PRIORS` is covered by the model
battery (tests/test_model_battery.py) and transformers' common tests (tests/test_transformers_common.py) without
further edits, as long as it builds from these defaults.
"""

import inspect

import torch

import hf_vae
from hf_vae import KLAEConfig, VQPriorConfig

SMALL_CONV = dict(block_out_channels=[16, 32], norm_num_groups=8, latent_channels=4)
SMALL_MLP = dict(hidden_dims=[64], latent_dim=8)

#: every registered family: the autoencoders, then the priors
FAMILY_NAMES = [*hf_vae.MODELS, *hf_vae.PRIORS]

#: families whose objective reads a vector latent: with the conv backbone they need a dense bottleneck
VECTOR_LATENT_ONLY = ("beta_tcvae", "factor_vae")

#: families whose forward needs at least two examples: the MMD (InfoVAE, WAE) and the β-TCVAE's estimate of q(z)
#: are statistics of the batch
BATCH_STATISTIC_FAMILIES = ("info_vae", "wae", "beta_tcvae")

#: names a conditional model may take its condition under, "labels" last: the Trainer takes every argument whose
#: name contains "label" for the targets (issue 22 moves the CVAE's condition to another name, `labels` an alias)
CONDITION_NAMES = ("condition", "conditions", "class_condition", "class_labels", "labels")


def family_classes(name: str):
    """(config class, model class) of a registered family."""
    return hf_vae.MODELS[name] if name in hf_vae.MODELS else hf_vae.PRIORS[name]


def is_prior(name: str) -> bool:
    return name in hf_vae.PRIORS


def tiny_config(name: str, backbone: str = "mlp", in_channels: int = 1, image_size: int = 16, **overrides):
    """A small config of family `name`; `backbone` and the data shape apply to the autoencoders only."""
    if name == "vq_prior":
        kwargs = dict(num_embeddings=16, code_shape=(4, 4), n_embd=32, n_layer=2, n_head=2)
        kwargs.update(overrides)
        return VQPriorConfig(**kwargs)
    if name == "klae":
        return KLAEConfig(in_channels=in_channels, out_channels=in_channels, block_out_channels=[16, 32],
                          norm_num_groups=8, sample_size=image_size, **overrides)
    config_class = family_classes(name)[0]
    kwargs = dict(in_channels=in_channels, image_size=image_size, backbone=backbone,
                  **(SMALL_CONV if backbone == "conv" else SMALL_MLP))
    if name == "vq_vae":
        kwargs.update(num_embeddings=32, embedding_dim=4)
        if backbone == "conv":
            kwargs.pop("latent_channels")
    if name == "beta_tcvae":
        kwargs["dataset_size"] = 100
    if backbone == "conv" and name in VECTOR_LATENT_ONLY:
        kwargs["latent_dim"] = 4
    kwargs.update(overrides)
    return config_class(**kwargs)


def condition_name(function) -> str:
    """The keyword under which `function` (a model's forward, encode or decode) takes a condition."""
    parameters = inspect.signature(function).parameters
    return next((n for n in CONDITION_NAMES if n in parameters), "labels")


def main_input_name(model_class) -> str:
    """The name of `forward`'s first argument: `pixel_values`, or `sample` for a diffusers-shaped forward."""
    return next(iter(list(inspect.signature(model_class.forward).parameters)[1:]))


def example_images(config, batch=4, seed=0, size=None):
    """(images, labels): images in the range the config's likelihood expects; class labels for the CVAE only."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, *config.data_shape) if size is None else (batch, config.data_shape[0], *size)
    x = torch.rand(shape, generator=g)
    if getattr(config, "likelihood", "bernoulli") != "bernoulli":
        x = x * 2 - 1
    labels = torch.randint(0, 10, (batch,), generator=g) if config.model_type == "cvae" else None
    return x, labels


def example_inputs(config, batch=4, seed=0):
    """Keyword arguments of one forward of the model `config` describes: the images under the name of forward's
    first argument (and the condition of a conditional model, under its name), or the VQ prior's `codes`."""
    g = torch.Generator().manual_seed(seed)
    if config.model_type == "vq_prior":
        return {"codes": torch.randint(0, config.num_embeddings, (batch, *config.code_shape), generator=g)}
    model_class = next(m for c, m in (*hf_vae.MODELS.values(), *hf_vae.PRIORS.values())
                       if c.model_type == config.model_type)
    x, labels = example_images(config, batch, seed)
    inputs = {main_input_name(model_class): x}
    if labels is not None:
        inputs[condition_name(model_class.forward)] = labels
    return inputs
