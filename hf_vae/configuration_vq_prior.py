"""Configuration of the VQ-VAE's learned prior: a GPT-2 or a gated PixelCNN over raster-ordered code maps."""

import math
from typing import Optional, Sequence, Tuple

from transformers import GPT2Config

from .configuration_base import ConfigFieldError, ValidatedConfig, _check, check_positive_int, check_real, reject_likely_typos


#: the networks a code prior can be (`prior_type`)
PRIOR_TYPES = ("gpt2", "pixelcnn")


class VQPriorConfig(ValidatedConfig):
    r"""An autoregressive prior p(z) = Π_i p(z_i | z_<i) over the code maps of a VQ-VAE (van den Oord et al. 2017
    fit a PixelCNN; taming-transformers a GPT). `prior_type` picks the network that reads the codes in raster
    order: a transformers GPT-2 ("gpt2") or a gated PixelCNN (van den Oord et al. 2016, "pixelcnn",
    hf_vae.pixelcnn). Both define the same distribution family and share the likelihood, the sampling controls
    (temperature, top-k, top-p) and the saving inside the VQ-VAE (prior/).

    Token ids: the codes are 0 … K−1, the start token is K, and the class tokens (class-conditional priors only)
    are K+1 … K+C. A sequence is [start or class token, z_1, …, z_n] with n = h·w codes, so the GPT-2 has
    K + 1 + C tokens and n + 1 positions. Only codes are ever predicted: the logits of the other tokens are
    dropped from the likelihood and suppressed when sampling. The PixelCNN reads the code map itself (an (n,) map
    as one row) and takes the class as a bias of its gates.

    Args:
        num_embeddings (`int`, defaults to 512): codebook size K of the VQ-VAE.
        code_shape (`Sequence[int]`, defaults to (7, 7)): shape of one code map, (h, w) for a conv VQ-VAE or (n,)
            for an MLP one, with a last dimension of levels for a residual quantiser ((h, w, depth) or (n, depth)),
            read in raster order.
        num_classes (`int` or None): number of classes C of a class-conditional prior (the sequence starts with
            the class token instead of the start token); None for an unconditional prior.
        n_embd (`int`, defaults to 256), n_layer (`int`, defaults to 4), n_head (`int`, defaults to 8),
        n_inner (`int` or None, defaults to 4·n_embd): GPT-2's width, depth, attention heads and MLP width.
        dropout (`float`, defaults to 0.0): GPT-2's embedding, residual and attention dropout.
        activation_function (`str`, defaults to "gelu_new"), layer_norm_epsilon (`float`, defaults to 1e-5),
        initializer_range (`float`, defaults to 0.02): as in [`GPT2Config`].
        prior_type (`str`, defaults to "gpt2"): the network, "gpt2" or "pixelcnn"; the n_* fields, dropout,
            activation_function, layer_norm_epsilon and initializer_range are the GPT-2's, the pixelcnn_* fields
            the PixelCNN's.
        pixelcnn_channels (`int`, defaults to 64): width of the PixelCNN's vertical and horizontal stacks.
        pixelcnn_layers (`int`, defaults to 8): gated layers of the PixelCNN.
        pixelcnn_kernel_size (`int`, defaults to 3): kernel of the PixelCNN's layers after the first (odd).
        pixelcnn_first_kernel_size (`int`, defaults to 7): kernel of its first layer (odd; the paper's 7×7).
    """

    model_type = "vq_prior"

    def __init__(self, num_embeddings: int = 512, code_shape: Sequence[int] = (7, 7),
                 num_classes: Optional[int] = None, n_embd: int = 256, n_layer: int = 4, n_head: int = 8,
                 n_inner: Optional[int] = None, dropout: float = 0.0, activation_function: str = "gelu_new",
                 layer_norm_epsilon: float = 1e-5, initializer_range: float = 0.02, prior_type: str = "gpt2",
                 pixelcnn_channels: int = 64, pixelcnn_layers: int = 8, pixelcnn_kernel_size: int = 3,
                 pixelcnn_first_kernel_size: int = 7, **kwargs):
        # `layer_norm_eps`, most transformers models' name for the field, is read as `layer_norm_epsilon` (GPT-2's),
        # not kept as an attribute that nothing reads
        alias = kwargs.pop("layer_norm_eps", None)
        if alias is not None:
            if layer_norm_epsilon not in (1e-5, alias):
                raise ConfigFieldError(f"Expected one layer-norm epsilon, got layer_norm_epsilon={layer_norm_epsilon!r} "
                                 f"and its alias layer_norm_eps={alias!r}.")
            layer_norm_epsilon = alias
        self.num_embeddings = num_embeddings
        self.code_shape = [code_shape] if isinstance(code_shape, int) else list(code_shape)
        self.num_classes = num_classes
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_inner = n_inner
        self.dropout = dropout
        self.activation_function = activation_function
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.prior_type = prior_type
        self.pixelcnn_channels = pixelcnn_channels
        self.pixelcnn_layers = pixelcnn_layers
        self.pixelcnn_kernel_size = pixelcnn_kernel_size
        self.pixelcnn_first_kernel_size = pixelcnn_first_kernel_size
        reject_likely_typos(type(self), kwargs)
        super().__init__(**kwargs)
        self.validate_fields()

    # -- the token layout -------------------------------------------------------------------------------------
    @property
    def num_codes(self) -> int:
        """n = h·w, the length of a code map."""
        return math.prod(self.code_shape)

    @property
    def start_token_id(self) -> int:
        return self.num_embeddings

    @property
    def num_tokens(self) -> int:
        """K codes + the start token + C class tokens."""
        return self.num_embeddings + 1 + (self.num_classes or 0)

    @property
    def code_map_shape(self) -> Tuple[int, int]:
        """(h, w) of the map the PixelCNN reads: the code map, or one row of n codes."""
        return tuple(self.code_shape) if len(self.code_shape) == 2 else (1, self.code_shape[0])

    @property
    def network_description(self) -> str:
        """The network in words, for the run's banner and the model card."""
        if self.prior_type == "pixelcnn":
            return (f"gated PixelCNN, {self.pixelcnn_layers} layers of width {self.pixelcnn_channels}, kernels "
                    f"{self.pixelcnn_first_kernel_size} then {self.pixelcnn_kernel_size}")
        return f"GPT-2, {self.n_layer} layers of width {self.n_embd}"

    def class_token_id(self, label: int) -> int:
        return self.num_embeddings + 1 + label

    def gpt2_config(self) -> GPT2Config:
        """The GPT-2 that models the sequences. Its output layer is not tied to the token embedding: the start
        and class tokens are inputs only, and an untied head leaves them out of the weight sharing."""
        return GPT2Config(
            vocab_size=self.num_tokens, n_positions=self.num_codes + 1, n_embd=self.n_embd, n_layer=self.n_layer,
            n_head=self.n_head, n_inner=self.n_inner, activation_function=self.activation_function,
            resid_pdrop=self.dropout, embd_pdrop=self.dropout, attn_pdrop=self.dropout,
            layer_norm_epsilon=self.layer_norm_epsilon, initializer_range=self.initializer_range,
            bos_token_id=self.start_token_id, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False,
        )

    def validate_fields(self) -> None:
        check_positive_int("num_embeddings", self.num_embeddings)
        _check(self.prior_type in PRIOR_TYPES,
               f"Expected `prior_type` to be one of {', '.join(map(repr, PRIOR_TYPES))}, got {self.prior_type!r}.")
        _check(len(self.code_shape) in (1, 2, 3) and all(isinstance(s, int) and s > 0 for s in self.code_shape),
               f"Expected `code_shape` to be (h, w), (n,), (h, w, depth) or (n, depth) positive ints, got "
               f"{self.code_shape!r}.")
        if self.prior_type == "pixelcnn":
            _check(len(self.code_shape) in (1, 2),
                   f"Expected a code map of shape (h, w) or (n,) for the PixelCNN prior (it convolves over a 2-D "
                   f"map), got code_shape {self.code_shape!r}.")
        if self.num_classes is not None:
            check_positive_int("num_classes", self.num_classes)
        for name in ("n_embd", "n_layer", "n_head"):
            check_positive_int(name, getattr(self, name))
        if self.n_inner is not None:
            check_positive_int("n_inner", self.n_inner)
        _check(self.n_embd % self.n_head == 0,
               f"Expected `n_embd` divisible by `n_head` ({self.n_head}), got n_embd={self.n_embd}.")
        check_real("dropout", self.dropout, low=0, high=1, high_open=True)
        check_real("layer_norm_epsilon", self.layer_norm_epsilon, low=0, high=1, low_open=True)
        check_real("initializer_range", self.initializer_range, low=0)
        for name in ("pixelcnn_channels", "pixelcnn_layers"):
            check_positive_int(name, getattr(self, name))
        for name in ("pixelcnn_kernel_size", "pixelcnn_first_kernel_size"):
            size = getattr(self, name)
            _check(isinstance(size, int) and not isinstance(size, bool) and size > 0 and size % 2 == 1,
                   f"Expected `{name}` to be an odd positive int, got {size!r}.")
        _check(isinstance(self.activation_function, str),
               f"Expected `activation_function` to be a name, got {self.activation_function!r}.")
