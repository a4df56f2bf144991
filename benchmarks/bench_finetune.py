#!/usr/bin/env python
"""Decoder-only fine-tuning of a KL autoencoder on a new image domain: what it buys, what it forgets, what it costs.

1. A small KLAE (f = 4, 4 latent channels; the bench_klae_photos.py architecture) is trained here on 32x32 crops of
   photos (hf_vae.data "photos"), standing in for Stable Diffusion's VAE.
2. It is fine-tuned with `--pretrained_model_name_or_path <its output folder> --train_modules decoder` on another
   domain: Fashion-MNIST written as an RGB image folder (garments padded to 32x32 on a random tinted background;
   train/ and test/ folders, the layout people use).
3. Held-out PSNR/SSIM before and after, on the new domain (what the fine-tune bought) and on the old one (what was
   forgotten); the encoder is checked to be bit-identical (the latents did not move).
4. Cost: seconds per training step and peak memory of decoder-only training with and without
   `--gradient_checkpointing`, for the small KLAE at 32x32 and for an SD-1.x-sized KLAE (83 M parameters) at
   128x128, each configuration in its own process, interleaved, median of the rounds. Peak memory on a CPU: after
   a warm-up step (which allocates the Adam state), the kernel's peak-RSS counter is reset (/proc/self/clear_refs)
   and the peak growth over the measured steps is read from /proc/self/status (VmHWM - VmRSS): the activations
   kept for the backward pass and the gradients, what checkpointing trades for compute.

The perceptual term is off (no LPIPS weights on this machine) and so is the discriminator.

    python benchmarks/bench_finetune.py --threads 1           # ~15 min on 2 cores
    python benchmarks/bench_finetune.py --quick               # ~2 min

Prints tables and writes benchmarks/results/finetune[_quick].json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, table, write_result  # noqa: E402

SMALL = {"block_out_channels": [32, 64, 64], "norm_num_groups": 32, "layers_per_block": 1, "latent_channels": 4,
         "kl_weight": 1e-6}
SD = {"block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "layers_per_block": 2, "latent_channels": 4}


def write_fashion_folder(root: str, num_train: int, num_test: int, seed: int = 0) -> str:
    """Fashion-MNIST as RGB PNGs: the garment (intensity as alpha) over a random tint, padded to 32x32."""
    import numpy as np
    from PIL import Image

    from hf_vae.data import fashion_mnist_dataset

    rng = np.random.default_rng(seed)
    for split, n in (("train", num_train), ("test", num_test)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for i, row in enumerate(fashion_mnist_dataset(split)):
            if i == n:
                break
            garment = np.pad(np.asarray(row["image"], np.float32).reshape(28, 28), 2)[..., None]
            background, colour = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
            image = (1 - garment) * background + garment * colour
            Image.fromarray((image * 255).round().astype(np.uint8)).save(os.path.join(root, split, f"{i:05d}.png"))
    return root


def held_out(model_dir: str, dataset: str, examples: int) -> dict:
    from transformers import AutoModel

    from hf_vae.evaluation import evaluate

    model = AutoModel.from_pretrained(model_dir)
    return evaluate(model, dataset, "test", max_examples=examples, batch_size=100, num_importance_samples=0,
                    metrics=["psnr", "ssim"])


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


# ------------------------------------------------------------------------------------------------------------
# Cost of one decoder-only step, measured in a fresh process per configuration
# ------------------------------------------------------------------------------------------------------------

def step_cost(architecture: dict, size: int, batch: int, steps: int, checkpointing: bool) -> dict:
    """Runs in a child process: the trainer's model setup (freeze_modules, gradient_checkpointing_enable) and
    `steps` Adam steps of the KLAE's loss; returns seconds per step (after one warm-up step) and memory growth."""
    import torch

    from hf_vae import KLAEConfig, KLAEModel
    from hf_vae.training.pretrained import freeze_modules

    torch.manual_seed(0)
    n = len(architecture["block_out_channels"])
    model = KLAEModel(KLAEConfig(**architecture, sample_size=size, down_block_types=["DownEncoderBlock2D"] * n,
                                 up_block_types=["UpDecoderBlock2D"] * n)).train()
    freeze_modules(model, "decoder")
    if checkpointing:
        model.activation_checkpointing_enable()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    x = torch.rand(batch, 3, size, size) * 2 - 1

    def step():
        model(pixel_values=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocates the Adam state
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size (VmHWM) to the current one
    before = _proc_status_kib("VmRSS")
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds_per_step": statistics.median(times), "peak_growth_mib": (_proc_status_kib("VmHWM") - before) / 1024,
            "parameters": sum(p.numel() for p in model.parameters())}


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_cost(name, architecture, size, batch, steps, rounds, threads):
    results = {False: [], True: []}
    for _ in range(rounds):
        for checkpointing in (False, True):  # interleaved
            code = (f"import json, sys; sys.path.insert(0, {ROOT!r}); sys.path.insert(0, {os.path.dirname(__file__)!r});"
                    f"import torch; torch.set_num_threads({threads});"
                    f"from bench_finetune import step_cost; print(json.dumps(step_cost({architecture!r}, {size}, "
                    f"{batch}, {steps}, {checkpointing})))")
            out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                                 env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(threads)))
            results[checkpointing].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {}
    for checkpointing, runs in results.items():
        summary["with_checkpointing" if checkpointing else "without_checkpointing"] = {
            "seconds_per_step": statistics.median(r["seconds_per_step"] for r in runs),
            "peak_growth_mib": statistics.median(r["peak_growth_mib"] for r in runs), "runs": runs}
    summary.update(model=name, image_size=size, batch_size=batch, parameters=runs[0]["parameters"])
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pretrain_steps", type=int, default=None, help="default 1500 (quick 100)")
    parser.add_argument("--finetune_steps", type=int, default=None, help="default 600 (quick 50)")
    parser.add_argument("--eval_examples", type=int, default=None, help="default 1000 (quick 100)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--sd_image_size", type=int, default=128, help="input side of the SD-sized cost measurement")
    parser.add_argument("--sd_steps", type=int, default=2, help="measured steps per SD-sized configuration")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pretrain_steps = args.pretrain_steps or (100 if args.quick else 1500)
    finetune_steps = args.finetune_steps or (50 if args.quick else 600)
    eval_examples = args.eval_examples or (100 if args.quick else 1000)

    from safetensors.torch import load_file

    from hf_vae.training import DataArguments, TrainArguments, train

    work = tempfile.mkdtemp(prefix="bench_finetune_")
    fashion = write_fashion_folder(os.path.join(work, "fashion_rgb"), 6000 if not args.quick else 500, eval_examples)
    common = dict(batch_size=args.batch_size, eval_steps=0, checkpointing_steps=0, report_to="none", perceptual_weight=0.0,
                  disc_start=10 ** 9, logging_steps=50, final_eval_max_examples=eval_examples, eval_batch_size=100,
                  num_sample_images=16, adam_beta1=0.9, adam_beta2=0.999)
    base_dir, tuned_dir = os.path.join(work, "photos"), os.path.join(work, "fashion")

    start = time.perf_counter()
    train(TrainArguments(model="klae", output_dir=base_dir, max_steps=pretrain_steps, learning_rate=2e-4, **common),
          DataArguments(dataset="photos"), {"image_size": 32, **SMALL})
    pretrain_seconds = time.perf_counter() - start
    reset_accelerate()
    start = time.perf_counter()
    record = train(TrainArguments(pretrained_model_name_or_path=base_dir, train_modules="decoder",
                                  output_dir=tuned_dir, max_steps=finetune_steps, learning_rate=1e-4,
                                  ema_decay=0.999, **common),
                   DataArguments(dataset=fashion), {"image_size": 32})
    finetune_seconds = time.perf_counter() - start
    reset_accelerate()
    base, tuned = load_file(os.path.join(base_dir, "model.safetensors")), load_file(os.path.join(tuned_dir, "model.safetensors"))
    encoder_identical = all(torch.equal(base[k], tuned[k]) for k in base if k.startswith(("encoder.", "quant_conv.")))

    quality = {
        "new_domain (fashion, RGB)": {"before": record["pretrained"]["metrics"], "after": record["metrics"]},
        "old_domain (photos)": {"before": held_out(base_dir, "photos", eval_examples),
                                "after": held_out(tuned_dir, "photos", eval_examples)},
    }
    rounds = 1 if args.quick else 3
    cost = [measure_cost("small KLAE f4c4", SMALL, 32, 16, 3 if args.quick else 10, rounds, threads),
            measure_cost("SD-1.x-sized KLAE", SD, 64 if args.quick else args.sd_image_size, 1, args.sd_steps, 1, threads)]

    result = {"benchmark": "finetune", "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": machine(), "note": "2-core machine shared with other jobs: timings are noisy; compare the "
                                            "ratios of interleaved runs",
              "recipe": {"architecture": SMALL, "image_size": 32, "pretrain": {"dataset": "photos", "steps": pretrain_steps,
                                                                               "learning_rate": 2e-4},
                         "finetune": {"dataset": "Fashion-MNIST as an RGB image folder", "steps": finetune_steps,
                                      "learning_rate": 1e-4, "ema_decay": 0.999, "train_modules": "decoder"},
                         "batch_size": args.batch_size, "eval_examples": eval_examples, "objective": "L1 + 1e-6 KL (no LPIPS, no GAN)"},
              "seconds": {"pretrain": round(pretrain_seconds, 1), "finetune": round(finetune_seconds, 1)},
              "encoder_bit_identical": encoder_identical, "quality": quality, "cost": cost}
    output = args.output or os.path.join(ROOT, "benchmarks", "results", f"finetune{'_quick' if args.quick else ''}.json")
    write_result(result, output)
    print()
    rows = [[domain, f"{q['before']['psnr']:.2f}", f"{q['after']['psnr']:.2f}", f"{q['before']['ssim']:.3f}",
             f"{q['after']['ssim']:.3f}"] for domain, q in quality.items()]
    print(table(rows, ["held-out", "PSNR before", "PSNR after", "SSIM before", "SSIM after"]))
    print()
    rows = [[c["model"], f"{c['image_size']}²×{c['batch_size']}", f"{c['without_checkpointing']['seconds_per_step']:.3f}",
             f"{c['with_checkpointing']['seconds_per_step']:.3f}", f"{c['without_checkpointing']['peak_growth_mib']:.0f}",
             f"{c['with_checkpointing']['peak_growth_mib']:.0f}"] for c in cost]
    print(table(rows, ["decoder-only step", "input", "s/step", "s/step (ckpt)", "peak MiB", "peak MiB (ckpt)"]))
    print(f"\nencoder bit-identical: {encoder_identical}; written to {output}")


if __name__ == "__main__":
    main()
