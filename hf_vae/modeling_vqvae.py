"""The VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning").

    z_e = encoder(x),  k = argmin_j ‖z_e − e_j‖,  z_q = e_k (straight-through),  x̂ = decoder(z_q)
    loss = −log p(x|z_q) + ‖sg[z_e] − e‖² + β‖z_e − sg[e]‖²

The posterior is the point mass on the nearest code; the quantiser (hf_vae.quantizers) computes it together
with the codebook and commitment terms, which are this variant's regulariser. The prior for `generate` is
uniform over codes (a learned prior over code maps is a separate model).
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from transformers import PreTrainedModel  # noqa: F401  (diffusers' pipeline loader finds the loader by this name here)

from .configuration_vqvae import VQVAEConfig
from .modeling_base import AutoencoderOutput, AutoencoderPreTrainedModel, apply_forward_hook
from .quantizers import VectorQuantizedPosterior, VectorQuantizer


@dataclass
class VQVAEOutput(AutoencoderOutput):
    """[`AutoencoderOutput`] plus the quantiser's terms and codebook health.

    Args:
        codebook_loss (`()`): ‖sg[z_e] − e‖² per example (reported even when EMA updates replace it).
        commitment_loss (`()`): ‖z_e − sg[e]‖² per example, before the β weight.
        perplexity (`()`): exp(entropy) of the code distribution on this batch (K when all codes are used evenly).
        codebook_usage (`()`): fraction of the codes used on this batch.
        indices (`(B, h, w)` or `(B, n)`): the code of every latent position.
    """

    codebook_loss: Optional[torch.FloatTensor] = None
    commitment_loss: Optional[torch.FloatTensor] = None
    perplexity: Optional[torch.FloatTensor] = None
    codebook_usage: Optional[torch.FloatTensor] = None
    indices: Optional[torch.LongTensor] = None


class VQVAEModel(AutoencoderPreTrainedModel):
    config_class = VQVAEConfig
    output_class = VQVAEOutput

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
        self.quantizer = VectorQuantizer(
            config.num_embeddings, config.embedding_dim, commitment_cost=config.commitment_cost,
            use_ema=config.use_ema, ema_decay=config.ema_decay, ema_epsilon=config.ema_epsilon,
            kmeans_init=config.kmeans_init, dead_code_threshold=config.dead_code_threshold,
            use_cosine_sim=config.use_cosine_sim, beta_on_codebook=config.beta_on_codebook,
        )
        self.likelihood = self.build_likelihood()
        self.post_init()

    def _init_weights(self, module) -> None:
        super()._init_weights(module)
        if isinstance(module, VectorQuantizer):
            k = module.num_embeddings
            if not module.use_ema:
                torch.nn.init.uniform_(module.embedding.weight, -1.0 / k, 1.0 / k)

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
        """Shape of one example's code map: (h, w) for conv, (n,) for MLP."""
        if self.config.vector_latent:
            return (self.config.latent_dim // self.config.embedding_dim,)
        return self.latent_shape[1:]

    @property
    def latent_shape(self) -> Tuple[int, ...]:
        """The latents are in code space: (embedding_dim, h, w) also when quant convs map to other channels."""
        shape = super().latent_shape
        return (self.config.embedding_dim, *shape[1:]) if self.config.use_quant_conv else shape

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

    def regularisation_loss(self, posterior: VectorQuantizedPosterior, latents) -> Tuple[torch.Tensor, Dict]:
        out = posterior.output
        return out.loss, {
            "codebook_loss": out.codebook_loss.mean(),
            "commitment_loss": out.commitment_loss.mean(),
            "perplexity": out.perplexity,
            "codebook_usage": out.codebook_usage,
            "indices": out.indices,
        }

    def sample_prior(self, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Codes drawn uniformly (the paper's prior while the encoder and decoder are trained)."""
        indices = torch.randint(0, self.config.num_embeddings, (num_samples, *self.code_shape), generator=generator,
                                device=generator.device if generator is not None else self.device)
        return self.indices_to_latents(indices.to(self.device))

    def prior_log_prob(self, latents):
        raise NotImplementedError("The VQ-VAE's prior is over discrete codes; log p(x) is not defined here.")

    # -- code-level API --------------------------------------------------------------------------------------
    def indices_to_latents(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) or (B, n) code indices -> z_q in the decoder's latent layout."""
        if indices.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"Expected integer code indices, got dtype {indices.dtype}.")
        if tuple(indices.shape[1:]) != self.code_shape and self.config.vector_latent:
            raise ValueError(f"Expected indices of shape (B, {self.code_shape[0]}), got {tuple(indices.shape)}.")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.config.num_embeddings):
            raise ValueError(f"Expected code indices in [0, {self.config.num_embeddings}), "
                             f"got values in [{int(indices.min())}, {int(indices.max())}].")
        codes = self.quantizer.lookup(indices.long()).movedim(-1, 1)  # (B, D, ...)
        return self._from_code_layout(codes)

    @torch.no_grad()
    def encode_to_indices(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """(B, C, H, W) -> (B, h, w) code indices (or (B, n) for the MLP backbone)."""
        pixel_values = self.check_pixel_values(pixel_values)
        z_e = self._to_code_layout(self._code_space(self.encoder(pixel_values, None)))
        flat = z_e.movedim(1, -1).reshape(-1, self.config.embedding_dim)
        return self.quantizer.nearest_codes(flat).view(z_e.shape[0], *z_e.shape[2:])

    @torch.no_grad()
    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices -> decoder mean in data space (B, *data_shape)."""
        return self.likelihood.mean(self._decode(self.indices_to_latents(indices), None))

    @apply_forward_hook
    def decode(self, latents: torch.Tensor, labels=None, return_dict: bool = True, force_not_quantize: bool = False):
        """Quantise continuous latents to their nearest codes, then decode (diffusers' VQModel contract, which
        LDMPipeline relies on). `force_not_quantize=True` decodes the latents as given."""
        latents = self.check_latents(latents)
        if not force_not_quantize:
            codes = self._to_code_layout(latents)
            flat = codes.movedim(1, -1).reshape(-1, self.config.embedding_dim)
            indices = self.quantizer.nearest_codes(flat).view(codes.shape[0], *codes.shape[2:])
            latents = self.indices_to_latents(indices).to(latents.dtype)
        return self._decoder_output(latents, None, return_dict)
