"""Tiny configurations and example inputs of every family in the table (hf_vae/families.py), in one place.

`tiny_config(name)` builds a config small enough that a forward and backward take milliseconds on one CPU thread;
`example_inputs(config)` the keyword arguments of one forward. Every test that needs "a small model of family X"
takes it from here, and the per-family tests (tests/test_models.py's battery, tests/test_model_battery.py and
transformers' common tests in tests/test_transformers_common.py) are parametrised over the table, so a family added
to the table is tested without further edits once it has an entry in `TINY` below. A family of the table without
an entry fails tests/test_model_battery.py::test_every_family_of_the_table_has_a_tiny_config.
"""

import inspect

import torch

from hf_vae import families

SMALL_CONV = dict(block_out_channels=[16, 32], norm_num_groups=8, latent_channels=4)
SMALL_MLP = dict(hidden_dims=[64], latent_dim=8)

#: what each family's tiny config sets on top of the small backbone above, and under "mlp"/"conv" what it sets with
#: that backbone only. A diffusers twin (fixed conv architecture) and a code prior (no images) take their whole
#: tiny config from here.
TINY = {
    "vae": {},
    "beta_vae": {},
    "vq_vae": dict(num_embeddings=32, embedding_dim=4),
    "cvae": {},
    "klae": dict(block_out_channels=[16, 32], norm_num_groups=8),
    "iwae": {},
    "miwae": {},
    "ciwae": {},
    "piwae": dict(num_bounds=2, num_importance_samples=3),
    "vae_lin_nf": {"latent_dim": 4},  # flows act on vectors: the conv build gets a dense bottleneck
    "vae_iaf": {"latent_dim": 4, "flow_hidden_dims": [8]},
    "svae": {"latent_dim": 4},  # a latent on the sphere is a vector: the conv build gets a dense bottleneck
    "poincare_vae": {"latent_dim": 4},  # a point of the ball is a vector: the conv build gets a dense bottleneck
    "vamp_vae": dict(num_pseudo_inputs=10),  # the default 500 go through the encoder every pass
    "info_vae": {},
    "wae": {},
    "rae": {},
    # the β-TCVAE's and FactorVAE's objectives read a vector latent: with the conv backbone, a dense bottleneck
    "beta_tcvae": dict(dataset_size=100, conv=dict(latent_dim=4)),
    "factor_vae": dict(conv=dict(latent_dim=4)),
    "vq_prior": dict(num_embeddings=16, code_shape=(4, 4), n_embd=32, n_layer=2, n_head=2),
    "ae": {},
    "msssim_vae": {},
    "vae_gan": dict(discriminator_hidden_dims=[8]),
    "aae": dict(discriminator_hidden_dims=[8], conv=dict(latent_dim=4)),  # the discriminator reads a vector
    # min_temperature 1 holds the Gumbel temperature at 1, so that two training passes compute the same gradients
    "hrq_vae": dict(num_embeddings=8, embedding_dim=4, num_quantizers=2, min_temperature=1.0),
    "hvae": dict(num_leapfrog_steps=2, leapfrog_step_size=0.05, learn_leapfrog_step_size=True, learn_beta_zero=True,
                 per_dimension_step_size=True),
    "rhvae": dict(latent_dim=4, num_leapfrog_steps=2, leapfrog_step_size=0.05, metric_hidden_dim=16, metric_capacity=8,
                  num_fixed_point_iterations=2, learn_leapfrog_step_size=True, learn_beta_zero=True),
}

#: every family of the table: the autoencoders, then the priors over another family's codes
FAMILY_NAMES = [*(f.name for f in families.autoencoders()),
                *(name for name in families.names(code_prior=True))]

#: families whose forward needs at least two examples: the MMD (InfoVAE, WAE) and the β-TCVAE's estimate of q(z)
#: are statistics of the batch
BATCH_STATISTIC_FAMILIES = ("info_vae", "wae", "beta_tcvae")

#: names a conditional model may take its condition under, "labels" last: the Trainer takes every argument whose
#: name contains "label" for the targets (issue 22 moves the CVAE's condition to another name, `labels` an alias)
CONDITION_NAMES = ("condition", "conditions", "class_condition", "class_labels", "labels")


def family_classes(name: str):
    """(config class, model class) of a family of the table."""
    family = families.get(name)
    return family.config_class, family.model_class


def is_prior(name: str) -> bool:
    return families.get(name).capabilities.code_prior


def tiny_entry(name: str) -> dict:
    """The family's entry of `TINY`, or one line saying where it is missing."""
    families.get(name)  # an unknown name: the table's own error
    if name not in TINY:
        raise KeyError(f"Expected a tiny config of family {name!r} in tests/support/tiny_models.py's TINY "
                       f"(every family of hf_vae/families.py needs one), got none.")
    return TINY[name]


def tiny_config(name: str, backbone: str = "mlp", in_channels: int = 1, image_size: int = 16, **overrides):
    """A small config of family `name`; `backbone` and the data shape apply to the image autoencoders only (a
    diffusers twin is always convolutional)."""
    entry = tiny_entry(name)
    capabilities = families.get(name).capabilities
    own = {k: v for k, v in entry.items() if k not in ("mlp", "conv")}
    if capabilities.code_prior:
        kwargs = own
    elif capabilities.diffusers_twin:
        kwargs = dict(in_channels=in_channels, out_channels=in_channels, **own, sample_size=image_size)
    else:
        kwargs = dict(in_channels=in_channels, image_size=image_size, backbone=backbone,
                      **(SMALL_CONV if backbone == "conv" else SMALL_MLP))
        kwargs.update(own)
        kwargs.update(entry.get(backbone, {}))
    kwargs.update(overrides)
    return family_classes(name)[0](**kwargs)


def condition_name(function) -> str:
    """The keyword under which `function` (a model's forward, encode or decode) takes a condition."""
    parameters = inspect.signature(function).parameters
    return next((n for n in CONDITION_NAMES if n in parameters), "labels")


def main_input_name(model_class) -> str:
    """The name of `forward`'s first argument: `pixel_values`, or `sample` for a diffusers-shaped forward."""
    return next(iter(list(inspect.signature(model_class.forward).parameters)[1:]))


def example_images(config, batch=4, seed=0, size=None):
    """(images, labels): images in the range the config's likelihood expects; for a conditional family its
    condition (class labels, or condition vectors when the config has no classes), otherwise None."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, *config.data_shape) if size is None else (batch, config.data_shape[0], *size)
    x = torch.rand(shape, generator=g)
    if getattr(config, "likelihood", "bernoulli") != "bernoulli":
        x = x * 2 - 1
    labels = None
    if families.of(config).capabilities.conditional:
        labels = (torch.randint(0, config.num_classes, (batch,), generator=g) if config.num_classes is not None
                  else torch.randn(batch, config.condition_dim, generator=g))
    return x, labels


def example_inputs(config, batch=4, seed=0):
    """Keyword arguments of one forward of the model `config` describes: the images under the name of forward's
    first argument (and the condition of a conditional model, under its name), or a code prior's `codes`."""
    g = torch.Generator().manual_seed(seed)
    family = families.of(config)
    if family.capabilities.code_prior:
        return {"codes": torch.randint(0, config.num_embeddings, (batch, *config.code_shape), generator=g)}
    x, labels = example_images(config, batch, seed)
    inputs = {main_input_name(family.model_class): x}
    if labels is not None:
        inputs[condition_name(family.model_class.forward)] = labels
    return inputs
