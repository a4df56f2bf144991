"""KLAEModel as a drop-in for diffusers' AutoencoderKL: weights both ways, loaders, and numerical parity.

The parity configs are SD-1.x, SDXL (scaling_factor 0.13025, force_upcast), SD3 (16 latent channels, shift_factor)
and Flux (16 latent channels, shift_factor, no quant convs). To run in seconds on 2 CPU cores they keep Stable
Diffusion's block structure (4 resolutions so f = 8, layers_per_block 2, mid-block attention, a channel change in
the encoder and decoder so the 1x1 shortcuts exist) but with narrower channels (16, 32, 32, 64; GroupNorm with 8
groups) and small non-square images (64x48, latents 8x6). Tiling uses 32-pixel tiles (4 latents) so every tiled
call blends a grid of tiles, including partial tiles at the borders.
"""

import json
import os
from pathlib import Path

import pytest
import torch

try:
    from tests.support.scripts import load_script
except ImportError:  # `tests` not importable as a package: pytest put tests/ itself on sys.path
    from support.scripts import load_script

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from hf_vae import KLAEConfig, KLAEModel  # noqa: E402
from hf_vae.klae_conversion import infer_config_from_state_dict, to_hf_state_dict, to_ldm_state_dict  # noqa: E402

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

SMALL = dict(
    block_out_channels=[16, 32, 32, 64],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    layers_per_block=2,
    norm_num_groups=8,
    sample_size=32,
)
FLAVOURS = {
    "sd1": dict(latent_channels=4, scaling_factor=0.18215),
    "sdxl": dict(latent_channels=4, scaling_factor=0.13025, force_upcast=True),
    "sd3": dict(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609),
    "flux": dict(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                 use_post_quant_conv=False),
}


def make_pair(flavour: str, seed: int = 0):
    """A randomly initialised diffusers AutoencoderKL and its KLAEModel copy (eval mode)."""
    torch.manual_seed(seed)
    reference = AutoencoderKL(**SMALL, **FLAVOURS[flavour]).eval()
    # Non-trivial norms and biases, so that a swapped or mis-mapped tensor cannot go unnoticed.
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return reference, KLAEModel.from_diffusers(reference)


def images(batch: int = 2, height: int = 64, width: int = 48, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=generator) * 2 - 1


def assert_close(actual, expected, tol=TOL):
    assert actual.shape == expected.shape, f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    error = (actual - expected).abs().max().item()
    assert error <= tol, f"max abs difference {error:.3g} > {tol}"


def set_mode(model, mode: str) -> None:
    model.disable_slicing()
    model.disable_tiling()
    if "slicing" in mode:
        model.enable_slicing()
    if "tiling" in mode:
        model.enable_tiling()


# ------------------------------------------------------------------------------------------------------------
# Parity
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_encode_decode_parity(flavour):
    reference, model = make_pair(flavour)
    x = images()
    assert model.config.scaling_factor == reference.config.scaling_factor
    assert model.config.shift_factor == reference.config.shift_factor
    assert model.config.force_upcast == reference.config.force_upcast
    assert (model.quant_conv is None) == (not reference.config.use_quant_conv)
    assert model.tile_sample_min_size == reference.tile_sample_min_size == 32
    assert model.tile_latent_min_size == reference.tile_latent_min_size == 4
    with torch.no_grad():
        for mode in ("plain", "slicing", "tiling", "slicing+tiling"):
            set_mode(reference, mode)
            set_mode(model, mode)
            expected, actual = reference.encode(x).latent_dist, model.encode(x).latent_dist
            assert_close(actual.mean, expected.mean)
            assert_close(actual.logvar, expected.logvar)
            assert_close(actual.std, expected.std)
            # the same memory layout too (channels-last tiles stay channels-last): a UNet that consumes the
            # latents takes another convolution path for another layout, and its results change in the last bits
            assert actual.mean.stride() == expected.mean.stride(), mode
            z = expected.sample(torch.Generator().manual_seed(0))
            assert_close(actual.sample(torch.Generator().manual_seed(0)), z)
            assert_close(model.decode(z).sample, reference.decode(z).sample)
            assert model.decode(z).sample.stride() == reference.decode(z).sample.stride(), mode
            assert_close(model.decode(z, return_dict=False)[0], reference.decode(z, return_dict=False)[0])
            assert len(model.encode(x, return_dict=False)) == 1


def test_tiling_blends_and_matches_on_larger_grids():
    """A 3x4 grid of tiles with partial tiles at the edges, custom tile size and overlap; untiled output differs."""
    reference, model = make_pair("sd1")
    x = images(batch=1, height=72, width=88, seed=3)
    with torch.no_grad():
        untiled = model.decode(model.encode(x).latent_dist.mode()).sample
        for vae in (reference, model):
            vae.enable_tiling()
            vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor = 40, 5, 0.4
        moments = model.encode(x).latent_dist
        assert_close(moments.mean, reference.encode(x).latent_dist.mean)
        z = moments.mode()
        tiled = model.decode(z).sample
        assert_close(tiled, reference.decode(z).sample)
    assert tiled.shape == untiled.shape == x.shape
    assert (tiled - untiled).abs().max() > 1e-3  # tiling really happened


def test_enable_tiling_arguments_and_errors():
    model = KLAEModel(KLAEConfig(**SMALL))
    model.enable_tiling(tile_sample_min_size=64, tile_overlap_factor=0.5)
    assert (model.use_tiling, model.tile_sample_min_size, model.tile_latent_min_size, model.tile_overlap_factor) == (
        True, 64, 8, 0.5)
    with pytest.raises(ValueError, match="tile_sample_min_size"):
        model.enable_tiling(tile_sample_min_size=4)
    with pytest.raises(ValueError, match="tile_overlap_factor"):
        model.enable_tiling(tile_overlap_factor=1.0)


@pytest.mark.parametrize("mode", ["plain", "tiling"])
def test_gradients_match(mode):
    """L1 reconstruction + KL of a reparameterised sample, back-propagated through both implementations.

    Untiled, the backward passes are the same operations in the same order (bit-identical in practice; checked to
    1e-5). Tiled, diffusers blends tile overlaps row by row in place while we blend whole overlaps at once, so the
    overlap gradients are summed in another order: checked to 5e-5 of each gradient's largest entry.
    """
    tol = TOL if mode == "plain" else 5 * TOL
    reference, model = make_pair("sdxl")
    reference.train()
    model.train()
    set_mode(reference, mode)
    set_mode(model, mode)
    x = images(seed=2)
    x_ref, x_ours = x.clone().requires_grad_(True), x.clone().requires_grad_(True)

    posterior = reference.encode(x_ref).latent_dist
    reconstruction = reference.decode(posterior.sample(torch.Generator().manual_seed(5))).sample
    loss_ref = ((x_ref - reconstruction).abs().flatten(1).sum(1) + 1e-6 * posterior.kl()).mean()
    loss_ref.backward()

    # Our training objective (forward) is the same loss: Σ|x − x̂| + kl_weight · KL per example, batch mean.
    output = model(x_ours, sample_posterior=True, generator=torch.Generator().manual_seed(5), return_loss=True)
    output.loss.backward()
    assert abs(output.loss.item() - loss_ref.item()) <= TOL * max(1.0, abs(loss_ref.item()))

    assert_close(x_ours.grad, x_ref.grad, tol)
    grads = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        expected = grads[name].grad
        scale = max(1.0, expected.abs().max().item())
        assert_close(parameter.grad / scale, expected / scale, tol)


def test_subpixel_upsampling_option_is_the_same_function():
    reference, model = make_pair("sd1")
    z = torch.randn(2, 4, 8, 6)
    with torch.no_grad():
        exact = model.decode(z).sample
        model.enable_subpixel_upsampling()
        fast = model.decode(z).sample
        model.disable_subpixel_upsampling()
        again = model.decode(z).sample
    assert_close(fast, reference.decode(z).sample, tol=1e-4)
    assert torch.equal(again, exact)
    assert set(model.state_dict()) == set(reference.state_dict())


# ------------------------------------------------------------------------------------------------------------
# Weights both ways
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sdxl", "flux"])
def test_round_trip_is_exact_and_independent(flavour):
    reference, model = make_pair(flavour)
    back = model.to_diffusers()
    assert type(back) is AutoencoderKL
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
        assert torch.equal(back.state_dict()[key], value)
    fields = ("block_out_channels", "latent_channels", "scaling_factor", "shift_factor", "force_upcast",
              "use_quant_conv", "use_post_quant_conv", "layers_per_block", "norm_num_groups", "sample_size")
    assert {f: back.config[f] for f in fields} == {f: reference.config[f] for f in fields}
    # Copies, not views: fine-tuning one must not move the other.
    with torch.no_grad():
        model.encoder.conv_in.weight.add_(1.0)
    assert torch.equal(back.encoder.conv_in.weight, reference.encoder.conv_in.weight)
    # dtype, mode and tiling settings travel along.
    reference.half().train().enable_tiling()
    copy = KLAEModel.from_diffusers(reference, kl_weight=1e-4)
    assert copy.dtype == torch.float16 and copy.training and copy.use_tiling and copy.config.kl_weight == 1e-4


def test_from_pretrained_reads_diffusers_folders(tmp_path):
    reference, _ = make_pair("sd3")
    reference.save_pretrained(tmp_path / "pipe" / "vae")
    reference.save_pretrained(tmp_path / "fp16", variant="fp16")
    config = json.loads((tmp_path / "pipe" / "vae" / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKL"

    for model in (
        KLAEModel.from_pretrained(tmp_path / "pipe", subfolder="vae"),
        KLAEModel.from_pretrained(str(tmp_path / "pipe" / "vae")),
        KLAEModel.from_diffusers(str(tmp_path / "pipe"), subfolder="vae"),
        KLAEModel.from_pretrained(tmp_path / "fp16", variant="fp16"),
    ):
        assert isinstance(model, KLAEModel) and not model.training
        assert model.config.latent_channels == 16 and model.config.shift_factor == 0.0609
        for key, value in reference.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key

    # Config overrides and dtype, as transformers' from_pretrained takes them.
    model = KLAEModel.from_pretrained(tmp_path / "pipe", subfolder="vae", scaling_factor=1.0, dtype=torch.bfloat16)
    assert model.config.scaling_factor == 1.0 and model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="not_an_option"):
        KLAEModel.from_pretrained(tmp_path / "pipe", subfolder="vae", not_an_option=3)


def test_own_format_still_uses_transformers_loader(tmp_path):
    _, model = make_pair("sd1")
    model.save_pretrained(tmp_path)
    assert "model_type" in json.loads((tmp_path / "config.json").read_text())
    loaded = KLAEModel.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_legacy_attention_names(tmp_path):
    reference, _ = make_pair("sd1")
    reference.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    legacy = {}
    for key, value in weights.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[key] = value
    assert any(".query." in key for key in legacy) and any(".proj_attn." in key for key in legacy)
    save_file(legacy, tmp_path / "diffusion_pytorch_model.safetensors")
    model = KLAEModel.from_pretrained(tmp_path)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("prefix", ["", "first_stage_model."])
def test_latent_diffusion_checkpoints(tmp_path, prefix):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    reference, _ = make_pair("sd1")
    ldm = to_ldm_state_dict(reference.state_dict(), num_resolutions=4)
    # The LDM names are the ones diffusers' own single-file converter reads (an independent check of the mapping).
    assert "encoder.mid.attn_1.q.weight" in ldm and ldm["encoder.mid.attn_1.q.weight"].dim() == 4
    assert "decoder.up.3.upsample.conv.weight" in ldm and "encoder.down.1.block.0.nin_shortcut.weight" in ldm
    assert torch.equal(ldm["decoder.up.0.block.0.conv1.weight"], reference.decoder.up_blocks[3].resnets[0].conv1.weight)
    recovered = convert_ldm_vae_checkpoint(dict(ldm), dict(reference.config))
    assert set(recovered) == set(reference.state_dict())

    checkpoint = {prefix + key: value.contiguous() for key, value in ldm.items()}
    if prefix:  # a whole SD checkpoint: other models' weights are ignored, as is the LDM training loss state
        checkpoint["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(2)
        checkpoint["cond_stage_model.transformer.x"] = torch.zeros(2)
    checkpoint[prefix + "loss.logvar"] = torch.zeros(())
    save_file(checkpoint, tmp_path / "vae.safetensors")

    model = KLAEModel.from_pretrained(tmp_path / "vae.safetensors", sample_size=32, norm_num_groups=8)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    for field in ("block_out_channels", "layers_per_block", "latent_channels", "use_quant_conv",
                  "mid_block_add_attention", "in_channels", "out_channels"):
        assert getattr(model.config, field) == reference.config[field], field
    x = images(batch=1)
    with torch.no_grad():
        assert_close(model.encode(x).latent_dist.mean, reference.encode(x).latent_dist.mean)


def test_infer_config_defaults_and_overrides():
    _, model = make_pair("flux")
    config = infer_config_from_state_dict(model.state_dict(), norm_num_groups=8, scaling_factor=0.3611)
    assert (config.latent_channels, config.use_quant_conv, config.use_post_quant_conv) == (16, False, False)
    assert config.sample_size == 512 and config.scaling_factor == 0.3611


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    reference, _ = make_pair("sd1")
    reference.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    del weights["decoder.conv_out.bias"]
    weights["decoder.extra_layer.weight"] = torch.zeros(3)
    weights["encoder.conv_in.weight"] = torch.zeros(1, 1, 3, 3)
    save_file(weights, tmp_path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError) as info:
        KLAEModel.from_pretrained(tmp_path)
    message = str(info.value)
    assert "Missing keys (1): ['decoder.conv_out.bias']" in message
    assert "Unexpected keys (1): ['decoder.extra_layer.weight']" in message
    assert "encoder.conv_in.weight: expected (16, 3, 3, 3), got (1, 1, 3, 3)" in message


def test_pickled_weights_are_refused(tmp_path):
    reference, _ = make_pair("sd1")
    reference.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").exists()
    with pytest.raises(ValueError, match="pickled"):
        KLAEModel.from_pretrained(tmp_path)
    (tmp_path / "vae.ckpt").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="safetensors"):
        KLAEModel.from_pretrained(tmp_path / "vae.ckpt")
    with pytest.raises(ValueError, match="use_safetensors"):
        reference.save_pretrained(tmp_path / "st")
        KLAEModel.from_pretrained(tmp_path / "st", use_safetensors=False)


# ------------------------------------------------------------------------------------------------------------
# Accelerate hooks (model CPU offload)
# ------------------------------------------------------------------------------------------------------------


def test_offload_hooks_fire_on_encode_and_decode_as_for_diffusers():
    from accelerate import cpu_offload_with_hook
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    class CountingHook(ModelHook):
        def __init__(self):
            self.calls = 0

        def pre_forward(self, module, *args, **kwargs):
            self.calls += 1
            return args, kwargs

    reference, model = make_pair("sd1")
    x = images(batch=1)
    counts = []
    for vae in (reference, model):
        hook = CountingHook()
        add_hook_to_module(vae, hook)  # what cpu_offload_with_hook / enable_model_cpu_offload do
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
            vae.decode(z)
        counts.append(hook.calls)
        remove_hook_from_module(vae)
    assert counts[0] == counts[1] == 2

    # accelerate's own offload hook: encode/decode move the model to the execution device and run.
    model, hook = cpu_offload_with_hook(model, execution_device="cpu")
    with torch.no_grad():
        assert model.decode(model.encode(x).latent_dist.mode()).sample.shape == x.shape
    hook.offload()


# ------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------


def test_convert_script_all_directions(tmp_path, capsys):
    convert = load_script("convert")
    reference, _ = make_pair("sdxl")
    reference.save_pretrained(tmp_path / "pipe" / "vae")

    assert convert.main([str(tmp_path / "pipe"), str(tmp_path / "klae"), "--to", "hf_vae", "--subfolder", "vae"]) == 0
    assert convert.main([str(tmp_path / "klae"), str(tmp_path / "diffusers"), "--to", "diffusers"]) == 0
    assert convert.main([str(tmp_path / "klae"), str(tmp_path / "ldm.safetensors"), "--to", "ldm",
                         "--prefix", "first_stage_model."]) == 0
    assert convert.main([str(tmp_path / "ldm.safetensors"), str(tmp_path / "from_ldm"), "--to", "hf_vae",
                         "--set", "scaling_factor=0.13025", "--set", "norm_num_groups=8", "--set", "sample_size=32"]) == 0
    assert "scaling_factor=0.13025" in capsys.readouterr().out

    klae = KLAEModel.from_pretrained(tmp_path / "klae")
    back = AutoencoderKL.from_pretrained(tmp_path / "diffusers")
    from_ldm = KLAEModel.from_pretrained(tmp_path / "from_ldm")
    assert klae.config.scaling_factor == back.config.scaling_factor == from_ldm.config.scaling_factor == 0.13025
    for key, value in reference.state_dict().items():
        for state in (klae.state_dict(), back.state_dict(), from_ldm.state_dict()):
            assert torch.equal(state[key], value), key
    assert all(key.startswith("first_stage_model.") for key in load_file(tmp_path / "ldm.safetensors"))
    with pytest.raises(ValueError, match="KEY=VALUE"):
        convert.parse_overrides(["scaling_factor"])


# a fresh interpreter; fast siblings: tests/test_models.py's import check of every family's remote code and its
# test_a_remote_code_model_behaves_like_the_installed_class
@pytest.mark.slow
def test_the_klae_works_without_diffusers_installed(tmp_path):
    """diffusers is optional: in an interpreter where it cannot be imported, hf_vae imports, a KLAE encodes,
    decodes, saves and loads, and only `to_diffusers` asks for it, in one line. (That the copied remote code needs
    no diffusers either is tests/test_models.py's remote-code test.)"""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys
        class BlockDiffusers:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "diffusers":
                    raise ImportError("diffusers is not installed in this environment")
        sys.meta_path.insert(0, BlockDiffusers())
        import torch
        from hf_vae import KLAEConfig, KLAEModel
        model = KLAEModel(KLAEConfig(in_channels=1, out_channels=1, block_out_channels=[16, 32], norm_num_groups=8,
                                     sample_size=16)).eval()
        x = torch.rand(2, 1, 16, 16) * 2 - 1
        with torch.no_grad():
            reconstruction = model.decode(model.encode(x).latent_dist.mode()).sample
            assert reconstruction.shape == x.shape
            model.save_pretrained({str(tmp_path / "klae")!r})
            loaded = KLAEModel.from_pretrained({str(tmp_path / "klae")!r}).eval()
            assert torch.equal(loaded.decode(loaded.encode(x).latent_dist.mode()).sample, reconstruction)
        try:
            model.to_diffusers()
            raise SystemExit("to_diffusers ran without diffusers")
        except ImportError as error:
            assert "pip install diffusers" in str(error) and "\\n" not in str(error), error
        print("klae-without-diffusers-ok")
    """)
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "klae-without-diffusers-ok" in result.stdout
