"""Tests for hf_vae.evaluation.metrics (PSNR, SSIM, MIG, codebook statistics)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from hf_vae.evaluation.metrics import codebook_stats, mutual_information_gap, psnr, ssim

skimage_metrics = pytest.importorskip("skimage.metrics")


# --------------------------------------------------------------------------- PSNR


def test_psnr_hand_values_and_formula():
    x = torch.zeros(2, 3, 8, 8)
    y = torch.zeros(2, 3, 8, 8)
    y[0] += 0.1  # MSE 0.01, range 1 -> 20 dB
    p = psnr(x, y, data_range=1.0)
    assert p.shape == (2,)
    assert p[0].item() == pytest.approx(20.0, abs=1e-4)
    assert math.isinf(p[1].item())  # identical image
    assert psnr(x * 255, y * 255, data_range=255.0)[0].item() == pytest.approx(20.0, abs=1e-4)

    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (3, 3, 16, 16))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), -1, 1)
    want = 10 * np.log10(2.0**2 / ((a - b) ** 2).mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(psnr(a, b, data_range=2.0).numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(psnr(a[0], b[0], data_range=2.0).numpy(), want[:1], rtol=1e-10)  # (C, H, W)


# --------------------------------------------------------------------------- SSIM


def _sk_ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    return skimage_metrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range, channel_axis=0
    )


def _test_images():
    from skimage import data

    rng = np.random.default_rng(1)
    photo = data.astronaut()[100:164, 180:240].astype(np.float64) / 255.0  # (64, 60, 3), non-square
    photo = photo.transpose(2, 0, 1)
    noisy = np.clip(photo + rng.normal(0, 0.05, photo.shape), 0, 1)
    blurred = (photo + np.roll(photo, 1, axis=1) + np.roll(photo, 1, axis=2)) / 3
    rand = rng.uniform(0, 1, photo.shape)
    return np.stack([photo, photo, photo, rand]), np.stack([noisy, blurred, photo, 1 - rand])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ssim_matches_skimage(dtype):
    xs, ys = _test_images()
    ours = ssim(torch.as_tensor(xs, dtype=dtype), torch.as_tensor(ys, dtype=dtype), data_range=1.0)
    assert ours.shape == (4,) and ours.dtype == dtype
    want = np.array([_sk_ssim(a, b, 1.0) for a, b in zip(xs, ys)])
    np.testing.assert_allclose(ours.numpy(), want, atol=1e-4)
    assert ours[2].item() == pytest.approx(1.0, abs=1e-6)  # identical images
    # [-1, 1] images with data_range=2 (SSIM is not shift-invariant: compare with skimage again).
    xs2, ys2 = xs * 2 - 1, ys * 2 - 1
    ours2 = ssim(torch.as_tensor(xs2, dtype=dtype), torch.as_tensor(ys2, dtype=dtype), data_range=2.0)
    want2 = np.array([_sk_ssim(a, b, 2.0) for a, b in zip(xs2, ys2)])
    np.testing.assert_allclose(ours2.numpy(), want2, atol=1e-4)


def test_ssim_single_channel_and_errors():
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 1, (1, 1, 20, 24))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    assert ssim(a, b, data_range=1.0).item() == pytest.approx(_sk_ssim(a[0], b[0], 1.0), abs=1e-4)
    with pytest.raises(ValueError, match="smaller"):
        ssim(np.zeros((1, 3, 8, 8)), np.zeros((1, 3, 8, 8)), data_range=1.0)
    with pytest.raises(ValueError, match="same shape"):
        ssim(np.zeros((1, 3, 16, 16)), np.zeros((1, 3, 16, 17)), data_range=1.0)


# --------------------------------------------------------------------------- MIG


def _factor_grid(sizes, repeats):
    grid = np.array(list(itertools.product(*[range(s) for s in sizes])))
    return np.tile(grid, (repeats, 1))


def test_mig_perfectly_disentangled():
    factors = _factor_grid((5, 4, 3), repeats=2)
    out = mutual_information_gap(factors.astype(np.float32), factors)
    assert out["mig"] == pytest.approx(1.0, abs=1e-12)
    assert out["per_factor"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    # Permuted, rescaled latents plus an uninformative extra dimension: still ~1.
    rng = np.random.default_rng(0)
    factors = _factor_grid((5, 4), repeats=50)
    latents = np.stack([3.0 * factors[:, 1] - 2, rng.normal(size=len(factors)), 0.5 * factors[:, 0]], axis=1)
    out = mutual_information_gap(torch.as_tensor(latents), torch.as_tensor(factors))
    assert out["mig"] > 0.95


def test_mig_independent_latents_is_near_zero():
    rng = np.random.default_rng(0)
    factors = _factor_grid((5, 4), repeats=250)
    latents = rng.normal(size=(len(factors), 6))
    out = mutual_information_gap(latents, factors)
    assert 0.0 <= out["mig"] < 0.03


def test_mig_hand_made_two_factor_case():
    # v1, v2 two independent bits; z1 = v1, z2 = v1 AND v2; 2 bins reproduce the values.
    v = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    z = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    out = mutual_information_gap(z, v, num_bins=2)
    ln2 = math.log(2)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) - 0.5 * ln2  # I(z2; v1) = I(z2; v2)
    np.testing.assert_allclose(out["mutual_info"], [[ln2, 0.0], [h, h]], atol=1e-12)
    np.testing.assert_allclose(out["factor_entropy"], [ln2, ln2], atol=1e-12)
    assert out["per_factor"] == pytest.approx([(ln2 - h) / ln2, h / ln2], abs=1e-12)
    assert out["mig"] == pytest.approx(0.5, abs=1e-12)


def test_mig_mutual_information_matches_sklearn_and_skips_constant_factor():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    factors = np.stack([rng.integers(0, 6, 400), rng.integers(0, 3, 400), np.full(400, 7)], axis=1)
    latents = np.stack([factors[:, 0] + rng.normal(0, 0.7, 400), rng.normal(size=400),
                        factors[:, 1] * rng.uniform(0.5, 1.5, 400)], axis=1)
    out = mutual_information_gap(latents, factors, num_bins=20)
    assert out["skipped_factors"] == [2] and out["per_factor"][2] is None
    for j in range(3):
        edges = np.histogram(latents[:, j], 20)[1]
        zj = np.digitize(latents[:, j], edges[:-1])
        for k in range(2):
            assert out["mutual_info"][j][k] == pytest.approx(sk.mutual_info_score(zj, factors[:, k]), abs=1e-10)
    assert out["mig"] == pytest.approx(np.mean(out["per_factor"][:2]))
    with pytest.raises(ValueError):
        mutual_information_gap(latents[:, :1], factors)


# --------------------------------------------------------------------------- codebook


def test_codebook_stats_hand_values():
    s = codebook_stats(torch.tensor([[0, 0], [1, 3]]), num_embeddings=8)
    assert s["usage"] == pytest.approx(3 / 8) and s["num_used"] == 3
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2, perplexity 2^1.5
    assert s["perplexity"] == pytest.approx(2**1.5)
    uniform = codebook_stats(np.arange(16).repeat(3), num_embeddings=16)
    assert uniform["usage"] == 1.0 and uniform["perplexity"] == pytest.approx(16.0)
    single = codebook_stats([5, 5, 5], num_embeddings=10)
    assert single["usage"] == pytest.approx(0.1) and single["perplexity"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        codebook_stats([0, 10], num_embeddings=10)
