"""Configuration of the KL autoencoder of latent diffusion (Rombach et al. 2022), Stable Diffusion's VAE.

Field names and defaults are those of diffusers' `AutoencoderKL`, so a diffusers `config.json` loads as is.
"""

from typing import Optional, Sequence


from .configuration_base import (
    ACT_FNS,
    ValidatedConfig,
    _check,
    check_bool,
    check_positive_int,
    check_real,
    reject_likely_typos,
)


class KLAEConfig(ValidatedConfig):
    r"""
    Args:
        in_channels (`int`, defaults to 3), out_channels (`int`, defaults to 3): image channels.
        down_block_types, up_block_types: kept for diffusers compatibility; only "DownEncoderBlock2D" /
            "UpDecoderBlock2D" exist in this architecture.
        block_out_channels (`Sequence[int]`, defaults to (64,)): channels per resolution; the latent is
            f = 2^(len − 1) times smaller than the image (SD-1.x: (128, 256, 512, 512), f = 8).
        layers_per_block (`int`, defaults to 1): ResNet blocks per resolution (SD: 2).
        act_fn (`str`, defaults to "silu"): activation of the ResNet blocks.
        norm_num_groups (`int`, defaults to 32): GroupNorm groups; must divide every entry of `block_out_channels`.
        latent_channels (`int`, defaults to 4): channels of the latent (SD3 and Flux: 16).
        sample_size (`int`, defaults to 32): nominal image size; used for tiling and `generate`.
        scaling_factor (`float`, defaults to 0.18215): diffusion models see (z − shift_factor) · scaling_factor
            (SDXL 0.13025, SD3 1.5305, Flux 0.3611).
        shift_factor (`float`, optional): SD3 0.0609, Flux 0.1159.
        latents_mean, latents_std (optional per-channel statistics used by some SDXL pipelines).
        force_upcast (`bool`, defaults to True): pipelines run this VAE in float32 even when the rest is fp16.
        use_quant_conv, use_post_quant_conv (`bool`, default True): the 1x1 convs around the latent (Flux: False).
        mid_block_add_attention (`bool`, defaults to True): self-attention in the mid blocks (over every latent
            position, so its cost grows with the square of (H/f)·(W/f)).
        kl_weight (`float`, defaults to 1e-6): weight of KL(q(z|x) || N(0, I)) in the loss (latent diffusion's
            KL-f8 setting); the latent is meant to be near-deterministic, not a generative prior.
        pixel_loss (`str`, defaults to "l1"): the pixel reconstruction term, Σ|x − x̂| or Σ(x − x̂)².
            Images are in [-1, 1]. Perceptual and adversarial terms belong to the trainer.
    """

    model_type = "klae"

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: Sequence[str] = ("DownEncoderBlock2D",),
        up_block_types: Sequence[str] = ("UpDecoderBlock2D",),
        block_out_channels: Sequence[int] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: Optional[float] = None,
        latents_mean: Optional[Sequence[float]] = None,
        latents_std: Optional[Sequence[float]] = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        kl_weight: float = 1e-6,
        pixel_loss: str = "l1",
        **kwargs,
    ):
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.block_out_channels = list(block_out_channels)
        # diffusers lists one block type per resolution; keep them consistent when only the channels are given.
        self.down_block_types = list(down_block_types) if len(down_block_types) == len(self.block_out_channels) \
            else ["DownEncoderBlock2D"] * len(self.block_out_channels)
        self.up_block_types = list(up_block_types) if len(up_block_types) == len(self.block_out_channels) \
            else ["UpDecoderBlock2D"] * len(self.block_out_channels)
        self.layers_per_block = layers_per_block
        self.act_fn = act_fn
        self.latent_channels = latent_channels
        self.norm_num_groups = norm_num_groups
        self.sample_size = sample_size
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor
        self.latents_mean = latents_mean
        self.latents_std = latents_std
        self.force_upcast = force_upcast
        self.use_quant_conv = use_quant_conv
        self.use_post_quant_conv = use_post_quant_conv
        self.mid_block_add_attention = mid_block_add_attention
        self.kl_weight = kl_weight
        self.pixel_loss = pixel_loss
        reject_likely_typos(type(self), kwargs)
        super().__init__(**kwargs)
        self.validate_fields()

    # Names shared with the other variants, so that trainers and checks treat every config alike.
    @property
    def image_size(self) -> int:
        return self.sample_size

    @property
    def data_shape(self) -> tuple:
        return (self.in_channels, self.sample_size, self.sample_size)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    vector_latent = False
    likelihood = "pixel"

    def validate_fields(self) -> None:
        check_positive_int("in_channels", self.in_channels)
        check_positive_int("out_channels", self.out_channels)
        check_positive_int("latent_channels", self.latent_channels)
        check_positive_int("layers_per_block", self.layers_per_block)
        check_positive_int("norm_num_groups", self.norm_num_groups)
        check_positive_int("sample_size", self.sample_size)
        _check(self.act_fn in ACT_FNS, f"Expected `act_fn` in {ACT_FNS}, got {self.act_fn!r}.")
        _check(len(self.block_out_channels) > 0 and all(isinstance(c, int) and c > 0 for c in self.block_out_channels),
               f"Expected `block_out_channels` to be a non-empty list of positive ints, got {self.block_out_channels!r}.")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        _check(not bad, f"Expected every entry of `block_out_channels` to be divisible by norm_num_groups="
                        f"{self.norm_num_groups}, got {self.block_out_channels} ({bad} are not).")
        _check(all(t == "DownEncoderBlock2D" for t in self.down_block_types),
               f"Expected only 'DownEncoderBlock2D' down blocks, got {self.down_block_types}.")
        _check(all(t == "UpDecoderBlock2D" for t in self.up_block_types),
               f"Expected only 'UpDecoderBlock2D' up blocks, got {self.up_block_types}.")
        check_real("kl_weight", self.kl_weight, low=0)
        check_real("scaling_factor", self.scaling_factor, low=0, low_open=True)
        check_real("shift_factor", self.shift_factor, optional=True)
        for name in ("force_upcast", "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"):
            check_bool(name, getattr(self, name))
        factor = self.downsampling_factor
        _check(self.sample_size % factor == 0,
               f"Expected `sample_size` divisible by the down-sampling factor {factor} "
               f"(2^(len(block_out_channels) - 1)), got sample_size={self.sample_size}.")
        _check(self.pixel_loss in ("l1", "l2"), f"Expected `pixel_loss` 'l1' or 'l2', got {self.pixel_loss!r}.")
        for name in ("latents_mean", "latents_std"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, (list, tuple)) and len(value) == self.latent_channels),
                   f"Expected `{name}` None or of length latent_channels={self.latent_channels}, got {value!r}.")
            for i, entry in enumerate(value or []):
                check_real(f"{name}[{i}]", entry, low=0 if name == "latents_std" else None,
                           low_open=name == "latents_std")
