"""Data layer of hf_vae: every source is a streamed ``datasets.IterableDataset``.

:func:`build_dataset` is the entry point for evaluation and for any source.  It picks a
source, shuffles (train only), shards across processes and maps rows to model inputs::

    {"pixel_values": torch.float32 (C, H, W) in value_range,
     "labels":       int                 (when the source has labels),
     "factors":      torch.int64 (5,)    (shapes only: ground-truth factor indices)}

:func:`build_batches` is its whole-batch twin for the sources that are small sets of uint8
images (shapes, photos, Fashion-MNIST from local files): they are written once to an Arrow cache
and streamed as batches, without a Python object per example (:mod:`hf_vae.data.batches`).  The
trainer uses it for those sources (and draws their noise on the device); other sources are decoded
row by row in DataLoader workers.

Sources (see :func:`describe_dataset` for their defaults):

* ``"shapes"``        -- procedural dSprites-style shapes (:mod:`hf_vae.data.shapes`);
* ``"fashion_mnist"`` -- Fashion-MNIST from the Hub or the Debian IDX files;
* ``"photos"``        -- crops of scikit-image's bundled photos;
* anything else       -- a ``datasets`` id, local dataset folder, image folder or
  ``save_to_disk`` folder (:func:`hf_vae.data.images.image_dataset`).

Determinism and resuming
------------------------
A stream is a pure function of ``(name, split, seed, data_seed, epoch, process_index,
num_processes)`` and, under a ``torch.utils.data.DataLoader``, ``num_workers``.  For epoch
``e`` call ``build_dataset(..., epoch=e)`` (a new stream per epoch; the epoch is folded into
the shuffle seed, the binarisation noise and random crops -- ``ds.set_epoch`` is not needed).
To resume at global step ``s`` with ``k = steps_per_epoch`` batches per epoch, rebuild with
``epoch = s // k`` and skip the first ``s % k`` batches of that epoch's loader (e.g.
``accelerate.skip_first_batches``).  Do not call ``ds.skip``: in ``datasets`` it freezes the
shard order, which changes the epoch's stream.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np

from .names import canonical_dataset
from .noise import check_noise_args, example_noise
from .streaming import check_fixed_schema, check_stream_args, order_stream, to_value_range
from .batches import adapt_pixels, batch_to_tensors, build_batches, is_arrow_native
from .fashion_mnist import (
    FASHION_MNIST_CLASSES,
    fashion_mnist_dataset,
    load_fashion_mnist_arrays,
    read_idx,
)
from .images import (
    PHOTO_NAMES,
    PHOTO_NUM_EXAMPLES,
    image_dataset,
    image_folder_dataset,
    photo_crops_dataset,
)
from .shapes import (
    SHAPE_NAMES,
    SHAPES_FACTOR_NAMES,
    SHAPES_FACTOR_SIZES,
    SHAPES_NUM_EXAMPLES,
    render_factors,
    render_shape,
    shapes_dataset,
)

__all__ = [
    "build_dataset",
    "build_batches",
    "batch_to_tensors",
    "is_arrow_native",
    "collate_batch",
    "describe_dataset",
    "source_dataset",
    "shapes_dataset",
    "render_shape",
    "render_factors",
    "SHAPE_NAMES",
    "SHAPES_FACTOR_NAMES",
    "SHAPES_FACTOR_SIZES",
    "fashion_mnist_dataset",
    "read_idx",
    "load_fashion_mnist_arrays",
    "FASHION_MNIST_CLASSES",
    "image_dataset",
    "image_folder_dataset",
    "photo_crops_dataset",
    "PHOTO_NAMES",
]

_SOURCE_COLUMNS = ["image", "label", "factors", "id", "photo"]  # dropped by the model-input map


def source_dataset(
    name: str,
    split: str = "train",
    *,
    image_size: Optional[int] = None,
    in_channels: Optional[int] = None,
    seed: int = 0,
    data_seed: int = 0,
    epoch: int = 0,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    require_labels: bool = False,
    **kwargs,
):
    """The raw source stream of ``name`` (rows with ``image`` float32 (C, H, W) in [0, 1]).

    ``data_seed`` fixes the content of procedural sources (shapes factors and held-out
    split, photo crop positions); ``seed`` / ``epoch`` drive random crops of generic sources.
    Extra ``kwargs`` go to the source function.
    """
    kind = canonical_dataset(name)
    skip_bad_images = kwargs.pop("skip_bad_images", False)  # only files can be bad; procedural sources cannot
    if kind == "shapes":
        ds = shapes_dataset(split, image_size=image_size or 64, seed=data_seed, **kwargs)
    elif kind == "fashion_mnist":
        ds = fashion_mnist_dataset(split, **kwargs)
    elif kind == "photos":
        ds = photo_crops_dataset(split, resolution=image_size or 64, seed=data_seed,
                                 in_channels=in_channels or 3, **kwargs)
    else:
        return image_dataset(kind, split, image_column=image_column, label_column=label_column,
                             require_labels=require_labels, resolution=image_size, skip_bad_images=skip_bad_images,
                             in_channels=in_channels or 3, seed=seed, epoch=epoch, **kwargs)
    check_fixed_schema(name, require_labels, image_column, label_column)
    return ds


class _ToModelInputs:
    """Row transform source -> model inputs; a picklable class so DataLoader workers can use it.

    Per row: adapt channels, resize (only if the source size differs from ``image_size``),
    optionally binarise dynamically or dequantise, map [0, 1] to ``value_range``, and emit torch tensors.
    """

    def __init__(self, image_size, in_channels, value_range, binarize, seed, epoch, with_ids, dequantize=False):
        self.image_size = image_size
        self.in_channels = in_channels
        self.lo, self.hi = float(value_range[0]), float(value_range[1])
        self.binarize = bool(binarize)
        self.dequantize = bool(dequantize)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.with_ids = bool(with_ids)

    def __call__(self, example: dict) -> dict:
        import torch

        if example.get("image") is None and example.get("bad_image"):  # skipped: collate_batch drops and counts it
            return {"pixel_values": None, "bad_image": example["bad_image"]}
        x = np.asarray(example["image"], dtype=np.float32)
        if x.ndim == 2:
            x = x[None]
        x = adapt_pixels(torch.from_numpy(np.ascontiguousarray(x))[None], self.in_channels, self.image_size)[0].numpy()
        ex_id = example.get("id")
        x = example_noise(x, binarize=self.binarize, dequantize=self.dequantize, seed=self.seed, epoch=self.epoch,
                          example_id=ex_id)
        x = to_value_range(x, self.lo, self.hi)
        out: dict[str, Any] = {"pixel_values": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))}
        if "label" in example and example["label"] is not None:
            out["labels"] = int(example["label"])
        if "factors" in example and example["factors"] is not None:
            out["factors"] = torch.as_tensor(example["factors"], dtype=torch.long)
        if self.with_ids and ex_id is not None:
            out["example_id"] = int(ex_id)
        return out


def build_dataset(
    name: str,
    split: str = "train",
    *,
    image_size: Optional[int] = None,
    in_channels: Optional[int] = None,
    value_range: Sequence[float] = (0.0, 1.0),
    binarize: bool = False,
    dequantize: bool = False,
    seed: int = 0,
    shuffle: bool = True,
    shuffle_buffer: int = 1000,
    epoch: int = 0,
    process_index: int = 0,
    num_processes: int = 1,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    require_labels: bool = False,
    data_seed: int = 0,
    with_ids: bool = False,
    **kwargs,
):
    """Build the model-ready stream of one split.

    Args:
        name: ``"shapes"``, ``"fashion_mnist"``, ``"photos"``, or a ``datasets`` id / local
            path / image folder.
        split: ``"train"`` is shuffled (when ``shuffle``); other splits keep their order.
        image_size: output side.  Procedural sources render at this size; others are resized
            (bilinear, antialiased) or resized-and-cropped (generic image datasets).  ``None``:
            the source's native size (see :func:`describe_dataset`).
        in_channels: 1 or 3; sources are converted (grey <-> RGB) when they differ.
        value_range: ``(lo, hi)`` the [0, 1] intensities are mapped to: ``(0, 1)`` for
            Bernoulli decoders, ``(-1, 1)`` for Gaussian / Laplace decoders and the KL autoencoder.
        binarize: dynamic binarisation, ``x ~ Bernoulli(intensity)`` (before ``value_range``).
            Train: fresh noise every epoch, a pure function of ``(seed, epoch, example)``.
            Other splits: fixed noise (epoch 0), so evaluations are comparable across epochs.
        dequantize: uniform dequantisation of the 8-bit levels k = round(255 · intensity):
            ``(k + u) / 256``, u ~ U[0, 1) (before ``value_range``), drawn like the binarisation noise;
            for continuous likelihoods (Gaussian, Laplace). Exclusive with ``binarize``.
        seed: shuffle buffer, binarisation / dequantisation noise and random crops.
        shuffle, shuffle_buffer: buffer shuffling of the train split (the shard order is
            shuffled too).
        epoch: train split only: reshuffles (the shuffle seed is a hash of ``(seed, epoch)``),
            and re-draws binarisation noise and random crops.  Build a new stream for each
            epoch.  ``ds.set_epoch`` is deliberately not used (it does not survive ``.map``,
            and accelerate resets it to its loader's iteration count); a later
            ``set_epoch(0)``, as a fresh accelerate loader does, is a no-op, while
            ``set_epoch(n > 0)`` would only permute the order further.
        process_index, num_processes: distributed rank / world size; each process sees a
            disjoint part of the stream (``datasets.distributed.split_dataset_by_node``).
        image_column, label_column, require_labels: for generic datasets (``ValueError`` when a
            column is missing, naming the columns found).
        data_seed: content of procedural sources (shapes factors and held-out split, photo
            crop positions); kept separate from ``seed`` so that runs with different training
            seeds see the same data.
        with_ids: also emit ``example_id`` (int) for sources that have ids.
        **kwargs: passed to the source (e.g. ``num_examples`` for shapes / photos,
            ``data_dir`` for Fashion-MNIST, ``random_crop`` for image datasets).

    Returns:
        ``datasets.IterableDataset`` (also a ``torch.utils.data.IterableDataset``) of rows
        ``{"pixel_values": float32 (C, H, W), ["labels": int], ["factors": int64 (5,)]}``;
        use :func:`collate_batch` (or torch's default collate) to batch it.
    """
    check_stream_args(process_index, num_processes, in_channels, value_range)
    check_noise_args(binarize, dequantize)
    is_train = split == "train"
    ds = source_dataset(name, split, image_size=image_size, in_channels=in_channels, seed=seed,
                        data_seed=data_seed, epoch=epoch if is_train else 0, image_column=image_column,
                        label_column=label_column, require_labels=require_labels, **kwargs)
    ds = order_stream(ds, split, shuffle=shuffle, seed=seed, epoch=epoch, shuffle_buffer=shuffle_buffer,
                      process_index=process_index, num_processes=num_processes)
    mapper = _ToModelInputs(image_size, in_channels, value_range, binarize, seed,
                            epoch if is_train else 0, with_ids, dequantize)
    return ds.map(mapper, remove_columns=_SOURCE_COLUMNS)


def collate_batch(rows: Sequence[dict]) -> dict:
    """Stack a list of rows into a batch: tensors are stacked, numbers become 1-D tensors.

    ``pixel_values`` -> (B, C, H, W) float32, ``labels`` -> (B,) int64, ``factors`` ->
    (B, 5) int64.  Keys must be the same in every row. Rows of images skipped as unreadable
    (``skip_bad_images``) are dropped; their paths are listed in ``batch["bad_images"]``, and a batch
    of only such rows is ``{"bad_images": [...]}``.
    """
    import torch

    if not rows:
        raise ValueError("collate_batch got an empty list of rows")
    bad = [row["bad_image"] for row in rows if row.get("pixel_values") is None and row.get("bad_image")]
    if bad or "bad_image" in rows[0]:
        rows = [{k: v for k, v in row.items() if k != "bad_image"} for row in rows if row.get("pixel_values") is not None]
        if not rows:
            return {"bad_images": bad}
        return {**collate_batch(rows), **({"bad_images": bad} if bad else {})}
    keys = list(rows[0])
    batch = {}
    for key in keys:
        try:
            values = [row[key] for row in rows]
        except KeyError:
            raise ValueError(f"row is missing key {key!r}; rows must all have keys {keys}") from None
        first = values[0]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, np.ndarray):
            batch[key] = torch.from_numpy(np.stack(values))
        elif isinstance(first, bool) or isinstance(first, (int, np.integer)):
            batch[key] = torch.tensor([int(v) for v in values], dtype=torch.long)
        elif isinstance(first, (float, np.floating)):
            batch[key] = torch.tensor(values, dtype=torch.float32)
        elif isinstance(first, (list, tuple)):
            batch[key] = torch.as_tensor(values)
        else:
            batch[key] = values
    return batch


def describe_dataset(name: str, *, image_size: Optional[int] = None, **kwargs) -> dict:
    """Defaults a trainer needs before it sees any data.

    Returns ``{"image_size", "in_channels", "num_classes", "num_examples"}``;
    ``num_examples`` maps split -> count where known (``None`` for generic datasets).
    shapes -> 64, 1, 3; fashion_mnist -> 28, 1, 10; photos -> resolution (64), 3, None.
    Generic datasets: ``image_size`` as given (None = native), 3 channels, and the number
    of classes of a ``ClassLabel`` label column when the stream's features tell it.
    """
    kind = canonical_dataset(name)
    if kind == "shapes":
        n = kwargs.get("num_examples")
        return {"image_size": image_size or 64, "in_channels": 1, "num_classes": len(SHAPE_NAMES),
                "num_examples": {s: n or c for s, c in SHAPES_NUM_EXAMPLES.items()}}
    if kind == "fashion_mnist":
        return {"image_size": image_size or 28, "in_channels": 1, "num_classes": len(FASHION_MNIST_CLASSES),
                "num_examples": {"train": 60_000, "test": 10_000}}
    if kind == "photos":
        n = kwargs.get("num_examples")
        return {"image_size": image_size or kwargs.get("resolution", 64), "in_channels": 3, "num_classes": None,
                "num_examples": {s: n or c for s, c in PHOTO_NUM_EXAMPLES.items()}}
    info = {"image_size": image_size, "in_channels": 3, "num_classes": None, "num_examples": None}
    try:  # a local image folder: the sizes of its splits (so --num_epochs works)
        from .images import _is_image_folder, image_folder_files

        path = os.path.expanduser(str(name))
        if kwargs.get("data_dir") is None and os.path.isdir(path) and _is_image_folder(path):
            info["num_examples"] = {split: len(files) for split, files in image_folder_files(path)[0].items()}
    except (OSError, ValueError):  # a bad folder is reported with its reason when the stream is built
        pass
    try:  # best effort: only reads metadata of a local folder / cached dataset
        from .images import _load_stream

        ds = _load_stream(kind, kwargs.get("split", "train"), kwargs.get("data_dir"), {})
        features = ds.features or {}
        label = kwargs.get("label_column") or next((c for c in ("label", "labels") if c in features), None)
        if label is not None and hasattr(features.get(label), "num_classes"):
            info["num_classes"] = int(features[label].num_classes)
    except Exception:
        pass
    return info
