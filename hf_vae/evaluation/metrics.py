"""Reconstruction, disentanglement and codebook metrics.

* :func:`psnr` -- peak signal-to-noise ratio, per image.
* :func:`ssim` -- structural similarity (Wang, Bovik, Sheikh, Simoncelli, "Image
  Quality Assessment: From Error Visibility to Structural Similarity", IEEE TIP
  2004) with the paper's 11x11 Gaussian window (sigma 1.5), per image; matches
  ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=R, channel_axis=...)``.
* :func:`mutual_information_gap` -- MIG (Chen, Li, Grosse, Duvenaud, "Isolating
  Sources of Disentanglement in Variational Autoencoders", NeurIPS 2018), in the
  discretised estimator of disentanglement_lib (Locatello et al., ICML 2019).
* :func:`codebook_stats` -- VQ codebook usage and perplexity (van den Oord et
  al. 2017; Razavi et al. 2019).

Image metrics take (B, C, H, W) tensors or arrays and return a float tensor of
shape (B,).  They are evaluation utilities and do not need gradients, but they
are written with differentiable torch ops.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------
# image metrics
# ---------------------------------------------------------------------------


def _as_image_batch(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() == 3:  # a single (C, H, W) image
        t = t.unsqueeze(0)
    if t.dim() != 4:
        raise ValueError(f"{name} must be (B, C, H, W) (or (C, H, W)), got shape {tuple(t.shape)}")
    if not torch.is_floating_point(t):
        t = t.to(torch.float64)
    return t


def _pair(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_image_batch(x, "x"), _as_image_batch(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    return x.to(dtype), y.to(device=x.device, dtype=dtype)


def psnr(x: Any, y: Any, data_range: float) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, ``10 log10(R^2 / MSE)`` in dB.

    Args:
        x, y: (B, C, H, W) (or (C, H, W)) tensors/arrays.
        data_range: R, the span of valid values (1.0 for [0, 1], 2.0 for [-1, 1], 255 for uint8).

    Returns:
        (B,) tensor; ``inf`` where an image is reproduced exactly.  Average it
        over a data set for the usual "mean PSNR" (as in the SD VAE model cards).
    """
    x, y = _pair(x, y)
    mse = torch.mean((x - y) ** 2, dim=(1, 2, 3))
    return 10.0 * torch.log10(float(data_range) ** 2 / mse)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps (as scipy.ndimage.gaussian_filter1d)."""
    r = (size - 1) // 2
    xs = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (xs / sigma) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(
    x: Any,
    y: Any,
    data_range: float,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004), Gaussian-weighted.

    Local statistics use an ``win_size`` x ``win_size`` Gaussian window (sigma
    1.5, 11 taps as in the paper), population (co)variances, ``C1 = (K1 R)^2``,
    ``C2 = (K2 R)^2``.  The SSIM map is averaged over the "valid" positions
    (where the window lies inside the image; skimage crops the same border),
    computed per channel, then averaged over channels.

    Args:
        x, y: (B, C, H, W) (or (C, H, W)) tensors/arrays, H, W >= win_size.
        data_range: R, the span of valid values (1.0 for [0, 1], 2.0 for [-1, 1]).

    Returns:
        (B,) tensor.  Computed in float64 for float64 inputs, else float32.
    """
    x, y = _pair(x, y)
    b, c, h, w = x.shape
    if win_size % 2 != 1:
        raise ValueError(f"win_size must be odd, got {win_size}")
    if h < win_size or w < win_size:
        raise ValueError(f"images ({h}x{w}) are smaller than the SSIM window ({win_size})")
    g = _gaussian_window(win_size, sigma, x.dtype, x.device)
    # Separable depthwise filtering of (B*C, 1, H, W) maps, 'valid' padding.
    gh = g.view(1, 1, 1, win_size)
    gv = g.view(1, 1, win_size, 1)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, gh), gv)

    # Stack the five quantities to filter them in one call.
    xs, ys = x.reshape(b * c, 1, h, w), y.reshape(b * c, 1, h, w)
    stats = filt(torch.cat([xs, ys, xs * xs, ys * ys, xs * ys], dim=0))
    ux, uy, uxx, uyy, uxy = stats.chunk(5, dim=0)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(b, c, -1).mean(dim=2).mean(dim=1)


# ---------------------------------------------------------------------------
# disentanglement
# ---------------------------------------------------------------------------


def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _histogram_discretize(values: np.ndarray, num_bins: int) -> np.ndarray:
    """disentanglement_lib's ``_histogram_discretize`` for one 1-D array.

    ``np.digitize(v, np.histogram(v, num_bins)[1][:-1])``: equal-width bins
    between min and max, labels 1..num_bins (the maximum lands in the last bin).
    """
    edges = np.histogram(values, bins=num_bins)[1]
    return np.digitize(values, edges[:-1])


def _codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    uniq, inv = np.unique(values, return_inverse=True)
    return inv.reshape(-1), len(uniq)


def _discrete_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in mutual information (nats) of two discrete 1-D samples.

    Same value as ``sklearn.metrics.mutual_info_score(a, b)``.
    """
    ca, na = _codes(a)
    cb, nb = _codes(b)
    n = ca.shape[0]
    joint = np.bincount(ca * nb + cb, minlength=na * nb).reshape(na, nb).astype(np.float64) / n
    pa = joint.sum(axis=1, keepdims=True)
    pb = joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    mi = float(np.sum(joint[nz] * (np.log(joint[nz]) - np.log((pa @ pb)[nz]))))
    return max(mi, 0.0)


def _discrete_entropy(a: np.ndarray) -> float:
    """Plug-in entropy (nats) of a discrete 1-D sample."""
    ca, _ = _codes(a)
    p = np.bincount(ca).astype(np.float64) / ca.shape[0]
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def mutual_information_gap(latents: Any, factors: Any, num_bins: int = 20) -> Dict[str, Any]:
    """Mutual Information Gap (Chen et al. 2018), disentanglement_lib estimator.

    Each latent dimension is discretised into ``num_bins`` equal-width histogram
    bins; ``I(z_j; v_k)`` is the plug-in mutual information between discretised
    latent j and factor k; for each factor the gap between the largest and the
    second-largest ``I(z_j; v_k)`` over j is divided by the factor entropy
    ``H(v_k)``; MIG is the mean over factors.  Factors that take a single value
    (zero entropy) are skipped.

    Args:
        latents: (N, D) latent codes (e.g. posterior means), D >= 2.
        factors: (N, K) ground-truth factors with discrete values (any labels).
        num_bins: histogram bins per latent dimension (disentanglement_lib: 20).

    Returns:
        dict with ``mig`` (float; NaN if every factor was skipped),
        ``per_factor`` (list of K floats, None for skipped factors),
        ``skipped_factors`` (list of indices), ``mutual_info`` ((D, K) nested list,
        nats) and ``factor_entropy`` (list of K floats, nats).
    """
    z = _to_numpy(latents)
    v = _to_numpy(factors)
    if z.ndim != 2 or v.ndim != 2:
        raise ValueError(f"latents must be (N, D) and factors (N, K), got {z.shape} and {v.shape}")
    if z.shape[0] != v.shape[0]:
        raise ValueError(f"latents and factors have different N: {z.shape[0]} vs {v.shape[0]}")
    n, d = z.shape
    k = v.shape[1]
    if d < 2:
        raise ValueError("MIG needs at least 2 latent dimensions")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")

    zd = np.stack([_histogram_discretize(z[:, j].astype(np.float64), num_bins) for j in range(d)], axis=1)
    mi = np.zeros((d, k), dtype=np.float64)
    for j in range(d):
        for f in range(k):
            mi[j, f] = _discrete_mutual_info(zd[:, j], v[:, f])
    entropy = np.array([_discrete_entropy(v[:, f]) for f in range(k)])

    per_factor: List[Optional[float]] = []
    skipped: List[int] = []
    for f in range(k):
        if entropy[f] <= 0:
            per_factor.append(None)
            skipped.append(f)
            continue
        top = np.sort(mi[:, f])[::-1]
        per_factor.append(float((top[0] - top[1]) / entropy[f]))
    scores = [s for s in per_factor if s is not None]
    return {
        "mig": float(np.mean(scores)) if scores else math.nan,
        "per_factor": per_factor,
        "skipped_factors": skipped,
        "mutual_info": mi.tolist(),
        "factor_entropy": entropy.tolist(),
    }


# ---------------------------------------------------------------------------
# VQ codebook
# ---------------------------------------------------------------------------


def codebook_stats(indices: Any, num_embeddings: int) -> Dict[str, float]:
    """Codebook health of a VQ model from the code indices it selected.

    Args:
        indices: integer code indices of any shape (e.g. (B, H, W)), values in
            ``[0, num_embeddings)``; pass the indices of a whole epoch for
            epoch-level statistics.
        num_embeddings: K, the codebook size.

    Returns:
        dict with ``usage`` (fraction of the K codes selected at least once),
        ``num_used`` (that count, as float), and ``perplexity``
        ``exp(-sum_k p_k log p_k)`` of the empirical code distribution (1 when a
        single code is used, K when all are used uniformly).
    """
    idx = torch.as_tensor(indices).detach().reshape(-1).to("cpu", torch.int64)
    if idx.numel() == 0:
        raise ValueError("indices is empty")
    if int(idx.min()) < 0 or int(idx.max()) >= num_embeddings:
        raise ValueError(f"indices must lie in [0, {num_embeddings}), got range [{int(idx.min())}, {int(idx.max())}]")
    counts = torch.bincount(idx, minlength=num_embeddings).to(torch.float64)
    p = counts / counts.sum()
    nz = p > 0
    entropy = -(p[nz] * p[nz].log()).sum()
    num_used = int(nz.sum())
    return {
        "usage": num_used / num_embeddings,
        "num_used": float(num_used),
        "perplexity": float(torch.exp(entropy)),
    }


__all__ = ["codebook_stats", "mutual_information_gap", "psnr", "ssim"]
