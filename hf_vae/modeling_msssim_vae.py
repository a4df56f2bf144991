"""The MS-SSIM VAE (Snell et al. 2017, "Learning to Generate Images with Perceptual Similarity Metrics"; pythae's
MSSSIM_VAE): a VAE whose reconstruction term is a perceptual distance instead of a log-likelihood,

    loss = (1 − MS-SSIM(E[x|z], x)) + β·KL(q(z|x) ‖ N(0, I)),    z ~ q(z|x)

(hf_vae.msssim). Only the likelihood is swapped, through `build_likelihood`; the posterior, the prior, sampling
and the step are the VAE's. 1 − MS-SSIM is no density, so `log_likelihood` refuses (the likelihood is marked
un-normalised).
"""

from typing import Dict, Tuple

import torch

from .configuration_msssim_vae import MSSSIMVAEConfig
from .modeling_vae import VAEModel
from .msssim import MSSSIMLoss


class MSSSIMVAEModel(VAEModel):
    config_class = MSSSIMVAEConfig

    def build_likelihood(self) -> MSSSIMLoss:
        config = self.config
        return MSSSIMLoss(super().build_likelihood(), config.window_size, config.normalize)

    def regularisation_loss(self, posterior, latents) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        kl = self.kl_divergence(posterior, latents)
        return self.config.beta * kl, {"kl": kl.mean()}
