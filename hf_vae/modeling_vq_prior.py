"""A learned prior for the VQ-VAE: a transformers GPT-2 or a gated PixelCNN over raster-ordered code maps.

The VQ-VAE is trained with a uniform prior over codes; afterwards an autoregressive model is fit to the codes of
the training data and sampled to generate (van den Oord et al. 2017 use a PixelCNN, taming-transformers a GPT):

    p(z) = Π_{i=1}^{n} p(z_i | z_<i, c),   z = the h×w code map read row by row, c = an optional class

The GPT-2 reads [start or class token, z_1, …, z_{n−1}] and predicts z_1 … z_n. Its likelihood is restricted to
the K codes (the start and class tokens are never predicted), so `log_prob` is a normalised distribution over
code maps, and sampling goes through transformers' `generate` with those tokens suppressed.

With `prior_type="pixelcnn"` the network is a gated PixelCNN (van den Oord et al. 2016; hf_vae.pixelcnn), as the
VQ-VAE paper fit: it reads the code map itself and gives the logits of every z_i given z_<i in one pass. The
likelihood is the same cross-entropy; sampling fills the map in raster order, one pass per code, with the same
temperature, top-k and top-p controls (transformers' logits warpers, in `generate`'s order).
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import math

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, GPT2LMHeadModel, PreTrainedModel
from transformers.generation.logits_process import (
    LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
from transformers.utils import ModelOutput

from .configuration_vq_prior import VQPriorConfig
from .input_checks import is_tracing
from .pixelcnn import GatedPixelCNN

try:  # transformers >= 5 guards initialisers so that weights loaded from a checkpoint are never overwritten
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    init = torch.nn.init


@dataclass
class VQPriorOutput(ModelOutput):
    """Output of [`VQPriorModel.forward`].

    Args:
        loss (`()`): cross-entropy in nats per code, averaged over codes and batch (the training objective).
        nll (`(B,)`): −log p(z) of each code map in nats (summed over its codes).
        logits (`(B, n, K)`): unnormalised log-probabilities of each code given the codes before it.
        hidden_states, attentions: the GPT-2's, with `output_hidden_states` / `output_attentions` (None for the
            PixelCNN).
    """

    loss: Optional[torch.FloatTensor] = None
    nll: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
    attentions: Optional[Tuple[torch.FloatTensor, ...]] = None


class VQPriorModel(PreTrainedModel):
    """GPT-2 or PixelCNN prior over the code maps of a VQ-VAE (`config.prior_type`). Attach it with
    `VQVAEModel.attach_prior` to sample images."""

    config_class = VQPriorConfig
    base_model_prefix = "prior"
    main_input_name = "codes"
    supports_gradient_checkpointing = True
    #: its forward takes no gradient through the network (as the autoencoders declare)
    supports_reentrant_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["GPT2Block"]
    #: the loss is the model's own: transformers' Trainer passes no `num_items_in_batch`
    accepts_loss_kwargs = False

    def __init__(self, config: VQPriorConfig):
        super().__init__(config)
        # One network per prior: `gpt` (GPT-2) or `pixelcnn`; the other attribute is None.
        self.gpt = self.pixelcnn = None
        if config.prior_type == "pixelcnn":
            self.pixelcnn = GatedPixelCNN(
                config.num_embeddings, config.pixelcnn_channels, config.pixelcnn_layers,
                kernel_size=config.pixelcnn_kernel_size, first_kernel_size=config.pixelcnn_first_kernel_size,
                num_classes=config.num_classes)
        else:
            gpt2_config = config.gpt2_config()
            gpt2_config._attn_implementation = config._attn_implementation
            self.gpt = GPT2LMHeadModel(gpt2_config)
            # The head is untied by design (see `VQPriorConfig.gpt2_config`), so GPT-2's declaration that it is tied
            # to the token embedding does not hold here.
            self.gpt._tied_weights_keys = {}
        self.post_init()

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        """transformers' `set_attn_implementation`, passed on to the GPT-2 (whose config is built, not nested)."""
        super().set_attn_implementation(attn_implementation, *args, **kwargs)
        if self.gpt is not None:
            self.gpt.set_attn_implementation(self.config._attn_implementation)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.gpt.get_input_embeddings() if self.gpt is not None else self.pixelcnn.embedding

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        if self.gpt is not None:
            self.gpt.set_input_embeddings(value)
        else:
            self.pixelcnn.embedding = value

    def _init_weights(self, module) -> None:
        # The GPT-2's weights are initialised by transformers with GPT-2's own scheme (N(0, 0.02), residual
        # projections scaled by 1/√(2·n_layer)); only the PixelCNN's modules reach this method: PyTorch's defaults
        # (convolutions Kaiming-uniform, embeddings N(0, 1)), also after a construction on the meta device.
        if isinstance(module, torch.nn.Embedding):
            init.normal_(module.weight)
        elif isinstance(module, torch.nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            init.uniform_(module.bias, -1 / math.sqrt(module.weight[0].numel()), 1 / math.sqrt(module.weight[0].numel()))

    @property
    def is_conditional(self) -> bool:
        return self.config.num_classes is not None

    def set_training_step(self, step: int) -> None:
        """Called by the trainer every step; the prior has no schedule."""

    # -- inputs ----------------------------------------------------------------------------------------------
    def check_codes(self, codes: torch.Tensor) -> None:
        config = self.config
        if not isinstance(codes, torch.Tensor) or codes.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"Expected integer code maps, got {getattr(codes, 'dtype', type(codes).__name__)}.")
        if tuple(codes.shape[1:]) != tuple(config.code_shape):
            raise ValueError(f"Expected code maps of shape (B, {', '.join(map(str, config.code_shape))}) (the prior's "
                             f"code_shape), got {tuple(codes.shape)}.")
        if not is_tracing() and codes.numel() and (codes.min() < 0 or codes.max() >= config.num_embeddings):
            raise ValueError(f"Expected codes in [0, {config.num_embeddings}) (the prior's num_embeddings), got values "
                             f"in [{int(codes.min())}, {int(codes.max())}].")

    def first_tokens(self, batch_size: int, labels=None, device=None) -> torch.LongTensor:
        """(B, 1): the start token, or each example's class token for a class-conditional prior."""
        config = self.config
        device = device if device is not None else self.device
        if not self.is_conditional:
            if labels is not None:
                raise ValueError(f"This prior is unconditional (num_classes=None): expected labels=None, got "
                                 f"{labels if isinstance(labels, int) else type(labels).__name__}.")
            return torch.full((batch_size, 1), config.start_token_id, dtype=torch.long, device=device)
        if labels is None:
            raise ValueError(f"This prior is class-conditional ({config.num_classes} classes): expected `labels`, an "
                             f"int or a (B,) tensor of class indices, got None.")
        labels = torch.as_tensor(labels, device=device)
        if labels.dim() == 0:
            labels = labels.expand(batch_size)
        if labels.shape != (batch_size,) or labels.is_floating_point():
            raise ValueError(f"Expected `labels` to be an int or ({batch_size},) integer class indices, got "
                             f"{labels.dtype} of shape {tuple(labels.shape)}.")
        if not is_tracing() and (labels.min() < 0 or labels.max() >= config.num_classes):
            raise ValueError(f"Expected labels in [0, {config.num_classes}), got values in "
                             f"[{int(labels.min())}, {int(labels.max())}].")
        return (config.num_embeddings + 1 + labels.long()).view(batch_size, 1)

    # -- the likelihood --------------------------------------------------------------------------------------
    def forward(self, codes: torch.Tensor, condition=None, return_dict: bool = True,
                output_hidden_states: Optional[bool] = None, output_attentions: Optional[bool] = None,
                return_loss: bool = True, **kwargs):
        """Cross-entropy of code maps under the prior.

        Args:
            codes: (B, h, w) or (B, n) code indices, e.g. `VQVAEModel.encode_to_indices(x)`.
            condition: (B,) class indices (or one int) for a class-conditional prior; None otherwise. `labels=`
                is accepted as an alias (not a parameter name, so transformers' `Trainer` does not take the class
                for a prediction target).
            output_hidden_states, output_attentions: return the GPT-2's.
            return_loss: accepted for transformers' `Trainer`; the loss is always returned.
        """
        labels = kwargs.pop("labels", None)
        if kwargs:
            raise TypeError(f"VQPriorModel.forward() got unexpected keyword arguments {sorted(kwargs)}.")
        if labels is not None and condition is not None:
            raise ValueError("Expected either `condition` or its alias `labels`, got both.")
        labels = condition if condition is not None else labels
        self.check_codes(codes)
        batch = codes.shape[0]
        targets = codes.reshape(batch, -1).long()
        if self.pixelcnn is not None:
            logits = self.pixelcnn_logits(codes, labels)
            return self._output(logits, targets, None, None, return_dict)
        tokens = torch.cat([self.first_tokens(batch, labels, codes.device), targets[:, :-1]], dim=1)
        config = self.config
        gpt = self.gpt(input_ids=tokens, use_cache=False,
                       output_hidden_states=(output_hidden_states if output_hidden_states is not None
                                             else config.output_hidden_states),
                       output_attentions=output_attentions if output_attentions is not None else config.output_attentions)
        # Only codes are predicted: the start and class tokens' logits are not part of the distribution.
        logits = gpt.logits[..., : self.config.num_embeddings]
        return self._output(logits, targets, gpt.hidden_states, gpt.attentions, return_dict)

    @staticmethod
    def _output(logits, targets, hidden_states, attentions, return_dict):
        nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none").sum(1)
        output = VQPriorOutput(loss=nll.mean() / targets.shape[1], nll=nll, logits=logits,
                               hidden_states=hidden_states, attentions=attentions)
        return output if return_dict else output.to_tuple()

    def pixelcnn_logits(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        """(B, *code_shape) codes -> (B, n, K): the PixelCNN's logits of every code given the codes before it in
        raster order."""
        batch = codes.shape[0]
        labels = self.class_indices(batch, labels, codes.device)
        logits = self.pixelcnn(codes.reshape(batch, *self.config.code_map_shape).long(), labels)
        return logits.flatten(2).transpose(1, 2)

    def class_indices(self, batch_size: int, labels, device) -> Optional[torch.LongTensor]:
        """(B,) class indices of a class-conditional prior (None for an unconditional one), checked as the
        GPT-2's class tokens are."""
        if labels is None and not self.is_conditional:
            return None
        return self.first_tokens(batch_size, labels, device).view(batch_size) - (self.config.num_embeddings + 1)

    def log_prob(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        """log p(z) of each code map, (B,), in nats."""
        return -self(codes, labels=labels).nll

    # -- sampling --------------------------------------------------------------------------------------------
    def generation_config_for(self, temperature: float = 1.0, top_k: Optional[int] = None,
                              top_p: Optional[float] = None) -> GenerationConfig:
        """Ancestral sampling of a whole code map: exactly n new tokens, never a start or class token. With the
        defaults (temperature 1, no top-k, no top-p) the samples follow the prior exactly."""
        config = self.config
        if not temperature > 0:
            raise ValueError(f"Expected `temperature` > 0, got {temperature!r}.")
        if top_k is not None and (not isinstance(top_k, int) or top_k <= 0):
            raise ValueError(f"Expected `top_k` to be a positive int or None, got {top_k!r}.")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"Expected `top_p` in (0, 1] or None, got {top_p!r}.")
        return GenerationConfig(
            do_sample=True, temperature=float(temperature), top_k=top_k or 0, top_p=1.0 if top_p is None else top_p,
            max_new_tokens=config.num_codes, min_new_tokens=config.num_codes,
            suppress_tokens=list(range(config.num_embeddings, config.num_tokens)),
            bos_token_id=config.start_token_id, pad_token_id=config.start_token_id, eos_token_id=None,
            use_cache=True,
        )

    @torch.no_grad()
    def sample_codes(self, num_samples: int, labels=None, generator: Optional[torch.Generator] = None,
                     temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                     generation_config: Optional[GenerationConfig] = None) -> torch.LongTensor:
        """Draw code maps z ~ p(z | c) with transformers' `generate`: (num_samples, *code_shape).

        Args:
            labels: an int or (num_samples,) class indices, required by a class-conditional prior.
            generator: seeds the sampling (transformers' `generate` draws from the global RNG, so it is forked
                and seeded from this generator; the caller's RNG state is left as it was).
            temperature, top_k, top_p: the usual sampling controls (the defaults sample the prior itself).
            generation_config: a full `GenerationConfig` instead of the three controls (it must sample exactly
                n = h·w new tokens); the GPT-2 prior's only.
        """
        if not isinstance(num_samples, int) or num_samples <= 0:
            raise ValueError(f"Expected a positive int `num_samples`, got {num_samples!r}.")
        if self.pixelcnn is not None:
            if generation_config is not None:
                raise ValueError("Expected temperature, top_k and top_p for the PixelCNN prior, got a "
                                 "generation_config (it configures transformers' `generate`, the GPT-2 prior's).")
            return self._sample_pixelcnn(num_samples, labels, generator, temperature, top_k, top_p)
        config = self.config
        first = self.first_tokens(num_samples, labels)
        if generation_config is None:
            generation_config = self.generation_config_for(temperature, top_k, top_p)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if generator is not None:
                torch.manual_seed(int(torch.randint(0, 2**62, (), generator=generator, device=generator.device)))
            tokens = self.gpt.generate(input_ids=first, attention_mask=torch.ones_like(first),
                                       generation_config=generation_config)
        codes = tokens[:, 1:]
        if codes.shape[1] != config.num_codes or (codes >= config.num_embeddings).any():
            raise ValueError(f"The generation config produced {codes.shape[1]} tokens per sample; expected exactly "
                             f"{config.num_codes} codes in [0, {config.num_embeddings}) (set max_new_tokens = "
                             f"min_new_tokens = {config.num_codes} and suppress the tokens >= {config.num_embeddings}).")
        return codes.reshape(num_samples, *config.code_shape)

    def _sample_pixelcnn(self, num_samples, labels, generator, temperature, top_k, top_p) -> torch.LongTensor:
        """Ancestral sampling in raster order: one pass of the PixelCNN per code, each code drawn from its warped
        conditional (temperature, then top-k, then top-p, the order of transformers' `generate`) with `generator`."""
        config = self.config
        settings = self.generation_config_for(temperature, top_k, top_p)  # checks the three controls
        warpers = LogitsProcessorList()
        if settings.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k:
            warpers.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            warpers.append(TopPLogitsWarper(settings.top_p))
        classes = self.class_indices(num_samples, labels, self.device)
        height, width = config.code_map_shape
        codes = torch.zeros(num_samples, height, width, dtype=torch.long, device=self.device)
        draw_on = generator.device if generator is not None else self.device
        for position in range(config.num_codes):
            row, column = divmod(position, width)
            # Row r depends only on rows ≤ r (the convolutions pad above, never below): the rows after it are
            # left out of the pass.
            logits = self.pixelcnn(codes[:, : row + 1], classes)[:, :, row, column].float()
            scores = warpers(codes.view(num_samples, -1), logits)
            probabilities = torch.softmax(scores, dim=-1).to(draw_on)
            drawn = torch.multinomial(probabilities, 1, generator=generator).view(num_samples)
            codes[:, row, column] = drawn.to(self.device)
        return codes.reshape(num_samples, *config.code_shape)
