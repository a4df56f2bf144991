"""Ex-post density estimation in latent space: a density fitted to the latents of the training data after training,
which `generate` then samples from.

A deterministic autoencoder has no prior to sample from; Ghosh et al. (2020, "From Variational to Deterministic
Autoencoders", sec. 4) fit a Gaussian mixture to the training codes after training and sample from it. The same
mixture often gives better samples than the prior of a VAE too, whose aggregate posterior rarely fills N(0, I)
(pythae's `GaussianMixtureSampler`). `AutoencoderPreTrainedModel.fit_latent_density` fits one for any model; the
density's parameters are the model's, so they are saved in `model.safetensors` with the weights.

Four kinds (`LATENT_DENSITY_KINDS`): the Gaussian mixture here (the default), and densities with trained networks
(learned_latent_density.py): the two-stage VAE (latent_density_two_stage.py), MAF and IAF
(latent_density_flows.py).

The mixture's fit is expectation-maximisation in float64 torch with scikit-learn's conventions (k-means
initialisation, `reg_covar` added to every covariance's diagonal, stopping when the mean log-likelihood improves by
less than `tol`), so its result can be checked against `sklearn.mixture.GaussianMixture`.
"""

import math
from typing import Any, Dict, Iterable, Optional, Union

import torch
import torch.nn as nn

from .latent_density_flows import IAFDensity, MAFDensity
from .latent_density_two_stage import TwoStageDensity

LOG_2PI = math.log(2.0 * math.pi)
COVARIANCE_TYPES = ("full", "diag")
#: `fit_latent_density(kind=...)`: the Gaussian mixture (Ghosh et al. 2020), the two-stage VAE (Dai & Wipf 2019),
#: a masked autoregressive flow (Papamakarios et al. 2017) or an inverse autoregressive flow (Kingma et al. 2016)
LATENT_DENSITY_KINDS = ("gmm", "two_stage", "maf", "iaf")
#: the densities with trained networks, by kind (hf_vae/learned_latent_density.py)
LEARNED_DENSITIES = {density.kind: density for density in (TwoStageDensity, MAFDensity, IAFDensity)}


class GaussianMixtureDensity(nn.Module):
    """p(z) = Σ_k π_k N(z; μ_k, Σ_k) over flat latents of size D.

    Buffers: `weights` (K,), `means` (K, D), and `scale`: the Cholesky factors L_k of Σ_k = L_k L_kᵀ, (K, D, D), for
    full covariances, or the standard deviations (K, D) for diagonal ones.
    """

    def __init__(self, num_components: int, dim: int, covariance_type: str = "full"):
        super().__init__()
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"Expected `covariance_type` in {COVARIANCE_TYPES}, got {covariance_type!r}.")
        if not (isinstance(num_components, int) and num_components > 0):
            raise ValueError(f"Expected a positive int number of mixture components, got {num_components!r}.")
        self.covariance_type = covariance_type
        self.register_buffer("weights", torch.full((num_components,), 1.0 / num_components))
        self.register_buffer("means", torch.zeros(num_components, dim))
        self.register_buffer("scale", self.standard_scale(num_components, dim))

    def standard_scale(self, num_components: Optional[int] = None, dim: Optional[int] = None) -> torch.Tensor:
        """The scale of N(0, I) in every component: identity Cholesky factors, or unit standard deviations."""
        if num_components is None:
            num_components, dim = self.num_components, self.dim
        if self.covariance_type == "full":
            return torch.eye(dim).repeat(num_components, 1, 1)
        return torch.ones(num_components, dim)

    @property
    def num_components(self) -> int:
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def component_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, K): log π_k + log N(z; μ_k, Σ_k)."""
        diff = z[:, None, :] - self.means.to(z.dtype)  # (N, K, D)
        scale = self.scale.to(z.dtype)
        if self.covariance_type == "full":
            # Mahalanobis distance through a triangular solve: |L⁻¹(z − μ)|², log det Σ = 2 Σ log diag L.
            white = torch.linalg.solve_triangular(scale, diff.permute(1, 2, 0), upper=False)  # (K, D, N)
            maha = white.pow(2).sum(1).T
            half_log_det = torch.diagonal(scale, dim1=-2, dim2=-1).log().sum(-1)
        else:
            maha = (diff / scale).pow(2).sum(-1)
            half_log_det = scale.log().sum(-1)
        return self.weights.to(z.dtype).log() - 0.5 * (self.dim * LOG_2PI + maha) - half_log_det

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z), (N, D) -> (N,)."""
        return torch.logsumexp(self.component_log_prob(z), dim=1)

    def sample(self, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(num_samples, D): a component k ~ π, then z = μ_k + L_k ε."""
        device = generator.device if generator is not None else self.means.device
        components = torch.multinomial(self.weights.float().to(device), num_samples, replacement=True,
                                       generator=generator).to(self.means.device)
        eps = torch.randn(num_samples, self.dim, generator=generator, device=device, dtype=self.means.dtype)
        eps = eps.to(self.means.device)
        if self.covariance_type == "full":
            noise = (self.scale[components] @ eps[:, :, None])[:, :, 0]
        else:
            noise = self.scale[components] * eps
        return self.means[components] + noise

    # ------------------------------------------------------------------------------------------------------
    # Fitting (expectation-maximisation)
    # ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, z: torch.Tensor, max_iter: int = 100, tol: float = 1e-3, reg_covar: float = 1e-6,
            kmeans_iter: int = 100, generator: Optional[torch.Generator] = None) -> "GaussianMixtureDensity":
        """Fit to (N, D) data by EM, initialised from k-means(++) hard assignments; returns self.

        Attributes set: `converged_` (bool), `n_iter_`, `lower_bound_` (mean log-likelihood of the last E-step).
        """
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"Expected latents of shape (N, {self.dim}), got {tuple(z.shape)}.")
        if z.shape[0] < self.num_components:
            raise ValueError(f"Expected at least as many latents as mixture components ({self.num_components}), "
                             f"got {z.shape[0]}.")
        x = z.detach().to("cpu", torch.float64)
        labels = kmeans(x, self.num_components, kmeans_iter, generator)
        resp = torch.nn.functional.one_hot(labels, self.num_components).to(x.dtype)
        self._m_step(x, resp, reg_covar)
        lower_bound, self.converged_, self.n_iter_ = -math.inf, False, 0
        for iteration in range(1, max_iter + 1):
            log_prob = self.component_log_prob(x)  # E-step
            log_norm = torch.logsumexp(log_prob, dim=1, keepdim=True)
            previous, lower_bound = lower_bound, log_norm.mean().item()
            self._m_step(x, torch.exp(log_prob - log_norm), reg_covar)
            self.n_iter_ = iteration
            if abs(lower_bound - previous) < tol:
                self.converged_ = True
                break
        self.lower_bound_ = lower_bound
        return self

    def _m_step(self, x: torch.Tensor, resp: torch.Tensor, reg_covar: float) -> None:
        """Maximum-likelihood weights, means and covariances given responsibilities (N, K) (Bishop 2006, eq. 9.24-26)."""
        counts = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps  # (K,), sklearn's guard against empty components
        means = resp.T @ x / counts[:, None]
        diff = x[None] - means[:, None]  # (K, N, D)
        if self.covariance_type == "full":
            cov = torch.einsum("nk,kni,knj->kij", resp, diff, diff) / counts[:, None, None]
            cov = cov + reg_covar * torch.eye(x.shape[1], dtype=x.dtype)
            scale = torch.linalg.cholesky(cov)
        else:
            scale = ((resp.T[:, :, None] * diff.pow(2)).sum(1) / counts[:, None] + reg_covar).sqrt()
        self.weights.copy_(counts / x.shape[0])
        self.means.copy_(means)
        self.scale.copy_(scale)


def kmeans(x: torch.Tensor, num_clusters: int, max_iter: int = 100,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007); (N, D) -> (N,) cluster indices."""
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=generator).item()
    centres = [x[first]]
    closest = (x - x[first]).pow(2).sum(1)
    for _ in range(1, num_clusters):
        index = torch.multinomial((closest / closest.sum()).float(), 1, generator=generator).item()
        centres.append(x[index])
        closest = torch.minimum(closest, (x - x[index]).pow(2).sum(1))
    centres = torch.stack(centres)
    labels = None
    for _ in range(max_iter):
        new_labels = torch.cdist(x, centres).argmin(1)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        for k in range(num_clusters):
            members = x[labels == k]
            if len(members):
                centres[k] = members.mean(0)
    return labels


@torch.no_grad()
def encode_dataset(model, data: Union[torch.Tensor, Iterable], batch_size: int = 256,
                   max_examples: Optional[int] = None) -> torch.Tensor:
    """Posterior modes of `data` as flat latents (N, prod(latent_shape)).

    `data` is a tensor (N, *data_shape), or an iterable of such batches or of dicts with "pixel_values"
    (a `datasets` stream or a DataLoader).
    """
    if isinstance(data, torch.Tensor):
        data = data.split(batch_size)
    latents, count = [], 0
    for batch in data:
        pixel_values = batch["pixel_values"] if isinstance(batch, dict) else batch
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(f"Expected batches of pixel_values tensors (or dicts holding them), got "
                             f"{type(pixel_values).__name__}.")
        pixel_values = pixel_values.to(model.device, model.dtype)
        latents.append(model.encode(pixel_values).latent_dist.mode().flatten(1).float().cpu())
        count += len(pixel_values)
        if max_examples is not None and count >= max_examples:
            break
    if not latents:
        raise ValueError("Expected some data to fit the latent density to, got an empty dataset.")
    latents = torch.cat(latents)
    return latents if max_examples is None else latents[:max_examples]


def check_kind(kind) -> str:
    """`kind` if it is one of LATENT_DENSITY_KINDS, else one line naming them."""
    if kind not in LATENT_DENSITY_KINDS:
        raise ValueError(f"Expected a latent density kind in {LATENT_DENSITY_KINDS}, got {kind!r}.")
    return kind


class LatentDensityMixin:
    """`fit_latent_density` for every model: the density is the model's `latent_density` (None until fitted), its
    buffers and weights saved with the model's and its kind and sizes in the config (`latent_density_kind`,
    `latent_density_settings`; the mixture's `latent_density_components` / `latent_density_covariance`), so
    `from_pretrained` builds the module it loads."""

    def build_latent_density(self) -> Optional[nn.Module]:
        """The density the config records, to load a fitted one into; else None."""
        kind = check_kind(getattr(self.config, "latent_density_kind", "gmm"))
        if kind != "gmm":
            density = LEARNED_DENSITIES[kind](math.prod(self.latent_shape),
                                              **getattr(self.config, "latent_density_settings", {}))
            return density.eval().requires_grad_(False)
        components = getattr(self.config, "latent_density_components", None)
        if not components:
            return None
        return GaussianMixtureDensity(components, math.prod(self.latent_shape),
                                      getattr(self.config, "latent_density_covariance", "full"))

    @torch.no_grad()
    def fit_latent_density(self, data, num_components: int = 10, covariance_type: str = "full",
                           batch_size: int = 256, max_examples: Optional[int] = None, max_iter: int = 100,
                           tol: float = 1e-3, reg_covar: float = 1e-6,
                           generator: Optional[torch.Generator] = None, kind: str = "gmm",
                           settings: Optional[Dict[str, Any]] = None,
                           fit_options: Optional[Dict[str, Any]] = None) -> nn.Module:
        """Fit a density to the posterior modes of `data`; `generate` samples from it from then on.

        `kind`: "gmm", a Gaussian mixture of `num_components` (`covariance_type`, EM with `max_iter`, `tol`,
        `reg_covar`): the ex-post density estimation of Ghosh et al. (2020, sec. 4), pythae's
        GaussianMixtureSampler; "two_stage", a second VAE on the latents (Dai & Wipf 2019); "maf" / "iaf", a masked
        / inverse autoregressive flow trained by maximum likelihood. `settings` sizes the learned densities'
        networks (MAF/IAF: `num_flows`, `hidden_dims`; two-stage: `hidden_dims`, `latent_dim`,
        `num_importance_samples` of its `log_prob`); `fit_options` sets their training (`num_steps`,
        `learning_rate`, `batch_size`).

        `data`: a tensor (N, *data_shape) or an iterable of batches / {"pixel_values"} dicts. The density's
        parameters are the model's and its kind and sizes go into the config, so `save_pretrained` /
        `from_pretrained` keep it. `prior_log_prob` and `log_likelihood` still use p(z).
        """
        check_kind(kind)
        if self.is_conditional:
            raise NotImplementedError(f"{type(self).__name__} is conditional; an ex-post latent density would "
                                      f"ignore the condition, so it is not offered.")
        if kind != "gmm":
            return self._fit_learned_density(data, kind, settings or {}, fit_options or {}, batch_size, max_examples,
                                             generator)
        latents = encode_dataset(self, data, batch_size, max_examples)
        density = GaussianMixtureDensity(num_components, latents.shape[1], covariance_type)
        density.fit(latents, max_iter=max_iter, tol=tol, reg_covar=reg_covar, generator=generator)
        self.latent_density = density.to(self.device, self.dtype)
        self.config.latent_density_components = num_components
        self.config.latent_density_covariance = covariance_type
        if getattr(self.config, "latent_density_kind", "gmm") != "gmm":  # replaces a learned density
            self.config.latent_density_kind = "gmm"
        return self.latent_density

    def _fit_learned_density(self, data, kind: str, settings: Dict[str, Any], fit_options: Dict[str, Any],
                             batch_size: int, max_examples: Optional[int],
                             generator: Optional[torch.Generator]) -> nn.Module:
        latents = encode_dataset(self, data, batch_size, max_examples)
        density = LEARNED_DENSITIES[kind](latents.shape[1], **settings)
        density.fit(latents, generator=generator, **fit_options)  # in float32 on the CPU, as the mixture
        self.latent_density = density.to(self.device, self.dtype)
        self.config.latent_density_kind = kind
        self.config.latent_density_settings = density.settings
        if getattr(self.config, "latent_density_components", None):  # a recorded mixture is replaced
            self.config.latent_density_components = 0
        return self.latent_density
