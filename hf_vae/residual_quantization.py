"""Residual vector quantisation (RVQ; Zeghidour et al. 2021, "SoundStream", algorithm 1).

Level 1 quantises the encoder output, each further level the residual the levels before it left:

    r_1 = z,  k_l = argmin_j ‖r_l − e^(l)_j‖,  r_{l+1} = r_l − e^(l)_{k_l},   z_q = Σ_l e^(l)_{k_l}

so a position's code is a column of `num_quantizers` indices, coarse to fine, each into its level's codebook of
`num_embeddings` codes. Every level is a `quantizers.VectorQuantizer` (EMA, k-means, restarts, the cosine codebook
and the orthogonal penalty are the levels' own), and its codebook and commitment terms are taken on its own residual,
which does not carry the gradient of the levels before it (vector-quantize-pytorch's `ResidualVQ` does the same).
The codebook-dimension projections and the straight-through gradient belong to the whole stack: the encoder gets the
decoder's gradient of z_q through the identity, or through the rotation from z to z_q (Fifty et al. 2024).

Codes are channel-last in depth: (B, D, ...) encoder outputs give (B, ..., num_quantizers) indices.
"""

from typing import Optional

import torch
from torch import nn

from .quantizers import QuantizerOutput, VectorQuantizer, straight_through, usage_statistics


class ResidualVectorQuantizer(nn.Module):
    """`num_quantizers` levels of `num_embeddings` codes each, with `VectorQuantizer`'s interface (indices have
    one more, last, dimension: the level)."""

    def __init__(self, num_quantizers: int, num_embeddings: int, embedding_dim: int,
                 codebook_dim: Optional[int] = None, rotation_trick: bool = False, **level_options):
        super().__init__()
        if not isinstance(num_quantizers, int) or num_quantizers < 1:
            raise ValueError(f"Expected num_quantizers to be a positive int, got {num_quantizers!r}.")
        self.num_quantizers = num_quantizers
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.codebook_dim = codebook_dim or embedding_dim
        self.rotation_trick = rotation_trick
        self.levels = nn.ModuleList(VectorQuantizer(num_embeddings, self.codebook_dim, **level_options)
                                    for _ in range(num_quantizers))
        projected = self.codebook_dim != embedding_dim
        self.project_in = nn.Linear(embedding_dim, self.codebook_dim) if projected else None
        self.project_out = nn.Linear(self.codebook_dim, embedding_dim) if projected else None

    def to_code_space(self, z: torch.Tensor) -> torch.Tensor:
        return self.project_in(z) if self.project_in is not None else z

    def from_code_space(self, codes: torch.Tensor) -> torch.Tensor:
        return self.project_out(codes) if self.project_out is not None else codes

    # -- codes without a forward pass ------------------------------------------------------------------------
    def nearest_in_code_space(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, codebook_dim) -> (N, num_quantizers): each level's nearest code to what the levels before it left."""
        residual, indices = flat, []
        for level in self.levels:
            level_indices = level.nearest_in_code_space(residual)
            residual = residual - level.codebook()[level_indices].to(residual.dtype)
            indices.append(level_indices)
        return torch.stack(indices, dim=-1)

    def nearest_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, embedding_dim) -> (N, num_quantizers) indices, after the input projection."""
        return self.nearest_in_code_space(self.to_code_space(flat))

    def quantize_indices(self, z_e: torch.Tensor) -> torch.Tensor:
        """(B, D, ...) encoder outputs -> (B, ..., num_quantizers) indices, without updating anything."""
        flat = z_e.movedim(1, -1).reshape(-1, self.embedding_dim)
        return self.nearest_codes(flat).view(z_e.shape[0], *z_e.shape[2:], self.num_quantizers)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, ..., num_quantizers) indices -> (B, ..., embedding_dim): the levels' codes summed, projected out."""
        if indices.shape[-1] != self.num_quantizers:
            raise ValueError(f"Expected residual codes with a last dimension of {self.num_quantizers} (one index per "
                             f"level), got shape {tuple(indices.shape)}.")
        codes = sum(nn.functional.embedding(indices[..., depth], level.codebook())
                    for depth, level in enumerate(self.levels))
        return self.from_code_space(codes)

    # -- the forward pass ------------------------------------------------------------------------------------
    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        """(B, D, ...) encoder outputs -> the summed codes (straight-through), the (B, ..., depth) indices, the
        levels' losses summed, and the usage statistics averaged over the levels."""
        if z_e.shape[1] != self.embedding_dim:
            raise ValueError(f"Expected encoder output with {self.embedding_dim} channels at dim 1, got {tuple(z_e.shape)}.")
        z = self.to_code_space(z_e.movedim(1, -1))
        residual, total, assignments = z, torch.zeros_like(z), []
        for level in self.levels:
            assigned = level.assign(residual)
            residual = residual - assigned.codes.detach()
            total = total + assigned.codes
            assignments.append(assigned)
        # The levels' codes carry their codebooks' gradients only through their own losses (as in a single VQ).
        quantized = straight_through(z, total.detach(), self.rotation_trick)
        perplexity, usage = usage_statistics(torch.stack([assigned.counts for assigned in assignments]))
        return QuantizerOutput(
            quantized=self.from_code_space(quantized).movedim(-1, 1),
            latents=z_e,
            indices=torch.stack([assigned.indices for assigned in assignments], dim=-1),
            loss=sum(assigned.loss for assigned in assignments),
            codebook_loss=sum(assigned.codebook_loss for assigned in assignments),
            commitment_loss=sum(assigned.commitment_loss for assigned in assignments),
            perplexity=perplexity.mean(),
            codebook_usage=usage.mean(),
        )
