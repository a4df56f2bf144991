"""The one autoencoder algorithm, written once.

    x ──encoder──▶ params ──posterior()──▶ q(z|x) ──sample_latent()──▶ z ──decoder──▶ params ──likelihood──▶ p(x|z)
    loss = E_q[−log p(x|z)] + regularisation(q, z)                (nats per example, averaged over the batch)

A family changes only the pluggable pieces, each a small method or module:

    posterior(encoder_output)          q(z|x): a DiagonalGaussianDistribution, or a VectorQuantizedPosterior
    num_posterior_samples              K latents per example (1; K for the importance-weighted bounds)
    sample_latent(posterior, ...)      reparameterised sample(s) / straight-through code / the mode
    refine_latents(x, q, z, ...)       the drawn z moved given x and the decoder, with the posterior the regulariser
                                       then reads (identity; the HVAE's tempered leapfrog flow)
    likelihood                         a `Likelihood` module: Bernoulli, Gaussian, Laplace, or a pixel loss
    regularisation_loss(posterior, z)  per example: KL, β·KL, γ|KL − C|, log q(z|x) − log p(z), VQ terms, TC, ...
    combine_samples(rec, reg)          the K per-sample terms -> one per-example objective (mean, or IWAE's
                                       log-mean-exp)
    batch_regularisation(q, z, params) a term of the whole batch: MMD(q(z), p(z)), a decoder penalty (0 default)
    latent_prior                       p(z) (latent_priors.py): N(0, I), or two-level with a local latent; asked
                                       by `kl_divergence`, `sample_prior`, `prior_log_prob` (which the VampPrior
                                       and the VQ-VAE's code prior replace)
    draw_latents(n, labels, ...)       what `generate` decodes: p(z), an ex-post density, or a learned code prior
    decoder_latents(z, **options)      what `decode` hands the decoder (the VQ-VAE snaps z to its codes)
    estimate_log_likelihood(x, q, ...) log p(x) from the posterior: importance sampling (the VQ-VAE: its bound)
    embed_condition(labels)            c for conditional models (None otherwise)

`forward`, `encode`, `decode`, `generate`, `reconstruct` and `log_likelihood` live here; a family with another
public signature (the KLAE's diffusers names) only renames arguments. Sibling modules hold the rest: input checks
(input_checks.py), loading and publishing (pretrained_io.py), the networks (backbones.py), initialisation
(weight_init.py), p(z) (latent_priors.py), the ex-post density (latent_density.py) and the outputs
(modeling_outputs.py).
"""

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from transformers import PreTrainedModel

from .backbones import AttentionImplementationMixin, build_backbone
from .data_contract import DataContract, contract_for
from .distributions import DiagonalGaussianDistribution, Likelihood, build_likelihood
from .importance_sampling import importance_sampled_log_likelihood
from .input_checks import MAX_IMPORTANCE_SAMPLES, InputChecksMixin, check_count, check_fits, condition_argument
from .latent_density import LatentDensityMixin
from .latent_priors import LatentPriorMixin
from .memory import check_allocation_fits
from .modeling_outputs import (AutoencoderOutput, DecoderOutput, EncoderOutput, apply_forward_hook,  # noqa: F401
                               execution_device, hidden_states_recorded, onloaded)
from .pretrained_io import PretrainedIOMixin
from .thread_policy import threads_for_generation
from .weight_init import init_weights


class AutoencoderPreTrainedModel(LatentPriorMixin, PretrainedIOMixin, InputChecksMixin, LatentDensityMixin,
                                 AttentionImplementationMixin, PreTrainedModel):
    """Base class: the universal encode -> sample -> decode -> losses step."""

    base_model_prefix = "model"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    #: the loss is the model's own, per example and batch-averaged: transformers' Trainer passes no
    #: `num_items_in_batch` to `forward`
    accepts_loss_kwargs = False
    #: modules whose parts must share a device under `device_map` (a residual adds tensors of two submodules; the
    #: quantiser reads its codebook with each call; a dense stack runs as one checkpointing unit)
    _no_split_modules = ["ResnetBlock2D", "Attention", "VectorQuantizer", "CheckpointedSequential",
                         "BurgessEncoder", "BurgessDecoder"]
    output_class = AutoencoderOutput
    #: whether `forward`/`generate` need `labels` (the CVAE)
    is_conditional = False
    #: whether the encoder outputs the code itself (a point mass: no ELBO or importance-sampled likelihood)
    deterministic_encoder = False
    #: latents drawn per example in `forward`: K > 1 gives (K, B, *latent_shape) latents (IWAE, MIWAE)
    num_posterior_samples = 1
    #: whether `forward` runs under reentrant activation checkpointing (`use_reentrant=True`), which allows no
    #: `torch.autograd.grad` back through the checkpointed networks (the PIWAE's gradient routing takes one)
    supports_reentrant_checkpointing = True

    def __init__(self, config, *inputs, **kwargs):
        check_allocation_fits(type(self), config)  # weights that cannot fit are refused before they are allocated
        super().__init__(config, *inputs, **kwargs)
        self.check_latent_prior()
        self.latent_density = self.build_latent_density()  # an ex-post density saved with the weights, or None

    # -- construction ----------------------------------------------------------------------------------------
    def build_backbone(self, encoder_out: int, condition_dim: int = 0) -> Tuple[nn.Module, nn.Module]:
        """Encoder and decoder for `config.backbone` (hf_vae.backbones)."""
        return build_backbone(self.config, encoder_out, condition_dim)

    def build_likelihood(self) -> Likelihood:
        config = self.config
        return build_likelihood(config.likelihood, config.in_channels, config.likelihood_scale,
                                config.learn_likelihood_scale)

    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None, **options) -> None:
        """transformers' activation checkpointing; `use_reentrant=True` is refused by a model whose `forward`
        differentiates through its networks (`supports_reentrant_checkpointing`)."""
        if (gradient_checkpointing_kwargs or {}).get("use_reentrant") and not self.supports_reentrant_checkpointing:
            raise ValueError(f"{type(self).__name__} takes torch.autograd.grad through its networks in `forward`, "
                             f"which reentrant checkpointing does not allow: expected use_reentrant=False "
                             f"(transformers' default), got gradient_checkpointing_kwargs="
                             f"{gradient_checkpointing_kwargs}.")
        super().gradient_checkpointing_enable(gradient_checkpointing_kwargs, **options)

    # -- what the model is -----------------------------------------------------------------------------------
    @property
    def num_classes(self) -> Optional[int]:
        """Classes of a class-conditional model; None when unconditional."""
        return None

    @property
    def data_contract(self) -> DataContract:
        """The data the model takes (value range, binarisation, dequantisation), from its likelihood."""
        return contract_for(self.likelihood.name, self.config.quantized)

    @property
    def latent_shape(self) -> Tuple[int, ...]:
        """Shape of one latent z, without the batch dimension."""
        config = self.config
        if config.vector_latent:
            return (config.latent_dim + self.local_latent_size,)
        side = config.image_size // config.downsampling_factor
        return (self.latent_map_channels, side, side)

    @property
    def latent_map_channels(self) -> int:
        """Channels of a spatial latent (the VQ-VAE's are its codes')."""
        return self.config.latent_channels

    @property
    def execution_device(self) -> torch.device:
        """Where the model computes (accelerate's execution device under offload); new tensors go there."""
        return execution_device(self)

    # -- the pluggable pieces (defaults: Gaussian posterior, KL regulariser; p(z) from LatentPriorMixin) -------
    def embed_condition(self, labels: Optional[torch.Tensor], batch_size: int) -> Optional[torch.Tensor]:
        """(B,) labels or (B, c) condition -> (B, condition_dim); unconditional models take none."""
        if labels is not None:
            raise ValueError(f"{type(self).__name__} is unconditional: expected labels=None, got "
                             f"{type(labels).__name__}{tuple(labels.shape) if hasattr(labels, 'shape') else ''} "
                             f"(a class-conditional model is CVAEModel).")
        return None

    def posterior(self, encoder_output: torch.Tensor):
        return DiagonalGaussianDistribution(encoder_output)

    def sample_latent(self, posterior, generator: Optional[torch.Generator] = None,
                      sample_posterior: bool = True) -> torch.Tensor:
        """(B, *latent_shape), or (K, B, *latent_shape) reparameterised samples when num_posterior_samples = K > 1."""
        if not sample_posterior:
            return posterior.mode()
        if self.num_posterior_samples == 1:
            return posterior.sample(generator)
        return posterior.sample_stack(self.num_posterior_samples, generator)

    def refine_latents(self, pixel_values: torch.Tensor, posterior, latents: torch.Tensor,
                       condition: Optional[torch.Tensor], generator: Optional[torch.Generator],
                       sample_posterior: bool) -> Tuple[object, torch.Tensor]:
        """(posterior, latents) for the regulariser and the decoder after the drawn latents are moved given the data
        (a flow that reads x and the decoder, as the HVAE's leapfrog): those given by default. Its own decoder
        passes are not recorded as hidden states."""
        return posterior, latents

    def regularisation_loss(self, posterior, latents: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Per-example regulariser (B,) (or (K, B) for stacked latents) and extra output fields (batch-averaged)."""
        kl = self.kl_divergence(posterior, latents)
        return kl, {"kl": kl.mean()}

    def combine_samples(self, reconstruction_loss: torch.Tensor, regularisation_loss: torch.Tensor) -> torch.Tensor:
        """(K, B) per-sample −log p(x|z_k) and regulariser -> (B,) objective: the Monte Carlo average by default."""
        return (reconstruction_loss + regularisation_loss).mean(0)

    def batch_regularisation(self, posterior, latents: torch.Tensor, params: torch.Tensor,
                             generator: Optional[torch.Generator] = None
                             ) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """A scalar term of the whole batch added to the loss (MMD, decoder penalty), and extra output fields;
        `generator` seeds any draw it makes."""
        return None, {}

    def draw_latents(self, num_samples: int, labels=None, generator: Optional[torch.Generator] = None,
                     **sampling) -> torch.Tensor:
        """The latents `generate` decodes: draws from the ex-post density when one was fitted, else from p(z).
        Here `labels` condition the decoder, not p(z); a family with a learned prior (the VQ-VAE) overrides this."""
        if sampling:
            raise ValueError(f"Expected no sampling options for {type(self).__name__}.generate (they apply to a "
                             f"learned prior), got {sorted(sampling)}.")
        if self.latent_density is not None:  # fitted ex post (fit_latent_density)
            with onloaded(self.latent_density):  # its buffers are read by `sample`, not by a call
                return self.latent_density.sample(num_samples, generator).view(num_samples, *self.latent_shape)
        return self.sample_prior(num_samples, generator)

    def decoder_latents(self, latents: torch.Tensor, **options) -> torch.Tensor:
        """The latents `decode` hands the decoder: those given (a family may take `options` for this step)."""
        if options:
            raise TypeError(f"{type(self).__name__}.decode() got unexpected keyword arguments {sorted(options)}.")
        return latents

    def estimate_log_likelihood(self, pixel_values: torch.Tensor, posterior, condition: Optional[torch.Tensor],
                                labels, num_samples: int, chunk_size: int,
                                generator: Optional[torch.Generator]) -> torch.Tensor:
        """log p(x), (B,), from `num_samples` importance samples of q(z|x) (importance_sampling.py)."""
        if self.deterministic_encoder:
            raise NotImplementedError(f"{type(self).__name__}'s posterior has no density; log p(x) needs one.")
        return importance_sampled_log_likelihood(self, pixel_values, posterior, condition, num_samples, chunk_size,
                                                 generator)

    def set_training_step(self, step: int) -> None:
        """Called by the trainer once per optimisation step; variants with schedules (β-VAE capacity) override it."""

    def get_last_layer(self) -> torch.Tensor:
        """Weight of the decoder's output layer: where latent diffusion's adaptive GAN weight measures gradients."""
        return [m for m in self.decoder.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1].weight

    # -- the universal step ----------------------------------------------------------------------------------
    def _encode(self, pixel_values: torch.Tensor, condition: Optional[torch.Tensor]):
        return self.posterior(self.encoder(pixel_values, condition))

    def _decode(self, latents: torch.Tensor, condition: Optional[torch.Tensor]) -> torch.Tensor:
        return self.decoder(latents, condition)

    def _decode_samples(self, latents: torch.Tensor, condition: Optional[torch.Tensor]) -> torch.Tensor:
        """`_decode` for (B, *latent_shape) or stacked (K, B, *latent_shape) latents (decoded as one batch)."""
        if latents.dim() == len(self.latent_shape) + 1:
            return self._decode(latents, condition)
        k, batch = latents.shape[:2]
        cond = None if condition is None else condition.repeat(k, *([1] * (condition.dim() - 1)))
        params = self._decode(latents.reshape(k * batch, *latents.shape[2:]), cond)
        return params.view(k, batch, *params.shape[1:])

    @apply_forward_hook
    def encode(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, return_dict: bool = True):
        """(B, *data_shape) -> EncoderOutput(latent_dist=q(z|x))."""
        pixel_values = self.check_pixel_values(pixel_values)
        posterior = self._encode(pixel_values, self.embed_condition(labels, pixel_values.shape[0]))
        return EncoderOutput(latent_dist=posterior) if return_dict else (posterior,)

    @apply_forward_hook
    def decode(self, latents: torch.Tensor, labels: Optional[torch.Tensor] = None, return_dict: bool = True,
               **options):
        """(B, *latent_shape) -> DecoderOutput(sample=E[x|z] (B, *data_shape), parameters=raw decoder output)."""
        latents = self.decoder_latents(self.check_latents(latents), **options)
        params = self._decode(latents, self.embed_condition(labels, latents.shape[0]))
        sample = self.likelihood.mean(params)
        return DecoderOutput(sample=sample, parameters=params) if return_dict else (sample,)

    def forward(self, pixel_values: torch.Tensor, condition: Optional[torch.Tensor] = None, return_dict: bool = True,
                sample_posterior: Optional[bool] = None, generator: Optional[torch.Generator] = None,
                output_hidden_states: Optional[bool] = None, return_loss: bool = True, **kwargs):
        """One pass of the objective.

        Args:
            pixel_values: (B, C, H, W) images (or (B, D) flat data) in the likelihood's range.
            condition: (B,) class indices or (B, condition_dim) conditions; required by conditional models only.
                `labels=` is accepted as an alias (it is not a parameter name, so transformers' `Trainer` does not
                take the condition for a prediction target).
            sample_posterior: decode a posterior sample (the ELBO's Monte Carlo estimate) or its mode. By default
                the posterior is sampled in training mode or when a `generator` is given, so an eval-mode call
                without one is deterministic.
            generator: seeds every random draw of the pass (posterior samples, MMD prior samples).
            output_hidden_states: also return each encoder and decoder stage's output.
            return_loss: accepted for transformers' `Trainer` (which reads it to know the model computes its own
                loss); the loss is always returned.
        """
        condition = condition_argument(self, condition, kwargs)
        if sample_posterior is None:
            sample_posterior = self.training or generator is not None
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        pixel_values = self.check_pixel_values(pixel_values)
        condition = self.embed_condition(condition, pixel_values.shape[0])
        with hidden_states_recorded(self, output_hidden_states) as hidden_states:
            posterior = self._encode(pixel_values, condition)
            latents = self.sample_latent(posterior, generator, sample_posterior)  # (B, ...), or (K, B, ...)
        # outside the recording: the refinement's own decoder passes (the HVAE's leapfrog) are not hidden states
        posterior, latents = self.refine_latents(pixel_values, posterior, latents, condition, generator,
                                                 sample_posterior)
        with hidden_states_recorded(self, output_hidden_states) as decoder_states:
            params = self._decode_samples(latents, condition)
        hidden_states.update({key: value for key, value in decoder_states.items() if key.startswith("decoder")})
        reconstruction_loss = self.likelihood(pixel_values, params)  # −log p(x|z): (B,) or (K, B)
        regularisation_loss, extras = self.regularisation_loss(posterior, latents)
        stacked = latents.dim() > len(self.latent_shape) + 1  # K samples per example
        # Per example: −log p(x|z) + regulariser; with K samples, their mean or an importance-weighted bound.
        objective = (self.combine_samples(reconstruction_loss, regularisation_loss) if stacked
                     else reconstruction_loss + regularisation_loss)
        batch_term, batch_extras = self.batch_regularisation(posterior, latents, params, generator)
        loss, regularisation = objective.mean(), regularisation_loss.mean()
        if batch_term is not None:
            loss, regularisation = loss + batch_term, regularisation + batch_term
        if stacked:
            params, latents = params[0], latents[0]  # report the first of the K samples
        output = self.build_output(return_loss, dict(
            loss=loss, reconstruction_loss=reconstruction_loss.mean(), regularisation_loss=regularisation,
            reconstruction=self.likelihood.mean(params), latents=latents, **self.posterior_outputs(posterior),
            **extras, **batch_extras, **hidden_states))
        return output if return_dict else output.to_tuple()

    def build_output(self, return_loss: bool, fields: Dict[str, torch.Tensor]):
        """The `forward` output from its fields: `output_class(**fields)` (the loss is always included; the KLAE
        follows diffusers and leaves it out unless asked)."""
        return self.output_class(**fields)

    def posterior_outputs(self, posterior) -> Dict[str, torch.Tensor]:
        """The posterior's parameters as output tensors: its mean and log-variance (the code alone for a point
        mass). The VQ-VAE reports its codes instead."""
        if posterior.deterministic:
            return {"posterior_mean": posterior.mean}
        return {"posterior_mean": posterior.mean, "posterior_logvar": posterior.logvar}

    # -- sampling and evaluation -----------------------------------------------------------------------------
    @threads_for_generation  # on the CPU: the intra-op threads the decoding work calls for (thread_policy.py)
    @torch.no_grad()
    def generate(self, num_samples: int, labels=None, generator: Optional[torch.Generator] = None,
                 batch_size: int = 256, **sampling) -> torch.Tensor:
        """Draw z (`draw_latents`: p(z), an ex-post density, or a learned prior with `sampling` options) and return
        the decoder mean, (num_samples, *data_shape). The latents are drawn at once (the result does not depend
        on `batch_size`) and decoded `batch_size` at a time. A request whose result cannot fit in the memory
        available is refused before anything is allocated."""
        check_count("num_samples", num_samples)
        check_count("batch_size", batch_size)
        per_example = math.prod(self.config.data_shape) + math.prod(self.latent_shape)
        check_fits(f"generate({num_samples})", num_samples * per_example * self.dtype.itemsize, self.execution_device)
        latents = self.draw_latents(num_samples, labels, generator, **sampling).to(self.dtype)
        condition = self.embed_condition(labels, num_samples)
        return _in_chunks(num_samples, batch_size, lambda start, stop: self.likelihood.mean(
            self._decode(latents[start:stop], None if condition is None else condition[start:stop])))

    @torch.no_grad()
    def reconstruct(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None,
                    batch_size: int = 256) -> torch.Tensor:
        """Deterministic reconstruction: decode the posterior mode (the nearest codes for VQ), `batch_size`
        examples at a time (the activations stay those of one batch, whatever the size of the input)."""
        check_count("batch_size", batch_size)
        pixel_values = self.check_pixel_values(pixel_values)
        condition = self.embed_condition(labels, pixel_values.shape[0])

        def chunk(start, stop):
            cond = None if condition is None else condition[start:stop]
            return self.likelihood.mean(self._decode(self._encode(pixel_values[start:stop], cond).mode(), cond))

        return _in_chunks(pixel_values.shape[0], batch_size, chunk)

    @torch.no_grad()
    def log_likelihood(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, num_samples: int = 1000,
                       chunk_size: int = 100, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """An estimate of log p(x) in nats, shape (B,) (`estimate_log_likelihood`; importance-sampled by default: a
        lower bound in expectation that equals the ELBO at K = 1 and tightens as K grows). K is capped at
        `MAX_IMPORTANCE_SAMPLES` (the run time grows linearly with it)."""
        check_count("num_samples", num_samples, MAX_IMPORTANCE_SAMPLES)
        check_count("chunk_size", chunk_size)
        if not self.likelihood.normalised:
            raise NotImplementedError(f"{type(self).__name__} uses an un-normalised pixel loss, so log p(x) is undefined.")
        pixel_values = self.check_pixel_values(pixel_values)
        condition = self.embed_condition(labels, pixel_values.shape[0])
        posterior = self._encode(pixel_values, condition)
        return self.estimate_log_likelihood(pixel_values, posterior, condition, labels, num_samples, chunk_size,
                                            generator)


def _in_chunks(total: int, batch_size: int, compute) -> torch.Tensor:
    """`compute(start, stop)` for consecutive chunks of `batch_size`, written into one preallocated result."""
    out = None
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        chunk = compute(start, stop)
        if out is None:
            out = chunk.new_empty((total, *chunk.shape[1:]))
        out[start:stop] = chunk
    return out

