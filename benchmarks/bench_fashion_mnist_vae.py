#!/usr/bin/env python
"""MLP VAE on dynamically binarised Fashion-MNIST: test NLL by importance sampling, and the trainer's overhead.

Model and recipe (the IWAE paper's single-stochastic-layer VAE, on Fashion-MNIST): 784-512-512 encoder, 32
latents, mirrored decoder, Bernoulli likelihood on pixel intensities read as Bernoulli means and binarised afresh
every epoch, batch 128, Adam 1e-3 (constant), 20 epochs.

Two measurements:

1. quality  `hf_vae.training.train` for --epochs epochs, then the test NLL with K importance samples
            (`hf_vae.evaluation.evaluate`, chunked), on the whole test set or --nll_examples of it.
2. speed    training throughput (examples/s) of the library loop against bare PyTorch loops of the same model,
            optimiser (fused Adam) and batch size, interleaved in one process (--rounds rounds of --steps steps):
              * bare loop over the trainer's own data path (TrainStream + BatchNoise): the trainer's own overhead
              * bare loop over in-memory tensors binarised with torch.bernoulli: what the streamed data costs
            The library's throughput is the one `train` reports (its loop time, without start-up, evaluation or
            checkpoints); the bare loops are timed the same way, from the first batch request to the last step.

    python benchmarks/bench_fashion_mnist_vae.py            # full: 20 epochs, K=1000 on the 10k test images
    python benchmarks/bench_fashion_mnist_vae.py --quick    # 1 epoch, K=100 on 500 test images, short timing
    python benchmarks/bench_fashion_mnist_vae.py --threads 1  # on a machine shared with other jobs

Prints a table and writes JSON to benchmarks/results/fashion_mnist_vae[_quick].json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, table, write_result  # noqa: E402

MODEL_CONFIG = {"image_size": 28, "in_channels": 1, "hidden_dims": [512, 512], "latent_dim": 32,
                "likelihood": "bernoulli"}
BATCH = 128
LR = 1e-3


def library_args(output_dir, **overrides):
    from hf_vae.training import DataArguments, TrainArguments

    kwargs = dict(model="vae", output_dir=output_dir, batch_size=BATCH, learning_rate=LR, lr_scheduler="constant",
                  warmup_steps=0, max_grad_norm=0.0, eval_steps=0, checkpointing_steps=0, report_to="none",
                  eval_importance_samples=0, final_eval_max_examples=256, num_sample_images=64, seed=0)
    kwargs.update(overrides)
    return TrainArguments(**kwargs), DataArguments(dataset="fashion_mnist")


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def library_throughput(steps, workdir):
    from hf_vae.training import train

    args, data = library_args(os.path.join(workdir, f"lib-{time.time_ns()}"), max_steps=steps,
                              final_eval_max_examples=128)
    record = train(args, data, dict(MODEL_CONFIG))
    reset_accelerate()
    return record["train"]["examples_per_second"]


def _model_and_optimizer(seed=0):
    from hf_vae import VAEConfig, VAEModel

    torch.manual_seed(seed)
    model = VAEModel(VAEConfig(**MODEL_CONFIG))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, fused=True)
    return model, optimizer


def bare_stream_throughput(steps, epoch=0):
    """The same model on the trainer's own data path (hf_vae.training.streams.TrainStream: Arrow batches, and the
    binarisation drawn per step by BatchNoise) in a plain PyTorch loop."""
    from hf_vae.data.noise import BatchNoise
    from hf_vae.training.streams import TrainStream

    model, optimizer = _model_and_optimizer()
    start = time.perf_counter()  # like the library's loop time, which includes building the epoch's stream
    settings = {"image_size": 28, "in_channels": 1, "value_range": (0.0, 1.0), "binarize": True}
    stream = TrainStream("fashion_mnist", settings, batch_size=BATCH, seed=0, data_seed=0, epoch=epoch)
    noise = BatchNoise(0, 0, binarize=True, value_range=(0.0, 1.0), device=torch.device("cpu"))
    for step, batch in zip(range(steps), stream):
        loss = model(noise(batch, step)["pixel_values"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * BATCH / (time.perf_counter() - start)


def bare_memory_throughput(steps, images):
    """The same model on in-memory tensors, binarised on the fly with torch.bernoulli."""
    model, optimizer = _model_and_optimizer()
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    order = torch.randperm(len(images), generator=generator)
    for step in range(steps):
        idx = order[(step * BATCH) % (len(images) - BATCH):][:BATCH]
        x = torch.bernoulli(images[idx], generator=generator)
        loss = model(x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * BATCH / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 epoch, K=100 on 500 test images, 2 short rounds")
    parser.add_argument("--epochs", type=float, default=None, help="training epochs (default 20; quick: 1)")
    parser.add_argument("--num_importance_samples", type=int, default=None, help="K (default 1000; quick: 100)")
    parser.add_argument("--nll_examples", type=int, default=None, help="test images for the NLL (default all)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timing round (default 300; quick 60)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 5; quick 2)")
    parser.add_argument("--skip_quality", action="store_true")
    parser.add_argument("--skip_speed", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's). On a shared, loaded machine 1 thread is "
                             "far faster than 2: two OpenMP threads stall whenever the other core is busy.")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    epochs = args.epochs if args.epochs is not None else (1 if quick else 20)
    k = args.num_importance_samples if args.num_importance_samples is not None else (100 if quick else 1000)
    nll_examples = args.nll_examples if args.nll_examples is not None else (500 if quick else None)
    steps = args.steps or (60 if quick else 300)
    rounds = args.rounds or (2 if quick else 5)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = {"benchmark": "fashion_mnist_vae", "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": machine(),
              "recipe": {"model": MODEL_CONFIG, "batch_size": BATCH, "optimizer": "Adam (fused), lr 1e-3 constant",
                         "data": "Fashion-MNIST train, dynamically binarised (fresh noise every epoch)"}}
    rows = []
    workdir = tempfile.mkdtemp(prefix="bench_fmnist_")

    if not args.skip_quality:
        from hf_vae.evaluation import evaluate
        from hf_vae.training import train

        out = os.path.join(workdir, "vae-fashion_mnist")
        train_args, data_args = library_args(out, num_epochs=epochs, eval_importance_samples=0,
                                             final_eval_max_examples=1000, logging_steps=50)
        start = time.perf_counter()
        record = train(train_args, data_args, dict(MODEL_CONFIG))
        train_seconds = time.perf_counter() - start
        reset_accelerate()
        from transformers import AutoModel

        model = AutoModel.from_pretrained(out)
        start = time.perf_counter()
        metrics = evaluate(model, "fashion_mnist", "test", batch_size=100, num_importance_samples=k,
                           max_examples=nll_examples, progress=True)
        nll_seconds = time.perf_counter() - start
        result["quality"] = {"epochs": epochs, "steps": record["step"], "train_seconds": round(train_seconds, 1),
                             "num_importance_samples": k, "nll_examples": nll_examples or 10_000,
                             "nll_seconds": round(nll_seconds, 1), "test": metrics}
        rows += [["test NLL (nats), K=%d, %s images" % (k, nll_examples or "10k"), f"{metrics['nll']:.2f}"],
                 ["test -ELBO (nats)", f"{metrics['neg_elbo']:.2f}"],
                 ["test bits/dim", f"{metrics['bits_per_dim']:.4f}"],
                 [f"training time ({epochs:g} epochs, {record['step']} steps)", f"{train_seconds:.0f} s"],
                 ["NLL evaluation time", f"{nll_seconds:.0f} s"]]

    if not args.skip_speed:
        from hf_vae.data import load_fashion_mnist_arrays

        arrays = load_fashion_mnist_arrays("train")
        images = torch.from_numpy(arrays[0] if isinstance(arrays, tuple) else arrays["images"]).float().div_(255)
        images = images.view(-1, 1, 28, 28)
        measured = {"library": [], "bare_stream": [], "bare_memory": []}
        # Warm-up, not timed: decompress and cache the IDX files, import everything, fault the allocator in.
        library_throughput(20, workdir)
        bare_stream_throughput(20)
        bare_memory_throughput(20, images)
        for round_index in range(rounds):  # interleaved: machine load drifts, so compare within a round
            measured["library"].append(library_throughput(steps, workdir))
            measured["bare_stream"].append(bare_stream_throughput(steps))
            measured["bare_memory"].append(bare_memory_throughput(steps, images))
        medians = {name: statistics.median(values) for name, values in measured.items()}
        ratios_stream = [lib / bare for lib, bare in zip(measured["library"], measured["bare_stream"])]
        ratios_memory = [lib / bare for lib, bare in zip(measured["library"], measured["bare_memory"])]
        result["speed"] = {"steps_per_round": steps, "rounds": rounds, "examples_per_second": measured,
                           "median_examples_per_second": medians,
                           "library_overhead_vs_bare_stream": 1 - statistics.median(ratios_stream),
                           "library_overhead_vs_in_memory": 1 - statistics.median(ratios_memory)}
        rows += [["library loop (examples/s, median)", f"{medians['library']:.0f}"],
                 ["bare loop, the trainer's data path", f"{medians['bare_stream']:.0f}"],
                 ["bare loop, in-memory tensors", f"{medians['bare_memory']:.0f}"],
                 ["library overhead vs bare loop on the same stream",
                  f"{100 * result['speed']['library_overhead_vs_bare_stream']:.1f} %"],
                 ["library + streaming overhead vs in-memory loop",
                  f"{100 * result['speed']['library_overhead_vs_in_memory']:.1f} %"]]

    output = args.output or os.path.join(ROOT, "benchmarks", "results",
                                         f"fashion_mnist_vae{'_quick' if quick else ''}.json")
    if os.path.isfile(output) and (args.skip_quality or args.skip_speed):
        # Keep the section that was not rerun (with the command that produced it).
        with open(output) as f:
            previous = json.load(f)
        for section in ("quality", "speed"):
            if section not in result and section in previous:
                result[section] = previous[section]
                result[f"{section}_command"] = previous.get(f"{section}_command", previous.get("command"))
    for section in ("quality", "speed"):
        if section in result:
            result.setdefault(f"{section}_command", result["command"])
    write_result(result, output)
    print()
    print(table(rows, ["MLP VAE on Fashion-MNIST", "value"]))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
