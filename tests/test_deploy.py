"""Deployment: the KLAE's encoder and decoder exported to ONNX run in ONNX Runtime with PyTorch's results.

The issue's bar is agreement within 1e-4 at 256x256; a random-weight KLAE with Stable Diffusion's layout (four
resolutions, f = 8, two ResNet blocks per level, attention in the mid block, 4 latent channels) at a small width
keeps the export and the runs to seconds.
"""

import numpy as np
import pytest
import torch

from hf_vae import KLAEConfig, KLAEModel, VAEConfig, VAEModel

pytest.importorskip("onnxscript", reason="the ONNX export needs onnxscript (pip install 'hf-vae[deploy]')")
ort = pytest.importorskip("onnxruntime", reason="running the graphs needs onnxruntime (pip install 'hf-vae[deploy]')")

from hf_vae.integrations.onnx import export_klae_onnx  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

IMAGE_SIZE = 256
TOLERANCE = 1e-4


def sd_shaped_klae():
    torch.manual_seed(0)
    config = KLAEConfig(in_channels=3, out_channels=3, block_out_channels=[8, 16, 32, 32], layers_per_block=2,
                        norm_num_groups=8, latent_channels=4, sample_size=IMAGE_SIZE)
    return KLAEModel(config).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_thread):
    model = sd_shaped_klae()
    return model, export_klae_onnx(model, tmp_path_factory.mktemp("onnx"), image_size=IMAGE_SIZE)


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 3])  # the batch dimension is dynamic: 1 and 3 on a graph traced at 2
def test_onnx_encoder_matches_pytorch_at_256(exported, batch):
    model, paths = exported
    images = torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(batch)) * 2 - 1
    (moments,) = session(paths["encoder"]).run(None, {"images": images.numpy()})
    with torch.no_grad():
        posterior = model.encode(images).latent_dist
    expected = torch.cat([posterior.mean, posterior.logvar], dim=1)
    assert moments.shape == (batch, 8, IMAGE_SIZE // 8, IMAGE_SIZE // 8)
    np.testing.assert_allclose(moments, expected.numpy(), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_decoder_matches_pytorch_at_256(exported, batch):
    model, paths = exported
    latents = torch.randn(batch, 4, IMAGE_SIZE // 8, IMAGE_SIZE // 8, generator=torch.Generator().manual_seed(batch))
    (images,) = session(paths["decoder"]).run(None, {"latents": latents.numpy()})
    with torch.no_grad():
        expected = model.decode(latents).sample
    assert images.shape == (batch, 3, IMAGE_SIZE, IMAGE_SIZE)
    np.testing.assert_allclose(images, expected.numpy(), atol=TOLERANCE, rtol=0)


def test_export_refuses_other_models_and_sizes(tmp_path):
    vae = VAEModel(VAEConfig(in_channels=1, image_size=8, hidden_dims=[8], latent_dim=2))
    with pytest.raises(ValueError, match="Expected a KLAEModel, got VAEModel"):
        export_klae_onnx(vae, tmp_path)
    with pytest.raises(ValueError, match="multiple of the down-sampling factor 8, got 100"):
        export_klae_onnx(sd_shaped_klae(), tmp_path, image_size=100)
