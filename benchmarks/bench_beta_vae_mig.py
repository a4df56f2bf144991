#!/usr/bin/env python
"""Conv β-VAE on the procedural shapes (dSprites-style) stream: disentanglement (MIG) for β in {1, 4, 16}.

Each β trains the same small convolutional β-VAE (diffusers-style ResNet blocks, a dense bottleneck of 10
latents, Bernoulli decoder) with `hf_vae.training.train`, then `hf_vae.evaluation.evaluate` computes MIG
(Chen et al. 2018, disentanglement_lib's estimator, 20 bins) from the posterior means of the held-out split and
its five known factors (shape, scale, orientation, x, y), together with the −ELBO and reconstruction error.

    python benchmarks/bench_beta_vae_mig.py                 # 3000 steps per β, 32x32 images, 5000 test images
    python benchmarks/bench_beta_vae_mig.py --quick         # 150 steps per β, 1000 test images
    python benchmarks/bench_beta_vae_mig.py --threads 1     # on a machine shared with other jobs

Prints a table and writes JSON to benchmarks/results/beta_vae_mig[_quick].json.
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
    parser.add_argument("--betas", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    parser.add_argument("--steps", type=int, default=None, help="training steps per β (default 3000; quick 150)")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--eval_examples", type=int, default=None, help="test images (default 5000; quick 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    steps = args.steps or (150 if args.quick else 3000)
    eval_examples = args.eval_examples or (1000 if args.quick else 5000)

    from accelerate.state import AcceleratorState, GradientState

    from hf_vae.training import DataArguments, TrainArguments, train

    model_config = {"backbone": "conv", "image_size": args.image_size, "block_out_channels": [8, 16, 32],
                    "norm_num_groups": 4, "layers_per_block": 1, "mid_block_add_attention": False,
                    "latent_channels": 8, "latent_dim": 10, "likelihood": "bernoulli"}
    result = {"benchmark": "beta_vae_mig", "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": machine(),
              "recipe": {"model": model_config, "steps": steps, "batch_size": args.batch_size,
                         "optimizer": "Adam 1e-3, 5% warm-up, cosine", "eval_examples": eval_examples,
                         "mig": "posterior means, 20 equal-width bins per latent, 5 factors"},
              "runs": []}
    rows = []
    workdir = tempfile.mkdtemp(prefix="bench_beta_")
    for beta in args.betas:
        train_args = TrainArguments(model="beta_vae", output_dir=os.path.join(workdir, f"beta{beta:g}"),
                                    max_steps=steps, batch_size=args.batch_size, learning_rate=1e-3,
                                    eval_steps=0, checkpointing_steps=0, report_to="none", seed=args.seed,
                                    eval_importance_samples=0, final_eval_max_examples=eval_examples,
                                    eval_batch_size=250, logging_steps=50)
        start = time.perf_counter()
        record = train(train_args, DataArguments(dataset="shapes"), dict(model_config, beta=beta))
        seconds = time.perf_counter() - start
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        metrics = record["metrics"]
        result["runs"].append({"beta": beta, "seconds": round(seconds, 1), "metrics": metrics,
                               "train_examples_per_second": record["train"]["examples_per_second"]})
        rows.append([f"{beta:g}", f"{metrics['mig']:.3f}", f"{metrics['neg_elbo']:.1f}", f"{metrics['mse']:.4f}",
                     f"{seconds:.0f} s"])
        print(f"beta={beta:g}: {metrics}", flush=True)

    output = args.output or os.path.join(ROOT, "benchmarks", "results",
                                         f"beta_vae_mig{'_quick' if args.quick else ''}.json")
    write_result(result, output)
    print()
    print(table(rows, ["beta", "MIG", "-ELBO (nats)", "MSE", "time"]))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
