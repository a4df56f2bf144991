"""What the models return (and the stage outputs `output_hidden_states` records), and the accelerate hooks that
let offloaded models run.

Outputs hold tensors only (or tuples of tensors), so that `return_dict=False` tuples, `torch.export`, and
transformers' `Trainer.predict` (which pads and gathers every field) take them. The posterior itself goes out as
its parameters; the distribution object is what `encode` returns, as in diffusers.
"""

import contextlib
import functools
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from transformers.utils import ModelOutput


@dataclass
class AutoencoderOutput(ModelOutput):
    """Output of `forward`.

    Args:
        loss (`torch.FloatTensor` of shape `()`): reconstruction_loss + regularisation_loss, averaged over the
            batch. For the VAE this is the negative ELBO in nats per example. With K posterior samples per
            example (IWAE, MIWAE) it is `combine_samples` of them, and the two terms are their sample averages.
        reconstruction_loss (`()`): E_q[−log p(x|z)] (one sample), nats per example.
        regularisation_loss (`()`): the weighted regulariser (KL, β·KL, VQ terms, ...), per example.
        reconstruction (`(B, *data_shape)`): the decoder's mean in data space (probabilities for Bernoulli).
        latents (`(B, *latent_shape)`): the z that was decoded.
        kl (`()`, optional): the unweighted KL(q(z|x) || p(z)) per example, for Gaussian posteriors.
        posterior_mean (`(B, *latent_shape)`, optional): the mean of q(z|x) (the code itself for a deterministic
            encoder).
        posterior_logvar (`(B, *latent_shape)`, optional): its log-variance (clamped to [-30, 20]).
        encoder_hidden_states, decoder_hidden_states (tuples of tensors, optional): each stage's output, with
            `output_hidden_states=True`.
    """

    loss: Optional[torch.FloatTensor] = None
    reconstruction_loss: Optional[torch.FloatTensor] = None
    regularisation_loss: Optional[torch.FloatTensor] = None
    reconstruction: Optional[torch.FloatTensor] = None
    latents: Optional[torch.FloatTensor] = None
    kl: Optional[torch.FloatTensor] = None
    posterior_mean: Optional[torch.FloatTensor] = None
    posterior_logvar: Optional[torch.FloatTensor] = None
    encoder_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
    decoder_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None


@dataclass
class EncoderOutput(ModelOutput):
    """`encode` output. `latent_dist` is the posterior q(z|x) (diffusers' name, so pipelines can use it)."""

    latent_dist: object = None


@dataclass
class DecoderOutput(ModelOutput):
    """`decode` output. `sample` (B, *data_shape): the decoder mean in data space; `parameters`: raw decoder output
    (logits for a Bernoulli likelihood)."""

    sample: Optional[torch.FloatTensor] = None
    parameters: Optional[torch.FloatTensor] = None


def apply_forward_hook(method):
    """Let accelerate's hooks (model CPU offload) run around `encode`/`decode`, as diffusers' decorator does.

    Pipelines call `vae.encode`/`vae.decode`, not `forward`, so without this an offloaded model would stay on the
    CPU while its inputs are on the accelerator.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        hook = getattr(self, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            hook.pre_forward(self)
        output = method(self, *args, **kwargs)
        if hook is not None and hasattr(hook, "post_forward"):
            output = hook.post_forward(self, output)
        return output

    return wrapper


@contextlib.contextmanager
def onloaded(module: nn.Module):
    """Make the weights of `module` (and of its submodules) present inside the block, as calling it would.

    With `device_map` offload, accelerate keeps a module's weights on the meta device and brings them in only around
    its `forward`. A model that reads a submodule's weights outside that forward (a penalty on the decoder's weights,
    a mixture's buffers in `sample`) runs the same hooks around the read instead.
    """
    hooked = [m for m in module.modules() if getattr(m, "_hf_hook", None) is not None]
    for m in hooked:
        m._hf_hook.pre_forward(m)
    try:
        yield module
    finally:
        for m in reversed(hooked):
            m._hf_hook.post_forward(m, None)


@contextlib.contextmanager
def hidden_states_recorded(model: nn.Module, enabled: bool):
    """While the block runs, record the outputs of the encoder's and the decoder's stages (each network's
    `hidden_stages()`); at its end the yielded dict holds `encoder_hidden_states` and `decoder_hidden_states`
    (empty when not enabled)."""
    states: Dict[str, Tuple[torch.Tensor, ...]] = {}
    if not enabled:
        yield states
        return
    recorded = {"encoder": [], "decoder": []}
    handles = [stage.register_forward_hook(lambda module, args, out, part=part: recorded[part].append(out))
               for part, network in (("encoder", model.encoder), ("decoder", model.decoder))
               for stage in network.hidden_stages()]
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()
    states["encoder_hidden_states"] = tuple(recorded["encoder"])
    states["decoder_hidden_states"] = tuple(recorded["decoder"])


def execution_device(model: nn.Module) -> torch.device:
    """Where `model` computes: its parameters' device, or, when `device_map` offloads them (to the meta device),
    the device accelerate's hooks run its modules on."""
    for module in model.modules():
        device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device)
    return model.device
