"""What each `--model`'s default recipe gives: `python scripts/train.py --model X` with nothing else, measured.

    python benchmarks/bench_default_recipes.py                       # every variant, one after the other
    python benchmarks/bench_default_recipes.py --models vae --images docs/images   # and refresh the README's PNGs
    python benchmarks/bench_default_recipes.py --judge_saved         # only the shape-type measurement, on the
                                                                     # saved models of the recorded runs

For each run: wall time and CPU time of the whole `train` call (start-up, training, evaluations, writing), the
final test metrics (PSNR, SSIM, NLL and MIG where they apply, codebook usage), the fraction of 1000 prior samples
that show something (max intensity >= 0.5, in [0, 1]) for the models with a generative prior, and for every loss
term the largest ratio to its running median after the warm-up (a divergence shows as a ratio >> 10). For runs
on shapes, whether reconstructions keep each shape's type: per shape, the fraction of 1000 test reconstructions
that a small CNN judge assigns to the true shape, and the fraction it calls a blob (`shape_type_kept`). The picture
grids the runs write are copied next to the JSON (and to --images when given).
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS_DIR, machine, table, write_result  # noqa: E402

#: (label, --model, --dataset): the no-argument run first
RUNS = [("vae", "vae", "shapes"), ("vq_vae", "vq_vae", "shapes"), ("klae", "klae", "shapes"),
        ("cvae", "cvae", "shapes"), ("beta_vae", "beta_vae", "shapes"), ("cvae-fashion_mnist", "cvae", "fashion_mnist")]
GENERATIVE = ("vae", "beta_vae", "cvae")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def largest_ratio_to_running_median(output_dir: str, warmup_fraction: float = 0.05, window: int = 20) -> dict:
    """{loss term: max over logged steps after the warm-up of value / median of the `window` values logged before}.

    A trailing window, so that a late spike is compared with the recent level, not with the large early losses.
    """
    path = os.path.join(output_dir, "logs", "train", "metrics.jsonl")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    last = max((r.get("step", 0) for r in rows), default=0)
    ratios = {}
    for key in sorted({k for r in rows for k in r if k.startswith("train/")}):
        if key.split("/")[-1] in ("lr", "grad_norm", "perplexity", "codebook_usage", "usage", "ppl"):
            continue
        seen, worst = [], 0.0
        for r in rows:
            if key not in r:
                continue
            value = abs(float(r[key]))
            if seen and r.get("step", 0) > warmup_fraction * last:
                median = statistics.median(seen[-window:])
                if median > 0:
                    worst = max(worst, value / median)
            seen.append(value)
        ratios[key.split("/", 1)[1]] = round(worst, 3)
    return ratios


def non_blank_fraction(output_dir: str, num: int = 1000) -> float:
    """Fraction of `num` prior samples whose brightest pixel reaches 0.5 (a CVAE: classes in turn)."""
    import torch
    from transformers import AutoModel

    import hf_vae  # noqa: F401  (registers the models)

    model = AutoModel.from_pretrained(output_dir).eval()
    labels = None
    if model.is_conditional:
        labels = torch.arange(num) % model.config.num_classes
    with torch.no_grad():
        samples = model.generate(num, labels=labels, generator=torch.Generator().manual_seed(0))
    return float((samples.flatten(1).amax(1) >= 0.5).float().mean())


#: the judge's classes: the three shapes (SHAPE_NAMES order), then a blob
JUDGE_CLASSES = ("square", "ellipse", "heart", "blob")


def rotation_blurred(factors, generator, image_size: int = 64):
    """Each shape averaged over 10 orientations spread over its rotational period, thresholded at a random level
    in [0.3, 0.7]: the round blob a decoder draws when its latent does not carry the shape's orientation."""
    import numpy as np

    from hf_vae.data.shapes import _SYMMETRY_PERIOD, SHAPES_FACTOR_SIZES, render_factors_batch

    period = np.array(_SYMMETRY_PERIOD)[factors[:, 0]]  # orientation steps after which the shape repeats
    total = np.zeros((len(factors), image_size, image_size), np.float32)
    for j in range(10):
        turned = factors.copy()
        turned[:, 2] = (factors[:, 2] + j * period // 10) % SHAPES_FACTOR_SIZES[2]
        total += render_factors_batch(turned, image_size)
    level = generator.uniform(0.3, 0.7, (len(factors), 1, 1))
    return (total / 10 > level).astype(np.float32)


def soften_edges(images, generator):
    """Imperfect copies of binary images, as a good decoder draws them: a quarter are drawn at half the resolution
    and enlarged (as the 32x32 runs are judged), then all are blurred by a Gaussian of random width (0 to 1.2 px)
    and thresholded again at 0.5, so that corners round off and edges move by up to a pixel."""
    import torch
    import torch.nn.functional as F

    coarse = torch.from_numpy(generator.uniform(size=len(images)) < 0.25)
    images = images.clone()
    images[coarse] = F.interpolate(F.avg_pool2d(images[coarse], 2).round(), scale_factor=2, mode="nearest")
    sigma = torch.from_numpy(generator.uniform(0.0, 1.2, len(images))).float().clamp_min(1e-3)
    offsets = torch.arange(-2, 3).float()
    kernel = torch.exp(-offsets ** 2 / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (B, 5), one separable kernel per image
    x = images.transpose(0, 1)  # (1, B, H, W): each image its own channel
    x = F.conv2d(x, kernel[:, None, None, :], padding=(0, 2), groups=len(images))
    x = F.conv2d(x, kernel[:, None, :, None], padding=(2, 0), groups=len(images))
    return (x.transpose(0, 1) > 0.5).float()


def shape_judge(workdir: str):
    """A CNN that says which shape a thresholded 64x64 image shows (square, ellipse, heart) or that it shows a
    blob: a shape averaged over its rotations, what a decoder draws when its latent lacks the orientation. A
    three-way judge has to call a blob some shape, and which one depended on its initialisation; with the fourth
    class a blob is named as such. Trained for 3 epochs on the shapes' 50,000 training images (softened, as a good
    decoder draws them) and 25,000 blobs made from them; seeded, cached in `workdir`.

    Returns (judge, accuracy on the 1000 true test images, fraction of their blobs it calls blobs, the test
    images, their shapes)."""
    import numpy as np
    import torch
    import torch.nn as nn
    from safetensors.torch import load_file, save_file

    from hf_vae.data.shapes import render_factors_batch, shapes_example_factors, shapes_split_ids

    def factors(split, n):
        return shapes_example_factors(0, shapes_split_ids(0, split, n))

    torch.manual_seed(0)
    generator = np.random.default_rng(0)
    judge = nn.Sequential(nn.Conv2d(1, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
                          nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(), nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(1024, 128), nn.ReLU(), nn.Linear(128, len(JUDGE_CLASSES)))
    test_factors = factors("test", 1000)
    test_images = torch.from_numpy(render_factors_batch(test_factors, 64)).float()[:, None]
    test_blobs = torch.from_numpy(rotation_blurred(test_factors, generator))[:, None]
    path = os.path.join(workdir, "shape_judge_4way.safetensors")
    if os.path.isfile(path):
        judge.load_state_dict(load_file(path))
    else:
        train_factors = factors("train", 50_000)
        shapes = torch.from_numpy(render_factors_batch(train_factors, 64)).to(torch.uint8)[:, None]
        blobs = torch.from_numpy(rotation_blurred(train_factors[:25_000], generator)).to(torch.uint8)[:, None]
        images = torch.cat([shapes, blobs])
        labels = torch.cat([torch.from_numpy(train_factors[:, 0]).long(),
                            torch.full((len(blobs),), JUDGE_CLASSES.index("blob"))])
        is_shape = labels < JUDGE_CLASSES.index("blob")
        optimizer = torch.optim.Adam(judge.parameters(), 1e-3)
        for _ in range(3):
            order = torch.randperm(len(images))
            for start in range(0, len(images), 128):
                batch = order[start:start + 128]
                x = images[batch].float()
                soft = is_shape[batch]
                x[soft] = soften_edges(x[soft], generator)
                loss = nn.functional.cross_entropy(judge(x), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        save_file(judge.state_dict(), path)
    judge.eval()
    with torch.no_grad():
        own = float((judge(test_images).argmax(1) == torch.from_numpy(test_factors[:, 0])).float().mean())
        blob_recall = float((judge(test_blobs).argmax(1) == JUDGE_CLASSES.index("blob")).float().mean())
    return judge, own, blob_recall, test_images, np.asarray(test_factors[:, 0])


def judge_verdicts(judge, reconstructions, shapes) -> dict:
    """Per shape, the fraction of `reconstructions` (in [0, 1], thresholded at 0.5) the judge assigns to the true
    shape, the same over all, and the fraction it calls blobs."""
    import torch

    with torch.no_grad():
        predicted = judge((reconstructions > 0.5).float()).argmax(1).numpy()
    kept = {name: round(float((predicted[shapes == k] == k).mean()), 3) for k, name in enumerate(JUDGE_CLASSES[:3])}
    return {**kept, "all": round(float((predicted == shapes).mean()), 3),
            "read_as_blob": round(float((predicted == JUDGE_CLASSES.index("blob")).mean()), 3)}


def shape_type_kept(output_dir: str, workdir: str) -> dict:
    """Whether a model's reconstructions of the 1000 test images keep each shape's type, not only its blob: the
    judge's verdicts on them (see `judge_verdicts`), with the judge's own accuracy on true images and blobs."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel

    import hf_vae  # noqa: F401

    judge, own, blob_recall, images, shapes = shape_judge(workdir)
    model = AutoModel.from_pretrained(output_dir).eval()
    size = model.config.data_shape[-1]
    x = F.interpolate(images, size=size, mode="area").round() if size != 64 else images
    low, high = (-1.0, 1.0) if model.config.model_type == "klae" else (0.0, 1.0)
    labels = torch.from_numpy(shapes).long() if model.is_conditional else None
    with torch.no_grad():
        reconstruction = (model.reconstruct(x * (high - low) + low, labels=labels) - low) / (high - low)
        reconstruction = F.interpolate(reconstruction, size=64, mode="nearest") if size != 64 else reconstruction
    return {**judge_verdicts(judge, reconstruction, shapes), "judge_accuracy_on_true_images": round(own, 3),
            "judge_blob_recall": round(blob_recall, 3)}


def run(label: str, model: str, dataset: str, workdir: str) -> dict:
    from hf_vae.training import DataArguments, TrainArguments, train

    output_dir = os.path.join(workdir, label)
    start_wall, start_cpu = time.perf_counter(), cpu_seconds()
    record = train(TrainArguments(model=model, output_dir=output_dir, report_to="jsonl"), DataArguments(dataset=dataset))
    wall, cpu = time.perf_counter() - start_wall, cpu_seconds() - start_cpu
    with open(os.path.join(output_dir, "training_args.json")) as f:
        args = json.load(f)
    result = {"model": model, "dataset": dataset, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
              "steps": record["step"], "recipe": args.get("recipe"), "metrics": record["metrics"],
              "loss_max_ratio_to_running_median": largest_ratio_to_running_median(output_dir)}
    if model in GENERATIVE:
        result["non_blank_prior_samples"] = non_blank_fraction(output_dir)
    if dataset == "shapes":
        result["shape_type_kept"] = shape_type_kept(output_dir, workdir)
    result["output_dir"] = output_dir
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(label for label, _, _ in RUNS),
                        help="comma-separated labels of RUNS to run, in order")
    parser.add_argument("--workdir", default=None, help="where the runs are written (default: a temporary folder)")
    parser.add_argument("--images", default=None, help="also copy each run's PNGs to DIR/<label>-*.png")
    parser.add_argument("--output", default=os.path.join(RESULTS_DIR, "default_recipes.json"))
    parser.add_argument("--judge_saved", action="store_true",
                        help="train nothing: add the shape-type measurement to the recorded runs whose saved "
                             "models are still in their output_dir")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="hf_vae-recipes-")
    os.makedirs(workdir, exist_ok=True)
    wanted = args.models.split(",")
    previous, header = {}, {}
    if os.path.isfile(args.output):  # runs not repeated now keep their last measurement
        with open(args.output) as f:
            recorded = json.load(f)
        previous = {r["label"]: r for r in recorded.get("runs", [])}
        header = {k: v for k, v in recorded.items() if k != "runs"}
    runs = []
    for label, model, dataset in RUNS:
        if args.judge_saved and label in previous:
            record = previous[label]
            if label in wanted and dataset == "shapes" and os.path.isdir(record.get("output_dir", "")):
                record["shape_type_kept"] = shape_type_kept(record["output_dir"], workdir)
                print(label, record["shape_type_kept"], flush=True)
            runs.append(record)
            continue
        if label not in wanted:
            if label in previous:
                runs.append(previous[label])
            continue
        result = {"label": label, **run(label, model, dataset, workdir)}
        pictures = os.path.join(RESULTS_DIR, "default_recipes")
        for folder in [pictures] + ([args.images] if args.images else []):
            os.makedirs(folder, exist_ok=True)
            for name in ("reconstructions.png", "samples.png"):
                source = os.path.join(result["output_dir"], name)
                if os.path.isfile(source):
                    shutil.copyfile(source, os.path.join(folder, f"{label}-{name}"))
        runs.append(result)
        print(json.dumps(result, indent=2), flush=True)
    rows = []
    for r in runs:
        m = r["metrics"]
        fmt = lambda key, spec: format(m[key], spec) if key in m else "–"  # noqa: E731
        ratios = r.get("loss_max_ratio_to_running_median") or {}
        rows.append([r["label"], r["steps"], r["wall_s"], r["cpu_s"], fmt("psnr", ".2f"), fmt("ssim", ".3f"),
                     fmt("nll", ".1f"), fmt("mig", ".3f"), fmt("codebook_usage", ".2f"),
                     format(r["non_blank_prior_samples"], ".2f") if "non_blank_prior_samples" in r else "–",
                     format(ratios["loss"], ".2f") if "loss" in ratios else "–",
                     "/".join(format(kept[k], ".2f") for k in ("square", "ellipse", "heart", "read_as_blob")
                              if k in kept) if (kept := r.get("shape_type_kept")) else "–"])
    headers = ["run", "steps", "wall s", "cpu s", "PSNR dB", "SSIM", "NLL nats", "MIG", "codebook usage",
               "non-blank samples", "max loss / median of previous 20", "type kept square/ellipse/heart/read as blob"]
    print(table(rows, headers))
    if args.judge_saved and header:  # the runs were measured then, on that machine
        header["shape_type_kept_note"] = ("added by --judge_saved on the runs' saved models, by the four-way judge "
                                          "(square, ellipse, heart, blob; seeded) of shape_judge")
        write_result({**header, "runs": runs}, args.output)
        return
    write_result({"benchmark": "default_recipes", "machine": machine(),
                  "note": "2-core machine shared with other jobs while measured: wall times are upper bounds; "
                          "cpu_s is the process's CPU time (user + sys).",
                  "runs": runs}, args.output)


if __name__ == "__main__":
    main()
