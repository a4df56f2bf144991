"""The one autoencoder algorithm, written once.

    x ──encoder──▶ params ──posterior()──▶ q(z|x) ──sample_latent()──▶ z ──decoder──▶ params ──likelihood──▶ p(x|z)
    loss = E_q[−log p(x|z)] + regularisation(q, z)                (nats per example, averaged over the batch)

A variant changes only the pluggable pieces, each a small method or module:

    posterior(encoder_output)          q(z|x): a DiagonalGaussianDistribution, or a VectorQuantizedPosterior
    num_posterior_samples              K latents per example (1; K for the importance-weighted bounds)
    sample_latent(posterior, ...)      reparameterised sample(s) / straight-through code / the mode
    likelihood                         a `Likelihood` module: Bernoulli, Gaussian, Laplace, or a pixel loss
    regularisation_loss(posterior, z)  per example: KL, β·KL, γ|KL − C|, log q(z|x) − log p(z), VQ terms, TC, ...
    combine_samples(rec, reg)          the K per-sample terms -> one per-example objective (mean, or IWAE's
                                       log-mean-exp)
    batch_regularisation(q, z, params) a term of the whole batch: MMD(q(z), p(z)), a decoder penalty (0 default)
    sample_prior / prior_log_prob      p(z) (the VampPrior replaces both)
    kl_divergence(q, z)                KL(q(z|x) || p(z)) per example: closed form against N(0, I), or against a
                                       two-level prior N(z_global; 0, I) p(z_local | z_global) (a local latent)
    embed_condition(labels)            c for conditional models (None otherwise)

Any model can also fit an ex-post density to its latents (`fit_latent_density`, a Gaussian mixture saved with
the weights); `generate` then samples from it instead of p(z).

`forward`, `encode`, `decode`, `generate`, `reconstruct` and `log_likelihood` live here and nowhere else.
"""

import contextlib
import json
import math
import os
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from transformers import PreTrainedModel

from .burgess_backbone import BurgessDecoder, BurgessEncoder
from .conv_backbone import Attention, ConvDecoder, ConvEncoder
from .distributions import (DiagonalGaussianDistribution, Likelihood, ScaledLikelihood, build_likelihood, gaussian_kl,
                            gaussian_log_density, randn_tensor, standard_normal_log_prob)
from .latent_density import GaussianMixtureDensity, encode_dataset
from .input_checks import (MAX_IMPORTANCE_SAMPLES, check_count, check_fits, check_latents,  # noqa: F401
                           check_pixel_values)
from .mlp_backbone import MLPDecoder, MLPEncoder
from .modeling_outputs import (AutoencoderOutput, DecoderOutput, EncoderOutput, apply_forward_hook,  # noqa: F401
                               onloaded)
from .thread_policy import threads_for_generation

try:  # transformers >= 5 guards initialisers so that weights loaded from a checkpoint are never overwritten
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    init = nn.init


# ------------------------------------------------------------------------------------------------------------
# The base model
# ------------------------------------------------------------------------------------------------------------


class AutoencoderPreTrainedModel(PreTrainedModel):
    """Base class: the universal encode -> sample -> decode -> losses step, and input checking."""

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
    #: whether the posterior is a point mass (no ELBO or importance-sampled likelihood: WAE, RAE)
    deterministic_encoder = False
    #: latents drawn per example in `forward`: K > 1 gives (K, B, *latent_shape) latents (IWAE, MIWAE)
    num_posterior_samples = 1
    #: whether the family's objective works with the two-level prior of `config.local_latent_channels` (its KL
    #: goes through `kl_divergence` and its prior through `sample_prior` / `prior_log_prob`)
    supports_local_latent = False

    def __init__(self, config, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        if getattr(config, "local_latent_channels", 0) and not self.supports_local_latent:
            raise ValueError(f"Expected local_latent_channels=0 for {type(self).__name__}, got "
                             f"{config.local_latent_channels}: its objective does not take the two-level prior "
                             f"(VAEModel, BetaVAEModel, IWAEModel and MIWAEModel do).")
        # The ex-post latent density (`fit_latent_density`) is stored in the weights; the config records its size
        # so that `from_pretrained` builds the buffers it loads into.
        components = getattr(config, "latent_density_components", None)
        self.latent_density = None
        if components:
            self.latent_density = GaussianMixtureDensity(components, math.prod(self.latent_shape),
                                                         getattr(config, "latent_density_covariance", "full"))

    def post_init(self):
        super().post_init()
        self._apply_attn_implementation()

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        """transformers' `set_attn_implementation`, applied to the mid-block attention ("sdpa" or "eager")."""
        if attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f'Specified `attn_implementation="{attn_implementation}"` is not supported by '
                             f'{type(self).__name__}: expected "sdpa" or "eager".')
        self.config._attn_implementation_internal = attn_implementation
        self._apply_attn_implementation()

    def _apply_attn_implementation(self) -> None:
        implementation = "eager" if self.config._attn_implementation == "eager" else "sdpa"
        for module in self.modules():
            if isinstance(module, Attention):
                module.implementation = implementation

    @classmethod
    def can_generate(cls) -> bool:
        """False: `generate` decodes draws from the prior p(z); it is not transformers' token generation.

        transformers' remote-code loader (`add_generation_mixin_to_remote_model` in `models/auto/auto_factory.py`)
        mixes `GenerationMixin` into every loaded class that defines a `generate` of its own, and
        `PreTrainedModel.can_generate()` then answers True because `GenerationMixin` is among the bases. Everything
        generation-specific keys off this answer: a `generation_config` built in `__init__`, the probe for
        `custom_generate/generate.py` in `from_pretrained`, and the `generation_config.json` that `save_pretrained`
        writes. Answering False here keeps a model loaded with `trust_remote_code=True` like the installed class
        (our `generate` comes first in the method resolution order, so it is still the one called).
        """
        return False

    # --------------------------------------------------------------------------------------------------------
    # Construction helpers for variants
    # --------------------------------------------------------------------------------------------------------
    def build_backbone(self, encoder_out: int, condition_dim: int = 0) -> Tuple[nn.Module, nn.Module]:
        """Encoder and decoder for `config.backbone`.

        `encoder_out` is the size of the posterior parameters: features of a vector latent, or channels of a
        spatial one (2·latent for a Gaussian, the code dimension for VQ). `condition_dim` is the width of a
        condition vector concatenated to both networks' inputs.
        """
        config = self.config
        if config.backbone == "mlp":
            encoder = MLPEncoder(config.data_shape, config.hidden_dims, encoder_out, config.act_fn, condition_dim)
            decoder = MLPDecoder(config.data_shape, config.hidden_dims, config.latent_dim, config.act_fn, condition_dim)
            return encoder, decoder
        if config.backbone == "burgess":
            dense = dict(block_out_channels=config.block_out_channels, hidden_dims=config.hidden_dims,
                         act_fn=config.act_fn, condition_dim=condition_dim,
                         local_latent_channels=config.local_latent_channels)
            encoder = BurgessEncoder(config.in_channels, config.image_size, out_features=encoder_out, **dense)
            decoder = BurgessDecoder(config.in_channels, config.image_size, latent_dim=config.latent_dim, **dense)
            return encoder, decoder
        conv = dict(block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
                    norm_num_groups=config.norm_num_groups, act_fn=config.act_fn,
                    mid_block_add_attention=config.mid_block_add_attention, latent_channels=config.latent_channels,
                    condition_dim=condition_dim, dropout=config.dropout)
        encoder = ConvEncoder(config.in_channels, config.image_size, out_features=encoder_out,
                              vector_latent=config.latent_dim is not None, **conv)
        decoder = ConvDecoder(config.in_channels, config.image_size, latent_dim=config.latent_dim, **conv)
        return encoder, decoder

    def build_likelihood(self) -> Likelihood:
        config = self.config
        return build_likelihood(config.likelihood, config.in_channels, config.likelihood_scale,
                                config.learn_likelihood_scale)

    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's defaults (Kaiming-uniform for convs and linears), as diffusers' VAEs use; norms start at identity.
        # A plain ReLU stack without normalisation (the Burgess network marks its layers) gets He et al. (2015)'s
        # initialisation instead: PyTorch's default shrinks the signal's variance about 6x per ReLU layer, and
        # through the Burgess network's 14 layers the untrained decoder draws the mean image for the first few
        # hundred steps (measured on shapes: test PSNR 14.7 dB at step 500 with the default, 21.4 dB with He).
        if getattr(module, "he_init", False):
            # A transposed conv's weight is (in, out, k, k); its "fan_out" is in * k * k. At stride 2 each output
            # sees a quarter of those taps, so its layers start a little small; that is the measured setting, and
            # Adam's per-parameter steps absorb the scale.
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
        elif isinstance(module, nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ScaledLikelihood):  # the fixed or initial per-channel scale
            init.constant_(module.log_scale, module.initial_log_scale)
        elif isinstance(module, GaussianMixtureDensity):  # N(0, I) until `fit_latent_density` fits it
            init.constant_(module.weights, 1.0 / module.num_components)
            init.zeros_(module.means)
            init.copy_(module.scale, module.standard_scale())

    # --------------------------------------------------------------------------------------------------------
    # The pluggable pieces (defaults: Gaussian posterior, standard normal prior, KL regulariser)
    # --------------------------------------------------------------------------------------------------------
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
        """Where the model computes: its parameters' device, or, when `device_map` offloads them (to the meta
        device), the device accelerate's hooks run its modules on. New tensors (prior draws, labels) go there."""
        for module in self.modules():
            device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
            if device is not None:
                return torch.device(device)
        return self.device

    @property
    def local_latent_size(self) -> int:
        """Elements of the local latent, which follows the global one in z (0 without one)."""
        shape = getattr(self.config, "local_latent_shape", None)
        return math.prod(shape) if shape else 0

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
        eps = randn_tensor((self.num_posterior_samples, *posterior.mean.shape), generator=generator,
                           device=posterior.mean.device, dtype=posterior.mean.dtype)
        return posterior.mean + posterior.std * eps

    def regularisation_loss(self, posterior, latents: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Per-example regulariser (B,) (or (K, B) for stacked latents) and extra output fields (batch-averaged)."""
        kl = self.kl_divergence(posterior, latents)
        return kl, {"kl": kl.mean()}

    def kl_divergence(self, posterior, latents: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per example: (B,), or (K, B) for stacked latents with a local latent.

        With a local latent the prior is p(z_global) p(z_local | z_global), and so is the KL:
        KL(q(z_global|x) || N(0, I)) + E_q(z_global|x) KL(q(z_local|x) || p(z_local | z_global)), both in closed
        form except the expectation over z_global, for which the sampled `latents` give a one-sample estimate (the
        ELBO's own Monte Carlo estimate).
        """
        if not self.local_latent_size:
            return posterior.kl()
        d = self.config.latent_dim
        mean, logvar = posterior.mean, posterior.logvar
        prior_mean, prior_logvar = self.decoder.local_prior(latents[..., :d])
        kl_global = gaussian_kl(mean[:, :d], logvar[:, :d]).sum(-1)
        return kl_global + gaussian_kl(mean[:, d:], logvar[:, d:], prior_mean, prior_logvar).sum(-1)  # (B,) + (K, B)

    def combine_samples(self, reconstruction_loss: torch.Tensor, regularisation_loss: torch.Tensor) -> torch.Tensor:
        """(K, B) per-sample −log p(x|z_k) and regulariser -> (B,) objective: the Monte Carlo average by default."""
        return (reconstruction_loss + regularisation_loss).mean(0)

    def batch_regularisation(self, posterior, latents: torch.Tensor, params: torch.Tensor,
                             generator: Optional[torch.Generator] = None
                             ) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """A scalar term of the whole batch added to the loss (MMD, decoder penalty), and extra output fields;
        `generator` seeds any draw it makes."""
        return None, {}

    def sample_prior(self, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(num_samples, *latent_shape) from p(z); with a local latent, ancestrally: z_global, then z_local | z_global."""
        noise = randn_tensor((num_samples, *self.latent_shape), generator=generator, device=self.execution_device,
                             dtype=self.dtype)
        if not self.local_latent_size:
            return noise
        d = self.config.latent_dim
        mean, logvar = self.decoder.local_prior(noise[:, :d])
        return torch.cat([noise[:, :d], mean + (0.5 * logvar).exp() * noise[:, d:]], dim=1)

    def prior_log_prob(self, latents: torch.Tensor) -> torch.Tensor:
        """log p(z), (...,) for latents (..., *latent_shape)."""
        if not self.local_latent_size:
            return standard_normal_log_prob(latents, event_dims=len(self.latent_shape))
        d = self.config.latent_dim
        mean, logvar = self.decoder.local_prior(latents[..., :d])
        log_local = gaussian_log_density(latents[..., d:], mean, logvar).sum(-1)
        return standard_normal_log_prob(latents[..., :d], event_dims=1) + log_local

    def get_last_layer(self) -> torch.Tensor:
        """Weight of the decoder's output layer: where latent diffusion's adaptive GAN weight measures gradients."""
        last = None
        for module in self.decoder.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                last = module
        return last.weight

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained`, from safetensors only (a pickled `pytorch_model.bin` is never read),
        with clear errors for a missing local folder and for a folder that holds another kind of model."""
        if kwargs.get("use_safetensors") is False:
            raise ValueError(f"Expected use_safetensors None or True: {cls.__name__} loads weights from safetensors "
                             f"only (pickled .bin files can run code), got use_safetensors=False.")
        kwargs["use_safetensors"] = True
        if pretrained_model_name_or_path is None:  # from `config=` and `state_dict=` alone: no file to check
            return super().from_pretrained(None, *model_args, **kwargs)
        path = os.fspath(pretrained_model_name_or_path)
        local = os.path.isdir(path)
        looks_local = path.startswith((".", "~", "/")) or path.count("/") > 1 or "\\" in path  # not 'user/name'
        if not local and looks_local:
            raise FileNotFoundError(f"{path}: no such folder; expected a folder written by save_pretrained or a Hub "
                                    f"repo id such as 'user/model'.")
        config_file = os.path.join(path, kwargs.get("subfolder") or "", "config.json")
        if local and os.path.isfile(config_file) and cls.config_class is not None:
            try:
                with open(config_file, encoding="utf-8") as f:
                    model_type = json.load(f).get("model_type")
            except (ValueError, UnicodeDecodeError, AttributeError) as error:
                raise ValueError(f"{config_file}: not a valid JSON object ({error}).") from None
            expected = getattr(cls.config_class, "model_type", None)
            if model_type is not None and expected and model_type != expected:
                raise ValueError(f"{config_file} describes a {model_type!r} model; expected a {expected!r} model "
                                 f"for {cls.__name__} (load it with AutoModel.from_pretrained).")
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except Exception as error:
            # safetensors' own errors ("incomplete metadata, file not fully covered") do not say which file.
            if local and type(error).__name__ == "SafetensorError":
                folder = os.path.join(path, kwargs.get("subfolder") or "")
                names = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
                raise ValueError(f"{os.path.join(folder, names[0]) if len(names) == 1 else folder}: a truncated or "
                                 f"corrupt safetensors file ({error}); expected the complete file written by "
                                 f"save_pretrained.") from None
            raise

    def set_training_step(self, step: int) -> None:
        """Called by the trainer once per optimisation step; variants with schedules (β-VAE capacity) override it."""

    # --------------------------------------------------------------------------------------------------------
    # Input checking
    # --------------------------------------------------------------------------------------------------------
    #: the range the inputs are expected in when the likelihood does not fix one (the KLAE: [-1, 1]); checked
    #: unless `check_input_range` is set to False on the model (for users who know what they are doing)
    input_range: Optional[Tuple[float, float]] = None
    check_input_range: bool = True
    #: False inside `inputs_checked_by_caller()`
    _check_input_values: bool = True

    @contextlib.contextmanager
    def inputs_checked_by_caller(self):
        """Skip the value checks of `check_pixel_values` (range and finiteness: a reduction and a device
        synchronisation per forward) inside the block, for a caller that vouches for its inputs. The trainer
        does: its streams produce values in range by construction, and a NaN or infinity in the inputs makes the
        loss non-finite, which it checks in its one synchronisation per step. Shapes and dtypes are still checked."""
        previous = self._check_input_values
        self._check_input_values = False
        try:
            yield self
        finally:
            self._check_input_values = previous

    def check_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Check the images (or flat data) where they enter the model (`input_checks.check_pixel_values`); return
        them in the model's dtype. Value checks run eagerly, not inside `inputs_checked_by_caller()` or a trace."""
        return check_pixel_values(self, pixel_values, check_values=self._check_input_values)

    def check_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Check latents where they enter `decode`; return them in the model's dtype."""
        return check_latents(self, latents)

    # --------------------------------------------------------------------------------------------------------
    # The universal step
    # --------------------------------------------------------------------------------------------------------
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
        return self._encoder_output(posterior, return_dict)

    def _encoder_output(self, posterior, return_dict: bool):
        return EncoderOutput(latent_dist=posterior) if return_dict else (posterior,)

    @apply_forward_hook
    def decode(self, latents: torch.Tensor, labels: Optional[torch.Tensor] = None, return_dict: bool = True):
        """(B, *latent_shape) -> DecoderOutput(sample=E[x|z] (B, *data_shape), parameters=raw decoder output)."""
        latents = self.check_latents(latents)
        return self._decoder_output(latents, self.embed_condition(labels, latents.shape[0]), return_dict)

    def _decoder_output(self, latents: torch.Tensor, condition: Optional[torch.Tensor], return_dict: bool):
        params = self._decode(latents, condition)
        sample = self.likelihood.mean(params)
        return DecoderOutput(sample=sample, parameters=params) if return_dict else (sample,)

    def forward(
        self,
        pixel_values: torch.Tensor,
        condition: Optional[torch.Tensor] = None,
        return_dict: bool = True,
        sample_posterior: Optional[bool] = None,
        generator: Optional[torch.Generator] = None,
        output_hidden_states: Optional[bool] = None,
        return_loss: bool = True,
        **kwargs,
    ):
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
        condition = self._condition_argument(condition, kwargs)
        if sample_posterior is None:
            sample_posterior = self.training or generator is not None
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        pixel_values = self.check_pixel_values(pixel_values)
        condition = self.embed_condition(condition, pixel_values.shape[0])
        with self._hidden_states_recorded(output_hidden_states) as hidden_states:
            posterior = self._encode(pixel_values, condition)
            latents = self.sample_latent(posterior, generator, sample_posterior)  # (B, ...), or (K, B, ...)
            params = self._decode_samples(latents, condition)
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
            loss=loss,
            reconstruction_loss=reconstruction_loss.mean(),
            regularisation_loss=regularisation,
            reconstruction=self.likelihood.mean(params),
            latents=latents,
            **self.posterior_outputs(posterior),
            **extras,
            **batch_extras,
            **hidden_states,
        ))
        return output if return_dict else output.to_tuple()

    def build_output(self, return_loss: bool, fields: Dict[str, torch.Tensor]):
        """The `forward` output from its fields: `output_class(**fields)` (the loss is always included; the KLAE
        follows diffusers and leaves it out unless asked)."""
        return self.output_class(**fields)

    def _condition_argument(self, condition, kwargs: Dict):
        """`condition`, or its alias `labels`; any other keyword is refused with its name."""
        labels = kwargs.pop("labels", None)
        if kwargs:
            raise TypeError(f"{type(self).__name__}.forward() got unexpected keyword arguments {sorted(kwargs)}; "
                            f"expected pixel_values, condition (or labels), return_dict, sample_posterior, generator, "
                            f"output_hidden_states, return_loss.")
        if labels is not None and condition is not None:
            raise ValueError("Expected either `condition` or its alias `labels`, got both.")
        return condition if condition is not None else labels

    @contextlib.contextmanager
    def _hidden_states_recorded(self, enabled: bool):
        """While the block runs, record the outputs of the encoder's and the decoder's stages (each network's
        `hidden_stages()`); at its end the yielded dict holds `encoder_hidden_states` and `decoder_hidden_states`
        (empty when not enabled)."""
        states: Dict[str, Tuple[torch.Tensor, ...]] = {}
        if not enabled:
            yield states
            return
        recorded = {"encoder": [], "decoder": []}
        handles = [stage.register_forward_hook(lambda module, args, out, part=part: recorded[part].append(out))
                   for part, network in (("encoder", self.encoder), ("decoder", self.decoder))
                   for stage in network.hidden_stages()]
        try:
            yield states
        finally:
            for handle in handles:
                handle.remove()
        states["encoder_hidden_states"] = tuple(recorded["encoder"])
        states["decoder_hidden_states"] = tuple(recorded["decoder"])

    def posterior_outputs(self, posterior) -> Dict[str, torch.Tensor]:
        """The posterior's parameters as output tensors: its mean and log-variance (the code alone for a point
        mass). The VQ-VAE reports its codes instead."""
        if getattr(posterior, "deterministic", False):
            return {"posterior_mean": posterior.mean}
        return {"posterior_mean": posterior.mean, "posterior_logvar": posterior.logvar}

    def push_to_hub(self, repo_id: str, *, commit_message: Optional[str] = None, private: Optional[bool] = None,
                    token=None, revision: Optional[str] = None, **kwargs):
        """Push to the Hub in one commit: weights, config, model code, and, where hf_vae is installed, a model card
        with a preview image (and a diffusers copy under vae/ for the KLAE).

        Where hf_vae is not installed (a model loaded with trust_remote_code) this is transformers' push_to_hub.
        Options that only transformers' push knows (create_pr, max_shard_size, tags, ...) also go there.
        """
        try:
            from hf_vae.integrations.hub import push_model
        except ImportError:
            push_model = None
        if push_model is None or kwargs:
            return super().push_to_hub(repo_id, commit_message=commit_message, private=private, token=token,
                                       revision=revision, **kwargs)
        return push_model(self, repo_id, token=token, private=bool(private), revision=revision,
                          commit_message=commit_message)

    # --------------------------------------------------------------------------------------------------------
    # Sampling and evaluation
    # --------------------------------------------------------------------------------------------------------
    @threads_for_generation  # on the CPU: the intra-op threads the decoding work calls for (thread_policy.py)
    @torch.no_grad()
    def generate(self, num_samples: int, labels=None, generator: Optional[torch.Generator] = None,
                 batch_size: int = 256, **sampling) -> torch.Tensor:
        """Draw z ~ p(z) and return the decoder mean, (num_samples, *data_shape).

        The latents are drawn at once (so the result does not depend on `batch_size`) and decoded `batch_size` at a
        time, so the decoder's activations stay those of one batch. A request whose result cannot fit in the
        memory available is refused before anything is allocated. `sampling` options go to a learned prior
        (`draw_latents`).
        """
        check_count("num_samples", num_samples)
        check_count("batch_size", batch_size)
        per_example = math.prod(self.config.data_shape) + math.prod(self.latent_shape)
        check_fits(f"generate({num_samples})", num_samples * per_example * self.dtype.itemsize, self.execution_device)
        latents = self.draw_latents(num_samples, labels, generator, **sampling).to(self.dtype)
        condition = self.embed_condition(labels, num_samples)
        out = None
        for start in range(0, num_samples, batch_size):
            stop = min(start + batch_size, num_samples)
            chunk = self.likelihood.mean(self._decode(latents[start:stop],
                                                      None if condition is None else condition[start:stop]))
            if out is None:
                out = chunk.new_empty((num_samples, *chunk.shape[1:]))
            out[start:stop] = chunk
        return out

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

    @torch.no_grad()
    def fit_latent_density(self, data, num_components: int = 10, covariance_type: str = "full",
                           batch_size: int = 256, max_examples: Optional[int] = None, max_iter: int = 100,
                           tol: float = 1e-3, reg_covar: float = 1e-6,
                           generator: Optional[torch.Generator] = None) -> GaussianMixtureDensity:
        """Fit a Gaussian mixture to the posterior modes of `data`; `generate` samples from it from then on.

        The ex-post density estimation of Ghosh et al. (2020, sec. 4), for any model (pythae's
        GaussianMixtureSampler). `data`: a tensor (N, *data_shape) or an iterable of batches / {"pixel_values"}
        dicts. The mixture's parameters are buffers of the model and its size goes into the config, so
        `save_pretrained` / `from_pretrained` keep it. `prior_log_prob` and `log_likelihood` still use p(z).
        """
        if self.is_conditional:
            raise NotImplementedError(f"{type(self).__name__} is conditional; an ex-post latent density would "
                                      f"ignore the condition, so it is not offered.")
        latents = encode_dataset(self, data, batch_size, max_examples)
        density = GaussianMixtureDensity(num_components, latents.shape[1], covariance_type)
        density.fit(latents, max_iter=max_iter, tol=tol, reg_covar=reg_covar, generator=generator)
        self.latent_density = density.to(self.device, self.dtype)
        self.config.latent_density_components = num_components
        self.config.latent_density_covariance = covariance_type
        return self.latent_density

    @torch.no_grad()
    def reconstruct(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None,
                    batch_size: int = 256) -> torch.Tensor:
        """Deterministic reconstruction: decode the posterior mode (the nearest codes for VQ), `batch_size`
        examples at a time (the activations stay those of one batch, whatever the size of the input)."""
        check_count("batch_size", batch_size)
        pixel_values = self.check_pixel_values(pixel_values)
        condition = self.embed_condition(labels, pixel_values.shape[0])
        out = None
        for start in range(0, pixel_values.shape[0], batch_size):
            stop = min(start + batch_size, pixel_values.shape[0])
            cond = None if condition is None else condition[start:stop]
            posterior = self._encode(pixel_values[start:stop], cond)
            chunk = self.likelihood.mean(self._decode(posterior.mode(), cond))
            if out is None:
                out = chunk.new_empty((pixel_values.shape[0], *chunk.shape[1:]))
            out[start:stop] = chunk
        return out

    @torch.no_grad()
    def log_likelihood(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, num_samples: int = 1000,
                       chunk_size: int = 100, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Importance-sampled estimate of log p(x) in nats, shape (B,) (Burda et al. 2016, eq. 8):

            log p(x) ≈ log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x),   z_k ~ q(z|x).

        A lower bound in expectation that equals the ELBO at K = 1 and tightens as K grows. `chunk_size`
        importance samples are decoded at a time and folded into a running log-sum-exp, so memory is that of one
        chunk whatever K; K is capped at `MAX_IMPORTANCE_SAMPLES` (the run time grows linearly with it).
        """
        check_count("num_samples", num_samples, MAX_IMPORTANCE_SAMPLES)
        check_count("chunk_size", chunk_size)
        if not self.likelihood.normalised:
            raise NotImplementedError(f"{type(self).__name__} uses an un-normalised pixel loss, so log p(x) is undefined.")
        pixel_values = self.check_pixel_values(pixel_values)
        condition = self.embed_condition(labels, pixel_values.shape[0])
        posterior = self._encode(pixel_values, condition)
        if not hasattr(posterior, "log_prob") or getattr(posterior, "deterministic", False):
            raise NotImplementedError(f"{type(self).__name__}'s posterior has no density; log p(x) needs one.")
        total = None
        for start in range(0, num_samples, chunk_size):
            k = min(chunk_size, num_samples - start)
            eps = randn_tensor((k, *posterior.mean.shape), generator=generator, device=posterior.mean.device,
                               dtype=posterior.mean.dtype)
            latents = posterior.mean + posterior.std * eps  # (k, B, *latent_shape)
            params = self._decode_samples(latents, condition)
            log_px_given_z = -self.likelihood(pixel_values, params)
            log_weights = log_px_given_z + self.prior_log_prob(latents) - posterior.log_prob(latents)
            chunk_total = torch.logsumexp(log_weights, dim=0)
            total = chunk_total if total is None else torch.logaddexp(total, chunk_total)
        return total - math.log(num_samples)
