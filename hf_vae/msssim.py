"""Multi-scale structural similarity (Wang, Simoncelli & Bovik 2003) per example, and 1 − MS-SSIM as a pixel loss.

SSIM compares local statistics under an 11 × 11 Gaussian window (σ = 1.5; Wang et al. 2004, eq. 13):

    l = (2 μ_x μ_y + C1) / (μ_x² + μ_y² + C1),   cs = (2 σ_xy + C2) / (σ_x² + σ_y² + C2),
    C1 = (0.01 L)²,  C2 = (0.03 L)²,  L the data range,

each averaged over the image. MS-SSIM (Wang et al. 2003, eq. 7) takes cs at scales j = 1 … M (the image halved by
2 × 2 averaging between scales) and l only at the coarsest:

    MS-SSIM = Π_{j<M} cs_j^{w_j} · (l_M cs_M)^{w_M}

with the weights of the paper's eq. 7 fit (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) for M = 5. Small images have
fewer scales: the level count and weights follow pythae's MSSSIM_VAE (and the pytorch-msssim code it comes from),
chosen by the shorter side, and the windows are zero-padded to the image size so that a 28 × 28 image still has
four scales. Their product takes fractional powers of values in [−1, 1]; with `normalize` each factor is mapped to
(v + 1)/2 ∈ [0, 1] first (pythae's choice, not the paper's), which keeps the powers and their gradients defined
when a scale's structure is anti-correlated.

Unlike pythae's module, which averages over the whole batch, `ms_ssim` returns one value per example, and the
coarsest scale's SSIM enters with its weight once (pythae raises it to the power (M − 1)·w_M).
"""

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .distributions import Likelihood

#: (shortest side below which it applies, weights): pythae's MSSSIM levels for small images; the full five-scale
#: weights of Wang et al. (2003) from 32 pixels on
_LEVEL_WEIGHTS = ((4, (1.0,)), (8, (0.3222, 0.6778)), (16, (0.4558, 0.1633, 0.3809)),
                  (32, (0.3117, 0.3384, 0.2675, 0.0824)))
FULL_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
K1, K2, SIGMA = 0.01, 0.03, 1.5


def scale_weights(height: int, width: int) -> Tuple[float, ...]:
    """The exponents w_1 … w_M for an image of this size (fewer scales for small images)."""
    side = min(height, width)
    for below, weights in _LEVEL_WEIGHTS:
        if side < below:
            return weights
    return FULL_WEIGHTS


def gaussian_window(size: int, sigma: float = SIGMA, dtype=torch.float32, device=None) -> torch.Tensor:
    """The normalised 1-D Gaussian of `size` taps centred on the middle one."""
    offsets = torch.arange(size, dtype=dtype, device=device) - size // 2
    taps = torch.exp(-offsets.pow(2) / (2 * sigma ** 2))
    return taps / taps.sum()


def _local_mean(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Gaussian-weighted local means of every channel, zero-padded to the input's size (separable convolution)."""
    channels, size = x.shape[1], window.numel()
    rows = window.view(1, 1, size, 1).expand(channels, 1, size, 1)
    cols = window.view(1, 1, 1, size).expand(channels, 1, 1, size)
    x = F.conv2d(x, rows, padding=(size // 2, 0), groups=channels)
    return F.conv2d(x, cols, padding=(0, size // 2), groups=channels)


def ssim_components(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor,
                    data_range: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(SSIM, cs) of each example, (B,) each: the maps l·cs and cs averaged over channels and pixels."""
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = _local_mean(x, window), _local_mean(y, window)
    var_x = _local_mean(x * x, window) - mu_x.pow(2)
    var_y = _local_mean(y * y, window) - mu_y.pow(2)
    cov = _local_mean(x * y, window) - mu_x * mu_y
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x.pow(2) + mu_y.pow(2) + c1)
    return (luminance * cs_map).flatten(1).mean(1), cs_map.flatten(1).mean(1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window_size: int = 11,
            weights: Optional[Sequence[float]] = None, normalize: bool = True) -> torch.Tensor:
    """MS-SSIM of each pair of (B, C, H, W) images, (B,); 1 for identical images."""
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(f"Expected two (B, C, H, W) image batches of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}.")
    weights = scale_weights(*x.shape[-2:]) if weights is None else tuple(weights)
    window = gaussian_window(window_size, dtype=x.dtype, device=x.device)
    factors = []
    for level, weight in enumerate(weights):
        ssim, cs = ssim_components(x, y, window, data_range)
        value = ssim if level == len(weights) - 1 else cs  # l enters at the coarsest scale only (eq. 7)
        factors.append(((value + 1) / 2 if normalize else value) ** weight)
        if level < len(weights) - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return torch.stack(factors).prod(0)


class MSSSIMLoss(Likelihood):
    """The reconstruction term 1 − MS-SSIM(E[x|z], x) per example, in [0, 1] (Snell et al. 2017; pythae's
    MSSSIM_VAE). It is not a density: the model reports no log-likelihood.

    The decoder's output is read as the parameters of `base` (the config's `likelihood`): `mean` is the base's
    (a sigmoid for "bernoulli", the identity for the others), and the data contract (value range, binarisation,
    dequantisation) is the base's too, which also fixes the data range L of the SSIM constants.
    """

    normalised = False

    def __init__(self, base: Likelihood, window_size: int = 11, normalize: bool = True):
        super().__init__()
        self.base = base
        self.name, self.continuous = base.name, base.continuous
        self.data_range = base.data_range
        low, high = base.data_range if base.data_range is not None else (-1.0, 1.0)
        self.range_width = high - low
        self.window_size, self.normalize = window_size, normalize

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self.base.mean(params)

    def nll(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        if params.dim() != x.dim():
            raise ValueError(f"1 − MS-SSIM takes one reconstruction per example: expected params of shape "
                             f"{tuple(x.shape)}, got {tuple(params.shape)}.")
        # SSIM's variances are differences of squares: computed in float32 even under mixed precision.
        reconstruction = self.mean(params).float()
        return 1 - ms_ssim(reconstruction, x.float(), self.range_width, self.window_size, normalize=self.normalize)
