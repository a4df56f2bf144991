"""Arrow caches of the built-in sources: written once, memory-mapped, streamed.

Fashion-MNIST, the shapes and the photo crops are small, fixed sets of uint8 images.  Streaming them row by row
through Python costs far more than the model step of a small network, so each (source, split, settings) is
written once as an Arrow file and then streamed from it as Arrow record batches: no Python object per example.

Files live under ``<HF datasets cache>/hf_vae/`` (``datasets.config.HF_DATASETS_CACHE``, i.e. ``HF_DATASETS_CACHE``
or ``HF_HOME``), named ``<source>-<key hash>.arrow``.  The key is a SHA-256 of everything the content depends on:
the source's :data:`CACHE_VERSION`, its settings (split, seed, size, ...) and, for files on disk, a hash of the
files' bytes.  A change to any of them writes a new file; nothing is ever overwritten in place.  Writing goes
to a temporary file in the same folder that is renamed into place, so concurrent processes (several ranks, a
killed run) never see a partial file.

Columns: ``image`` fixed-size list of uint8 (C * H * W, channel-major), and, when the source has them,
``label`` int64, ``factors`` fixed-size list of int64 (5), ``id`` int64.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
from typing import Callable, Iterable

import numpy as np

__all__ = ["CACHE_VERSION", "cache_dir", "cached_arrow_dataset", "file_sha256", "image_table"]

#: bump when the layout or the content of any cached source changes
CACHE_VERSION = 1


def cache_dir() -> str:
    """Folder of hf_vae's Arrow caches inside the Hugging Face datasets cache."""
    from datasets import config

    return os.path.join(str(config.HF_DATASETS_CACHE), "hf_vae")


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (memoised per path, size and modification time)."""
    st = os.stat(path)
    return _file_sha256(os.path.abspath(path), st.st_size, st.st_mtime_ns)


def image_table(images: np.ndarray, **columns):
    """A ``pyarrow.Table`` with ``image`` = uint8 images (N, C, H, W) flattened per row, plus the given columns.

    ``columns`` values are 1-D arrays (int64 columns) or 2-D arrays (fixed-size list columns).
    """
    import pyarrow as pa

    images = np.ascontiguousarray(images, dtype=np.uint8)
    n = images.shape[0]
    data = {"image": pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), int(np.prod(images.shape[1:])))}
    for name, values in columns.items():
        values = np.ascontiguousarray(values, dtype=np.int64)
        if values.ndim == 1:
            data[name] = pa.array(values)
        else:
            data[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
        if len(data[name]) != n:
            raise ValueError(f"column {name!r} has {len(data[name])} rows, expected {n} (one per image)")
    return pa.table(data)


def cached_arrow_dataset(source: str, key: dict, write_tables: Callable[[], Iterable]):
    """The memory-mapped ``datasets.Dataset`` of ``source`` for ``key``, written by ``write_tables`` on first use.

    Args:
        source: file-name prefix (``"fashion_mnist"``, ``"shapes"``, ...).
        key: JSON-serialisable description of everything the content depends on.
        write_tables: called only when the file is missing; yields ``pyarrow.Table`` chunks of one schema
            (see :func:`image_table`), written in order.
    """
    import pyarrow as pa
    from datasets import Dataset

    text = json.dumps({"source": source, "version": CACHE_VERSION, **key}, sort_keys=True, default=str)
    path = os.path.join(cache_dir(), f"{source}-{hashlib.sha256(text.encode()).hexdigest()[:20]}.arrow")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        try:
            writer = None
            with pa.OSFile(tmp, "wb") as sink:
                for table in write_tables():
                    if writer is None:
                        writer = pa.ipc.new_stream(sink, table.schema)
                    writer.write_table(table)
                if writer is None:
                    raise ValueError(f"the {source} source wrote no rows for {key}")
                writer.close()
            os.replace(tmp, path)  # atomic: readers see the whole file or none
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return Dataset.from_file(path)
