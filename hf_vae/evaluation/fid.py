"""Sample quality that works offline: the Fréchet distance between generated and real images in a feature space.

    FD = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½)                  (Heusel et al. 2017, eq. 6; Dowson & Landau 1982)

between Gaussians fitted to the features of real and generated images. Two feature networks:

* `ClassifierFeatures`: the penultimate layer (128 features) of a small CNN trained on the dataset itself
  (`scripts/train_fid_classifier.py`, weights as safetensors + config.json). On MNIST-like data this is the
  established substitute for FID, whose Inception network was trained on ImageNet photos.
* `InceptionFeatures`: the standard FID — pytorch-fid's InceptionV3 (2048 pool features), with weights the user
  supplies (`hf_vae.evaluation.inception`, safetensors only).

`evaluate(..., fid_features=...)` reports `frechet_distance` for the prior samples of every model that can sample.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn

CLASSIFIER_CONFIG = "config.json"
CLASSIFIER_WEIGHTS = "model.safetensors"


# ------------------------------------------------------------------------------------------------------------
# The distance
# ------------------------------------------------------------------------------------------------------------


@dataclass
class FeatureStatistics:
    """Mean (F,) and covariance (F, F) of features, in float64."""

    mean: torch.Tensor
    covariance: torch.Tensor
    count: int

    @classmethod
    def of(cls, features: torch.Tensor) -> "FeatureStatistics":
        features = features.double()
        if features.dim() != 2 or features.shape[0] < 2:
            raise ValueError(f"Expected features of shape (N >= 2, F), got {tuple(features.shape)}.")
        return cls(features.mean(0), torch.cov(features.T), features.shape[0])


def frechet_distance(real: FeatureStatistics, generated: FeatureStatistics) -> float:
    """FD between two Gaussians. Tr((Σ_r Σ_g)^½) is computed as Σ √λ of the symmetric positive semi-definite
    matrix Σ_r^½ Σ_g Σ_r^½ (same eigenvalues as Σ_r Σ_g), which needs no non-symmetric matrix square root."""
    values, vectors = torch.linalg.eigh(real.covariance)
    sqrt_real = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
    middle = sqrt_real @ generated.covariance @ sqrt_real
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (real.mean - generated.mean).pow(2).sum() + real.covariance.trace() + generated.covariance.trace() \
        - 2 * trace_sqrt
    return float(distance)


# ------------------------------------------------------------------------------------------------------------
# A small classifier trained on the dataset itself
# ------------------------------------------------------------------------------------------------------------


class FeatureClassifier(nn.Module):
    """(B, C, S, S) images in [0, 1] -> logits (B, num_classes); `features` is the 128-wide penultimate layer.

    conv3x3(32)-ReLU-pool2, conv3x3(64)-ReLU-pool2, linear(128)-ReLU, linear(num_classes). About 0.4 M parameters
    for 28x28 images; ~91 % test accuracy on Fashion-MNIST after a few epochs.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10, feature_dim: int = 128):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"Expected an image size divisible by 4, got {image_size}.")
        self.config = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes,
                       "feature_dim": feature_dim}
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * (image_size // 4) ** 2, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def save_pretrained(self, directory: str, safe_serialization: bool = True) -> None:
        """Weights as safetensors and the config as JSON (the only formats: a classifier is shared, so loaded
        from untrusted places)."""
        from safetensors.torch import save_file

        if not safe_serialization:
            raise ValueError("Expected safe_serialization=True: the feature classifier is saved as safetensors only.")
        os.makedirs(directory, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, os.path.join(directory, CLASSIFIER_WEIGHTS))
        with open(os.path.join(directory, CLASSIFIER_CONFIG), "w") as f:
            json.dump(self.config, f, indent=2)

    @classmethod
    def from_pretrained(cls, directory: str) -> "FeatureClassifier":
        from safetensors.torch import load_file

        paths = [os.path.join(directory, name) for name in (CLASSIFIER_CONFIG, CLASSIFIER_WEIGHTS)]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"Expected a feature classifier folder with {CLASSIFIER_CONFIG} and "
                                    f"{CLASSIFIER_WEIGHTS} (written by scripts/train_fid_classifier.py), but "
                                    f"{', '.join(missing)} do(es) not exist.")
        with open(paths[0]) as f:
            model = cls(**json.load(f))
        model.load_state_dict(load_file(paths[1]))
        return model.eval()


class ClassifierFeatures(nn.Module):
    """The feature map of a `FeatureClassifier`: images in `value_range` -> (B, 128)."""

    def __init__(self, classifier: FeatureClassifier):
        super().__init__()
        self.classifier = classifier.eval()
        self.image_shape = (classifier.config["in_channels"], classifier.config["image_size"],
                            classifier.config["image_size"])

    @classmethod
    def from_pretrained(cls, directory: str) -> "ClassifierFeatures":
        return cls(FeatureClassifier.from_pretrained(directory))

    @torch.no_grad()
    def forward(self, images: torch.Tensor, value_range: Sequence[float] = (0.0, 1.0)) -> torch.Tensor:
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"The feature classifier was trained on images of shape {self.image_shape}, got "
                             f"{tuple(images.shape[1:])}.")
        lo, hi = value_range
        images = ((images.float() - lo) / (hi - lo)).clamp(0, 1)
        return self.classifier.features(images.to(next(self.classifier.parameters()).device))


def load_fid_features(path: str) -> nn.Module:
    """A feature network from a folder: a `FeatureClassifier` (config.json + model.safetensors) or pytorch-fid's
    InceptionV3 weights (a folder with inception_v3_fid.safetensors, or that file)."""
    from .inception import INCEPTION_WEIGHTS, InceptionFeatures

    if path.endswith(".safetensors") or os.path.isfile(os.path.join(path, INCEPTION_WEIGHTS)):
        return InceptionFeatures.from_pretrained(path)
    return ClassifierFeatures.from_pretrained(path)


# ------------------------------------------------------------------------------------------------------------
# Statistics of a split and of a model's samples
# ------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def features_of_batches(features: nn.Module, batches, value_range, max_examples: Optional[int] = None) -> torch.Tensor:
    out, count = [], 0
    for batch in batches:
        images = batch["pixel_values"] if isinstance(batch, dict) else batch
        out.append(features(images, value_range).double().cpu())
        count += len(images)
        if max_examples is not None and count >= max_examples:
            break
    result = torch.cat(out)
    return result if max_examples is None else result[:max_examples]


def real_statistics(features: nn.Module, dataset: str, split: str = "test", *, max_examples: Optional[int] = None,
                    batch_size: int = 500, value_range=(0.0, 1.0), image_size: Optional[int] = None,
                    **dataset_kwargs) -> FeatureStatistics:
    """Feature statistics of a split (grey levels, not binarised: what a decoder's mean is compared with)."""
    from ..data import build_dataset, collate_batch

    stream = build_dataset(dataset, split, image_size=image_size or features.image_shape[-1],
                           in_channels=features.image_shape[0], value_range=value_range, binarize=False,
                           shuffle=False, **dataset_kwargs)
    loader = torch.utils.data.DataLoader(stream, batch_size=batch_size, collate_fn=collate_batch)
    return FeatureStatistics.of(features_of_batches(features, loader, value_range, max_examples))


@torch.no_grad()
def sample_statistics(model, features: nn.Module, num_samples: int = 10000, batch_size: int = 500,
                      seed: int = 0, value_range=None) -> FeatureStatistics:
    """Feature statistics of `model.generate` samples (the prior, or the fitted ex-post density)."""
    if value_range is None:
        value_range = model.likelihood.data_range or (-1.0, 1.0)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    batches = (model.generate(min(batch_size, num_samples - start), generator=generator)
               for start in range(0, num_samples, batch_size))
    return FeatureStatistics.of(features_of_batches(features, batches, value_range))


def frechet_distance_of_samples(model, features: nn.Module, real: FeatureStatistics, num_samples: int = 10000,
                                seed: int = 0) -> float:
    """FD between `num_samples` samples of `model` and the real statistics."""
    return frechet_distance(real, sample_statistics(model, features, num_samples, seed=seed))


#: the `kind` in the run manifest of a folder written by `train_feature_classifier`
CLASSIFIER_RUN = "fid_classifier"


def _claim_classifier_dir(output_dir: str, overwrite: bool) -> list:
    """`claim_output_dir`, and with `overwrite` only a folder of an earlier classifier: a folder holding a trained
    model (or anything else) is never replaced by a classifier."""
    from ..training.checkpointing import claim_output_dir, read_run_manifest

    found = claim_output_dir(output_dir, overwrite)
    if found and (read_run_manifest(output_dir) or {}).get("kind") != CLASSIFIER_RUN:
        raise FileExistsError(f"--output_dir {output_dir} holds files ({', '.join(found[:6])}) that "
                              f"train_fid_classifier.py did not write (a trained model?); expected a new or empty "
                              f"folder, or one of an earlier classifier run (--overwrite_output_dir replaces it).")
    return found


def train_feature_classifier(dataset: str = "fashion_mnist", output_dir: str = "fid_classifier", *,
                             epochs: int = 3, batch_size: int = 128, learning_rate: float = 1e-3, seed: int = 0,
                             image_size: Optional[int] = None, max_eval_examples: Optional[int] = None,
                             overwrite_output_dir: bool = False, log=print, **dataset_kwargs) -> dict:
    """Train the `FeatureClassifier` on the labelled training split (grey levels in [0, 1], augmented with
    nothing), save it to `output_dir` and return {"test_accuracy", "epochs", ...} (also written as
    `training.json`).

    `output_dir` is claimed like a training run's (`claim_output_dir`): new or empty, or, with
    `overwrite_output_dir`, the previous classifier run's files are removed first; a folder holding a trained
    model or anything else is never written into."""
    from ..data import build_dataset, collate_batch, describe_dataset
    from ..training.checkpointing import clear_previous_run, describe_cleared, publish_pretrained, record_run_entries

    previous = _claim_classifier_dir(output_dir, overwrite_output_dir)  # before the first epoch, not after the last

    info = describe_dataset(dataset, image_size=image_size, **dataset_kwargs)
    if not info.get("num_classes"):
        raise ValueError(f"The feature classifier learns the labels of the data, but dataset {dataset!r} has none.")
    torch.manual_seed(seed)
    model = FeatureClassifier(info["in_channels"], image_size or info["image_size"], info["num_classes"])
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    settings = dict(image_size=image_size or info["image_size"], in_channels=info["in_channels"],
                    value_range=(0.0, 1.0), binarize=False, require_labels=True, **dataset_kwargs)
    for epoch in range(epochs):
        stream = build_dataset(dataset, "train", seed=seed, epoch=epoch, **settings)
        model.train()
        total, count = 0.0, 0
        for batch in torch.utils.data.DataLoader(stream, batch_size=batch_size, collate_fn=collate_batch):
            loss = nn.functional.cross_entropy(model(batch["pixel_values"]), batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(batch["labels"]), count + len(batch["labels"])
        log(f"epoch {epoch + 1}/{epochs}: train cross-entropy {total / count:.4f}")
    model.eval()
    correct = seen = 0
    test = build_dataset(dataset, "test", shuffle=False, **settings)
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(test, batch_size=500, collate_fn=collate_batch):
            correct += int((model(batch["pixel_values"]).argmax(1) == batch["labels"]).sum())
            seen += len(batch["labels"])
            if max_eval_examples is not None and seen >= max_eval_examples:
                break
    record = {"dataset": dataset, "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
              "seed": seed, "test_accuracy": correct / seen, "test_examples": seen}
    _claim_classifier_dir(output_dir, overwrite_output_dir)  # nothing else appeared there while training
    if previous:
        log(describe_cleared(output_dir, *clear_previous_run(output_dir)))
    record_run_entries(output_dir, ["training.json"], kind=CLASSIFIER_RUN)
    publish_pretrained(model, output_dir)
    with open(os.path.join(output_dir, "training.json"), "w") as f:
        json.dump(record, f, indent=2)
    log(f"test accuracy {record['test_accuracy']:.4f} on {seen} images; saved to {output_dir}")
    return record
