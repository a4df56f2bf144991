#!/usr/bin/env python
"""VQ-VAE on Fashion-MNIST with 512 codes: codebook health of the plain codebook vs EMA + dead-code restart.

Both runs train the same convolutional VQ-VAE (28x28 images in [-1, 1], Gaussian decoder, a 7x7 map of
16-dimensional codes, K = 512) with `hf_vae.training.train`; only the codebook update differs:

    plain         codebook and commitment losses, gradient updates of the codes (van den Oord et al. 2017)
    ema_restart   EMA codebook (decay 0.99, Laplace smoothing) + restart of codes whose moving-average use per
                  batch falls below --dead_code_threshold (re-initialised from current encoder outputs)

Reported on the test split (10k images): codebook usage (fraction of the 512 codes selected at least once over
the split), perplexity of the code distribution, and reconstruction PSNR / SSIM (on images scaled to [0, 1], as
hf_vae.evaluation reports every model). Target: usage >= 90 % with EMA
+ restart.

    python benchmarks/bench_vqvae_codebook.py               # 2000 steps per run
    python benchmarks/bench_vqvae_codebook.py --quick       # 150 steps per run, 2000 test images
    python benchmarks/bench_vqvae_codebook.py --threads 1   # on a machine shared with other jobs

Prints a table and writes JSON to benchmarks/results/vqvae_codebook[_quick].json.
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
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 2000; quick 150)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--dead_code_threshold", type=float, default=1.0)
    parser.add_argument("--eval_examples", type=int, default=None, help="test images (default all; quick 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    steps = args.steps or (150 if args.quick else 2000)
    eval_examples = args.eval_examples or (2000 if args.quick else None)

    from accelerate.state import AcceleratorState, GradientState

    from hf_vae.training import DataArguments, TrainArguments, train

    base = {"backbone": "conv", "image_size": 28, "block_out_channels": [16, 32, 32], "norm_num_groups": 8,
            "layers_per_block": 1, "mid_block_add_attention": False, "num_embeddings": 512, "embedding_dim": 16,
            "likelihood": "gaussian"}
    variants = {
        "plain": {},
        "ema_restart": {"use_ema": True, "ema_decay": 0.99, "dead_code_threshold": args.dead_code_threshold},
    }
    result = {"benchmark": "vqvae_codebook", "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": machine(),
              "recipe": {"model": base, "steps": steps, "batch_size": args.batch_size,
                         "optimizer": "Adam 1e-3, 5% warm-up, cosine", "eval_examples": eval_examples or 10_000},
              "runs": []}
    rows = []
    workdir = tempfile.mkdtemp(prefix="bench_vq_")
    for name, extra in variants.items():
        train_args = TrainArguments(model="vq_vae", output_dir=os.path.join(workdir, name), max_steps=steps,
                                    batch_size=args.batch_size, learning_rate=1e-3, eval_steps=0,
                                    checkpointing_steps=0, report_to="none", seed=args.seed,
                                    final_eval_max_examples=eval_examples, eval_batch_size=250, logging_steps=50)
        start = time.perf_counter()
        record = train(train_args, DataArguments(dataset="fashion_mnist"), dict(base, **extra))
        seconds = time.perf_counter() - start
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        metrics = record["metrics"]
        result["runs"].append({"variant": name, "config": extra, "seconds": round(seconds, 1), "metrics": metrics})
        rows.append([name, f"{100 * metrics['codebook_usage']:.1f} %", f"{metrics['perplexity']:.1f}",
                     f"{metrics['psnr']:.2f}", f"{metrics['ssim']:.3f}", f"{seconds:.0f} s"])
        print(f"{name}: {metrics}", flush=True)

    output = args.output or os.path.join(ROOT, "benchmarks", "results",
                                         f"vqvae_codebook{'_quick' if args.quick else ''}.json")
    write_result(result, output)
    print()
    print(table(rows, ["codebook", "usage", "perplexity", "PSNR (dB)", "SSIM", "time"]))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
