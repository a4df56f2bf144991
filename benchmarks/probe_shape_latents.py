#!/usr/bin/env python
"""What a model trained on shapes keeps in its latent: the orientation of each shape, read back by a probe.

    python benchmarks/probe_shape_latents.py outputs/vae-shapes

For each shape, 6000 training examples of it are encoded (posterior means); an MLP (two hidden layers of 256) is
fitted on 5000 of them to predict (cos kθ, sin kθ), with k the shape's rotational symmetry (4 for the square, 2
for the ellipse, 1 for the heart), and its R² on the other 1000 is printed. R² near 1: the latent carries that
shape's orientation; near 0: the decoder can only draw the shape averaged over its rotations. A conditional model
is given the true class.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

#: rotational symmetry of each shape, in SHAPE_NAMES order
SYMMETRY = {"square": 4, "ellipse": 2, "heart": 1}


def orientation_r2(model, shape: int, symmetry: int, examples: int = 6000, held_out: int = 1000) -> float:
    from hf_vae.data.shapes import SHAPES_FACTOR_SIZES, render_factors_batch, shapes_example_factors, shapes_split_ids

    factors = shapes_example_factors(0, shapes_split_ids(0, "train", 50_000))
    factors = factors[factors[:, 0] == shape][:examples]
    size = model.config.data_shape[-1]
    x = torch.from_numpy(render_factors_batch(factors, size)).float()[:, None]
    angle = torch.from_numpy(factors[:, 2]).double() * 2 * np.pi / SHAPES_FACTOR_SIZES[2] * symmetry
    target = torch.stack([angle.cos(), angle.sin()], 1).float()
    labels = torch.full((len(x),), shape) if model.is_conditional else None
    with torch.no_grad():
        z = model.encode(x, labels=labels).latent_dist.mean.flatten(1)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a trained model's folder (a vector latent: vae, beta_vae, cvae, ...)")
    args = parser.parse_args()
    from transformers import AutoModel

    import hf_vae  # noqa: F401  (registers the models)
    from hf_vae.data.shapes import SHAPE_NAMES

    model = AutoModel.from_pretrained(args.model).eval()
    result = {name: round(orientation_r2(model, k, SYMMETRY[name]), 3) for k, name in enumerate(SHAPE_NAMES)}
    print(json.dumps({"model": args.model, "orientation_r2_from_latent": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
