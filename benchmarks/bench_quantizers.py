#!/usr/bin/env python
"""The quantisers side by side: Fashion-MNIST at equal bits per code map, and step time against
vector-quantize-pytorch's for the same configuration.

    python benchmarks/bench_quantizers.py                   # both parts, full size
    python benchmarks/bench_quantizers.py --quick           # both parts, small (a few minutes on one CPU thread)
    python benchmarks/bench_quantizers.py --part step       # step time only (--repeats, --shape)
    python benchmarks/bench_quantizers.py --part fashion    # Fashion-MNIST only (--steps, --eval_examples)

**fashion**: the same convolutional VQ-VAE (28x28 images in [-1, 1], Gaussian decoder, a 7x7 code map) trained with
each quantiser at about 10 bits per latent position, so every code map carries the same information:

    vq    1024 codes of dimension 16, EMA codebook, k-means start, dead-code restarts (the VQ-VAE recipe's)
    fsq   levels [8, 5, 5, 5]: 1000 codes (9.97 bits), nothing learned in the codebook, no restarts
    lfq   10 bits: 1024 codes, the entropy penalty, no restarts
    rvq   2 levels of 32 codes of dimension 16 (10 bits), each level as vq's
    hrq   the HRQ-VAE family (Hosking et al. 2022): 2 levels of 32 Gumbel-softmax codes of dimension 16, its
          defaults otherwise (not the VQ-VAE model: a row for the family, at the same bits)

Adam (learning rate 1e-3) on batches of `--batch_size` training images, then on `--eval_examples` test images:
reconstruction MSE (images scaled to [0, 1]), codebook usage (the fraction of codes used at least once over those
images; RVQ: each level's, averaged) and the perplexity of the code distribution (RVQ: per level, averaged).
Target: FSQ and LFQ at >= 95 % usage without any restart.

**step**: one step is the quantiser's forward on an encoder output and the backward of a loss on its codes (plus
its own loss): what a training step spends in the quantiser. For each configuration the two libraries run
alternately in this process, `--repeats` times each after a warm-up; the table gives each one's median and the
ratio ours / theirs (below 1: ours is faster). Each library takes its native layout: ours channel-first maps
(B, D, H, W), theirs the same maps (`accept_image_fmap`), or channel-last sequences (B, H·W, D) for its residual VQ,
whose image-map path does not run in version 1.32. On a shared machine only the ratio is meaningful; the load
average is printed beside it. vector-quantize-pytorch is a test dependency here, not a dependency of hf_vae.

Writes JSON to benchmarks/results/bench_quantizers[_fashion|_step][_quick].json (the part's suffix when one part runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, table, write_result  # noqa: E402
from hf_vae.quantizers import VectorQuantizer  # noqa: E402
from hf_vae.residual_quantization import ResidualVectorQuantizer  # noqa: E402
from hf_vae.scalar_quantization import FiniteScalarQuantizer, LookupFreeQuantizer  # noqa: E402


# -- step time ---------------------------------------------------------------------------------------------------


def _ours_read(out):
    return out.quantized + out.loss.mean()


def _theirs_read(out):
    return out[0] + out[2].mean()


def _sequence(x):
    return x.flatten(2).transpose(1, 2)


def configurations():
    """(name, code dimension, ours, theirs, read ours, read theirs, theirs' input layout) of each compared setting."""
    import vector_quantize_pytorch as vqp

    levels = [8, 5, 5, 5]
    image = dict(channel_last=False, accept_image_fmap=True)
    ema = dict(decay=0.99, commitment_weight=0.25)
    yield ("fsq [8,5,5,5]", len(levels), lambda: FiniteScalarQuantizer(levels), lambda: vqp.FSQ(levels=levels),
           lambda out: out.quantized, lambda out: out[0], None)
    yield ("lfq 2^10", 10, lambda: LookupFreeQuantizer(10), lambda: vqp.LFQ(dim=10, codebook_size=1024,
                                                                           entropy_loss_weight=0.1),
           _ours_read, lambda out: out[0] + out[2], None)
    # vector-quantize-pytorch turns the rotation trick on by default: named explicitly on both sides
    yield ("vq 512x16 (EMA)", 16, lambda: VectorQuantizer(512, 16, use_ema=True),
           lambda: vqp.VectorQuantize(dim=16, codebook_size=512, rotation_trick=False, **ema, **image),
           _ours_read, _theirs_read, None)
    yield ("vq 512x16 (EMA, rotation trick)", 16, lambda: VectorQuantizer(512, 16, use_ema=True, rotation_trick=True),
           lambda: vqp.VectorQuantize(dim=16, codebook_size=512, rotation_trick=True, **ema, **image),
           _ours_read, _theirs_read, None)
    yield ("vq 512x16 (EMA, cosine, codebook_dim 8)", 16,
           lambda: VectorQuantizer(512, 16, use_ema=True, use_cosine_sim=True, codebook_dim=8),
           lambda: vqp.VectorQuantize(dim=16, codebook_size=512, use_cosine_sim=True, codebook_dim=8,
                                      rotation_trick=False, **ema, **image),
           _ours_read, _theirs_read, None)
    yield ("rvq 4x256x16 (EMA)", 16, lambda: ResidualVectorQuantizer(4, 256, 16, use_ema=True),
           lambda: vqp.ResidualVQ(dim=16, num_quantizers=4, codebook_size=256, rotation_trick=False, **ema),
           _ours_read, lambda out: out[0] + out[2].sum(), _sequence)


def step_time(module, read, x) -> float:
    z = x.clone().requires_grad_()
    start = time.perf_counter()
    out = module(z)
    read(out).square().mean().backward()
    return time.perf_counter() - start


def step_part(args) -> list:
    rows = []
    for name, channels, ours_factory, theirs_factory, read_ours, read_theirs, layout in configurations():
        torch.manual_seed(0)
        x = torch.randn(args.shape[0], channels, *args.shape[1:])
        x_theirs = layout(x).contiguous() if layout else x
        ours, theirs = ours_factory().train(), theirs_factory().train()
        for _ in range(3):  # warm-up (and k-means / EMA start-up)
            step_time(ours, read_ours, x), step_time(theirs, read_theirs, x_theirs)
        times = {"ours": [], "theirs": []}
        for _ in range(args.repeats):
            times["ours"].append(step_time(ours, read_ours, x))
            times["theirs"].append(step_time(theirs, read_theirs, x_theirs))
        ours_ms, theirs_ms = (1000 * statistics.median(times[key]) for key in ("ours", "theirs"))
        rows.append({"quantizer": name, "input": [args.shape[0], channels, *args.shape[1:]],
                     "hf_vae_ms": round(ours_ms, 3), "vector_quantize_pytorch_ms": round(theirs_ms, 3),
                     "ratio": round(ours_ms / theirs_ms, 3)})
        print(f"step {name}: {rows[-1]}", flush=True)
    return rows


# -- Fashion-MNIST at equal bits per code map --------------------------------------------------------------------

NETWORK = dict(backbone="conv", in_channels=1, image_size=28, block_out_channels=[16, 32, 32], norm_num_groups=8,
               layers_per_block=1, mid_block_add_attention=False, likelihood="gaussian")
_LEARNED = dict(use_ema=True, kmeans_init=True, dead_code_threshold=1.0, embedding_dim=16)
QUANTIZERS = {
    "vq": dict(quantizer="vq", num_embeddings=1024, **_LEARNED),
    "fsq": dict(quantizer="fsq", fsq_levels=[8, 5, 5, 5]),
    "lfq": dict(quantizer="lfq", embedding_dim=10),
    "rvq": dict(quantizer="rvq", num_embeddings=32, num_quantizers=2, **_LEARNED),
    "hrq": dict(family="hrq_vae", num_embeddings=32, num_quantizers=2, embedding_dim=16),
}


def _images(split: str, count=None) -> torch.Tensor:
    from hf_vae.data.fashion_mnist import load_fashion_mnist_arrays

    images, _ = load_fashion_mnist_arrays(split)
    images = torch.from_numpy(images[:count].copy()).float().div(127.5).sub(1.0)
    return images[:, None]


def code_statistics_over(indices: torch.Tensor, num_embeddings: int, levels: int):
    """(N, ..., [levels]) codes -> (usage, perplexity), each level's averaged."""
    flat = indices.reshape(-1, levels)
    usage, perplexity = [], []
    for level in range(levels):
        counts = torch.bincount(flat[:, level], minlength=num_embeddings).double()
        probs = counts[counts > 0] / counts.sum()
        usage.append(float((counts > 0).double().mean()))
        perplexity.append(float(torch.exp(-(probs * probs.log()).sum())))
    return sum(usage) / levels, sum(perplexity) / levels


def train_one(name: str, fields: dict, train_images, test_images, args) -> dict:
    from hf_vae import families

    family = families.get(fields.get("family", "vq_vae"))
    torch.manual_seed(args.seed)
    config = family.config_class(**NETWORK, **{k: v for k, v in fields.items() if k != "family"})
    model = family.model_class(config).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for _ in range(args.steps):
        batch = train_images[torch.randint(0, len(train_images), (args.batch_size,), generator=generator)]
        optimiser.zero_grad(set_to_none=True)
        model(batch).loss.backward()
        optimiser.step()
    seconds = time.perf_counter() - start
    model.eval()
    squared, codes = 0.0, []
    with torch.no_grad():
        for chunk in test_images.split(500):
            reconstruction = model.reconstruct(chunk)
            squared += float(((reconstruction - chunk) / 2).square().sum())  # on [0, 1]
            codes.append(model.encode_to_indices(chunk))
    config = model.config
    levels = config.num_quantizers if config.quantizer == "rvq" else 1
    usage, perplexity = code_statistics_over(torch.cat(codes), config.num_embeddings, levels)
    positions = torch.cat(codes)[0].numel() // levels
    bits = positions * levels * torch.log2(torch.tensor(float(config.num_embeddings))).item()
    return {"quantizer": name, "fields": fields, "bits_per_code_map": round(bits, 1),
            "mse": squared / test_images.numel(), "codebook_usage": usage, "perplexity": perplexity,
            "codebook_size": config.num_embeddings, "levels": levels, "train_seconds": round(seconds, 1)}


def fashion_part(args) -> list:
    train_images, test_images = _images("train"), _images("test", args.eval_examples)
    rows = []
    for name in args.quantizers:
        rows.append(train_one(name, QUANTIZERS[name], train_images, test_images, args))
        print(f"fashion {name}: {rows[-1]}", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "step", "fashion"], default="all")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, steps and test images")
    parser.add_argument("--repeats", type=int, default=None, help="step timings per library (default 30; quick 10)")
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 16, 16], metavar=("B", "H", "W"))
    parser.add_argument("--steps", type=int, default=None, help="Fashion-MNIST training steps (default 2000; quick 200)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--eval_examples", type=int, default=None, help="test images (default 10000; quick 2000)")
    parser.add_argument("--quantizers", nargs="+", default=list(QUANTIZERS), choices=list(QUANTIZERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    args.repeats = args.repeats or (10 if args.quick else 30)
    args.steps = args.steps or (200 if args.quick else 2000)
    args.eval_examples = args.eval_examples or (2000 if args.quick else 10_000)
    torch.set_num_threads(args.threads)

    result = {"benchmark": "bench_quantizers", "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": machine(), "loadavg_start": os.getloadavg()[0]}
    if args.part in ("all", "fashion"):
        result["fashion_mnist"] = {"network": NETWORK, "steps": args.steps, "batch_size": args.batch_size,
                                   "optimizer": "Adam 1e-3", "eval_examples": args.eval_examples,
                                   "rows": fashion_part(args)}
    if args.part in ("all", "step"):
        result["step_time"] = {"repeats": args.repeats, "threads": args.threads, "rows": step_part(args)}
    result["loadavg_end"] = os.getloadavg()[0]
    part = "" if args.part == "all" else f"_{args.part}"  # one part's run does not overwrite the other's results
    output = args.output or os.path.join(ROOT, "benchmarks", "results",
                                         f"bench_quantizers{part}{'_quick' if args.quick else ''}.json")
    write_result(result, output)
    if "fashion_mnist" in result:
        print("\n" + table([[r["quantizer"], r["bits_per_code_map"], f"{r['mse']:.4f}",
                             f"{100 * r['codebook_usage']:.1f} %", f"{r['perplexity']:.1f}", f"{r['train_seconds']} s"]
                            for r in result["fashion_mnist"]["rows"]],
                           ["quantiser", "bits / code map", "MSE", "usage", "perplexity", "train time"]))
    if "step_time" in result:
        print("\n| quantiser | hf_vae (ms) | vector-quantize-pytorch (ms) | ours / theirs |\n|---|---|---|---|")
        for row in result["step_time"]["rows"]:
            print(f"| {row['quantizer']} | {row['hf_vae_ms']} | {row['vector_quantize_pytorch_ms']} | {row['ratio']} |")
    print(f"\nwritten to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
