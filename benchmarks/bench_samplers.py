#!/usr/bin/env python
"""The ex-post samplers side by side: Fréchet distance of each sampler's images on one trained model.

The protocol of `bench_families.py --part frechet` (whose helpers it imports): an MLP 784-512-512-32 (Bernoulli
decoder, dynamically binarised Fashion-MNIST, batch 128, Adam 1e-3 constant) trained for --epochs epochs by
`hf_vae.training.train`; then for each sampler, `fit_latent_density(kind=...)` on the posterior modes of the first
--density_examples training images, and the Fréchet distance between --frechet_examples generated images and the
test set in the features of the small Fashion-MNIST classifier (`scripts/train_fid_classifier.py`).

Samplers (--samplers, all by default):
  prior      z ~ p(z) = N(0, I) (no fitted density)
  gmm        a 10-component Gaussian mixture (Ghosh et al. 2020; pythae's GaussianMixtureSampler)
  two_stage  a second VAE on the latents (Dai & Wipf 2019; pythae's TwoStageVAESampler)
  maf        a masked autoregressive flow (Papamakarios et al. 2017; pythae's MAFSampler)
  iaf        an inverse autoregressive flow (Kingma et al. 2016; pythae's IAFSampler)
The learned samplers train with their default sizes for --fit_steps Adam steps (batch 256, learning rate 1e-3).

    python scripts/train_fid_classifier.py --dataset fashion_mnist --output_dir fid_classifier --epochs 3
    python benchmarks/bench_samplers.py --classifier fid_classifier --epochs 10 --threads 1
    python benchmarks/bench_samplers.py --model wae --classifier fid_classifier --samplers prior gmm maf
    python benchmarks/bench_samplers.py --epochs 3 --frechet_examples 5000 --density_examples 20000 --fit_steps 1000
    python benchmarks/bench_samplers.py --quick      # minutes: 0.05 epochs, 1 000 images, a 300-batch classifier

Without --classifier a classifier is trained here (the network and optimiser of scripts/train_fid_classifier.py);
numbers to compare with bench_families.py's frechet part should use the same saved classifier. --quick checks the
pipeline end to end (its numbers are not results). Writes benchmarks/results/samplers.json (--output), merging the
rows of earlier runs with the same recipe, so samplers can be run by separate processes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import RESULTS_DIR, machine, table, write_merged_result  # noqa: E402
from bench_families import MLP, train_model  # noqa: E402

SAMPLERS = ("prior", "gmm", "two_stage", "maf", "iaf")
GMM_COMPONENTS = 10
QUICK = dict(epochs=0.05, frechet_examples=1000, density_examples=2000, fit_steps=200, classifier_batches=300)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vae", help="the family trained with the MLP recipe (vae, wae, rae, ...)")
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--frechet_examples", type=int, default=10000, help="generated images, and test images")
    parser.add_argument("--density_examples", type=int, default=60000, help="training images the densities fit")
    parser.add_argument("--fit_steps", type=int, default=2000, help="Adam steps of the learned samplers")
    parser.add_argument("--classifier", default=None, help="folder of scripts/train_fid_classifier.py (default: "
                        "a classifier trained here for --classifier_batches batches)")
    parser.add_argument("--classifier_batches", type=int, default=1400,
                        help="batches of 128 of the classifier trained here (1400: 3 epochs, the script's default)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a minutes-long end-to-end check (see above)")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/samplers[_quick].json")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def classifier_features(args):
    """The classifier's features: the folder given, or a classifier trained here (`train_fid_classifier.py`'s
    network and optimiser, --classifier_batches batches of 128)."""
    from hf_vae.evaluation.fid import ClassifierFeatures

    if args.classifier is not None:
        return ClassifierFeatures.from_pretrained(args.classifier), args.classifier
    return ClassifierFeatures(train_classifier(args.classifier_batches, args.seed)), \
        f"trained here, {args.classifier_batches} batches"


def train_classifier(num_batches: int, seed: int):
    from hf_vae.data import build_dataset, collate_batch
    from hf_vae.evaluation.fid import FeatureClassifier

    torch.manual_seed(seed)
    model = FeatureClassifier(1, 28, 10)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    # as many epochs as num_batches needs
    batches = (batch for epoch in range(num_batches) for batch in torch.utils.data.DataLoader(
        build_dataset("fashion_mnist", "train", image_size=28, in_channels=1, value_range=(0.0, 1.0), binarize=False,
                      require_labels=True, seed=seed, epoch=epoch), batch_size=128, collate_fn=collate_batch))
    for _, batch in zip(range(num_batches), batches):
        loss = torch.nn.functional.cross_entropy(model(batch["pixel_values"]), batch["labels"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def fit_sampler(model, sampler, args):
    """Fit the sampler's density on the training codes (none for the prior); the seconds it took."""
    from hf_vae.evaluation import data_settings
    from hf_vae.training import DataArguments
    from hf_vae.training.latent_density import fit_on_training_data

    model.latent_density = None  # the prior, or a clean slate for the next density
    if sampler == "prior":
        return 0.0
    start = time.perf_counter()
    fit_on_training_data(model, "fashion_mnist", data_settings(model.config), DataArguments(), GMM_COMPONENTS,
                         args.density_examples, 500, args.seed, kind=sampler,
                         fit_options=None if sampler == "gmm" else {"num_steps": args.fit_steps})
    return time.perf_counter() - start


def run(args, workdir):
    from hf_vae.evaluation.fid import frechet_distance_of_samples, real_statistics

    features, classifier = classifier_features(args)
    real = real_statistics(features, "fashion_mnist", "test", max_examples=args.frechet_examples)
    model, record, train_s = train_model(args.model, MLP, workdir, "fashion_mnist", num_epochs=args.epochs,
                                         fit_latent_density=0, seed=args.seed)
    rows = {}
    for sampler in args.samplers:
        fit_s = fit_sampler(model, sampler, args)
        start = time.perf_counter()
        fd = frechet_distance_of_samples(model, features, real, num_samples=args.frechet_examples, seed=args.seed)
        rows[f"{args.model}+{sampler}"] = {
            "model": args.model, "sampler": sampler, "frechet_distance": round(fd, 3), "fit_s": round(fit_s, 1),
            "sample_and_score_s": round(time.perf_counter() - start, 1), "train_s": round(train_s, 1),
            "steps": record["step"], **({"settings": model.latent_density.settings}
                                        if sampler not in ("prior", "gmm") else {})}
        print(sampler, rows[f"{args.model}+{sampler}"], flush=True)
    recipe = {"epochs": args.epochs, "samples": args.frechet_examples, "density_examples": args.density_examples,
              "fit_steps": args.fit_steps, "gmm_components": GMM_COMPONENTS, "seed": args.seed,
              "classifier": classifier}
    return rows, recipe


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    output = args.output or os.path.join(RESULTS_DIR, "samplers_quick.json" if args.quick else "samplers.json")
    with tempfile.TemporaryDirectory() as workdir:
        rows, recipe = run(args, workdir)
    result = write_merged_result({"benchmark": "samplers", "command": "python " + " ".join(sys.argv),
                                  "machine": machine(), "recipe": recipe}, rows, output)
    keys = ["frechet_distance", "fit_s", "sample_and_score_s", "train_s", "steps"]
    print(table([[name] + [row.get(k, "") for k in keys] for name, row in result["models"].items()], ["run"] + keys))


if __name__ == "__main__":
    main()
