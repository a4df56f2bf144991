"""Tests of hf_vae.evaluation.evaluate and scripts/evaluate.py."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from hf_vae import CVAEConfig, CVAEModel, KLAEConfig, KLAEModel, VAEConfig, VAEModel, VQVAEConfig, VQVAEModel
from hf_vae.evaluation import (
    METRIC_NAMES,
    codebook_stats,
    evaluate,
    evaluate_output_dir,
    format_metrics_table,
    metrics_that_apply,
)
from hf_vae.evaluation.evaluate import main as evaluate_main

EVAL = dict(max_examples=48, batch_size=16, num_importance_samples=8)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(kind, **fields):
    torch.manual_seed(0)
    if kind == "vae":
        return VAEModel(VAEConfig(image_size=16, hidden_dims=[32], latent_dim=4))
    if kind == "cvae":
        return CVAEModel(CVAEConfig(image_size=16, hidden_dims=[32], latent_dim=4, num_classes=3))
    if kind == "vq_vae":
        return VQVAEModel(VQVAEConfig(image_size=16, backbone="conv", block_out_channels=[8, 16], norm_num_groups=4,
                                      num_embeddings=16, embedding_dim=4, mid_block_add_attention=False, **fields))
    return KLAEModel(KLAEConfig(in_channels=1, out_channels=1, sample_size=16, block_out_channels=[8, 16],
                                norm_num_groups=4, latent_channels=2, mid_block_add_attention=False))


@pytest.mark.parametrize("kind, expected", [
    ("vae", ["neg_elbo", "nll", "bits_per_dim", "mse", "psnr", "ssim", "mig"]),
    ("cvae", ["neg_elbo", "nll", "bits_per_dim", "mse", "psnr", "ssim", "mig"]),
    ("vq_vae", ["mse", "psnr", "ssim", "codebook_usage", "perplexity"]),
    ("klae", ["mse", "psnr", "ssim"]),
])
def test_each_model_gets_the_metrics_that_apply_to_it(kind, expected):
    model = tiny(kind)
    model.train()
    metrics = evaluate(model, "shapes", "test", **EVAL)
    assert model.training  # the mode it was in is restored
    assert list(metrics) == expected == metrics_that_apply(model)
    assert set(metrics) <= set(METRIC_NAMES)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


def test_likelihood_numbers_are_consistent():
    model = tiny("vae")
    metrics = evaluate(model, "shapes", "test", max_examples=64, batch_size=32, num_importance_samples=64)
    # log p(x) >= IWAE bound >= ELBO in expectation: the importance-sampled NLL is below the -ELBO
    assert metrics["nll"] < metrics["neg_elbo"]
    assert metrics["bits_per_dim"] == pytest.approx(metrics["nll"] / (16 * 16 * math.log(2)))
    assert metrics["psnr"] == pytest.approx(10 * math.log10(1 / metrics["mse"]), rel=0.2)  # mean of per-image
    only = evaluate(model, "shapes", "test", max_examples=64, batch_size=32, num_importance_samples=0)
    assert "nll" not in only and only["neg_elbo"] == pytest.approx(metrics["neg_elbo"])


def test_a_perfect_reconstruction_scores_zero_error(monkeypatch):
    model = tiny("klae")
    monkeypatch.setattr(model, "reconstruct", lambda x, labels=None: x.clone())
    metrics = evaluate(model, "shapes", "test", **EVAL)
    assert metrics == {"mse": 0.0, "psnr": 100.0, "ssim": pytest.approx(1.0)}


def test_image_metrics_are_on_the_unit_scale_whatever_the_model_range(monkeypatch):
    # SSIM's constants are not shift-invariant and MSE scales with the range: every model is scored on images in
    # [0, 1], here against scikit-image on the same images mapped to [0, 1] (a [-1, 1] KLAE and a [0, 1] VAE).
    from skimage.metrics import structural_similarity

    from hf_vae.data import build_dataset, collate_batch

    rows = list(build_dataset("shapes", "test", image_size=16, value_range=(0, 1), binarize=False).take(16))
    unit = collate_batch(rows)["pixel_values"].double()
    unit_recon = (0.6 * unit + 0.25 + 0.05 * torch.sin(7 * unit.sum(1, keepdim=True))).clamp(0, 1)
    mse = ((unit_recon - unit) ** 2).flatten(1).mean(1)
    ssim = [structural_similarity(a.numpy(), b.numpy(), data_range=1.0, channel_axis=0, gaussian_weights=True,
                                  sigma=1.5, use_sample_covariance=False) for a, b in zip(unit_recon, unit)]
    expected = {"mse": float(mse.mean()), "psnr": float((10 * torch.log10(1 / mse)).mean()),
                "ssim": sum(ssim) / len(ssim)}
    for kind, (lo, hi) in (("klae", (-1.0, 1.0)), ("vae", (0.0, 1.0))):
        model = tiny(kind)
        to_model = lambda t: (t * (hi - lo) + lo).float()  # noqa: E731
        monkeypatch.setattr(model, "reconstruct", lambda x, labels=None: to_model(
            (0.6 * (x.double() - lo) / (hi - lo) + 0.25
             + 0.05 * torch.sin(7 * ((x.double() - lo) / (hi - lo)).sum(1, keepdim=True))).clamp(0, 1)))
        metrics = evaluate(model, "shapes", "test", max_examples=16, batch_size=16, binarize=False,
                           metrics=["mse", "psnr", "ssim"])
        assert metrics == pytest.approx(expected, rel=1e-5), kind


def test_continuous_likelihoods_are_scored_on_dequantised_data_in_bits_of_the_8_bit_data(monkeypatch):
    # A model whose density is uniform on [-1, 1]^D assigns every 8-bit image the probability 256^-D: 8 bits/dim.
    model = VAEModel(VAEConfig(image_size=16, hidden_dims=[32], latent_dim=4, likelihood="gaussian"))
    num_dims, seen = 16 * 16, []

    def uniform_density(x, labels=None, num_samples=1, chunk_size=None, generator=None):
        seen.append(x.clone())
        return torch.full((x.shape[0],), -num_dims * math.log(2.0), dtype=torch.float64)

    monkeypatch.setattr(model, "log_likelihood", uniform_density)
    metrics = evaluate(model, "fashion_mnist", "test", max_examples=8, batch_size=8, num_importance_samples=2,
                       metrics=["nll", "bits_per_dim"])
    assert metrics["bits_per_dim"] == pytest.approx(8.0, rel=1e-12)
    assert metrics["nll"] == pytest.approx(num_dims * math.log(256.0), rel=1e-12)
    # ... and the density saw x + u/128 (cells of width 2/256 in [-1, 1]), not the 8-bit levels themselves
    from hf_vae.data import build_dataset, collate_batch

    clean = collate_batch(list(build_dataset("fashion_mnist", "test", image_size=16, value_range=(-1, 1))
                               .take(8)))["pixel_values"]
    levels = torch.round((clean + 1) / 2 * 255)
    u = (seen[0] + 1) / 2 * 256 - levels
    assert float(u.min()) >= 0 and float(u.max()) < 1 and float(u.std()) == pytest.approx(math.sqrt(1 / 12), rel=0.1)


def test_the_change_of_volume_bounds_the_probability_of_the_8_bit_levels():
    # For a Gaussian much wider than a bin: E_u[-log N(y)] + log(256 / 2) >= -log P(bin) (Jensen), and within the
    # Jensen gap (~ (bin / σ)² / 24 near the mean); a wrong constant, log(255 / 2), would be 0.0039 nats off.
    from scipy.stats import norm

    from hf_vae.evaluation.evaluate import dequantization_correction

    mean, sigma = 0.1, 0.2
    for level in (100, 140, 160, 180):
        lower, upper = -1 + 2 * level / 256, -1 + 2 * (level + 1) / 256
        exact = -math.log(norm.cdf(upper, mean, sigma) - norm.cdf(lower, mean, sigma))
        y = torch.linspace(lower, upper, 100001, dtype=torch.float64)
        continuous = float((0.5 * ((y - mean) / sigma) ** 2 + math.log(sigma) + 0.5 * math.log(2 * math.pi)).mean())
        bound = continuous + dequantization_correction(1, (-1.0, 1.0))
        assert exact <= bound <= exact + 5e-4, (level, exact, bound)
    assert dequantization_correction(784, (0.0, 1.0)) == pytest.approx(784 * math.log(256))


def test_discretised_logistic_bits_per_dim_need_no_correction():
    model = VAEModel(VAEConfig(image_size=16, hidden_dims=[32], latent_dim=4, likelihood="discretized_logistic",
                               likelihood_scale=0.05))
    metrics = evaluate(model, "fashion_mnist", "test", max_examples=8, batch_size=8, num_importance_samples=4)
    from hf_vae.data import build_dataset, collate_batch

    x = collate_batch(list(build_dataset("fashion_mnist", "test", image_size=16, value_range=(-1, 1))
                           .take(8)))["pixel_values"]
    generator = torch.Generator().manual_seed(1)  # evaluate's importance-sampling stream for seed 0
    nll = float(-model.log_likelihood(x, num_samples=4, chunk_size=4, generator=generator).double().mean())
    assert metrics["nll"] == pytest.approx(nll, rel=1e-6)
    assert metrics["bits_per_dim"] == pytest.approx(nll / (16 * 16 * math.log(2)), rel=1e-6)


def test_a_bernoulli_decoder_on_grey_levels_reports_cross_entropies_not_likelihoods():
    model = tiny("vae")
    grey = evaluate(model, "shapes", "test", **EVAL, binarize=False, metrics=None)
    assert {"xent_neg_elbo", "xent_nll", "xent_bits_per_dim"} <= set(grey) and "nll" not in grey
    assert list(grey) == metrics_that_apply(model, binarize=False)
    binary = evaluate(model, "shapes", "test", **EVAL)
    assert {"neg_elbo", "nll", "bits_per_dim"} <= set(binary) and not any(k.startswith("xent_") for k in binary)


def test_evaluation_is_deterministic_and_leaves_the_global_rng_alone():
    model = tiny("vae")
    state = torch.get_rng_state()
    first = evaluate(model, "shapes", "test", **EVAL)
    assert torch.equal(state, torch.get_rng_state())
    assert evaluate(model, "shapes", "test", **EVAL) == first
    assert evaluate(model, "shapes", "test", **dict(EVAL, seed=1))["neg_elbo"] != first["neg_elbo"]


def test_codebook_usage_and_perplexity_are_over_the_whole_split():
    from hf_vae.data import build_dataset, collate_batch

    model = tiny("vq_vae")
    metrics = evaluate(model, "shapes", "test", max_examples=40, batch_size=16, metrics=["codebook_usage",
                                                                                          "perplexity"])
    assert list(metrics) == ["codebook_usage", "perplexity"]
    rows = list(build_dataset("shapes", "test", image_size=16, value_range=(0, 1), binarize=True).take(40))
    x = collate_batch(rows)["pixel_values"]
    expected = codebook_stats(model.encode_to_indices(x), 16)
    assert metrics["codebook_usage"] == pytest.approx(expected["usage"])
    assert metrics["perplexity"] == pytest.approx(expected["perplexity"])
    with pytest.raises(ValueError, match="Unknown metrics"):
        evaluate(model, "shapes", "test", metrics=["fid"])


def test_a_residual_quantisers_codebook_statistics_are_per_level():
    """Each level of a residual quantiser has its own codebook: its usage and perplexity are that level's, averaged
    over the levels (pooling the levels' indices would count level 2's code 3 as level 1's)."""
    from hf_vae.data import build_dataset, collate_batch

    model = tiny("vq_vae", quantizer="rvq", num_quantizers=2)
    metrics = evaluate(model, "shapes", "test", max_examples=40, batch_size=16, metrics=["codebook_usage",
                                                                                          "perplexity"])
    rows = list(build_dataset("shapes", "test", image_size=16, value_range=(0, 1), binarize=True).take(40))
    codes = model.encode_to_indices(collate_batch(rows)["pixel_values"])
    assert codes.shape[-1] == 2
    levels = [codebook_stats(codes[..., level], 16) for level in range(2)]
    assert metrics["codebook_usage"] == pytest.approx(sum(s["usage"] for s in levels) / 2)
    assert metrics["perplexity"] == pytest.approx(sum(s["perplexity"] for s in levels) / 2)


def test_a_conditional_model_needs_labels():
    with pytest.raises(ValueError, match="labels"):
        evaluate(tiny("cvae"), "photos", "test", **EVAL)


def test_evaluate_script_on_a_trained_output_folder(tmp_path, capsys):
    from accelerate.state import AcceleratorState, GradientState

    from hf_vae.training import DataArguments, TrainArguments, train

    out = str(tmp_path / "run")
    try:
        train(TrainArguments(output_dir=out, max_steps=3, batch_size=8, eval_steps=0, checkpointing_steps=0,
                             report_to="none", eval_importance_samples=4, final_eval_max_examples=32,
                             num_sample_images=4),
              DataArguments(num_train_examples=64, data_seed=5), {"image_size": 16, "hidden_dims": [32],
                                                                  "latent_dim": 4})
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    capsys.readouterr()
    # the run's final evaluation: 32 examples in one batch of the default eval_batch_size (128), K = 4
    record = evaluate_main([out, "--split", "test", "--num_importance_samples", "4", "--max_examples", "32",
                            "--batch_size", "128"])
    printed = capsys.readouterr().out
    assert "vae on shapes (test, step 3)" in printed and "bits_per_dim" in printed
    with open(os.path.join(out, "eval_test.json")) as f:
        written = json.load(f)
    assert written == record and written["step"] == 3 and written["dataset"] == "shapes"
    with open(os.path.join(out, "metrics.json")) as f:
        trained = json.load(f)
    # Same data (the run's data_seed 5 is read from training_args.json), same seed and batches: same numbers.
    assert written["metrics"] == pytest.approx(trained["metrics"], rel=1e-6)
    with pytest.raises(FileNotFoundError, match="Expected a trained model"):
        evaluate_output_dir(str(tmp_path), "shapes")


def test_evaluate_script_refuses_bad_folders_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main([str(tmp_path), "--dataset", "shapes"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("evaluate.py: error: ")
    model = VAEModel(VAEConfig(in_channels=1, image_size=16, hidden_dims=(8,), latent_dim=2))
    model.save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    capsys.readouterr()  # save_pretrained's progress bar
    with pytest.raises(SystemExit):
        evaluate_main([str(tmp_path / "model"), "--dataset", "shapes"])
    err = capsys.readouterr().err
    assert err.startswith("evaluate.py: error: ") and str(weights) in err and "truncated" in err
    # Weights only as a pickle (a hostile one here): never unpickled, refused in one line naming the missing file.
    import pickle

    class Hostile:
        def __reduce__(self):
            return (os.remove, (str(tmp_path / "model" / "config.json"),))

    weights.unlink()
    (tmp_path / "model" / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": Hostile()}))
    with pytest.raises(SystemExit):
        evaluate_main([str(tmp_path / "model"), "--dataset", "shapes"])
    err = capsys.readouterr().err
    assert err.startswith("evaluate.py: error: ") and "model.safetensors" in err and len(err.splitlines()) == 1
    assert (tmp_path / "model" / "config.json").exists()  # the pickle's payload never ran


def test_metrics_table_lists_every_metric():
    table = format_metrics_table({"nll": 80.123456, "psnr": 21.5}, title="vae on shapes")
    lines = table.splitlines()
    assert lines[0] == "vae on shapes" and lines[1].split() == ["metric", "value"]
    assert lines[3].split() == ["nll", "80.1235"] and lines[4].split() == ["psnr", "21.5"]
