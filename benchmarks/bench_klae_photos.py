#!/usr/bin/env python
"""A small KL autoencoder (latent diffusion's objective) on crops of photos: PSNR and SSIM on held-out crops.

Model: `KLAEModel` with down-sampling factor 4 (block_out_channels 32, 64, 64) and 4 latent channels, trained
with `hf_vae.training.train` on random 32x32 crops of scikit-image's bundled RGB photos (hf_vae.data "photos";
the test crops come from a strip of every photo that the training crops never touch). Objective: L1 pixel loss
with latent diffusion's NLL (log-variance fixed at 0), kl_weight · KL, and a PatchGAN discriminator (hinge) switched on at
--disc_start with latent diffusion's adaptive weight.

No pretrained LPIPS weights exist on this machine, so the perceptual term is off (--perceptual_weight 0); pass
--lpips_weights DIR (see scripts/convert_lpips_weights.py) to train with it.

    python benchmarks/bench_klae_photos.py                # 2000 steps, discriminator from step 1000
    python benchmarks/bench_klae_photos.py --quick        # 100 steps, discriminator from step 50
    python benchmarks/bench_klae_photos.py --threads 1    # on a machine shared with other jobs

Prints a table and writes JSON to benchmarks/results/klae_photos[_quick].json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, table, write_result  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 2000; quick 100)")
    parser.add_argument("--disc_start", type=int, default=None, help="default: half of the steps")
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--lpips_weights", default=None)
    parser.add_argument("--eval_examples", type=int, default=None, help="held-out crops (default 2000; quick 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    steps = args.steps or (100 if args.quick else 2000)
    disc_start = args.disc_start if args.disc_start is not None else steps // 2
    eval_examples = args.eval_examples or (200 if args.quick else 2000)

    from accelerate.state import AcceleratorState, GradientState

    from hf_vae.training import DataArguments, TrainArguments, train

    model_config = {"image_size": args.crop, "block_out_channels": [32, 64, 64], "norm_num_groups": 32,
                    "layers_per_block": 1, "latent_channels": 4, "kl_weight": 1e-6}
    train_args = TrainArguments(
        model="klae", output_dir=os.path.join(tempfile.mkdtemp(prefix="bench_klae_"), "klae"), max_steps=steps,
        batch_size=args.batch_size, learning_rate=args.learning_rate, eval_steps=0, checkpointing_steps=0,
        report_to="none", seed=args.seed, final_eval_max_examples=eval_examples, eval_batch_size=100,
        perceptual_weight=1.0 if args.lpips_weights else 0.0, lpips_weights=args.lpips_weights,
        disc_start=disc_start, disc_weight=0.5, disc_loss="hinge", disc_num_layers=2, logging_steps=25)
    start = time.perf_counter()
    record = train(train_args, DataArguments(dataset="photos"), dict(model_config))
    seconds = time.perf_counter() - start
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    metrics = record["metrics"]
    result = {"benchmark": "klae_photos", "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": machine(),
              "recipe": {"model": model_config, "crop": args.crop, "steps": steps, "batch_size": args.batch_size,
                         "learning_rate": args.learning_rate, "disc_start": disc_start,
                         "perceptual_weight": train_args.perceptual_weight, "eval_examples": eval_examples,
                         "optimizer": "Adam betas (0.5, 0.9), 5% warm-up, cosine"},
              "seconds": round(seconds, 1), "metrics": metrics, "last_train_logs": record["train"]["last_logs"]}
    output = args.output or os.path.join(ROOT, "benchmarks", "results",
                                         f"klae_photos{'_quick' if args.quick else ''}.json")
    write_result(result, output)
    print()
    print(table([["PSNR (dB)", f"{metrics['psnr']:.2f}"], ["SSIM", f"{metrics['ssim']:.3f}"],
                 ["MSE (images in [0, 1])", f"{metrics['mse']:.5f}"], ["training time", f"{seconds:.0f} s"]],
                [f"KLAE f4c4 on {args.crop}x{args.crop} photo crops (held-out)", "value"]))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
