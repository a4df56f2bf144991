#!/usr/bin/env python
"""VQ-VAE on Fashion-MNIST (512 codes), then its GPT-2 and PixelCNN priors: likelihood bound, samples, code
statistics.

Three runs of `hf_vae.training.train`, as `scripts/train.py` would do them:

    1. vq_vae    a convolutional VQ-VAE on dynamically binarised 28x28 Fashion-MNIST (Bernoulli decoder), a 7x7
                 map of 16-dimensional codes, K = 512, EMA codebook with dead-code restarts
    2. vq_prior  a GPT-2 over the 49 raster-ordered codes of each training image (codes computed on the fly by
                 the frozen VQ-VAE); the run publishes the VQ-VAE with the prior in prior/
    3. vq_prior  a gated PixelCNN (--prior_type pixelcnn, van den Oord et al. 2016) on the same codes, same steps
                 and learning rate

Reported on the test split (10k images):

    prior_nll_per_code     −log p(z_q) / 49 in nats, against log 512 = 6.238 for the uniform prior
    bound (nats, bits/dim) −log p(x) ≤ −log p(x|z_q) − log p(z_q), with the learned and with the uniform prior;
                           on the same binarised data as benchmarks/bench_fashion_mnist_vae.py, so comparable
                           with that VAE's NLL
    code histogram TV      total variation between the code histogram of 1,000 sampled code maps and that of the
                           test set's code maps, for the learned and the uniform prior
    wall time              of each run (training + final evaluation)

for the uniform prior and each learned one, and writes benchmarks/results/vq_prior_samples.png: 64 samples of the
uniform prior (left), the GPT-2 prior and the PixelCNN prior (right), same decoder. With --fid_features DIR (a
classifier trained by scripts/train_fid_classifier.py), the Fréchet distance between 2,000 samples of each prior
and the test split in that classifier's features is added.

    python benchmarks/bench_vq_prior.py --threads 1             # 1500 + 2500 steps
    python benchmarks/bench_vq_prior.py --quick                 # 150 + 200 steps, 2000 test images
    python benchmarks/bench_vq_prior.py --vqvae DIR             # reuse a trained VQ-VAE, train only the priors
    python benchmarks/bench_vq_prior.py --priors pixelcnn       # one prior kind only
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
#: the gated PixelCNN on the same codes (about as many weights as the GPT-2 above)
PIXELCNN = {"prior_type": "pixelcnn", "pixelcnn_channels": 64, "pixelcnn_layers": 8, "pixelcnn_kernel_size": 3,
            "pixelcnn_first_kernel_size": 7}
#: each prior kind: its model config and the run's folder in --workdir
PRIORS = {"gpt2": (PRIOR, "vq_prior"), "pixelcnn": (PIXELCNN, "pixelcnn_prior")}


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


def _frechet_distances(models, fid_features, num_samples, eval_examples, seed):
    """Fréchet distance in the classifier's features between the test split and samples of each learned prior
    (`models`: name -> the VQ-VAE with that prior), and of the uniform prior (the same VQ-VAE without a prior)."""
    import copy

    from hf_vae.evaluation.fid import frechet_distance_of_samples, load_fid_features, real_statistics

    features = load_fid_features(fid_features)
    real = real_statistics(features, "fashion_mnist", "test", max_examples=eval_examples)
    uniform = copy.deepcopy(next(iter(models.values()))).attach_prior(None)
    distances = {"samples": num_samples, "features": fid_features}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the uniform prior's "samples are noise" warning: that is the point here
        distances["uniform"] = frechet_distance_of_samples(uniform, features, real, num_samples, seed=seed)
    for name, model in models.items():
        start = time.perf_counter()
        distances[name] = frechet_distance_of_samples(model, features, real, num_samples, seed=seed)
        print(f"Fréchet distance {name}: {distances[name]:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return distances


def _total_variation(counts_a, counts_b) -> float:
    p, q = counts_a.double() / counts_a.sum(), counts_b.double() / counts_b.sum()
    return 0.5 * float((p - q).abs().sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--vqvae_steps", type=int, default=None, help="VQ-VAE steps (default 1500; quick 150)")
    parser.add_argument("--prior_steps", type=int, default=None, help="prior steps (default 2500; quick 200)")
    parser.add_argument("--vqvae", default=None, help="a trained VQ-VAE folder: skip stage 1")
    parser.add_argument("--priors", default="gpt2,pixelcnn",
                        help=f"comma-separated prior kinds to train on the VQ-VAE, of {', '.join(PRIORS)}")
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
    kinds = [kind.strip() for kind in args.priors.split(",") if kind.strip()]
    if not kinds or set(kinds) - set(PRIORS):
        parser.error(f"--priors: expected a comma-separated subset of {', '.join(PRIORS)}, got {args.priors!r}")
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
              "recipe": {"vqvae": VQVAE, "prior": PRIOR, "pixelcnn_prior": PIXELCNN, "vqvae_steps": vqvae_steps,
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

    # -- 2. its priors: each trained, scored and sampled -------------------------------------------------------
    data_counts, models, rows, sampled_images = None, {}, {}, {}
    for kind in kinds:
        model_config, folder = PRIORS[kind]
        prior_dir = os.path.join(workdir, folder)
        record, seconds = _train("vq_prior", prior_dir, prior_steps, args.batch_size, args.prior_learning_rate,
                                 args.seed, eval_examples, dict(model_config), vqvae=vqvae_dir)
        metrics = record["metrics"]
        print(f"{kind} prior: {metrics} in {seconds:.0f} s", flush=True)
        model = VQVAEModel.from_pretrained(prior_dir).eval()
        num_codes = model.prior.config.num_codes
        num_dims = math.prod(model.config.data_shape)
        log_k = math.log(model.config.num_embeddings)
        # The reconstruction term is the same for every prior, so the uniform prior's bound follows exactly.
        uniform_bound = metrics["neg_elbo"] + num_codes * (log_k - metrics["prior_nll_per_code"])
        if data_counts is None:
            data_counts = _test_code_histogram(model, eval_examples)
            rows["uniform"] = {"nll_per_code": log_k, "bound_nats": uniform_bound,
                               "bound_bits_per_dim": uniform_bound / (num_dims * math.log(2))}
        generator = torch.Generator().manual_seed(args.seed)
        start = time.perf_counter()
        sampled = torch.cat([model.prior.sample_codes(min(250, args.num_samples - i), generator=generator)
                             for i in range(0, args.num_samples, 250)])
        sample_seconds = time.perf_counter() - start
        if "code_histogram_tv" not in rows["uniform"]:
            uniform = torch.randint(0, model.config.num_embeddings, sampled.shape, generator=generator)
            rows["uniform"]["code_histogram_tv"] = _total_variation(
                torch.bincount(uniform.flatten(), minlength=model.config.num_embeddings), data_counts)
            with torch.no_grad():
                sampled_images["uniform"] = model.decode_indices(uniform[:64])
        with torch.no_grad():
            sampled_images[kind] = model.decode_indices(sampled[:64])
        rows[kind] = {"seconds": round(seconds, 1), "steps": record["step"],
                      "resumed_from": record["train"]["resumed_from"], "metrics": metrics,
                      "parameters": model.prior.num_parameters(), "nll_per_code": metrics["prior_nll_per_code"],
                      "bound_nats": metrics["neg_elbo"],
                      "bound_bits_per_dim": metrics["neg_elbo"] / (num_dims * math.log(2)),
                      "code_histogram_tv": _total_variation(
                          torch.bincount(sampled.flatten(), minlength=model.config.num_embeddings), data_counts),
                      "sampling": {"code_maps": args.num_samples, "seconds": round(sample_seconds, 1)}}
        models[kind] = model
    result["priors"] = rows

    # -- samples: the picture, uniform | GPT-2 | PixelCNN ----------------------------------------------------
    from PIL import Image

    picture = os.path.join(ROOT, "benchmarks", "results", f"vq_prior_samples{quick}.png")
    grids = [image_grid(images, (0.0, 1.0), nrow=8).convert("RGB") for images in sampled_images.values()]
    gap = 16
    canvas = Image.new("RGB", (sum(g.width for g in grids) + gap * (len(grids) - 1), max(g.height for g in grids)),
                       "white")
    for i, grid in enumerate(grids):
        canvas.paste(grid, (sum(g.width + gap for g in grids[:i]), 0))
    canvas.save(picture)
    result["picture"] = os.path.relpath(picture, ROOT)
    result["picture_columns"] = list(sampled_images)

    output = args.output or os.path.join(ROOT, "benchmarks", "results", f"vq_prior{quick}.json")
    write_result(result, output)  # written again with the Fréchet distances, which take the longest
    if args.fid_features:
        result["frechet_distance"] = _frechet_distances(models, args.fid_features, args.fid_samples, eval_examples,
                                                        args.seed)
        for name, row in rows.items():
            row["frechet_distance"] = result["frechet_distance"][name]

        write_result(result, output)
    table_rows = [[name, f"{row['nll_per_code']:.3f}", f"{row['bound_nats']:.1f}", f"{row['bound_bits_per_dim']:.4f}",
                   f"{row['code_histogram_tv']:.3f}", f"{row['frechet_distance']:.2f}" if "frechet_distance" in row
                   else "-", str(row["sampling"]["seconds"]) if "sampling" in row else "-"]
                  for name, row in rows.items()]
    print()
    print(table(table_rows, ["prior", "NLL / code (nats)", "bound (nats)", "bits/dim", "code histogram TV",
                             "Fréchet distance", f"sampling {args.num_samples} (s)"]))
    times = ", ".join(f"{kind} {rows[kind]['seconds']} s" for kind in kinds)
    print(f"\nVQ-VAE {result.get('vqvae', {}).get('seconds', '-')} s, priors {times}; picture {picture}; "
          f"written to {output}")


if __name__ == "__main__":
    main()
