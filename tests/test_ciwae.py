"""CIWAE (Rainforth et al. 2018, eq. 6): β·ELBO + (1 − β)·L_K from the same K samples."""

import pytest
import torch

from hf_vae import CIWAEConfig, CIWAEModel, IWAEConfig, IWAEModel

ARCHITECTURE = dict(in_channels=1, image_size=8, latent_dim=3, backbone="mlp", hidden_dims=[16],
                    num_importance_samples=6)


def _loss(model_class, config, state, x):
    model = model_class(config)
    model.load_state_dict(state)
    return model.train()(x, generator=torch.Generator().manual_seed(1), sample_posterior=True).loss


def test_ciwae_is_the_convex_combination_of_its_endpoints():
    torch.manual_seed(0)
    state = IWAEModel(IWAEConfig(**ARCHITECTURE)).state_dict()
    x = torch.rand(5, 1, 8, 8)
    iwae = _loss(IWAEModel, IWAEConfig(**ARCHITECTURE), state, x)
    ends = {beta: _loss(CIWAEModel, CIWAEConfig(elbo_weight=beta, **ARCHITECTURE), state, x) for beta in (0.0, 1.0)}
    torch.testing.assert_close(ends[0.0], iwae)  # β = 0 is the IWAE's bound
    assert ends[1.0] > ends[0.0]  # −ELBO ≥ −L_K (Jensen), strictly for non-constant weights
    mixed = _loss(CIWAEModel, CIWAEConfig(elbo_weight=0.3, **ARCHITECTURE), state, x)
    torch.testing.assert_close(mixed, 0.3 * ends[1.0] + 0.7 * ends[0.0])


def test_elbo_weight_outside_the_unit_interval_is_refused():
    with pytest.raises(ValueError, match="elbo_weight"):
        CIWAEConfig(elbo_weight=1.5)
