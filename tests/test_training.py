"""Tests of the training loop (hf_vae.training): arguments, every variant, the KLAE/VQGAN objective, NaN handling,
EMA, publishing. Tiny models on 16x16 shapes, a few steps each."""

from __future__ import annotations

import json
import math
import os
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from hf_vae.training import DataArguments, NonFiniteLossError, TrainArguments, parse_args, train
from hf_vae.training.arguments import model_config_fields
from hf_vae.training.perceptual import LPIPS, PerceptualWeightsMissingError
from hf_vae.training.checkpointing import read_training_state
from hf_vae.training.optimisation import lr_lambda
from hf_vae.training.trainer import default_output_dir, main

TINY_MLP = {"image_size": 16, "hidden_dims": [32], "latent_dim": 4}
TINY_CONV = {"image_size": 16, "backbone": "conv", "block_out_channels": [8, 16], "norm_num_groups": 4,
             "layers_per_block": 1, "mid_block_add_attention": False}


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # see tests/conftest.py


def tiny_run(tmp_path, name="run", **overrides):
    """TrainArguments/DataArguments for a run of a few seconds."""
    train_kwargs = dict(output_dir=str(tmp_path / name), max_steps=6, batch_size=8, eval_steps=0,
                        checkpointing_steps=3, report_to="jsonl", eval_importance_samples=4,
                        final_eval_max_examples=32, eval_batch_size=32, num_sample_images=8, logging_steps=1)
    data_kwargs = dict(num_train_examples=200)
    for key, value in overrides.items():
        (data_kwargs if key in DataArguments.__dataclass_fields__ else train_kwargs)[key] = value
    return TrainArguments(**train_kwargs), DataArguments(**data_kwargs)


def read_logs(output_dir):
    with open(os.path.join(output_dir, "logs", "train", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------------------


def test_parse_args_reads_flags_config_file_and_model_fields(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: beta_vae\nmax_steps: 7\nbeta: 8.0\nlatent_dim: 6\nlearning_rate: 0.01\n")
    train_args, data_args, model_config = parse_args(
        ["--config", str(config), "--max_steps", "9", "--dataset", "fashion_mnist", "--block_out_channels", "8",
         "16", "--hidden_dims", "64", "--use_capacity", "--gamma=10"])
    assert train_args.model == "beta_vae"
    assert train_args.max_steps == 9  # the command line wins over the file
    assert train_args.learning_rate == 0.01  # the file wins over the default
    assert data_args.dataset == "fashion_mnist"
    assert model_config == {"beta": 8.0, "latent_dim": 6, "block_out_channels": [8, 16], "hidden_dims": [64],
                            "use_capacity": True, "gamma": 10}

    json_config = tmp_path / "run.json"
    json_config.write_text(json.dumps({"model": "vq_vae", "num_embeddings": 16, "seed": 3}))
    train_args, _, model_config = parse_args(["--config", str(json_config)])
    assert (train_args.model, train_args.seed, model_config) == ("vq_vae", 3, {"num_embeddings": 16})


def test_unknown_flag_names_the_accepted_config_fields():
    with pytest.raises(ValueError, match=r"--latent_dimm for --model vae.*VAEConfig.*latent_dim"):
        parse_args(["--latent_dimm", "3"])
    assert "beta" in model_config_fields("beta_vae") and "beta" not in model_config_fields("vae")
    assert "image_size" in model_config_fields("klae")  # alias of sample_size
    with pytest.raises(ValueError, match=r"Expected `model` in"):
        TrainArguments(model="gan")
    with pytest.raises(ValueError, match=r"Expected `batch_size` to be a positive int, got 0"):
        TrainArguments(batch_size=0)


def test_default_run_is_a_vae_on_shapes():
    args, data = TrainArguments(), DataArguments()
    assert (args.model, data.dataset, args.mixed_precision) == ("vae", "shapes", "no")
    assert default_output_dir(args.model, data.dataset) == os.path.join("outputs", "vae-shapes")
    assert default_output_dir("vae", "/data/my photos/") == os.path.join("outputs", "vae-my_photos")


def test_learning_rate_warms_up_then_follows_a_cosine():
    factor = lr_lambda(warmup_steps=10, max_steps=110, schedule="cosine", min_ratio=0.1)
    assert factor(0) == pytest.approx(1 / 11)
    assert factor(9) == pytest.approx(10 / 11)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert factor(110) == pytest.approx(0.1)
    assert lr_lambda(0, 100, "constant", 0.0)(77) == 1.0


# ------------------------------------------------------------------------------------------------------------
# The output contract
# ------------------------------------------------------------------------------------------------------------


def test_train_vae_writes_the_output_folder_contract(tmp_path):
    from transformers import AutoModel

    import hf_vae  # noqa: F401

    args, data = tiny_run(tmp_path, max_steps=30, eval_steps=10, checkpointing_steps=10, checkpoints_total_limit=2,
                          eval_max_examples=32, learning_rate=3e-3)
    record = train(args, data, dict(TINY_MLP))
    out = args.output_dir
    for name in ("config.json", "model.safetensors", "metrics.json", "training_args.json", "reconstructions.png",
                 "samples.png", "modeling_vae.py"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]
    # retention: only the newest two checkpoints remain
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["checkpoint-20", "checkpoint-30"]

    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert set(metrics) == {"model", "dataset", "split", "step", "metrics"}
    assert (metrics["model"], metrics["dataset"], metrics["split"], metrics["step"]) == ("vae", "shapes", "test", 30)
    assert list(metrics["metrics"]) == ["neg_elbo", "nll", "bits_per_dim", "mse", "psnr", "ssim", "mig"]
    assert all(math.isfinite(v) for v in metrics["metrics"].values())
    assert record["metrics"] == metrics["metrics"]
    with open(os.path.join(out, "training_args.json")) as f:
        run_args = json.load(f)
    assert run_args["max_steps"] == 30 and run_args["dataset"] == "shapes"
    assert run_args["model_config"] == TINY_MLP

    model = AutoModel.from_pretrained(out)
    assert type(model).__name__ == "VAEModel" and model.config.image_size == 16
    published = load_file(os.path.join(out, "model.safetensors"))
    final_checkpoint = load_file(os.path.join(out, "checkpoints", "checkpoint-30", "model.safetensors"))
    assert published.keys() == final_checkpoint.keys()
    assert all(torch.equal(published[k], final_checkpoint[k]) for k in published)

    logs = read_logs(out)
    losses = [r["train/loss"] for r in logs if "train/loss" in r]
    assert len(losses) == 30 and losses[-1] < losses[0]  # it learns
    assert [r["step"] for r in logs if "eval/nll" in r] == [10, 20, 30]
    from PIL import Image

    with Image.open(os.path.join(out, "reconstructions.png")) as image:
        # 4 inputs + 4 reconstructions of 16x16 with 2-pixel padding: two rows of 4
        assert image.size == (4 * 18 + 2, 2 * 18 + 2) and image.mode == "L"


@pytest.mark.parametrize("model, model_config, expect", [
    ("beta_vae", dict(TINY_MLP, beta=4.0, use_capacity=True, capacity_steps=10), ["neg_elbo", "nll", "mig"]),
    ("vq_vae", dict(TINY_CONV, num_embeddings=16, embedding_dim=4, likelihood="gaussian"),
     ["mse", "psnr", "codebook_usage", "perplexity"]),
    ("cvae", dict(TINY_MLP), ["neg_elbo", "nll", "mig"]),
    ("vae", dict(TINY_MLP, likelihood="laplace", learn_likelihood_scale=True), ["neg_elbo", "nll", "bits_per_dim"]),
])
def test_every_variant_trains_through_the_same_loop(tmp_path, model, model_config, expect):
    args, data = tiny_run(tmp_path, model=model, checkpointing_steps=0)
    record = train(args, data, model_config)
    assert set(expect) <= set(record["metrics"])
    assert all(math.isfinite(v) for v in record["metrics"].values())
    weights = load_file(os.path.join(args.output_dir, "model.safetensors"))
    if model == "beta_vae":  # set_training_step was called every step: the capacity schedule advanced
        assert int(weights["training_step"]) == args.max_steps - 1
    if model == "cvae":
        from transformers import AutoConfig

        assert AutoConfig.from_pretrained(args.output_dir).num_classes == 3  # from the shapes labels
    if model in ("vq_vae", "vae"):
        with open(os.path.join(args.output_dir, "training_args.json")) as f:
            resolved = json.load(f)["resolved"]
        assert resolved["value_range"] == [-1.0, 1.0]  # Gaussian / Laplace decoder -> [-1, 1] data
        # a continuous density trains on dequantised 8-bit data; the VQ-VAE reports no likelihood and does not
        assert resolved["dequantize"] is (model == "vae") and resolved["binarize"] is False
        if model == "vae":  # bits of the 8-bit data: positive, whatever the density's value
            assert record["metrics"]["bits_per_dim"] > 0


def test_cvae_on_a_dataset_without_labels_is_refused(tmp_path):
    args, data = tiny_run(tmp_path, model="cvae", dataset="photos", num_train_examples=50)
    with pytest.raises(ValueError, match=r"cvae needs class labels, but dataset 'photos' has none"):
        train(args, data, dict(TINY_MLP))


def test_command_line_errors_are_one_clean_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "cvae", "--dataset", "photos", "--output_dir", str(tmp_path / "x"), "--image_size", "16"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: --model cvae needs class labels")


# ------------------------------------------------------------------------------------------------------------
# The KLAE objective and VQGAN
# ------------------------------------------------------------------------------------------------------------

TINY_KLAE = {"image_size": 16, "block_out_channels": [8, 16], "norm_num_groups": 4, "latent_channels": 2,
             "mid_block_add_attention": False}


def test_klae_refuses_to_train_against_a_random_perceptual_network(tmp_path):
    args, data = tiny_run(tmp_path, model="klae", perceptual_weight=1.0)  # asked for, so no silent fallback
    with pytest.raises(PerceptualWeightsMissingError) as error:
        train(args, data, dict(TINY_KLAE))
    assert "--lpips_weights DIR" in str(error.value) and "--perceptual_weight 0" in str(error.value)


def test_klae_full_objective_with_lpips_and_discriminator(tmp_path):
    weights_dir = tmp_path / "lpips"
    torch.manual_seed(0)
    LPIPS().save_weights(weights_dir)  # random but loaded from files: stands in for converted weights
    args, data = tiny_run(tmp_path, model="klae", lpips_weights=str(weights_dir), perceptual_weight=1.0,
                          disc_start=3, disc_num_layers=1, disc_ndf=8, max_steps=5, checkpointing_steps=5,
                          batch_size=4)
    record = train(args, data, dict(TINY_KLAE))
    assert {"mse", "psnr", "ssim"} <= set(record["metrics"]) and "nll" not in record["metrics"]
    logs = [r for r in read_logs(args.output_dir) if "train/loss" in r]
    assert all(r["train/p_loss"] > 0 for r in logs)  # the perceptual term is in the loss
    assert [r["train/disc_factor"] for r in logs] == [0.0, 0.0, 0.0, 1.0, 1.0]  # switched on at disc_start
    assert all("train/disc_loss" in r for r in logs[3:]) and not any("train/disc_loss" in r for r in logs[:3])
    assert logs[-1]["train/d_weight"] > 0  # the adaptive weight on the decoder's last layer
    # latent diffusion's log-variance stays at logvar_init unless --learn_logvar (see the next test)
    assert all(r["train/logvar"] == 0.0 for r in logs)
    # The discriminator is in the training state, not in the published model.
    published = load_file(os.path.join(args.output_dir, "model.safetensors"))
    assert not any("discriminator" in k or k.startswith("main.") for k in published)
    checkpoint = os.path.join(args.output_dir, "checkpoints", "checkpoint-5")
    states = read_training_state(checkpoint)
    assert "main.0.weight" in states["objective"]["discriminator"]
    assert states["disc_optimizer"]["state"]  # the discriminator's own optimiser, with its Adam moments


def test_learn_logvar_trains_the_log_variance_with_the_generator(tmp_path):
    from hf_vae import KLAEConfig, KLAEModel
    from hf_vae.training.objectives import build_objective

    model = KLAEModel(KLAEConfig(sample_size=16, block_out_channels=[8, 16], norm_num_groups=4, latent_channels=2))
    for learn in (False, True):
        args, _ = tiny_run(tmp_path, model="klae", perceptual_weight=0.0, disc_weight=0.0,
                              learn_logvar=learn, logvar_init=0.25)
        objective = build_objective(args, model, (-1.0, 1.0), "shapes")
        assert float(objective.loss.logvar.detach()) == 0.25
        assert objective.extra_parameters() == ([objective.loss.logvar] if learn else [])
        assert objective.loss.logvar.requires_grad is learn


def test_vq_vae_becomes_a_vqgan_when_a_discriminator_is_asked_for(tmp_path):
    args, data = tiny_run(tmp_path, model="vq_vae", disc_start=1, disc_num_layers=1, disc_ndf=8,
                          perceptual_weight=0.0, checkpointing_steps=0, max_steps=3)
    record = train(args, data, dict(TINY_CONV, num_embeddings=16, embedding_dim=4))
    logs = [r for r in read_logs(args.output_dir) if "train/loss" in r]
    assert "train/quant_loss" in logs[0] and "train/disc_loss" in logs[-1]
    assert {"codebook_usage", "perplexity"} <= set(record["metrics"])
    args, data = tiny_run(tmp_path, name="vae", disc_start=1)
    with pytest.raises(ValueError,
                       match=r"--disc_start apply to the hrq_vae, klae and vq_vae objectives, got --model vae"):
        train(args, data, dict(TINY_MLP))


# ------------------------------------------------------------------------------------------------------------
# NaN handling, EMA, mixed precision, Hub
# ------------------------------------------------------------------------------------------------------------


def _poison_forward(monkeypatch, at_calls):
    """Make the model's loss NaN on the given forward calls (counted from 1)."""
    from hf_vae.modeling_base import AutoencoderPreTrainedModel

    original = AutoencoderPreTrainedModel.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        if self.training and self.device.type != "meta":  # (the thread policy counts FLOPs on a meta copy)
            calls["n"] += 1
            if calls["n"] in at_calls:
                output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(AutoencoderPreTrainedModel, "forward", forward)


def test_a_nan_loss_stops_the_run_naming_step_and_last_checkpoint(tmp_path, monkeypatch):
    _poison_forward(monkeypatch, at_calls={5})
    args, data = tiny_run(tmp_path, checkpointing_steps=2)
    with pytest.raises(NonFiniteLossError, match=r"Non-finite loss at step 5 .*Last good checkpoint: "
                                                 r".*checkpoint-4.*--skip_nonfinite"):
        train(args, data, dict(TINY_MLP))


def test_skip_nonfinite_skips_the_batch_and_keeps_the_weights_finite(tmp_path, monkeypatch):
    _poison_forward(monkeypatch, at_calls={2, 4})
    args, data = tiny_run(tmp_path, skip_nonfinite=True, checkpointing_steps=0)
    record = train(args, data, dict(TINY_MLP))
    assert record["train"]["skipped_batches"] == 2
    weights = load_file(os.path.join(args.output_dir, "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_ema_weights_are_evaluated_and_published(tmp_path):
    args, data = tiny_run(tmp_path, ema_decay=0.9, checkpointing_steps=6, learning_rate=1e-2)
    train(args, data, dict(TINY_MLP))
    published = load_file(os.path.join(args.output_dir, "model.safetensors"))
    checkpoint = os.path.join(args.output_dir, "checkpoints", "checkpoint-6")
    live = load_file(os.path.join(checkpoint, "model.safetensors"))
    ema_state = read_training_state(checkpoint)["ema"]
    assert ema_state["num_updates"] == 6
    name = "encoder.layers.0.weight" if "encoder.layers.0.weight" in published else next(iter(ema_state["shadow"]))
    assert torch.equal(published[name], ema_state["shadow"][name])
    assert not torch.equal(published[name], live[name])


def test_bf16_mixed_precision_and_gradient_accumulation(tmp_path):
    args, data = tiny_run(tmp_path, mixed_precision="bf16", gradient_accumulation_steps=2, max_steps=3,
                          checkpointing_steps=0)
    record = train(args, data, dict(TINY_MLP))
    with open(os.path.join(args.output_dir, "training_args.json")) as f:
        resolved = json.load(f)["resolved"]
    assert resolved["mixed_precision"] == "bf16" and resolved["effective_batch_size"] == 16
    assert math.isfinite(record["metrics"]["neg_elbo"])


def test_train_can_be_called_again_in_the_same_process_with_another_precision(tmp_path):
    # A notebook or a benchmark calls train() several times; Accelerate's process-wide state must not carry the
    # first run's precision into the second ("AcceleratorState has already been initialized...").
    for precision in ("no", "bf16", "no"):
        args, data = tiny_run(tmp_path, name=f"run-{precision}-{len(os.listdir(tmp_path))}",
                              mixed_precision=precision, max_steps=2, checkpointing_steps=0)
        train(args, data, dict(TINY_MLP))
        with open(os.path.join(args.output_dir, "training_args.json")) as f:
            assert json.load(f)["resolved"]["mixed_precision"] == precision


def test_push_to_hub_hands_the_output_folder_to_the_hub_integration(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("hf_vae.integrations.hub")
    fake.push_output_dir = lambda output_dir, repo_id, token=None, private=False: calls.append(
        (output_dir, repo_id, token, private, sorted(os.listdir(output_dir))))
    checked = []  # the token and the repository are checked before the first step (nothing written yet)
    fake.check_push_target = lambda repo_id, token=None, private=False: checked.append(
        os.path.exists(os.path.join(args.output_dir, "checkpoints"))) or repo_id
    monkeypatch.setitem(sys.modules, "hf_vae.integrations.hub", fake)
    args, data = tiny_run(tmp_path, push_to_hub=True, hub_model_id="alice/vae-shapes", max_steps=2,
                          checkpointing_steps=0)
    train(args, data, dict(TINY_MLP))
    assert len(calls) == 1 and checked == [False]
    output_dir, repo_id, token, private, files = calls[0]
    assert (output_dir, repo_id, token, private) == (args.output_dir, "alice/vae-shapes", None, False)
    assert {"config.json", "model.safetensors", "metrics.json"} <= set(files)  # pushed after everything is written
    with pytest.raises(ValueError, match="--hub_model_id"):
        TrainArguments(push_to_hub=True)


def test_push_to_hub_uploads_the_run_to_a_hub(tmp_path, monkeypatch, hub_server):
    """End to end against the fake Hub of tests/support: the published files arrive, checkpoints do not."""
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_TOKEN", "token-alice")
    args, data = tiny_run(tmp_path, push_to_hub=True, hub_model_id="alice/vae-shapes", max_steps=2,
                          checkpointing_steps=2)
    train(args, data, dict(TINY_MLP))
    files = set(HfApi().list_repo_files("alice/vae-shapes", token="token-alice"))
    assert {"config.json", "model.safetensors", "README.md"} <= files  # what else goes up is the hub module's call
    assert not any(f.startswith("checkpoints/") for f in files)
