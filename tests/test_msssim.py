"""MS-SSIM (hf_vae/msssim.py) against a direct computation of Wang et al. (2003), and the MS-SSIM VAE's loss."""

import math
import os
import sys

import numpy as np
import pytest
import torch

from hf_vae import MSSSIMVAEConfig, MSSSIMVAEModel
from hf_vae.msssim import FULL_WEIGHTS, ms_ssim, scale_weights, ssim_components, gaussian_window

PYTHAE_SITE = "/tmp/pythae_site"


# -- the reference: loops over pixels and window offsets, no convolution ----------------------------------------
def _reference_window(size: int, sigma: float = 1.5) -> np.ndarray:
    taps = np.array([math.exp(-((i - size // 2) ** 2) / (2 * sigma ** 2)) for i in range(size)])
    taps /= taps.sum()
    return np.outer(taps, taps)


def _reference_local_mean(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Σ_{u,v} w(u, v) · image(i + u − r, j + v − r) at every pixel, zero outside the image."""
    height, width = image.shape
    radius = window.shape[0] // 2
    out = np.zeros_like(image)
    for i in range(height):
        for j in range(width):
            total = 0.0
            for u in range(window.shape[0]):
                for v in range(window.shape[1]):
                    a, b = i + u - radius, j + v - radius
                    if 0 <= a < height and 0 <= b < width:
                        total += window[u, v] * image[a, b]
            out[i, j] = total
    return out


def _reference_ssim(x: np.ndarray, y: np.ndarray, window: np.ndarray, data_range: float):
    """(SSIM, cs) of one (C, H, W) pair: Wang et al. (2004) eqs. 6-13 with C3 = C2/2, averaged over the maps."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_maps, cs_maps = [], []
    for xc, yc in zip(x, y):
        mx, my = _reference_local_mean(xc, window), _reference_local_mean(yc, window)
        vx = _reference_local_mean(xc * xc, window) - mx ** 2
        vy = _reference_local_mean(yc * yc, window) - my ** 2
        cxy = _reference_local_mean(xc * yc, window) - mx * my
        cs = (2 * cxy + c2) / (vx + vy + c2)
        ssim_maps.append((2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1) * cs)
        cs_maps.append(cs)
    return float(np.mean(ssim_maps)), float(np.mean(cs_maps))


def _reference_halve(image: np.ndarray) -> np.ndarray:
    channels, height, width = image.shape
    h, w = height // 2, width // 2
    return image[:, :2 * h, :2 * w].reshape(channels, h, 2, w, 2).mean(axis=(2, 4))


def reference_ms_ssim(x: np.ndarray, y: np.ndarray, weights, data_range: float = 1.0, window_size: int = 11,
                      normalize: bool = False) -> float:
    """Wang et al. (2003), eq. 7: Π_{j<M} cs_j^{w_j} · SSIM_M^{w_M}, scale j + 1 the 2 × 2 average of scale j."""
    window = _reference_window(window_size)
    value = 1.0
    for level, weight in enumerate(weights):
        ssim, cs = _reference_ssim(x, y, window, data_range)
        factor = ssim if level == len(weights) - 1 else cs
        if normalize:
            factor = (factor + 1) / 2
        value *= factor ** weight
        x, y = _reference_halve(x), _reference_halve(y)
    return value


def _correlated_pair(generator, shape, noise=0.3):
    x = torch.rand(shape, generator=generator, dtype=torch.float64)
    y = (x + noise * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    return x, y


# -- the tests ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, channels", [(28, 1), (12, 2)])
@pytest.mark.parametrize("normalize", [False, True])
def test_ms_ssim_matches_a_direct_computation(size, channels, normalize):
    generator = torch.Generator().manual_seed(size + channels)
    x, y = _correlated_pair(generator, (3, channels, size, size))
    ours = ms_ssim(x, y, normalize=normalize)
    weights = scale_weights(size, size)
    expected = [reference_ms_ssim(x[b].numpy(), y[b].numpy(), weights, normalize=normalize) for b in range(3)]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_full_five_scales_and_data_range():
    """From 32 pixels on, the five scales with the paper's weights; L scales C1 and C2 (images in [−1, 1])."""
    assert scale_weights(32, 40) == FULL_WEIGHTS
    generator = torch.Generator().manual_seed(0)
    x, y = _correlated_pair(generator, (1, 1, 32, 32), noise=0.1)
    x, y = 2 * x - 1, 2 * y - 1
    ours = ms_ssim(x, y, data_range=2.0, normalize=False)
    expected = reference_ms_ssim(x[0].numpy(), y[0].numpy(), FULL_WEIGHTS, data_range=2.0)
    assert abs(float(ours) - expected) < 1e-10


def test_identity_bounds_and_symmetry():
    generator = torch.Generator().manual_seed(1)
    x, y = _correlated_pair(generator, (4, 1, 28, 28))
    torch.testing.assert_close(ms_ssim(x, x), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(ms_ssim(x, y), ms_ssim(y, x))
    value = ms_ssim(x, torch.rand(x.shape, generator=generator, dtype=torch.float64))
    assert ((value > 0) & (value < 1)).all()


def test_per_example_values_do_not_depend_on_the_batch():
    generator = torch.Generator().manual_seed(2)
    x, y = _correlated_pair(generator, (5, 1, 20, 20))
    torch.testing.assert_close(ms_ssim(x, y)[2:3], ms_ssim(x[2:3], y[2:3]))


def test_one_scale_matches_pythae_ssim():
    """pythae's MSSSIM.ssim (batch-averaged) is the same statistic for one example."""
    if not os.path.isdir(PYTHAE_SITE):
        pytest.skip("pythae 0.1.2 is not at /tmp/pythae_site")
    sys.path.insert(0, PYTHAE_SITE)
    try:
        utils = pytest.importorskip("pythae.models.msssim_vae.msssim_vae_utils")
    finally:
        sys.path.remove(PYTHAE_SITE)
    generator = torch.Generator().manual_seed(3)
    x, y = _correlated_pair(generator, (1, 1, 28, 28))
    x, y = x.float(), y.float()
    theirs_ssim, theirs_cs = utils.MSSSIM(window_size=11).ssim(x, y)
    ours_ssim, ours_cs = ssim_components(x, y, gaussian_window(11), 1.0)
    torch.testing.assert_close(ours_ssim[0], theirs_ssim, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_cs[0], theirs_cs, rtol=1e-5, atol=1e-6)


def test_gradient_is_finite_for_anticorrelated_images():
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    y = (1 - x).requires_grad_(True)
    loss = (1 - ms_ssim(y, x)).sum()
    loss.backward()
    assert torch.isfinite(y.grad).all()


def _tiny_model(**overrides):
    config = MSSSIMVAEConfig(in_channels=1, image_size=16, hidden_dims=[32], latent_dim=4, **overrides)
    return MSSSIMVAEModel(config).eval()


def test_model_loss_is_one_minus_ms_ssim_plus_beta_kl():
    model = _tiny_model(beta=0.25)
    x = (torch.rand(3, 1, 16, 16) > 0.5).float()
    generator = torch.Generator().manual_seed(0)
    output = model(x, generator=generator)
    expected_rec = 1 - ms_ssim(output.reconstruction.float(), x)
    torch.testing.assert_close(output.reconstruction_loss, expected_rec.mean())
    posterior = model.encode(x).latent_dist
    kl = posterior.kl().mean()
    torch.testing.assert_close(output.loss, expected_rec.mean() + 0.25 * kl, rtol=1e-5, atol=1e-6)
    assert 0 <= float(output.reconstruction_loss.detach()) <= 1


def test_no_log_likelihood_and_the_data_contract_of_the_decoder_reading():
    model = _tiny_model()
    with pytest.raises(NotImplementedError, match="un-normalised"):
        model.log_likelihood(torch.zeros(1, 1, 16, 16), num_samples=2)
    assert model.data_contract.value_range == (0.0, 1.0)
    gaussian = _tiny_model(likelihood="gaussian")
    assert gaussian.data_contract.value_range == (-1.0, 1.0) and gaussian.likelihood.range_width == 2.0


@pytest.mark.parametrize("fields, message", [(dict(window_size=4), "odd"), (dict(image_size=None), "image_size"),
                                             (dict(beta=-1.0), "beta"),
                                             (dict(learn_likelihood_scale=True, likelihood="gaussian"), "scale")])
def test_bad_fields_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        MSSSIMVAEConfig(**fields)
