"""Normalising flows on latent vectors: invertible maps z -> f(z) with a tractable log|det ∂f/∂z|.

A flow turns a simple density into a richer one by the change of variables
    log q(f(z)) = log q(z) − log|det ∂f/∂z|,
so a chain of them can serve as a posterior (VAE with planar/radial flows, Rezende & Mohamed 2015; VAE with inverse
autoregressive flows, Kingma et al. 2016), or as a density fitted to a trained model's latents.

Every flow maps (N, D) -> ((N, D), (N,) log|det|); `context` (N, C) is optional input of the IAF's
autoregressive network (the encoder's summary h of x, their eq. 10).
"""

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class PlanarFlow(nn.Module):
    """f(z) = z + û·tanh(wᵀz + b) (Rezende & Mohamed 2015, eq. 10), with log|det| = log|1 + ûᵀψ(z)|, ψ = tanh'(wᵀz + b)·w.

    û = u + (m(wᵀu) − wᵀu)·w/‖w‖², m(a) = −1 + softplus(a), keeps wᵀû ≥ −1 so that f is invertible (their
    appendix A.1).
    """

    def __init__(self, dim: int, init_scale: float = 0.01):
        super().__init__()
        self.init_scale = init_scale
        self.weight = nn.Parameter(torch.empty(dim))
        self.scale = nn.Parameter(torch.empty(dim))
        self.bias = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Near the identity: small random w and u, b = 0."""
        with torch.no_grad():
            self.weight.normal_(0, self.init_scale)
            self.scale.normal_(0, self.init_scale)
            self.bias.zero_()

    def constrained_scale(self) -> torch.Tensor:
        wu = self.weight @ self.scale
        return self.scale + (F.softplus(wu) - 1 - wu) * self.weight / self.weight.pow(2).sum().clamp(min=1e-12)

    def forward(self, z: torch.Tensor, context: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        u = self.constrained_scale()
        activation = torch.tanh(z @ self.weight + self.bias)  # (N,)
        psi = (1 - activation.pow(2))[:, None] * self.weight  # (N, D)
        log_det = torch.log((1 + psi @ u).abs().clamp(min=1e-12))
        return z + activation[:, None] * u, log_det


class RadialFlow(nn.Module):
    """f(z) = z + β·h(α, r)·(z − z₀), h = 1/(α + r), r = ‖z − z₀‖ (Rezende & Mohamed 2015, eq. 14), with
    log|det| = (D − 1)·log(1 + βh) + log(1 + βh + βh′(r)·r), h′ = −1/(α + r)².

    α = softplus(α̃) > 0 and β = −α + softplus(β̃) ≥ −α keep f invertible (their appendix A.2).
    """

    def __init__(self, dim: int, init_scale: float = 0.01):
        super().__init__()
        self.init_scale = init_scale
        self.center = nn.Parameter(torch.empty(dim))
        self.raw_alpha = nn.Parameter(torch.empty(()))
        self.raw_beta = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small random z₀, α̃ and β̃."""
        with torch.no_grad():
            for parameter in (self.center, self.raw_alpha, self.raw_beta):
                parameter.normal_(0, self.init_scale)

    def forward(self, z: torch.Tensor, context: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        alpha = F.softplus(self.raw_alpha)
        beta = -alpha + F.softplus(self.raw_beta)
        difference = z - self.center
        r = difference.norm(dim=-1)
        h = 1 / (alpha + r)
        beta_h = beta * h
        log_det = (z.shape[-1] - 1) * torch.log1p(beta_h) + torch.log1p(beta_h - beta * h.pow(2) * r)
        return z + beta_h[:, None] * difference, log_det


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (MADE, Germain et al. 2015)."""

    def __init__(self, in_degrees: Sequence[int], out_degrees: Sequence[int], strict: bool):
        super().__init__(len(in_degrees), len(out_degrees))
        #: unit degrees (MADE): an output sees the inputs of lower degree (`strict`) or of lower or equal degree
        self.in_degrees, self.out_degrees, self.strict = list(in_degrees), list(out_degrees), strict
        self.register_buffer("mask", self.mask_values(), persistent=False)

    def mask_values(self) -> torch.Tensor:
        """The 0/1 mask from the degrees (a constant, rebuilt after a meta-device construction)."""
        inputs, outputs = torch.tensor(self.in_degrees), torch.tensor(self.out_degrees)
        allowed = outputs[:, None] > inputs[None, :] if self.strict else outputs[:, None] >= inputs[None, :]
        return allowed.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask.to(self.weight.dtype), self.bias)


class MADE(nn.Module):
    """An autoregressive network: output i (of each of `num_outputs` heads) depends on inputs order[<i] only.

    Degrees follow Germain et al. (2015): input k has degree order⁻¹(k) + 1, hidden units cycle through 1..D−1,
    and a unit sees the units of the previous layer whose degree is ≤ its own (< for the outputs).
    """

    def __init__(self, dim: int, hidden_dims: Sequence[int], num_outputs: int = 2, context_dim: int = 0,
                 order: Optional[torch.Tensor] = None):
        super().__init__()
        self.dim, self.num_outputs = dim, num_outputs
        order = list(range(dim)) if order is None else [int(i) for i in order]
        input_degrees = [0] * dim
        for position, index in enumerate(order):
            input_degrees[index] = position + 1
        layers, previous = [], input_degrees
        for width in hidden_dims:
            degrees = [k % max(dim - 1, 1) + 1 for k in range(width)]
            layers.append(MaskedLinear(previous, degrees, strict=False))
            previous = degrees
        self.hidden = nn.ModuleList(layers)
        self.output = MaskedLinear(previous, input_degrees * num_outputs, strict=True)
        # the context reaches every unit: it is a function of x, not of z, so it breaks no autoregressive order
        self.context = nn.Linear(context_dim, hidden_dims[0]) if context_dim and hidden_dims else None

    def forward(self, z: torch.Tensor, context: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
        h = z
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            if i == 0 and self.context is not None and context is not None:
                h = h + self.context(context)
            h = F.elu(h)
        return self.output(h).unflatten(-1, (self.num_outputs, self.dim)).unbind(-2)


class InverseAutoregressiveFlow(nn.Module):
    """One IAF step (Kingma et al. 2016, eqs. 11–14, the numerically stable LSTM-style update):

        [m, s] = MADE(z, h),  σ = sigmoid(s + 1),  f(z) = σ ⊙ z + (1 − σ) ⊙ m,  log|det| = Σ_i log σ_i.

    The +1 biases σ towards 1 at initialisation, so that the step starts near the identity (their sec. 4). The
    Jacobian is triangular under `order`; stacking steps with reversed orders mixes every pair of dimensions.
    """

    def __init__(self, dim: int, hidden_dims: Sequence[int] = (64, 64), context_dim: int = 0,
                 order: Optional[torch.Tensor] = None):
        super().__init__()
        self.made = MADE(dim, hidden_dims, num_outputs=2, context_dim=context_dim, order=order)

    def forward(self, z: torch.Tensor, context: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        mean, gate = self.made(z, context)
        sigma = torch.sigmoid(gate + 1.0)
        return sigma * z + (1 - sigma) * mean, F.logsigmoid(gate + 1.0).sum(-1)


class FlowSequence(nn.Module):
    """f_K ∘ … ∘ f_1 with the summed log|det|."""

    def __init__(self, flows: Sequence[nn.Module]):
        super().__init__()
        self.flows = nn.ModuleList(flows)

    def forward(self, z: torch.Tensor, context: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        total = z.new_zeros(z.shape[0])
        for flow in self.flows:
            z, log_det = flow(z, context)
            total = total + log_det
        return z, total


def build_flow(kind: str, dim: int, num_flows: int, hidden_dims: Sequence[int] = (64, 64),
               context_dim: int = 0) -> FlowSequence:
    """`num_flows` steps of "planar", "radial" or "iaf" (the IAF's orders alternate, so that every dimension
    depends on every other after two steps)."""
    if kind == "planar":
        steps = [PlanarFlow(dim) for _ in range(num_flows)]
    elif kind == "radial":
        steps = [RadialFlow(dim) for _ in range(num_flows)]
    elif kind == "iaf":
        forward_order, reverse_order = list(range(dim)), list(range(dim - 1, -1, -1))
        steps = [InverseAutoregressiveFlow(dim, hidden_dims, context_dim, forward_order if k % 2 == 0 else reverse_order)
                 for k in range(num_flows)]
    else:
        raise ValueError(f"Expected a flow kind in ('planar', 'radial', 'iaf'), got {kind!r}.")
    return FlowSequence(steps)
