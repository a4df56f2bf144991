#!/usr/bin/env python
"""What a model trained on shapes keeps in its latent: the orientation of each shape, read back by a probe.

    python benchmarks/probe_shape_latents.py outputs/vae-shapes
    python benchmarks/probe_shape_latents.py --halves      # each half of the VAE recipe's network, alone

For each shape, 6000 training examples of it are encoded (posterior means); an MLP (two hidden layers of 256) is
fitted on 5000 of them to predict (cos kθ, sin kθ), with k the shape's rotational symmetry (4 for the square, 2
for the ellipse, 1 for the heart), and its R² on the other 1000 is printed. R² near 1: the latent carries that
shape's orientation; near 0: the decoder can only draw the shape averaged over its rotations. A conditional model
is given the true class. For a model with a local latent (`local_latent_channels`), the R² is also given from the
global latent alone: what the conditional prior p(z_local | z_global), and so a sample, can know of the orientation.

`--halves` asks whether either half of the no-argument VAE's network (its recipe: Burgess et al.'s convs, 6000
steps of batch 32, Adam at 2e-3 with warm-up and cosine) could learn its part alone in the same budget, given the
answer the other half should supply:
- the decoder, fed the true factors (a one-hot class, scale, cos/sin kθ, position) instead of a latent, trained
  on the same Bernoulli likelihood: test PSNR and, per shape, the fraction of 1000 test images that the shape judge
  of bench_default_recipes.py assigns to the true shape (and the fraction it calls blobs);
- the encoder, trained to output the class (cross-entropy) and (cos kθ, sin kθ) (squared error) from the image:
  class accuracy and orientation R² per shape on 1000 test images.
If both learn their part but the VAE does not, the failure is in finding the code jointly, not in either network.
Writes benchmarks/results/shape_latent_probe.json ("halves"); about 10 minutes on 2 cores, half of it the judge's
training.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from _common import RESULTS_DIR, write_result  # noqa: E402

from hf_vae.data.shapes import _SYMMETRY_PERIOD, SHAPE_NAMES, SHAPES_FACTOR_SIZES  # noqa: E402

#: rotational symmetry of each shape, in SHAPE_NAMES order
SYMMETRY = {name: SHAPES_FACTOR_SIZES[2] // period for name, period in zip(SHAPE_NAMES, _SYMMETRY_PERIOD)}


def orientation_r2(model, shape: int, symmetry: int, examples: int = 6000, held_out: int = 1000,
                   global_only: bool = False) -> float:
    from hf_vae.data.shapes import render_factors_batch, shapes_example_factors, shapes_split_ids

    factors = shapes_example_factors(0, shapes_split_ids(0, "train", 50_000))
    factors = factors[factors[:, 0] == shape][:examples]
    size = model.config.data_shape[-1]
    x = torch.from_numpy(render_factors_batch(factors, size)).float()[:, None]
    angle = torch.from_numpy(factors[:, 2]).double() * 2 * np.pi / SHAPES_FACTOR_SIZES[2] * symmetry
    target = torch.stack([angle.cos(), angle.sin()], 1).float()
    labels = torch.full((len(x),), shape) if model.is_conditional else None
    with torch.no_grad():
        z = model.encode(x, labels=labels).latent_dist.mean.flatten(1)
    if global_only:  # z = (z_global, z_local)
        z = z[:, :model.config.latent_dim]
    n = len(z) - held_out
    torch.manual_seed(0)
    probe = nn.Sequential(nn.Linear(z.shape[1], 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2))
    optimizer = torch.optim.Adam(probe.parameters(), 3e-3)
    for _ in range(2000):
        loss = ((probe(z[:n]) - target[:n]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        residual = ((probe(z[n:]) - target[n:]) ** 2).sum()
        total = ((target[n:] - target[n:].mean(0)) ** 2).sum()
    return float(1 - residual / total)


def recipe_network_and_schedule():
    """The no-argument run's VAE as the trainer builds it, but with its 10 global latents only (the halves measure
    what a single global latent asks of each network), and its (steps, batch, learning rate, lr(step) factor)."""
    from hf_vae import VAEModel
    from hf_vae.training import DataArguments, TrainArguments, build_model_config
    from hf_vae.training.arguments import apply_recipe
    from hf_vae.training.optimisation import lr_lambda, resolved_warmup_steps

    info = {"image_size": 64, "in_channels": 1, "num_classes": 3, "num_examples": {"train": 50_000}}
    train_args, model_config, _ = apply_recipe(TrainArguments(), DataArguments(dataset="shapes"), {})
    model_config["local_latent_channels"] = 0
    config = build_model_config(train_args, DataArguments(dataset="shapes"), model_config, info)
    steps = train_args.max_steps
    warmup = resolved_warmup_steps(train_args, steps)
    schedule = lr_lambda(warmup, steps, train_args.lr_scheduler, train_args.min_lr_ratio)
    return VAEModel(config), steps, train_args.batch_size, train_args.learning_rate, schedule


def true_factor_code(factors: np.ndarray, width: int) -> torch.Tensor:
    """(N, 5) factor indices -> (N, width): class one-hot, scale, cos/sin kθ, x, y, each in [-1, 1], zero-padded."""
    f = torch.from_numpy(factors).long()
    symmetry = torch.tensor([float(SYMMETRY[name]) for name in SHAPE_NAMES])[f[:, 0]]
    angle = f[:, 2].double() * 2 * np.pi / SHAPES_FACTOR_SIZES[2] * symmetry
    code = torch.cat([nn.functional.one_hot(f[:, 0], 3) * 2.0 - 1, f[:, 1:2] / (SHAPES_FACTOR_SIZES[1] - 1) * 2 - 1,
                      angle.cos()[:, None], angle.sin()[:, None],
                      f[:, 3:5] / (torch.tensor(SHAPES_FACTOR_SIZES[3:5]) - 1) * 2 - 1], 1).float()
    return nn.functional.pad(code, (0, width - code.shape[1]))


def train_half(loss_fn, model, data, steps: int, batch: int, lr: float, schedule) -> float:
    """Train `model` on loss_fn(batch factors, batch images) with the recipe's budget; returns seconds taken."""
    factors, images = data
    optimizer = torch.optim.Adam(model.parameters(), lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        index = torch.randint(0, len(images), (batch,), generator=generator)
        loss = loss_fn(factors[index.numpy()], images[index].float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start


def halves(workdir: str) -> dict:
    from bench_default_recipes import judge_verdicts, shape_judge

    from hf_vae.data.shapes import render_factors_batch, shapes_example_factors, shapes_split_ids

    judge, _, _, test_images, test_shapes = shape_judge(workdir)  # the 1000 test images of these factors
    test_factors = shapes_example_factors(0, shapes_split_ids(0, "test", 1000))
    factors = shapes_example_factors(0, shapes_split_ids(0, "train", 50_000))
    data = factors, torch.from_numpy(render_factors_batch(factors, 64)).to(torch.uint8)[:, None]
    result = {}

    torch.manual_seed(0)
    vae, *recipe = recipe_network_and_schedule()
    width = vae.config.latent_dim

    def decoder_loss(factors, images):
        logits = vae.decode(true_factor_code(factors, width)).parameters
        return nn.functional.binary_cross_entropy_with_logits(logits, images, reduction="sum") / len(images)

    seconds = train_half(decoder_loss, vae.decoder, data, *recipe)
    with torch.no_grad():
        drawn = vae.decode(true_factor_code(test_factors, width)).sample
        mse = ((drawn - test_images) ** 2).flatten(1).mean(1)
    result["decoder_from_true_factors"] = {
        "test_psnr_db": round(float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean()), 2),
        "type_kept": judge_verdicts(judge, drawn, test_shapes), "train_seconds": round(seconds)}

    torch.manual_seed(0)
    encoder = recipe_network_and_schedule()[0].encoder  # its output: (mean, log-variance) of 2 x latent_dim

    def targets(factors):
        code = true_factor_code(factors, 5)
        return torch.from_numpy(factors[:, 0]).long(), code[:, 4:6]

    def encoder_loss(factors, images):
        out, (label, orientation) = encoder(images), targets(factors)
        return nn.functional.cross_entropy(out[:, :3], label) + ((out[:, 3:5] - orientation) ** 2).sum(1).mean()

    seconds = train_half(encoder_loss, encoder, data, *recipe)
    with torch.no_grad():
        out, (label, orientation) = encoder(test_images), targets(test_factors)
    read = {}
    for k, name in enumerate(SHAPE_NAMES):
        mine, truth = out[label == k], orientation[label == k]
        r2 = 1 - ((mine[:, 3:5] - truth) ** 2).sum() / ((truth - truth.mean(0)) ** 2).sum()
        read[name] = {"class_accuracy": round(float((mine[:, :3].argmax(1) == k).float().mean()), 3),
                      "orientation_r2": round(float(r2), 3)}
    result["encoder_to_true_factors"] = {**read, "train_seconds": round(seconds)}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="a trained model's folder (a vector latent: vae, beta_vae, cvae, ...)")
    parser.add_argument("--halves", action="store_true", help="train each half of the VAE recipe's network alone")
    parser.add_argument("--output", default=os.path.join(RESULTS_DIR, "shape_latent_probe.json"))
    args = parser.parse_args()
    if args.halves == bool(args.model):
        parser.error("give a model folder, or --halves")
    import hf_vae  # noqa: F401  (registers the models)

    if args.halves:
        with tempfile.TemporaryDirectory() as workdir:
            result = halves(workdir)
        record = {}
        if os.path.isfile(args.output):
            with open(args.output) as f:
                record = json.load(f)
        record["halves"] = {"command": "python benchmarks/probe_shape_latents.py --halves", **result}
        write_result(record, args.output)
        return 0
    from transformers import AutoModel

    model = AutoModel.from_pretrained(args.model).eval()
    result = {"model": args.model, "orientation_r2_from_latent":
              {name: round(orientation_r2(model, k, SYMMETRY[name]), 3) for k, name in enumerate(SHAPE_NAMES)}}
    if getattr(model, "local_latent_size", 0):
        result["orientation_r2_from_global_latent"] = {
            name: round(orientation_r2(model, k, SYMMETRY[name], global_only=True), 3)
            for k, name in enumerate(SHAPE_NAMES)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
