"""Posterior distributions and decoder likelihoods.

Everything here is a small, explicit object so that the base model can write the ELBO once:

    -ELBO(x) = E_q(z|x)[-log p(x|z)] + KL(q(z|x) || p(z))

`DiagonalGaussianDistribution` is the posterior of the VAE, β-VAE, CVAE and KL autoencoder. It keeps the
interface of diffusers' class of the same name (`sample(generator)`, `mode()`, `kl()`, `nll()`, `mean`,
`logvar`, `std`, `var`), so that diffusers pipelines can use our encoders unchanged.

The likelihoods turn the decoder's raw output ("parameters") into a negative log-likelihood in nats per
example (summed over every data dimension, exactly as the KL is summed over every latent dimension) and
into the mean in data space.
"""

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils._pytree as pytree

from .data_contract import LIKELIHOODS, likelihood_kind

LOG_2PI = math.log(2.0 * math.pi)


def randn_tensor(
    shape: Sequence[int],
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Standard normal noise, drawn on the generator's device and moved to `device`.

    Same contract as diffusers' `randn_tensor`, so a seeded generator gives the same sample here and there
    (a CPU generator used for a CUDA tensor draws on the CPU, which keeps seeds portable across devices).
    """
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    rand_device = generator.device
    if device is not None and torch.device(device).type != rand_device.type and rand_device.type != "cpu":
        raise ValueError(f"Cannot draw on {device} with a generator on {rand_device}.")
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


def _sum_except_batch(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(dim=1)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor, other_mean: Optional[torch.Tensor] = None,
                other_logvar: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Elementwise KL(N(mean, e^logvar) || N(other_mean, e^other_logvar)), broadcasting; the standard normal when
    `other_mean` is None (Kingma & Welling 2013, appendix B): ½ (μ² + σ² − 1 − log σ²)."""
    if other_mean is None:
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return 0.5 * ((mean - other_mean).pow(2) / other_logvar.exp() + (logvar - other_logvar).exp() - 1.0 - logvar
                  + other_logvar)


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; mean, e^logvar), broadcasting."""
    return -0.5 * (LOG_2PI + logvar + (z - mean).pow(2) / logvar.exp())


class DiagonalGaussianDistribution:
    """q(z|x) = N(mean, diag(exp(logvar))).

    Args:
        parameters: (B, 2·D, ...) tensor holding mean and log-variance stacked along dim 1 (the diffusers
            layout), or None when `mean` and `logvar` are given.
        deterministic: if True the distribution is a point mass at the mean (std = 0).

    The log-variance is clamped to [-30, 20] as in latent-diffusion and diffusers, which keeps exp() finite
    in fp16 without changing any practical posterior.
    """

    def __init__(
        self,
        parameters: Optional[torch.Tensor] = None,
        deterministic: bool = False,
        *,
        mean: Optional[torch.Tensor] = None,
        logvar: Optional[torch.Tensor] = None,
    ):
        if parameters is not None:
            if parameters.shape[1] % 2 != 0:
                raise ValueError(
                    f"Expected parameters with an even number of channels (mean and logvar), got {tuple(parameters.shape)}."
                )
            mean, logvar = torch.chunk(parameters, 2, dim=1)
        elif mean is None or logvar is None:
            raise ValueError("Give either `parameters` or both `mean` and `logvar`.")
        self.parameters = parameters
        self.mean = mean
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Reparameterised sample z = μ + σ·ε, ε ~ N(0, I) (Kingma & Welling 2013, eq. 10); the mean when deterministic."""
        if self.deterministic:  # draws no noise, so a deterministic encoder leaves the random streams alone
            return self.mean
        eps = randn_tensor(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def rsample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.sample(generator)

    def sample_stack(self, k: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """k reparameterised samples per example, (k, *mean.shape): the importance samples of IWAE and of
        `log_likelihood`."""
        eps = randn_tensor((k, *self.mean.shape), generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: Optional["DiagonalGaussianDistribution"] = None) -> torch.Tensor:
        """KL(self || other) per example, summed over every latent dimension: shape (B,).

        Closed form for diagonal Gaussians; `other=None` means the standard normal prior
        (Kingma & Welling 2013, appendix B): ½ Σ (μ² + σ² − 1 − log σ²).
        """
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        if other is None:
            return _sum_except_batch(gaussian_kl(self.mean, self.logvar))
        return _sum_except_batch(gaussian_kl(self.mean, self.logvar, other.mean, other.logvar))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) per example, shape (B,) (z may carry extra leading sample dims: (K, B, ...) -> (K, B))."""
        log_density = gaussian_log_density(z, self.mean, self.logvar)
        return log_density.flatten(z.dim() - self.mean.dim() + 1).sum(-1)

    def nll(self, sample: torch.Tensor, dims: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
        """-log q(sample), summed over `dims` (diffusers' signature)."""
        if self.deterministic:
            return torch.zeros(sample.shape[0], device=sample.device, dtype=sample.dtype)
        return 0.5 * torch.sum(LOG_2PI + self.logvar + (sample - self.mean).pow(2) / self.var, dim=dims)

    def entropy(self) -> torch.Tensor:
        return 0.5 * _sum_except_batch(self.logvar + 1.0 + LOG_2PI)


def _flatten_gaussian(distribution: DiagonalGaussianDistribution):
    return [distribution.mean, distribution.logvar], distribution.deterministic


def _unflatten_gaussian(children, deterministic: bool) -> DiagonalGaussianDistribution:
    mean, logvar = children
    return DiagonalGaussianDistribution(mean=mean, logvar=logvar, deterministic=deterministic)


# A pytree node (its mean and log-variance), so that `encode`'s output can leave a `torch.export` graph and pass
# through `torch.compile` and accelerate's device moves like any tensor container.
pytree.register_pytree_node(
    DiagonalGaussianDistribution, _flatten_gaussian, _unflatten_gaussian,
    serialized_type_name="hf_vae.distributions.DiagonalGaussianDistribution")


def point_mass(mean: torch.Tensor) -> DiagonalGaussianDistribution:
    """The "posterior" of a deterministic encoder: all mass at `mean` (sample = mode = mean, KL term 0)."""
    return DiagonalGaussianDistribution(mean=mean, logvar=torch.zeros_like(mean), deterministic=True)


def standard_normal_log_prob(z: torch.Tensor, event_dims: int) -> torch.Tensor:
    """log N(z; 0, I), summed over the last `event_dims` dimensions."""
    return (-0.5 * (LOG_2PI + z.pow(2))).flatten(z.dim() - event_dims).sum(-1)


# --------------------------------------------------------------------------------------------------------
# Likelihoods p(x|z)
# --------------------------------------------------------------------------------------------------------


class Likelihood(nn.Module):
    """p(x|z) given the decoder's raw output `params` of the same shape as x.

    `nll` returns -log p(x|z) in nats per example, summed over all data dimensions: shape (B,) (or (K, B) for
    stacked importance samples). `mean` maps params to E[x|z] in data space.
    """

    #: the config's name of the likelihood: a subclass that sets it takes `data_range`, `normalised` and
    #: `continuous` from its entry of `hf_vae.data_contract.LIKELIHOOD_KINDS` (the one statement of them)
    name: Optional[str] = None
    #: the value range the data must lie in, used for input validation; None means any real value.
    data_range: Optional[tuple] = None
    #: whether nll is a normalised log-density, so that the ELBO and the IWAE bound are true bounds on log p(x).
    normalised: bool = True
    #: whether nll is a density of continuous values (Gaussian, Laplace): a bound on the probability of 8-bit
    #: data then needs uniform dequantisation and a change of volume (Theis et al. 2016; see hf_vae.evaluation).
    continuous: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            kind = likelihood_kind(cls.name)
            cls.data_range, cls.normalised, cls.continuous = kind.data_range, kind.normalised, kind.continuous

    def nll(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """−log p(x|z): `nll`, called as a module so that hooks (accelerate's offload) run around it."""
        return self.nll(x, params)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params

    def event_dims(self, x: torch.Tensor) -> int:
        return x.dim() - 1


class BernoulliLikelihood(Likelihood):
    """x ∈ [0, 1] (binary, or intensities read as Bernoulli means); the decoder outputs logits.

    The nll is the binary cross-entropy with logits, computed stably without forming probabilities.
    """

    name = "bernoulli"

    def nll(self, x, params):
        bce = F.binary_cross_entropy_with_logits(params, x.expand_as(params), reduction="none")
        return bce.flatten(bce.dim() - x.dim() + 1).sum(-1)

    def mean(self, params):
        return torch.sigmoid(params)


class ScaledLikelihood(Likelihood):
    """Shared handling of a fixed or learned per-channel scale (σ for Gaussian, b for Laplace, s for logistic)."""

    def __init__(self, num_channels: int, scale: float = 1.0, learn_scale: bool = False):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"Expected a positive likelihood scale, got {scale}.")
        self.initial_log_scale = math.log(scale)
        log_scale = torch.full((num_channels,), self.initial_log_scale)
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale, persistent=False)

    def _log_scale_like(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # x is (B, C, ...) and params (B, C, ...) or (K, B, C, ...): the channel axis is the first event axis,
        # counted from the right so that stacked importance samples broadcast.
        shape = [1] * params.dim()
        shape[-(x.dim() - 1)] = -1
        return self.log_scale.view(shape).to(params.dtype)


class GaussianLikelihood(ScaledLikelihood):
    """x ∈ R (conventionally [-1, 1]); the decoder outputs the mean; σ is fixed or learned per channel.

    -log p(x|z) = Σ ½(x − μ)²/σ² + log σ + ½ log 2π.
    """

    name = "gaussian"

    def nll(self, x, params):
        log_scale = self._log_scale_like(params, x)
        per_dim = 0.5 * (x - params).pow(2) * torch.exp(-2.0 * log_scale) + log_scale + 0.5 * LOG_2PI
        return per_dim.flatten(per_dim.dim() - x.dim() + 1).sum(-1)


class LaplaceLikelihood(ScaledLikelihood):
    """x ∈ R (conventionally [-1, 1]); the decoder outputs the location; b is fixed or learned per channel.

    -log p(x|z) = Σ |x − μ|/b + log 2b. With b = 1 this is the L1 loss plus a constant.
    """

    name = "laplace"

    def nll(self, x, params):
        log_scale = self._log_scale_like(params, x)
        per_dim = (x - params).abs() * torch.exp(-log_scale) + log_scale + math.log(2.0)
        return per_dim.flatten(per_dim.dim() - x.dim() + 1).sum(-1)


class DiscretizedLogisticLikelihood(ScaledLikelihood):
    """8-bit images in [-1, 1]: a logistic density integrated over each of the 256 intensity bins.

    The bins of x_k = −1 + 2k/255 (k = 0 … 255) are [x_k − 1/255, x_k + 1/255]; the first bin extends to −∞ and the
    last to +∞, so the 256 probabilities sum to one and −log p(x|z) is the probability of the discrete data
    (Salimans et al. 2017, PixelCNN++, eq. 2, with one logistic per pixel; also Kingma et al. 2016, IAF):

        P(x_k | μ, s) = σ((x_k + 1/255 − μ)/s) − σ((x_k − 1/255 − μ)/s),   σ(·) the logistic CDF,
        P(x_0) = σ((x_0 + 1/255 − μ)/s),   P(x_255) = 1 − σ((x_255 − 1/255 − μ)/s).

    The decoder outputs μ; s is fixed or learned per channel. Inputs are assigned to the nearest bin, so data
    mapped from 8-bit images is modelled exactly and bits/dim need no dequantisation or correction.
    """

    name = "discretized_logistic"
    #: the data it models are the 256 levels of 8-bit images
    num_bins = 256

    def nll(self, x, params):
        log_scale = self._log_scale_like(params, x)
        half_bin = 1.0 / (self.num_bins - 1)
        level = torch.round((x.clamp(-1.0, 1.0) + 1.0) / (2.0 * half_bin))  # k in 0 … 255
        centre = level * (2.0 * half_bin) - 1.0
        inv_scale = torch.exp(-log_scale)
        upper = (centre - params + half_bin) * inv_scale
        lower = (centre - params - half_bin) * inv_scale
        # log(σ(a) − σ(b)) = log σ(a) + log σ(−b) + log(1 − e^(b − a)): exact, and stable in both tails.
        interior = F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(lower - upper))
        log_prob = torch.where(level == 0, F.logsigmoid(upper),
                               torch.where(level == self.num_bins - 1, F.logsigmoid(-lower), interior))
        return -log_prob.flatten(log_prob.dim() - x.dim() + 1).sum(-1)


class PixelLossLikelihood(Likelihood):
    """The un-normalised pixel loss of latent diffusion's autoencoder: Σ |x − x̂| (l1) or Σ (x − x̂)² (l2).

    Not a normalised density (no log-partition constant), so models using it report no IWAE bound. The
    perceptual and adversarial terms are added by the trainer (hf_vae.training), not here.
    """

    name = "pixel"

    def __init__(self, kind: str = "l1"):
        super().__init__()
        if kind not in ("l1", "l2"):
            raise ValueError(f"Expected pixel loss 'l1' or 'l2', got {kind!r}.")
        self.kind = kind

    def nll(self, x, params):
        diff = x - params
        per_dim = diff.abs() if self.kind == "l1" else diff.pow(2)
        return per_dim.flatten(per_dim.dim() - x.dim() + 1).sum(-1)




def build_likelihood(name: str, num_channels: int, scale: float = 1.0, learn_scale: bool = False) -> Likelihood:
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(num_channels, scale, learn_scale)
    if name == "laplace":
        return LaplaceLikelihood(num_channels, scale, learn_scale)
    if name == "discretized_logistic":
        return DiscretizedLogisticLikelihood(num_channels, scale, learn_scale)
    raise ValueError(f"Expected likelihood in {LIKELIHOODS}, got {name!r}.")
