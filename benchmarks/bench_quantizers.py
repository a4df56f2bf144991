#!/usr/bin/env python
"""The quantisers' step time against vector-quantize-pytorch's, same configuration, same inputs, interleaved.

    python benchmarks/bench_quantizers.py [--repeats 30] [--shape 64 16 16]

One step is the quantiser's forward on a (B, D, H, W) encoder output and the backward of a loss on its codes
(plus its own loss): what a training step spends in the quantiser. For each configuration the two libraries run
alternately, `--repeats` times each after a warm-up, and the table gives each one's median and the ratio
ours / theirs (below 1: ours is faster). Prints the load average beside it: on a shared machine only the ratio is
meaningful. vector-quantize-pytorch is a test dependency here, not a dependency of hf_vae.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hf_vae.quantizers import VectorQuantizer  # noqa: E402
from hf_vae.scalar_quantization import FiniteScalarQuantizer, LookupFreeQuantizer  # noqa: E402


def configurations(channels: int):
    import vector_quantize_pytorch as vqp

    levels = [8, 5, 5, 5]
    yield ("fsq [8,5,5,5]", len(levels), lambda: FiniteScalarQuantizer(levels), lambda: vqp.FSQ(levels=levels),
           lambda out: out.quantized, lambda out: out[0])
    yield ("lfq 2^10", 10, lambda: LookupFreeQuantizer(10), lambda: vqp.LFQ(dim=10, codebook_size=1024,
                                                                           entropy_loss_weight=0.1),
           lambda out: out.quantized + out.loss.mean(), lambda out: out[0] + out[2])
    yield ("vq 512x16 (EMA)", 16, lambda: VectorQuantizer(512, 16, use_ema=True),
           lambda: vqp.VectorQuantize(dim=16, codebook_size=512, decay=0.99, commitment_weight=0.25,
                                      channel_last=False, accept_image_fmap=True),
           lambda out: out.quantized + out.loss.mean(), lambda out: out[0] + out[2].mean())
    del channels


def step_time(module, read, x) -> float:
    z = x.clone().requires_grad_()
    start = time.perf_counter()
    out = module(z)
    read(out).square().mean().backward()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 16, 16], metavar=("B", "H", "W"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, channels, ours_factory, theirs_factory, read_ours, read_theirs in configurations(0):
        torch.manual_seed(0)
        x = torch.randn(args.shape[0], channels, *args.shape[1:])
        ours, theirs = ours_factory().train(), theirs_factory().train()
        for _ in range(3):  # warm-up (and k-means / EMA start-up)
            step_time(ours, read_ours, x), step_time(theirs, read_theirs, x)
        times = {"ours": [], "theirs": []}
        for _ in range(args.repeats):
            times["ours"].append(step_time(ours, read_ours, x))
            times["theirs"].append(step_time(theirs, read_theirs, x))
        ours_ms, theirs_ms = (1000 * statistics.median(times[key]) for key in ("ours", "theirs"))
        rows.append({"quantizer": name, "input": [args.shape[0], channels, *args.shape[1:]],
                     "hf_vae_ms": round(ours_ms, 3), "vector_quantize_pytorch_ms": round(theirs_ms, 3),
                     "ratio": round(ours_ms / theirs_ms, 3)})
    record = {"rows": rows, "threads": args.threads, "repeats": args.repeats, "loadavg": os.getloadavg()[0],
              "torch": torch.__version__}
    print(json.dumps(record))
    print("\n| quantiser | hf_vae (ms) | vector-quantize-pytorch (ms) | ours / theirs |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['quantizer']} | {row['hf_vae_ms']} | {row['vector_quantize_pytorch_ms']} | {row['ratio']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
