"""The vanilla VAE (Kingma & Welling 2013, "Auto-Encoding Variational Bayes").

    q(z|x) = N(μ(x), diag σ²(x)),  p(z) = N(0, I),  p(x|z) from `config.likelihood`
    loss = −ELBO = E_q[−log p(x|z)] + KL(q(z|x) || p(z))

With `config.local_latent_channels` > 0 (the Burgess backbone) z = (z_global, z_local) and
p(z) = N(z_global; 0, I) p(z_local | z_global), a two-level VAE; see `burgess_backbone`.

Everything is the base model's default; this class only builds the networks.
"""

from .configuration_vae import VAEConfig
from .modeling_base import AutoencoderPreTrainedModel


class VAEModel(AutoencoderPreTrainedModel):
    config_class = VAEConfig
    supports_local_latent = True

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        # Gaussian posterior: mean and log-variance for every latent element.
        encoder_out = 2 * (config.latent_dim if config.vector_latent else config.latent_channels)
        self.encoder, self.decoder = self.build_backbone(encoder_out)
        self.likelihood = self.build_likelihood()
        self.post_init()
