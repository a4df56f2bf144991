#!/usr/bin/env python
"""The KLAE fast path (`KLAEModel.enable_fast_path()`, `--compile`) against diffusers, on a GPU; its CPU rows.

Parts:
  * inference: encode (posterior mean) and decode of an SD-1.x-sized KL autoencoder at 512² and of the SDXL-sized
    one (the same network; scaling factor 0.13025) at 1024², batch 1 and 4, in fp16, bf16 and fp32 (TF32 allowed,
    as GPU inference usually runs): hf_vae's fast path against diffusers' eager AutoencoderKL on the same weights
    and dtype, and against diffusers + torch.compile (channels-last, encoder and decoder compiled: what diffusers'
    documentation suggests). Median ms (CUDA events, after warm-up, compilation included in the warm-up), ratios,
    and max |Δ| of each against diffusers' eager output. Random weights, saved once: no download.
  * finetune: the SD-VAE decoder-only fine-tune step, batch 4 at 256², under bf16 autocast: L1 + an LPIPS-shaped
    perceptual term (hf_vae's LPIPS network, random weights) + a PatchGAN with latent diffusion's adaptive weight,
    the discriminator's step after the generator's. hf_vae: the trainer's objective (AdversarialObjective) and
    fused AdamW on the fast path. Baseline: the same step as diffusers' research example
    examples/research_projects/autoencoderkl/train_autoencoderkl.py writes it (written here from that script's
    structure: a plain loop, encode -> sample -> decode, torch.optim.AdamW, autocast, the adaptive weight from
    autograd.grad on the last layer, a separate discriminator step) on diffusers' eager AutoencoderKL. Images/s.
  * cpu: encode and decode of the SD-1.x-sized autoencoder at 256², batch 1, on this machine's CPU: the default
    path, the fast path (on a CPU: the default path, see hf_vae/fast_path.py) and, for the record, channels-last
    alone; the decode's GFLOP/s (FLOPs from torch.utils.flop_counter) as a fraction of the machine's conv peak,
    measured here with a large 3x3 convolution. Threads: hf_vae.thread_policy's choice (every core for this work).

    python benchmarks/bench_klae_fast.py                              # GPU: every part (~30 min on one H100)
    python benchmarks/bench_klae_fast.py --dtypes bf16 --batches 1    # GPU: a shorter grid
    python benchmarks/bench_klae_fast.py --device cpu --parts cpu     # the CPU rows (~5 min on 2 cores)
    python benchmarks/bench_klae_fast.py --dry-run                    # every part on a CPU with tiny sizes (~1 min)

Prints a table per part and writes benchmarks/results/klae_fast.json (klae_fast_cpu.json for --device cpu,
klae_fast_dry_run.json for --dry-run, or --output).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import RESULTS_DIR, machine, table, write_result  # noqa: E402
from bench_cuda import synchronize, tf32, time_cuda  # noqa: E402

PARTS = ("inference", "finetune", "cpu")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SD1 = dict(in_channels=3, out_channels=3, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
           latent_channels=4, norm_num_groups=32, down_block_types=["DownEncoderBlock2D"] * 4,
           up_block_types=["UpDecoderBlock2D"] * 4, sample_size=512, scaling_factor=0.18215)
SDXL = dict(SD1, sample_size=1024, scaling_factor=0.13025)
TINY = dict(SD1, block_out_channels=[32, 64], norm_num_groups=8, layers_per_block=1,
            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, sample_size=64)


def diffusers_vae(config: dict, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**config).eval()


def compiled_diffusers(vae, backend: str, mode):
    """diffusers' AutoencoderKL as its documentation suggests speeding it up: channels-last, the encoder and the
    decoder compiled."""
    vae = copy.deepcopy(vae).to(memory_format=torch.channels_last)
    vae.encoder = torch.compile(vae.encoder, backend=backend, mode=mode)
    vae.decoder = torch.compile(vae.decoder, backend=backend, mode=mode)
    return vae


def fast_klae(vae, backend: str, mode):
    from hf_vae import KLAEModel

    return KLAEModel.from_diffusers(vae).enable_fast_path(compile=None if backend == "inductor" else True,
                                                          backend=backend, mode=mode)


def encode(model, x):
    return model.encode(x).latent_dist.mean


def decode(model, z):
    return model.decode(z).sample


def inputs(size: int, batch: int, device, dtype, config: dict):
    """Images (batch, 3, size, size) in [-1, 1] and the latents of that size: the network's down-sampling factor is
    2 per block after the first."""
    generator = torch.Generator().manual_seed(0)
    side = size // 2 ** (len(config["block_out_channels"]) - 1)
    x = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    z = torch.randn(batch, config["latent_channels"], side, side, generator=generator)
    return x.to(device, dtype), z.to(device, dtype)


# ---------------------------------------------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------------------------------------------

def part_inference(device, args) -> dict:
    nets = [("sd1", TINY if args.dry_run else SD1, 64 if args.dry_run else 512),
            ("sdxl", TINY if args.dry_run else SDXL, 128 if args.dry_run else 1024)]
    results, rows = {}, []
    for net, config, size in nets:
        base = diffusers_vae(config)
        for precision in args.dtypes:
            dtype = DTYPES[precision]
            if precision == "fp16" and device.type != "cuda":
                continue
            models = {"diffusers": copy.deepcopy(base).to(device, dtype)}
            models["diffusers+compile"] = compiled_diffusers(models["diffusers"], args.backend, args.mode)
            models["hf_vae fast"] = fast_klae(models["diffusers"], args.backend, args.mode)
            for batch in args.batches:
                x, z = inputs(size, batch, device, dtype, config)
                for op, fn, data in (("encode", encode, x), ("decode", decode, z)):
                    key = f"{net}/{size}/{precision}/b{batch}/{op}"
                    cell = {}
                    try:
                        with torch.no_grad(), tf32(True):
                            reference = fn(models["diffusers"], data).float()
                            for impl, model in models.items():
                                ms = time_cuda(lambda: fn(model, data), device, args.warmup, args.repeats)
                                out = fn(model, data).float()
                                cell[impl] = {"ms": ms, "max_abs_diff": float((out - reference).abs().max())}
                        del reference
                    except torch.cuda.OutOfMemoryError as error:  # a 1024² batch of 4 in fp32 may not fit
                        cell["error"] = f"OOM: {str(error).splitlines()[0][:100]}"
                        torch.cuda.empty_cache()
                    results[key] = cell
                    if "error" in cell:
                        rows.append([key, "OOM", "", "", "", "", ""])
                        continue
                    ours, eager, compiled = (cell[k]["ms"] for k in ("hf_vae fast", "diffusers", "diffusers+compile"))
                    rows.append([key, f"{eager:.2f}", f"{compiled:.2f}", f"{ours:.2f}", f"{eager / ours:.2f}x",
                                 f"{compiled / ours:.2f}x", f"{cell['hf_vae fast']['max_abs_diff']:.1e}"])
                    print(" ".join(map(str, rows[-1])), flush=True)
            del models
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(table(rows, ["net/size/dtype/batch/op", "diffusers ms", "diffusers+compile ms", "hf_vae fast ms",
                       "vs eager", "vs compiled", "max|Δ| vs eager"]), flush=True)
    return results


# ---------------------------------------------------------------------------------------------------------------
# finetune
# ---------------------------------------------------------------------------------------------------------------

def perceptual_network(seed: int):
    from hf_vae.training.objectives import PerceptualAdapter
    from hf_vae.training.perceptual import LPIPS

    torch.manual_seed(seed)
    return PerceptualAdapter(LPIPS().eval().requires_grad_(False))


def hf_vae_step(vae, device, backend, mode, size):
    """hf_vae's decoder-only step, as the trainer runs it: AdversarialObjective (LatentDiffusionLoss), fused AdamW,
    bf16 autocast, the generator's then the discriminator's backward and step."""
    import warnings

    from hf_vae import KLAEModel
    from hf_vae.training.ldm_loss import LatentDiffusionLoss
    from hf_vae.training.objectives import AdversarialObjective
    from hf_vae.training.pretrained import freeze_modules
    from hf_vae.training.optimisation import adam

    model = KLAEModel.from_diffusers(vae, kl_weight=1e-6).to(device).train()
    freeze_modules(model, "decoder")
    model.enable_fast_path(compile=None if backend == "inductor" else True, backend=backend, mode=mode)
    objective = AdversarialObjective(
        vq=False, in_channels=3, image_size=size, latent_numel=4 * (size // 8) ** 2, value_range=(-1.0, 1.0),
        perceptual=None, perceptual_weight=0.0, pixel_loss="l1", kl_weight=1e-6, disc_start=0, disc_weight=0.5,
        disc_loss="hinge", disc_num_layers=3, disc_ndf=64, logvar_init=0.0, codebook_weight=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "a RANDOMLY initialised LPIPS": on purpose, the cost is the same
        objective.loss = LatentDiffusionLoss(disc_start=0, kl_weight=1e-6, pixel_loss="l1", perceptual_weight=1.0,
                                             perceptual=perceptual_network(1), disc_weight=0.5,
                                             allow_random_weights=True)
    objective.to(device)
    generator_params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adam(generator_params, 1e-5, (0.5, 0.9), 0.0, device)
    disc_optimizer = adam(list(objective.discriminator_parameters()), 1e-5, (0.5, 0.9), 0.0, device)

    def step(x):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _, output = objective.generator_loss(model, {"pixel_values": x}, 1)
        loss.backward()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            d_loss, _ = objective.discriminator_loss({"pixel_values": x}, output, 1)
        d_loss.backward()
        optimizer.step()
        disc_optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        disc_optimizer.zero_grad(set_to_none=True)

    return step


def diffusers_script_step(vae, device):
    """The step of diffusers' examples/research_projects/autoencoderkl/train_autoencoderkl.py, decoder only."""
    from hf_vae.training.discriminator import NLayerDiscriminator, hinge_d_loss, weights_init

    vae = copy.deepcopy(vae).to(device).train()
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    lpips = perceptual_network(1).to(device)
    torch.manual_seed(2)
    discriminator = NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3).apply(weights_init).to(device)
    optimizer = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=1e-5, betas=(0.5, 0.9))
    disc_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=1e-5, betas=(0.5, 0.9))
    kl_scale, perceptual_scale, disc_weight_scale, disc_factor = 1e-6, 1.0, 0.5, 1.0

    def step(target):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            posterior = vae.encode(target).latent_dist
            z = posterior.sample()
            pred = vae.decode(z).sample
            kl_loss = posterior.kl().mean()
            rec_loss = F.l1_loss(pred.float(), target.float(), reduction="none")
            p_loss = lpips(pred, target)
            rec_loss = rec_loss + perceptual_scale * p_loss
            nll_loss = torch.sum(rec_loss) / rec_loss.shape[0]
            logits_fake = discriminator(pred)
            g_loss = -torch.mean(logits_fake)
            last_layer = vae.decoder.conv_out.weight
            nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
            g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
            disc_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
            disc_weight = torch.clamp(disc_weight, 0.0, 1e4).detach() * disc_weight_scale
            loss = nll_loss + kl_scale * kl_loss + disc_weight * disc_factor * g_loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits_real = discriminator(target)
            logits_fake = discriminator(pred.detach())
            d_loss = disc_factor * hinge_d_loss(logits_real, logits_fake)
        d_loss.backward()
        disc_optimizer.step()
        disc_optimizer.zero_grad()

    return step


def part_finetune(device, args) -> dict:
    config, size, batch = (TINY, 32, 1) if args.dry_run else (SD1, 256, 4)
    vae = diffusers_vae(dict(config, sample_size=size))
    x = inputs(size, batch, device, torch.float32, config)[0]
    steps = {"diffusers script": diffusers_script_step(vae, device),
             "hf_vae fast": hf_vae_step(vae, device, args.backend, args.mode, size)}
    results = {}
    for name, step in steps.items():
        for _ in range(args.warmup):  # the first steps compile
            step(x)
        synchronize(device)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            step(x)
            synchronize(device)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        results[name] = {"seconds_per_step": seconds, "images_per_s": batch / seconds}
        print(name, results[name], flush=True)
    ratio = results["hf_vae fast"]["images_per_s"] / results["diffusers script"]["images_per_s"]
    results.update(image_size=size, batch_size=batch, speedup=ratio)
    print(table([[name, f"{results[name]['images_per_s']:.2f}", f"{results[name]['seconds_per_step'] * 1000:.1f}"]
                 for name in steps] + [["hf_vae / diffusers", f"{ratio:.2f}x", ""]],
                [f"decoder fine-tune step, {batch}x{size}², bf16", "images/s", "ms/step"]), flush=True)
    return results


# ---------------------------------------------------------------------------------------------------------------
# cpu
# ---------------------------------------------------------------------------------------------------------------

def conv_peak_gflops(repeats: int, small: bool) -> dict:
    """GFLOP/s of one large 3x3 convolution (256 -> 256 channels at 128², fp32): the machine's conv peak."""
    side = 32 if small else 128
    conv = torch.nn.Conv2d(256, 256, 3, padding=1)
    x = torch.randn(1, 256, side, side)
    flops = 2 * 256 * 256 * 9 * side * side
    with torch.no_grad():
        conv(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - start)
    return {"gflops_per_s": flops / min(times) / 1e9, "flops": flops}


def part_cpu(device, args) -> dict:
    from hf_vae import KLAEModel, thread_policy

    config, size = (TINY, 64) if args.dry_run else (SD1, 256)
    vae = diffusers_vae(config)
    model = KLAEModel.from_diffusers(vae)
    x, z = inputs(size, 1, "cpu", torch.float32, config)
    with torch.no_grad():
        decode_flops = thread_policy.count_flops(lambda: model.decode(z))
        encode_flops = thread_policy.count_flops(lambda: model.encode(x))
    choice = thread_policy.apply_thread_policy(decode_flops, 1)
    variants = {"default path": {}, "fast path": {"enable": {}},
                "channels-last only": {"enable": {"channels_last": True}}}
    times = {(v, op): [] for v in variants for op in ("encode", "decode")}
    loads = []
    peak_before = conv_peak_gflops(3, args.dry_run)
    with torch.no_grad():
        for _ in range(args.repeats):  # interleaved: each round runs every variant once
            for name, variant in variants.items():
                if "enable" in variant:
                    model.enable_fast_path(**variant["enable"])
                for op, fn, data in (("encode", encode, x), ("decode", decode, z)):
                    if not times[(name, op)]:  # warm-up, in the first round
                        fn(model, data)
                    start = time.perf_counter()
                    fn(model, data)
                    times[(name, op)].append(time.perf_counter() - start)
                model.disable_fast_path()
                loads.append(os.getloadavg()[0])
    peak_after = conv_peak_gflops(3, args.dry_run)
    peak = max(peak_before["gflops_per_s"], peak_after["gflops_per_s"])
    results = {"image_size": size, "threads": choice.threads, "thread_choice": choice.describe(),
               "conv_peak_gflops_per_s": peak, "decode_flops": decode_flops, "encode_flops": encode_flops,
               "loadavg_1min": loads, "times_s": {f"{v}/{op}": t for (v, op), t in times.items()}}
    rows = []
    for op, flops in (("encode", encode_flops), ("decode", decode_flops)):
        default = min(times[("default path", op)])
        for name in variants:
            best = min(times[(name, op)])
            gflops = flops / best / 1e9
            results[f"{name}/{op}"] = {"s": best, "gflops_per_s": gflops, "fraction_of_conv_peak": gflops / peak,
                                       "vs_default": default / best}
            rows.append([f"{op} 1x{size}²", name, f"{best:.2f}", f"{default / best:.2f}x", f"{gflops:.1f}",
                         f"{gflops / peak:.0%}"])
    print(table(rows, ["operation", "variant", "s (best)", "vs default", "GFLOP/s", "of conv peak"]), flush=True)
    print(f"conv peak {peak:.1f} GFLOP/s; threads: {choice.describe()}; loadavg {loads}", flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=None, help=f"comma-separated, of {PARTS} (default: all; cpu with "
                                                      f"--device cpu)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="CPU, tiny networks and sizes, torch.compile's 'eager' backend: checks the code paths")
    parser.add_argument("--dtypes", default="fp16,bf16,fp32")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--backend", default=None, help="torch.compile backend (default inductor; eager in a dry run)")
    parser.add_argument("--mode", default=None, help="torch.compile mode of both compiled implementations, e.g. "
                                                     "reduce-overhead (CUDA graphs)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3; dry run 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 10 GPU, 2 CPU; dry run 2)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device = "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here (--dry-run or --device cpu --parts cpu)")
    parts = (args.parts or (",".join(PARTS) if device.type == "cuda" or args.dry_run else "cpu")).split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: expected names from {PARTS}, got {unknown}")
    if args.dry_run:  # one dtype and batch: each combination is another compilation
        args.dtypes = args.dtypes if args.dtypes != parser.get_default("dtypes") else "fp32"
        args.batches = args.batches if args.batches != parser.get_default("batches") else "2"
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    if not set(args.dtypes) <= set(DTYPES):
        parser.error(f"--dtypes: expected names from {sorted(DTYPES)}, got {args.dtypes}")
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.backend = args.backend or ("eager" if args.dry_run else "inductor")
    args.warmup = args.warmup if args.warmup is not None else (1 if args.dry_run else 3)
    args.repeats = args.repeats or (2 if args.dry_run else 10 if device.type == "cuda" else 2)
    output = args.output or os.path.join(RESULTS_DIR, "klae_fast_dry_run.json" if args.dry_run else
                                         "klae_fast.json" if device.type == "cuda" else "klae_fast_cpu.json")
    report = {"machine": machine(), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "dry_run": args.dry_run, "backend": args.backend, "mode": args.mode,
              "command": "python benchmarks/bench_klae_fast.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "loadavg_start": os.getloadavg()}
    # Both compiled implementations build several models (dtypes, batch sizes): more graphs per function than
    # torch.compile's default limit of 8, past which the diffusers baseline would silently fall back to eager.
    torch._dynamo.config.recompile_limit = 64
    if device.type == "cpu":
        from hf_vae import thread_policy

        report["threads"] = thread_policy.apply_thread_policy(2e8 if args.dry_run else 1e12, 1).describe()
    failed = False
    for part in parts:
        start = time.perf_counter()
        print(f"== {part}", flush=True)
        try:
            report[part] = {"inference": part_inference, "finetune": part_finetune, "cpu": part_cpu}[part](device, args)
        except Exception as error:  # one part's failure must not hide the others'
            report[part] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
            print(report[part]["traceback"], flush=True)
            failed = True
        report[f"{part}_wall_s"] = round(time.perf_counter() - start, 1)
    report["loadavg_end"] = os.getloadavg()
    write_result(report, output)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
