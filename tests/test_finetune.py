"""Fine-tuning pretrained autoencoders: `--pretrained_model_name_or_path` from a diffusers folder, a latent-diffusion
single file and the (loopback) Hub, decoder-only training, before/after evaluation, the diffusers copy in vae/, a
StableDiffusionPipeline on the result, resuming after SIGKILL, continuing an hf_vae model from the Hub, and every
refusal (before anything is written)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL, StableDiffusionPipeline  # noqa: E402

from hf_vae import KLAEModel  # noqa: E402
from hf_vae.klae_conversion import to_ldm_state_dict  # noqa: E402
from hf_vae.training.pretrained import PretrainedSourceError, resolve_source  # noqa: E402
from hf_vae.training.trainer import main  # noqa: E402

try:  # the tiny offline Stable Diffusion components of the pipeline tests
    from tests.test_pipelines import scheduler, sd_components, text_to_image, tokenizer  # noqa: F401
except ImportError:  # tests/ itself on sys.path
    from test_pipelines import scheduler, sd_components, text_to_image, tokenizer  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
ENCODER_SIDE = ("encoder.", "quant_conv.")
FAST = ["--max_steps", "8", "--batch_size", "8", "--learning_rate", "2e-3", "--warmup_steps", "0",
        "--perceptual_weight", "0", "--image_size", "32", "--eval_steps", "0", "--report_to", "jsonl",
        "--logging_steps", "1", "--num_sample_images", "4", "--checkpointing_steps", "0", "--kl_weight", "1e-4"]

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # see tests/conftest.py


def _write_images(folder: Path, n: int, seed: int, disc: bool = True) -> None:
    """n 32x32 RGB images: a coloured background with a disc (or a bar) of another colour."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:32, :32]
    from PIL import Image

    for i in range(n):
        image = np.zeros((32, 32, 3), np.uint8) + rng.integers(0, 256, 3, dtype=np.uint8)
        cy, cx, r = rng.integers(8, 24), rng.integers(8, 24), rng.integers(4, 10)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r if disc else abs(xx - cx) < r // 2
        image[mask] = rng.integers(0, 256, 3, dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same tiny AutoencoderKL as a diffusers folder (inside a pipeline-like vae/ subfolder), as an LDM single
    file under first_stage_model., and its config; plus an image folder with train/ and test/."""
    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=4, sample_size=64, latent_channels=4)
    vae.save_pretrained(root / "pipeline" / "vae")  # (trained on 32x32 images: sample_size is the tile size)
    weights = {k: v.contiguous() for k, v in vae.state_dict().items()}
    ldm = {f"first_stage_model.{k}": v.contiguous() for k, v in to_ldm_state_dict(weights, 2).items()}
    ldm["model.diffusion_model.out.weight"] = torch.zeros(2)  # the rest of an SD checkpoint is ignored
    save_file(ldm, root / "sd-checkpoint.safetensors")
    _write_images(root / "images" / "train", 32, seed=1)
    _write_images(root / "images" / "test", 8, seed=2)
    return {"root": root, "diffusers": root / "pipeline", "ldm": root / "sd-checkpoint.safetensors",
            "config": root / "pipeline" / "vae" / "config.json", "images": root / "images", "weights": weights}


def _losses(output_dir) -> list:
    lines = (Path(output_dir) / "logs" / "train" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train/rec_loss"] for line in lines if "train/rec_loss" in line]


def _check_decoder_only_finetune(output_dir: Path, source_weights, record, sd_components):
    published = load_file(output_dir / "model.safetensors")
    frozen = [k for k in source_weights if k.startswith(ENCODER_SIDE)]
    assert frozen and all(torch.equal(published[k], source_weights[k]) for k in frozen), "the encoder side moved"
    moved = [k for k in source_weights if k.startswith("decoder.") and not torch.equal(published[k], source_weights[k])]
    assert len(moved) > 10, "the decoder did not train"
    losses = _losses(output_dir)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), f"the training loss did not go down: {losses}"
    # Before and after on the same held-out images.
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["pretrained"]["train_modules"] == "decoder"
    assert metrics["pretrained"]["metrics"].keys() == metrics["metrics"].keys() >= {"mse", "psnr", "ssim"}
    assert metrics["metrics"]["mse"] < metrics["pretrained"]["metrics"]["mse"]
    assert record["pretrained"]["metrics"] == metrics["pretrained"]["metrics"]
    # The diffusers copy in vae/ is the published model, and it runs in a Stable Diffusion pipeline.
    vae = AutoencoderKL.from_pretrained(output_dir, subfolder="vae")
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in published.items())
    klae = KLAEModel.from_pretrained(output_dir)
    images = text_to_image(StableDiffusionPipeline(vae=vae, scheduler=scheduler(), **sd_components))
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
    assert np.array_equal(images, text_to_image(StableDiffusionPipeline(vae=klae, scheduler=scheduler(),
                                                                        **sd_components)))


def test_decoder_finetune_from_a_diffusers_folder(sources, sd_components, tmp_path, capsys):
    out = tmp_path / "out"
    record = main(["--pretrained_model_name_or_path", str(sources["diffusers"]), "--pretrained_subfolder", "vae",
                   "--train_modules", "decoder", "--dataset", str(sources["images"]), "--output_dir", str(out),
                   "--ema_decay", "0.5", "--weight_decay", "0.1", "--gradient_checkpointing", *FAST])
    assert record["model"] == "klae"  # inferred
    printed = capsys.readouterr().out
    assert "pretrained" in printed and "fine-tuned" in printed  # the before/after table
    args = json.loads((out / "training_args.json").read_text())
    assert args["pretrained"]["format"] == "diffusers" and args["resolved"]["frozen_modules"] == ["encoder", "quant_conv"]
    published_config = json.loads((out / "config.json").read_text())
    assert published_config["kl_weight"] == 1e-4  # an objective flag applies
    assert published_config["sample_size"] == 64  # the source's tile size, not the training resolution (32)
    _check_decoder_only_finetune(out, sources["weights"], record, sd_components)


def test_decoder_finetune_from_a_latent_diffusion_checkpoint(sources, sd_components, tmp_path):
    out = tmp_path / "out"
    record = main(["--pretrained_model_name_or_path", str(sources["ldm"]), "--pretrained_config",
                   str(sources["config"]), "--train_modules", "decoder", "--dataset", str(sources["images"]),
                   "--output_dir", str(out), *FAST])
    assert record["pretrained"]["format"] == "ldm"
    _check_decoder_only_finetune(out, sources["weights"], record, sd_components)


def test_decoder_finetune_from_the_hub(sources, sd_components, hub_server, tmp_path):
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("alice/tiny-sd", token="token-alice")
    commit = api.upload_folder(repo_id="alice/tiny-sd", folder_path=str(sources["diffusers"]), token="token-alice")
    api.upload_file(repo_id="alice/tiny-sd", path_or_fileobj=b"{}", path_in_repo="notes/config.json",
                    token="token-alice")  # a later commit; the run pins the first one
    out = tmp_path / "out"
    record = main(["--pretrained_model_name_or_path", "alice/tiny-sd", "--pretrained_subfolder", "vae",
                   "--pretrained_revision", commit.oid, "--train_modules", "decoder", "--dataset",
                   str(sources["images"]), "--output_dir", str(out), *FAST])
    assert record["pretrained"]["name_or_path"] == "alice/tiny-sd" and record["pretrained"]["revision"] == commit.oid
    _check_decoder_only_finetune(out, sources["weights"], record, sd_components)
    # The model card names the base model (metadata and text), what was trained, and both evaluations.
    from hf_vae.integrations.hub import push_output_dir
    from hf_vae.integrations.model_card import render_model_card

    card = render_model_card(str(out))
    assert card.data.base_model == "alice/tiny-sd"
    assert "Fine-tuned from [`alice/tiny-sd`]" in card.text and "only the decoder was trained" in card.text
    psnr = record["pretrained"]["metrics"]["psnr"], record["metrics"]["psnr"]
    assert f"| PSNR | {psnr[0]:.4g} | {psnr[1]:.4g} | {psnr[1] - psnr[0]:+.4g} | higher |" in card.text
    push_output_dir(str(out), "alice/tiny-sd-ft", token="token-alice")
    pushed = StableDiffusionPipeline(vae=AutoencoderKL.from_pretrained("alice/tiny-sd-ft", subfolder="vae"),
                                     scheduler=scheduler(), **sd_components)
    assert np.isfinite(text_to_image(pushed)).all()
    # The Hub refusals: a revision or a subfolder that does not exist.
    with pytest.raises(PretrainedSourceError, match="--pretrained_revision 'nope' does not exist in Hub repo"):
        resolve_source("alice/tiny-sd", subfolder="vae", revision="nope")
    with pytest.raises(PretrainedSourceError, match=r"--pretrained_subfolder 'unet' does not exist .*\['notes', 'vae'\]"):
        resolve_source("alice/tiny-sd", subfolder="unet")
    with pytest.raises(PretrainedSourceError, match="add --pretrained_subfolder vae|neither format"):
        resolve_source("alice/tiny-sd")


def test_ldm_architecture_is_read_off_the_key_shapes(tmp_path):
    """Without --pretrained_config: channels, depth, latents, attention from the shapes; 32 groups as in ldm."""
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, latent_channels=4)
    save_file({k: v.contiguous() for k, v in to_ldm_state_dict(vae.state_dict(), 2).items()}, tmp_path / "vae.safetensors")
    source = resolve_source(str(tmp_path / "vae.safetensors"))
    assert (source.format, source.model) == ("ldm", "klae")
    config = source.config
    assert (config.block_out_channels, config.layers_per_block, config.latent_channels, config.norm_num_groups) == \
        ([32, 64], 1, 4, 32)
    model = source.load()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in vae.state_dict().items())


def _train_small_vae(output_dir, dataset, extra=()):
    return main(["--model", "vae", "--dataset", dataset, "--backbone", "conv", "--block_out_channels", "8", "16",
                 "--norm_num_groups", "4", "--latent_channels", "2", "--max_steps", "6", "--batch_size", "16",
                 "--eval_steps", "0", "--report_to", "none", "--eval_importance_samples", "2",
                 "--final_eval_max_examples", "32", "--num_sample_images", "4", "--checkpointing_steps", "0",
                 "--num_train_examples", "200", "--output_dir", str(output_dir), *extra])


def test_continue_a_published_vae_from_the_hub_on_another_dataset(hub_server, tmp_path):
    from hf_vae.integrations.hub import push_output_dir

    _train_small_vae(tmp_path / "shapes", "shapes", ["--image_size", "32"])
    push_output_dir(str(tmp_path / "shapes"), "alice/vae-shapes", token="token-alice")
    source = load_file(tmp_path / "shapes" / "model.safetensors")
    record = main(["--pretrained_model_name_or_path", "alice/vae-shapes", "--dataset", "fashion_mnist",
                   "--max_steps", "4", "--batch_size", "16", "--eval_steps", "0", "--report_to", "none",
                   "--eval_importance_samples", "2", "--final_eval_max_examples", "32", "--num_sample_images", "4",
                   "--checkpointing_steps", "0", "--output_dir", str(tmp_path / "fmnist")])
    assert record["model"] == "vae" and record["pretrained"]["format"] == "hf_vae"
    config = json.loads((tmp_path / "fmnist" / "config.json").read_text())
    assert config["image_size"] == 28 and config["block_out_channels"] == [8, 16]  # the data's size, same weights
    assert record["pretrained"]["metrics"].keys() == record["metrics"].keys() >= {"neg_elbo", "nll", "psnr"}
    continued = load_file(tmp_path / "fmnist" / "model.safetensors")
    assert continued.keys() == source.keys() and any(not torch.equal(continued[k], source[k]) for k in source)


RESUME_STEPS = 12


def _finetune_command(sources, output_dir):
    return [sys.executable, str(REPO / "scripts" / "train.py"), "--pretrained_model_name_or_path",
            str(sources["diffusers"] / "vae"), "--train_modules", "decoder", "--dataset", str(sources["images"]),
            "--output_dir", str(output_dir), "--max_steps", str(RESUME_STEPS), "--batch_size", "4",
            "--checkpointing_steps", "2", "--perceptual_weight", "0", "--image_size", "32", "--eval_steps", "0",
            "--report_to", "none", "--num_sample_images", "4", "--ema_decay", "0.9", "--resume_from_checkpoint",
            "latest"]


# three fine-tuning runs in subprocesses, one killed; fast siblings: tests/test_fuzz_checkpoints.py's SIGKILL moments
@pytest.mark.slow
def test_sigkill_then_resume_a_finetune_gives_the_same_weights(sources, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_finetune_command(sources, reference), env=env, check=True, capture_output=True)
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(_finetune_command(sources, killed), env=env, stdout=log, stderr=subprocess.STDOUT)
        target = killed / "checkpoints" / "checkpoint-4"
        deadline = time.time() + 120
        while not target.is_dir() and process.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "model.safetensors").exists()
    result = subprocess.run(_finetune_command(sources, killed), env=env, check=True, capture_output=True, text=True)
    assert "Resumed from" in result.stdout and "Starting from" not in result.stdout
    expected, got = load_file(reference / "model.safetensors"), load_file(killed / "model.safetensors")
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"the resumed fine-tune differs from the uninterrupted one in {different}"
    assert all(torch.equal(got[k], v) for k, v in sources["weights"].items() if k.startswith(ENCODER_SIDE))


# ------------------------------------------------------------------------------------------------------------
# Refusals: each names what was found and what was expected, and nothing is written
# ------------------------------------------------------------------------------------------------------------


def _refused(capsys, argv, *fragments):
    output_dir = Path(argv[argv.index("--output_dir") + 1])
    with pytest.raises(SystemExit):
        main(argv)
    message = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in message, message
    assert not output_dir.exists(), f"{output_dir} was written before the refusal"
    return message


def test_every_refusal_names_found_and_expected_before_writing(sources, tmp_path, capsys):
    common = ["--dataset", str(sources["images"]), "--output_dir", str(tmp_path / "never"), *FAST]
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    _refused(capsys, ["--pretrained_model_name_or_path", str(junk), *common], "neither format", "notes.txt")
    _refused(capsys, ["--pretrained_model_name_or_path", "someone/missing-vae", *common],
             "'someone/missing-vae' is not a local path", "neither in the local cache nor reachable")
    (tmp_path / "vae.ckpt").write_bytes(b"\x80")
    _refused(capsys, ["--pretrained_model_name_or_path", str(tmp_path / "vae.ckpt"), *common], "neither format",
             "'.ckpt'")
    _refused(capsys, ["--pretrained_model_name_or_path", str(sources["diffusers"]), *common],
             "add --pretrained_subfolder vae")
    _refused(capsys, ["--pretrained_model_name_or_path", str(sources["diffusers"]), "--pretrained_subfolder", "unet",
                      *common], "--pretrained_subfolder 'unet' does not exist", "['vae']")
    _refused(capsys, ["--pretrained_model_name_or_path", str(sources["diffusers"] / "vae"), "--model", "vq_vae",
                      *common], "--model vq_vae contradicts", "'klae' model")
    _refused(capsys, ["--pretrained_model_name_or_path", str(sources["diffusers"] / "vae"), "--block_out_channels",
                      "8", "32", "--latent_channels", "8", *common],
             "block_out_channels: the pretrained model has [8, 16], the run asks for [8, 32]",
             "latent_channels: the pretrained model has 4, the run asks for 8")
    # Weights that do not fit their config: an LDM file read with another architecture.
    wrong = json.loads(sources["config"].read_text())
    wrong["block_out_channels"] = [8, 8]
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    _refused(capsys, ["--pretrained_model_name_or_path", str(sources["ldm"]), "--pretrained_config",
                      str(tmp_path / "wrong.json"), *common], "do not fit", "Shape mismatches",
             "expected (8, 8, 3, 3), got (16, 8, 3, 3)")
    # An hf_vae folder whose config.json was edited after the weights were saved.
    from hf_vae import VAEConfig, VAEModel

    VAEModel(VAEConfig(in_channels=3, image_size=32, hidden_dims=[16], latent_dim=2)).save_pretrained(tmp_path / "vae")
    edited = json.loads((tmp_path / "vae" / "config.json").read_text())
    edited["hidden_dims"] = [24]
    (tmp_path / "vae" / "config.json").write_text(json.dumps(edited))
    _refused(capsys, ["--pretrained_model_name_or_path", str(tmp_path / "vae"), *common[:4], "--max_steps", "2"],
             "do not fit the config of", "shape mismatches", "the config needs (24, 3072), the file has (16, 3072)")
    _refused(capsys, ["--train_modules", "decoder", *common], "needs --pretrained_model_name_or_path")


def test_a_pretrained_cvae_needs_the_datasets_classes(tmp_path, capsys):
    from hf_vae import CVAEConfig, CVAEModel

    CVAEModel(CVAEConfig(num_classes=3, in_channels=3, image_size=32, hidden_dims=[16], latent_dim=2)).save_pretrained(
        tmp_path / "cvae")
    for name in ("a", "b"):
        _write_images(tmp_path / "classes" / name, 6, seed=ord(name))
    _refused(capsys, ["--pretrained_model_name_or_path", str(tmp_path / "cvae"), "--dataset", str(tmp_path / "classes"),
                      "--output_dir", str(tmp_path / "never"), "--max_steps", "2"],
             "has num_classes=3", "has 2 classes")


@pytest.mark.parametrize("recipe", ["sd-vae-ft-ema", "sd-vae-ft-mse"])
def test_recipes_run_with_a_local_source(recipe, sources, tmp_path):
    """configs/<recipe>.yaml with only the source, the data and the size overridden (and no LPIPS weights here)."""
    import yaml

    path = REPO / "configs" / f"{recipe}.yaml"
    values = yaml.safe_load(path.read_text())
    assert values["train_modules"] == "decoder" and values["ema_decay"] > 0
    source = sources["diffusers"] if values.get("pretrained_subfolder") else sources["diffusers"] / "vae"
    out = tmp_path / recipe
    record = main(["--config", str(path), "--pretrained_model_name_or_path", str(source), "--dataset",
                   str(sources["images"]), "--output_dir", str(out), "--image_size", "32", "--max_steps", "2",
                   "--batch_size", "4", "--perceptual_weight", "0", "--eval_steps", "0", "--checkpointing_steps", "0",
                   "--num_sample_images", "4"])
    args = json.loads((out / "training_args.json").read_text())
    assert args["pixel_loss"] == values["pixel_loss"] and args["disc_weight"] == values["disc_weight"]
    assert args["gradient_checkpointing"] is True and args["ema_decay"] == values["ema_decay"]
    published = load_file(out / "model.safetensors")
    assert all(torch.equal(published[k], v) for k, v in sources["weights"].items() if k.startswith(ENCODER_SIDE))
    assert record["pretrained"]["metrics"].keys() == record["metrics"].keys()


def test_decoder_finetune_of_a_diffusers_vqmodel_keeps_legacy_beta(sources, tmp_path):
    from diffusers import VQModel

    torch.manual_seed(0)
    vq = VQModel(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                 up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=4, latent_channels=3, num_vq_embeddings=16,
                 vq_embed_dim=4, sample_size=32).eval()
    vq.save_pretrained(tmp_path / "ldm" / "vqvae")
    source = resolve_source(str(tmp_path / "ldm"), subfolder="vqvae")
    assert (source.format, source.model) == ("diffusers_vq", "vq_vae")
    model = source.load().eval()
    assert model.config.beta_on_codebook and model.config.use_quant_conv and model.config.num_embeddings == 16
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.reconstruct(x), vq(x).sample, atol=1e-5, rtol=1e-5)
        latents = vq.encode(x).latents
        torch.testing.assert_close(model.decode(latents).sample, vq.decode(latents).sample, atol=1e-5, rtol=1e-5)
        assert torch.equal(model.encode_to_indices(x).flatten(),
                           vq.quantize(latents)[2][2].flatten())  # the same codes
    out = tmp_path / "out"
    record = main(["--pretrained_model_name_or_path", str(tmp_path / "ldm"), "--pretrained_subfolder", "vqvae",
                   "--train_modules", "decoder", "--dataset", str(sources["images"]), "--output_dir", str(out),
                   "--max_steps", "4", "--batch_size", "8", "--eval_steps", "0", "--report_to", "none",
                   "--num_sample_images", "4", "--checkpointing_steps", "0", "--commitment_cost", "0.5"])
    assert record["model"] == "vq_vae"
    config = json.loads((out / "config.json").read_text())
    assert config["beta_on_codebook"] is True and config["commitment_cost"] == 0.5  # an objective flag applies
    published = load_file(out / "model.safetensors")
    reference = {k: v for k, v in model.state_dict().items()}
    frozen = [k for k in reference if k.startswith(("encoder.", "quant_conv.", "quantizer.embedding"))]
    assert all(torch.equal(published[k], reference[k]) for k in frozen)
    assert any(not torch.equal(published[k], reference[k]) for k in reference if k.startswith("decoder."))
