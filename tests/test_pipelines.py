"""hf_vae models inside real diffusers pipelines, assembled offline from tiny randomly initialised components.

Stable Diffusion (text-to-image, image-to-image) and SDXL image-to-image hold `vae=KLAEModel(...)` and must give the
same images as the same pipeline holding diffusers' AutoencoderKL with the same weights; the VQ-VAE runs inside
LDMPipeline as `vqvae`. The UNets, CLIP text encoders and VAEs are a few thousand parameters; the CLIP tokenizer is
a 60-token byte-level BPE vocabulary the test writes itself (no Hub access).
"""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    LDMPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

from hf_vae import KLAEConfig, KLAEModel, VQVAEConfig, VQVAEModel  # noqa: E402
from hf_vae.integrations.diffusers import use_diffusers_vae, use_klae_vae  # noqa: E402

PROMPT = "a cat"


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A CLIP tokenizer over a-z (byte-level BPE: characters, end-of-word variants and two merges)."""
    folder = tmp_path_factory.mktemp("tokenizer")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    vocab["ca"] = len(vocab)
    vocab["cat</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    assert tokenizer(PROMPT).input_ids == [0, vocab["a</w>"], vocab["cat</w>"], 1]
    return tokenizer


def text_config(tokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=len(tokenizer), hidden_size=16,
                          intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=16,
                          projection_dim=16)


def tiny_klae(**overrides) -> KLAEModel:
    """Two resolutions (f = 2), so 32x32 images have 16x16 latents for the tiny UNet."""
    config = dict(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                  up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=4, sample_size=32)
    config.update(overrides)
    return KLAEModel(KLAEConfig(**config)).eval()


@pytest.fixture(scope="module")
def sd_components(tokenizer):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4,
    )
    return dict(unet=unet, text_encoder=CLIPTextModel(text_config(tokenizer)), tokenizer=tokenizer,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def scheduler():
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def init_image() -> torch.Tensor:
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def text_to_image(pipe):
    return pipe(PROMPT, num_inference_steps=2, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def image_to_image(pipe):
    return pipe(PROMPT, image=init_image(), strength=0.75, num_inference_steps=4, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


@pytest.fixture(scope="module")
def vaes():
    torch.manual_seed(1)
    model = tiny_klae()
    return model, model.to_diffusers()


def tiled_image_to_image(pipe):
    """Two images in 16-pixel tiles (a 3x3 grid of 8-latent tiles): encode and decode blend tiles, batch 2."""
    pipe.vae.enable_tiling()
    pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size = 16, 8
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    try:
        return pipe([PROMPT] * 2, image=images, strength=0.75, num_inference_steps=4, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images
    finally:
        pipe.vae.disable_tiling()


@pytest.mark.parametrize("task", ["text2img", "img2img", "img2img_tiled"])
def test_stable_diffusion_gives_the_same_images(sd_components, vaes, task):
    pipeline_class, run = {
        "text2img": (StableDiffusionPipeline, text_to_image),
        "img2img": (StableDiffusionImg2ImgPipeline, image_to_image),
        "img2img_tiled": (StableDiffusionImg2ImgPipeline, tiled_image_to_image),
    }[task]
    model, reference = vaes
    ours = run(pipeline_class(vae=model, scheduler=scheduler(), **sd_components))
    theirs = run(pipeline_class(vae=reference, scheduler=scheduler(), **sd_components))
    assert ours.shape == ((2 if task == "img2img_tiled" else 1), 32, 32, 3)
    assert np.array_equal(ours, theirs)  # bit-identical, tiled or not


def test_pipeline_save_and_reload_brings_back_klae(sd_components, vaes, tmp_path):
    model, _ = vaes
    pipe = StableDiffusionPipeline(vae=model, scheduler=scheduler(), **sd_components)
    expected = text_to_image(pipe)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["vae"] == ["hf_vae.modeling_klae", "KLAEModel"]

    reloaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(reloaded) is StableDiffusionPipeline and type(reloaded.vae) is KLAEModel
    assert np.array_equal(text_to_image(reloaded), expected)
    # Components can also be swapped in when loading a pipeline saved with diffusers' VAE.
    again = StableDiffusionPipeline.from_pretrained(tmp_path, vae=KLAEModel.from_pretrained(tmp_path / "vae"))
    assert np.array_equal(text_to_image(again), expected)


def test_model_cpu_offload_hooks_fire_on_encode_and_decode(sd_components, vaes):
    """`enable_model_cpu_offload` attaches accelerate's CpuOffload hook; pipelines call vae.encode/vae.decode (not
    forward), so those must trigger it, as they do for diffusers' VAE."""
    counts, images = [], []
    for vae in vaes:
        pipe = StableDiffusionImg2ImgPipeline(vae=vae, scheduler=scheduler(), **sd_components)
        pipe.enable_model_cpu_offload(device="cpu")
        hook = vae._hf_hook
        calls = []
        original = hook.pre_forward

        def counting_pre_forward(module, *args, **kwargs):
            calls.append(type(module).__name__)
            return original(module, *args, **kwargs)

        hook.pre_forward = counting_pre_forward
        images.append(image_to_image(pipe))
        counts.append(len(calls))
        pipe.remove_all_hooks()
    assert counts[0] == counts[1] == 2  # one encode, one decode
    assert np.array_equal(images[0], images[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("force_upcast", [True, False], ids=["upcast", "no_upcast"])
def test_sdxl_upcasting_follows_force_upcast(tokenizer, dtype, force_upcast):
    """SDXL img2img upcasts the VAE to float32 to encode when `force_upcast` (any low precision) and to decode when
    `force_upcast` and the VAE is float16; our VAE must go through exactly the same casts and give the same images."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=8 * 6 + 16,
        cross_attention_dim=32, norm_num_groups=4,
    )
    config = text_config(tokenizer)
    encoders = dict(text_encoder=CLIPTextModel(config), text_encoder_2=CLIPTextModelWithProjection(config),
                    tokenizer=tokenizer, tokenizer_2=tokenizer)
    model = tiny_klae(force_upcast=force_upcast, scaling_factor=0.13025)
    runs = []
    for vae in (model, model.to_diffusers()):
        seen = []
        vae.encoder.register_forward_pre_hook(lambda module, args: seen.append(("encode", args[0].dtype)))
        vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(("decode", args[0].dtype)))
        sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
        pipe = StableDiffusionXLImg2ImgPipeline(vae=vae, unet=unet, scheduler=sched, requires_aesthetics_score=False,
                                                force_zeros_for_empty_prompt=True, **encoders)
        pipe.to(dtype)
        image = pipe(PROMPT, image=init_image(), strength=0.75, num_inference_steps=3, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images
        runs.append((seen, vae.dtype, image))
    (ours_seen, ours_dtype, ours), (theirs_seen, theirs_dtype, theirs) = runs
    encode_dtype = torch.float32 if force_upcast else dtype
    decode_dtype = torch.float32 if force_upcast and dtype == torch.float16 else dtype
    assert ours_seen == theirs_seen == [("encode", encode_dtype), ("decode", decode_dtype)]
    assert ours_dtype == theirs_dtype == dtype  # cast back after use
    assert np.array_equal(ours, theirs)


def test_integration_helpers_swap_the_vae_both_ways(sd_components, tmp_path):
    torch.manual_seed(2)
    pipe = StableDiffusionPipeline(vae=tiny_klae().to_diffusers(), scheduler=scheduler(), **sd_components)
    expected = text_to_image(pipe)
    model = use_klae_vae(pipe)
    assert pipe.vae is model and type(model) is KLAEModel and use_klae_vae(pipe) is model
    assert np.array_equal(text_to_image(pipe), expected)
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["vae"] == ["hf_vae.modeling_klae", "KLAEModel"]
    back = use_diffusers_vae(pipe)
    assert type(back) is AutoencoderKL and pipe.vae is back
    assert np.array_equal(text_to_image(pipe), expected)
    with pytest.raises(ValueError, match="KLAEModel"):
        use_diffusers_vae(pipe)


# ------------------------------------------------------------------------------------------------------------
# VQ-VAE in LDMPipeline
# ------------------------------------------------------------------------------------------------------------


def tiny_vqvae(scaling_factor: float) -> VQVAEModel:
    torch.manual_seed(3)
    config = VQVAEConfig(backbone="conv", in_channels=3, image_size=16, block_out_channels=[8, 16], layers_per_block=1,
                         norm_num_groups=4, embedding_dim=4, num_embeddings=16, likelihood="gaussian",
                         scaling_factor=scaling_factor)
    return VQVAEModel(config).eval()


def ldm_pipeline(vqvae):
    torch.manual_seed(4)
    unet = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, attention_head_dim=4)
    return LDMPipeline(vqvae=vqvae, unet=unet, scheduler=DDIMScheduler())


def run_ldm(pipe):
    return pipe(batch_size=1, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)).images


def record_decode_inputs(vqvae):
    inputs, decode = [], vqvae.decode

    def recording_decode(latents, *args, **kwargs):
        inputs.append(latents.clone())
        return decode(latents, *args, **kwargs)

    vqvae.decode = recording_decode
    return inputs


def test_vq_vae_in_ldm_pipeline_quantises_and_scales(tmp_path):
    vqvae = tiny_vqvae(scaling_factor=0.5)
    pipe = ldm_pipeline(vqvae)
    inputs = record_decode_inputs(vqvae)
    images = run_ldm(pipe)
    assert images.shape == (1, 16, 16, 3) and images.min() >= 0 and images.max() <= 1

    # decode snapped the pipeline's latents to their nearest codes before decoding
    latents = inputs[0]
    flat = latents.movedim(1, -1).reshape(-1, vqvae.config.embedding_dim)
    indices = vqvae.quantizer.nearest_codes(flat).view(1, 8, 8)
    expected = (vqvae.decode_indices(indices) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.allclose(images, expected, atol=1e-6)
    with torch.no_grad():
        unquantised = vqvae.decode(latents, force_not_quantize=True).sample
    assert not torch.allclose((unquantised / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1), torch.from_numpy(images))

    # the pipeline divides by config.scaling_factor: the same run with scale 1 hands decode latents twice smaller
    unscaled = tiny_vqvae(scaling_factor=1.0)
    unscaled_inputs = record_decode_inputs(unscaled)
    run_ldm(ldm_pipeline(unscaled))
    assert torch.allclose(unscaled_inputs[0] * 2, latents, atol=1e-6)

    del vqvae.decode  # drop the recording wrapper before saving
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["vqvae"] == ["hf_vae.modeling_vqvae", "VQVAEModel"]
    reloaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(reloaded) is LDMPipeline and type(reloaded.vqvae) is VQVAEModel
    assert np.allclose(run_ldm(reloaded), images, atol=1e-6)
