"""Multi-process training with `accelerate launch` (DDP over gloo on CPUs): train, evaluate, checkpoint, resume.

On a CPU-only machine `accelerate launch --multi_gpu --num_processes 2` starts two gloo processes (with
accelerate 1.x, `--cpu --num_processes 2` starts a single process unless MPI is configured).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "scripts" / "train.py")
LAUNCH = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no", "--main_process_port", "0"]
TINY = ["--image_size", "16", "--batch_size", "8", "--num_train_examples", "320", "--report_to", "jsonl",
        "--eval_importance_samples", "4", "--eval_max_examples", "64", "--final_eval_max_examples", "64",
        "--num_sample_images", "4", "--logging_steps", "2"]

pytestmark = pytest.mark.skipif(shutil.which("accelerate") is None, reason="needs the accelerate launcher")


def launch(args, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(["accelerate", "launch", *LAUNCH, TRAIN, *args], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow  # two `accelerate launch` processes train, checkpoint and resume
def test_two_processes_train_evaluate_checkpoint_and_resume(tmp_path):
    out = str(tmp_path / "ddp")
    common = ["--output_dir", out, "--hidden_dims", "32", "--latent_dim", "4", "--checkpointing_steps", "4",
              "--eval_steps", "4", *TINY]
    launch([*common, "--max_steps", "8"], tmp_path)
    with open(os.path.join(out, "training_args.json")) as f:
        resolved = json.load(f)["resolved"]
    assert resolved["num_processes"] == 2 and resolved["effective_batch_size"] == 16
    checkpoint = os.path.join(out, "checkpoints", "checkpoint-8")
    assert {"rng_state_0.safetensors", "rng_state_1.json", "model.safetensors", "manifest.json"} <= \
        set(os.listdir(checkpoint))
    assert all(name.endswith((".safetensors", ".json")) for name in os.listdir(checkpoint))
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["step"] == 8 and {"neg_elbo", "nll", "mse", "psnr", "ssim", "mig"} <= set(metrics["metrics"])
    with open(os.path.join(out, "logs", "train", "metrics.jsonl")) as f:
        logs = [json.loads(line) for line in f]
    assert [r["step"] for r in logs if "eval/nll" in r] == [4, 8]  # evaluated on both processes' shards

    result = launch([*common, "--max_steps", "12", "--resume_from_checkpoint", "latest"], tmp_path)
    assert f"Resumed from {checkpoint} at step 8" in result.stdout
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["step"] == 12
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]


@pytest.mark.slow  # two `accelerate launch` processes
def test_two_processes_train_the_klae_with_its_discriminator(tmp_path):
    """The discriminator and the log-variance are averaged by hand across processes (not DDP-wrapped); the
    trainer checks at the end that every replica holds the same weights."""
    out = str(tmp_path / "klae")
    launch(["--model", "klae", "--output_dir", out, "--perceptual_weight", "0", "--disc_start", "2",
            "--disc_num_layers", "1", "--disc_ndf", "8", "--block_out_channels", "8", "16", "--norm_num_groups",
            "4", "--latent_channels", "2", "--mid_block_add_attention", "false", "--max_steps", "4",
            "--checkpointing_steps", "0", "--eval_steps", "0", *TINY], tmp_path)
    with open(os.path.join(out, "logs", "train", "metrics.jsonl")) as f:
        logs = [json.loads(line) for line in f if "train/loss" in line]
    assert logs[-1]["train/disc_factor"] == 1.0 and "train/disc_loss" in logs[-1]
    with open(os.path.join(out, "metrics.json")) as f:
        assert {"mse", "psnr", "ssim"} == set(json.load(f)["metrics"])
