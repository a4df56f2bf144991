"""The learned Riemannian metric of the RHVAE (Chadebec et al. 2020, eq. 9; pythae's RHVAE):

    G⁻¹(z) = Σ_i L_i L_iᵀ · exp(−‖z − c_i‖² / T²) + λ I

with L_i = L_ψ(x_i) lower triangular (a positive diagonal) from a small network of the data and c_i = μ(x_i) the
encoder's means. In training the batch's own (c_i, L_i) define it; the latest `capacity` of them (detached) are kept
as buffers, saved with the weights, and define it in evaluation and sampling. Before any training step it is the
starting metric with one centroid at 0 and L = I.
"""

from typing import Callable

import torch
import torch.nn as nn


class RiemannianMetric(nn.Module):
    def __init__(self, data_size: int, latent_dim: int, hidden_dim: int, temperature: float, regularization: float,
                 capacity: int):
        super().__init__()
        self.latent_dim, self.temperature, self.regularization = latent_dim, temperature, regularization
        self.network = nn.Sequential(nn.Linear(data_size, hidden_dim), nn.ReLU(),
                                     nn.Linear(hidden_dim, latent_dim * (latent_dim + 1) // 2))
        self.register_buffer("centroids", torch.zeros(capacity, latent_dim))
        self.register_buffer("matrices", torch.zeros(capacity, latent_dim, latent_dim))
        self.register_buffer("num_recorded", torch.zeros((), dtype=torch.long))

    def reset_buffers(self, init) -> None:
        for buffer in (self.centroids, self.matrices, self.num_recorded):
            init.zeros_(buffer)

    def factors(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L_ψ(x), (B, d, d): a strictly lower part and an exp'd diagonal (positive, so L Lᵀ is positive definite)."""
        out = self.network(pixel_values.flatten(1))
        d = self.latent_dim
        rows, cols = torch.tril_indices(d, d, offset=-1, device=out.device)
        lower = out.new_zeros(out.shape[0], d, d)
        lower[:, rows, cols] = out[:, d:]
        return lower + torch.diag_embed(out[:, :d].exp())

    def inverse_metric(self, centroids: torch.Tensor, matrices: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """z (B, d) -> G⁻¹(z) (B, d, d) for the centroids (N, d) and their matrices L Lᵀ (N, d, d)."""
        identity = torch.eye(self.latent_dim, device=centroids.device, dtype=centroids.dtype)

        def inverse(z: torch.Tensor) -> torch.Tensor:
            # (B, N), written out: twice differentiable, unlike cdist
            squared_distances = (z.unsqueeze(1) - centroids).pow(2).sum(-1)
            weights = torch.exp(-squared_distances / self.temperature ** 2)
            return torch.einsum("bn,nij->bij", weights, matrices) + self.regularization * identity

        return inverse

    def from_batch(self, pixel_values: torch.Tensor, means: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The training metric of a batch, its (c_i, L_i Lᵀ_i) recorded (detached) for evaluation."""
        factors = self.factors(pixel_values)
        matrices = factors @ factors.transpose(-1, -2)
        self.record(means.detach(), matrices.detach())
        return self.inverse_metric(means, matrices)

    @torch.no_grad()
    def record(self, centroids: torch.Tensor, matrices: torch.Tensor) -> None:
        """Write into the ring of the latest `capacity` centroids (the oldest overwritten first)."""
        capacity = self.centroids.shape[0]
        start = int(self.num_recorded) % capacity
        index = (torch.arange(centroids.shape[0], device=centroids.device) + start) % capacity
        keep = slice(max(0, centroids.shape[0] - capacity), None)  # a batch larger than the ring: its last ones
        self.centroids[index[keep]] = centroids[keep].to(self.centroids.dtype)
        self.matrices[index[keep]] = matrices[keep].to(self.matrices.dtype)
        self.num_recorded += centroids.shape[0]

    def stored(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The metric of the recorded centroids (the starting metric before any training step)."""
        count = min(int(self.num_recorded), self.centroids.shape[0])
        if count == 0:
            eye = torch.eye(self.latent_dim, device=self.centroids.device, dtype=self.centroids.dtype)
            return self.inverse_metric(self.centroids[:1] * 0, eye[None])
        return self.inverse_metric(self.centroids[:count], self.matrices[:count])
