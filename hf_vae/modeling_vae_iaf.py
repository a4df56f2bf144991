"""The VAE with inverse autoregressive flows (Kingma et al. 2016, "Improved Variational Inference with Inverse
Autoregressive Flow"): the Gaussian posterior's sample is pushed through `num_flows` IAF steps (flows.py), whose
autoregressive orders alternate; the KL becomes its one-sample estimate at z_K (flow_posterior.py). With
`flow_context_dim` > 0 the encoder also outputs a context h that every step reads (their sec. 4)."""

import torch

from .configuration_vae_iaf import VAEIAFConfig
from .flow_posterior import FlowPosteriorVAEModel
from .flows import build_flow


class VAEIAFModel(FlowPosteriorVAEModel):
    config_class = VAEIAFConfig

    def __init__(self, config: VAEIAFConfig):
        super().__init__(config)

    @property
    def flow_context_dim(self) -> int:
        return self.config.flow_context_dim

    def build_flow(self) -> torch.nn.Module:
        return build_flow("iaf", self.config.latent_dim, self.config.num_flows, self.config.flow_hidden_dims,
                          context_dim=self.config.flow_context_dim)
