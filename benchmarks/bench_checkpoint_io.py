#!/usr/bin/env python
"""What the safe checkpoint format costs: writing an SD-VAE-sized optimiser + EMA state (84 M parameters: Adam's two
moments and the EMA shadow, ~1 GB) as safetensors + JSON, hashing it into the manifest, verifying it on resume, and
reading it back. Median of 3.

    python benchmarks/bench_checkpoint_io.py [--output benchmarks/results/checkpoint_io.json]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks._common import RESULTS_DIR, machine, write_result  # noqa: E402
from hf_vae.training.checkpointing import load_tree, save_tree, verify_checkpoint, write_manifest  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parameters", type=int, default=84_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=os.path.join(RESULTS_DIR, "checkpoint_io.json"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    n = args.parameters // 64
    state = {"optimizer": {"state": {i: {"step": torch.tensor(1.0), "exp_avg": torch.randn(n),
                                         "exp_avg_sq": torch.rand(n)} for i in range(64)},
                           "param_groups": [{"lr": 1e-4, "betas": (0.5, 0.9), "params": list(range(64))}]},
             "ema": {"shadow": {f"p{i}": torch.randn(n) for i in range(64)}, "num_updates": 3, "decay": 0.999}}
    gigabytes = 3 * 64 * n * 4 / 1e9
    times = {"write_s": [], "manifest_sha256_s": [], "verify_s": [], "read_s": []}
    for _ in range(args.repeats):
        folder = tempfile.mkdtemp()
        try:
            t0 = time.perf_counter()
            save_tree(state, folder, "training_state")
            t1 = time.perf_counter()
            write_manifest(folder, 1)
            t2 = time.perf_counter()
            verify_checkpoint(folder)
            t3 = time.perf_counter()
            load_tree(folder, "training_state")
            t4 = time.perf_counter()
        finally:
            shutil.rmtree(folder)
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[key].append(value)
    medians = {key: round(statistics.median(values), 3) for key, values in times.items()}
    write_result({"benchmark": "checkpoint_io", "gigabytes": round(gigabytes, 3), "median": medians,
                  "runs": times, "machine": machine()}, args.output)


if __name__ == "__main__":
    main()
