"""The training stream: epoch after epoch of batches, resumable exactly.

A stream is a pure function of (dataset, seed, epoch, process, number of processes, DataLoader workers), so the
data position is just (epoch, batches consumed in it). Resuming rebuilds that epoch's stream and skips the
consumed batches: the batches that follow are the ones an uninterrupted run would have seen. (`datasets`' `skip`
is avoided on purpose: it freezes the shard order, which changes the epoch's stream.)

Two kinds of source, one interface:

* Arrow-native sources (shapes, photos, Fashion-MNIST from local files) stream whole batches from an Arrow cache
  (`hf_vae.data.build_batches`): no Python object per example, so they need no workers (default 0).
* Everything else (image folders, Hub datasets) is decoded, resized and cropped row by row in DataLoader worker
  processes (`hf_vae.data.build_dataset`), `default_num_workers()` of them unless `num_workers` is given, with
  prefetching, and pinned memory when the batches go to a CUDA device (copied with `non_blocking=True`).

Exactness with workers: `datasets` gives each worker whole shards and the DataLoader takes batches from the
workers in turn, so the batch sequence is a pure function of the number of workers too. A resumed run with the
same `num_workers` (and processes) sees exactly the batches of an uninterrupted one; with another number of
workers it sees every example of the epoch's remaining shards, in another order.

No noise is drawn here: dynamic binarisation and dequantisation are drawn on the training device
(`hf_vae.data.noise`).

Each process reads its own shard, builds its own loader and drops its last incomplete batch, so batch shapes
never vary. The loader gets an explicit `torch.Generator`: creating a DataLoader iterator would otherwise draw
a seed from the global RNG, and a resumed run (which creates its loader at a different moment) would diverge.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Iterator, Optional

import torch

logger = logging.getLogger("hf_vae.training")

PROCEDURAL = ("shapes", "dsprites", "photos", "photo_crops")


def default_num_workers(num_processes: int = 1) -> int:
    """DataLoader workers for a decode-heavy source: the CPUs this process's share leaves after itself, 1 to 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus // max(1, num_processes) - 1))


class TrainStream:
    """Endless iterator over training batches; `epoch` and `batches` are its position."""

    def __init__(self, dataset: str, settings: Dict, *, batch_size: int, seed: int, data_seed: int,
                 process_index: int = 0, num_processes: int = 1, shuffle_buffer: int = 1000,
                 num_workers: Optional[int] = None,
                 require_labels: bool = False, image_column: Optional[str] = None,
                 label_column: Optional[str] = None, data_dir: Optional[str] = None,
                 num_examples: Optional[int] = None, epoch: int = 0, batches: int = 0, skip_bad_images: bool = False,
                 skipped_images: int = 0, pin_memory: bool = False):
        self.dataset = dataset
        self.settings = settings
        self.batch_size = batch_size
        self.seed = seed
        self.data_seed = data_seed
        self.process_index = process_index
        self.num_processes = num_processes
        self.shuffle_buffer = shuffle_buffer
        self.pin_memory = pin_memory
        self.require_labels = require_labels
        self.extra = {}
        if image_column is not None:
            self.extra["image_column"] = image_column
        if label_column is not None:
            self.extra["label_column"] = label_column
        if data_dir is not None:
            self.extra["data_dir"] = data_dir
        if skip_bad_images:
            self.extra["skip_bad_images"] = True
        #: unreadable images skipped so far by this process (with skip_bad_images)
        self.skipped_images = skipped_images
        if num_examples is not None:
            if str(dataset).lower() not in PROCEDURAL:
                raise ValueError(f"--num_train_examples applies to the procedural datasets {PROCEDURAL}, got "
                                 f"--dataset {dataset}.")
            self.extra["num_examples"] = num_examples
        self.epoch = epoch
        self.batches = batches
        from ..data import is_arrow_native

        self.arrow_native = is_arrow_native(dataset, data_dir)
        if num_workers is None:
            num_workers = 0 if self.arrow_native else default_num_workers(num_processes)
        self.num_workers = num_workers

    def build(self, epoch: int):
        """The model-ready stream of this process for one epoch (whole batches when Arrow-native, else rows)."""
        from ..data import build_batches, build_dataset

        s = self.settings
        common = dict(image_size=s["image_size"], in_channels=s["in_channels"], value_range=s["value_range"],
                      seed=self.seed, shuffle=True, shuffle_buffer=self.shuffle_buffer, epoch=epoch,
                      process_index=self.process_index, num_processes=self.num_processes,
                      require_labels=self.require_labels, data_seed=self.data_seed, **self.extra)
        if self.arrow_native:  # nothing to decode, so no unreadable images to skip
            common.pop("skip_bad_images", None)
            return build_batches(self.dataset, "train", self.batch_size, drop_last=True, **common)
        return build_dataset(self.dataset, "train", binarize=False, dequantize=False, **common)

    def loader(self, epoch: int) -> torch.utils.data.DataLoader:
        from ..data import batch_to_tensors, collate_batch

        batching = dict(batch_size=None, collate_fn=batch_to_tensors) if self.arrow_native else \
            dict(batch_size=self.batch_size, collate_fn=collate_batch, drop_last=True)
        workers = dict(prefetch_factor=4, persistent_workers=False) if self.num_workers > 0 else {}
        return torch.utils.data.DataLoader(
            self.build(epoch), num_workers=self.num_workers, pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(self.seed + epoch), **batching, **workers)

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        while True:
            produced = 0
            iterator = iter(self.loader(self.epoch))
            # Resume: re-read and drop the batches this epoch already gave (same order, same noise).
            for _ in range(self.batches):
                if next(iterator, None) is None:
                    break
                produced += 1
            for batch in iterator:
                produced += 1
                self.batches += 1
                for path in batch.pop("bad_images", ()):
                    self.skipped_images += 1
                    logger.warning("Skipped unreadable image %s (%d so far).", path, self.skipped_images)
                if "pixel_values" in batch:  # else every image of the batch was unreadable
                    yield batch
            if produced == 0:
                raise ValueError(
                    f"The training split of {self.dataset!r} gave process {self.process_index} no complete batch "
                    f"of {self.batch_size} examples in epoch {self.epoch}: expected at least batch_size * "
                    f"num_processes = {self.batch_size * self.num_processes} examples; lower --batch_size.")
            self.epoch += 1
            self.batches = 0
