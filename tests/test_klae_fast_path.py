"""`KLAEModel.enable_fast_path()`: the compiled, channels-last, fused-norm path agrees with the default path to
float rounding, trains, keeps the state dict, follows deep copies, and `disable_fast_path()` returns to the
bit-exact default path. The compiler backend here is "aot_eager" (the graph capture and autograd of inductor,
without generating kernels, which takes minutes on a CPU); bench_klae_fast.py times the real thing."""

import copy

import pytest
import torch

from hf_vae import KLAEConfig, KLAEModel
from hf_vae.fast_path import GroupNormSiLU

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def model_and_reference():
    torch.manual_seed(0)
    model = KLAEModel(KLAEConfig(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8,
                                 latent_channels=4, sample_size=32)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latents = model.encode(x).latent_dist.mean
        images = model.decode(latents).sample
    return model, x, latents, images


# torch.compile of the encoder and decoder; fast sibling: test_on_a_cpu_the_fast_path_is_the_default_path
@pytest.mark.slow
def test_fast_path_agrees_trains_and_returns_to_the_exact_default_path(model_and_reference):
    model, x, latents, images = model_and_reference
    keys = {k: v.shape for k, v in model.state_dict().items()}
    model.enable_fast_path(compile=True, channels_last=True, fuse_norms=True, backend="aot_eager")
    assert model.fast_path_settings["compile"] and any(isinstance(m, GroupNormSiLU) for m in model.modules())
    assert {k: v.shape for k, v in model.state_dict().items()} == keys
    with torch.no_grad():
        fast_latents, fast_images = model.encode(x).latent_dist.mean, model.decode(latents).sample
    assert torch.allclose(fast_latents, latents, atol=1e-5) and torch.allclose(fast_images, images, atol=1e-5)
    assert fast_images.is_contiguous()  # the default path's layout

    model.train()
    model(x).loss.backward()  # through the compiled encoder and decoder
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)
    model.eval()

    twin = copy.deepcopy(model)  # as the trainer's EMA copy: the copy's fast path runs the copy's weights
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
        assert not torch.allclose(twin.decode(latents).sample, model.decode(latents).sample)

    model.disable_fast_path()
    assert not any(isinstance(m, GroupNormSiLU) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model.encode(x).latent_dist.mean, latents)
        assert torch.equal(model.decode(latents).sample, images)


def test_on_a_cpu_the_fast_path_is_the_default_path(model_and_reference):
    model, x, latents, images = model_and_reference
    model.enable_fast_path()
    try:
        assert model.fast_path_settings == {"compile": False, "channels_last": False, "fuse_norms": False,
                                            "mode": None, "backend": None, "cuda_graphs": False}
        with torch.no_grad():
            assert torch.equal(model.decode(latents).sample, images)
    finally:
        model.disable_fast_path()


def test_compile_flag_is_for_the_klae_only():
    from hf_vae.training.arguments import TrainArguments

    assert TrainArguments(model="klae", compile=True).compile
    with pytest.raises(ValueError, match="--compile applies to --model klae .*got --model vae"):
        TrainArguments(model="vae", compile=True)
