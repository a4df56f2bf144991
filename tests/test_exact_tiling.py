"""Exact tiled encode/decode (hf_vae.exact_tiling, `KLAEModel.enable_tiling(exact=True)`).

The independent computation is the untiled network: exact tiles must reproduce it to float rounding (1e-4 max abs
in float32) at sizes that are not multiples of the tile and on non-square images, with every storage, while
diffusers' blended tiles measurably do not. The configs are Stable-Diffusion-shaped but tiny: GroupNorm with 32
groups, 4 latent channels, mid-block attention, a channel change so the 1x1 shortcuts exist; "two_levels" has
f = 2, "four_levels" f = 8 (three up-samplers, so halos cascade through three resolutions).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_vae import KLAEConfig, KLAEModel
from hf_vae.exact_tiling import STORAGES, ActivationStore, GroupStatistics, decode_exact, encode_exact

try:  # the tiny Stable Diffusion components (module-scoped fixtures) of the pipeline tests
    from tests.test_pipelines import PROMPT, scheduler, sd_components, tiny_klae, tokenizer  # noqa: F401
except ImportError:  # `tests` not importable as a package: pytest put tests/ itself on sys.path
    from test_pipelines import PROMPT, scheduler, sd_components, tiny_klae, tokenizer  # noqa: F401

TOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

CONFIGS = {
    "two_levels": dict(block_out_channels=[32, 64], layers_per_block=1),
    "two_levels_lpb2": dict(block_out_channels=[32, 64], layers_per_block=2),
    "four_levels": dict(block_out_channels=[32, 32, 64, 64], layers_per_block=1),
    "no_attention": dict(block_out_channels=[32, 64], layers_per_block=1, mid_block_add_attention=False),
}
#: (config, latent height, latent width, tile size in image pixels): grids of several tiles, partial tiles at the
#: right and bottom, non-square images, a tile that is not a multiple of f at every resolution.
CASES = [
    ("two_levels", 20, 20, 16),
    ("two_levels", 17, 11, 16),
    ("two_levels_lpb2", 9, 23, 14),
    ("four_levels", 13, 7, 32),
    ("four_levels", 6, 11, 20),
    ("no_attention", 15, 10, 16),
]


def make_model(name: str, seed: int = 0) -> KLAEModel:
    blocks = len(CONFIGS[name]["block_out_channels"])
    config = KLAEConfig(**CONFIGS[name], down_block_types=["DownEncoderBlock2D"] * blocks,
                        up_block_types=["UpDecoderBlock2D"] * blocks, norm_num_groups=32, latent_channels=4,
                        sample_size=32)
    torch.manual_seed(seed)
    model = KLAEModel(config).eval()
    with torch.no_grad():  # non-trivial norm affines, so a misplaced scale or shift cannot go unnoticed
        for name_, parameter in model.named_parameters():
            if "norm" in name_:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    return (a - b).abs().max().item()


def seam_case(case):
    name, height, width, tile = case
    factor = 2 ** (len(CONFIGS[name]["block_out_channels"]) - 1)
    model = make_model(name)
    latents = torch.randn(1, 4, height, width, generator=torch.Generator().manual_seed(1))
    images = torch.rand(1, 3, height * factor, width * factor, generator=torch.Generator().manual_seed(2)) * 2 - 1
    return model, latents, images, tile


@pytest.fixture(scope="module", params=CASES, ids=lambda case: f"{case[0]}-{case[1]}x{case[2]}-tile{case[3]}")
def case(request):
    model, latents, images, tile = seam_case(request.param)
    with torch.no_grad():
        untiled = model.decode(latents).sample, model.encode(images).latent_dist.parameters
    return model, latents, images, tile, untiled


# ------------------------------------------------------------------------------------------------------------
# GroupNorm statistics merged over tiles
# ------------------------------------------------------------------------------------------------------------


def test_group_statistics_merged_over_tiles_give_group_norm():
    """Moments of irregular tiles merged (Chan et al.), applied as the affine, against F.group_norm on the whole map:
    float64 tiles against float64 group_norm measure the merge itself; float32 tiles against nn.GroupNorm are the
    case the tiled passes run. An offset mean tests that nothing cancels."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 13, 9, generator=generator) * 3 + 5
    norm = torch.nn.GroupNorm(32, 64, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(generator=generator)
        norm.bias.normal_(generator=generator)
    for dtype, expected, tolerance in [
        (torch.float64, F.group_norm(x.double(), 32, norm.weight.double(), norm.bias.double(), 1e-6), 1e-12),
        (torch.float32, norm(x).detach(), 1e-5),
    ]:
        statistics = GroupStatistics(batch=2, groups=32, device="cpu")
        for rows in ((0, 4), (4, 5), (5, 13)):
            for columns in ((0, 7), (7, 9)):
                statistics.add(x.to(dtype)[:, :, rows[0]:rows[1], columns[0]:columns[1]])
        scale, shift = statistics.affine(norm)
        assert max_difference((x.double() * scale + shift).to(dtype), expected) < tolerance, dtype


def test_mmap_store_keeps_data_after_pages_are_released_and_counts_bytes(tmp_path):
    store = ActivationStore("mmap", torch.device("cpu"), directory=str(tmp_path))
    stored = store.empty((2, 3, 5, 7), torch.float32)
    values = torch.randn(2, 3, 5, 7)
    stored.copy_(values)
    store.release_pages()  # drops the pages from this process; they come back from the (unlinked) file
    assert torch.equal(stored, values)
    assert list(tmp_path.iterdir()) == []  # nothing left behind on disk
    assert store.live_bytes == store.peak_bytes == 2 * 3 * 5 * 7 * 4
    del stored
    assert store.live_bytes == 0 and store.peak_bytes == 2 * 3 * 5 * 7 * 4


# ------------------------------------------------------------------------------------------------------------
# Exact tiles equal the untiled network; diffusers' blended tiles do not
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", STORAGES)
def test_exact_tiled_decode_and_encode_equal_untiled(case, storage):
    model, latents, images, tile, (decoded, moments) = case
    model.enable_tiling(exact=True, tile_size=tile, storage=storage)
    try:
        with torch.no_grad():
            tiled_decoded = model.decode(latents).sample
            tiled_moments = model.encode(images).latent_dist.parameters
    finally:
        model.disable_tiling()
    assert max(latents.shape[-2:]) * model.config.downsampling_factor > tile  # really tiled
    decode_error, encode_error = max_difference(tiled_decoded, decoded), max_difference(tiled_moments, moments)
    print(f"exact tiles, {storage}: decode {decode_error:.2e}, encode {encode_error:.2e}")
    assert decode_error <= TOL and encode_error <= TOL


def common_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference over the top-left region both cover: diffusers' tiling returns a few rows or columns too
    many when the last tile's stride does not fit (here 20x51 instead of 18x46 for 9x23 latents in 12-pixel tiles)."""
    height, width = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
    return (a[:, :, :height, :width] - b[:, :, :height, :width]).abs().max().item()


def test_diffusers_tiles_differ_from_untiled(case):
    """The same sizes with diffusers' blended tiles (overlap 0.25): visibly different. Their tile is the exact
    tile rounded to a multiple of 4·f, so that the tile stride is a whole number of latents (diffusers' encoder
    fails on the 1-pixel slivers other sizes leave at the border)."""
    model, latents, images, tile, (decoded, moments) = case
    quantum = 4 * model.config.downsampling_factor
    model.enable_tiling(tile_sample_min_size=max(1, round(tile / quantum)) * quantum)
    try:
        with torch.no_grad():
            decode_error = common_difference(model.decode(latents).sample, decoded)
            encode_error = common_difference(model.encode(images).latent_dist.parameters, moments)
    finally:
        model.disable_tiling()
        model.enable_tiling(tile_sample_min_size=32)  # back to the config's default tile
        model.disable_tiling()
    print(f"diffusers tiles: decode {decode_error:.2e}, encode {encode_error:.2e}")
    assert decode_error > 1e-2 and encode_error > 1e-2


def test_functions_on_the_backbone_and_with_slicing():
    """decode_exact / encode_exact on the bare Encoder / Decoder, a batch of 2, sliced or not."""
    model, latents, images, tile = seam_case(("two_levels", 11, 14, 12))
    latents, images = latents.repeat(2, 1, 1, 1) * torch.tensor([1.0, -0.5]).view(2, 1, 1, 1), images.repeat(2, 1, 1, 1)
    with torch.no_grad():
        expected = model.decoder(model.post_quant_conv(latents)), model.quant_conv(model.encoder(images))
        decoded = decode_exact(model.decoder, latents, model.post_quant_conv, tile_size=tile, storage="cpu")
        moments = encode_exact(model.encoder, images, model.quant_conv, tile_size=tile, storage="cpu")
        assert max_difference(decoded, expected[0]) <= TOL and max_difference(moments, expected[1]) <= TOL
        model.enable_slicing()
        model.enable_tiling(exact=True, tile_size=tile)
        assert max_difference(model.decode(latents).sample, expected[0]) <= TOL


def test_inexact_tiling_is_unchanged_after_exact_tiling():
    """enable_tiling() after enable_tiling(exact=True) is diffusers' tiling again, bit for bit."""
    model, latents, _, _ = seam_case(("two_levels", 20, 20, 16))
    reference = make_model("two_levels")
    reference.enable_tiling(tile_sample_min_size=16)
    model.enable_tiling(exact=True, tile_size=16)
    model.enable_tiling(tile_sample_min_size=16)
    with torch.no_grad():
        assert torch.equal(model.decode(latents).sample, reference.decode(latents).sample)
    assert model.use_tiling and not model.use_exact_tiling


def test_images_within_one_tile_take_the_untiled_path():
    model, latents, _, _ = seam_case(("two_levels", 8, 8, 16))
    with torch.no_grad():
        expected = model.decode(latents).sample
        model.enable_tiling(exact=True, tile_size=16)
        assert torch.equal(model.decode(latents).sample, expected)


# ------------------------------------------------------------------------------------------------------------
# Inside a Stable Diffusion pipeline
# ------------------------------------------------------------------------------------------------------------


def test_stable_diffusion_with_exact_tiling_gives_the_untiled_image(tokenizer, sd_components):
    """A 96x64 text-to-image run whose VAE decodes in 16-pixel tiles (a 6x4 grid): the same image as untiled."""
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(1)
    vae = tiny_klae()

    def generate():
        pipe = StableDiffusionPipeline(vae=vae, scheduler=scheduler(), **sd_components)
        return pipe(PROMPT, num_inference_steps=2, height=96, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    untiled = generate()
    vae.enable_tiling(exact=True, tile_size=16, storage="mmap")
    exact = generate()
    vae.enable_tiling(tile_sample_min_size=16)
    blended = generate()
    vae.disable_tiling()
    exact_error, blended_error = np.abs(exact - untiled).max(), np.abs(blended - untiled).max()
    print(f"pipeline images: exact tiles {exact_error:.2e}, diffusers tiles {blended_error:.2e}")
    assert exact.shape == (1, 96, 64, 3)
    assert exact_error <= TOL and blended_error > 1e-3


# ------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(exact=True, tile_size=4), r"Expected an int `tile_size` >= the down-sampling factor 8, got 4\."),
    (dict(exact=True, tile_size=64.0), r"Expected an int `tile_size` >= the down-sampling factor 8, got 64\.0\."),
    (dict(exact=True, storage="disk"), r"Expected `storage` one of \('device', 'cpu', 'mmap'\), got 'disk'\."),
    (dict(exact="yes"), r"Expected `exact` True or False, got 'yes'\."),
    (dict(storage="cpu"), r"Expected `tile_size`, `storage` and `storage_dir` only with exact=True, got .*'cpu'"),
])
def test_bad_options_give_one_clear_error(kwargs, message):
    model = make_model("four_levels")
    with pytest.raises(ValueError, match=message) as error:
        model.enable_tiling(**kwargs)
    assert "\n" not in str(error.value)
    assert not model.use_exact_tiling


def test_exact_tiling_refuses_gradients():
    model, latents, _, _ = seam_case(("two_levels", 20, 20, 16))
    model.enable_tiling(exact=True, tile_size=16)
    with pytest.raises(RuntimeError, match="Expected exact tiling under torch.no_grad()"):
        model.decode(latents)

