#!/usr/bin/env python
"""The VAE families side by side, each trained by `hf_vae.training.train` with the same recipe.

Three parts (run one with --part, or all):

  nll      Fashion-MNIST, MLP 784-512-512-32 (Bernoulli decoder, dynamic binarisation), batch 128, Adam 1e-3
           constant, --epochs epochs: test NLL with K = 1000 importance samples and −ELBO, for the VAE, the IWAE
           (K = 5 and K = 50), the MIWAE (M = 5, K = 10: the same 50 samples as IWAE-50) and the VampPrior VAE
           (500 pseudo-inputs).
  frechet  the same architecture and recipe: Fréchet distance between 10 000 samples and the test set in the
           features of the small Fashion-MNIST classifier (`scripts/train_fid_classifier.py`), for the VAE
           (prior and an ex-post 10-component Gaussian mixture), the VampPrior VAE, the RAE (+ its mixture) and
           the WAE (prior and mixture).
  pythae   pythae 0.1.2 (`pip install --no-deps --target /tmp/pythae_site pythae==0.1.2`) side by side: its VAE and
           IWAE (K = 5) trained by its BaseTrainer on the nll part's recipe (same networks, Fashion-MNIST binarised
           anew at each read, batch 128, Adam 1e-3, --epochs epochs), their weights then copied into hf_vae's
           MLP model and scored by the same evaluator as the nll part, and by pythae's own `get_nll` on the same
           binarised test images, so the two estimators check each other.
  mig      shapes stream, 64x64, the network of Burgess et al. (2018) with 10 latents, trained with the VAE's
           default recipe (batch 32, Adam 2e-3, cosine, --steps steps): MIG and reconstruction error for the
           VAE (β = 1), β-VAE (β = 4), β-TCVAE (β = 6) and FactorVAE (γ = 10).

    python benchmarks/bench_families.py --part nll --epochs 10 --nll_examples 2000 --threads 1
    python benchmarks/bench_families.py --part nll --models vae vae_iaf --seed 1 --epochs 10 --nll_examples 2000
    python benchmarks/bench_families.py --part pythae --epochs 10 --nll_examples 2000 --threads 1
    python benchmarks/bench_families.py --part frechet --epochs 10 --classifier fid_classifier/ --vq_prior DIR --threads 1
    python benchmarks/bench_families.py --part mig --steps 6000 --threads 1

Writes benchmarks/results/families_<part>.json (merging the models of earlier runs of the same part, so models can
be run by separate processes with --models).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import RESULTS_DIR, machine, table, write_merged_result  # noqa: E402

MLP = {"image_size": 28, "in_channels": 1, "hidden_dims": [512, 512], "latent_dim": 32, "likelihood": "bernoulli"}
NLL_MODELS = {
    "vae": ("vae", {}),
    "iwae_k5": ("iwae", {"num_importance_samples": 5}),
    "iwae_k50": ("iwae", {"num_importance_samples": 50}),
    "miwae_m5_k10": ("miwae", {"num_bounds": 5, "num_importance_samples": 10}),
    "vamp_vae": ("vamp_vae", {"num_pseudo_inputs": 500}),
    "ciwae_k5": ("ciwae", {"num_importance_samples": 5}),
    "vae_lin_nf": ("vae_lin_nf", {}),
    "vae_iaf": ("vae_iaf", {}),
    "vae_iaf_3x128": ("vae_iaf", {"flow_hidden_dims": [128, 128, 128]}),
    "vae_iaf_h32": ("vae_iaf", {"flow_context_dim": 32}),
    "svae": ("svae", {}),
    "poincare_vae": ("poincare_vae", {}),
    "hvae": ("hvae", {"leapfrog_step_size": 0.01, "learn_leapfrog_step_size": True, "learn_beta_zero": True}),
    "piwae_m5_k10": ("piwae", {"num_bounds": 5, "num_importance_samples": 10}),
    "rhvae": ("rhvae", {"leapfrog_step_size": 0.01, "learn_leapfrog_step_size": True, "learn_beta_zero": True}),
    "hvae_per_dimension": ("hvae", {"leapfrog_step_size": 0.1, "per_dimension_step_size": True, "beta_zero": 0.67,
                                    "learn_leapfrog_step_size": True, "learn_beta_zero": True}),
}
FRECHET_MODELS = {  # key: (model, config, samplers: 0 = the prior, K = an ex-post K-component mixture)
    "vae": ("vae", {}, (0, 10)),
    "vamp_vae": ("vamp_vae", {"num_pseudo_inputs": 500}, (0,)),
    "rae": ("rae", {"latent_density_components": 10}, (10,)),
    "wae": ("wae", {}, (0, 10)),
}
BURGESS = {"backbone": "burgess", "image_size": 64, "block_out_channels": [32, 32, 32, 32], "hidden_dims": [256, 256],
           "latent_dim": 10, "likelihood": "bernoulli"}
MIG_MODELS = {
    "vae": ("vae", {}),
    "beta_vae_b4": ("beta_vae", {"beta": 4.0}),
    "beta_tcvae_b6": ("beta_tcvae", {"beta": 6.0}),
    "factor_vae_g10": ("factor_vae", {"gamma": 10.0}),
}


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def train_model(name, config, workdir, dataset, **overrides):
    from hf_vae.training import DataArguments, TrainArguments, train

    kwargs = dict(model=name, output_dir=os.path.join(workdir, f"{name}-{time.time_ns()}"), batch_size=128,
                  learning_rate=1e-3, lr_scheduler="constant", warmup_steps=0, max_grad_norm=0.0, eval_steps=0,
                  checkpointing_steps=0, report_to="none", eval_importance_samples=0, final_eval_max_examples=256,
                  num_sample_images=16, seed=0)
    kwargs.update(overrides)
    args = TrainArguments(**kwargs)
    start = time.perf_counter()
    record = train(args, DataArguments(dataset=dataset), dict(config))
    reset_accelerate()
    from transformers import AutoModel

    return AutoModel.from_pretrained(args.output_dir).eval(), record, time.perf_counter() - start


def part_nll(args, workdir):
    from hf_vae.evaluation import evaluate

    rows = {}
    for key in args.models or NLL_MODELS:
        name, extra = NLL_MODELS[key]
        model, record, seconds = train_model(name, {**MLP, **extra}, workdir, "fashion_mnist", num_epochs=args.epochs,
                                             fit_latent_density=0, seed=args.seed)
        start = time.perf_counter()
        metrics = evaluate(model, "fashion_mnist", "test", batch_size=100, num_importance_samples=1000,
                           max_examples=args.nll_examples, metrics=["neg_elbo", "nll"])
        row_key = key if args.seed == 0 else f"{key}@seed{args.seed}"
        rows[row_key] = {"model": name, "config": extra, "seed": args.seed, "steps": record["step"],
                         "train_s": round(seconds, 1), "eval_s": round(time.perf_counter() - start, 1), **metrics}
        print(row_key, rows[row_key], flush=True)
    return rows, {"epochs": args.epochs, "nll_examples": args.nll_examples or 10000, "importance_samples": 1000}


def part_frechet(args, workdir):
    from hf_vae.evaluation import data_settings
    from hf_vae.evaluation.fid import ClassifierFeatures, frechet_distance_of_samples, real_statistics
    from hf_vae.training import DataArguments
    from hf_vae.training.latent_density import fit_on_training_data

    features = ClassifierFeatures.from_pretrained(args.classifier)
    real = real_statistics(features, "fashion_mnist", "test", max_examples=args.frechet_examples)
    rows = {}
    for key in args.models or FRECHET_MODELS:
        name, extra, samplers = FRECHET_MODELS[key]
        model, record, seconds = train_model(name, {**MLP, **extra}, workdir, "fashion_mnist",
                                             num_epochs=args.epochs, fit_latent_density=0)
        for components in samplers:
            if components:
                fit_on_training_data(model, "fashion_mnist", data_settings(model.config), DataArguments(), components,
                                     args.density_examples, 500, seed=0)
            fd = frechet_distance_of_samples(model, features, real, num_samples=args.frechet_examples, seed=0)
            label = f"{key}+gmm{components}" if components else f"{key} (prior)"
            rows[label] = {"model": name, "config": extra, "sampler": f"ex-post GMM, {components} components"
                           if components else "prior", "steps": record["step"], "train_s": round(seconds, 1),
                           "frechet_distance": fd, "mse": record["metrics"].get("mse")}
            print(label, rows[label], flush=True)
    if args.vq_prior:  # a VQ-VAE with its GPT-2 prior, trained by benchmarks/bench_vq_prior.py
        from hf_vae import VQVAEModel

        model = VQVAEModel.from_pretrained(args.vq_prior).eval()
        with open(os.path.join(args.vq_prior, "metrics.json")) as f:
            published = json.load(f)
        steps = published.get("step")
        fd = frechet_distance_of_samples(model, features, real, num_samples=args.frechet_examples, seed=0)
        rows["vq_vae+prior"] = {"model": "vq_vae", "config": {"source": "benchmarks/bench_vq_prior.py (conv VQ-VAE, "
                                                               "7x7 codes, GPT-2 prior)"},
                                "sampler": "GPT-2 prior over the code map", "steps": steps, "frechet_distance": fd,
                                "mse": published.get("metrics", {}).get("mse")}
        print("vq_vae+prior", rows["vq_vae+prior"], flush=True)
    return rows, {"epochs": args.epochs, "samples": args.frechet_examples, "density_examples": args.density_examples,
                  "classifier": args.classifier}


PYTHAE_MODELS = {"vae": ("VAE", {}), "iwae_k5": ("IWAE", {"number_samples": 5})}


def part_pythae(args, workdir):
    from hf_vae import VAEConfig, VAEModel
    from hf_vae.data import load_fashion_mnist_arrays
    from hf_vae.evaluation import evaluate
    from _pythae import pythae_mlp_pieces

    Encoder, Decoder, Binarised = pythae_mlp_pieces(args.pythae_site)  # puts pythae on the path
    import pythae.models as pythae_models
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    train_images = torch.from_numpy(load_fashion_mnist_arrays("train")[0]).float().div(255).unsqueeze(1)
    test_images = torch.from_numpy(load_fashion_mnist_arrays("test")[0][: args.nll_examples or 10000])
    test_binary = torch.bernoulli(test_images.float().div(255).unsqueeze(1), generator=torch.Generator().manual_seed(0))
    rows = {}
    for key in args.models or PYTHAE_MODELS:
        cls_name, extra = PYTHAE_MODELS[key]
        torch.manual_seed(0)
        config_cls = getattr(pythae_models, cls_name + "Config")
        model = getattr(pythae_models, cls_name)(config_cls(input_dim=(1, 28, 28), latent_dim=32,
                                                            reconstruction_loss="bce", **extra),
                                                 encoder=Encoder(), decoder=Decoder())
        trainer_config = BaseTrainerConfig(output_dir=os.path.join(workdir, f"pythae-{key}"),
                                           per_device_train_batch_size=128, per_device_eval_batch_size=128,
                                           num_epochs=int(args.epochs), learning_rate=1e-3, optimizer_cls="Adam",
                                           steps_saving=None, no_cuda=True)
        start = time.perf_counter()
        BaseTrainer(model, Binarised(train_images, torch.zeros(len(train_images))),
                    training_config=trainer_config).train()
        seconds = time.perf_counter() - start
        model.eval()
        # The same weights in hf_vae's MLP VAE (its encoder's last layer is [mean; log-variance] in one).
        ours = VAEModel(VAEConfig(**MLP)).eval()
        enc, dec = model.encoder, model.decoder
        state = {"encoder.net.0.weight": enc.net[1].weight, "encoder.net.0.bias": enc.net[1].bias,
                 "encoder.net.2.weight": enc.net[3].weight, "encoder.net.2.bias": enc.net[3].bias,
                 "encoder.net.4.weight": torch.cat([enc.mu.weight, enc.logvar.weight]),
                 "encoder.net.4.bias": torch.cat([enc.mu.bias, enc.logvar.bias])}
        state.update({f"decoder.net.{i}.{name}": getattr(dec.net[i], name) for i in (0, 2, 4) for name in
                      ("weight", "bias")})
        ours.load_state_dict({k: v.detach() for k, v in state.items()})
        metrics = evaluate(ours, "fashion_mnist", "test", batch_size=100, num_importance_samples=1000,
                           max_examples=args.nll_examples, metrics=["neg_elbo", "nll"])
        # Both estimators on one binarisation of the test images (get_nll returns the mean log-likelihood).
        with torch.no_grad():
            torch.manual_seed(0)
            pythae_nll = -float(model.get_nll(test_binary, n_samples=1000, batch_size=1000))
            ours_nll = -float(ours.log_likelihood(test_binary, num_samples=1000, chunk_size=100,
                                                  generator=torch.Generator().manual_seed(0)).double().mean())
        rows[f"pythae_{key}"] = {"model": f"pythae {cls_name}", "config": extra, "train_s": round(seconds, 1),
                                 **metrics, "nll_fixed_binarisation_hf_vae": ours_nll,
                                 "nll_fixed_binarisation_pythae_get_nll": pythae_nll}
        print(key, rows[f"pythae_{key}"], flush=True)
    return rows, {"epochs": args.epochs, "nll_examples": args.nll_examples or 10000, "importance_samples": 1000}


def part_mig(args, workdir):
    rows = {}
    for key in args.models or MIG_MODELS:
        name, extra = MIG_MODELS[key]
        model, record, seconds = train_model(name, {**BURGESS, **extra}, workdir, "shapes", max_steps=args.steps,
                                             batch_size=32, learning_rate=2e-3, lr_scheduler="cosine",
                                             warmup_steps=None,
                                             max_grad_norm=1.0, final_eval_max_examples=args.mig_examples,
                                             fit_latent_density=0)
        metrics = record["metrics"]
        rows[key] = {"model": name, "config": extra, "steps": record["step"], "train_s": round(seconds, 1),
                     **{k: metrics[k] for k in ("mig", "mse", "psnr", "neg_elbo") if k in metrics}}
        print(key, rows[key], flush=True)
    return rows, {"steps": args.steps, "batch_size": 32, "learning_rate": 2e-3, "mig_examples": args.mig_examples,
                  "model": BURGESS}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["nll", "frechet", "mig", "pythae"], required=True)
    parser.add_argument("--models", nargs="+", default=None, help="a subset of the part's models")
    parser.add_argument("--epochs", type=float, default=20.0)
    parser.add_argument("--nll_examples", type=int, default=None, help="test images for the NLL (default: all)")
    parser.add_argument("--classifier", default="fid_classifier", help="folder of the Fréchet feature classifier")
    parser.add_argument("--frechet_examples", type=int, default=10000)
    parser.add_argument("--vq_prior", default=None, help="frechet part: also score this VQ-VAE + prior folder "
                        "(the vq_prior run of benchmarks/bench_vq_prior.py)")
    parser.add_argument("--density_examples", type=int, default=60000, help="training codes the mixture is fitted to")
    parser.add_argument("--steps", type=int, default=6000, help="training steps of the MIG part")
    parser.add_argument("--mig_examples", type=int, default=5000)
    parser.add_argument("--pythae_site", default="/tmp/pythae_site", help="where pythae 0.1.2 was installed with "
                        "`pip install --no-deps --target`")
    parser.add_argument("--seed", type=int, default=0, help="nll part: the training seed (rows of a seed other than 0 "
                        "are keyed MODEL@seedN, so seeds merge into one file)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    output = args.output or os.path.join(RESULTS_DIR, f"families_{args.part}.json")
    with tempfile.TemporaryDirectory() as workdir:
        rows, recipe = {"nll": part_nll, "frechet": part_frechet, "mig": part_mig,
                         "pythae": part_pythae}[args.part](args, workdir)
    result = write_merged_result({"benchmark": f"families_{args.part}", "command": "python " + " ".join(sys.argv),
                                  "machine": machine(), "note": "shared machine (2 CPU cores, several jobs)",
                                  "recipe": recipe}, rows, output)
    keys = sorted({k for row in result["models"].values() for k in row} - {"model", "config"})
    print(table([[name] + [row.get(k, "") for k in keys] for name, row in result["models"].items()], ["run"] + keys))


if __name__ == "__main__":
    main()
