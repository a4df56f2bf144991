"""The training stream: epoch after epoch of batches from `hf_vae.data.build_dataset`, resumable exactly.

A stream is a pure function of (dataset, seed, epoch, process, number of processes), so the data position is
just (epoch, batches consumed in it). Resuming rebuilds that epoch's stream and skips the consumed batches:
the batches that follow are the ones an uninterrupted run would have seen. (`datasets`' `skip` is avoided on
purpose: it freezes the shard order, which changes the epoch's stream.)

Each process reads its own shard, builds its own loader and drops its last incomplete batch, so batch shapes
never vary. The loader gets an explicit `torch.Generator`: creating a DataLoader iterator would otherwise draw
a seed from the global RNG, and a resumed run (which creates its loader at a different moment) would diverge.
"""

from __future__ import annotations

import logging
from typing import Dict, Iterator, Optional

import torch

logger = logging.getLogger("hf_vae.training")

PROCEDURAL = ("shapes", "dsprites", "photos", "photo_crops")


class TrainStream:
    """Endless iterator over training batches; `epoch` and `batches` are its position."""

    def __init__(self, dataset: str, settings: Dict, *, batch_size: int, seed: int, data_seed: int,
                 process_index: int = 0, num_processes: int = 1, shuffle_buffer: int = 1000, num_workers: int = 0,
                 require_labels: bool = False, image_column: Optional[str] = None,
                 label_column: Optional[str] = None, data_dir: Optional[str] = None,
                 num_examples: Optional[int] = None, epoch: int = 0, batches: int = 0, skip_bad_images: bool = False,
                 skipped_images: int = 0):
        self.dataset = dataset
        self.settings = settings
        self.batch_size = batch_size
        self.seed = seed
        self.data_seed = data_seed
        self.process_index = process_index
        self.num_processes = num_processes
        self.shuffle_buffer = shuffle_buffer
        self.num_workers = num_workers
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

    def build(self, epoch: int):
        """The model-ready stream of this process for one epoch."""
        from ..data import build_dataset

        s = self.settings
        return build_dataset(self.dataset, "train", image_size=s["image_size"], in_channels=s["in_channels"],
                             value_range=s["value_range"], binarize=s["binarize"],
                             dequantize=s["dequantize"], seed=self.seed, shuffle=True,
                             shuffle_buffer=self.shuffle_buffer, epoch=epoch, process_index=self.process_index,
                             num_processes=self.num_processes, require_labels=self.require_labels,
                             data_seed=self.data_seed, **self.extra)

    def loader(self, epoch: int) -> torch.utils.data.DataLoader:
        from ..data import collate_batch

        return torch.utils.data.DataLoader(
            self.build(epoch), batch_size=self.batch_size, collate_fn=collate_batch, drop_last=True,
            num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.seed + epoch),
            persistent_workers=False)

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
