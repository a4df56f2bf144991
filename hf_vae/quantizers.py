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
  * `codebook_dim`: the codes live in a lower-dimensional space; linear maps take the encoder output there and
    the code back (Yu et al. 2021, sec. 3.2 "factorized codes"), and the losses are taken in the code space.
  * `rotation_trick`: the gradient reaches the encoder through the rotation and rescaling that take z_e to its
    code instead of the identity (Fifty et al. 2024, "Restructuring Vector Quantization with the Rotation Trick").
  * `orthogonal_reg_weight`: a penalty on the codes' pairwise cosine similarities (Shin et al. 2021, eq. 2),
    pushing the codebook towards orthogonal directions.
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
    return (counts, *usage_statistics(counts))


def usage_statistics(counts: torch.Tensor):
    """(..., K) code counts -> (perplexity exp(H) of the code frequencies, the fraction of codes used), over the
    last dimension."""
    probs = counts / counts.sum(-1, keepdim=True)
    perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum(-1))
    return perplexity, (counts > 0).float().mean(-1)


@dataclass
class Assignment:
    """One codebook's answer for (B, ..., d) code-space vectors: `inputs` (l2-normalised with the cosine codebook),
    their `codes` (with the codebook's gradient) and `indices` (B, ...), and the per-example losses (B,)."""

    inputs: torch.Tensor
    codes: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    #: (K,) how often each code was assigned
    counts: torch.Tensor


def rotate_to(source: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The rotation trick (Fifty et al. 2024, sec. 4.2): `target`'s value forwards, and backwards the gradient of
    λR·source, with R the rotation taking source/‖source‖ to target/‖target‖ and λ = ‖target‖/‖source‖, both held
    constant. R is applied without forming it (their eq. 9, w = (u + q)/‖u + q‖):

        R e = e − 2 (e·w) w + 2 (e·u) q,   u = source/‖source‖, q = target/‖target‖
    """
    source_norm = source.norm(dim=-1, keepdim=True)
    target_norm = target.norm(dim=-1, keepdim=True)
    u = (source / source_norm.clamp(min=eps)).detach()
    q = (target / target_norm.clamp(min=eps)).detach()
    w = F.normalize(u + q, dim=-1, eps=eps)
    rotated = source - 2 * (source * w).sum(-1, keepdim=True) * w + 2 * (source * u).sum(-1, keepdim=True) * q
    return rotated * (target_norm / source_norm.clamp(min=eps)).detach()


def straight_through(inputs: torch.Tensor, codes: torch.Tensor, rotation_trick: bool = False) -> torch.Tensor:
    """The codes forwards; backwards the identity (van den Oord et al. 2017, sec. 3.1) or the rotation trick."""
    if rotation_trick:
        return rotate_to(inputs, codes)
    return inputs + (codes - inputs).detach()


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
                 dead_code_threshold: float = 0.0, use_cosine_sim: bool = False, beta_on_codebook: bool = False,
                 codebook_dim: Optional[int] = None, rotation_trick: bool = False, orthogonal_reg_weight: float = 0.0):
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
        #: the dimension of the codes themselves (embedding_dim, the encoder output's, unless projected)
        self.codebook_dim = codebook_dim or embedding_dim
        self.rotation_trick = rotation_trick
        self.orthogonal_reg_weight = orthogonal_reg_weight

        self.embedding = Codebook(num_embeddings, self.codebook_dim)
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
        projected = self.codebook_dim != embedding_dim
        self.project_in = nn.Linear(embedding_dim, self.codebook_dim) if projected else None
        self.project_out = nn.Linear(self.codebook_dim, embedding_dim) if projected else None

    # ----------------------------------------------------------------------------------------------------
    def codebook(self) -> torch.Tensor:
        weight = self.embedding()
        return F.normalize(weight, dim=-1) if self.use_cosine_sim else weight

    def to_code_space(self, z: torch.Tensor) -> torch.Tensor:
        """(..., embedding_dim) -> (..., codebook_dim): the input projection, where there is one."""
        return self.project_in(z) if self.project_in is not None else z

    def from_code_space(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., codebook_dim) -> (..., embedding_dim): the output projection, where there is one."""
        return self.project_out(codes) if self.project_out is not None else codes

    def nearest_in_code_space(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, codebook_dim) -> (N,) indices of the nearest codes (Euclidean, or cosine with `use_cosine_sim`)."""
        codebook = self.codebook().to(flat.dtype)
        if self.use_cosine_sim:
            return (F.normalize(flat, dim=-1) @ codebook.t()).argmax(dim=-1)
        # ‖x − e‖² = ‖x‖² − 2x·e + ‖e‖²; ‖x‖² does not change the argmin.
        distances = codebook.pow(2).sum(-1)[None, :] - 2.0 * flat @ codebook.t()
        return distances.argmin(dim=-1)

    def nearest_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, embedding_dim) -> (N,) indices of the nearest codes, after the input projection."""
        return self.nearest_in_code_space(self.to_code_space(flat))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, ...) indices -> (B, ..., embedding_dim) code vectors (through the output projection)."""
        return self.from_code_space(F.embedding(indices, self.codebook()))

    def quantize_indices(self, z_e: torch.Tensor) -> torch.Tensor:
        """(B, D, ...) encoder outputs -> (B, ...) the indices `forward` assigns them, without updating anything."""
        flat = z_e.movedim(1, -1).reshape(-1, self.embedding_dim)
        return self.nearest_codes(flat).view(z_e.shape[0], *z_e.shape[2:])

    def orthogonal_loss(self) -> torch.Tensor:
        """Shin et al. 2021, eq. 2, as vector-quantize-pytorch computes it: the mean squared cosine similarity of
        every pair of codes (the diagonal included) minus its value 1/K for an orthonormal codebook."""
        normed = F.normalize(self.embedding(), dim=-1, eps=1e-6)
        k = normed.shape[0]
        return (normed @ normed.t()).pow(2).sum() / k ** 2 - 1.0 / k

    # ----------------------------------------------------------------------------------------------------
    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        """z_e: (B, D) or (B, D, *spatial) encoder output, channel (code) dimension at index 1."""
        if z_e.shape[1] != self.embedding_dim:
            raise ValueError(f"Expected encoder output with {self.embedding_dim} channels at dim 1, got {tuple(z_e.shape)}.")
        assigned = self.assign(self.to_code_space(z_e.movedim(1, -1)))
        quantized = straight_through(assigned.inputs, assigned.codes, self.rotation_trick)
        perplexity, usage = usage_statistics(assigned.counts)
        return QuantizerOutput(
            quantized=self.from_code_space(quantized).movedim(-1, 1),
            latents=z_e,
            indices=assigned.indices,
            loss=assigned.loss,
            codebook_loss=assigned.codebook_loss,
            commitment_loss=assigned.commitment_loss,
            perplexity=perplexity,
            codebook_usage=usage,
        )

    def assign(self, z: torch.Tensor) -> "Assignment":
        """(B, ..., codebook_dim) vectors in code space -> their codes (no straight-through: the codebook's own
        tensor, with its gradient), indices and per-example losses; a training pass also updates the codebook's
        state. The residual quantiser calls this once per level."""
        flat = z.reshape(-1, self.codebook_dim)
        # The codebook's own state (k-means, EMA, restarts) moves only in a training pass with autograd on, so
        # that `reconstruct`, evaluation and `torch.no_grad()` calls never change the model.
        updating = self.training and torch.is_grad_enabled()
        if updating and not bool(self.initialized):  # (a training pass only: eval and traced passes skip the sync)
            self._kmeans_initialise(flat.detach())

        indices_flat = self.nearest_in_code_space(flat.detach())
        codes = F.embedding(indices_flat, self.codebook()).to(z.dtype).view_as(z)
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
        if self.orthogonal_reg_weight > 0:  # a term of the codebook, shared out over the examples
            loss = loss + self.orthogonal_reg_weight * self.orthogonal_loss()

        counts, _, _ = code_statistics(indices_flat, self.num_embeddings, flat.dtype)
        if updating:
            self._update_codebook(flat.detach(), indices_flat, counts)
        return Assignment(z, codes, indices_flat.view(z.shape[:-1]), loss, codebook_loss, commitment_loss, counts)

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
