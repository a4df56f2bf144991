#!/usr/bin/env python
"""Untiled, diffusers-style tiled and exact tiled KLAE decoding: memory, time, error and seams.

    python benchmarks/bench_exact_tiling.py                  # CPU, reduced-width decoder, 1024² 2048² 4096² (~14 min)
    python benchmarks/bench_exact_tiling.py --sd --device cuda --budget-gb 16   # the SD-1.x decoder on a GPU
    python benchmarks/bench_exact_tiling.py --sizes 1024 --picture-only          # just docs/images/exact_tiling.png

Model. `--sd`: Stable Diffusion 1.x's decoder (block_out_channels 128/256/512/512, layers_per_block 2, GroupNorm
32, mid-block attention, 4 latent channels), random weights. The default CPU run uses a reduced-width model of the
same shape (4 resolutions, f = 8; channels 16/32/64/64, layers_per_block 1, GroupNorm 16) without the mid-block
attention: on this 2-core CPU the SD decoder takes ~150 s at 1024² and ~40 min at 4096², and exact global attention
over the 512² latent positions of a 4096² image is 4·N²·C ≈ 1.8e13 FLOPs even at C = 64 (7–10 min here alone).
The attention is exact and tested (tests/test_exact_tiling.py); its cost is the untiled network's.

Methods, one fresh process each, fp32, batch 1, `--threads` torch threads (default 1), tiles of `--tile` output
pixels (default 256):
  * untiled: `model.decode(z)`;
  * diffusers_tiled: `model.enable_tiling(tile)`: diffusers' overlapping tiles (overlap 0.25), linear blends;
  * exact_device / exact_cpu / exact_mmap: hf_vae.exact_tiling with the kept maps on the compute device, in host
    memory (GPU runs only: on a CPU it is the same memory as "device"), or in memory-mapped temporary files.

Measurements:
  * memory on the compute device: with --device cuda, torch.cuda.max_memory_allocated during the call; on a CPU, the
    process's peak resident set during the call (VmHWM after `clear_refs`, minus the RSS before it), which counts
    the maps that exact_device keeps and, for exact_mmap, the file pages mapped while a row of tiles runs
    (released after every row); a sampling thread splits the peak into anonymous memory and file-backed pages
    (page cache the kernel can write back and drop). "stored" is the peak of the maps the exact method keeps alive at once (ActivationStore).
  * budget: each process may allocate at most `--budget-gb` beyond what it holds after loading (RLIMIT_DATA on a
    CPU, which counts private memory and not shared file mappings; the CUDA allocator's memory fraction on a GPU),
    standing in for a device of that size. Default on CPU: 3 GB, the reduced model's analogue of a 24 GB GPU for
    SD (its full-resolution maps have 8x fewer channels). A method that exceeds it is recorded as "out of memory".
  * time of the one call (the machine is shared: the load average before and after each case is recorded);
  * max |Δ| to the untiled output at the same size (– where untiled did not fit);
  * seams: mean |x[i] − x[i−1]| across the rows/columns where diffusers' tiles meet (the start and end of each
    blend band) divided by the same mean over all other rows/columns (a tile/4 margin at the image border left
    out); compare each method with untiled's value at the same size: equal means the tile grid is invisible.

The latent is smooth (low-frequency sinusoids and ramps, same for every method), so seams are not hidden in noise.
Results: benchmarks/results/exact_tiling.json; the picture: docs/images/exact_tiling.png.
"""

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import RESULTS_DIR, machine, table, write_result  # noqa: E402

SD1_CONFIG = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
                  mid_block_add_attention=True)
CPU_CONFIG = dict(block_out_channels=[16, 32, 64, 64], layers_per_block=1, norm_num_groups=16,
                  mid_block_add_attention=False)
OUTPUT = os.path.join(RESULTS_DIR, "exact_tiling.json")
PICTURE = os.path.join(ROOT, "docs", "images", "exact_tiling.png")
OVERLAP = 0.25


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class ResidentSetSampler:
    """Peaks of the anonymous (RssAnon) and file-backed (RssFile) resident set, sampled every 5 ms in a thread:
    the kernel keeps a high-water mark only for their sum (VmHWM)."""

    def __init__(self):
        import threading

        self.peaks = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for field in self.peaks:
                self.peaks[field] = max(self.peaks[field], _status_kb(field))
            self._stop.wait(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def build_model(config: Dict, device: str):
    import torch

    from hf_vae import KLAEConfig, KLAEModel

    blocks = len(config["block_out_channels"])
    torch.manual_seed(0)
    model = KLAEModel(KLAEConfig(**config, latent_channels=4, down_block_types=["DownEncoderBlock2D"] * blocks,
                                 up_block_types=["UpDecoderBlock2D"] * blocks, sample_size=256))
    return model.eval().to(device)


def smooth_latent(side: int, device: str = "cpu"):
    """(1, 4, side, side): ramps and sinusoids of one to two periods across the image, one pattern per channel."""
    import torch

    t = torch.linspace(0, 1, side, dtype=torch.float64)
    y, x = t[:, None].expand(side, side), t[None, :].expand(side, side)
    channels = [2 * x - 1, 1 - 2 * y, torch.sin(2 * math.pi * (x + 0.5 * y)), torch.cos(3 * math.pi * x * y)]
    return torch.stack(channels)[None].float().to(device)


def decode(model, z, method: str, tile: int, storage_dir: str):
    """(image, peak bytes of the kept maps or None)."""
    from hf_vae.exact_tiling import ActivationStore, decode_exact

    if method == "untiled":
        return model.decode(z).sample, None
    if method == "diffusers_tiled":
        model.enable_tiling(tile_sample_min_size=tile, tile_overlap_factor=OVERLAP)
        return model.decode(z).sample, None
    store = ActivationStore(method.split("_")[1], z.device, storage_dir)
    return decode_exact(model.decoder, z, model.post_quant_conv, tile, store), store.peak_bytes


def child(spec: Dict) -> Dict:
    """One decode in this fresh process; the image goes to spec["output"] (.npy) for the parent to compare."""
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    model = build_model(spec["config"], device)
    z = smooth_latent(spec["size"] // 8, device)
    budget = int(spec["budget_gb"] * 2**30)
    cuda = device.startswith("cuda")
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, (base + budget) / total))
        torch.cuda.reset_peak_memory_stats()
    else:
        resource.setrlimit(resource.RLIMIT_DATA, (_status_kb("VmData") * 1024 + budget, resource.RLIM_INFINITY))
        with open("/proc/self/clear_refs", "w") as handle:  # resets VmHWM to the current RSS
            handle.write("5")
        base = _status_kb("VmRSS") * 1024
        base_anon, base_file = _status_kb("RssAnon") * 1024, _status_kb("RssFile") * 1024
    result = {"status": "ok"}
    sampler = None if cuda else ResidentSetSampler()
    start = time.perf_counter()
    try:
        with torch.no_grad(), (sampler or contextlib.nullcontext()):
            image, stored = decode(model, z, spec["method"], spec["tile"], spec["storage_dir"])
        if cuda:
            torch.cuda.synchronize()
    except (RuntimeError, MemoryError) as error:  # torch's allocators raise RuntimeError (OutOfMemoryError on CUDA)
        if "memory" not in str(error).lower() and not isinstance(error, MemoryError):
            raise
        image, stored, result["status"] = None, None, "out of memory"
        result["error"] = str(error).splitlines()[0][:200]
    result["seconds"] = time.perf_counter() - start
    if cuda:
        result["peak_device_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        result["peak_device_mb"] = (_status_kb("VmHWM") * 1024 - base) / 2**20
        result["peak_anon_mb"] = (sampler.peaks["RssAnon"] * 1024 - base_anon) / 2**20
        result["peak_file_mb"] = (sampler.peaks["RssFile"] * 1024 - base_file) / 2**20
    result["stored_mb"] = None if stored is None else stored / 2**20
    if image is not None:
        if not cuda:  # the budget was for the decode; the copy for the parent is bookkeeping
            resource.setrlimit(resource.RLIMIT_DATA, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        np.save(spec["output"], image[0].float().cpu().numpy())
        result["output_shape"] = list(image.shape)
    return result


def run_child(spec: Dict) -> Dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        return {"status": f"failed (exit {completed.returncode})", "error": completed.stderr[-2000:]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def seam_ratio(image, tile: int) -> float:
    """Mean |first difference| across diffusers' tile junctions (start and end of every blend band, rows and
    columns) over the mean across all other rows/columns, leaving out a `tile // 4` margin at the image border
    (where the decoder's own zero padding makes large jumps that would dominate the denominator)."""
    import numpy as np

    keep, blend, margin = tile - int(tile * OVERLAP), int(tile * OVERLAP), tile // 4
    ratios_num, ratios_den = [], []
    for axis in (1, 2):  # (C, H, W): rows, then columns
        jumps = np.abs(np.diff(image, axis=axis)).mean(axis=(0, 3 - axis))  # jump between index i and i+1
        border = np.zeros(len(jumps), dtype=bool)
        for start in range(keep, image.shape[axis], keep):
            for position in (start, start + blend):
                if position - 1 < len(jumps):
                    border[position - 1] = True
        inside = np.zeros(len(jumps), dtype=bool)
        inside[margin:len(jumps) - margin] = True
        ratios_num.append(jumps[border & inside].mean())
        ratios_den.append(jumps[~border & inside].mean())
    return float(np.mean(ratios_num) / np.mean(ratios_den))


def compare(outputs: Dict[str, str], tile: int) -> Dict[str, Dict]:
    import numpy as np

    reference = np.load(outputs["untiled"]) if "untiled" in outputs else None
    stats = {}
    for method, path in outputs.items():
        image = np.load(path)
        difference = None if reference is None else float(np.abs(image - reference).max())
        stats[method] = {"max_abs_diff_vs_untiled": difference, "seam_ratio": seam_ratio(image, tile)}
    return stats


def decode_in_process(config: Dict, size: int, tile: int, device: str) -> Dict[str, "np.ndarray"]:
    """The three images for the picture, without the benchmark's per-process measurements (`--picture-only`)."""
    import torch

    model = build_model(config, device)
    z = smooth_latent(size // 8, device)
    with torch.no_grad():
        return {method: decode(model, z, method, tile, tempfile.gettempdir())[0][0].float().cpu().numpy()
                for method in ("untiled", "diffusers_tiled", "exact_device")}


def picture(images: Dict[str, "np.ndarray"], tile: int, path: str) -> Dict:
    """Untiled, diffusers-tiled and exact-tiled decodes (C, H, W) of the smooth latent, cropped around the first
    junction of diffusers' tiles; below each, |difference to untiled| on the same scale. One value-to-grey mapping
    (the range of the three crops) for every panel."""
    import numpy as np
    from PIL import Image, ImageDraw

    keep = tile - int(tile * OVERLAP)
    crop = min(tile // 2, keep)
    centre = keep + int(tile * OVERLAP) // 2  # the middle of the first blend band
    window = (slice(None), slice(centre - crop // 2, centre + crop // 2), slice(centre - crop // 2, centre + crop // 2))
    crops = {method: image[window] for method, image in images.items()}
    low, high = min(c.min() for c in crops.values()), max(c.max() for c in crops.values())
    zoom, gap, label = max(1, 256 // crop), 8, 18

    def to_pixels(array):
        array = np.clip((array.transpose(1, 2, 0) - low) / (high - low), 0, 1)
        return Image.fromarray((array * 255).astype(np.uint8)).resize((crop * zoom,) * 2, Image.NEAREST)

    panel = crop * zoom
    canvas = Image.new("RGB", (3 * panel + 2 * gap, 2 * panel + gap + label), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (method, title) in enumerate([("untiled", "untiled"), ("diffusers_tiled", "diffusers tiles"),
                                             ("exact_device", "exact tiles")]):
        x0 = index * (panel + gap)
        draw.text((x0 + 4, 2), title, fill="black")
        canvas.paste(to_pixels(crops[method]), (x0, label))
        canvas.paste(to_pixels(np.abs(crops[method] - crops["untiled"]) + low), (x0, label + panel + gap))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    canvas.save(path)
    return {"image_size": list(images["untiled"].shape[1:]), "tile": tile,
            "crop_rows_columns": [centre - crop // 2, centre + crop // 2], "value_range": [float(low), float(high)],
            "max_abs_diff_vs_untiled_in_crop": {m: float(np.abs(c - crops["untiled"]).max()) for m, c in crops.items()}}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd", action="store_true", help="the SD-1.x decoder (for a GPU or a big machine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="1024,2048,4096", help="output sides, comma-separated")
    parser.add_argument("--tile", type=int, default=256, help="tile side in output pixels (both tiled methods)")
    parser.add_argument("--budget-gb", type=float, default=None,
                        help="memory a decode may allocate (default 3 on CPU, the whole device on a GPU)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per decode (default 1: on a shared 2-core machine two OpenMP threads "
                             "stall at a barrier on every small op, which punishes tiles; see tests/conftest.py)")
    parser.add_argument("--storage-dir", default=None, help="directory for exact_mmap's files (default: temp dir)")
    parser.add_argument("--picture-only", action="store_true")
    parser.add_argument("--output", default=OUTPUT)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    config = SD1_CONFIG if args.sd else CPU_CONFIG
    cuda = args.device.startswith("cuda")
    budget = args.budget_gb if args.budget_gb is not None else (1e6 if cuda else 3.0)
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.picture_only:
        images = decode_in_process(config, min(sizes), args.tile, args.device)
        print(f"wrote {PICTURE}: {picture(images, args.tile, PICTURE)}")
        return 0
    picture_record = None
    methods = ["untiled", "diffusers_tiled", "exact_device"] + (["exact_cpu"] if cuda else []) + ["exact_mmap"]
    cases = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in sizes:
            outputs = {}
            for method in methods:
                spec = dict(config=config, device=args.device, size=size, tile=args.tile, method=method,
                            budget_gb=budget, threads=args.threads, storage_dir=args.storage_dir or scratch,
                            output=os.path.join(scratch, f"{method}-{size}.npy"))
                load_before = os.getloadavg()
                result = run_child(spec)
                result.update(size=size, method=method, load_before=load_before, load_after=os.getloadavg())
                print(json.dumps(result), flush=True)
                if result["status"] == "ok":
                    outputs[method] = spec["output"]
                cases.append(result)
            stats = compare(outputs, args.tile)
            if size == min(sizes) and {"untiled", "diffusers_tiled", "exact_device"} <= set(outputs):
                import numpy as np

                images = {method: np.load(outputs[method]) for method in ("untiled", "diffusers_tiled", "exact_device")}
                picture_record = picture(images, args.tile, PICTURE)
                del images
            for result in cases:
                if result["size"] == size:
                    result.update(stats.get(result["method"], {}))
            for path in outputs.values():
                os.remove(path)

    def cell(value, digits=2, kind="f"):
        return "–" if value is None else f"{value:.{digits}{kind}}"

    rows = []
    for r in cases:
        diffusers = next((c for c in cases if c["size"] == r["size"] and c["method"] == "diffusers_tiled"), None)
        ratio = (r["seconds"] / diffusers["seconds"] if diffusers and diffusers["status"] == "ok"
                 and r["status"] == "ok" and r["method"].startswith("exact") else None)
        rows.append([f"{r['size']}²", r["method"], r["status"], cell(r.get("peak_device_mb"), 0)]
                    + ([] if cuda else [cell(r.get("peak_anon_mb"), 0), cell(r.get("peak_file_mb"), 0)])
                    + [cell(r.get("stored_mb"), 0), cell(r.get("seconds"), 1), cell(ratio, 2),
                       cell(r.get("max_abs_diff_vs_untiled"), 1, "e"), cell(r.get("seam_ratio"), 2)])
    headers = (["size", "method", "status", "peak compute MB"] + ([] if cuda else ["of which anon", "file-backed"])
               + ["stored MB", "time s", "time / diffusers", "max |Δ| vs untiled", "seam ratio"])
    text = table(rows, headers)
    result = {
        "benchmark": "exact tiling (hf_vae.exact_tiling) vs untiled and diffusers-style tiled KLAE decoding",
        "command": "python benchmarks/bench_exact_tiling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": "SD-1.x decoder" if args.sd else "reduced-width SD-shaped decoder (see docstring; no mid-block "
                                                   "attention, whose exact cost is the untiled network's)",
        "config": config, "device": args.device, "tile": args.tile, "overlap": OVERLAP, "budget_gb": budget,
        "machine": machine(), "load_average_at_end": os.getloadavg(), "picture": picture_record,
        "cases": cases, "table": text.splitlines(),
    }
    write_result(result, args.output)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
