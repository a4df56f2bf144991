"""The importance-sampled estimate of log p(x) (Burda et al. 2016, eq. 8), the skeleton's `log_likelihood` default:

    log p(x) ≈ log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x),   z_k ~ q(z|x)

A lower bound in expectation that equals the ELBO at K = 1 and tightens as K grows.
"""

import math
from typing import Optional

import torch


def importance_sampled_log_likelihood(model, pixel_values: torch.Tensor, posterior, condition: Optional[torch.Tensor],
                                      num_samples: int, chunk_size: int,
                                      generator: Optional[torch.Generator]) -> torch.Tensor:
    """(B,) estimates in nats. `chunk_size` importance samples are decoded at a time and folded into a running
    log-sum-exp, so memory is that of one chunk whatever K."""
    total = None
    for start in range(0, num_samples, chunk_size):
        latents = posterior.sample_stack(min(chunk_size, num_samples - start), generator)  # (k, B, *latent_shape)
        params = model._decode_samples(latents, condition)
        log_px_given_z = -model.likelihood(pixel_values, params)
        log_weights = log_px_given_z + model.prior_log_prob(latents) - posterior.log_prob(latents)
        chunk_total = torch.logsumexp(log_weights, dim=0)
        total = chunk_total if total is None else torch.logaddexp(total, chunk_total)
    return total - math.log(num_samples)
