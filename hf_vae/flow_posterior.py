"""A posterior refined by a normalising flow: z_K = f_K ∘ … ∘ f_1(z_0), z_0 ~ N(μ(x), diag σ²(x)), with

    log q(z_K|x) = log N(z_0; μ, σ²) − Σ_k log|det ∂f_k/∂z|      (Rezende & Mohamed 2015, eq. 13)

The flows of `flows.py` are not inverted in closed form (an IAF's inverse is sequential), so the density is known
at the posterior's own samples: `log_prob` answers for the latents its last `sample`/`sample_stack` returned,
which is how the skeleton asks (the ELBO's KL estimate, the importance-sampled log p(x)).
"""

from typing import Optional

import torch

from .distributions import DiagonalGaussianDistribution
from .flows import MaskedLinear, PlanarFlow, RadialFlow
from .modeling_base import AutoencoderPreTrainedModel
from .weight_init import init


class FlowPosterior:
    deterministic = False

    def __init__(self, base: DiagonalGaussianDistribution, flow: torch.nn.Module,
                 context: Optional[torch.Tensor] = None):
        self.base, self.flow = base, flow
        #: (B, C) features h of x that every flow step reads (Kingma et al. 2016, sec. 4), or None
        self.context = context
        self.mean, self.logvar = base.mean, base.logvar
        self._last = None  # (z_K, log q(z_K|x)) of the last draw

    def _flat_context(self, shape: torch.Size) -> Optional[torch.Tensor]:
        """The context of each of the draws of `shape` (B, D) or (K, B, D), flattened as the draws are."""
        if self.context is None:
            return None
        return self.context.expand(*shape[:-1], self.context.shape[-1]).reshape(-1, self.context.shape[-1])

    def _push(self, z0: torch.Tensor) -> torch.Tensor:
        shape = z0.shape
        z_k, log_det = self.flow(z0.reshape(-1, shape[-1]), self._flat_context(shape))
        z_k = z_k.view(shape)
        self._last = (z_k, self.base.log_prob(z0) - log_det.view(shape[:-1]))
        return z_k

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self._push(self.base.sample(generator))

    def sample_stack(self, k: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self._push(self.base.sample_stack(k, generator))

    def mode(self) -> torch.Tensor:
        """The flow of the base's mean (deterministic; the exact mode of q_K has no closed form), with its density."""
        return self._push(self.mean)

    def log_prob(self, latents: torch.Tensor) -> torch.Tensor:
        if self._last is None or latents is not self._last[0]:
            raise ValueError("Expected latents drawn from this flow posterior (its density is known at its own "
                             "samples only), got other latents.")
        return self._last[1]

    def kl(self) -> torch.Tensor:
        raise ValueError("A flow posterior has no closed-form KL; expected the Monte Carlo estimate "
                         "log q(z_K|x) − log p(z_K) at a sample.")


class FlowPosteriorVAEModel(AutoencoderPreTrainedModel):
    """The VAE's networks with a flow after the Gaussian posterior. Two pieces change: `posterior` (the flow of
    the Gaussian) and `regularisation_loss`, the KL's one-sample estimate log q(z_K|x) − log p(z_K) at the drawn
    latents (its closed form is lost with the flow). A family builds the flow (`build_flow`)."""

    supports_local_latent = False

    def __init__(self, config):
        super().__init__(config)
        self.encoder, self.decoder = self.build_backbone(2 * config.latent_dim + self.flow_context_dim)
        self.likelihood = self.build_likelihood()
        self.flow = self.build_flow()
        self.post_init()

    def build_flow(self) -> torch.nn.Module:
        raise NotImplementedError

    @property
    def flow_context_dim(self) -> int:
        """Size of the context h the encoder outputs beside μ and log σ² for the flow steps to read (0: none)."""
        return 0

    def _init_weights(self, module) -> None:
        super()._init_weights(module)
        # as the flows' constructors (near the identity), through transformers' initialisers, which leave loaded
        # weights alone
        if isinstance(module, PlanarFlow):
            init.normal_(module.weight, std=module.init_scale)
            init.normal_(module.scale, std=module.init_scale)
            init.zeros_(module.bias)
        if isinstance(module, RadialFlow):
            for parameter in (module.center, module.raw_alpha, module.raw_beta):
                init.normal_(parameter, std=module.init_scale)
        if isinstance(module, MaskedLinear):  # the mask is a constant of the degrees, not a weight
            init.copy_(module.mask, module.mask_values())

    def posterior(self, encoder_output: torch.Tensor) -> FlowPosterior:
        gaussian = 2 * self.config.latent_dim
        context = encoder_output[..., gaussian:] if self.flow_context_dim else None
        return FlowPosterior(DiagonalGaussianDistribution(encoder_output[..., :gaussian]), self.flow, context)

    def regularisation_loss(self, posterior: FlowPosterior, latents: torch.Tensor):
        kl = posterior.log_prob(latents) - self.prior_log_prob(latents)
        return kl, {"kl": kl.mean()}
