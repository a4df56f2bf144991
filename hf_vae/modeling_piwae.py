"""The partially importance-weighted autoencoder (Rainforth et al. 2018, "Tighter Variational Bounds are Not
Necessarily Better", sec. 5).

With M·K samples z_{m,k} ~ q_φ(z|x) and log w_{m,k} = log p_θ(x|z_{m,k}) + log p_θ(z_{m,k}) − log q_φ(z_{m,k}|x),
the generative network θ ascends the IWAE bound over all M·K samples and the inference network φ the MIWAE bound:

    θ:  ∇_θ L_{MK},    L_{MK}    = log (1/MK) Σ_{m,k} w_{m,k}
    φ:  ∇_φ L_{M,K},   L_{M,K}   = (1/M) Σ_m log (1/K) Σ_k w_{m,k}                      (their eq. 5)

Both gradients are weighted sums of the per-sample ∇ log w_{m,k}: with a = softmax over all M·K log-weights and
b = the softmax inside each group divided by M,

    ∇_θ L_{MK} = Σ a_{m,k} ∇_θ log w_{m,k},    ∇_φ L_{M,K} = Σ b_{m,k} ∇_φ log w_{m,k}.

One scalar has exactly this gradient for each group of parameters, so any trainer that calls `loss.backward()`
routes them. Writing −log w = F(θ, φ) with φ entering through the latents z and through q's parameters,

    S = Σ a·F + ⟨G, z⟩ + Σ (b − a)·log q_φ(sg(z)|x),    G = sg(Σ (b − a)·∂F/∂z)   (sg: no gradient)

has ∇_θ S = Σ a ∇_θ F (G and q do not depend on θ) and ∇_φ S = Σ a ∇_φ F + Σ (b − a) ∇_φ F = Σ b ∇_φ F. G is one
vector-Jacobian product back to the latents (no weight gradients). The loss's value is −L_{MK}, the bound the
decoder climbs and the tighter of the two.

Two pieces change from the MIWAE: `regularisation_loss` also keeps this pass's posterior and latents, which
`combine_samples` needs for the routing.
"""

from typing import Dict, Tuple

import torch

from .configuration_piwae import PIWAEConfig
from .modeling_iwae import importance_weighted_bound
from .modeling_miwae import MIWAEModel


class PIWAEModel(MIWAEModel):
    config_class = PIWAEConfig
    #: the routing's vector-Jacobian product runs back through the decoder inside `forward`
    supports_reentrant_checkpointing = False

    def __init__(self, config: PIWAEConfig):
        super().__init__(config)
        self._routing_inputs = None  # (posterior, latents) of the current pass, read once by `combine_samples`

    def regularisation_loss(self, posterior, latents) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        if latents.dim() > len(self.latent_shape) + 1:  # stacked samples: `combine_samples` follows
            self._routing_inputs = (posterior, latents)
        return super().regularisation_loss(posterior, latents)

    def combine_samples(self, reconstruction_loss: torch.Tensor, regularisation_loss: torch.Tensor) -> torch.Tensor:
        """(M·K, B) per-sample terms -> (B,) whose value is −L_{MK} and whose gradient is −∇_θ L_{MK} for the
        decoder (and prior) and −∇_φ L_{M,K} for the encoder."""
        posterior, latents = self._routing_inputs
        self._routing_inputs = None  # the pass's graph is not kept alive by the model
        neg_log_weights = reconstruction_loss + regularisation_loss  # F = −log w, (M·K, B)
        iwae_weights, miwae_weights = self.bound_weights(-neg_log_weights.detach())
        surrogate = (iwae_weights * neg_log_weights).sum(0)
        if torch.is_grad_enabled() and latents.requires_grad and neg_log_weights.requires_grad:
            shift = miwae_weights - iwae_weights
            # G = Σ (b − a) ∂F/∂z: what turns the encoder's share a·∂F/∂z into b·∂F/∂z
            (latent_gradient,) = torch.autograd.grad(neg_log_weights, latents, grad_outputs=shift, retain_graph=True)
            event_dims = tuple(range(2, latents.dim()))
            surrogate = surrogate + (latent_gradient * latents).sum(event_dims).sum(0)
            surrogate = surrogate + (shift * posterior.log_prob(latents.detach())).sum(0)
        value = -importance_weighted_bound(-neg_log_weights.detach())
        return surrogate - surrogate.detach() + value

    def bound_weights(self, log_weights: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(M·K, B) log-weights -> the per-sample coefficients of ∇ log w in ∇L_{MK} (softmax over all M·K) and in
        ∇L_{M,K} (softmax inside each group of K, divided by M), both (M·K, B)."""
        groups, per_group = self.config.num_bounds, self.config.num_importance_samples
        iwae = torch.softmax(log_weights, dim=0)
        miwae = torch.softmax(log_weights.view(groups, per_group, -1), dim=1).view_as(log_weights) / groups
        return iwae, miwae
