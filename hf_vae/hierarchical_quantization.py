"""Hierarchical residual quantisation (HRQ; Hosking et al. 2022, "Hierarchical Sketch Induction for Paraphrase
Generation", sec. 2), the quantiser of the HRQ-VAE.

It is residual quantisation (residual_quantization.py) whose codes are drawn differentiably rather than snapped
with a straight-through gradient. At level l the logits of the codes are the negative squared distances to what
the levels before it left,

    r_1 = z,   logits_l = −‖r_l − e^(l)_j‖²,   q_l = onehot_l · E^(l),   r_{l+1} = r_l − q_l,   z_q = Σ_l q_l

and in training onehot_l is a hard Gumbel-softmax sample at temperature τ_l (their eq. 2), so the encoder and the
codebooks learn through the samples' relaxed gradient; in evaluation it is the argmax, the nearest code. The
paper's three devices that make the levels a coarse-to-fine hierarchy:

  * initialisation decay: level l's codes start on the sphere of radius init_scale · init_decay^l;
  * a norm loss, (max(‖q_{l+1}‖/‖q_l‖ · norm_loss_scale, 1) − 1)², which keeps each level's code shorter than the
    one before it;
  * depth dropout: in training, each level of each position is dropped with probability p, and with it every finer
    level (a Bernoulli mask cumulated over depth), so coarse prefixes decode on their own.

A KL term KL(uniform ‖ softmax(logits_l)) per level keeps the code distribution from collapsing. The temperature
decays with the training passes made (this one included), τ_l = max(exp(−t / (γ · 1.5^l)), τ_min) (pythae's HRQVAE counts epochs for t;
here t counts training passes, saved with the model as the `steps` buffer).

All terms are summed over the latent positions of an example, like the VQ-VAE's.
"""

import math

import torch
import torch.nn.functional as F

from .quantizers import QuantizerOutput, usage_statistics
from .residual_quantization import ResidualVectorQuantizer


class HierarchicalResidualQuantizer(ResidualVectorQuantizer):
    """`num_quantizers` levels of `num_embeddings` codes, drawn by Gumbel-softmax in training (see the module
    docstring); the interface, the nearest codes and the lookup are `ResidualVectorQuantizer`'s."""

    def __init__(self, num_quantizers: int, num_embeddings: int, embedding_dim: int, kl_weight: float = 0.1,
                 init_scale: float = 1.0, init_decay: float = 0.5, norm_loss_weight: float = 0.5,
                 norm_loss_scale: float = 1.5, temperature_decay_steps: float = 10000.0, min_temperature: float = 0.5,
                 depth_drop_rate: float = 0.1):
        super().__init__(num_quantizers, num_embeddings, embedding_dim)
        self.kl_weight = kl_weight
        self.init_scale = init_scale
        self.init_decay = init_decay
        self.norm_loss_weight = norm_loss_weight
        self.norm_loss_scale = norm_loss_scale
        self.temperature_decay_steps = temperature_decay_steps
        self.min_temperature = min_temperature
        self.depth_drop_rate = depth_drop_rate
        #: training passes made, which set the Gumbel temperature
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        for level in self.levels:
            level.embedding.weight.requires_grad_(True)
        if not self.levels[0].embedding.weight.is_meta:
            self.reset_codebooks()

    @torch.no_grad()
    def reset_codebooks(self) -> None:
        """Level l's codes uniform in direction, on the sphere of radius init_scale · init_decay^l."""
        for depth, level in enumerate(self.levels):
            weight = level.embedding.weight
            weight.uniform_(-1.0, 1.0)
            weight.copy_(F.normalize(weight, dim=-1) * self.level_radius(depth))

    def level_radius(self, depth: int) -> float:
        return self.init_scale * self.init_decay ** depth

    def temperatures(self) -> torch.Tensor:
        """(num_quantizers,) the Gumbel temperatures τ_l = max(exp(−t / (γ · 1.5^l)), τ_min) after t passes."""
        scales = self.temperature_decay_steps * 1.5 ** torch.arange(self.num_quantizers, dtype=torch.float32,
                                                                    device=self.steps.device)
        return torch.exp(-self.steps.float() / scales).clamp(min=self.min_temperature)

    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        if z_e.shape[1] != self.embedding_dim:
            raise ValueError(f"Expected encoder output with {self.embedding_dim} channels at dim 1, got {tuple(z_e.shape)}.")
        z = z_e.movedim(1, -1)
        flat = z.reshape(-1, self.embedding_dim)
        sampling = self.training and torch.is_grad_enabled()
        if sampling:
            self.steps.add_(1)  # this pass is the t-th
        temperatures = self.temperatures()
        residual, codes, indices, kl = flat, [], [], flat.new_zeros(flat.shape[0])
        for depth, level in enumerate(self.levels):
            codebook = level.codebook().to(flat.dtype)
            logits = -(residual.pow(2).sum(-1, keepdim=True) - 2 * residual @ codebook.t() + codebook.pow(2).sum(-1))
            if sampling:
                onehot = F.gumbel_softmax(logits, tau=temperatures[depth].to(logits.dtype), hard=True, dim=-1)
            else:
                onehot = F.one_hot(logits.argmax(-1), self.num_embeddings).to(flat.dtype)
            kl = kl + uniform_kl(logits)
            code = onehot @ codebook
            residual = residual - code
            codes.append(code)
            indices.append(onehot.argmax(-1))
        codes = torch.stack(codes, dim=1)  # (N, depth, D)
        per_position = self.kl_weight * kl + self.norm_loss_weight * norm_loss(codes, self.norm_loss_scale)
        if sampling:
            codes = codes * depth_mask(codes.shape[:2], self.depth_drop_rate, codes.device).to(codes.dtype)[..., None]
        batch = z.shape[0]
        indices = torch.stack(indices, dim=-1)
        counts = torch.zeros(self.num_quantizers, self.num_embeddings, device=flat.device).scatter_add_(
            1, indices.t(), torch.ones_like(indices.t(), dtype=torch.float32))
        perplexity, usage = usage_statistics(counts)
        loss = per_position.view(batch, -1).sum(-1)
        zero = loss.new_zeros(batch)
        return QuantizerOutput(
            quantized=codes.sum(1).view_as(z).movedim(-1, 1), latents=z_e,
            indices=indices.view(*z.shape[:-1], self.num_quantizers), loss=loss, codebook_loss=zero,
            commitment_loss=zero, perplexity=perplexity.mean(), codebook_usage=usage.mean())


def uniform_kl(logits: torch.Tensor) -> torch.Tensor:
    """KL(uniform ‖ softmax(logits)) over the last dimension: −log K − mean_k log softmax(logits)_k."""
    return -math.log(logits.shape[-1]) - F.log_softmax(logits, dim=-1).mean(-1)


def norm_loss(codes: torch.Tensor, scale: float) -> torch.Tensor:
    """(N, depth, D) the levels' codes -> (N,) the mean over consecutive levels of
    (max(‖q_{l+1}‖/‖q_l‖ · scale, 1) − 1)²: zero while each code is at most 1/scale as long as the one before it."""
    if codes.shape[1] < 2:
        return codes.new_zeros(codes.shape[0])
    norms = codes.norm(dim=-1)
    ratio = norms[:, 1:] / norms[:, :-1] * scale
    return (ratio.clamp(min=1.0) - 1.0).pow(2).mean(-1)


def depth_mask(shape, drop_rate: float, device) -> torch.Tensor:
    """(N, depth) of 0/1: each level kept with probability 1 − p unless a coarser level was dropped."""
    keep = torch.rand(shape, device=device) >= drop_rate
    return keep.long().cumprod(dim=-1)
