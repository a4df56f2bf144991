"""Fashion-MNIST (Xiao et al., 2017) as a ``datasets.IterableDataset`` stream.

Sources, in order:

1. ``data_dir`` when given: the four IDX files (``.gz`` or plain) in that folder.
2. The Hub dataset ``zalando-datasets/fashion_mnist`` (``streaming=True``), only when the
   Hub is allowed, i.e. neither ``HF_HUB_OFFLINE`` nor ``HF_DATASETS_OFFLINE`` is set to a
   true value, and answers a quick connection probe (so that an offline machine does not
   wait for ``datasets``' retries).  A failure there (no network, no such repo) falls
   through to 3, with one warning line.
3. The Debian package ``dataset-fashion-mnist``: IDX files under
   ``/usr/share/datasets/fashion-mnist``.

The IDX arrays are decoded once per process (cached) and rows are yielded as numpy views,
so one 60,000-row epoch streams in well under a second before any model-side mapping.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
from typing import Iterator, Optional

import numpy as np

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_HUB_ID",
    "DEFAULT_FASHION_MNIST_DIR",
    "read_idx",
    "load_fashion_mnist_arrays",
    "fashion_mnist_dataset",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FILE_PREFIX = {"train": "train", "test": "t10k"}

#: IDX magic numbers of the two files kinds used by (Fashion-)MNIST: unsigned bytes, 3-D / 1-D.
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
# IDX type codes (third byte of the magic) -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_INSTALL_HINT = (
    "Install the Debian package with `apt-get install dataset-fashion-mnist` "
    f"(files go to {DEFAULT_FASHION_MNIST_DIR}), or pass data_dir= pointing at a folder with "
    "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] "
    "and t10k-labels-idx1-ubyte[.gz], or unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE and "
    f"have network access to the Hub dataset {FASHION_MNIST_HUB_ID}."
)


def read_idx(path: str | os.PathLike, expected_magic: Optional[int] = None) -> np.ndarray:
    """Read an IDX file (as used by MNIST / Fashion-MNIST), gzip-compressed or plain.

    Args:
        path: file path; gzip is detected from the content, not the name.
        expected_magic: if given, the magic number the file must have (2051 for image files,
            2049 for label files).  Without it, either of those two is accepted.

    Returns:
        The array in native byte order: ``uint8`` of shape ``(N, rows, cols)`` for an
        images file (magic 2051), ``(N,)`` for a labels file (magic 2049).

    Raises:
        ValueError: wrong magic number, or a payload whose size does not match the header.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an IDX file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    allowed = (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC) if expected_magic is None else (int(expected_magic),)
    if magic not in allowed:
        raise ValueError(
            f"{path}: bad IDX magic number {magic} (0x{magic:08x}); expected "
            + " or ".join(f"{m} ({'images' if m == IDX_IMAGES_MAGIC else 'labels' if m == IDX_LABELS_MAGIC else 'IDX'})" for m in allowed)
        )
    type_code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if magic >> 16 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: malformed IDX header, magic {magic} (0x{magic:08x})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header (need {header} bytes, file has {len(data)})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected_bytes:
        raise ValueError(
            f"{path}: IDX payload has {len(data) - header} bytes but header shape {shape} "
            f"of {dtype} needs {expected_bytes}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _find_file(data_dir: str, stem: str) -> Optional[str]:
    for name in (stem + ".gz", stem):
        p = os.path.join(data_dir, name)
        if os.path.isfile(p):
            return p
    return None


def _idx_paths(split: str, data_dir: str) -> Optional[tuple[str, str]]:
    prefix = _FILE_PREFIX[split]
    images = _find_file(data_dir, f"{prefix}-images-idx3-ubyte")
    labels = _find_file(data_dir, f"{prefix}-labels-idx1-ubyte")
    return (images, labels) if images and labels else None


@functools.lru_cache(maxsize=8)
def _load_arrays_cached(images_path: str, labels_path: str, mtimes: tuple) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC).astype(np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Fashion-MNIST files disagree: {images_path} has shape {images.shape}, "
            f"{labels_path} has shape {labels.shape}; expected (N, 28, 28) and (N,)"
        )
    images.setflags(write=False)  # shared through the cache
    labels.setflags(write=False)
    return images, labels


def load_fashion_mnist_arrays(split: str = "train", data_dir: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode the local IDX files of a split: ``(images uint8 (N, 28, 28), labels int64 (N,))``.

    Cached per process (read-only arrays).  Raises ``FileNotFoundError`` with install
    instructions when the files are missing.
    """
    split = _check_split(split)
    folder = data_dir or DEFAULT_FASHION_MNIST_DIR
    paths = _idx_paths(split, folder)
    if paths is None:
        raise FileNotFoundError(f"Fashion-MNIST {split} IDX files not found in {folder}. {_INSTALL_HINT}")
    mtimes = tuple(os.stat(p).st_mtime_ns for p in paths)
    return _load_arrays_cached(paths[0], paths[1], mtimes)


def _check_split(split: str) -> str:
    if split not in _FILE_PREFIX:
        raise ValueError(f"Fashion-MNIST split must be one of {sorted(_FILE_PREFIX)}, got {split!r}")
    return split


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_allowed() -> bool:
    """True unless HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set (read at call time)."""
    return not (_env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE"))


@functools.lru_cache(maxsize=None)
def hub_unreachable_reason(endpoint: Optional[str] = None, timeout: float = 3.0) -> Optional[str]:
    """Why the Hub cannot be reached from here, or None when it can: one TCP connection to its host (or to the
    HTTPS proxy), cached per process.

    `datasets` retries a Hub that does not answer for about a minute, with an error line per retry, before it
    gives up; this probe takes milliseconds when there is no network (or no name resolution), `timeout` at
    most, so the local copy is used at once.
    """
    import socket
    from urllib.parse import urlparse

    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy if proxy and endpoint.startswith("https") else endpoint)
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname, port), timeout=timeout).close()
    except OSError as error:
        return f"{target.hostname}:{port} {'(proxy) ' if proxy else ''}did not answer: {error}"
    return None


_warned: set = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def _generate_idx(ranges: list, images_path: str, labels_path: str, mtimes: tuple) -> Iterator[dict]:
    # Small picklable arguments (paths, index ranges); the arrays come from the per-process
    # cache, so DataLoader workers decode the files at most once each.
    images, labels = _load_arrays_cached(images_path, labels_path, mtimes)
    for start, stop in ranges:
        # Convert one shard to float at a time: ~2 MB per 3,750 rows, not 188 MB per split.
        block = images[start:stop].astype(np.float32)
        block *= 1.0 / 255.0
        block = block[:, None]  # (n, 1, 28, 28)
        for i in range(stop - start):
            yield {"image": block[i], "label": int(labels[start + i]), "id": start + i}


def _local_dataset(split: str, data_dir: str, num_shards: int):
    from datasets import IterableDataset, NamedSplit

    images, _ = load_fashion_mnist_arrays(split, data_dir)  # validates, warms the cache
    paths = _idx_paths(split, data_dir)
    mtimes = tuple(os.stat(p).st_mtime_ns for p in paths)
    n = images.shape[0]
    bounds = np.linspace(0, n, max(1, min(num_shards, n)) + 1).astype(int)
    ranges = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return IterableDataset.from_generator(
        _generate_idx,
        gen_kwargs={"ranges": ranges, "images_path": paths[0], "labels_path": paths[1], "mtimes": mtimes},
        split=NamedSplit(split),
    )


def _hub_row(example: dict, idx: int) -> dict:
    image = example["image"]
    if not isinstance(image, np.ndarray):
        image = np.asarray(image.convert("L"))  # PIL image from the Hub's Image() feature
    image = image.astype(np.float32).reshape(1, 28, 28) / 255.0
    return {"image": image, "label": int(example["label"]), "id": int(idx)}


def _hub_dataset(split: str):
    from datasets import load_dataset

    ds = load_dataset(FASHION_MNIST_HUB_ID, split=split, streaming=True)
    # Ids are stream positions: the Hub dataset is one parquet file per split, so they are
    # stable for an unshuffled stream.
    return ds.map(_hub_row, with_indices=True, remove_columns=list(ds.column_names or ["image"]))


def fashion_mnist_dataset(split: str = "train", data_dir: Optional[str] = None, *, num_shards: int = 16):
    """Fashion-MNIST split as a ``datasets.IterableDataset``.

    Args:
        split: ``"train"`` (60,000 rows) or ``"test"`` (10,000 rows).
        data_dir: folder with the IDX files; skips the Hub and the default folder.
        num_shards: shards of the local stream (16 divides both splits evenly among 1, 2, 4,
            8 or 16 processes).

    Rows: ``image`` float32 ndarray (1, 28, 28) in [0, 1]; ``label`` int in 0..9 (see
    :data:`FASHION_MNIST_CLASSES`); ``id`` int row index in the split's file.

    Raises:
        FileNotFoundError: no source worked; the message says how to get the data.
    """
    split = _check_split(split)
    if data_dir is not None:
        if _idx_paths(split, data_dir) is None:
            raise FileNotFoundError(f"Fashion-MNIST {split} IDX files not found in data_dir={data_dir!r}. {_INSTALL_HINT}")
        return _local_dataset(split, data_dir, num_shards)

    hub_error: Optional[BaseException] = None
    unreachable = hub_unreachable_reason() if hub_allowed() else None
    if unreachable and _idx_paths(split, DEFAULT_FASHION_MNIST_DIR) is not None:
        _warn_once(f"Fashion-MNIST: the Hub is not reachable ({unreachable}); using the local copy in "
                   f"{DEFAULT_FASHION_MNIST_DIR} (HF_HUB_OFFLINE=1 skips this check).")
        return _local_dataset(split, DEFAULT_FASHION_MNIST_DIR, num_shards)
    if hub_allowed() and not unreachable:
        try:
            return _hub_dataset(split)
        except Exception as err:  # no network, repo moved, ... -> fall back to local files
            hub_error = err
            logger.info("Fashion-MNIST from the Hub failed (%s); trying %s", err, DEFAULT_FASHION_MNIST_DIR)

    if _idx_paths(split, DEFAULT_FASHION_MNIST_DIR) is not None:
        if hub_error is not None:
            _warn_once(f"Fashion-MNIST: could not stream {FASHION_MNIST_HUB_ID} from the Hub "
                       f"({type(hub_error).__name__}: {hub_error}); using the local copy in "
                       f"{DEFAULT_FASHION_MNIST_DIR}.")
        return _local_dataset(split, DEFAULT_FASHION_MNIST_DIR, num_shards)

    why = (
        f"the Hub failed with {type(hub_error).__name__}: {hub_error}"
        if hub_error is not None
        else f"the Hub is not reachable ({unreachable})" if unreachable
        else "the Hub is disabled (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)"
    )
    raise FileNotFoundError(
        f"Fashion-MNIST {split} is not available: {why}, and no IDX files are in "
        f"{DEFAULT_FASHION_MNIST_DIR}. {_INSTALL_HINT}"
    ) from hub_error
