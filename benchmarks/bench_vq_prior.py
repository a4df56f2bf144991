#!/usr/bin/env python
"""VQ-VAE on Fashion-MNIST (512 codes), then its GPT-2 prior: likelihood bound, samples, code statistics.

Two runs of `hf_vae.training.train`, as `scripts/train.py` would do them:

    1. vq_vae    a convolutional VQ-VAE on dynamically binarised 28x28 Fashion-MNIST (Bernoulli decoder), a 7x7
                 map of 16-dimensional codes, K = 512, EMA codebook with dead-code restarts
    2. vq_prior  a GPT-2 over the 49 raster-ordered codes of each training image (codes computed on the fly by
                 the frozen VQ-VAE); the run publishes the VQ-VAE with the prior in prior/

Reported on the test split (10k images):

    prior_nll_per_code     −log p(z_q) / 49 in nats, against log 512 = 6.238 for the uniform prior
    bound (nats, bits/dim) −log p(x) ≤ −log p(x|z_q) − log p(z_q), with the learned and with the uniform prior;
                           on the same binarised data as benchmarks/bench_fashion_mnist_vae.py, so comparable
                           with that VAE's NLL
    code histogram TV      total variation between the code histogram of 1,000 sampled code maps and that of the
                           test set's code maps, for the learned and the uniform prior
    wall time              of each run (training + final evaluation)

and writes benchmarks/results/vq_prior_samples.png: 64 samples of the uniform prior (left) and of the learned prior
(right), same decoder. With --fid_features DIR (a classifier trained by scripts/train_fid_classifier.py), the
Fréchet distance between 2,000 samples of each prior and the test split in that classifier's features is added.

    python benchmarks/bench_vq_prior.py --threads 1             # 1500 + 2500 steps
    python benchmarks/bench_vq_prior.py --quick                 # 150 + 200 steps, 2000 test images
    python benchmarks/bench_vq_prior.py --vqvae DIR             # reuse a trained VQ-VAE, train only the prior
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, table, write_result  # noqa: E402

VQVAE = {"backbone": "conv", "image_size": 28, "block_out_channels": [16, 32, 32], "norm_num_groups": 8,
         "layers_per_block": 1, "mid_block_add_attention": False, "num_embeddings": 512, "embedding_dim": 16,
         "use_ema": True, "dead_code_threshold": 1.0}
PRIOR = {"n_embd": 128, "n_layer": 4, "n_head": 4, "dropout": 0.0}


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _train(model, output_dir, steps, batch_size, learning_rate, seed, eval_examples, model_config, **extra):
    from hf_vae.training import DataArguments, TrainArguments, train

    # Checkpoints every 100 steps, and `latest` resumes: rerunning with the same --workdir continues a run that
    # was stopped (on a shared machine), and --vqvae_steps N with N = a checkpoint's step finishes it there.
    args = TrainArguments(model=model, output_dir=output_dir, max_steps=steps, batch_size=batch_size,
                          learning_rate=learning_rate, eval_steps=0, checkpointing_steps=100,
                          checkpoints_total_limit=1, resume_from_checkpoint="latest", report_to="none",
                          seed=seed, final_eval_max_examples=eval_examples, eval_batch_size=250, logging_steps=50,
                          **extra)
    start = time.perf_counter()
    record = train(args, DataArguments(dataset="fashion_mnist"), model_config)
    _reset_accelerate()
    if record["train"]["resumed_from"]:
        print(f"{model}: resumed from {record['train']['resumed_from']}; the wall time covers this session only",
              flush=True)
    return record, time.perf_counter() - start


@torch.no_grad()
def _test_code_histogram(model, num_examples):
    """Code counts over the test split's code maps (the same binarised stream as the evaluation)."""
    from hf_vae.data import build_dataset, collate_batch
    from hf_vae.evaluation import data_settings

    settings = data_settings(model.config)
    stream = build_dataset("fashion_mnist", "test", image_size=settings["image_size"],
                           in_channels=settings["in_channels"], value_range=settings["value_range"],
                           binarize=settings["binarize"], seed=0, shuffle=False)
    loader = torch.utils.data.DataLoader(stream, batch_size=250, collate_fn=collate_batch)
    counts, seen = torch.zeros(model.config.num_embeddings, dtype=torch.long), 0
    for batch in loader:
        codes = model.encode_to_indices(batch["pixel_values"])
        counts += torch.bincount(codes.flatten(), minlength=model.config.num_embeddings)
        seen += len(codes)
        if num_examples and seen >= num_examples:
            break
    return counts


def _frechet_distances(model, fid_features, num_samples, eval_examples, seed):
    """Fréchet distance in the classifier's features between the test split and samples of the learned prior, and
    of the uniform prior (the same VQ-VAE without its prior)."""
    import copy

    from hf_vae.evaluation.fid import frechet_distance_of_samples, load_fid_features, real_statistics

    features = load_fid_features(fid_features)
    real = real_statistics(features, "fashion_mnist", "test", max_examples=eval_examples)
    uniform = copy.deepcopy(model).attach_prior(None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the uniform prior's "samples are noise" warning: that is the point here
        return {"learned": frechet_distance_of_samples(model, features, real, num_samples, seed=seed),
                "uniform": frechet_distance_of_samples(uniform, features, real, num_samples, seed=seed),
                "samples": num_samples, "features": fid_features}


def _total_variation(counts_a, counts_b) -> float:
    p, q = counts_a.double() / counts_a.sum(), counts_b.double() / counts_b.sum()
    return 0.5 * float((p - q).abs().sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--vqvae_steps", type=int, default=None, help="VQ-VAE steps (default 1500; quick 150)")
    parser.add_argument("--prior_steps", type=int, default=None, help="prior steps (default 2500; quick 200)")
    parser.add_argument("--vqvae", default=None, help="a trained VQ-VAE folder: skip stage 1")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--prior_learning_rate", type=float, default=5e-4)
    parser.add_argument("--num_samples", type=int, default=1000, help="sampled code maps for the histogram")
    parser.add_argument("--eval_examples", type=int, default=None, help="test images (default all; quick 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--fid_features", default=None,
                        help="a Fashion-MNIST feature classifier (scripts/train_fid_classifier.py) for the Fréchet distance")
    parser.add_argument("--fid_samples", type=int, default=2000)
    parser.add_argument("--workdir", default=None, help="where the two runs are written (default: a temp folder)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quick = "_quick" if args.quick else ""
    vqvae_steps = args.vqvae_steps or (150 if args.quick else 1500)
    prior_steps = args.prior_steps or (200 if args.quick else 2500)
    eval_examples = args.eval_examples or (2000 if args.quick else None)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_vq_prior_")

    import hf_vae  # noqa: F401
    from hf_vae import VQVAEModel
    from hf_vae.integrations.model_card import image_grid

    result = {"benchmark": "vq_prior", "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": machine(),
              "recipe": {"vqvae": VQVAE, "prior": PRIOR, "vqvae_steps": vqvae_steps,
                         "prior_steps": prior_steps, "batch_size": args.batch_size,
                         "optimizer": "Adam, 5% warm-up, cosine; VQ-VAE 1e-3, prior "
                                      f"{args.prior_learning_rate:g}",
                         "data": "Fashion-MNIST, dynamically binarised (Bernoulli decoder)",
                         "eval_examples": eval_examples or 10_000}}

    # -- 1. the VQ-VAE -------------------------------------------------------------------------------------
    vqvae_dir = args.vqvae
    if vqvae_dir is None:
        vqvae_dir = os.path.join(workdir, "vq_vae")
        record, seconds = _train("vq_vae", vqvae_dir, vqvae_steps, args.batch_size, 1e-3, args.seed, eval_examples,
                                 dict(VQVAE))
        result["vqvae"] = {"seconds": round(seconds, 1), "steps": record["step"],
                           "resumed_from": record["train"]["resumed_from"], "metrics": record["metrics"]}
        print(f"VQ-VAE: {record['metrics']} in {seconds:.0f} s", flush=True)
    elif os.path.isfile(os.path.join(vqvae_dir, "metrics.json")):
        with open(os.path.join(vqvae_dir, "metrics.json")) as f:
            result["vqvae"] = {"source": vqvae_dir, "metrics": json.load(f)["metrics"]}

    # -- 2. its prior ----------------------------------------------------------------------------------------
    prior_dir = os.path.join(workdir, "vq_prior")
    record, seconds = _train("vq_prior", prior_dir, prior_steps, args.batch_size, args.prior_learning_rate, args.seed,
                             eval_examples, dict(PRIOR), vqvae=vqvae_dir)
    metrics = record["metrics"]
    print(f"prior: {metrics} in {seconds:.0f} s", flush=True)
    model = VQVAEModel.from_pretrained(prior_dir).eval()
    num_codes = model.prior.config.num_codes
    num_dims = math.prod(model.config.data_shape)
    log_k = math.log(model.config.num_embeddings)
    # The reconstruction term is the same for both priors, so the uniform prior's bound follows exactly.
    uniform_bound = metrics["neg_elbo"] + num_codes * (log_k - metrics["prior_nll_per_code"])
    bounds = {"learned": metrics["neg_elbo"], "uniform": uniform_bound}
    result["prior"] = {"seconds": round(seconds, 1), "steps": record["step"],
                       "resumed_from": record["train"]["resumed_from"], "metrics": metrics,
                       "bound_nats": bounds, "bound_bits_per_dim": {k: v / (num_dims * math.log(2))
                                                                    for k, v in bounds.items()}}

    # -- samples: histograms and the picture -------------------------------------------------------------
    data_counts = _test_code_histogram(model, eval_examples)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    sampled = torch.cat([model.prior.sample_codes(min(250, args.num_samples - i), generator=generator)
                         for i in range(0, args.num_samples, 250)])
    sample_seconds = time.perf_counter() - start
    uniform = torch.randint(0, model.config.num_embeddings, sampled.shape, generator=generator)
    histogram = {name: _total_variation(torch.bincount(codes.flatten(), minlength=model.config.num_embeddings),
                                        data_counts)
                 for name, codes in (("learned", sampled), ("uniform", uniform))}
    result["code_histogram_tv"] = histogram
    result["sampling"] = {"code_maps": args.num_samples, "seconds": round(sample_seconds, 1)}

    with torch.no_grad():
        learned_images = model.decode_indices(sampled[:64])
        uniform_images = model.decode_indices(uniform[:64])
    picture = os.path.join(ROOT, "benchmarks", "results", f"vq_prior_samples{quick}.png")
    left, right = image_grid(uniform_images, (0.0, 1.0), nrow=8), image_grid(learned_images, (0.0, 1.0), nrow=8)
    from PIL import Image

    gap = 16
    canvas = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), "white")
    canvas.paste(left.convert("RGB"), (0, 0))
    canvas.paste(right.convert("RGB"), (left.width + gap, 0))
    canvas.save(picture)
    result["picture"] = os.path.relpath(picture, ROOT)

    if args.fid_features:
        result["frechet_distance"] = _frechet_distances(model, args.fid_features, args.fid_samples, eval_examples,
                                                        args.seed)
        print(f"Fréchet distance: {result['frechet_distance']}", flush=True)

    output = args.output or os.path.join(ROOT, "benchmarks", "results", f"vq_prior{quick}.json")
    write_result(result, output)
    rows = [[name, f"{metrics['prior_nll_per_code'] if name == 'learned' else log_k:.3f}",
             f"{bounds[name]:.1f}", f"{result['prior']['bound_bits_per_dim'][name]:.4f}", f"{histogram[name]:.3f}"]
            for name in ("uniform", "learned")]
    print()
    print(table(rows, ["prior", "NLL / code (nats)", "bound (nats)", "bits/dim", "code histogram TV"]))
    print(f"\nVQ-VAE {result.get('vqvae', {}).get('seconds', '-')} s, prior {seconds:.0f} s; picture {picture}; "
          f"written to {output}")


if __name__ == "__main__":
    main()
