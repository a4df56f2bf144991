"""Quantisers without a learned codebook: finite scalar quantisation (FSQ) and lookup-free quantisation (LFQ).

Both quantise each latent channel on its own, so the codebook is an implicit grid rather than a table of learned
vectors: there is no codebook loss, no EMA and nothing that can collapse, and every index is a mixed-radix number
of per-channel levels. Inputs and outputs are channel-first, like the VQ-VAE's feature maps: (B, d, ...) latents
give (B, d, ...) codes and (B, ...) indices.

Both have the interface of `quantizers.VectorQuantizer`, so the VQ-VAE takes either (`quantizer="fsq"` / `"lfq"`):
`forward` returns a `QuantizerOutput` (with codebook usage and perplexity), `quantize_indices` the codes of
encoder outputs, `nearest_codes` the code nearest to a code-space vector, and `lookup` the code of an index (what
the GPT-2 code prior's samples are decoded through). `quantize` returns the codes and indices alone.

- FSQ (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple", appendix A.1): channel i is bounded
  to L_i levels by a shifted tanh and rounded with a straight-through gradient; the codebook has ∏ L_i entries.
- LFQ (Yu et al. 2023, "Language Model Beats Diffusion — Tokenizer is Key to Visual Generation", eq. 3): channel i
  is the bit sign(z_i), the code is ±scale per channel, 2^d entries; an entropy penalty (their eq. 5) makes each
  prediction confident and the batch use the whole codebook.
"""

from typing import Sequence, Tuple

import math

import torch
from torch import nn

from .quantizers import QuantizerOutput, code_statistics


def round_straight_through(z: torch.Tensor) -> torch.Tensor:
    """round(z) forwards, the identity's gradient backwards (van den Oord et al. 2017's straight-through trick)."""
    return z + (z.round() - z).detach()


class ImplicitCodebookQuantizer(nn.Module):
    """What FSQ and LFQ share: `VectorQuantizer`'s interface over a codebook of `codebook_size` codes of
    `num_channels` values that is computed, not learned."""

    codebook_size: int
    num_channels: int

    @property
    def num_embeddings(self) -> int:
        return self.codebook_size

    @property
    def embedding_dim(self) -> int:
        return self.num_channels

    def output(self, z_e: torch.Tensor, codes: torch.Tensor, indices: torch.Tensor, loss: torch.Tensor
               ) -> QuantizerOutput:
        """The forward pass's record: codes, indices, the per-example loss and the usage statistics (no codebook
        or commitment term: nothing is learned in the codebook)."""
        _, perplexity, usage = code_statistics(indices.reshape(-1), self.codebook_size, codes.dtype)
        zero = codes.new_zeros(codes.shape[0])
        return QuantizerOutput(quantized=codes, latents=z_e, indices=indices, loss=zero + loss, codebook_loss=zero,
                               commitment_loss=zero, perplexity=perplexity, codebook_usage=usage)


class FiniteScalarQuantizer(ImplicitCodebookQuantizer):
    """FSQ over `len(levels)` channels, channel i rounded to `levels[i]` values in [-1, 1]."""

    def __init__(self, levels: Sequence[int], eps: float = 1e-3):
        super().__init__()
        levels = [int(level) for level in levels]
        if not levels or any(level < 2 for level in levels):
            raise ValueError(f"Expected `levels` to be a non-empty list of ints >= 2, got {levels!r}.")
        self.eps = eps
        self.level_counts = levels
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.int64), persistent=False)
        # mixed-radix place values: index = Σ_i level_index_i · ∏_{j<i} L_j
        self.register_buffer("basis", torch.tensor([math.prod(levels[:i]) for i in range(len(levels))]),
                             persistent=False)
        self.codebook_size = math.prod(levels)

    def constant_buffers(self) -> dict:
        """The buffers' values, for a model built on the meta device (its `_init_weights` copies them in)."""
        levels = self.level_counts
        return {"levels": torch.tensor(levels), "basis": torch.tensor([math.prod(levels[:i]) for i in range(len(levels))])}

    @property
    def num_channels(self) -> int:
        return self.levels.numel()

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """(..., d) -> values in (-(L−1)/2, (L−1)/2) per channel, shifted by ½ for even L so that rounding gives
        exactly L integers (appendix A.1)."""
        levels = self.levels.to(z.dtype)
        half = (levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def _quantize_last(self, z: torch.Tensor) -> torch.Tensor:
        """(..., d) -> the codes in [-1, 1], with straight-through gradients."""
        half_width = (self.levels // 2).to(z.dtype)
        return round_straight_through(self.bound(z)) / half_width

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., d) codes in [-1, 1] -> (...) int64 indices."""
        half_width = (self.levels // 2).to(codes.dtype)
        level_indices = (codes * half_width + half_width).round().long()
        return (level_indices * self.basis).sum(-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, ...) indices -> (B, d, ...) channel-first codes."""
        level_indices = (indices.long()[..., None] // self.basis) % self.levels
        half_width = self.levels // 2
        codes = (level_indices - half_width).float() / half_width
        return codes.movedim(-1, 1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, ...) indices -> (B, ..., d) codes (channel last, as `VectorQuantizer.lookup`)."""
        return self.indices_to_codes(indices).movedim(1, -1) if indices.dim() > 1 else \
            self.indices_to_codes(indices[:, None]).movedim(1, -1)[:, 0]

    def nearest_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, d) code-space vectors -> (N,) the index of the nearest grid point."""
        half_width = (self.levels // 2).to(flat.dtype)
        level_indices = torch.minimum((flat * half_width + half_width).round().clamp(min=0), (self.levels - 1).to(flat.dtype))
        return (level_indices.long() * self.basis).sum(-1)

    def quantize_indices(self, z_e: torch.Tensor) -> torch.Tensor:
        return self.quantize(z_e)[1]

    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        """(B, d, ...) encoder outputs -> the codes, their indices and the usage statistics; no loss (FSQ has no
        codebook to learn and nothing for the encoder to commit to)."""
        codes, indices = self.quantize(z_e)
        return self.output(z_e, codes, indices, loss=codes.new_zeros(()))

    def quantize(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, d, ...) latents -> ((B, d, ...) codes, (B, ...) indices). Quantised in float32 at least: the
        bound's tanh and the rounding decide the code, and half precision moves values across level edges."""
        if z.shape[1] != self.num_channels:
            raise ValueError(f"Expected latents with {self.num_channels} channels (one per FSQ level), got shape "
                             f"{tuple(z.shape)}.")
        dtype = z.dtype
        last = z.movedim(1, -1)
        codes = self._quantize_last(last.float() if dtype in (torch.float16, torch.bfloat16) else last)
        indices = self.codes_to_indices(codes.detach())
        return codes.to(dtype).movedim(-1, 1), indices


def _entropy(probabilities: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return -(probabilities * probabilities.clamp(min=eps).log()).sum(-1)


class LookupFreeQuantizer(ImplicitCodebookQuantizer):
    """LFQ over `num_channels` channels: 2^num_channels codes, each channel's sign a bit (most significant first)."""

    def __init__(self, num_channels: int, codebook_scale: float = 1.0, diversity_weight: float = 1.0,
                 inverse_temperature: float = 100.0, entropy_weight: float = 0.1):
        super().__init__()
        if not isinstance(num_channels, int) or not 1 <= num_channels <= 24:
            raise ValueError(f"Expected 1 <= num_channels <= 24 (a codebook of 2^num_channels codes), got "
                             f"{num_channels!r}.")
        self.num_channels = num_channels
        self.codebook_size = 2 ** num_channels
        self.codebook_scale = codebook_scale
        #: γ of eq. 5: the weight of the batch's codebook entropy against the mean per-example entropy
        self.diversity_weight = diversity_weight
        #: 1/τ of the soft assignment q(code | z) ∝ exp(2 z·code / τ) the entropies are computed from
        self.inverse_temperature = inverse_temperature
        #: the weight of the entropy penalty in the loss (MAGVIT-v2 uses 0.1)
        self.entropy_weight = entropy_weight
        self.register_buffer("bit_values", 2 ** torch.arange(num_channels - 1, -1, -1), persistent=False)

    def constant_buffers(self) -> dict:
        """The buffers' values, for a model built on the meta device (its `_init_weights` copies them in)."""
        return {"bit_values": 2 ** torch.arange(self.num_channels - 1, -1, -1)}

    def codebook(self, dtype=torch.float32) -> torch.Tensor:
        """(2^d, d) every code, ±scale per channel."""
        indices = torch.arange(self.codebook_size, device=self.bit_values.device)
        return self.indices_to_codes(indices).to(dtype)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, ...) indices -> (B, d, ...) channel-first codes (a flat (N,) input gives (N, d))."""
        bits = (indices.long()[..., None] & self.bit_values) != 0
        codes = (bits.float() * 2 - 1) * self.codebook_scale
        return codes if indices.dim() == 1 else codes.movedim(-1, 1)

    def entropy_penalty(self, z: torch.Tensor) -> torch.Tensor:
        """Eq. 5: E_z[H(q(·|z))] − γ·H(E_z[q(·|z)]) for (N, d) latents, q(code|z) = softmax(2 z·code / τ)."""
        logits = 2 * z @ self.codebook(z.dtype).T * self.inverse_temperature
        probabilities = logits.softmax(-1)
        per_example = _entropy(probabilities).mean()
        codebook = _entropy(probabilities.mean(0))
        return per_example - self.diversity_weight * codebook

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, ...) indices -> (B, ..., d) codes (channel last, as `VectorQuantizer.lookup`)."""
        bits = (indices.long()[..., None] & self.bit_values) != 0
        return (bits.float() * 2 - 1) * self.codebook_scale

    def nearest_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, d) code-space vectors -> (N,) the index of the nearest code: each channel's sign."""
        return ((flat > 0).long() * self.bit_values).sum(-1)

    def quantize_indices(self, z_e: torch.Tensor) -> torch.Tensor:
        return ((z_e.movedim(1, -1) > 0).long() * self.bit_values).sum(-1)

    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        """(B, d, ...) encoder outputs -> the codes, their indices, the usage statistics and the weighted entropy
        penalty, a term of the whole batch shared out over its examples.

        The penalty is a mean over code positions, and each example's share is summed over its code map's
        positions, as the commitment term and the reconstruction are summed over theirs: `entropy_weight` is then
        a weight per position, as MAGVIT-v2's 0.1 is per token beside a per-pixel reconstruction. Unsummed, a 7×7
        code map's penalty weighs 49 times less against the reconstruction, and LFQ used 84.8 % of 1,024 codes on
        Fashion-MNIST rather than 100 % (docs/benchmarks.md, the quantisers at equal bits)."""
        codes, indices, penalty = self.quantize(z_e)
        positions = z_e[0, 0].numel()
        return self.output(z_e, codes, indices, loss=self.entropy_weight * penalty * positions)

    def quantize(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, d, ...) latents -> ((B, d, ...) codes, (B, ...) indices, the entropy penalty (0 outside training))."""
        if z.shape[1] != self.num_channels:
            raise ValueError(f"Expected latents with {self.num_channels} channels (one bit each), got shape "
                             f"{tuple(z.shape)}.")
        last = z.movedim(1, -1)
        positive = last > 0
        quantized = torch.where(positive, self.codebook_scale, -self.codebook_scale).to(z.dtype)
        indices = (positive.long() * self.bit_values).sum(-1)
        codes = last + (quantized - last).detach()  # straight through (the identity outside a graph)
        updating = self.training and torch.is_grad_enabled()
        penalty = self.entropy_penalty(last.reshape(-1, self.num_channels).float()) if updating else z.new_zeros(())
        return codes.movedim(-1, 1), indices, penalty
