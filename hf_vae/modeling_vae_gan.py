"""The VAE-GAN (Larsen et al. 2016, "Autoencoding beyond pixels using a learned similarity metric"; pythae's VAEGAN).

A VAE whose decoder is also a GAN's generator, and whose reconstruction is measured in the features of the GAN's
discriminator D at layer l instead of in pixels (their eqs. 6-9, with pythae's weighting):

    encoder:        KL(q(z|x) ‖ N(0, I)) + L_feature,   L_feature = ½ ‖D_l(x) − D_l(x̃)‖²,  x̃ = Dec(z), z ~ q(z|x)
    decoder:        (1 − γ)·L_feature − γ·L_GAN
    discriminator:  L_GAN = −log D(x) − log(1 − D(Dec(z_p))),   z_p ~ N(0, I)

D has its own optimiser and only shapes the loss, so it belongs to the training loop, not to the published model:
`hf_vae.training.vae_gan.VAEGANObjective` trains it through the trainer's discriminator machinery (checkpointed
with the run). Generating, encoding and reconstructing need only the encoder and decoder, which are the VAE's;
`model(...)` on its own returns the VAE's negative ELBO under the config's pixel likelihood, which is what a
trainer without that objective (transformers' `Trainer`) minimises.
"""

from .configuration_vae_gan import VAEGANConfig
from .modeling_vae import VAEModel


class VAEGANModel(VAEModel):
    config_class = VAEGANConfig
