"""Whole batches from Arrow: the training stream of the built-in sources, without a Python object per example.

:func:`build_batches` is :func:`hf_vae.data.build_dataset` for training at the speed of a tensor loop.  The
source is an Arrow file (:mod:`hf_vae.data.arrow_cache`, written once); the ``datasets`` stream over it shards
(16 shards), shuffles (the shard order and an Arrow shuffle buffer), splits across processes
(``split_dataset_by_node``) and batches, all on Arrow tables; one batched ``map`` turns each batch of uint8 rows
into the model's inputs (channels, size, value range) in a few torch operations.  Each item of the stream is
one whole batch (a one-row Arrow table); :func:`batch_to_tensors` is the ``collate_fn`` that turns it into
``{"pixel_values": float32 (B, C, H, W), ["labels": int64 (B,)], ["factors": int64 (B, 5)],
["example_id": int64 (B,)]}``::

    stream = build_batches("fashion_mnist", "train", batch_size=128, epoch=e)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, collate_fn=batch_to_tensors)

Like :func:`build_dataset`, the stream is a pure function of ``(name, split, seed, data_seed, epoch,
process_index, num_processes)`` and, under DataLoader workers, of ``num_workers`` (each worker reads whole
shards and batches them itself).  Resume by rebuilding the epoch and skipping the consumed batches.

No noise is drawn here: dynamic binarisation and other per-batch noise are drawn on the training device from a
per-step seed (:class:`hf_vae.data.noise.BatchNoise`).  Sources that need decoding (image folders, Hub
datasets) are not Arrow-native: :func:`is_arrow_native` says which are, and the trainer decodes the others in
DataLoader workers.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np

from .arrow_cache import cached_arrow_dataset, file_sha256, image_table
from .names import canonical_dataset
from .streaming import check_fixed_schema, check_stream_args, order_stream, to_value_range

__all__ = ["adapt_pixels", "arrow_source", "batch_to_tensors", "build_batches", "is_arrow_native"]

_NUM_SHARDS = 16  # divides evenly among 1, 2, 4, 8 or 16 processes
_WRITE_CHUNK = 4096  # examples rendered / cropped per Arrow chunk when a cache file is written
_SHAPE_COLUMN = "pixel_values_shape"


def adapt_pixels(x, in_channels: Optional[int], image_size: Optional[int]):
    """Convert channels (grey <-> RGB) and resize (bilinear, antialiased) a float batch (B, C, H, W) in [0, 1]."""
    import torch
    import torch.nn.functional as F

    c = x.shape[1]
    if in_channels is not None and c != in_channels:
        if c == 1 and in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif c == 3 and in_channels == 1:  # ITU-R 601 luma
            x = torch.einsum("c,bchw->bhw", x.new_tensor([0.299, 0.587, 0.114]), x)[:, None]
        else:
            raise ValueError(f"cannot convert a {c}-channel image to in_channels={in_channels}")
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                          align_corners=False).clamp_(0, 1)
    return x


# ------------------------------------------------------------------------------------------------------------
# Arrow sources
# ------------------------------------------------------------------------------------------------------------


def _fashion_folder(data_dir: Optional[str]) -> Optional[str]:
    """The folder of local IDX files that `fashion_mnist_dataset` would read, or None when it would use the Hub."""
    from . import fashion_mnist as fm

    if data_dir is not None:
        return data_dir
    if fm.hub_allowed():
        return None
    return fm.DEFAULT_FASHION_MNIST_DIR


def is_arrow_native(name: str, data_dir: Optional[str] = None) -> bool:
    """Whether ``name`` streams from an Arrow cache (shapes, photos, Fashion-MNIST from local IDX files)."""
    kind = canonical_dataset(name)
    return kind in ("shapes", "photos") or (kind == "fashion_mnist" and _fashion_folder(data_dir) is not None)


def _fashion_source(split: str, data_dir: Optional[str]):
    from . import fashion_mnist as fm

    split = fm._check_split(split)
    folder = _fashion_folder(data_dir)
    paths = fm._idx_paths(split, folder)
    if paths is None:  # the same error as the row stream
        fm.load_fashion_mnist_arrays(split, folder)

    def write():
        images, labels = fm.load_fashion_mnist_arrays(split, folder)
        yield image_table(images[:, None], label=labels, id=np.arange(images.shape[0]))

    key = {"split": split, "images_sha256": file_sha256(paths[0]), "labels_sha256": file_sha256(paths[1])}
    return cached_arrow_dataset("fashion_mnist", key, write), (1, 28, 28)


def _shapes_source(split: str, image_size: int, seed: int, num_examples: Optional[int]):
    from .shapes import _checked_split_ids, render_factors_batch, shapes_example_factors

    ids = _checked_split_ids(split, image_size, seed, num_examples)

    def write():
        for start in range(0, ids.size, _WRITE_CHUNK):
            chunk = ids[start: start + _WRITE_CHUNK]
            factors = shapes_example_factors(seed, chunk)
            images = render_factors_batch(factors, image_size)[:, None] * np.uint8(255)  # {0, 1} -> {0, 255}
            yield image_table(images, label=factors[:, 0],
                              factors=factors, id=chunk)

    key = {"split": split, "seed": int(seed), "image_size": int(image_size), "num_examples": int(ids.size)}
    return cached_arrow_dataset("shapes", key, write), (1, int(image_size), int(image_size))


def _photos_source(split: str, resolution: int, seed: int, num_examples: Optional[int]):
    import skimage

    from . import images as im

    if split not in im.PHOTO_NUM_EXAMPLES:
        raise ValueError(f"split must be one of {sorted(im.PHOTO_NUM_EXAMPLES)}, got {split!r}")
    resolution = int(resolution)
    regions = im._photo_regions(seed, resolution)
    if not regions:
        im.photo_crops_dataset(split, resolution, num_examples, seed)  # raises the row stream's error
    n = im.PHOTO_NUM_EXAMPLES[split] if num_examples is None else int(num_examples)
    if n < 1:
        raise ValueError(f"num_examples must be >= 1, got {n}")

    def write():
        for start in range(0, n, _WRITE_CHUNK):
            ids = np.arange(start, min(n, start + _WRITE_CHUNK), dtype=np.int64)
            crops = np.stack([regions[p]["image"][y: y + resolution, x: x + resolution]
                              for _, p, y, x in im._photo_crop_rows(seed, split, resolution, ids, regions)])
            yield image_table(crops.transpose(0, 3, 1, 2), id=ids)

    key = {"split": split, "seed": int(seed), "resolution": resolution, "num_examples": n,
           "photos": [(name, img.shape) for name, img in im.available_photos()], "skimage": skimage.__version__}
    return cached_arrow_dataset("photos", key, write), (3, resolution, resolution)


def arrow_source(name: str, split: str = "train", *, image_size: Optional[int] = None, data_seed: int = 0,
                 num_examples: Optional[int] = None, data_dir: Optional[str] = None):
    """The cached Arrow dataset of a built-in source: ``(datasets.Dataset, (C, H, W) of its uint8 images)``.

    Raises ``ValueError`` for a source that is not Arrow-native (see :func:`is_arrow_native`).
    """
    kind = canonical_dataset(name)
    if kind == "shapes":
        return _shapes_source(split, image_size or 64, data_seed, num_examples)
    if kind == "photos":
        return _photos_source(split, image_size or 64, data_seed, num_examples)
    if kind == "fashion_mnist" and _fashion_folder(data_dir) is not None:
        if num_examples is not None:
            raise ValueError("num_examples applies to the procedural datasets (shapes, photos), not fashion_mnist")
        return _fashion_source(split, data_dir)
    raise ValueError(f"dataset {name!r} is not Arrow-native: expected 'shapes', 'photos' or 'fashion_mnist' "
                     f"from local IDX files (decode-heavy sources stream through build_dataset)")


# ------------------------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------------------------


def _flat_numpy(column) -> np.ndarray:
    """Values of a (fixed-size) list column, flattened, as numpy (no copy where Arrow allows)."""
    array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return array.flatten().to_numpy(zero_copy_only=False)


class _ToModelBatch:
    """Arrow batch of uint8 rows -> a one-row Arrow table holding the whole model-ready batch (picklable)."""

    def __init__(self, image_shape, in_channels, image_size, value_range, with_ids):
        self.image_shape = tuple(int(d) for d in image_shape)
        self.in_channels = in_channels
        self.image_size = image_size
        self.lo, self.hi = float(value_range[0]), float(value_range[1])
        self.with_ids = bool(with_ids)

    def __call__(self, table):
        import pyarrow as pa
        import torch

        n = table.num_rows
        x = _flat_numpy(table.column("image")).reshape(n, *self.image_shape).astype(np.float32)
        x *= 1.0 / 255.0  # as the row streams do
        x = adapt_pixels(torch.from_numpy(x), self.in_channels, self.image_size)
        x = to_value_range(x, self.lo, self.hi).contiguous()

        def one_row(values: np.ndarray):  # the whole batch as one list value
            return pa.LargeListArray.from_arrays(pa.array(np.asarray([0, values.size])), pa.array(values.reshape(-1)))

        out = {"pixel_values": one_row(x.numpy()), _SHAPE_COLUMN: one_row(np.asarray(x.shape, np.int64))}
        if "label" in table.column_names:
            out["labels"] = one_row(table.column("label").to_numpy())
        if "factors" in table.column_names:
            out["factors"] = one_row(_flat_numpy(table.column("factors")))
        if self.with_ids and "id" in table.column_names:
            out["example_id"] = one_row(table.column("id").to_numpy())
        return pa.table(out)


def batch_to_tensors(table) -> dict:
    """``collate_fn`` for :func:`build_batches`: the one-row Arrow table of a batch -> a dict of tensors."""
    import torch

    shape = tuple(int(d) for d in _flat_numpy(table.column(_SHAPE_COLUMN)))
    batch = {"pixel_values": torch.from_numpy(_flat_numpy(table.column("pixel_values")).reshape(shape).copy())}
    for key in ("labels", "factors", "example_id"):
        if key in table.column_names:
            values = _flat_numpy(table.column(key)).astype(np.int64)  # a writable copy
            batch[key] = torch.from_numpy(values.reshape(shape[0], -1) if key == "factors" else values)
    return batch


@functools.lru_cache(maxsize=16)
def _sharded_stream(path: str, num_rows: int):
    """The unshuffled stream of a cache file in 16 shards, built once per process (building it takes longer
    than a training step, and a new epoch would pay it again). Streams derived from it do not change it."""
    from datasets import Dataset

    return Dataset.from_file(path).to_iterable_dataset(num_shards=min(_NUM_SHARDS, num_rows))


def build_batches(
    name: str,
    split: str = "train",
    batch_size: int = 128,
    *,
    image_size: Optional[int] = None,
    in_channels: Optional[int] = None,
    value_range: Sequence[float] = (0.0, 1.0),
    seed: int = 0,
    shuffle: bool = True,
    shuffle_buffer: int = 1000,
    epoch: int = 0,
    process_index: int = 0,
    num_processes: int = 1,
    data_seed: int = 0,
    drop_last: bool = True,
    with_ids: bool = False,
    require_labels: bool = False,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    num_examples: Optional[int] = None,
    data_dir: Optional[str] = None,
):
    """A stream of whole batches of an Arrow-native source (see the module docstring).

    The arguments mean what they mean for :func:`hf_vae.data.build_dataset` (no ``binarize``: noise is drawn on
    the training device).  ``drop_last`` drops each reader's last incomplete batch (training); keep it for
    evaluation.  Items are one-row Arrow tables; collate them with :func:`batch_to_tensors`.
    """
    check_stream_args(process_index, num_processes, in_channels, value_range)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_fixed_schema(name, require_labels, image_column, label_column)
    table, image_shape = arrow_source(name, split, image_size=image_size, data_seed=data_seed,
                                      num_examples=num_examples, data_dir=data_dir)
    ds = _sharded_stream(table.cache_files[0]["filename"], len(table))
    # One shard feeds the shuffle buffer at a time (the shard order is shuffled): interleaving several, datasets'
    # default, fetches from them on a thread pool, which costs more per batch than the model step of a small network.
    ds = order_stream(ds, split, shuffle=shuffle, seed=seed, epoch=epoch, shuffle_buffer=shuffle_buffer,
                      process_index=process_index, num_processes=num_processes, max_buffer_input_shards=1)
    mapper = _ToModelBatch(image_shape, in_channels, image_size, value_range, with_ids)
    # An Arrow-formatted map returns its own table: the source columns are not carried over.
    return ds.with_format("arrow").map(mapper, batched=True, batch_size=int(batch_size), drop_last_batch=drop_last)
