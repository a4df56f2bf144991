"""The flows' log-determinants against autograd Jacobians, and the structure that makes them tractable."""

import pytest
import torch

from hf_vae.flows import MADE, InverseAutoregressiveFlow, PlanarFlow, RadialFlow, build_flow


def _perturb(module: torch.nn.Module, scale: float = 0.7, seed: int = 0) -> torch.nn.Module:
    """Parameters far from their near-identity initialisation, so that the test exercises the nonlinearity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * scale)
    return module


def _autograd_log_det(flow, z, context=None):
    out = []
    for i in range(z.shape[0]):
        c = None if context is None else context[i:i + 1]
        jacobian = torch.autograd.functional.jacobian(lambda v: flow(v[None], c)[0][0], z[i])
        out.append(torch.linalg.slogdet(jacobian).logabsdet)
    return torch.stack(out)


@pytest.mark.parametrize("kind", ["planar", "radial", "iaf"])
def test_log_det_matches_the_autograd_jacobian(kind):
    torch.manual_seed(0)
    # scale 0.3: log|det| of a few nats; at tens of nats the composed Jacobian's determinant is lost to rounding
    flow = _perturb(build_flow(kind, dim=5, num_flows=3, hidden_dims=(16, 16)), scale=0.3).double()
    z = torch.randn(6, 5, dtype=torch.float64) * 1.5
    _, log_det = flow(z)
    torch.testing.assert_close(log_det, _autograd_log_det(flow, z), rtol=1e-8, atol=1e-8)


def test_iaf_with_context_log_det_and_order():
    torch.manual_seed(1)
    order = torch.tensor([2, 0, 3, 1])
    flow = _perturb(InverseAutoregressiveFlow(4, (12, 12), context_dim=3, order=order)).double()
    z, context = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    _, log_det = flow(z, context)
    torch.testing.assert_close(log_det, _autograd_log_det(flow, z, context), rtol=1e-8, atol=1e-8)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v[None], context[:1])[0][0], z[0])
    permuted = jacobian[order][:, order]  # in the autoregressive order the Jacobian is lower triangular
    assert torch.all(permuted.triu(1) == 0)


def test_made_outputs_depend_only_on_earlier_inputs():
    made = _perturb(MADE(6, (20, 20), num_outputs=2))
    z = torch.randn(1, 6, requires_grad=True)
    for head in made(z):
        for i in range(6):
            (grad,) = torch.autograd.grad(head[0, i], z, retain_graph=True)
            assert torch.all(grad[0, i:] == 0), f"output {i} sees inputs >= {i}"


def test_planar_flow_stays_invertible():
    """wᵀû ≥ −1 for any u, w (Rezende & Mohamed's appendix A.1), so 1 + ûᵀψ never changes sign."""
    flow = PlanarFlow(3)
    with torch.no_grad():
        flow.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
        flow.scale.copy_(torch.tensor([-10.0, 8.0, 1.0]))  # wᵀu = −25: not invertible unconstrained
    assert flow.weight @ flow.constrained_scale() >= -1 - 1e-6  # m(a) = softplus(a) − 1 > −1, up to rounding


def test_radial_flow_stays_invertible():
    flow = RadialFlow(2)
    with torch.no_grad():
        flow.raw_beta.fill_(-30.0)
    z = torch.randn(100, 2)
    _, log_det = flow(z)
    assert torch.isfinite(log_det).all()


def test_unknown_flow_kind_names_the_known_ones():
    with pytest.raises(ValueError, match=r"Expected a flow kind in \('planar', 'radial', 'iaf'\), got 'maf'"):
        build_flow("maf", 2, 1)
