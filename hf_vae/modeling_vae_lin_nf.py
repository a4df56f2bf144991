"""The VAE with planar and radial flows (Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows"):
the Gaussian posterior's sample is pushed through the configured sequence of planar and radial steps (flows.py),
whose parameters are shared by all examples; the KL becomes its one-sample estimate at z_K (flow_posterior.py)."""

import torch

from .configuration_vae_lin_nf import VAELinNFConfig
from .flow_posterior import FlowPosteriorVAEModel
from .flows import FlowSequence, PlanarFlow, RadialFlow

_STEPS = {"planar": PlanarFlow, "radial": RadialFlow}


class VAELinNFModel(FlowPosteriorVAEModel):
    config_class = VAELinNFConfig

    def __init__(self, config: VAELinNFConfig):
        super().__init__(config)

    def build_flow(self) -> torch.nn.Module:
        return FlowSequence([_STEPS[kind](self.config.latent_dim) for kind in self.config.flows])
