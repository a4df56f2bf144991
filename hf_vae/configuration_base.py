"""Configuration fields shared by the VAE, β-VAE, VQ-VAE and CVAE.

A config describes the data (`in_channels`, `image_size`), the backbone and the decoder likelihood; each
variant's config adds its own fields. Every field is checked on construction, with an error that names
the field, what was expected and what was given.
"""

import difflib
import inspect
import math
from typing import Any, Dict, Optional, Sequence

from transformers import PretrainedConfig

from .data_contract import LIKELIHOODS

BACKBONES = ("mlp", "conv", "burgess")
ACT_FNS = ("silu", "swish", "gelu", "relu", "mish")
DEFAULT_MLP_LATENT_DIM = 32


class ConfigFieldError(ValueError):
    """A config field holds a value it cannot take: a usage error, wherever the value came from (constructor,
    config.json, a flag, a config file)."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigFieldError(message)


def check_positive_int(name: str, value) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and value > 0,
           f"Expected `{name}` to be a positive int, got {value!r}"
           f"{f' (a {type(value).__name__})' if not isinstance(value, (int, float)) else ''}.")


def check_real(name: str, value, low: Optional[float] = None, high: Optional[float] = None,
               low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
    """`value` is a finite real number (not a string, not a bool, not inf/NaN) within the bounds given."""
    if optional and value is None:
        return
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high}")
    expected = f"Expected `{name}` to be a finite number{' ' + ' and '.join(bounds) if bounds else ''}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigFieldError(f"{expected}, got {value!r} (a {type(value).__name__}).")
    _check(math.isfinite(value), f"{expected}, got {value!r}.")
    _check(low is None or (value > low if low_open else value >= low), f"{expected}, got {value!r}.")
    _check(high is None or (value < high if high_open else value <= high), f"{expected}, got {value!r}.")


def check_bool(name: str, value) -> None:
    _check(isinstance(value, bool), f"Expected `{name}` to be True or False, got {value!r} (a {type(value).__name__}).")


def check_positive_ints(name: str, values, allow_empty: bool = False) -> None:
    """A list of positive ints (not bools: `[True]` is not a width), non-empty unless `allow_empty`."""
    ok = isinstance(values, (list, tuple)) and (allow_empty or len(values) > 0) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    _check(ok, f"Expected `{name}` to be a {'' if allow_empty else 'non-empty '}list of positive ints, got {values!r}.")


def check_vector_latent(config, what: str) -> None:
    """`config` has a vector latent without a local latent map, which `what` (e.g. "the flows") needs."""
    _check(config.vector_latent and not config.local_latent_channels,
           f"Expected a vector latent for {what} (backbone 'mlp' or 'burgess', local_latent_channels 0), got "
           f"backbone={config.backbone!r}, latent_dim={config.latent_dim!r}, "
           f"local_latent_channels={config.local_latent_channels}.")


#: a likelihood scale outside this range is a typo: its log underflows the loss (1e-300) or flattens it (1e300)
LIKELIHOOD_SCALE_RANGE = (1e-6, 1e6)


def _init_fields(config_class) -> set:
    """The keyword arguments of `config_class.__init__` and of its bases' (the config's own fields)."""
    names = set()
    for klass in config_class.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= {n for n, p in inspect.signature(init).parameters.items()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}
    return names


#: other architectures' names of a norm's epsilon: transformers' own tools set them on any config (its test suite's
#: `set_config_for_less_flaky_test`), so they are not typos of a field of ours
OTHER_ARCHITECTURES_FIELDS = {"rms_norm_eps", "post_norm_eps", "layer_norm_eps", "norm_eps", "norm_epsilon",
                              "batch_norm_eps"}


def reject_likely_typos(config_class, kwargs: Dict[str, Any]) -> None:
    """A key that is not a field but is close to one ("likelyhood") would be kept as an unused attribute and the
    field silently defaulted: refuse it, naming the closest field. Keys far from every field (transformers'
    own, such as `architectures`) pass."""
    fields = _init_fields(config_class) - {"kwargs"}
    known = (fields | set(vars(PretrainedConfig())) | {"transformers_version", "architectures", "auto_map"}
             | OTHER_ARCHITECTURES_FIELDS)
    for key in kwargs:
        if key in known or key.startswith("_"):
            continue
        close = difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.8)
        if close:
            raise ConfigFieldError(f"Unknown {config_class.__name__} field {key!r}: likely a typo of {close[0]!r} "
                             f"(expected one of the config's fields; {close[0]!r} would otherwise silently keep "
                             f"its default).")


class ValidatedConfig(PretrainedConfig):
    """A config whose fields are checked however it is made: the constructor, and `from_pretrained` /
    `from_dict` with overrides (`from_pretrained(path, dropout=5.0)`), which transformers applies with setattr
    after construction."""

    #: whether the latent is a map of codebook entries (the data contract: such a model trains on 8-bit data)
    quantized = False

    def __init__(self, **kwargs):  # no fields of its own (transformers would otherwise generate an __init__)
        super().__init__(**kwargs)

    def validate_fields(self) -> None:  # each config checks its fields
        pass

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        result = super().from_dict(config_dict, **kwargs)
        config = result[0] if isinstance(result, tuple) else result
        config.validate_fields()
        return result


class AutoencoderConfig(ValidatedConfig):
    r"""Shared fields of the image/vector autoencoders.

    Args:
        in_channels (`int`, defaults to 1): channels of the images, or features of flat data when `image_size` is None.
        image_size (`int` or None, defaults to 28): side of the square images; None for flat (B, in_channels) data.
        backbone (`str`, defaults to "mlp"): "mlp" (images flattened), "conv" (diffusers-style ResNet blocks) or
            "burgess" (Burgess et al. 2018's β-VAE network: plain stride-2 convolutions, then dense layers).
        hidden_dims (`Sequence[int]`, defaults to (512, 512)): hidden sizes of the MLP encoder, or of the dense
            layers after the "burgess" convolutions (the decoder mirrors them).
        latent_dim (`int` or None): size of a vector latent. The MLP and "burgess" backbones always have one
            (default 32). With the conv backbone, None gives a spatial latent (B, latent_channels, H/f, W/f); an int
            adds a dense bottleneck after the conv stack.
        block_out_channels (`Sequence[int]`, defaults to (32, 64)): conv channels per resolution; f = 2^(len − 1)
            ("burgess": channels of each stride-2 convolution, f = 2^len).
        layers_per_block (`int`, defaults to 1): ResNet blocks per resolution in the encoder (decoder: one more).
        norm_num_groups (`int`, defaults to 8): GroupNorm groups; must divide every entry of `block_out_channels`.
        mid_block_add_attention (`bool`, defaults to True): self-attention in the conv mid block.
        latent_channels (`int`, defaults to 4): channels of a spatial conv latent (or of the map before the dense
            bottleneck).
        act_fn (`str`, defaults to "relu" for MLP, "silu" for conv).
        likelihood (`str`, defaults to "bernoulli"): p(x|z). "bernoulli" expects data in [0, 1] and decodes
            probabilities; "gaussian" and "laplace" accept any real data (use [-1, 1]) and decode the mean/location;
            "discretized_logistic" models the 256 levels of 8-bit images in [-1, 1] (PixelCNN++) and decodes the
            location.
        likelihood_scale (`float`, defaults to 1.0): σ (Gaussian), b (Laplace) or s (logistic), or its initial
            value if learned.
        learn_likelihood_scale (`bool`, defaults to False): learn one log-scale per channel.
        dropout (`float`, defaults to 0.0): dropout in the conv ResNet blocks.
        local_latent_channels (`int`, defaults to 0): "burgess" only: channels of a second, spatial latent under
            the vector one, a `local_latent_channels` x s x s grid at the resolution of the last-but-one
            convolution (s = 8 for 64x64 images and four convolutions). Its prior is conditional,
            p(z_local | z) = N(μ(z), diag σ²(z)) computed by the decoder, so that z carries what is global and the
            grid what is local (corners). 0: a single vector latent.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: Optional[int] = 28,
        backbone: str = "mlp",
        hidden_dims: Sequence[int] = (512, 512),
        latent_dim: Optional[int] = None,
        block_out_channels: Sequence[int] = (32, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        mid_block_add_attention: bool = True,
        latent_channels: int = 4,
        act_fn: Optional[str] = None,
        likelihood: str = "bernoulli",
        likelihood_scale: float = 1.0,
        learn_likelihood_scale: bool = False,
        dropout: float = 0.0,
        local_latent_channels: int = 0,
        **kwargs,
    ):
        self.in_channels = in_channels
        self.image_size = image_size
        self.backbone = backbone
        self.hidden_dims = list(hidden_dims)
        if latent_dim is None and backbone in ("mlp", "burgess"):
            latent_dim = DEFAULT_MLP_LATENT_DIM
        self.latent_dim = latent_dim
        self.block_out_channels = list(block_out_channels)
        self.layers_per_block = layers_per_block
        self.norm_num_groups = norm_num_groups
        self.mid_block_add_attention = mid_block_add_attention
        self.latent_channels = latent_channels
        self.act_fn = act_fn if act_fn is not None else ("silu" if backbone == "conv" else "relu")
        self.likelihood = likelihood
        self.likelihood_scale = likelihood_scale
        self.learn_likelihood_scale = learn_likelihood_scale
        self.dropout = dropout
        self.local_latent_channels = local_latent_channels
        reject_likely_typos(type(self), kwargs)
        super().__init__(**kwargs)
        self.validate_fields()

    # ------------------------------------------------------------------------------------------------------
    @property
    def data_shape(self) -> tuple:
        """Shape of one example: (C, H, W) for images, (D,) for flat data."""
        if self.image_size is None:
            return (self.in_channels,)
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def downsampling_factor(self) -> int:
        if self.backbone == "burgess":
            return 2 ** len(self.block_out_channels)
        return 2 ** (len(self.block_out_channels) - 1) if self.backbone == "conv" else 1

    @property
    def local_latent_shape(self) -> Optional[tuple]:
        """(C, s, s) of the local latent, at the last-but-one convolution's resolution; None without one."""
        channels = getattr(self, "local_latent_channels", 0)
        if not channels:
            return None
        side = 2 * self.image_size // self.downsampling_factor
        return (channels, side, side)

    @property
    def vector_latent(self) -> bool:
        return self.backbone in ("mlp", "burgess") or self.latent_dim is not None

    def validate_fields(self) -> None:
        check_positive_int("in_channels", self.in_channels)
        _check(self.backbone in BACKBONES, f"Expected `backbone` in {BACKBONES}, got {self.backbone!r}.")
        _check(self.likelihood in LIKELIHOODS, f"Expected `likelihood` in {LIKELIHOODS}, got {self.likelihood!r}.")
        _check(self.act_fn in ACT_FNS, f"Expected `act_fn` in {ACT_FNS}, got {self.act_fn!r}.")
        check_real("likelihood_scale", self.likelihood_scale, low=0, low_open=True)
        low, high = LIKELIHOOD_SCALE_RANGE
        _check(low <= self.likelihood_scale <= high,
               f"Expected `likelihood_scale` in [{low:g}, {high:g}] (beyond, its log underflows or flattens the "
               f"likelihood), got {self.likelihood_scale!r}.")
        check_real("dropout", self.dropout, low=0, high=1, high_open=True)
        check_bool("learn_likelihood_scale", self.learn_likelihood_scale)
        check_bool("mid_block_add_attention", self.mid_block_add_attention)
        if self.image_size is not None:
            check_positive_int("image_size", self.image_size)
        if self.latent_dim is not None:
            check_positive_int("latent_dim", self.latent_dim)
        channels = self.local_latent_channels
        _check(isinstance(channels, int) and not isinstance(channels, bool) and channels >= 0,
               f"Expected `local_latent_channels` to be an int >= 0, got {channels!r}.")
        _check(channels == 0 or (self.backbone == "burgess" and len(self.block_out_channels) >= 2),
               f"Expected `local_latent_channels` = 0 unless backbone='burgess' with at least two convolutions "
               f"(the local latent sits at the last-but-one one's resolution), got local_latent_channels={channels} "
               f"with backbone={self.backbone!r} and block_out_channels={self.block_out_channels!r}.")
        # every field is checked, also where this backbone does not read it: a bad value is never kept silently
        check_positive_ints("hidden_dims", self.hidden_dims, allow_empty=self.backbone != "mlp")
        check_positive_ints("block_out_channels", self.block_out_channels)
        check_positive_int("layers_per_block", self.layers_per_block)
        check_positive_int("norm_num_groups", self.norm_num_groups)
        check_positive_int("latent_channels", self.latent_channels)
        if self.backbone == "mlp":
            return
        # conv and burgess backbones
        _check(self.image_size is not None,
               f"The {self.backbone} backbone needs images: expected an int `image_size`, got None (flat data needs "
               f"backbone='mlp').")
        if self.backbone == "burgess":
            factor = self.downsampling_factor
            _check(self.image_size % factor == 0,
                   f"Expected `image_size` divisible by 2^len(block_out_channels) = {factor} (one stride-2 "
                   f"convolution per entry), got image_size={self.image_size}.")
            return
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        _check(not bad, f"Expected every entry of `block_out_channels` to be divisible by norm_num_groups="
                        f"{self.norm_num_groups}, got {self.block_out_channels} ({bad} are not).")
        factor = self.downsampling_factor
        _check(self.image_size % factor == 0,
               f"Expected `image_size` divisible by the down-sampling factor {factor} "
               f"(2^(len(block_out_channels) - 1)), got image_size={self.image_size}.")
