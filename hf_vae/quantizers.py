"""Vector quantisation (van den Oord et al. 2017, "Neural Discrete Representation Learning").

`VectorQuantizer` maps each encoder vector z_e to its nearest codebook entry e_k and passes gradients
straight through (the decoder's gradient w.r.t. z_q is copied to z_e). Its loss is the paper's eq. 3 minus
the reconstruction term:

    ‖sg[z_e] − e‖²  +  β ‖z_e − sg[e]‖²          (codebook term, commitment term; β = 0.25)

The codebook term moves only the codebook, the commitment term only the encoder. Options:
  * `use_ema`: the codebook follows exponential moving averages of its assigned encoder outputs instead of
    the codebook term (paper, appendix A.1; VQ-VAE-2), with Laplace-smoothed counts. The averages start
    consistent with the codebook (N_k = 1, m_k = e_k), so a code that no early batch selects stays put.
  * `kmeans_init`: the codebook starts from k-means centroids of the first training batch.
  * `dead_code_threshold`: a code whose moving-average assignment count per batch falls below the threshold is
    re-initialised from a random encoder output of the current batch ("codebook restart").
  * `use_cosine_sim`: codes and encoder outputs are compared on the unit sphere (Yu et al. 2021, ViT-VQGAN).
  * `beta_on_codebook`: legacy placement of β on the codebook term instead of the commitment term. taming-
    transformers' "legacy" quantiser and diffusers' VQModel after it do this; offer it only to reproduce such
    checkpoints exactly.

Every loss is summed over the latent elements of an example, like the likelihood and the KL elsewhere.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torch.utils._pytree as pytree


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass
class QuantizerOutput:
    """Shapes: `quantized`/`latents` like the input, (B, D, ...) ; `indices` (B, ...); losses (B,)."""

    quantized: torch.Tensor
    latents: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor
    codebook_usage: torch.Tensor


def code_statistics(indices: torch.Tensor, num_embeddings: int, dtype: torch.dtype):
    """(N,) code indices -> (counts (K,), perplexity exp(H), the fraction of codes used): what every quantiser
    reports. Counts by a scatter-add, whose output size does not depend on the data (bincount's does, which
    `torch.compile(fullgraph=True)` cannot trace); exact in float32 up to 2^24 assignments per code."""
    counts = torch.zeros(num_embeddings, device=indices.device).index_add_(
        0, indices, torch.ones_like(indices, dtype=torch.float32)).to(dtype)
    probs = counts / counts.sum()
    perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
    return counts, perplexity, (counts > 0).float().mean()


class Codebook(nn.Module):
    """The K code vectors e_k, a (K, D) `weight`; calling the module returns them.

    The quantiser reads its codebook by calling this module, never by reading the weight directly, so accelerate's
    offload hooks (which bring a module's weights in around its call) work for the VQ-VAE too.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        # The draw `nn.Embedding`'s constructor makes (the quantiser overwrites it), kept so that a model built from
        # a seed has the same weights, and leaves the same random stream, as with an `nn.Embedding` codebook.
        nn.init.normal_(self.weight)

    def forward(self) -> torch.Tensor:
        return self.weight


class VectorQuantizer(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, commitment_cost: float = 0.25, use_ema: bool = False,
                 ema_decay: float = 0.99, ema_epsilon: float = 1e-5, kmeans_init: bool = False, kmeans_iters: int = 10,
                 dead_code_threshold: float = 0.0, use_cosine_sim: bool = False, beta_on_codebook: bool = False):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.commitment_cost = commitment_cost
        self.use_ema = use_ema
        self.ema_decay = ema_decay
        self.ema_epsilon = ema_epsilon
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.use_cosine_sim = use_cosine_sim
        self.beta_on_codebook = beta_on_codebook

        self.embedding = Codebook(num_embeddings, embedding_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_embeddings, 1.0 / num_embeddings)
        #: whether the codes above hold their values (not so when built on the meta device); see VQVAEModel's
        #: `_init_weights`, which draws an EMA codebook only when they do not
        self.codebook_drawn = not self.embedding.weight.is_meta
        if use_ema:
            self.embedding.weight.requires_grad_(False)
            # A consistent start: each code counts as assigned once to itself (N_k = 1, m_k = e_k), as after
            # k-means below. Counts of 0 with sums at the codebook would make e_k = m_k / Ñ_k ≈ e_k / ε for every
            # code the first batch misses, stranding it ~1e5 times further out, never to be used again.
            self.register_buffer("ema_cluster_size", torch.ones(num_embeddings))
            self.register_buffer("ema_embed_sum", self.embedding.weight.detach().clone())
        # Moving-average assignment count per batch, for dead-code detection (kept whatever the update rule).
        self.register_buffer("code_usage", torch.ones(num_embeddings))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))

    # ----------------------------------------------------------------------------------------------------
    def codebook(self) -> torch.Tensor:
        weight = self.embedding()
        return F.normalize(weight, dim=-1) if self.use_cosine_sim else weight

    def nearest_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,) indices of the nearest codes (Euclidean, or cosine with `use_cosine_sim`)."""
        codebook = self.codebook().to(flat.dtype)
        if self.use_cosine_sim:
            return (F.normalize(flat, dim=-1) @ codebook.t()).argmax(dim=-1)
        # ‖x − e‖² = ‖x‖² − 2x·e + ‖e‖²; ‖x‖² does not change the argmin.
        distances = codebook.pow(2).sum(-1)[None, :] - 2.0 * flat @ codebook.t()
        return distances.argmin(dim=-1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, ...) indices -> (B, ..., D) code vectors."""
        return F.embedding(indices, self.codebook())

    def quantize_indices(self, z_e: torch.Tensor) -> torch.Tensor:
        """(B, D, ...) encoder outputs -> (B, ...) the indices `forward` assigns them, without updating anything."""
        flat = z_e.movedim(1, -1).reshape(-1, self.embedding_dim)
        return self.nearest_codes(flat).view(z_e.shape[0], *z_e.shape[2:])

    # ----------------------------------------------------------------------------------------------------
    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        """z_e: (B, D) or (B, D, *spatial) encoder output, channel (code) dimension at index 1."""
        if z_e.shape[1] != self.embedding_dim:
            raise ValueError(f"Expected encoder output with {self.embedding_dim} channels at dim 1, got {tuple(z_e.shape)}.")
        z = z_e.movedim(1, -1)  # (B, ..., D)
        flat = z.reshape(-1, self.embedding_dim)

        # The codebook's own state (k-means, EMA, restarts) moves only in a training pass with autograd on, so
        # that `reconstruct`, evaluation and `torch.no_grad()` calls never change the model.
        updating = self.training and torch.is_grad_enabled()
        if updating and not bool(self.initialized):  # (a training pass only: eval and traced passes skip the sync)
            self._kmeans_initialise(flat.detach())

        indices_flat = self.nearest_codes(flat.detach())
        codes = self.lookup(indices_flat).to(z.dtype).view_as(z)
        if self.use_cosine_sim:
            z = F.normalize(z, dim=-1)

        batch = z.shape[0]
        codebook_loss = (z.detach() - codes).pow(2).reshape(batch, -1).sum(-1)
        commitment_loss = (z - codes.detach()).pow(2).reshape(batch, -1).sum(-1)
        if self.use_ema:
            loss = self.commitment_cost * commitment_loss  # the codebook follows the EMA, not a gradient
        elif self.beta_on_codebook:
            loss = commitment_loss + self.commitment_cost * codebook_loss
        else:
            loss = codebook_loss + self.commitment_cost * commitment_loss

        counts, perplexity, usage = code_statistics(indices_flat, self.num_embeddings, flat.dtype)
        if updating:
            self._update_codebook(flat.detach(), indices_flat, counts)

        # Straight-through estimator (paper, sec. 3.1): forward uses the code, backward the identity.
        quantized = z + (codes - z).detach()
        return QuantizerOutput(
            quantized=quantized.movedim(-1, 1),
            latents=z_e,
            indices=indices_flat.view(z.shape[:-1]),
            loss=loss,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            perplexity=perplexity,
            codebook_usage=usage,
        )

    # ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _update_codebook(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        flat = flat.float()
        counts = counts.float().clone()  # all_reduce below must not change the caller's batch statistics
        if self.use_ema or self.dead_code_threshold > 0:
            if _distributed():
                dist.all_reduce(counts)
        if self.use_ema:
            embed_sum = torch.zeros_like(self.ema_embed_sum).index_add_(0, indices, flat)
            if _distributed():
                dist.all_reduce(embed_sum)
            self.ema_update(counts, embed_sum)
        if self.dead_code_threshold > 0:
            self.code_usage.mul_(self.ema_decay).add_(counts, alpha=1.0 - self.ema_decay)
            self._restart_dead_codes(flat)

    @torch.no_grad()
    def ema_update(self, counts: torch.Tensor, embed_sum: torch.Tensor) -> None:
        """One EMA step (van den Oord et al. 2017, appendix A.1, eqs. 6-8) with Laplace smoothing.

        N_k ← γN_k + (1−γ)n_k ;  m_k ← γm_k + (1−γ)Σ_{i: k(i)=k} z_i ;
        Ñ_k = (N_k + ε) / (ΣN + Kε) · ΣN ;  e_k = m_k / Ñ_k
        """
        gamma = self.ema_decay
        self.ema_cluster_size.mul_(gamma).add_(counts, alpha=1.0 - gamma)
        self.ema_embed_sum.mul_(gamma).add_(embed_sum, alpha=1.0 - gamma)
        total = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + self.ema_epsilon) / (total + self.num_embeddings * self.ema_epsilon) * total
        self.embedding.weight.data.copy_(self.ema_embed_sum / smoothed[:, None])

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        dead = self.code_usage < self.dead_code_threshold
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        # Replacements are drawn on rank 0 and broadcast, so every process keeps the same codebook.
        replacements = flat[torch.randint(0, flat.shape[0], (num_dead,), device=flat.device)]
        if _distributed():
            dist.broadcast(replacements, src=0)
        self.embedding.weight.data[dead] = replacements.to(self.embedding.weight.dtype)
        # A restarted code starts as if it had just been used at the threshold rate.
        self.code_usage[dead] = max(self.dead_code_threshold, 1.0)
        if self.use_ema:
            self.ema_cluster_size[dead] = max(self.dead_code_threshold, 1.0)
            self.ema_embed_sum[dead] = replacements * self.ema_cluster_size[dead][:, None]

    @torch.no_grad()
    def _kmeans_initialise(self, flat: torch.Tensor) -> None:
        """Lloyd's k-means on the first training batch (Łańcucki et al. 2020 found it cures early code collapse)."""
        flat = flat.float()
        if self.use_cosine_sim:
            flat = F.normalize(flat, dim=-1)
        n = flat.shape[0]
        choice = torch.randperm(n, device=flat.device)[: self.num_embeddings] if n >= self.num_embeddings else \
            torch.randint(0, n, (self.num_embeddings,), device=flat.device)
        centroids = flat[choice].clone()
        for _ in range(self.kmeans_iters):
            assign = torch.cdist(flat, centroids).argmin(dim=-1)
            counts = torch.bincount(assign, minlength=self.num_embeddings).float()
            sums = torch.zeros_like(centroids).index_add_(0, assign, flat)
            filled = counts > 0
            centroids[filled] = sums[filled] / counts[filled, None]
            if self.use_cosine_sim:
                centroids = F.normalize(centroids, dim=-1)
        if _distributed():
            dist.broadcast(centroids, src=0)
        self.embedding.weight.data.copy_(centroids)
        if self.use_ema:
            self.ema_cluster_size.fill_(1.0)
            self.ema_embed_sum.copy_(centroids)
        self.initialized.fill_(True)


class VectorQuantizedPosterior:
    """q(z|x) of the VQ-VAE: a point mass on the nearest code (paper, eq. 1), held with the quantiser's losses.

    `sample()` and `mode()` both return the straight-through quantised latent. The KL to the uniform prior
    over K codes is the constant log K per latent position (paper, sec. 3.1); it is not part of the loss.
    """

    def __init__(self, output: QuantizerOutput, num_embeddings: int):
        self.output = output
        self.num_embeddings = num_embeddings

    @property
    def indices(self) -> torch.Tensor:
        return self.output.indices

    @property
    def latents(self) -> torch.Tensor:
        return self.output.latents

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.output.quantized

    def mode(self) -> torch.Tensor:
        return self.output.quantized

    def kl(self) -> torch.Tensor:
        positions = self.output.indices[0].numel()
        return torch.full((self.output.indices.shape[0],), positions * math.log(self.num_embeddings),
                          device=self.output.quantized.device)


# Pytree nodes, so that `encode`'s output can leave a `torch.export` graph (see distributions.py).
pytree.register_dataclass(QuantizerOutput, serialized_type_name="hf_vae.quantizers.QuantizerOutput")
pytree.register_pytree_node(
    VectorQuantizedPosterior,
    lambda posterior: ([posterior.output], posterior.num_embeddings),
    lambda children, num_embeddings: VectorQuantizedPosterior(children[0], num_embeddings),
    serialized_type_name="hf_vae.quantizers.VectorQuantizedPosterior")
