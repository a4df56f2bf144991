"""The VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning").

    z_e = encoder(x),  k = argmin_j ‖z_e − e_j‖,  z_q = e_k (straight-through),  x̂ = decoder(z_q)
    loss = −log p(x|z_q) + ‖sg[z_e] − e‖² + β‖z_e − sg[e]‖²

The posterior is the point mass on the nearest code; the quantiser (hf_vae.quantizers) computes it together
with the codebook and commitment terms, which are this variant's regulariser.

The prior p(z) is uniform over codes while the autoencoder trains (paper, sec. 3.1); samples from it are noise.
Afterwards an autoregressive prior is fit to the code maps of the data (a GPT-2, hf_vae.modeling_vq_prior) and
attached with `attach_prior`; `generate` then samples from it, `log_likelihood` reports the paper's bound
−log p(x) ≤ −log p(x|z_q) − log p(z_q), and the prior is saved in, and loaded from, the `prior/` subfolder.
"""

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from transformers import PreTrainedModel  # noqa: F401  (diffusers' pipeline loader finds the loader by this name here)

from .configuration_vqvae import VQVAEConfig
from .input_checks import is_tracing
from .modeling_base import AutoencoderOutput, AutoencoderPreTrainedModel
from .modeling_vq_prior import VQPriorModel
from .quantizers import VectorQuantizedPosterior, VectorQuantizer
from .residual_quantization import ResidualVectorQuantizer
from .scalar_quantization import FiniteScalarQuantizer, LookupFreeQuantizer
from .weight_init import init

#: where the learned prior lives, relative to the VQ-VAE's folder or Hub repo
PRIOR_SUBFOLDER = "prior"
#: the model type of the code prior (VQPriorModel's)
PRIOR_MODEL_TYPE = VQPriorModel.config_class.model_type
#: `from_pretrained` arguments that locate files, passed on to the prior's `from_pretrained`
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "proxies", "dtype",
               "torch_dtype")


@dataclass
class VQVAEOutput(AutoencoderOutput):
    """[`AutoencoderOutput`] plus the quantiser's terms and codebook health.

    Args:
        codebook_loss (`()`): ‖sg[z_e] − e‖² per example (reported even when EMA updates replace it).
        commitment_loss (`()`): ‖z_e − sg[e]‖² per example, before the β weight.
        perplexity (`()`): exp(entropy) of the code distribution on this batch (K when all codes are used evenly).
        codebook_usage (`()`): fraction of the codes used on this batch.
        indices (`(B, h, w)` or `(B, n)`): the code of every latent position (with a last dimension of levels,
            coarse to fine, for the residual quantiser).
    """

    codebook_loss: Optional[torch.FloatTensor] = None
    commitment_loss: Optional[torch.FloatTensor] = None
    perplexity: Optional[torch.FloatTensor] = None
    codebook_usage: Optional[torch.FloatTensor] = None
    indices: Optional[torch.LongTensor] = None


class VQVAEModel(AutoencoderPreTrainedModel):
    config_class = VQVAEConfig
    output_class = VQVAEOutput
    #: the residual quantiser's levels are summed: one device
    _no_split_modules = AutoencoderPreTrainedModel._no_split_modules + ["ResidualVectorQuantizer"]

    def __init__(self, config: VQVAEConfig):
        super().__init__(config)
        encoder_out = config.latent_dim if config.vector_latent else \
            config.latent_channels if config.use_quant_conv else config.embedding_dim
        self.encoder, self.decoder = self.build_backbone(encoder_out)
        # taming's VQGAN / diffusers' VQModel: 1x1 convs latent_channels -> codes -> latent_channels.
        self.quant_conv = torch.nn.Conv2d(config.latent_channels, config.embedding_dim, 1) \
            if config.use_quant_conv else None
        self.post_quant_conv = torch.nn.Conv2d(config.embedding_dim, config.latent_channels, 1) \
            if config.use_quant_conv else None
        self.quantizer = self.build_quantizer()
        self.likelihood = self.build_likelihood()
        self.prior = None  # a VQPriorModel once attached (a submodule then: it follows .to(), .eval(), ...)
        self.post_init()

    def build_quantizer(self) -> torch.nn.Module:
        """The quantiser (a family with its own, the HRQ-VAE, overrides this)."""
        return build_quantizer(self.config)

    def _init_weights(self, module) -> None:
        super()._init_weights(module)
        if isinstance(module, (FiniteScalarQuantizer, LookupFreeQuantizer)):  # grids, not weights: constants
            for name, value in module.constant_buffers().items():
                init.copy_(getattr(module, name), value)
        if isinstance(module, VectorQuantizer):
            # As the quantiser's constructor: codes uniform in ±1/K; the EMA statistics consistent with them (each
            # code counted once, at itself); every code in use; k-means still to run when it is asked for. An EMA
            # codebook drawn by the constructor is kept (drawing it again would shift every later random draw).
            k = module.num_embeddings
            if not (module.use_ema and module.codebook_drawn):
                init.uniform_(module.embedding.weight, -1.0 / k, 1.0 / k)
            if module.use_ema:
                init.ones_(module.ema_cluster_size)
                init.copy_(module.ema_embed_sum, module.embedding.weight)
            init.ones_(module.code_usage)
            init.constant_(module.initialized, not module.kmeans_init)

    # -- vector latents of the MLP backbone are read as (B, D, n): n codes of dimension D ---------------------
    def _to_code_layout(self, latents: torch.Tensor) -> torch.Tensor:
        if self.config.vector_latent:
            return latents.view(latents.shape[0], -1, self.config.embedding_dim).transpose(1, 2)
        return latents

    def _from_code_layout(self, codes: torch.Tensor) -> torch.Tensor:
        if self.config.vector_latent:
            return codes.transpose(1, 2).reshape(codes.shape[0], -1)
        return codes

    @property
    def code_shape(self) -> Tuple[int, ...]:
        """Shape of one example's code map: (h, w) for conv, (n,) for MLP, with the residual quantiser's levels as a
        last dimension ((h, w, depth) or (n, depth)); a code prior reads it as a sequence in raster order, a
        position's levels coarse to fine."""
        if self.config.vector_latent:
            positions = (self.config.latent_dim // self.config.embedding_dim,)
        else:
            positions = tuple(self.latent_shape[1:])
        return positions + ((self.code_levels,) if self.code_levels > 1 else ())

    @property
    def code_levels(self) -> int:
        """Codes per position: the residual quantiser's levels, each with its own codebook (1 otherwise)."""
        return self.config.num_quantizers if self.config.quantizer == "rvq" else 1

    @property
    def latent_map_channels(self) -> int:
        """The latents are in code space: embedding_dim channels, also when quant convs map to other channels."""
        return self.config.embedding_dim if self.config.use_quant_conv else self.config.latent_channels

    def _code_space(self, encoder_output: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(encoder_output) if self.quant_conv is not None else encoder_output

    # -- the pluggable pieces --------------------------------------------------------------------------------
    def _decode(self, latents: torch.Tensor, condition: Optional[torch.Tensor]) -> torch.Tensor:
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents, condition)

    def posterior(self, encoder_output: torch.Tensor) -> VectorQuantizedPosterior:
        output = self.quantizer(self._to_code_layout(self._code_space(encoder_output)))
        output.quantized = self._from_code_layout(output.quantized)
        return VectorQuantizedPosterior(output, self.config.num_embeddings)

    def posterior_outputs(self, posterior: VectorQuantizedPosterior) -> Dict[str, torch.Tensor]:
        return {}  # the codes go out as `indices`, and the quantised latents as `latents`

    def regularisation_loss(self, posterior: VectorQuantizedPosterior, latents) -> Tuple[torch.Tensor, Dict]:
        out = posterior.output
        return out.loss, {
            "codebook_loss": out.codebook_loss.mean(),
            "commitment_loss": out.commitment_loss.mean(),
            "perplexity": out.perplexity,
            "codebook_usage": out.codebook_usage,
            "indices": out.indices,
        }

    def sample_prior(self, num_samples: int, generator: Optional[torch.Generator] = None, labels=None,
                     **sampling) -> torch.Tensor:
        """z_q ~ p(z): code maps from the attached prior (`sampling`: temperature, top_k, top_p,
        generation_config; `labels` for a class-conditional prior), else uniform codes (the paper's prior while the
        encoder and decoder are trained: a warning says that such samples are noise)."""
        if self.prior is not None:
            indices = self.prior.sample_codes(num_samples, labels=labels, generator=generator, **sampling)
            return self.indices_to_latents(indices.to(self.execution_device))
        if sampling:
            raise ValueError(f"{sorted(sampling)} apply to a learned prior, and this VQ-VAE has none: attach one "
                             f"with `attach_prior` (train it with scripts/train.py --model vq_prior --vqvae DIR).")
        warnings.warn("This VQ-VAE has no learned prior: `generate` draws codes uniformly, and its samples are noise, "
                      "not images like the data. Train a prior (scripts/train.py --model vq_prior --vqvae DIR) and "
                      "load the result, or attach one with `attach_prior`.", UserWarning, stacklevel=5)
        indices = torch.randint(0, self.config.num_embeddings, (num_samples, *self.code_shape), generator=generator,
                                device=generator.device if generator is not None else self.execution_device)
        return self.indices_to_latents(indices.to(self.execution_device))

    def prior_log_prob(self, latents):
        raise NotImplementedError("The VQ-VAE's prior is over discrete codes: use `likelihood_bound(x)` for the "
                                  "bound on log p(x), or `prior.log_prob(codes)`.")

    # -- the learned prior -----------------------------------------------------------------------------------
    @property
    def is_conditional(self) -> bool:
        """Whether `generate` needs labels: the case for a class-conditional prior."""
        return self.prior is not None and self.prior.is_conditional

    @property
    def num_classes(self) -> Optional[int]:
        return self.prior.config.num_classes if self.prior is not None else None

    def embed_condition(self, labels, batch_size: int):
        # Labels condition a class-conditional prior only; the encoder and decoder take none.
        return None if self.is_conditional else super().embed_condition(labels, batch_size)

    def attach_prior(self, prior: Optional[VQPriorModel]) -> "VQVAEModel":
        """Attach a prior over this VQ-VAE's code maps (or detach it with None); returns the model.

        The prior must model this codebook (`num_embeddings`) and code maps of this shape (`code_shape`).
        """
        if prior is not None:
            config = getattr(prior, "config", None)
            if getattr(config, "model_type", None) != PRIOR_MODEL_TYPE or not hasattr(prior, "sample_codes"):
                raise ValueError(f"Expected a VQPriorModel (model_type {PRIOR_MODEL_TYPE!r}), got {type(prior).__name__} with "
                                 f"model_type {getattr(config, 'model_type', None)!r}.")
            if config.num_embeddings != self.config.num_embeddings:
                raise ValueError(f"The prior models {config.num_embeddings} codes but this VQ-VAE has a codebook of "
                                 f"{self.config.num_embeddings}: expected a prior with num_embeddings="
                                 f"{self.config.num_embeddings}.")
            if tuple(config.code_shape) != tuple(self.code_shape):
                raise ValueError(f"The prior models code maps of shape {tuple(config.code_shape)} but this VQ-VAE's are "
                                 f"{tuple(self.code_shape)}: expected a prior with code_shape={list(self.code_shape)}.")
            prior = prior.to(self.device)
        self.prior = prior
        return self

    def draw_latents(self, num_samples: int, labels=None, generator: Optional[torch.Generator] = None,
                     **sampling) -> torch.Tensor:
        """Code maps from the prior, as latents: `generate(num_samples, labels, generator, **sampling)` decodes them.

        Args:
            labels: an int or (num_samples,) class indices, for a class-conditional prior.
            sampling: temperature, top_k, top_p or generation_config, passed to transformers' `generate` of the
                attached prior (`VQPriorModel.sample_codes`); the defaults sample the prior itself.
        """
        return self.sample_prior(num_samples, generator, labels, **sampling)

    @torch.no_grad()
    def likelihood_bound(self, pixel_values: torch.Tensor, labels=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The two terms of the VQ-VAE's bound on the negative log-likelihood, each (B,) in nats:

            −log p(x) ≤ −log p(x|z_q) − log p(z_q)

        since p(x) = Σ_z p(x|z) p(z) ≥ p(x|z_q) p(z_q). It is the negative ELBO of the point-mass posterior on
        z_q, whose entropy is zero (paper, sec. 3.1). Returns (−log p(x|z_q), −log p(z_q)); without a learned
        prior the second term is the uniform prior's n·log K.
        """
        self.check_pixel_values(pixel_values)
        return self._bound_terms(pixel_values, self._encode(pixel_values, None), labels)

    def _bound_terms(self, pixel_values: torch.Tensor, posterior: VectorQuantizedPosterior, labels):
        reconstruction_nll = self.likelihood(pixel_values, self._decode(posterior.mode(), None))
        if self.prior is None:
            return reconstruction_nll, posterior.kl()
        return reconstruction_nll, self.prior(posterior.indices, labels=labels).nll.to(reconstruction_nll.dtype)

    def estimate_log_likelihood(self, pixel_values, posterior, condition, labels, num_samples, chunk_size,
                                generator) -> torch.Tensor:
        """The bound log p(x|z_q) + log p(z_q) on log p(x) (see `likelihood_bound`). The posterior is a point mass,
        so every importance sample is z_q and `num_samples` changes nothing."""
        reconstruction_nll, code_nll = self._bound_terms(pixel_values, posterior, labels)
        return -(reconstruction_nll + code_nll)

    # -- saving and loading, with the prior in prior/ --------------------------------------------------------
    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained`, with the attached prior in `save_directory/prior/` (its config.json,
        weights and code) and left out of the VQ-VAE's own weights. A prior saved there earlier is replaced, or
        removed when none is attached, so the folder always describes this model."""
        is_main = kwargs.get("is_main_process", True)
        prior_dir = os.path.join(save_directory, PRIOR_SUBFOLDER)
        if is_main and os.path.isdir(prior_dir):
            if not _is_saved_prior(prior_dir):
                raise ValueError(f"{prior_dir} exists and is not a saved VQ prior (no config.json with model_type "
                                 f"{PRIOR_MODEL_TYPE!r}): expected to write the prior there; move that folder first.")
            shutil.rmtree(prior_dir)
        if self.prior is None:
            return super().save_pretrained(save_directory, *args, **kwargs)
        if is_main:
            # Written first: with push_to_hub=True, transformers uploads the folder's new entries in one commit.
            passed = {k: kwargs[k] for k in ("max_shard_size", "variant", "safe_serialization") if k in kwargs}
            self.prior.save_pretrained(prior_dir, **passed)
        state_dict = kwargs.pop("state_dict", None)
        if state_dict is None:
            state_dict = self.state_dict()
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(f"{PRIOR_SUBFOLDER}.")}
        return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, load_prior: bool = True, **kwargs):
        """transformers' `from_pretrained`, which also attaches the prior saved in the `prior/` subfolder (of the
        folder or Hub repo) when there is one. `load_prior=False` loads the autoencoder alone."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if load_prior and pretrained_model_name_or_path is not None:
            prior = _load_prior(str(pretrained_model_name_or_path), kwargs)
            if prior is not None:
                model.attach_prior(prior)
        return loaded

    # -- code-level API --------------------------------------------------------------------------------------
    def indices_to_latents(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) or (B, n) code indices -> z_q in the decoder's latent layout."""
        if indices.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"Expected integer code indices, got dtype {indices.dtype}.")
        if tuple(indices.shape[1:]) != self.code_shape and self.config.vector_latent:
            raise ValueError(f"Expected indices of shape (B, {self.code_shape[0]}), got {tuple(indices.shape)}.")
        if not is_tracing() and indices.numel() and (indices.min() < 0 or indices.max() >= self.config.num_embeddings):
            raise ValueError(f"Expected code indices in [0, {self.config.num_embeddings}), "
                             f"got values in [{int(indices.min())}, {int(indices.max())}].")
        codes = self.quantizer.lookup(indices.long()).movedim(-1, 1)  # (B, D, ...)
        return self._from_code_layout(codes)

    @torch.no_grad()
    def encode_to_indices(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """(B, C, H, W) -> (B, h, w) code indices (or (B, n) for the MLP backbone)."""
        pixel_values = self.check_pixel_values(pixel_values)
        z_e = self._to_code_layout(self._code_space(self.encoder(pixel_values, None)))
        return self.quantizer.quantize_indices(z_e)

    @torch.no_grad()
    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices -> decoder mean in data space (B, *data_shape)."""
        return self.likelihood.mean(self._decode(self.indices_to_latents(indices), None))

    def decoder_latents(self, latents: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """`decode` quantises continuous latents to their nearest codes first (diffusers' VQModel contract, which
        LDMPipeline relies on); `decode(z, force_not_quantize=True)` decodes the latents as given."""
        if force_not_quantize:
            return latents
        codes = self._to_code_layout(latents)
        flat = codes.movedim(1, -1).reshape(-1, self.config.embedding_dim)
        indices = self.quantizer.nearest_codes(flat)
        indices = indices.view(codes.shape[0], *codes.shape[2:], *indices.shape[1:])  # (+ RVQ's levels)
        return self.indices_to_latents(indices).to(latents.dtype)


def build_quantizer(config: VQVAEConfig) -> torch.nn.Module:
    """The quantiser `config.quantizer` names; all four share `VectorQuantizer`'s interface."""
    if config.quantizer == "fsq":
        return FiniteScalarQuantizer(config.fsq_levels)
    if config.quantizer == "lfq":
        return LookupFreeQuantizer(config.embedding_dim, entropy_weight=config.lfq_entropy_weight)
    codebook = dict(
        commitment_cost=config.commitment_cost, use_ema=config.use_ema, ema_decay=config.ema_decay,
        ema_epsilon=config.ema_epsilon, kmeans_init=config.kmeans_init, dead_code_threshold=config.dead_code_threshold,
        use_cosine_sim=config.use_cosine_sim, beta_on_codebook=config.beta_on_codebook,
        orthogonal_reg_weight=config.orthogonal_reg_weight)
    if config.quantizer == "rvq":
        return ResidualVectorQuantizer(config.num_quantizers, config.num_embeddings, config.embedding_dim,
                                       codebook_dim=config.codebook_dim, rotation_trick=config.rotation_trick,
                                       **codebook)
    return VectorQuantizer(config.num_embeddings, config.embedding_dim, codebook_dim=config.codebook_dim,
                           rotation_trick=config.rotation_trick, **codebook)


def _is_saved_prior(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "config.json")) as f:
            return json.load(f).get("model_type") == PRIOR_MODEL_TYPE
    except (OSError, ValueError):
        return False


def _load_prior(source: str, kwargs: Dict) -> Optional[VQPriorModel]:
    """The prior in `source`'s prior/ subfolder (a local folder or a Hub repo), or None where there is none. A prior
    whose weights do not all load is an error, not a silently random prior."""
    from transformers.utils import cached_file

    subfolder = "/".join(part for part in (kwargs.get("subfolder") or "", PRIOR_SUBFOLDER) if part)
    hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs and k not in ("dtype", "torch_dtype")}
    found = cached_file(source, "config.json", subfolder=subfolder, _raise_exceptions_for_missing_entries=False,
                        _raise_exceptions_for_connection_errors=False, **hub)
    if found is None:
        return None
    dtype = {k: kwargs[k] for k in ("dtype", "torch_dtype") if k in kwargs}
    prior, info = VQPriorModel.from_pretrained(source, subfolder=subfolder, output_loading_info=True,
                                               use_safetensors=True, **hub, **dtype)  # never a pickle
    problems = {kind: list(info.get(kind) or ()) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        raise ValueError(f"The prior in {source}/{subfolder} does not match its config: {problems}. Expected every "
                         f"weight of the prior in its checkpoint.")
    return prior.eval()
