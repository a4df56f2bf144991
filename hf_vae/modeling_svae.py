"""The hyperspherical VAE (Davidson et al. 2018, "Hyperspherical Variational Auto-Encoders").

    q(z|x) = vMF(μ(x), κ(x)) on S^{m−1},  p(z) = U(S^{m−1}),  loss = E_q[−log p(x|z)] + KL(vMF || U)

Two pieces of the skeleton change: `posterior` (the encoder's m + 1 outputs are a direction, normalised, and a
concentration κ = softplus(·) + 1 as in Davidson et al.'s code, which keeps Wood's sampler away from κ = 0) and
`latent_prior` (the uniform distribution on the sphere; the KL is in closed form, eq. 9). Both densities are with
respect to the sphere's surface measure, so the importance-sampled log p(x) of the base is honest.
"""

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .configuration_svae import SVAEConfig
from .hyperspherical import UniformSpherePrior, VonMisesFisher
from .modeling_base import AutoencoderPreTrainedModel
from .modeling_outputs import AutoencoderOutput


@dataclass
class SVAEOutput(AutoencoderOutput):
    """[`AutoencoderOutput`] with the vMF's parameters: `posterior_mean` is the mean direction μ (B, m) and
    `posterior_concentration` (B,) is κ (`posterior_logvar` is left None: the posterior has no variance parameter).
    """

    posterior_concentration: Optional[torch.FloatTensor] = None


class SVAEModel(AutoencoderPreTrainedModel):
    config_class = SVAEConfig
    output_class = SVAEOutput

    def __init__(self, config: SVAEConfig):
        super().__init__(config)
        self.encoder, self.decoder = self.build_backbone(config.latent_dim + 1)  # direction, then concentration
        self.likelihood = self.build_likelihood()
        self.post_init()

    def posterior(self, encoder_output: torch.Tensor) -> VonMisesFisher:
        direction, raw_concentration = encoder_output[:, :-1], encoder_output[:, -1]
        return VonMisesFisher(F.normalize(direction, dim=-1), F.softplus(raw_concentration) + 1)

    @property
    def latent_prior(self) -> UniformSpherePrior:
        return UniformSpherePrior(self.config.latent_dim)

    def posterior_outputs(self, posterior: VonMisesFisher) -> Dict[str, torch.Tensor]:
        return {"posterior_mean": posterior.loc, "posterior_concentration": posterior.concentration}
