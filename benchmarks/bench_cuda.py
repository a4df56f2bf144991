#!/usr/bin/env python
"""The GPU check: every model family on CUDA, mixed precision, the KL autoencoder against diffusers on the GPU,
and the default recipes' wall time. CI has no GPU; this is run by hand on a machine that has one.

    python benchmarks/bench_cuda.py                         # all parts (about 6 minutes on one H200)
    python benchmarks/bench_cuda.py --parts models,klae     # skip the training runs
    python benchmarks/bench_cuda.py --device cpu --parts models --quick   # a dry run of the code paths on a CPU

Parts:
  * models: each family of `hf_vae.MODELS`, built with its default recipe's network for 64x64 shapes, copied to
    the GPU from the CPU. Deterministic reconstructions on both (TF32 off) give max |Δ|; then one training step
    (loss, backward) in fp32, under bf16 autocast and under fp16 autocast, from the same seed: the loss must be
    finite, every gradient finite, and the reduced-precision loss is compared with fp32's. The fp16 backward is
    of the unscaled loss: a GradScaler's first steps overflow by design (its initial scale is 2^16) and are
    skipped, so the model's own fp16 numerics are what this checks; the scaler runs in the trainer (recipes).
    `generate` must return finite samples on the GPU.
  * klae: the Stable Diffusion 1.x autoencoder (random weights, saved once in diffusers format) loaded by both
    libraries: max |Δ| of encode (posterior mean) and decode on the GPU in fp32 (TF32 off) and fp16, and the
    median encode / decode time of each in fp16, bf16 and fp32 with TF32 allowed (CUDA events, after warm-up), as
    ratios hf_vae / diffusers.
  * recipes: `train()` of each variant's default recipe on shapes (what `scripts/train.py --model X` does) on the
    GPU: wall time and the final test metrics; the VAE again under --mixed_precision bf16 and fp16 (Accelerate's
    GradScaler), and a run stopped at a checkpoint and resumed (the CUDA random state goes through the
    checkpoint). `--runs vae,vae-fp16` picks some.

Writes benchmarks/results/cuda.json (or --output) and prints a table per part; each part is written as soon as
it ends, so a run cut short keeps what it finished.
"""

import argparse
import contextlib
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from _common import RESULTS_DIR, table  # noqa: E402

SHAPES_INFO = {"image_size": 64, "in_channels": 1, "num_classes": 3, "num_examples": {"train": 50_000}}
PARTS = ("models", "klae", "recipes")


@contextlib.contextmanager
def tf32(enabled: bool):
    """Allow (or forbid) TF32 in CUDA matmuls and convolutions inside the block; the previous flags come back."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------------
# models: every family on the device, in three precisions
# ---------------------------------------------------------------------------------------------------------------

def family_config(name: str):
    """`name`'s config as the trainer builds it for 64x64 shapes: its recipe, else the VAE's network."""
    import hf_vae
    from hf_vae.training import DataArguments, TrainArguments
    from hf_vae.training.arguments import RECIPES, apply_recipe
    from hf_vae.training.trainer import build_model_config

    model_config = {}
    if name not in RECIPES:
        # the other families: the VAE's Burgess network, without the local latent that some of them refuse
        model_config = dict(RECIPES["vae"]["shapes"], local_latent_channels=0)
    train_args, model_config, _ = apply_recipe(TrainArguments(model=name), DataArguments(dataset="shapes"),
                                               model_config)
    if name in hf_vae.PRIORS:
        raise ValueError(name)
    return build_model_config(train_args, DataArguments(dataset="shapes"), model_config, SHAPES_INFO)


def shapes_batch(config, batch: int):
    from hf_vae.data.shapes import render_factors_batch, shapes_example_factors, shapes_split_ids

    size = config.sample_size if config.model_type == "klae" else config.image_size
    factors = shapes_example_factors(0, shapes_split_ids(0, "test", batch))
    x = torch.from_numpy(render_factors_batch(factors, size))[:, None].float()
    if config.model_type == "klae":
        x = x * 2 - 1  # the KLAE works in [-1, 1]
    labels = torch.from_numpy(factors[:, 0]).long() if config.model_type == "cvae" else None
    return x, labels


def check_model(name: str, device: torch.device, batch: int) -> dict:
    import hf_vae

    model_class = hf_vae.MODELS[name][1]
    config = family_config(name)
    torch.manual_seed(0)
    cpu_model = model_class(config).eval()
    model = copy.deepcopy(cpu_model).to(device)
    x, labels = shapes_batch(config, batch)
    kwargs = {} if labels is None else {"labels": labels}
    result = {"params": sum(p.numel() for p in model.parameters())}

    # the same weights on both: deterministic reconstructions agree to float rounding (TF32 off: see part_models)
    with torch.no_grad():
        on_cpu = cpu_model.reconstruct(x, **kwargs)
        on_device = model.reconstruct(x.to(device), **{k: v.to(device) for k, v in kwargs.items()}).cpu()
    result["reconstruct_max_abs_diff_vs_cpu"] = float((on_cpu - on_device).abs().max())

    # one training step per precision, same seed so that the same noise is drawn on the device
    x, kwargs = x.to(device), {k: v.to(device) for k, v in kwargs.items()}
    model.train()
    losses = {}
    for precision in ("fp32", "bf16", "fp16"):
        if precision == "fp16" and device.type != "cuda":
            continue
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        if device.type == "cuda":
            torch.cuda.manual_seed_all(1)
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            output = model(x, **kwargs)
        loss = output.loss.float()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        finite = bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)
        losses[precision] = loss.item()
        result[f"{precision}_loss"] = round(losses[precision], 4)
        result[f"{precision}_finite"] = finite
        if precision != "fp32":
            result[f"{precision}_loss_rel_diff"] = abs(float(loss) - losses["fp32"]) / max(abs(losses["fp32"]), 1e-8)
    model.eval()
    try:
        with torch.no_grad():
            samples = model.generate(8, **({"labels": torch.arange(8, device=device) % config.num_classes}
                                           if labels is not None else {}))
        result["generate"] = {"shape": list(samples.shape), "finite": bool(torch.isfinite(samples).all()),
                              "device": str(samples.device)}
    except NotImplementedError as error:  # no generative prior (the VQ-VAE needs a trained prior)
        result["generate"] = f"n/a: {str(error).splitlines()[0][:80]}"
    return result


def part_models(device: torch.device, quick: bool) -> dict:
    import hf_vae

    names = list(hf_vae.MODELS)[: 4 if quick else None]
    results = {}
    for name in names:
        try:
            with tf32(False):  # fp32 on the GPU computes as on the CPU
                results[name] = check_model(name, device, batch=16)
        except Exception as error:  # one family's failure must not hide the others'
            results[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        print(name, json.dumps(results[name])[:300], flush=True)
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "ERROR", r["error"][:60], "", "", ""])
            continue
        rows.append([name, f"{r['reconstruct_max_abs_diff_vs_cpu']:.1e}", r["fp32_finite"],
                     f"{r.get('bf16_loss_rel_diff', float('nan')):.1e} {r.get('bf16_finite', '')}",
                     f"{r.get('fp16_loss_rel_diff', float('nan')):.1e} {r.get('fp16_finite', '')}",
                     r["generate"]["finite"] if isinstance(r["generate"], dict) else "n/a"])
    print(table(rows, ["model", "max|Δ| vs CPU", "fp32 ok", "bf16 rel Δloss, ok", "fp16 rel Δloss, ok",
                       "generate ok"]), flush=True)
    return results


# ---------------------------------------------------------------------------------------------------------------
# klae: hf_vae's KLAEModel against diffusers' AutoencoderKL, same weights
# ---------------------------------------------------------------------------------------------------------------

def time_cuda(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of fn() over `repeats` (CUDA events on a GPU, the wall clock on a CPU)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def part_klae(device: torch.device, quick: bool) -> dict:
    from diffusers import AutoencoderKL

    from bench_klae import SD1_CONFIG, save_weights
    from hf_vae import KLAEModel

    folder = tempfile.mkdtemp(prefix="bench_cuda_klae_")
    save_weights(folder)
    models = {"diffusers": AutoencoderKL.from_pretrained(folder).eval().to(device),
              "hf_vae": KLAEModel.from_pretrained(folder).eval().to(device)}
    size, batch = (256, 1) if quick else (512, 4)
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, 3, size, size, generator=generator) * 2 - 1).to(device)
    z = torch.randn(batch, SD1_CONFIG["latent_channels"], size // 8, size // 8, generator=generator).to(device)
    result = {"size": size, "batch": batch, "parity": {}, "timing_ms": {}}

    def encode(model, inputs):
        return model.encode(inputs).latent_dist.mean

    def decode(model, latents):
        return model.decode(latents).sample

    precisions = [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)]
    with torch.no_grad():
        for precision, dtype in precisions[:2] if device.type == "cuda" else precisions[:1]:
            outs = {}
            for impl, model in models.items():
                model.to(dtype)
                with tf32(False):
                    outs[impl] = (encode(model, x.to(dtype)).float(), decode(model, z.to(dtype)).float())
            result["parity"][precision] = {
                "encode_max_abs_diff": float((outs["hf_vae"][0] - outs["diffusers"][0]).abs().max()),
                "decode_max_abs_diff": float((outs["hf_vae"][1] - outs["diffusers"][1]).abs().max()),
                "decode_scale": float(outs["diffusers"][1].abs().max())}
        # fp32 timings allow TF32 in matmuls and convolutions, as GPU inference usually does; alike for both
        for precision, dtype in precisions if device.type == "cuda" else precisions[:1]:
            for impl, model in models.items():
                model.to(dtype)
                xs, zs = x.to(dtype), z.to(dtype)
                repeats = 3 if quick else 10
                with tf32(True):
                    result["timing_ms"][f"{impl}/{precision}/encode"] = time_cuda(lambda: encode(model, xs), device, 2,
                                                                                  repeats)
                    result["timing_ms"][f"{impl}/{precision}/decode"] = time_cuda(lambda: decode(model, zs), device, 2,
                                                                                  repeats)
        if device.type == "cuda":
            result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    shutil.rmtree(folder, ignore_errors=True)
    rows = []
    for precision, _ in precisions:
        for op in ("encode", "decode"):
            ours, theirs = (result["timing_ms"].get(f"{impl}/{precision}/{op}") for impl in ("hf_vae", "diffusers"))
            if ours is None:
                continue
            rows.append([f"{op} {batch}x{size}² {precision}", f"{ours:.2f}", f"{theirs:.2f}", f"{ours / theirs:.3f}"])
    print(table(rows, ["operation", "hf_vae ms", "diffusers ms", "ratio"]), flush=True)
    print("parity:", json.dumps(result["parity"]), flush=True)
    return result


# ---------------------------------------------------------------------------------------------------------------
# recipes: the trainer's default runs on the device
# ---------------------------------------------------------------------------------------------------------------

def part_recipes(device: torch.device, quick: bool, images_dir: str = None, only=None) -> dict:
    from hf_vae.training import DataArguments, TrainArguments, train

    workdir = tempfile.mkdtemp(prefix="bench_cuda_recipes_")
    runs = [("vae", dict(model="vae")), ("vae-bf16", dict(model="vae", mixed_precision="bf16")),
            ("vq_vae", dict(model="vq_vae")), ("klae", dict(model="klae")), ("cvae", dict(model="cvae")),
            ("beta_vae", dict(model="beta_vae")), ("vae-fp16", dict(model="vae", mixed_precision="fp16"))]
    if only:
        runs = [(label, kwargs) for label, kwargs in runs if label in only]
    if quick:
        runs = [(label, dict(kwargs, max_steps=40, eval_steps=0, eval_importance_samples=0,
                             final_eval_max_examples=64)) for label, kwargs in runs[:2]]
    results = {}
    for label, kwargs in runs:
        output_dir = os.path.join(workdir, label)
        start = time.perf_counter()
        try:
            record = train(TrainArguments(output_dir=output_dir, report_to="jsonl", **kwargs),
                           DataArguments(dataset="shapes"))
            results[label] = {"wall_s": round(time.perf_counter() - start, 1), "steps": record["step"],
                              "metrics": record["metrics"]}
        except Exception as error:
            results[label] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        print(label, json.dumps(results[label])[:400], flush=True)
        if images_dir and label == "vae" and "error" not in results[label]:
            os.makedirs(images_dir, exist_ok=True)
            for png in ("reconstructions.png", "samples.png"):
                if os.path.isfile(os.path.join(output_dir, png)):
                    shutil.copy(os.path.join(output_dir, png), os.path.join(images_dir, f"cuda-vae-{png}"))

    # stop at a checkpoint, resume: the CUDA random state is saved and restored
    steps = 40 if quick else 400
    output_dir = os.path.join(workdir, "resume")
    common = dict(model="vae", output_dir=output_dir, report_to="jsonl", eval_steps=0, eval_importance_samples=0,
                  final_eval_max_examples=256, checkpointing_steps=steps // 2)
    try:
        first = train(TrainArguments(max_steps=steps // 2, **common), DataArguments(dataset="shapes"))
        resumed = train(TrainArguments(max_steps=steps, resume_from_checkpoint="latest", **common),
                        DataArguments(dataset="shapes"))
        results["resume"] = {"first_steps": first["step"], "resumed_steps": resumed["step"],
                             "metrics": resumed["metrics"]}
    except Exception as error:
        results["resume"] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    print("resume", json.dumps(results["resume"])[:400], flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    keys = ("psnr", "ssim", "nll", "codebook_usage", "mig")
    rows = [[label, r.get("wall_s", ""), r.get("steps", ""),
             *(f"{r['metrics'][k]:.4g}" if isinstance(r.get("metrics", {}).get(k), (int, float)) else ""
               for k in keys)] if "error" not in r else [label, "ERROR", r["error"][:60], "", "", "", "", ""]
            for label, r in results.items() if label != "resume"]
    print(table(rows, ["run", "wall s", "steps", *keys]), flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {PARTS}")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--quick", action="store_true", help="fewer families, smaller sizes, 40-step runs")
    parser.add_argument("--output", default=os.path.join(RESULTS_DIR, "cuda.json"))
    parser.add_argument("--images", default=None, help="copy the default VAE run's PNGs here")
    parser.add_argument("--runs", default=None, help="recipes part: only these runs (e.g. vae,vae-fp16)")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: expected names from {PARTS}, got {unknown}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here (use --device cpu for a dry run)")
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "quick": args.quick}
    for part in parts:
        start = time.perf_counter()
        print(f"== {part}", flush=True)
        fn = {"models": part_models, "klae": part_klae, "recipes": part_recipes}[part]
        try:
            report[part] = (fn(device, args.quick, args.images, args.runs and args.runs.split(","))
                            if part == "recipes" else fn(device, args.quick))
        except Exception as error:
            report[part] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
            print(report[part]["traceback"], flush=True)
        report[f"{part}_wall_s"] = round(time.perf_counter() - start, 1)
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
