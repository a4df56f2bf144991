"""How every model's weights start (`_init_weights`, which transformers calls on each module)."""

import math

import torch.nn as nn

from .distributions import ScaledLikelihood
from .flows import MaskedLinear
from .latent_density import GaussianMixtureDensity

try:  # transformers >= 5 guards initialisers so that weights loaded from a checkpoint are never overwritten
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    init = nn.init


def init_weights(module: nn.Module) -> None:
    """PyTorch's defaults (Kaiming-uniform for convs and linears), as diffusers' VAEs use; norms start at identity.

    A plain ReLU stack without normalisation (the Burgess network marks its layers `he_init`) gets He et al.
    (2015)'s initialisation instead: PyTorch's default shrinks the signal's variance about 6x per ReLU layer, and
    through the Burgess network's 14 layers the untrained decoder draws the mean image for the first few hundred
    steps.
    """
    if getattr(module, "he_init", False):
        # A transposed conv's weight is (in, out, k, k); its "fan_out" is in * k * k. At stride 2 each output sees
        # a quarter of those taps, so its layers start a little small; Adam's per-parameter steps absorb the scale.
        mode = "fan_out" if isinstance(module, nn.ConvTranspose2d) else "fan_in"
        init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, (nn.Linear, nn.Conv2d)):
        init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        if module.bias is not None:
            fan_in = module.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            init.uniform_(module.bias, -bound, bound)
        if isinstance(module, MaskedLinear):  # its mask is a constant of the degrees, not a weight (MADE)
            init.copy_(module.mask, module.mask_values())
    elif isinstance(module, nn.GroupNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)
    elif isinstance(module, ScaledLikelihood):  # the fixed or initial per-channel scale
        init.constant_(module.log_scale, module.initial_log_scale)
    elif isinstance(module, GaussianMixtureDensity):  # N(0, I) until `fit_latent_density` fits it
        init.constant_(module.weights, 1.0 / module.num_components)
        init.zeros_(module.means)
        init.copy_(module.scale, module.standard_scale())
