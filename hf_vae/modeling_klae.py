"""The KL autoencoder of latent diffusion (Rombach et al. 2022), the image compressor of Stable Diffusion.

Architecture, parameter names and arithmetic are those of diffusers' `AutoencoderKL`:

    x ─ Encoder ─ quant_conv ─▶ q(z|x) = N(μ, σ²) ─ z ─ post_quant_conv ─ Decoder ─▶ x̂          x ∈ [-1, 1]
    loss = Σ|x − x̂| + kl_weight · KL(q(z|x) || N(0, I))

so a state dict moves between the two unchanged and `encode(x).latent_dist` / `decode(z).sample` behave as
diffusers pipelines expect. The perceptual (LPIPS) and adversarial (PatchGAN) terms of the full objective are
added by the trainer, because they need networks that are not part of the published model.

Drop-in use with diffusers:
  * `KLAEModel.from_diffusers(vae_or_path)` / `model.to_diffusers()` move weights both ways, exactly;
  * `KLAEModel.from_pretrained` also reads diffusers folders and Hub repos (`subfolder="vae"`), legacy attention
    names and original latent-diffusion checkpoints in safetensors form (hf_vae.klae_conversion);
  * `enable_slicing()` / `enable_tiling()` reproduce diffusers' sliced and tiled encode/decode, same tiles, same
    overlap, same linear blending;
  * `encode`/`decode` carry accelerate's forward hook, so model CPU offload works inside pipelines.
"""

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
from transformers import PreTrainedModel  # noqa: F401  (diffusers finds the loader by this name in this module)
from transformers.utils import ModelOutput

from .configuration_klae import KLAEConfig
from .conv_backbone import Decoder, Encoder
from .data_contract import LIKELIHOOD_KINDS
from .distributions import DiagonalGaussianDistribution, PixelLossLikelihood
from .klae_conversion import (
    DIFFUSERS_CONFIG_FIELDS,
    DIFFUSERS_CONFIG_NAME,
    DIFFUSERS_WEIGHTS_NAME,
    check_state_dict,
    config_from_diffusers,
    config_to_diffusers,
    infer_config_from_state_dict,
    is_diffusers_config,
    load_safetensors,
    read_json,
    resolve_file,
    split_config_overrides,
    to_hf_state_dict,
)
from .modeling_base import AutoencoderPreTrainedModel

#: options of `from_pretrained` that locate files on the Hub (forwarded to transformers' `cached_file`).
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "proxies")
#: options diffusers' pipeline loader passes to every transformers model; meaningless for a small single-file VAE.
_IGNORED_LOADING_KWARGS = ("low_cpu_mem_usage", "max_memory", "offload_folder", "offload_state_dict", "use_flashpack",
                           "disable_mmap", "weights_only", "trust_remote_code", "_from_auto", "_commit_hash",
                           "ignore_mismatched_sizes")


def _blend_vertical(above: torch.Tensor, tile: torch.Tensor, extent: int) -> torch.Tensor:
    """Cross-fade the first `extent` rows of `tile` (B, C, h, w) with the last `extent` rows of `above`.

    Row y of the overlap becomes above[-extent + y] · (1 − y/extent) + tile[y] · (y/extent), diffusers'
    `blend_v`, computed for all rows at once (and out of place, so autograd sees an ordinary graph).
    """
    extent = min(above.shape[2], tile.shape[2], extent)
    if extent <= 0:
        return tile
    ramp = torch.arange(extent, dtype=torch.float64) / extent
    weight_tile = ramp.to(device=tile.device, dtype=tile.dtype).view(-1, 1)
    weight_above = (1.0 - ramp).to(device=tile.device, dtype=tile.dtype).view(-1, 1)
    blended = above[:, :, above.shape[2] - extent:, :] * weight_above + tile[:, :, :extent, :] * weight_tile
    return torch.cat([blended, tile[:, :, extent:, :]], dim=2)


def _blend_horizontal(left: torch.Tensor, tile: torch.Tensor, extent: int) -> torch.Tensor:
    """`_blend_vertical` along the width: diffusers' `blend_h`."""
    return _blend_vertical(left.transpose(2, 3), tile.transpose(2, 3), extent).transpose(2, 3)


def tiled_apply(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], tile_in: int, tile_out: int,
                overlap_factor: float) -> torch.Tensor:
    """Apply a resolution-changing network `fn` to overlapping tiles of x and blend the results: diffusers'
    `_tiled_encode` / `tiled_decode` arithmetic.

    Args:
        x: (B, C, H, W) input.
        fn: maps a (B, C, t, t) tile to (B, C', t·r, t·r) with r = tile_out / tile_in (r = 1/8 for the SD encoder).
        tile_in, tile_out: nominal tile side before and after `fn`.
        overlap_factor: fraction of a tile shared with its neighbour.

    Tiles start every `int(tile_in · (1 − overlap_factor))` input pixels. Each output tile is blended with the
    (already blended) tile above and then the one to its left over `int(tile_out · overlap_factor)` rows/columns,
    and cropped to its top-left (tile_out − blend) square; the crops are concatenated. Only the previous row of
    tiles is kept, so memory is bounded by one tile's activations plus two rows of outputs.

    The result has the memory layout of `fn`'s outputs, as diffusers' (whose in-place blends and concatenation of
    crops keep it): a channels-last tile gives a channels-last result. Values do not depend on the layout, but the
    convolutions that consume them (a UNet after `encode`) take a different kernel path for another layout, which
    changes their results in the last bits.
    """
    stride = int(tile_in * (1 - overlap_factor))
    blend = int(tile_out * overlap_factor)
    keep = tile_out - blend
    if stride <= 0:
        raise ValueError(f"Expected tile_overlap_factor < 1 and a tile larger than 1 pixel, got tile size {tile_in} "
                         f"and overlap {overlap_factor} (stride {stride}).")
    height, width = x.shape[-2:]
    rows, previous, layout = [], None, torch.contiguous_format
    for top in range(0, height, stride):
        row = []
        for column, left in enumerate(range(0, width, stride)):
            tile = fn(x[:, :, top:top + tile_in, left:left + tile_in])
            if tile.is_contiguous(memory_format=torch.channels_last) and not tile.is_contiguous():
                layout = torch.channels_last
            if previous is not None:
                tile = _blend_vertical(previous[column], tile, blend)
            if row:
                tile = _blend_horizontal(row[-1], tile, blend)
            row.append(tile)
        rows.append(torch.cat([tile[:, :, :keep, :keep] for tile in row], dim=3))
        previous = row
    return torch.cat(rows, dim=2).contiguous(memory_format=layout)


@dataclass
class KLAEOutput(ModelOutput):
    """Output of `KLAEModel.forward`, led by `sample` as diffusers' `AutoencoderKL.forward` output is.

    Args:
        sample (`(B, C, H, W)`): the reconstruction, decoded from the posterior mean (or from a posterior sample
            with `sample_posterior=True`).
        latents (`(B, latent_channels, H/f, W/f)`): the z that was decoded.
        posterior_mean, posterior_logvar (`(B, latent_channels, H/f, W/f)`): q(z|x).
        loss, reconstruction_loss, regularisation_loss, kl (`()`, left out with `return_loss=False`): the pixel
            loss + kl_weight · KL, its two terms, and the unweighted KL, per example (what transformers' `Trainer`
            reports as the loss). Training with hf_vae uses the latent-diffusion objective of `hf_vae.training`.
        encoder_hidden_states, decoder_hidden_states: with `output_hidden_states=True`.
    """

    sample: Optional[torch.FloatTensor] = None
    latents: Optional[torch.FloatTensor] = None
    posterior_mean: Optional[torch.FloatTensor] = None
    posterior_logvar: Optional[torch.FloatTensor] = None
    loss: Optional[torch.FloatTensor] = None
    reconstruction_loss: Optional[torch.FloatTensor] = None
    regularisation_loss: Optional[torch.FloatTensor] = None
    kl: Optional[torch.FloatTensor] = None
    encoder_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
    decoder_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None

    @property
    def reconstruction(self) -> Optional[torch.FloatTensor]:
        """`sample`, under the name the other families' outputs use."""
        return self.sample


#: fields of the objective, left out of `KLAEModel.forward`'s output with `return_loss=False`
_LOSS_FIELDS = ("loss", "reconstruction_loss", "regularisation_loss", "kl")


class KLAEModel(AutoencoderPreTrainedModel):
    config_class = KLAEConfig
    main_input_name = "sample"  # diffusers' name, forward's first argument
    _no_split_modules = ["ResnetBlock2D", "Attention"]
    # Images in [-1, 1], as diffusers' image processor gives them; [0, 255] input would otherwise train (or encode)
    # silently wrong. `model.check_input_range = False` lets other values through.
    input_range = LIKELIHOOD_KINDS["pixel"].value_range

    def __init__(self, config: Optional[KLAEConfig] = None, **diffusers_kwargs):
        """`KLAEModel(config)`, or `KLAEModel(in_channels=3, block_out_channels=(128, 256, 512, 512), ...)` with
        `AutoencoderKL`'s own keyword arguments, as code written for diffusers constructs it."""
        if config is None:
            unknown = sorted(set(diffusers_kwargs) - set(DIFFUSERS_CONFIG_FIELDS))
            if unknown:
                raise TypeError(f"KLAEModel() got unexpected keyword arguments {unknown}; expected a KLAEConfig or "
                                f"AutoencoderKL's keyword arguments ({', '.join(DIFFUSERS_CONFIG_FIELDS)}).")
            config = config_from_diffusers(diffusers_kwargs)
        elif diffusers_kwargs:
            raise TypeError(f"KLAEModel() takes a config or keyword arguments, got both (config and "
                            f"{sorted(diffusers_kwargs)}).")
        super().__init__(config)
        self.encoder = Encoder(
            config.in_channels, config.latent_channels, config.block_out_channels, config.layers_per_block,
            config.norm_num_groups, config.act_fn, double_z=True, mid_block_add_attention=config.mid_block_add_attention,
        )
        self.decoder = Decoder(
            config.latent_channels, config.out_channels, config.block_out_channels, config.layers_per_block,
            config.norm_num_groups, config.act_fn, mid_block_add_attention=config.mid_block_add_attention,
        )
        latent = config.latent_channels
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if config.use_post_quant_conv else None
        self.likelihood = PixelLossLikelihood(config.pixel_loss)

        # Slicing and tiling, with diffusers' attribute names and defaults: tiles of `sample_size` pixels
        # (sample_size / f latents) overlapping by a quarter.
        self.use_slicing = False
        self.use_tiling = False
        self.tile_sample_min_size = config.sample_size
        self.tile_latent_min_size = int(config.sample_size / config.downsampling_factor)
        self.tile_overlap_factor = 0.25
        self.post_init()

    # -- slicing and tiling ----------------------------------------------------------------------------------
    # Exact tiling (hf_vae.exact_tiling), switched on by `enable_tiling(exact=True)`.
    use_exact_tiling = False
    exact_tile_size: Optional[int] = None  # None: tile_sample_min_size
    exact_tiling_storage = "device"
    exact_tiling_dir: Optional[str] = None

    def enable_tiling(self, tile_sample_min_size: Optional[int] = None, tile_overlap_factor: Optional[float] = None,
                      exact: bool = False, tile_size: Optional[int] = None, storage: Optional[str] = None,
                      storage_dir: Optional[str] = None):
        """Encode and decode large images in overlapping tiles of `tile_sample_min_size` pixels
        (`tile_sample_min_size / f` latents), blended linearly: memory stays that of one tile, whatever the image
        size. Results differ slightly from untiled ones (each tile sees only its own context), exactly as in
        diffusers.

        `exact=True` tiles without seams instead (hf_vae.exact_tiling): GroupNorm statistics and the mid-block
        attention span the whole image, so results equal untiled ones (to float rounding), in tiles of `tile_size`
        image pixels (default `tile_sample_min_size`). The full-size maps kept between tiled passes live in
        `storage`: "device" (default), "cpu" (host memory) or "mmap" (temporary files in `storage_dir`).
        Inference only."""
        if not isinstance(exact, bool):
            raise ValueError(f"Expected `exact` True or False, got {exact!r}.")
        if not exact and (tile_size, storage, storage_dir) != (None, None, None):
            raise ValueError(f"Expected `tile_size`, `storage` and `storage_dir` only with exact=True, got "
                             f"tile_size={tile_size!r}, storage={storage!r}, storage_dir={storage_dir!r}.")
        if tile_sample_min_size is not None:
            factor = self.config.downsampling_factor
            if not isinstance(tile_sample_min_size, int) or tile_sample_min_size < factor:
                raise ValueError(f"Expected an int `tile_sample_min_size` >= the down-sampling factor {factor}, "
                                 f"got {tile_sample_min_size!r}.")
            self.tile_sample_min_size = tile_sample_min_size
            self.tile_latent_min_size = int(tile_sample_min_size / factor)
        if tile_overlap_factor is not None:
            if not 0.0 <= tile_overlap_factor < 1.0:
                raise ValueError(f"Expected `tile_overlap_factor` in [0, 1), got {tile_overlap_factor!r}.")
            self.tile_overlap_factor = tile_overlap_factor
        if exact:
            from .exact_tiling import check_exact_tiling_options

            size = self.tile_sample_min_size if tile_size is None else tile_size
            check_exact_tiling_options(size, storage or "device", self.config.downsampling_factor)
            self.exact_tile_size, self.exact_tiling_storage, self.exact_tiling_dir = size, storage or "device", storage_dir
        self.use_exact_tiling = exact
        self.use_tiling = True

    def disable_tiling(self):
        self.use_tiling = False
        self.use_exact_tiling = False

    def _exact_tiled(self, x: torch.Tensor, encode: bool) -> torch.Tensor:
        """Moments (encode) or images (decode) through hf_vae.exact_tiling; untiled when x fits in one tile."""
        from .exact_tiling import decode_exact, encode_exact

        factor = 1 if encode else self.config.downsampling_factor
        if x.shape[-1] * factor <= self.exact_tile_size and x.shape[-2] * factor <= self.exact_tile_size:
            return self._encode_tile(x) if encode else self._decode_tile(x)
        if torch.is_grad_enabled():
            raise RuntimeError("Expected exact tiling under torch.no_grad() (it is inference-only), got gradients "
                               "enabled; call disable_tiling() or enable_tiling(exact=False) to train.")
        run, network, conv = ((encode_exact, self.encoder, self.quant_conv) if encode
                              else (decode_exact, self.decoder, self.post_quant_conv))
        return run(network, x, conv, self.exact_tile_size, self.exact_tiling_storage, self.exact_tiling_dir)

    def enable_slicing(self):
        """Encode and decode a batch one example at a time (lower peak memory, same results)."""
        self.use_slicing = True

    def disable_slicing(self):
        self.use_slicing = False

    # -- diffusers' names for transformers' gradient checkpointing -------------------------------------------
    _supports_gradient_checkpointing = True

    def enable_gradient_checkpointing(self):
        """diffusers' name of `gradient_checkpointing_enable()`: recompute each block's activations in backward."""
        self.gradient_checkpointing_enable()

    def disable_gradient_checkpointing(self):
        self.gradient_checkpointing_disable()

    # -- speed options ---------------------------------------------------------------------------------------
    def enable_subpixel_upsampling(self):
        """Compute the decoder's "nearest 2x up-sample + 3x3 conv" as four 2x2 convs on the low-resolution input
        (conv_backbone.Upsample2D): 44 % fewer FLOPs in those layers, 10–15 % off an SD-1.x decode on a 2-core CPU
        (benchmarks/bench_klae.py; the folded kernels take 1.8x the up-sampling conv weights, ~40 MB for SD). Same weights and state dict; outputs equal the default path to float rounding
        (~1e-7 relative), not bit for bit, so it is off by default."""
        self._set_subpixel(True)

    def disable_subpixel_upsampling(self):
        self._set_subpixel(False)

    def _set_subpixel(self, enabled: bool) -> None:
        for module in self.decoder.modules():
            if hasattr(module, "subpixel"):
                module.subpixel = enabled
                if not enabled:  # drop the folded inference kernels (1.8x the up-sampling conv weights)
                    module.__dict__.pop("_subpixel_cache", None)

    # -- fast path -------------------------------------------------------------------------------------------
    def enable_fast_path(self, compile: Optional[bool] = None, channels_last: Optional[bool] = None,
                         fuse_norms: Optional[bool] = None, mode: Optional[str] = None, backend: str = "inductor"):
        """Faster encode, decode and training on a GPU: channels-last weights and activations, GroupNorm+SiLU fused
        into one kernel, and `torch.compile(fullgraph=True)` of `_encode_tile` / `_decode_tile` (so tiled and
        sliced encode/decode, and training, all go through the compiled networks). Call it after `.to(device)`.

        Each piece defaults to on for CUDA and off elsewhere: on a CPU none was reliably faster (hf_vae/fast_path.py,
        docs/performance.md), so there the fast path is the default path unless a piece is asked for. `mode` is
        torch.compile's: "reduce-overhead" adds CUDA graphs at fixed shapes (outputs are then copied out of the
        graph's memory). Outputs equal the default path's to float rounding, not bit for bit; the weights and the
        state dict do not change. `disable_fast_path()` returns to the default, diffusers-identical path.
        """
        from . import fast_path

        self.disable_fast_path()
        on_cuda = next(self.parameters()).device.type == "cuda"
        compile = on_cuda if compile is None else compile
        channels_last = on_cuda if channels_last is None else channels_last
        fuse_norms = on_cuda if fuse_norms is None else fuse_norms
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self._fused_norms = fast_path.fuse_group_norm_silu(self) if fuse_norms else []
        # Gradient checkpointing re-enters the blocks through torch.utils.checkpoint, which breaks the graph.
        fullgraph = not any(getattr(m, "gradient_checkpointing", False) for m in self.modules())
        cuda_graphs = compile and on_cuda and fast_path.uses_cuda_graphs(mode)
        for name, function in (("_encode_tile", KLAEModel._encode_tile), ("_decode_tile", KLAEModel._decode_tile)):
            compiled = fast_path.compiled_tile(function, mode, backend, fullgraph) if compile else None
            if compiled is not None or channels_last:  # else the tile functions stay the default path's
                setattr(self, name, fast_path.FastTile(self, function, compiled, channels_last, cuda_graphs))
        self.fast_path_settings = {"compile": compile, "channels_last": channels_last, "fuse_norms": fuse_norms,
                                   "mode": mode, "backend": backend if compile else None, "cuda_graphs": cuda_graphs}
        return self

    def disable_fast_path(self):
        """Back to the default path: contiguous memory, separate GroupNorm and SiLU, eager tile functions."""
        from . import fast_path

        for name in ("_encode_tile", "_decode_tile"):
            self.__dict__.pop(name, None)
        fast_path.unfuse(self.__dict__.pop("_fused_norms", []))
        if getattr(self, "fast_path_settings", None) and self.fast_path_settings["channels_last"]:
            self.to(memory_format=torch.contiguous_format)
        self.fast_path_settings = None
        return self

    # -- the pluggable pieces --------------------------------------------------------------------------------
    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> moments (B, 2·latent_channels, H/f, W/f): encoder, then quant_conv."""
        moments = self.encoder(x)
        return self.quant_conv(moments) if self.quant_conv is not None else moments

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_channels, h, w) -> (B, out_channels, h·f, w·f): post_quant_conv, then decoder."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def _encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """Moments (B, 2·latent_channels, h, w), honouring slicing and tiling as diffusers' `encode` does."""
        if self.use_slicing and x.shape[0] > 1:
            return torch.cat([self._encode_moments(example) for example in x.split(1)])
        if self.use_tiling and self.use_exact_tiling:
            return self._exact_tiled(x, encode=True)
        if self.use_tiling and (x.shape[-1] > self.tile_sample_min_size or x.shape[-2] > self.tile_sample_min_size):
            return tiled_apply(x, self._encode_tile, self.tile_sample_min_size, self.tile_latent_min_size,
                               self.tile_overlap_factor)
        return self._encode_tile(x)

    def _encode(self, pixel_values: torch.Tensor, condition=None) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(self._encode_moments(pixel_values))

    def _decode(self, latents: torch.Tensor, condition=None) -> torch.Tensor:
        """(B, latent_channels, h, w) -> images (B, out_channels, h·f, w·f), honouring slicing and tiling."""
        if self.use_slicing and latents.shape[0] > 1:
            return torch.cat([self._decode(example) for example in latents.split(1)])
        if self.use_tiling and self.use_exact_tiling:
            return self._exact_tiled(latents, encode=False)
        if self.use_tiling and (latents.shape[-1] > self.tile_latent_min_size
                                or latents.shape[-2] > self.tile_latent_min_size):
            return tiled_apply(latents, self._decode_tile, self.tile_latent_min_size, self.tile_sample_min_size,
                               self.tile_overlap_factor)
        return self._decode_tile(latents)

    def regularisation_loss(self, posterior, latents) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        kl = posterior.kl()
        return self.config.kl_weight * kl, {"kl": kl.mean()}

    # -- diffusers' public signatures ------------------------------------------------------------------------
    def forward(self, sample: Optional[torch.Tensor] = None, sample_posterior: bool = False, return_dict: bool = True,
                generator: Optional[torch.Generator] = None, *, pixel_values: Optional[torch.Tensor] = None,
                return_loss: bool = True, output_hidden_states: Optional[bool] = None, **kwargs):
        """diffusers' `AutoencoderKL.forward`: encode, decode the posterior mean (a sample with
        `sample_posterior=True`), and return `KLAEOutput(sample=reconstruction, ...)`, `(sample, ...)` with
        `return_dict=False`. `pixel_values=` is the transformers name of `sample`. The objective's terms follow
        `sample` (transformers' `Trainer` reads `loss`, and finds it by `return_loss` defaulting to True);
        `return_loss=False` leaves them out."""
        if (sample is None) == (pixel_values is None):
            raise ValueError(f"Expected the images as `sample` or as `pixel_values` (one of them), got "
                             f"{'both' if sample is not None else 'neither'}.")
        return super().forward(sample if sample is not None else pixel_values, return_dict=return_dict,
                               sample_posterior=sample_posterior, generator=generator,
                               output_hidden_states=output_hidden_states, return_loss=return_loss, **kwargs)

    def build_output(self, return_loss: bool, fields: Dict[str, torch.Tensor]) -> KLAEOutput:
        fields = dict(fields)
        reconstruction = fields.pop("reconstruction")
        if not return_loss:
            for name in _LOSS_FIELDS:
                fields.pop(name, None)
        return KLAEOutput(sample=reconstruction, **fields)

    def encode(self, x: torch.Tensor, return_dict: bool = True):  # the base's encode carries accelerate's hook
        """(B, C, H, W) images in [-1, 1] -> EncoderOutput(latent_dist=DiagonalGaussianDistribution over
        (B, latent_channels, H/f, W/f)); a tuple `(latent_dist,)` with `return_dict=False`."""
        return super().encode(x, return_dict=return_dict)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: Optional[torch.Generator] = None):
        """(B, latent_channels, h, w) -> DecoderOutput(sample=(B, C, h·f, w·f)). `generator` is accepted for
        diffusers' signature; decoding is deterministic."""
        return super().decode(z, return_dict=return_dict)

    # -- conversion to and from diffusers --------------------------------------------------------------------
    @classmethod
    def from_diffusers(cls, vae, **kwargs) -> "KLAEModel":
        """Exact copy of a diffusers `AutoencoderKL` (the module itself, or a folder / Hub repo / .safetensors file
        passed on to `from_pretrained` with `kwargs`, e.g. `subfolder="vae"`).

        From a module, `kwargs` may override config fields (e.g. `kl_weight=1e-6` for fine-tuning); the copy has the
        module's dtype, device, train/eval mode and slicing/tiling settings, and shares no memory with it.
        """
        if isinstance(vae, (str, os.PathLike)):
            return cls.from_pretrained(vae, **kwargs)
        if not isinstance(vae, nn.Module) or not hasattr(vae, "config"):
            raise ValueError(f"Expected a diffusers AutoencoderKL, a path or a Hub repo id, got {type(vae).__name__}.")
        overrides = split_config_overrides(kwargs)
        if kwargs:
            raise ValueError(f"Expected only KLAEConfig fields as overrides, got {sorted(kwargs)}.")
        config = config_from_diffusers(dict(vae.config), **overrides)
        parameter = next(vae.parameters())
        state_dict = {key: value.detach().clone() for key, value in to_hf_state_dict(vae.state_dict()).items()}
        model = cls._from_state_dict(config, state_dict, dtype=parameter.dtype, source=type(vae).__name__)
        model.to(parameter.device)
        model.train(vae.training)
        model._copy_tiling_settings(vae)
        return model

    def to_diffusers(self):
        """An exact diffusers `AutoencoderKL` copy of this model (same weights, dtype, device, mode and slicing/
        tiling settings; no shared memory). Needs diffusers installed."""
        try:
            from diffusers import AutoencoderKL
        except ImportError as error:  # diffusers is optional for hf_vae
            raise ImportError("`to_diffusers` needs diffusers: `pip install diffusers`.") from error
        parameter = next(self.parameters())
        vae = AutoencoderKL(**config_to_diffusers(self.config))
        vae.load_state_dict(self.state_dict(), strict=True)
        vae.to(device=parameter.device, dtype=parameter.dtype)
        vae.train(self.training)
        _copy_tiling(self, vae)
        return vae

    def _copy_tiling_settings(self, other) -> None:
        _copy_tiling(other, self)

    @classmethod
    def _from_state_dict(cls, config: KLAEConfig, state_dict: Dict[str, torch.Tensor], dtype=None,
                         source: str = "") -> "KLAEModel":
        """Build the model for `config` directly around hf_vae-named `state_dict` (checked first: missing, unexpected
        and mis-shaped keys are one ValueError). `dtype` None means float32; "auto" keeps the weights' dtype."""
        if dtype is None:
            dtype = torch.float32
        elif isinstance(dtype, str) and dtype != "auto":
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"Expected dtype a torch.dtype, 'auto' or a name such as 'float16', got {dtype!r}.")
            dtype = getattr(torch, dtype)
        # Parameters are created on the meta device (no random initialisation to throw away), then replaced.
        with torch.device("meta"):
            model = cls(config)
        check_state_dict(model.state_dict(), state_dict, source)
        if dtype != "auto":
            state_dict = {key: value.to(dtype) for key, value in state_dict.items()}
        model.load_state_dict({key: value.contiguous() for key, value in state_dict.items()}, strict=True, assign=True)
        model.eval()
        return model

    # -- loading diffusers folders, Hub repos and latent-diffusion files -------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained`, extended to three more sources:

        * a diffusers `AutoencoderKL` folder or Hub repo (config.json with `_class_name`,
          `diffusion_pytorch_model[.variant].safetensors`), also inside a pipeline with `subfolder="vae"`;
        * such weights with the older attention names (`query`/`key`/`value`/`proj_attn`);
        * a `.safetensors` file of latent-diffusion (or diffusers) weights, optionally a whole SD checkpoint whose
          autoencoder sits under `first_stage_model.`. The architecture is read off the weights; pass
          `config=KLAEConfig(...)` or field overrides (e.g. `scaling_factor=0.13025`) for what weights do not fix.

        Config fields given as keyword arguments override the file's. Weights are read from safetensors only.
        Everything else (hf_vae's own checkpoints) is transformers' loader.
        """
        loaded = cls._load_foreign_format(pretrained_model_name_or_path, kwargs)
        if loaded is not None:
            return loaded
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    @classmethod
    def _load_foreign_format(cls, path_or_repo, kwargs) -> Optional["KLAEModel"]:
        if path_or_repo is None:
            return None
        subfolder = kwargs.get("subfolder") or ""
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if kwargs.get(key) is not None}
        path = os.fspath(path_or_repo)
        if path.endswith(".safetensors") or os.path.isfile(path):  # one weight file (LDM or diffusers names)
            weights_file, config_dict = path, None
        else:
            try:
                config_file = resolve_file(path, DIFFUSERS_CONFIG_NAME, subfolder, hub_kwargs)
            except OSError:  # not a folder, and not a reachable repo: transformers reports that properly
                return None
            if config_file is None:
                return None
            config_dict = read_json(config_file)
            if not is_diffusers_config(config_dict):
                return None  # hf_vae's own format
            variant = kwargs.get("variant")
            weights_name = DIFFUSERS_WEIGHTS_NAME if not variant else DIFFUSERS_WEIGHTS_NAME.replace(
                ".safetensors", f".{variant}.safetensors")
            weights_file = resolve_file(path, weights_name, subfolder, hub_kwargs)
            if weights_file is None:
                pickled = resolve_file(path, weights_name.replace(".safetensors", ".bin"), subfolder, hub_kwargs)
                where = f"{path}/{subfolder}".rstrip("/")
                raise ValueError(f"Expected diffusers weights {weights_name!r} in {where!r}, got "
                                 f"{'only a pickled .bin file, which is never loaded' if pickled else 'no such file'}.")

        options = dict(kwargs)
        overrides = split_config_overrides(options)
        config = options.pop("config", None)
        dtype = options.pop("dtype", None) or options.pop("torch_dtype", None)
        options.pop("torch_dtype", None)
        device_map = options.pop("device_map", None)
        if options.pop("use_safetensors", None) is False:
            raise ValueError("Expected use_safetensors None or True: diffusers-format weights load from safetensors only.")
        for key in (*_HUB_KWARGS, "subfolder", "variant", *_IGNORED_LOADING_KWARGS):
            options.pop(key, None)
        unknown = sorted(key for key, value in options.items() if value is not None)
        if unknown:
            raise ValueError(f"Expected loading options of transformers/diffusers or KLAEConfig fields, got {unknown}.")

        state_dict = to_hf_state_dict(load_safetensors(weights_file))
        if config is None and config_dict is not None:
            config = config_from_diffusers(config_dict, **overrides)
        elif config is None:
            config = infer_config_from_state_dict(state_dict, **overrides)
        elif isinstance(config, dict):
            config = config_from_diffusers(config, **overrides)
        elif isinstance(config, KLAEConfig):
            if overrides:
                config = KLAEConfig(**{**config.to_dict(), **overrides})
        else:
            raise ValueError(f"Expected `config` a KLAEConfig or a diffusers config dict, got {type(config).__name__}.")
        model = cls._from_state_dict(config, state_dict, dtype=dtype, source=weights_file)
        model.config.name_or_path = path
        if device_map is not None:
            if isinstance(device_map, dict):
                raise ValueError(f"Expected device_map None or one device for a diffusers-format VAE, got {device_map!r}.")
            model.to(device_map)
        return model


def _copy_tiling(source, target) -> None:
    for name in ("use_slicing", "use_tiling", "tile_sample_min_size", "tile_latent_min_size", "tile_overlap_factor"):
        if hasattr(source, name):
            setattr(target, name, getattr(source, name))
