"""Exact tiled encoding and decoding for the convolutional backbone (conv_backbone's `Encoder` / `Decoder`).

Tiled decoding as diffusers does it (`modeling_klae.tiled_apply`) runs the whole network on overlapping tiles and
blends them, which leaves seams: each tile normalises with its own GroupNorm statistics and attends only to its
own pixels. Here the network is split at its global operations instead, so the tiled result is the untiled one:

  * between two global operations only local ones run (convolutions, nearest up-sampling, the stride-2 conv with
    its one-sided pad, activations, residual adds), tile by tile. Each tile reads its input with a halo exactly as
    wide as those operations need (found by walking the chain backwards: a 3x3 conv widens the window by 1, a 2x
    nearest up-sampling halves it, the stride-2 conv doubles it); a conv's outputs along window sides inside
    the image (which saw its zero padding instead of real neighbours) are dropped, so every kept output pixel
    sees exactly the inputs it sees untiled;
  * GroupNorm (Wu & He 2018) needs per-(example, group) mean and variance over the whole map: the pass that
    writes a map merges the mean and variance of every tile in float64, and the next pass applies the norm as
    the per-channel affine x·γ/√(σ² + ε) + (β − μ·γ/√(σ² + ε)), as PyTorch's GroupNorm kernel does;
  * the mid-block self-attention runs over the whole latent-resolution sequence: keys and values for all
    positions, then queries tile by tile through `F.scaled_dot_product_attention`.

Maps that must outlive a pass (the inputs of the next norm, the residual branch) live in an `ActivationStore`:
on the compute device, in host memory ("cpu"), or in an unlinked temporary file mapped into memory ("mmap"),
whose pages are handed back to the kernel after every row of tiles. Peak memory on the compute device is then
a few tiles' activations plus the attention's keys and values (2·h·w·C at latent resolution) and the result.

Inference only (no autograd through the stores). Outputs equal the untiled network to float rounding (tiles
change the convolutions' and the attention's summation order; ~1e-6 relative in float32).
"""

import math
import mmap
import tempfile
import weakref
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conv_backbone import Attention, Decoder, Encoder, ResnetBlock2D, _activate

STORAGES = ("device", "cpu", "mmap")


def check_exact_tiling_options(tile_size, storage, factor: int) -> None:
    """One clear ValueError for a bad `tile_size` (an int >= the down-sampling factor) or `storage`."""
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < factor:
        raise ValueError(f"Expected an int `tile_size` >= the down-sampling factor {factor}, got {tile_size!r}.")
    if storage not in STORAGES:
        raise ValueError(f"Expected `storage` one of {STORAGES}, got {storage!r}.")


# -- GroupNorm statistics ------------------------------------------------------------------------------------
class GroupStatistics:
    """Per-(example, group) count, mean and sum of squared deviations (M2) of a map, merged tile by tile.

    Each tile's mean and variance come from `torch.var_mean` in the map's precision (float32 at least, as
    GroupNorm's own kernel); tiles are merged in float64 with Chan, Golub & LeVeque's pairwise update
    (M2 = M2_a + M2_b + δ²·n_a·n_b / n), which needs no E[x²] − E[x]² cancellation.
    """

    def __init__(self, batch: int, groups: int, device):
        self.groups = groups
        self.count = 0
        self.mean = torch.zeros(batch, groups, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(batch, groups, dtype=torch.float64, device=device)

    def add(self, tile: torch.Tensor) -> None:
        """Add a (B, C, h, w) tile; its pixels must not overlap those of earlier tiles."""
        values = tile.unflatten(1, (self.groups, -1))  # a view also of a cropped (non-contiguous) tile
        if values.dtype not in (torch.float32, torch.float64):
            values = values.float()
        variance, mean = torch.var_mean(values, dim=(2, 3, 4), correction=0)
        count = values[0, 0].numel()
        mean, m2 = mean.to(torch.float64), variance.to(torch.float64) * count
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * (count / total)
        self.m2 += m2 + delta.square() * (self.count * count / total)
        self.count = total

    def affine(self, norm: nn.GroupNorm) -> Tuple[torch.Tensor, torch.Tensor]:
        """`norm` as scale and shift of shape (B, C, 1, 1), in float64: norm(x) = x·scale + shift with
        scale = γ/√(σ² + ε), shift = β − μ·scale (σ² biased, as GroupNorm's; PyTorch's GroupNorm kernel applies
        the same per-channel scale and shift)."""
        if norm.num_groups != self.groups:
            raise ValueError(f"Expected a GroupNorm with {self.groups} groups, got {norm.num_groups}.")
        per_group = norm.num_channels // self.groups
        inverse_std = torch.rsqrt(self.m2 / self.count + norm.eps)
        scale = inverse_std.repeat_interleave(per_group, dim=1)
        mean = self.mean.repeat_interleave(per_group, dim=1)
        if norm.weight is not None:
            scale = scale * norm.weight.to(torch.float64)
        shift = -mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias.to(torch.float64)
        return scale[..., None, None], shift[..., None, None]


# -- where maps live -----------------------------------------------------------------------------------------
class ActivationStore:
    """Allocates the maps kept between passes on the compute device, in host memory, or in memory-mapped files.

    "mmap" files are unlinked temporary files (in `directory`, default the system temp dir) mapped shared: the
    pages are the kernel's page cache, written back to disk and dropped under memory pressure; `release_pages`
    (after every row of tiles) also removes them from this process's resident set. Releasing after every tile
    would not bound it better: the kernel maps whole page-cache folios (and faults around), which for a
    row-major map span the full image width.
    """

    def __init__(self, storage: str, device: torch.device, directory: Optional[str] = None):
        if storage not in STORAGES:
            raise ValueError(f"Expected `storage` one of {STORAGES}, got {storage!r}.")
        self.storage, self.device, self.directory = storage, device, directory
        self._mappings = weakref.WeakSet()
        self.live_bytes = self.peak_bytes = 0  # what the maps alive at once take, for memory reports

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        if self.storage == "device":
            tensor = torch.empty(shape, dtype=dtype, device=self.device)
        elif self.storage == "cpu":
            tensor = torch.empty(shape, dtype=dtype)
        else:
            with tempfile.TemporaryFile(dir=self.directory) as file:  # unlinked: the mapping keeps the data alive
                file.truncate(nbytes)
                mapping = mmap.mmap(file.fileno(), nbytes)
            self._mappings.add(mapping)
            tensor = torch.frombuffer(mapping, dtype=dtype).view(shape)  # holds a reference to the mapping
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(tensor, self._freed, nbytes)
        return tensor

    def _freed(self, nbytes: int) -> None:
        self.live_bytes -= nbytes

    def release_pages(self) -> None:
        for mapping in list(self._mappings):
            mapping.madvise(mmap.MADV_DONTNEED)  # shared file pages: data stays in the file / page cache


# -- tiles that know where they are --------------------------------------------------------------------------
class Patch(NamedTuple):
    """A window data[:, :, top:top+h, left:left+w] of a (B, C, height, width) map. `owned`: data is a fresh
    tensor that may be overwritten (False for a view into a store)."""

    data: torch.Tensor
    top: int
    left: int
    height: int
    width: int
    owned: bool

    def crop(self, rows: Tuple[int, int], columns: Tuple[int, int]) -> torch.Tensor:
        (r0, r1), (c0, c1) = rows, columns
        assert self.top <= r0 and r1 <= self.top + self.data.shape[2], (rows, self.top, self.data.shape)
        assert self.left <= c0 and c1 <= self.left + self.data.shape[3], (columns, self.left, self.data.shape)
        return self.data[:, :, r0 - self.top:r1 - self.top, c0 - self.left:c1 - self.left]


class Conv:
    """Stride-1 conv with 'same' zero padding p = k // 2 (3x3 or 1x1). Output pixel i reads inputs i−p … i+p."""

    def __init__(self, conv: nn.Conv2d):
        assert conv.stride == (1, 1) and conv.padding[0] == conv.padding[1] == conv.kernel_size[0] // 2, conv
        self.conv, self.pad = conv, conv.padding[0]

    def region(self, start: int, stop: int, size: int) -> Tuple[int, int]:
        return max(0, start - self.pad), min(size, stop + self.pad)

    def size(self, size: int) -> int:
        return size

    def __call__(self, patch: Patch) -> Patch:
        # The conv zero-pads every side, as untiled; the outputs along sides inside the image read those zeros
        # instead of their real neighbours (which the window does not hold), so they are dropped.
        p, (h, w) = self.pad, patch.data.shape[2:]
        data = self.conv(patch.data)
        top, left = (p if patch.top > 0 else 0), (p if patch.left > 0 else 0)
        bottom = h - (p if patch.top + h < patch.height else 0)
        right = w - (p if patch.left + w < patch.width else 0)
        data = data[:, :, top:bottom, left:right]
        return Patch(data, patch.top + top, patch.left + left, patch.height, patch.width, True)


class Downsample:
    """conv_backbone.Downsample2D: pad one zero row/column at the bottom/right, then a 3x3 stride-2 conv.
    Output pixel i reads inputs 2i, 2i+1, 2i+2 (the last one the pad at the border)."""

    def __init__(self, conv: nn.Conv2d):
        self.conv = conv

    def region(self, start: int, stop: int, size: int) -> Tuple[int, int]:
        return 2 * start, min(size, 2 * stop + 1)

    def size(self, size: int) -> int:
        return (size + 1 - 3) // 2 + 1

    def __call__(self, patch: Patch) -> Patch:
        h, w = patch.data.shape[2:]
        data = F.pad(patch.data, (0, int(patch.left + w == patch.width), 0, int(patch.top + h == patch.height)))
        first_row, first_column = -(-patch.top // 2), -(-patch.left // 2)  # first outputs whose inputs start here
        data = data[:, :, 2 * first_row - patch.top:, 2 * first_column - patch.left:]
        data = F.conv2d(data, self.conv.weight, self.conv.bias, stride=2)
        return Patch(data, first_row, first_column, self.size(patch.height), self.size(patch.width), True)


class Upsample:
    """Nearest 2x up-sampling: output pixel i copies input i // 2."""

    def region(self, start: int, stop: int, size: int) -> Tuple[int, int]:
        return start // 2, (stop + 1) // 2

    def size(self, size: int) -> int:
        return 2 * size

    def __call__(self, patch: Patch) -> Patch:
        data, dtype = patch.data, patch.data.dtype
        if dtype == torch.bfloat16:  # as Upsample2D: nearest interpolation has no bf16 kernel on some backends
            data = data.float()
        data = F.interpolate(data, scale_factor=2.0, mode="nearest").to(dtype)
        return Patch(data, 2 * patch.top, 2 * patch.left, 2 * patch.height, 2 * patch.width, True)


class Pointwise:
    """An operation on each pixel alone: the GroupNorm affine, an activation, dropout, a dtype cast."""

    def __init__(self, fn):
        self.fn = fn

    def region(self, start: int, stop: int, size: int) -> Tuple[int, int]:
        return start, stop

    def size(self, size: int) -> int:
        return size

    def __call__(self, patch: Patch) -> Patch:
        return patch._replace(data=self.fn(patch.data, patch.owned), owned=True)


class Norm:
    """Marks a GroupNorm in a chain; replaced by its affine once the statistics of the map it reads are known."""

    def __init__(self, norm: nn.GroupNorm):
        self.norm = norm

    def resolve(self, statistics: GroupStatistics, dtype: torch.dtype) -> Pointwise:
        # GroupNorm computes in float32 at least (also for half-precision inputs); so does this affine.
        compute = torch.promote_types(dtype, torch.float32)
        scale, shift = (value.to(compute) for value in statistics.affine(self.norm))

        def normalise(x: torch.Tensor, owned: bool) -> torch.Tensor:
            return torch.addcmul(shift, x.to(compute), scale).to(dtype)  # a new tensor: x may be a store's view

        return Pointwise(normalise)


def activation(act: nn.Module) -> Pointwise:
    return Pointwise(lambda x, owned: _activate(act, x) if owned else act(x))  # in place only on our own tensors


# -- passes over tiles ---------------------------------------------------------------------------------------
class Map:
    """A (B, C, H, W) tensor kept between passes, with the GroupNorm statistics its consumer needs."""

    def __init__(self, data: torch.Tensor, statistics: Optional[GroupStatistics] = None):
        self.data, self.statistics = data, statistics


class TiledRunner:
    """Runs chains of local operations over tiles of their output (`tile` pixels a side at that resolution)."""

    def __init__(self, store: ActivationStore, device: torch.device, dtype: torch.dtype):
        self.store, self.device, self.dtype = store, device, dtype

    def load(self, source: Map, rows: Tuple[int, int], columns: Tuple[int, int], height: int, width: int) -> Patch:
        window = source.data[:, :, rows[0]:rows[1], columns[0]:columns[1]]
        moved = window.device != self.device
        window = window.to(self.device, non_blocking=True) if moved else window
        return Patch(window, rows[0], columns[0], height, width, owned=moved)

    def resolve(self, chain, source: Map) -> list:
        """Norm markers become affines with the statistics of the map the chain reads (its first operation)."""
        resolved = []
        for operation in chain:
            if isinstance(operation, Norm):
                if source.statistics is None or resolved:
                    raise RuntimeError("A GroupNorm must open a chain that reads a map with statistics.")
                operation = operation.resolve(source.statistics, self.dtype)
            resolved.append(operation)
        return resolved

    def run(self, branches: List[Tuple[Map, list]], tile: int, groups: Optional[int] = None,
            to_store: bool = True) -> Map:
        """out = Σ_branches chain(source), tile by tile, with statistics for a GroupNorm of `groups` groups.

        Every branch must map its source to the same output size (a residual block's two branches).
        """
        branches = [(source, self.resolve(chain, source)) for source, chain in branches]
        # Sizes at the input of every operation, per branch, to map output windows back to input windows.
        sizes = []
        for source, chain in branches:
            height, width = source.data.shape[2:]
            steps = []
            for operation in chain:
                steps.append((height, width))
                height, width = operation.size(height), operation.size(width)
            sizes.append((steps, height, width))
        out_height, out_width = sizes[0][1:]
        assert all(s[1:] == (out_height, out_width) for s in sizes), sizes
        batch = branches[0][0].data.shape[0]
        statistics = GroupStatistics(batch, groups, self.device) if groups else None
        out = None
        for top in range(0, out_height, tile):
            rows = (top, min(top + tile, out_height))
            for left in range(0, out_width, tile):
                columns = (left, min(left + tile, out_width))
                result = None
                for (source, chain), (steps, _, _) in zip(branches, sizes):
                    part, owned = self.apply(source, chain, steps, rows, columns)
                    if result is None:
                        result = part if owned else part.clone()
                    else:
                        result.add_(part)  # h + shortcut: one float addition, commutative
                if out is None:
                    shape = (batch, result.shape[1], out_height, out_width)
                    out = self.store.empty(shape, result.dtype) if to_store else result.new_empty(shape)
                out[:, :, rows[0]:rows[1], columns[0]:columns[1]].copy_(result)
                if statistics is not None:
                    statistics.add(result)
            self.store.release_pages()
        return Map(out, statistics)

    def apply(self, source: Map, chain: list, steps, rows, columns) -> Tuple[torch.Tensor, bool]:
        """The output window rows x columns of chain(source), computed from the input window it depends on, and
        whether it may be overwritten (False: a view into the source)."""
        row_window, column_window = rows, columns
        for operation, (height, width) in zip(reversed(chain), reversed(steps)):
            row_window = operation.region(*row_window, height)
            column_window = operation.region(*column_window, width)
        height, width = source.data.shape[2:]
        patch = self.load(source, row_window, column_window, height, width)
        for operation in chain:
            patch = operation(patch)
        return patch.crop(rows, columns), patch.owned

    def attention(self, attention: Attention, source: Map, tile: int, groups: Optional[int]) -> Map:
        """x + Attention(x) over all h·w positions: keys and values for every position, then queries per tile
        (softmax(qkᵀ/√C)v with F.scaled_dot_product_attention, as `Attention.forward`). Key order does not change
        the result (a sum over keys), so keys are laid out tile by tile."""
        normalise = Norm(attention.group_norm).resolve(source.statistics, self.dtype)
        batch, channels, height, width = source.data.shape
        windows = [((top, min(top + tile, height)), (left, min(left + tile, width)))
                   for top in range(0, height, tile) for left in range(0, width, tile)]

        def tokens(rows, columns) -> Tuple[torch.Tensor, Patch]:
            patch = self.load(source, rows, columns, height, width)
            return normalise(patch).data.flatten(2).transpose(1, 2), patch

        keys = torch.empty(batch, height * width, channels, dtype=self.dtype, device=self.device)
        values = torch.empty_like(keys)
        start = 0
        for rows, columns in windows:
            x, _ = tokens(rows, columns)
            keys[:, start:start + x.shape[1]] = attention.to_k(x)
            values[:, start:start + x.shape[1]] = attention.to_v(x)
            start += x.shape[1]
        keys, values = keys.unsqueeze(1), values.unsqueeze(1)
        statistics = GroupStatistics(batch, groups, self.device) if groups else None
        out = None
        for rows, columns in windows:
            x, patch = tokens(rows, columns)
            query = attention.to_q(x).unsqueeze(1)
            y = F.scaled_dot_product_attention(query, keys, values, dropout_p=0.0, is_causal=False).squeeze(1)
            y = attention.to_out[1](attention.to_out[0](y))
            y = y.transpose(1, 2).reshape(batch, channels, rows[1] - rows[0], columns[1] - columns[0])
            y = y + patch.data  # out + x, the residual of Attention.forward
            if out is None:
                out = self.store.empty((batch, channels, height, width), y.dtype)
            out[:, :, rows[0]:rows[1], columns[0]:columns[1]].copy_(y)
            if statistics is not None:
                statistics.add(y)
            self.store.release_pages()
        return Map(out, statistics)


# -- the network as a sequence of steps ----------------------------------------------------------------------
class Step(NamedTuple):
    """One piece of the network between maps that are kept. `norm`: the GroupNorm that reads its input (whose
    statistics the previous step must collect), or None. `scale`: its output's down-sampling factor relative to
    the image, which sets its tile side."""

    kind: str  # "chain", "resnet" or "attention"
    module: object
    norm: Optional[nn.GroupNorm]
    scale: int


def _resnet_passes(runner: TiledRunner, resnet: ResnetBlock2D, x: Map, tile: int, groups: Optional[int]) -> Map:
    """ResnetBlock2D.forward in two passes split at norm2: h = conv1(act(norm1(x))), then
    shortcut(x) + conv2(dropout(act(norm2(h))))."""
    act = activation(resnet.nonlinearity)
    h = runner.run([(x, [Norm(resnet.norm1), act, Conv(resnet.conv1)])], tile, resnet.norm2.num_groups)
    dropout = Pointwise(lambda data, owned: resnet.dropout(data))
    shortcut = [] if resnet.conv_shortcut is None else [Conv(resnet.conv_shortcut)]
    return runner.run([(h, [Norm(resnet.norm2), act, dropout, Conv(resnet.conv2)]), (x, shortcut)], tile, groups)


def _mid_block_steps(mid_block, scale: int) -> List[Step]:
    steps = [Step("resnet", mid_block.resnets[0], mid_block.resnets[0].norm1, scale)]
    if isinstance(mid_block.attentions[0], Attention):
        steps.append(Step("attention", mid_block.attentions[0], mid_block.attentions[0].group_norm, scale))
    steps.append(Step("resnet", mid_block.resnets[1], mid_block.resnets[1].norm1, scale))
    return steps


def decoder_steps(decoder: Decoder, post_quant_conv: Optional[nn.Conv2d] = None) -> List[Step]:
    """post_quant_conv, Decoder.forward as steps: conv_in, mid block, up blocks (resnets, up-sampler),
    conv_norm_out -> act -> conv_out."""
    scale = 2 ** (len(decoder.up_blocks) - 1)
    first = ([Conv(post_quant_conv)] if post_quant_conv is not None else []) + [Conv(decoder.conv_in)]
    steps = [Step("chain", first, None, scale)] + _mid_block_steps(decoder.mid_block, scale)
    upscale_dtype = decoder.up_blocks[0].resnets[0].conv1.weight.dtype
    if decoder.mid_block.resnets[1].conv2.weight.dtype != upscale_dtype:
        steps.append(Step("chain", [Pointwise(lambda x, owned: x.to(upscale_dtype))], None, scale))
    for block in decoder.up_blocks:
        steps += [Step("resnet", resnet, resnet.norm1, scale) for resnet in block.resnets]
        if block.upsamplers is not None:
            scale //= 2
            steps.append(Step("chain", [Upsample(), Conv(block.upsamplers[0].conv)], None, scale))
    last = [Norm(decoder.conv_norm_out), activation(decoder.conv_act), Conv(decoder.conv_out)]
    return steps + [Step("chain", last, decoder.conv_norm_out, scale)]


def encoder_steps(encoder: Encoder, quant_conv: Optional[nn.Conv2d] = None) -> List[Step]:
    """Encoder.forward as steps: conv_in, down blocks (resnets, down-sampler), mid block,
    conv_norm_out -> act -> conv_out, then quant_conv."""
    scale = 1
    steps = [Step("chain", [Conv(encoder.conv_in)], None, scale)]
    for block in encoder.down_blocks:
        steps += [Step("resnet", resnet, resnet.norm1, scale) for resnet in block.resnets]
        if block.downsamplers is not None:
            scale *= 2
            steps.append(Step("chain", [Downsample(block.downsamplers[0].conv)], None, scale))
    steps += _mid_block_steps(encoder.mid_block, scale)
    last = [Norm(encoder.conv_norm_out), activation(encoder.conv_act), Conv(encoder.conv_out)]
    last += [Conv(quant_conv)] if quant_conv is not None else []
    return steps + [Step("chain", last, encoder.conv_norm_out, scale)]


@torch.no_grad()
def run_steps(steps: List[Step], x: torch.Tensor, tile_size: int, storage: Union[str, ActivationStore] = "device",
              storage_dir: Optional[str] = None) -> torch.Tensor:
    """Run `steps` on x (B, C, H, W), each in tiles covering `tile_size` image pixels a side; the result is on
    x's device. Maps between steps live in `storage` ("device", "cpu" or "mmap", see ActivationStore, or a store
    whose `peak_bytes` the caller reads afterwards)."""
    dtype = next(iter(_parameters(steps))).dtype
    store = storage if isinstance(storage, ActivationStore) else ActivationStore(storage, x.device, storage_dir)
    runner = TiledRunner(store, x.device, dtype)
    current = Map(x)
    for index, step in enumerate(steps):
        following = steps[index + 1].norm if index + 1 < len(steps) else None
        groups = following.num_groups if following is not None else None
        tile = max(1, tile_size // step.scale)
        if step.kind == "resnet":
            current = _resnet_passes(runner, step.module, current, tile, groups)
        elif step.kind == "attention":
            current = runner.attention(step.module, current, tile, groups)
        else:
            current = runner.run([(current, step.module)], tile, groups, to_store=index + 1 < len(steps))
    return current.data


def _parameters(steps: List[Step]):
    for step in steps:
        modules = step.module if isinstance(step.module, list) else [step.module]
        for module in modules:
            module = getattr(module, "conv", module)
            if isinstance(module, nn.Module):
                yield from module.parameters()


def decode_exact(decoder: Decoder, z: torch.Tensor, post_quant_conv: Optional[nn.Conv2d] = None,
                 tile_size: int = 256, storage: Union[str, ActivationStore] = "device",
                 storage_dir: Optional[str] = None) -> torch.Tensor:
    """post_quant_conv then `decoder` on latents z (B, c, h, w), in tiles of `tile_size` output pixels: the
    untiled result to float rounding."""
    return run_steps(decoder_steps(decoder, post_quant_conv), z, tile_size, storage, storage_dir)


def encode_exact(encoder: Encoder, x: torch.Tensor, quant_conv: Optional[nn.Conv2d] = None, tile_size: int = 256,
                 storage: Union[str, ActivationStore] = "device",
                 storage_dir: Optional[str] = None) -> torch.Tensor:
    """`encoder` then quant_conv on images x (B, C, H, W), in tiles of `tile_size` input pixels: the untiled
    result to float rounding."""
    return run_steps(encoder_steps(encoder, quant_conv), x, tile_size, storage, storage_dir)
