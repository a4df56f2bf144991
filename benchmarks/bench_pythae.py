#!/usr/bin/env python
"""hf_vae and pythae 0.1.2 side by side: the same networks, the same initial weights, the same data and recipe.

For each model (VAE_IAF, VAE-GAN), on Fashion-MNIST with the MLP 784-512-512-32 of the family
benchmarks (Bernoulli decoder, batch 128, Adam 1e-3 constant, --epochs epochs):

1. quality   hf_vae's model is built with seed 0 and saved; pythae's encoder and decoder get copies of its
             weights (the flows and discriminators are each library's own, parameterised differently, so only
             their architecture matches). pythae trains with its own trainer on a dataset that binarises each
             example anew at every read; hf_vae trains with `hf_vae.training.train` from the saved initial
             weights. Both are scored on one binarisation of the first --nll_examples test images: VAE_IAF by
             importance sampling with K = 1000 (hf_vae's `log_likelihood`, pythae's own `get_nll`), VAE-GAN by the
             Fréchet distance of 10,000 prior samples in the features of the offline classifier
             (`scripts/train_fid_classifier.py`).
2. speed     training throughput (images/s of each library's own training loop, CPU time of this process),
             interleaved in --rounds rounds of --steps steps; the ratio is taken within a round.

    pip install --no-deps --target /tmp/pythae_site pythae==0.1.2     # keeps this torch; no torchvision
    python benchmarks/bench_pythae.py --models vae_iaf --epochs 10 --nll_examples 2000 --threads 1
    python benchmarks/bench_pythae.py --models vae_gan --epochs 10 --classifier fid_classifier --threads 1

Writes benchmarks/results/pythae_side_by_side.json (models of earlier runs with the same recipe are kept).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import RESULTS_DIR, machine, table, write_merged_result  # noqa: E402
from bench_families import MLP, reset_accelerate  # noqa: E402
from bench_input_pipeline import CLOCK, Case, interleave  # noqa: E402

BATCH, LR = 128, 1e-3
#: pythae's VAE_IAF defaults (2 MADE blocks of 3 hidden layers of 128), and hf_vae's flow of the same size
IAF_PYTHAE = {"n_made_blocks": 2, "n_hidden_in_made": 3, "hidden_size": 128}
IAF_OURS = {"num_flows": 2, "flow_hidden_dims": [128, 128, 128]}


def mlp_state_to_pythae(ours) -> dict:
    """hf_vae's MLP encoder/decoder weights under the names of `_pythae.pythae_mlp_pieces`' networks (hf_vae's
    encoder ends in one [mean; log-variance] layer, pythae's in two)."""
    state = {k: v.detach().clone() for k, v in ours.state_dict().items()}
    half = state["encoder.net.4.weight"].shape[0] // 2
    mapped = {"encoder.net.1.weight": state["encoder.net.0.weight"], "encoder.net.1.bias": state["encoder.net.0.bias"],
              "encoder.net.3.weight": state["encoder.net.2.weight"], "encoder.net.3.bias": state["encoder.net.2.bias"],
              "encoder.mu.weight": state["encoder.net.4.weight"][:half],
              "encoder.mu.bias": state["encoder.net.4.bias"][:half],
              "encoder.logvar.weight": state["encoder.net.4.weight"][half:],
              "encoder.logvar.bias": state["encoder.net.4.bias"][half:]}
    mapped.update({f"decoder.net.{i}.{name}": state[f"decoder.net.{i}.{name}"] for i in (0, 2, 4)
                   for name in ("weight", "bias")})
    return mapped


class IAFPair:
    """VAE_IAF in both libraries."""

    key, family = "vae_iaf", "vae_iaf"

    def __init__(self, pythae_site):
        from _pythae import pythae_mlp_pieces

        self.Encoder, self.Decoder, self.Binarised = pythae_mlp_pieces(pythae_site)

    def our_config(self):
        return {**MLP, **IAF_OURS}

    def pythae_model(self, initial):
        from pythae.models import VAE_IAF, VAE_IAF_Config

        model = VAE_IAF(VAE_IAF_Config(input_dim=(1, 28, 28), latent_dim=32, reconstruction_loss="bce",
                                       **IAF_PYTHAE), encoder=self.Encoder(), decoder=self.Decoder())
        if initial is not None:
            missing, unexpected = model.load_state_dict(mlp_state_to_pythae(initial), strict=False)
            assert not unexpected and all(k.startswith("iaf_flow.") for k in missing), (missing, unexpected)
        return model

    def pythae_trainer(self, model, images, workdir, epochs, optimizer="Adam", optimizer_params=None):
        from pythae.trainers import BaseTrainer, BaseTrainerConfig

        config = BaseTrainerConfig(output_dir=workdir, per_device_train_batch_size=BATCH,
                                   per_device_eval_batch_size=BATCH, num_epochs=epochs, learning_rate=LR,
                                   optimizer_cls=optimizer, optimizer_params=optimizer_params, steps_saving=None,
                                   no_cuda=True)
        return BaseTrainer(model, self.Binarised(images, torch.zeros(len(images))), training_config=config)

    def score(self, ours, theirs, test_binary, args):
        """Mean log p(x) of one binarisation, K = 1000: hf_vae's estimator on ours, pythae's get_nll on theirs."""
        with torch.no_grad():
            torch.manual_seed(0)
            pythae_nll = -float(theirs.get_nll(test_binary, n_samples=1000, batch_size=1000))
            ours_nll = -float(ours.log_likelihood(test_binary, num_samples=1000, chunk_size=100,
                                                  generator=torch.Generator().manual_seed(0)).double().mean())
        return {"nll_hf_vae": round(ours_nll, 3), "nll_pythae": round(pythae_nll, 3)}


#: hf_vae's VAE-GAN recipe network: a discriminator of [1024, 512] whose first layer's features are compared
GAN_DISCRIMINATOR = [1024, 512]


class VAEGANPair(IAFPair):
    """VAE-GAN in both libraries: the same encoder/decoder weights, the same discriminator architecture (hf_vae's
    is built by its objective at the start of training, so its initial weights are its own), γ = 0.5, the
    equilibrium switches of pythae's defaults, every network at the same learning rate."""

    key, family = "vae_gan", "vae_gan"

    def __init__(self, pythae_site):
        super().__init__(pythae_site)
        self.pythae_site = pythae_site

    def our_config(self):
        return {**MLP, "discriminator_hidden_dims": GAN_DISCRIMINATOR, "reconstruction_layer": 1}

    def pythae_model(self, initial):
        from _pythae import pythae_mlp_discriminator
        from pythae.models import VAEGAN, VAEGANConfig

        config = VAEGANConfig(input_dim=(1, 28, 28), latent_dim=32, reconstruction_loss="bce", reconstruction_layer=1,
                              adversarial_loss_scale=0.5, equilibrium=0.68, margin=0.4)
        model = VAEGAN(config, encoder=self.Encoder(), decoder=self.Decoder(),
                       discriminator=pythae_mlp_discriminator(GAN_DISCRIMINATOR, self.pythae_site))
        if initial is not None:
            missing, unexpected = model.load_state_dict(mlp_state_to_pythae(initial), strict=False)
            assert not unexpected and all(k.startswith("discriminator.") for k in missing), (missing, unexpected)
        return model

    def pythae_trainer(self, model, images, workdir, epochs, optimizer="Adam", optimizer_params=None):
        from pythae.trainers import CoupledOptimizerAdversarialTrainer, CoupledOptimizerAdversarialTrainerConfig

        config = CoupledOptimizerAdversarialTrainerConfig(
            output_dir=workdir, per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH,
            num_epochs=epochs, encoder_learning_rate=LR, decoder_learning_rate=LR, discriminator_learning_rate=LR,
            steps_saving=None, no_cuda=True)
        return CoupledOptimizerAdversarialTrainer(model, self.Binarised(images, torch.zeros(len(images))),
                                                  training_config=config)

    def score(self, ours, theirs, test_binary, args):
        """Fréchet distance of 10,000 prior samples of each to the test images, in the offline classifier's
        features (bench_families.py --part frechet's protocol)."""
        from hf_vae.evaluation.fid import (ClassifierFeatures, FeatureStatistics, features_of_batches,
                                           frechet_distance, real_statistics, sample_statistics)

        features = ClassifierFeatures.from_pretrained(args.classifier)
        real = real_statistics(features, "fashion_mnist", "test", max_examples=args.frechet_examples)
        ours_fd = frechet_distance(real, sample_statistics(ours, features, args.frechet_examples, seed=0))
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            batches = (theirs.decoder(torch.randn(500, 32, generator=generator))["reconstruction"]
                       for _ in range(args.frechet_examples // 500))
            theirs_fd = frechet_distance(real, FeatureStatistics.of(features_of_batches(features, batches, (0.0, 1.0))))
        return {"frechet_hf_vae": round(ours_fd, 2), "frechet_pythae": round(theirs_fd, 2)}


PAIRS = {"vae_iaf": IAFPair, "vae_gan": VAEGANPair}


def initial_model(pair, workdir):
    """hf_vae's model at seed 0, saved: the start of both runs."""
    from hf_vae import families

    torch.manual_seed(0)
    family = families.get(pair.family)
    model = family.model_class(family.config_class(**pair.our_config()))
    path = os.path.join(workdir, f"{pair.key}-initial")
    model.save_pretrained(path)
    return model, path


def train_ours(pair, initial_path, workdir, epochs):
    from transformers import AutoModel

    from hf_vae.training import DataArguments, TrainArguments, train

    args = TrainArguments(pretrained_model_name_or_path=initial_path,
                          output_dir=os.path.join(workdir, f"{pair.key}-hf_vae"), batch_size=BATCH,
                          learning_rate=LR, lr_scheduler="constant", warmup_steps=0, max_grad_norm=0.0, eval_steps=0,
                          checkpointing_steps=0, report_to="none", eval_importance_samples=0,
                          final_eval_max_examples=256, num_sample_images=16, seed=0, num_epochs=epochs,
                          fit_latent_density=0)
    start = time.perf_counter()
    record = train(args, DataArguments(dataset="fashion_mnist"), {})
    seconds = time.perf_counter() - start
    reset_accelerate()
    return AutoModel.from_pretrained(args.output_dir).eval(), record, seconds


def quality(pair, images, test_binary, workdir, args):
    ours_initial, initial_path = initial_model(pair, workdir)
    theirs = pair.pythae_model(ours_initial)
    start = time.perf_counter()
    pair.pythae_trainer(theirs, images, os.path.join(workdir, f"{pair.key}-pythae"), int(args.epochs)).train()
    pythae_seconds = time.perf_counter() - start
    theirs.eval()
    ours, record, ours_seconds = train_ours(pair, initial_path, workdir, args.epochs)
    return {"steps": record["step"], "train_s_hf_vae": round(ours_seconds, 1),
            "train_s_pythae": round(pythae_seconds, 1), **pair.score(ours, theirs, test_binary, args)}


def throughput(pair, images, workdir, args):
    """Interleaved rounds: images/s of hf_vae's trainer and of pythae's trainer, the same model and batch."""
    case = Case(pair.key, pair.family, pair.our_config(), BATCH, "fashion_mnist", workdir)

    def pythae_rate():
        torch.manual_seed(0)
        trainer = pair.pythae_trainer(pair.pythae_model(None), images[: args.steps * BATCH],
                                      os.path.join(workdir, f"{pair.key}-pythae-speed"), 1)
        trainer.prepare_training()
        start = CLOCK["fn"]()
        trainer.train_step(1)
        return args.steps * BATCH / (CLOCK["fn"]() - start)

    runners = {"hf_vae": lambda: case.trainer_rate(args.steps), "pythae": pythae_rate}
    for run in runners.values():  # warm-up: imports, caches, the allocator
        run()
    measured = interleave(runners, args.rounds)
    ratios = [ours / theirs for ours, theirs in zip(measured["hf_vae"], measured["pythae"])]
    return {"img_s_hf_vae": round(statistics.median(measured["hf_vae"]), 1),
            "img_s_pythae": round(statistics.median(measured["pythae"]), 1),
            "throughput_ratio": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(PAIRS), default=sorted(PAIRS))
    parser.add_argument("--part", choices=["quality", "speed", "both"], default="both")
    parser.add_argument("--epochs", type=float, default=10.0)
    parser.add_argument("--nll_examples", type=int, default=2000)
    parser.add_argument("--classifier", default="fid_classifier",
                        help="folder of the Fréchet feature classifier (scripts/train_fid_classifier.py)")
    parser.add_argument("--frechet_examples", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds")
    parser.add_argument("--steps", type=int, default=200, help="training steps per throughput round")
    parser.add_argument("--pythae_site", default="/tmp/pythae_site",
                        help="folder pythae 0.1.2 was installed into with --no-deps --target")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=os.path.join(RESULTS_DIR, "pythae_side_by_side.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    CLOCK["fn"] = time.process_time  # CPU time of this process: the machine is shared
    from hf_vae.data import load_fashion_mnist_arrays

    images = torch.from_numpy(load_fashion_mnist_arrays("train")[0].copy()).float().div_(255).view(-1, 1, 28, 28)
    test = torch.from_numpy(load_fashion_mnist_arrays("test")[0][: args.nll_examples].copy()).float().div_(255)
    test_binary = torch.bernoulli(test.view(-1, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    recipe = {"epochs": args.epochs, "batch_size": BATCH, "learning_rate": LR, "nll_examples": args.nll_examples,
              "frechet_examples": args.frechet_examples, "rounds": args.rounds, "steps_per_round": args.steps}
    rows = {}
    with tempfile.TemporaryDirectory() as workdir:
        for key in args.models:
            pair = PAIRS[key](args.pythae_site)
            row = {"load_average_at_start": os.getloadavg()}
            if args.part in ("quality", "both"):
                row.update(quality(pair, images, test_binary, workdir, args))
            if args.part in ("speed", "both"):
                row.update(throughput(pair, images, workdir, args))
            rows[key] = row
            print(key, row, flush=True)
    result = write_merged_result({"benchmark": "pythae_side_by_side", "command": "python " + " ".join(sys.argv),
                                  "machine": machine(), "clock": "process CPU time (throughput)", "recipe": recipe},
                                 rows, args.output, merge_rows=True)
    keys = sorted({k for row in result["models"].values() for k in row} - {"ratios"})
    print(table([[name] + [row.get(k, "") for k in keys] for name, row in result["models"].items()], ["model"] + keys))


if __name__ == "__main__":
    main()
