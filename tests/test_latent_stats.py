"""Latent statistics for diffusion (hf_vae.evaluation.latents, scripts/latent_stats.py): checked against an independent
computation on the same images, independent of the batch size, written to config.json and to the diffusers copy."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hf_vae import KLAEConfig, KLAEModel, VAEConfig, VAEModel
from hf_vae.evaluation.latents import latent_statistics, main

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    rng = np.random.default_rng(0)
    for i in range(10):
        (root / "images" / "train").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "images" / "train" / f"{i}.png")
    torch.manual_seed(0)
    model = KLAEModel(KLAEConfig(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                                 up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=4, sample_size=16))
    model.save_pretrained(root / "klae")
    pytest.importorskip("diffusers")
    from hf_vae.integrations.diffusers import save_diffusers_copy

    save_diffusers_copy(model, str(root / "klae"))
    return root


def _independent(model, folder):
    """The posterior means of every training image, loaded with PIL: the statistics by torch's own reductions."""
    images = [np.asarray(Image.open(p).convert("RGB"), np.float32) / 127.5 - 1
              for p in sorted((folder / "images" / "train").glob("*.png"))]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    with torch.no_grad():
        z = model.encode(x).latent_dist.mean.double()
    return z


def test_statistics_match_an_independent_computation(folder):
    model = KLAEModel.from_pretrained(folder / "klae")
    stats = latent_statistics(model, str(folder / "images"), "train", use_mode=True, batch_size=4)
    z = _independent(model, folder)
    assert stats["num_examples"] == 10 and stats["num_elements"] == z.numel()
    # (float32 encodings of batches of 4 vs one batch of 10 differ in the last bits)
    assert stats["mean"] == pytest.approx(z.mean().item(), rel=1e-6)
    assert stats["std"] == pytest.approx(z.std(unbiased=False).item(), rel=1e-5)
    assert stats["scaling_factor"] == pytest.approx(1 / z.std(unbiased=False).item(), rel=1e-5)
    assert stats["shift_factor"] == stats["mean"]
    np.testing.assert_allclose(stats["latents_mean"], z.mean(dim=(0, 2, 3)).numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats["latents_std"], z.std(dim=(0, 2, 3), unbiased=False).numpy(), rtol=1e-5)
    # The batch size does not matter; a posterior sample (the SD convention) is seeded, and wider than the mean.
    assert latent_statistics(model, str(folder / "images"), use_mode=True, batch_size=64)["std"] == \
        pytest.approx(stats["std"], rel=1e-6)
    sampled = latent_statistics(model, str(folder / "images"), seed=3)
    assert sampled == latent_statistics(model, str(folder / "images"), seed=3)
    assert sampled["std"] > stats["std"]


def test_write_stores_them_in_config_and_the_diffusers_copy(folder, tmp_path, capsys):
    import shutil

    target = tmp_path / "klae"
    shutil.copytree(folder / "klae", target)
    stats = main([str(target), "--dataset", str(folder / "images"), "--write"])
    assert "scaling_factor" in capsys.readouterr().out
    reloaded = KLAEModel.from_pretrained(target)
    assert reloaded.config.scaling_factor == pytest.approx(1 / stats["std"])
    assert reloaded.config.shift_factor == stats["mean"] and reloaded.config.latents_std == stats["latents_std"]
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(target, subfolder="vae")
    assert vae.config.scaling_factor == reloaded.config.scaling_factor
    assert list(vae.config.latents_mean) == stats["latents_mean"]


def test_write_refuses_a_model_without_latent_scaling_fields(folder, tmp_path):
    VAEModel(VAEConfig(in_channels=3, image_size=16, hidden_dims=[8], latent_dim=2)).save_pretrained(tmp_path / "vae")
    before = (tmp_path / "vae" / "config.json").read_text()
    with pytest.raises(ValueError, match=r"has no field\(s\) \['scaling_factor', 'shift_factor'"):
        main([str(tmp_path / "vae"), "--dataset", str(folder / "images"), "--write"])
    assert (tmp_path / "vae" / "config.json").read_text() == before
    assert json.loads(before)["model_type"] == "vae"
