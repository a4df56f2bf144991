"""Configuration of the vanilla VAE (Kingma & Welling 2013)."""

from .configuration_base import AutoencoderConfig


class VAEConfig(AutoencoderConfig):
    r"""A VAE with a diagonal Gaussian posterior, a standard normal prior and the likelihood `likelihood`.

    The loss is the negative ELBO in nats per example. All fields are those of [`AutoencoderConfig`].

    Example:
        >>> from hf_vae import VAEConfig, VAEModel
        >>> model = VAEModel(VAEConfig(in_channels=1, image_size=28, latent_dim=32))
    """

    model_type = "vae"

    # An explicit __init__ keeps this a plain class in transformers >= 5, which otherwise regenerates __init__ for
    # subclasses without one (dropping the parent's fields); it also keeps remote code loading on transformers 4.
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
