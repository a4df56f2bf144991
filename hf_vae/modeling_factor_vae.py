"""The FactorVAE (Kim & Mnih 2018, "Disentangling by Factorising").

The objective is the VAE's plus γ times the total correlation of the aggregate posterior (their eq. 2):

    loss = E_q[−log p(x|z)] + KL(q(z|x) ‖ p(z)) + γ·KL(q(z) ‖ Π_j q(z_j))

The total correlation has no closed form; a discriminator D learns to tell samples of q(z) from samples of
Π_j q(z_j) (each latent dimension shuffled across the batch), and the density-ratio trick gives
TC ≈ E_q(z)[log D(z) / (1 − D(z))] (their eq. 3). D is a second network with its own optimiser, so it belongs to
the training loop, not to the published model: `hf_vae.training.factor_vae.FactorVAEObjective` trains it through
the trainer's discriminator machinery (checkpointed with the run) and adds γ·TC to this model's loss. The model
itself is the VAE: its `forward` returns the negative ELBO, and everything else (sampling, likelihood) is the
VAE's.
"""

from .configuration_factor_vae import FactorVAEConfig
from .modeling_vae import VAEModel


class FactorVAEModel(VAEModel):
    config_class = FactorVAEConfig
    #: its discriminator tells q(z) from the product of its marginals: one vector latent
    supports_local_latent = False

    def __init__(self, config: FactorVAEConfig):
        super().__init__(config)
