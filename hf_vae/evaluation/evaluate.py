"""Evaluate a trained autoencoder on one split of a dataset.

    evaluate(model, "shapes", split="test")  ->  {"neg_elbo": ..., "nll": ..., "bits_per_dim": ..., "mse": ...,
                                                  "psnr": ..., "ssim": ..., "mig": ...}

The same function runs inside the trainer (periodic and final evaluations) and behind `scripts/evaluate.py`, so
a number in `metrics.json` is reproduced by the script. Only the metrics that apply to a model are reported:

    neg_elbo       −ELBO in nats per example, one posterior sample per example    Gaussian posterior, normalised p(x|z)
    nll            −log p(x) by importance sampling, K samples (Burda et al. 2016) idem
    bits_per_dim   nll / (D · ln 2), D = number of data dimensions               idem
    xent_*         the same three for a Bernoulli decoder on data that was not   idem
                   binarised: cross-entropies, not likelihoods
    mse            mean squared error of the deterministic reconstruction, [0, 1] all
    psnr, ssim     per image on [0, 1], averaged over the split (PSNR ≤ 100 dB)  images
    mig            Mutual Information Gap of the posterior means (Chen 2018)     vector Gaussian latents, data with factors
    codebook_usage fraction of the codes used over the whole split               VQ-VAE
    perplexity     exp(entropy) of the code distribution over the split          VQ-VAE
    prior_nll_per_code    −log p(z_q) / n, nats per code, of the learned prior   VQ-VAE with a prior
    uniform_nll_per_code  log K, the same for the uniform prior (for comparison)   idem

For a VQ-VAE with a learned prior, neg_elbo, nll and bits_per_dim are the bound of the VQ-VAE paper,
−log p(x) ≤ −log p(x|z_q) − log p(z_q): the posterior is a point mass, so the ELBO is exact for it and importance
sampling has nothing to add (the bound is computed whatever K is). The 8-bit data are handled as below.

Reconstructions are clipped to the data range before the image metrics (as the published SD VAE numbers are).
MSE, PSNR and SSIM are computed on images in [0, 1] whatever the model's range (a [-1, 1] model's images and
reconstructions are mapped by (x + 1) / 2 first), as scikit-image and the literature do: MSE scales with the square
of the range and SSIM's stabilising constants are not shift-invariant, so numbers on the model's own range would
not be comparable between a Bernoulli model in [0, 1] and a KLAE in [-1, 1]. PSNR uses a peak of 1.
The likelihood metrics are of the discrete data, so that bits/dim compare with the literature:
  * Bernoulli on binarised data, and the discretised logistic on 8-bit levels: probabilities of the data, exact.
  * Gaussian and Laplace are densities of continuous values. They are evaluated (and trained) on uniformly
    dequantised data, y = lo + (hi − lo)(k + u)/256 for the 8-bit level k and u ~ U[0, 1)^D (Theis et al. 2016,
    sec. 3.1). Each level k owns a cell of volume ((hi − lo)/256)^D in y-space, so by Jensen's inequality
        −log P(k) = −log ∫_cell p(y) dy ≤ E_u[−log p(y)] + D · log(256 / (hi − lo)),
    and `neg_elbo` and `nll` are reported with that change of volume added (D · log 128 on [-1, 1], D · log 256 on
    [0, 1]): upper bounds on −log P of the 8-bit data, and bits/dim = nll / (D ln 2) of the discrete data.
  * A Bernoulli decoder on data that was not binarised gives a cross-entropy with grey levels, not a likelihood:
    those numbers are reported under `xent_neg_elbo`, `xent_nll` and `xent_bits_per_dim`.

Randomness (posterior samples, importance samples) comes from a `torch.Generator` seeded with `seed`; the global
RNG is left untouched, which is what lets a resumed training run reproduce an uninterrupted one bit for bit.

With an `accelerate.Accelerator` of several processes, each process evaluates its shard of the split and the
sums are reduced, so every process returns the same numbers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any, Dict, Optional, Sequence

import torch

logger = logging.getLogger("hf_vae.evaluation")

from .. import families
from ..data_contract import data_contract
from ..data.noise import NUM_LEVELS, dequantize
from .metrics import codebook_stats, mutual_information_gap, psnr, ssim

#: every metric name this module can report, in table order (the contract of metrics.json)
METRIC_NAMES = ("neg_elbo", "nll", "bits_per_dim", "xent_neg_elbo", "xent_nll", "xent_bits_per_dim", "mse", "psnr",
                "ssim", "mig", "codebook_usage", "perplexity", "frechet_distance",
                "prior_nll_per_code", "uniform_nll_per_code")
#: the likelihood metrics, and their names when they are cross-entropies (a Bernoulli decoder on grey levels)
DENSITY_METRICS = ("neg_elbo", "nll", "bits_per_dim")
CROSS_ENTROPY_NAMES = {name: f"xent_{name}" for name in DENSITY_METRICS}
#: PSNR of an exact reconstruction is infinite; cap it so that averages stay finite
PSNR_CAP_DB = 100.0


# ------------------------------------------------------------------------------------------------------------
# What data a model expects
# ------------------------------------------------------------------------------------------------------------


def data_settings(config, binarize: Optional[bool] = None) -> Dict[str, Any]:
    """How to build a stream for a model with this config: image size, channels, and its data contract (value
    range, binarisation, dequantisation; `hf_vae.data_contract`, derived from the likelihood)."""
    contract = data_contract(config)
    image_size = config.image_size
    if image_size is None:
        raise ValueError("Expected an image model (an int `image_size`), got image_size=None (flat data): the "
                         "hf_vae.data streams yield (C, H, W) images.")
    return {
        "image_size": int(image_size),
        "in_channels": int(config.in_channels),
        "value_range": contract.value_range,
        "binarize": contract.binary if binarize is None else bool(binarize),
        "dequantize": contract.dequantize,
    }


def metrics_that_apply(model, has_factors: bool = True, binarize: Optional[bool] = None) -> list:
    """The names of the metrics `evaluate` reports for `model` (MIG only if the data has factors)."""
    names = []
    if _has_density(model):
        names += list(_density_names(model, data_settings(model.config, binarize)["binarize"]).values())
    names += ["mse", "psnr"]
    if len(model.config.data_shape) == 3:
        names.append("ssim")
    if has_factors and _has_vector_gaussian_latent(model):
        names.append("mig")
    if _is_vq(model):
        names += ["codebook_usage", "perplexity"]
    if _has_prior(model):
        names += ["prior_nll_per_code", "uniform_nll_per_code"]
    return names


def _is_vq(model) -> bool:
    return families.of(model).capabilities.quantized


def _has_prior(model) -> bool:
    """A quantized model with a learned prior over its codes."""
    return _is_vq(model) and model.prior is not None


def _has_density(model) -> bool:
    # An importance-sampled log p(x) needs a normalised likelihood and a posterior with a density; the VQ-VAE's
    # point-mass posterior has the bound of its learned prior instead.
    return model.likelihood.normalised and (not _is_vq(model) or _has_prior(model)) and not model.deterministic_encoder


def _density_names(model, binarized: bool) -> Dict[str, str]:
    cross_entropy = model.data_contract.binary and not binarized
    return CROSS_ENTROPY_NAMES if cross_entropy else {name: name for name in DENSITY_METRICS}


def dequantization_correction(num_dims: int, value_range) -> float:
    """D · log(256 / (hi − lo)): added to a density's −log p of dequantised data, it bounds −log P of the levels."""
    lo, hi = value_range
    return num_dims * math.log(NUM_LEVELS / (hi - lo))


def _has_vector_gaussian_latent(model) -> bool:
    return bool(getattr(model.config, "vector_latent", False)) and not _is_vq(model) and len(model.latent_shape) == 1


# ------------------------------------------------------------------------------------------------------------
# The evaluation
# ------------------------------------------------------------------------------------------------------------


def _code_counts(indices: torch.Tensor, levels: int, num_embeddings: int) -> torch.Tensor:
    """(levels, K) counts of each code at each level: the last dimension of `indices` holds a position's levels when
    there are several."""
    per_level = indices.reshape(-1, levels) if levels > 1 else indices.reshape(-1, 1)
    return torch.stack([torch.bincount(per_level[:, level], minlength=num_embeddings) for level in range(levels)])


@torch.no_grad()
def evaluate(
    model,
    dataset,
    split: str = "test",
    *,
    batch_size: int = 128,
    num_importance_samples: int = 1000,
    importance_chunk_size: Optional[int] = None,
    max_examples: Optional[int] = None,
    seed: int = 0,
    data_seed: int = 0,
    binarize: Optional[bool] = None,
    dataset_kwargs: Optional[dict] = None,
    accelerator=None,
    num_workers: int = 0,
    metrics: Optional[Sequence[str]] = None,
    mig_num_bins: int = 20,
    progress: bool = False,
    num_examples: Optional[int] = None,
    fid_features=None,
    fid_samples: int = 10000,
) -> Dict[str, float]:
    """Evaluate `model` on `split` of `dataset` and return `{metric name: float}`.

    Args:
        model: an hf_vae model (not wrapped in DDP); it is put in eval mode and restored afterwards.
        dataset: a dataset name or path for `hf_vae.data.build_dataset` ("shapes", "fashion_mnist", "photos", a
            `datasets` id or local folder), or an already built iterable of rows (then `split`, `data_seed`,
            `binarize` and sharding are the caller's business).
        split: which split to evaluate (default "test").
        batch_size: examples per forward pass.
        num_importance_samples: K of the importance-sampled NLL (0 skips nll and bits_per_dim).
        importance_chunk_size: importance samples decoded at once (default: about 4096 decodes per chunk).
        max_examples: evaluate only the first examples of the split (per process: max_examples / processes).
        seed: seeds the posterior and importance samples (and the binarisation noise of the stream).
        data_seed: content of procedural sources (the shapes held-out split); must match the training run's.
        binarize: dynamic binarisation of the stream (default: on for Bernoulli decoders).
        dataset_kwargs: extra arguments for `build_dataset` (image_column, label_column, data_dir, ...).
        accelerator: an `accelerate.Accelerator`; with several processes each one evaluates its shard and the
            results are reduced.
        metrics: restrict to these names (default: all that apply).
        mig_num_bins: histogram bins per latent for MIG.
        progress: show a tqdm bar (main process only).
        num_examples: size of the split, when the caller knows it: the progress bar's total (with `max_examples`).
        fid_features: a feature network (`hf_vae.evaluation.fid`) or the folder of one (the dataset's own
            classifier, or pytorch-fid's Inception weights): reports `frechet_distance` between `fid_samples`
            samples of the model (its prior, or its ex-post latent density) and the split (`max_examples` of it).

    Raises:
        ValueError: the stream has no labels for a conditional model, an unknown metric was asked for, or the
            split is empty.
    """
    from ..data import build_dataset, collate_batch

    if batch_size <= 0:
        raise ValueError(f"Expected a positive `batch_size`, got {batch_size}.")
    if num_importance_samples < 0:
        raise ValueError(f"Expected `num_importance_samples` >= 0, got {num_importance_samples}.")
    unknown = sorted(set(metrics or ()) - set(METRIC_NAMES))
    if unknown:
        raise ValueError(f"Unknown metrics {unknown}: expected names from {list(METRIC_NAMES)}.")
    num_processes = accelerator.num_processes if accelerator is not None else 1
    process_index = accelerator.process_index if accelerator is not None else 0
    settings = data_settings(model.config, binarize)
    if isinstance(dataset, (str, os.PathLike)):
        name = os.fspath(dataset)
        stream = build_dataset(name, split, image_size=settings["image_size"], in_channels=settings["in_channels"],
                               value_range=settings["value_range"], binarize=settings["binarize"], seed=seed,
                               data_seed=data_seed, shuffle=False, process_index=process_index,
                               num_processes=num_processes, require_labels=model.is_conditional,
                               **(dataset_kwargs or {}))
    else:
        name, stream = getattr(dataset, "name", None) or type(dataset).__name__, dataset
    # With several processes each one evaluates (about) its share of max_examples.
    remaining = math.inf if max_examples is None else max(1, math.ceil(max_examples / num_processes))

    loader = torch.utils.data.DataLoader(stream, batch_size=batch_size, collate_fn=collate_batch,
                                         num_workers=num_workers,
                                         # an explicit generator: creating the loader must not draw from the
                                         # global RNG (see the module docstring)
                                         generator=torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device
    # Separate streams for the ELBO's posterior samples and the importance samples, so that each estimate does not
    # depend on which other metrics were asked for.
    elbo_generator = torch.Generator(device=device).manual_seed(seed + 7919 * process_index)
    iwae_generator = torch.Generator(device=device).manual_seed(seed + 7919 * process_index + 1)
    lo, hi = settings["value_range"]
    wanted = set(metrics) if metrics else set(METRIC_NAMES)
    density_names = _density_names(model, settings["binarize"])  # cross-entropies for Bernoulli on grey levels
    want_density = _has_density(model) and bool(wanted & set(density_names.values()))
    want_bound = want_density and _has_prior(model)
    want_iwae = want_density and not want_bound and num_importance_samples > 0 and bool(
        wanted & {density_names["nll"], density_names["bits_per_dim"]})
    # Continuous densities see dequantised data and get the change of volume (see the module docstring).
    continuous = want_density and model.likelihood.continuous
    dequantize_generator = torch.Generator(device=device).manual_seed(seed + 7919 * process_index + 2)
    want_mig = "mig" in wanted and _has_vector_gaussian_latent(model)
    want_codes = _is_vq(model) and bool(wanted & {"codebook_usage", "perplexity"})
    is_image = len(model.config.data_shape) == 3
    num_dims = math.prod(model.config.data_shape)

    sums = {"n": 0.0, "neg_elbo": 0.0, "nll": 0.0, "code_nll": 0.0, "mse": 0.0, "psnr": 0.0, "ssim": 0.0,
            "skipped_images": 0.0}
    latents, factors, code_counts = [], [], None
    was_training = model.training
    model.eval()
    bar = None
    # A bar only on a terminal: in a log file its carriage returns and escape codes are garbage.
    if progress and (accelerator is None or accelerator.is_local_main_process) and sys.stderr.isatty():
        from tqdm.auto import tqdm

        total = min(remaining, math.ceil(num_examples / num_processes) if num_examples else math.inf)
        bar = tqdm(desc=f"evaluate {split}", unit="ex", leave=False, dynamic_ncols=True,
                   total=None if math.isinf(total) else int(total))
    try:
        for batch in loader:
            if remaining <= 0:
                break
            for path in batch.pop("bad_images", ()):  # unreadable files, with skip_bad_images
                logger.warning("Skipped unreadable image %s.", path)
                sums["skipped_images"] += 1
            if "pixel_values" not in batch:
                continue
            if len(batch["pixel_values"]) > remaining:
                batch = {k: v[: int(remaining)] for k, v in batch.items()}
            remaining -= len(batch["pixel_values"])
            x = batch["pixel_values"].to(device=device, dtype=model.dtype)
            labels = None
            if model.is_conditional:
                if "labels" not in batch:
                    raise ValueError(f"{type(model).__name__} needs labels, but the {split!r} split of {name!r} "
                                     f"has none (its rows have {sorted(batch)}).")
                labels = batch["labels"].to(device)
            b = x.shape[0]
            sums["n"] += b
            if want_density:
                x_density = dequantize(x, (lo, hi), dequantize_generator) if continuous else x
            if want_bound:
                reconstruction_nll, code_nll = model.likelihood_bound(x_density, labels)
                sums["neg_elbo"] += float((reconstruction_nll + code_nll).double().sum())
                sums["code_nll"] += float(code_nll.double().sum())
            elif want_density:
                out = model(x_density, labels=labels, generator=elbo_generator)
                kl = out.kl if out.kl is not None else out.regularisation_loss
                sums["neg_elbo"] += float(out.reconstruction_loss + kl) * b
            if want_iwae:
                k = num_importance_samples
                chunk = importance_chunk_size or max(1, min(k, 4096 // b))
                log_px = model.log_likelihood(x_density, labels, num_samples=k, chunk_size=chunk,
                                              generator=iwae_generator)
                sums["nll"] += float(-log_px.double().sum())
            # The image metrics see images in [0, 1] whatever the model's range (see the module docstring).
            recon = (model.reconstruct(x, labels).clamp(lo, hi).float() - lo) / (hi - lo)
            xf = (x.float() - lo) / (hi - lo)
            sums["mse"] += float(((recon - xf) ** 2).flatten(1).mean(1).double().sum())
            if is_image:
                sums["psnr"] += float(torch.nan_to_num(psnr(recon, xf, 1.0), posinf=PSNR_CAP_DB)
                                      .clamp(max=PSNR_CAP_DB).double().sum())
                side = min(x.shape[-2:])
                if side >= 3:
                    win = min(11, side if side % 2 else side - 1)
                    sums["ssim"] += float(ssim(recon, xf, 1.0, win_size=win).double().sum())
            if want_mig and "factors" in batch:
                posterior = model.encode(x, labels=labels) if model.is_conditional else model.encode(x)
                latents.append(posterior.latent_dist.mean.float().cpu())
                factors.append(batch["factors"].cpu())
            if want_codes:
                counts = _code_counts(model.encode_to_indices(x).cpu(), model.code_levels, model.config.num_embeddings)
                code_counts = counts if code_counts is None else code_counts + counts
            if bar is not None:
                bar.update(b)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)

    # -- reduce over processes ---------------------------------------------------------------------------
    keys = sorted(sums)
    totals = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    if code_counts is None and want_codes:
        code_counts = torch.zeros(model.code_levels, model.config.num_embeddings, dtype=torch.long)
    if num_processes > 1:
        totals = _all_reduce_sum(totals, accelerator)
        if want_codes:
            code_counts = _all_reduce_sum(code_counts, accelerator)
        if want_mig:
            latents = _all_gather_lists(latents, accelerator)
            factors = _all_gather_lists(factors, accelerator)
    sums = dict(zip(keys, totals.tolist()))
    n = sums["n"]
    if n == 0:
        raise ValueError(f"The {split!r} split of {name!r} yielded no examples.")

    result: Dict[str, float] = {}
    if want_density:
        correction = dequantization_correction(num_dims, (lo, hi)) if continuous else 0.0
        result[density_names["neg_elbo"]] = sums["neg_elbo"] / n + correction
        if want_iwae or want_bound:
            nll = (sums["nll"] if want_iwae else sums["neg_elbo"]) / n + correction
            result[density_names["nll"]] = nll
            result[density_names["bits_per_dim"]] = nll / (num_dims * math.log(2))
    result["mse"] = sums["mse"] / n
    if is_image:
        result["psnr"] = sums["psnr"] / n
        if min(model.config.data_shape[1:]) >= 3:
            result["ssim"] = sums["ssim"] / n
    if want_mig and latents:
        z, v = torch.cat(latents), torch.cat(factors)
        if z.shape[1] >= 2:
            result["mig"] = float(mutual_information_gap(z.numpy(), v.numpy(), num_bins=mig_num_bins)["mig"])
    if want_codes:
        # a residual quantiser's levels have a codebook each: the statistics of each, averaged over the levels
        levels = [codebook_stats(torch.repeat_interleave(torch.arange(len(counts)), counts),
                                 model.config.num_embeddings) for counts in code_counts]
        result["codebook_usage"] = sum(float(stats["usage"]) for stats in levels) / len(levels)
        result["perplexity"] = sum(float(stats["perplexity"]) for stats in levels) / len(levels)
    if want_bound:
        result["prior_nll_per_code"] = sums["code_nll"] / (n * model.prior.config.num_codes)
        result["uniform_nll_per_code"] = math.log(model.config.num_embeddings)
    if fid_features is not None and not model.is_conditional and (not metrics or "frechet_distance" in wanted):
        result["frechet_distance"] = _frechet_distance(model, fid_features, name, split, settings, max_examples,
                                                       fid_samples, seed, dataset_kwargs)
    ordered = {k: float(result[k]) for k in METRIC_NAMES if k in result and (not metrics or k in wanted)}
    if sums["skipped_images"]:
        ordered["skipped_images"] = sums["skipped_images"]
    return ordered


def _frechet_distance(model, features, dataset, split, settings, max_examples, num_samples, seed, dataset_kwargs):
    from .fid import frechet_distance_of_samples, load_fid_features, real_statistics

    if isinstance(features, (str, os.PathLike)):
        features = load_fid_features(str(features))
    features.to(model.device)
    real = real_statistics(features, dataset, split, max_examples=max_examples, value_range=settings["value_range"],
                           image_size=settings["image_size"], **(dataset_kwargs or {}))
    return frechet_distance_of_samples(model, features, real, num_samples=num_samples, seed=seed)


def _all_reduce_sum(tensor: torch.Tensor, accelerator) -> torch.Tensor:
    # accelerator.reduce works on the process group's device (e.g. CUDA for NCCL); sums travel there and back.
    dtype = tensor.dtype
    reduced = accelerator.reduce(tensor.to(accelerator.device, torch.float64 if dtype.is_floating_point else dtype),
                                 reduction="sum")
    return reduced.cpu().to(dtype)


def _all_gather_lists(tensors: list, accelerator) -> list:
    # Shards may differ in size, so gather Python objects rather than padded tensors.
    import torch.distributed as dist

    gathered = [None] * accelerator.num_processes
    dist.all_gather_object(gathered, [t.numpy() for t in tensors])
    return [torch.from_numpy(a) for part in gathered for a in part]


# ------------------------------------------------------------------------------------------------------------
# Records, tables and the command line
# ------------------------------------------------------------------------------------------------------------


def metrics_record(model_name: str, dataset: str, split: str, step: int, metrics: Dict[str, float]) -> dict:
    """The metrics.json structure: {"model", "dataset", "split", "step", "metrics": {name: float}}."""
    return {"model": model_name, "dataset": str(dataset), "split": split, "step": int(step),
            "metrics": {k: float(v) for k, v in metrics.items()}}


def format_metrics_table(metrics: Dict[str, float], title: Optional[str] = None) -> str:
    """A two-column text table, one metric per row."""
    rows = [(k, f"{v:.6g}") for k, v in metrics.items()]
    width = max([len("metric")] + [len(k) for k, _ in rows])
    value_width = max([len("value")] + [len(v) for _, v in rows])
    lines = [title] if title else []
    lines += [f"{'metric':<{width}}  {'value':>{value_width}}", f"{'-' * width}  {'-' * value_width}"]
    lines += [f"{k:<{width}}  {v:>{value_width}}" for k, v in rows]
    return "\n".join(lines)


def format_comparison_table(before: Dict[str, float], after: Dict[str, float], title: Optional[str] = None,
                            labels: Sequence[str] = ("pretrained", "fine-tuned")) -> str:
    """Two models side by side on the same images: one metric per row, with the change."""
    names = [k for k in after if k in before]
    rows = [(k, f"{before[k]:.6g}", f"{after[k]:.6g}", f"{after[k] - before[k]:+.4g}") for k in names]
    header = ("metric", *labels, "change")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(4)]
    lines = [title] if title else []
    lines.append(f"{header[0]:<{widths[0]}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(header[1:], widths[1:])))
    lines.append("  ".join("-" * w for w in widths))
    lines += [f"{r[0]:<{widths[0]}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(r[1:], widths[1:])) for r in rows]
    return "\n".join(lines)


def write_json_atomic(obj: Any, path: str) -> str:
    """Write JSON under a temporary name and rename it, so a reader never sees a partial file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _apply_thread_policy(model, num_threads: Optional[int], batch_size: int,
                         num_importance_samples: Optional[int]) -> None:
    """Set the intra-op threads for evaluating `model` on the CPU and print the choice. The importance-sampled NLL
    decodes K latents per example, so the work per example is about K forwards."""
    from .. import thread_policy

    if not thread_policy.on_cpu(model):
        if num_threads is not None:
            torch.set_num_threads(thread_policy.check_num_threads(num_threads))
        return
    forwards = max(1, num_importance_samples or 1)
    flops = forwards * thread_policy.forward_flops_per_example(model)
    choice = thread_policy.apply_thread_policy(flops, batch_size, num_threads)
    print(f"threads {choice.describe()}", file=sys.stderr)


def evaluate_output_dir(
    output_dir: str,
    dataset: Optional[str] = None,
    split: str = "test",
    *,
    output_file: Optional[str] = None,
    device: Optional[str] = None,
    num_threads: Optional[int] = None,
    **kwargs,
) -> dict:
    """Load the model published in `output_dir` (as `train` leaves it), evaluate it and write a JSON record.

    The dataset and its settings (data_seed, binarisation, columns) default to those of the training run, read
    from `output_dir/training_args.json` when present. The record has the metrics.json structure and goes to
    `output_file` (default `output_dir/eval_<split>.json`). Returns the record. On the CPU the intra-op threads
    are `num_threads`, else the user's setting, else hf_vae.thread_policy's choice for this evaluation's work.
    """
    from transformers import AutoModel

    import hf_vae  # noqa: F401  (registers the model types with AutoModel)

    args_path = os.path.join(output_dir, "training_args.json")
    run_args = {}
    if os.path.isfile(args_path):
        with open(args_path) as f:
            run_args = json.load(f)
    dataset = dataset or run_args.get("dataset")
    if dataset is None:
        raise ValueError(f"Expected --dataset: {output_dir} has no training_args.json naming the training data.")
    if not os.path.isfile(os.path.join(output_dir, "config.json")):
        raise FileNotFoundError(f"Expected a trained model in {output_dir} (config.json and model.safetensors), "
                                f"found {sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else 'no folder'}.")
    model = AutoModel.from_pretrained(output_dir)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _apply_thread_policy(model, num_threads, kwargs.get("batch_size", 128), kwargs.get("num_importance_samples"))
    kwargs.setdefault("data_seed", run_args.get("data_seed", 0))
    kwargs.setdefault("binarize", run_args.get("binarize"))
    dataset_kwargs = dict(kwargs.pop("dataset_kwargs", None) or {})
    if dataset == run_args.get("dataset"):
        for key in ("image_column", "label_column", "data_dir"):
            if run_args.get(key) is not None:
                dataset_kwargs.setdefault(key, run_args[key])
    metrics = evaluate(model, dataset, split, dataset_kwargs=dataset_kwargs, **kwargs)
    step = 0
    if os.path.isfile(os.path.join(output_dir, "metrics.json")):
        with open(os.path.join(output_dir, "metrics.json")) as f:
            step = int(json.load(f).get("step", 0))
    record = metrics_record(model.config.model_type, dataset, split, step, metrics)
    write_json_atomic(record, output_file or os.path.join(output_dir, f"eval_{split}.json"))
    return record


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """`python scripts/evaluate.py DIR --dataset D --split test`: print a table and write JSON."""
    from ..utils.cli import ScriptParser, debug_requested, quiet_progress_bars

    parser = ScriptParser(  # dashes or underscores, "did you mean", usage errors in one line
        prog="evaluate.py", description="Evaluate a trained hf_vae model folder (config.json + model.safetensors).")
    parser.add_argument("model_dir", help="folder written by scripts/train.py (or any save_pretrained folder)")
    parser.add_argument("--dataset", default=None, help="dataset name or path (default: the training run's)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num_importance_samples", "-K", type=int, default=1000,
                        help="importance samples for the NLL (0 skips nll and bits_per_dim)")
    parser.add_argument("--importance_chunk_size", type=int, default=None)
    parser.add_argument("--max_examples", type=int, default=None, help="evaluate only the first N examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_seed", type=int, default=None, help="default: the training run's")
    parser.add_argument("--output", default=None, help="JSON file (default MODEL_DIR/eval_<split>.json)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--fid_features", default=None,
                        help="folder of the Fréchet-distance feature network: the dataset's classifier "
                             "(scripts/train_fid_classifier.py) or pytorch-fid's Inception weights as safetensors")
    parser.add_argument("--fid_samples", type=int, default=10000, help="model samples of the Fréchet distance")
    parser.add_argument("--num_threads", type=int, default=None, metavar="N",
                        help="intra-op CPU threads (default: chosen from the evaluation's FLOPs, the cores and the "
                             "load on them; OMP_NUM_THREADS also sets it)")
    args = parser.parse_args(argv)
    quiet_progress_bars()
    parser.check_bounds(args, {"max_examples": (1, None), "batch_size": (1, 65536), "fid_samples": (1, 10_000_000),
                                "num_importance_samples": (0, 100_000), "importance_chunk_size": (1, 100_000),
                                "num_threads": (1, 4096)})
    kwargs = dict(batch_size=args.batch_size, num_importance_samples=args.num_importance_samples,
                  importance_chunk_size=args.importance_chunk_size, max_examples=args.max_examples, seed=args.seed,
                  progress=True, fid_features=args.fid_features, fid_samples=args.fid_samples)
    if args.data_seed is not None:
        kwargs["data_seed"] = args.data_seed
    try:
        record = evaluate_output_dir(args.model_dir, args.dataset, args.split, output_file=args.output,
                                     device=args.device, num_threads=args.num_threads, **kwargs)
    except (ValueError, OSError) as error:  # bad input (a pickle-only folder too): one line naming it, as train.py
        if debug_requested(argv):
            raise
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        sys.exit(1)
    print(format_metrics_table(record["metrics"], title=f"{record['model']} on {record['dataset']} "
                                                        f"({record['split']}, step {record['step']})"))
    return record
