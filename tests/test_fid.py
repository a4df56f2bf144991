"""The offline sample-quality score: the Fréchet distance, its feature networks, and `evaluate`'s report."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hf_vae.evaluation.fid import (
    ClassifierFeatures,
    FeatureClassifier,
    FeatureStatistics,
    frechet_distance,
    load_fid_features,
)
from hf_vae.evaluation.inception import INCEPTION_WEIGHTS, FIDInceptionV3, InceptionFeatures


def test_frechet_distance_matches_scipy_sqrtm():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 0.3
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real  # pytorch-fid's formula
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    ours = frechet_distance(FeatureStatistics.of(torch.from_numpy(a)), FeatureStatistics.of(torch.from_numpy(b)))
    assert ours == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    real = FeatureStatistics(torch.tensor([0.0, 1.0], dtype=torch.float64), torch.diag(torch.tensor([4.0, 1.0])).double(), 2)
    fake = FeatureStatistics(torch.tensor([1.0, 1.0], dtype=torch.float64), torch.diag(torch.tensor([1.0, 9.0])).double(), 2)
    # ‖μ_r − μ_g‖² + Σ_i (σ_r,i − σ_g,i)² for commuting (diagonal) covariances
    assert frechet_distance(real, fake) == pytest.approx(1.0 + (2 - 1) ** 2 + (1 - 3) ** 2)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-9)


def test_feature_classifier_round_trips_through_safetensors(tmp_path):
    torch.manual_seed(0)
    classifier = FeatureClassifier(1, 16, 3)
    classifier.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    features = load_fid_features(str(tmp_path))
    assert isinstance(features, ClassifierFeatures)
    x = torch.rand(5, 1, 16, 16)
    torch.testing.assert_close(features(x), classifier.eval().features(x))
    torch.testing.assert_close(features(x * 2 - 1, value_range=(-1, 1)), classifier.features(x))
    with pytest.raises(ValueError, match=r"trained on images of shape \(1, 16, 16\)"):
        features(torch.rand(2, 1, 28, 28))
    with pytest.raises(FileNotFoundError, match="train_fid_classifier"):
        ClassifierFeatures.from_pretrained(str(tmp_path / "missing"))


def test_train_feature_classifier_publishes_its_folder(tmp_path):
    """The training function writes through the trainer's publishing step (atomic, recorded in the manifest)."""
    from hf_vae.evaluation.fid import FeatureClassifier, train_feature_classifier

    record = train_feature_classifier("shapes", str(tmp_path / "clf"), epochs=0, image_size=16, max_eval_examples=50,
                                      log=lambda *_: None)
    assert 0.0 <= record["test_accuracy"] <= 1.0
    assert FeatureClassifier.from_pretrained(str(tmp_path / "clf")).config["image_size"] == 16


def test_inception_loads_pytorch_fid_key_names_from_safetensors(tmp_path):
    torch.manual_seed(0)
    state = FIDInceptionV3().state_dict()  # random convolutions (PyTorch's initialisation) ...
    for key in [k for k in state if ".bn." in k and state[k].is_floating_point()]:  # ... and random batch norms
        noise = 0.1 * torch.randn_like(state[key])
        state[key] = 1 + noise.abs() if key.endswith(("running_var", "weight")) else noise
    # torchvision / pytorch-fid names and shapes of pt_inception-2015-12-05
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_6b.branch7x7dbl_5.conv.weight"].shape == (192, 128, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    assert state["fc.weight"].shape == (1008, 2048)
    save_file(state, tmp_path / INCEPTION_WEIGHTS)
    features = load_fid_features(str(tmp_path))
    assert isinstance(features, InceptionFeatures)
    out = features(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 2048) and torch.isfinite(out).all() and (out >= 0).all()  # pooled ReLU activations
    torch.testing.assert_close(features.network.Mixed_5b.branch1x1.conv.weight, state["Mixed_5b.branch1x1.conv.weight"])
    del state["Mixed_7c.branch_pool.bn.weight"]
    save_file(state, tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match="1 missing tensors"):
        InceptionFeatures.from_pretrained(str(tmp_path / "broken.safetensors"))
    with pytest.raises(FileNotFoundError, match="No Inception weights ship"):
        InceptionFeatures.from_pretrained(str(tmp_path / "nothing"))


def test_evaluate_reports_the_frechet_distance_of_prior_samples(tmp_path):
    from hf_vae import VAEConfig, VAEModel, WAEConfig, WAEModel
    from hf_vae.evaluation import evaluate

    torch.manual_seed(0)
    FeatureClassifier(1, 16, 3).save_pretrained(tmp_path / "clf")
    tiny = dict(image_size=16, hidden_dims=[16], latent_dim=3)
    results = {}
    for model in (VAEModel(VAEConfig(**tiny)), WAEModel(WAEConfig(**tiny))):
        metrics = evaluate(model, "shapes", "test", max_examples=64, num_importance_samples=0,
                           fid_features=str(tmp_path / "clf"), fid_samples=64)
        results[type(model).__name__] = metrics["frechet_distance"]
    assert all(np.isfinite(v) and v > 0 for v in results.values()), results
    no_fid = evaluate(VAEModel(VAEConfig(**tiny)), "shapes", "test", max_examples=16, num_importance_samples=0)
    assert "frechet_distance" not in no_fid
