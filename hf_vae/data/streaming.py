"""What the row stream (:func:`hf_vae.data.build_dataset`) and the batch stream (:func:`hf_vae.data.build_batches`)
share: their argument checks, their order (the epoch's shuffle, the split among processes) and the map of [0, 1]
intensities to the model's value range. Both streams of a split therefore visit its examples in the same order
for the same ``(seed, epoch, process_index, num_processes)`` and shuffle buffer.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ._hashing import hash_ids, seed_key
from .names import canonical_dataset

__all__ = ["check_fixed_schema", "check_stream_args", "order_stream", "shuffle_seed", "to_value_range"]

_SALT_SHUFFLE = 0x5A1F_F1E5
#: built-in sources whose rows have no label
_UNLABELLED_SOURCES = ("photos",)


def check_stream_args(process_index: int, num_processes: int, in_channels: Optional[int],
                      value_range: Sequence[float]) -> None:
    if not 0 <= int(process_index) < int(num_processes):
        raise ValueError(f"process_index must be in [0, num_processes), got {process_index} / {num_processes}")
    if in_channels not in (None, 1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    if len(value_range) != 2 or not value_range[0] < value_range[1]:
        raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range}")


def check_fixed_schema(name: str, require_labels: bool, image_column: Optional[str],
                       label_column: Optional[str]) -> None:
    """Column arguments for a built-in source, whose columns are fixed."""
    if require_labels and canonical_dataset(name) in _UNLABELLED_SOURCES:
        raise ValueError(f"labels are required but dataset {name!r} has none (its rows have image and id only)")
    if label_column not in (None, "label", "labels"):
        raise ValueError(f"dataset {name!r} has a fixed schema; label_column={label_column!r} not found, expected 'label'")
    if image_column not in (None, "image"):
        raise ValueError(f"dataset {name!r} has a fixed schema; image_column={image_column!r} not found, expected 'image'")


def shuffle_seed(seed: int, epoch: int) -> int:
    """Seed of the shuffle buffer (and shard order) for ``epoch``: a hash of ``(seed, epoch)``."""
    return int(hash_ids(seed_key(seed, _SALT_SHUFFLE), np.asarray([int(epoch)]))[0]) & ((1 << 63) - 1)


def order_stream(ds, split: str, *, shuffle: bool, seed: int, epoch: int, shuffle_buffer: int, process_index: int,
                 num_processes: int, **shuffle_options):
    """Shuffle the train split of the stream `ds` (shard order and buffer) for `epoch`, then keep this process's part.

    `shuffle_options` go to ``ds.shuffle``.
    """
    from datasets.distributed import split_dataset_by_node

    if split == "train" and shuffle:
        # The epoch is folded into the shuffle seed instead of relying on `ds.set_epoch`: datasets does not carry
        # the epoch through `.map()`, and accelerate's DataLoader calls `dataset.set_epoch(its own iteration
        # count)` -- 0 for a fresh loader -- which would silently undo it.  The shuffle also permutes the shard order.
        ds = ds.shuffle(seed=shuffle_seed(seed, epoch), buffer_size=int(shuffle_buffer), **shuffle_options)
    if num_processes > 1:
        # Same seed on every process -> same shuffled shard list; each rank then keeps its own shards (when
        # num_shards % world_size == 0) or every world_size-th example.
        ds = split_dataset_by_node(ds, rank=int(process_index), world_size=int(num_processes))
    return ds


def to_value_range(x, lo: float, hi: float):
    """Intensities in [0, 1] (numpy or torch) -> ``[lo, hi]``; `x` itself for ``(0, 1)``."""
    return x if (lo, hi) == (0.0, 1.0) else x * (hi - lo) + lo
