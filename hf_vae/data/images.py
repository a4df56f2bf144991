"""Generic image sources as ``datasets.IterableDataset`` streams.

* :func:`image_dataset` -- any ``datasets`` id, a local dataset folder (data files, an image
  folder, or a ``save_to_disk`` folder), always streamed.
* :func:`image_folder_dataset` -- ``load_dataset("imagefolder", data_dir=...)`` streamed.
* :func:`photo_crops_dataset` -- random crops of scikit-image's bundled RGB photos (offline).

Every source yields rows ``{"image": float32 ndarray (C, H, W) in [0, 1], ["label": int]}``
(plus ``id`` for the photo crops), so the model-side mapping in :mod:`hf_vae.data` is the
same for all of them.
"""

from __future__ import annotations

import functools
import os
import zlib
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ._hashing import content_key, seed_key, uniform_ints

__all__ = [
    "IMAGE_COLUMN_CANDIDATES",
    "LABEL_COLUMN_CANDIDATES",
    "PHOTO_NAMES",
    "PHOTO_NUM_EXAMPLES",
    "to_float_image",
    "resize_and_crop",
    "image_dataset",
    "image_folder_dataset",
    "available_photos",
    "photo_crops_dataset",
]

IMAGE_COLUMN_CANDIDATES: tuple[str, ...] = ("image", "img", "pixel_values")
LABEL_COLUMN_CANDIDATES: tuple[str, ...] = ("label", "labels")
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# PIL modes we know how to turn into L / RGB.  Anything else (LAB, HSV, multi-band
# scientific images...) is refused rather than silently misread.
_PIL_8BIT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
_PIL_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


# --------------------------------------------------------------------------------------
# Per-image conversion
# --------------------------------------------------------------------------------------
def _describe(image: Any, where: str) -> str:
    name = getattr(image, "filename", None) or where
    return f" ({name})" if name else ""


def to_float_image(image: Any, in_channels: int = 3, *, where: str = "") -> np.ndarray:
    """Convert one image to float32 ``(C, H, W)`` in [0, 1] with ``C = in_channels`` (1 or 3).

    Accepts a PIL image (any 8-bit mode, plus 16-bit / int32 / float greyscale), a
    ``{"bytes": ..., "path": ...}`` dict (an undecoded ``datasets.Image``), or an array
    (H, W), (H, W, C) or (C, H, W) of uint8 (0..255) or float (0..1).

    Raises:
        ValueError: unknown PIL mode or array layout; ``where`` names the example.
    """
    from PIL import Image

    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    if isinstance(image, dict) and ("bytes" in image or "path" in image):
        import io

        if image.get("bytes") is not None:
            image = Image.open(io.BytesIO(image["bytes"]))
        else:
            image = Image.open(image["path"])
    if isinstance(image, Image.Image):
        return _pil_to_float(image, in_channels, where)
    arr = np.asarray(image)
    return _array_to_float(arr, in_channels, where)


def _pil_to_float(image, in_channels: int, where: str) -> np.ndarray:
    mode = image.mode
    if mode in _PIL_WIDE_MODES:
        arr = np.asarray(image, dtype=np.float32)
        # Integer greyscale: "I;16*" is 16-bit; "I" is in practice a 16-bit PNG as opened by
        # older Pillow, unless its values fit in 8 bits.  "F" is taken to be in [0, 1].
        if mode != "F":
            arr = arr / (65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0)
        arr = np.clip(arr, 0.0, 1.0)[None]
        return np.repeat(arr, 3, axis=0) if in_channels == 3 else arr
    if mode not in _PIL_8BIT_MODES:
        raise ValueError(
            f"unexpected image mode {mode!r}{_describe(image, where)}; expected one of "
            f"{sorted(_PIL_8BIT_MODES | _PIL_WIDE_MODES)}"
        )
    # Alpha is dropped (PIL's convert), palettes expanded, CMYK/YCbCr converted.
    target = "RGB" if in_channels == 3 else "L"
    if mode != target:
        image = image.convert(target)
    arr = np.asarray(image, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return arr.astype(np.float32) * (1.0 / 255.0)


def _array_to_float(arr: np.ndarray, in_channels: int, where: str) -> np.ndarray:
    if arr.dtype == object or arr.ndim not in (2, 3):
        raise ValueError(f"unexpected image array{_describe(None, where)}: shape {arr.shape}, dtype {arr.dtype}; "
                         "expected (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4")
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3, 4):
        arr = arr.transpose(2, 0, 1)  # HWC -> CHW
    if arr.shape[0] not in (1, 3, 4):
        raise ValueError(f"unexpected image array{_describe(None, where)}: shape {arr.shape}; expected 1, 3 or 4 channels")
    if np.issubdtype(arr.dtype, np.integer):
        x = arr.astype(np.float32) / (255.0 if arr.dtype.itemsize == 1 or arr.max(initial=0) <= 255 else 65535.0)
    else:
        x = arr.astype(np.float32)
    x = np.clip(x[:3], 0.0, 1.0)  # drop alpha
    if x.shape[0] == in_channels:
        return np.ascontiguousarray(x)
    if in_channels == 3:
        return np.repeat(x, 3, axis=0)
    return _luminance(x)


def _luminance(x: np.ndarray) -> np.ndarray:
    """RGB (3, H, W) -> (1, H, W) with ITU-R 601 weights (what PIL's convert("L") uses)."""
    w = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    return np.tensordot(w, x, axes=1)[None].astype(np.float32)


def resize_and_crop(
    x: np.ndarray,
    resolution: int,
    *,
    random_crop: bool = False,
    rng: Optional[np.random.Generator] = None,
    resize: bool = True,
    where: str = "",
) -> np.ndarray:
    """Bring a float ``(C, H, W)`` image to ``(C, resolution, resolution)``.

    With ``resize=True`` the shorter side is first downscaled to ``resolution`` (area-
    averaging, antialiased), as in diffusers' training scripts; images are never upscaled,
    since that would train the model on blur.  Then a square is cropped: centred, or at a
    position drawn from ``rng`` when ``random_crop``.

    Raises:
        ValueError: the image is smaller than ``resolution`` on either side.
    """
    c, h, w = x.shape
    if min(h, w) < resolution:
        raise ValueError(
            f"image{_describe(None, where)} is {w}x{h} (WxH), smaller than resolution {resolution}; "
            f"expected both sides >= {resolution} (filter small images out or lower the resolution)"
        )
    if resize and min(h, w) > resolution:
        import torch
        import torch.nn.functional as F

        k = resolution / min(h, w)
        size = (max(resolution, round(h * k)), max(resolution, round(w * k)))
        x = F.interpolate(torch.from_numpy(np.ascontiguousarray(x))[None], size=size, mode="bilinear",
                          antialias=True, align_corners=False)[0].clamp_(0.0, 1.0).numpy()
        h, w = size
    if random_crop:
        rng = rng if rng is not None else np.random.default_rng()
        top = int(rng.integers(0, h - resolution + 1))
        left = int(rng.integers(0, w - resolution + 1))
    else:
        top, left = (h - resolution) // 2, (w - resolution) // 2
    return np.ascontiguousarray(x[:, top: top + resolution, left: left + resolution])


# --------------------------------------------------------------------------------------
# datasets-backed sources
# --------------------------------------------------------------------------------------
def _is_image_folder(path: str) -> bool:
    """A local folder that holds image files and no tabular data files / saved dataset."""
    tabular = (".parquet", ".arrow", ".csv", ".json", ".jsonl", ".txt", ".tsv")
    found_image = False
    for root, _dirs, files in os.walk(path):
        for f in files:
            lf = f.lower()
            if lf.endswith(tabular) and lf != "metadata.jsonl" and lf != "metadata.csv":
                return False
            if lf.endswith(_IMAGE_EXTENSIONS):
                found_image = True
    return found_image


#: Folder names read as splits in an image folder (``imagefolder``'s own list, plus common short forms).
SPLIT_FOLDER_NAMES: tuple[str, ...] = ("train", "training", "test", "testing", "eval", "evaluation", "valid",
                                       "validation", "val", "dev")
#: Share of a folder without split folders that is held out as the "test" split (see `image_folder_files`).
HELD_OUT_MODULUS = 10


def _images_in(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(_IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))


def _class_folders(folder: str) -> list[str]:
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))


def _files_of(folder: str) -> tuple[list[str], bool]:
    """Images of one split folder: directly inside (no labels) or one level down in class folders (labels)."""
    direct = _images_in(folder)
    classes = [c for c in _class_folders(folder) if _images_in(os.path.join(folder, c))]
    if direct and classes:
        raise ValueError(f"image folder {folder!r} mixes images ({len(direct)}) and class folders {classes}: "
                         f"expected either images directly inside, or one sub-folder per class")
    if classes:
        return [f for c in classes for f in _images_in(os.path.join(folder, c))], True
    return direct, False


def _held_out(relative_path: str) -> bool:
    return zlib.crc32(relative_path.replace(os.sep, "/").encode()) % HELD_OUT_MODULUS == 0


def image_folder_files(path: str) -> tuple[dict, bool]:
    """The splits of a local image folder, as people lay them out: ``({split: [files]}, has_labels)``.

    * ``path/train/*.png``, ``path/test/*.png`` (any names of `SPLIT_FOLDER_NAMES`): those splits, no labels.
    * ``path/train/<class>/*.png``, ``path/test/<class>/*.png``: those splits, one label per class folder.
    * ``path/<class>/*.png`` (no split folders): labels from the class folders, and a held-out split.
    * ``path/*.png`` (a flat folder): no labels, and a held-out split.

    The held-out ("test") split of a folder without split folders holds the images whose relative path (class
    folder included) has ``crc32(path) % 10 == 0``, about 10 %: decided by each file's name alone, so it is the
    same on every machine and run, and adding or removing images never moves another image across. A folder
    where no name falls there (fewer than ~10 images) holds out the one with the smallest crc32 instead. Labels
    index the sorted class-folder names.
    """
    splits = {d: os.path.join(path, d) for d in _class_folders(path) if d.lower() in SPLIT_FOLDER_NAMES}
    if splits:
        found = {name: _files_of(folder) for name, folder in splits.items()}
        labelled = {name for name, (_, has_labels) in found.items() if has_labels}
        if labelled and labelled != set(found):
            raise ValueError(f"image folder {path!r}: split folders {sorted(labelled)} have class sub-folders but "
                             f"{sorted(set(found) - labelled)} do not; expected the same layout in every split")
        files = {("test" if name.lower() in ("testing",) else "train" if name.lower() == "training"
                  else name.lower()): files for name, (files, _) in found.items()}
        return files, bool(labelled)
    files, has_labels = _files_of(path)
    if not files:
        raise ValueError(f"image folder {path!r} holds no images ({', '.join(_IMAGE_EXTENSIONS)}) directly or in "
                         f"sub-folders")
    relative = {f: os.path.relpath(f, path) for f in files}
    test = [f for f in files if _held_out(relative[f])]
    if not test and len(files) > 1:
        test = [min(files, key=lambda f: zlib.crc32(relative[f].replace(os.sep, "/").encode()))]
    train = [f for f in files if f not in set(test)]
    return {"train": train, "test": test}, has_labels


def _is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(os.path.join(path, "dataset_dict.json"))
    )


def _load_stream(name_or_path: str, split: str, data_dir: Optional[str], load_kwargs: dict):
    """Open ``name_or_path`` as a streaming ``IterableDataset`` for ``split``."""
    from datasets import load_dataset, load_from_disk

    path = os.path.expanduser(str(name_or_path))
    if _is_saved_dataset(path):
        # save_to_disk output: memory-mapped Arrow; stream it in shards.
        saved = load_from_disk(path)
        if hasattr(saved, "keys"):  # DatasetDict
            if split not in saved:
                raise ValueError(f"split {split!r} not found in {path}; available splits: {sorted(saved.keys())}")
            saved = saved[split]
        return saved.to_iterable_dataset(num_shards=min(16, max(1, len(saved))))
    if name_or_path == "imagefolder":
        if data_dir is None:
            raise ValueError("'imagefolder' needs data_dir=<folder of images>")
        return _shard_by_file(load_dataset("imagefolder", data_dir=data_dir, split=split, streaming=True, **load_kwargs))
    if data_dir is None and os.path.isdir(path) and _is_image_folder(path):
        # The layout is read here (split folders, class folders, flat) rather than left to imagefolder's guess,
        # which takes train/ and test/ for classes when they hold the images directly.
        files, has_labels = image_folder_files(path)
        if split not in files or not files[split]:
            raise ValueError(f"split {split!r} not found in image folder {path!r}; available splits: "
                             f"{sorted(k for k, v in files.items() if v)}")
        return _shard_by_file(load_dataset("imagefolder", data_files={split: files[split]}, split=split,
                                           streaming=True, drop_labels=not has_labels, **load_kwargs))
    # Hub id or folder of data files; datasets' own errors ("Bad split: ... Available
    # splits: ...", missing repo) are already explicit, except that a Hub it cannot reach is an OSError that
    # does not say what was asked for.
    try:
        return load_dataset(name_or_path, data_dir=data_dir, split=split, streaming=True, **load_kwargs)
    except ConnectionError as error:
        raise ValueError(f"Dataset {name_or_path!r} is not a built-in dataset ('shapes', 'fashion_mnist', 'photos') "
                         f"or an existing local path, and the Hub cannot serve it: {str(error).splitlines()[0]}. "
                         f"Expected a built-in name, a folder or data files, or a datasets id with the Hub "
                         f"reachable.") from error


def _shard_by_file(ds):
    """Make every image file of a streamed image folder a shard of its own.

    ``datasets``' folder builder passes its files as a tuple, which it never splits: the stream has a single
    shard, so one DataLoader worker would decode every image while the others idle, and the shard order could
    not be shuffled.  As a list, each file is a shard: workers (and processes) decode disjoint files in
    parallel.  Only plain local files are re-listed (no archives, no metadata files); anything else is left
    as it is.
    """
    from datasets.iterable_dataset import ExamplesIterable

    source = ds._ex_iterable
    kwargs = getattr(source, "kwargs", None)
    if not isinstance(source, ExamplesIterable) or not isinstance(kwargs, dict):
        return ds
    files, metadata = kwargs.get("files"), kwargs.get("metadata_files")
    if not isinstance(files, tuple) or len(files) < 2 or metadata or \
            not all(isinstance(f, tuple) and len(f) == 3 and f[1] is None for f in files):
        return ds
    source.kwargs = {**kwargs, "files": list(files), "metadata_files": tuple(metadata or ())}
    return ds


def _peek_columns(ds) -> tuple[list[str], dict]:
    """Column names (and features, possibly empty) of a stream; peeks one row if unknown."""
    if ds.features is not None:
        return list(ds.features), dict(ds.features)
    first = next(iter(ds), None)
    if first is None:
        raise ValueError("the dataset stream is empty")
    return list(first), {}


def _given_or_known_column(columns: list[str], given: Optional[str], known: Sequence[str], what: str) -> Optional[str]:
    """The column the caller named (it must exist), else the first of the `known` names present, else None."""
    if given is not None:
        if given not in columns:
            raise ValueError(f"{what} column {given!r} not found; the dataset has columns {columns}")
        return given
    return next((name for name in known if name in columns), None)


def _resolve_image_column(columns: list[str], features: dict, image_column: Optional[str]) -> str:
    found = _given_or_known_column(columns, image_column, IMAGE_COLUMN_CANDIDATES, "image")
    if found is not None:
        return found
    from datasets import Image as ImageFeature

    typed = [c for c, f in features.items() if isinstance(f, ImageFeature)]
    if len(typed) == 1:
        return typed[0]
    raise ValueError(
        f"no image column found: the dataset has columns {columns}; expected one of "
        f"{list(IMAGE_COLUMN_CANDIDATES)} (or a single Image feature), or pass image_column="
    )


def _resolve_label_column(columns: list[str], label_column: Optional[str], require_labels: bool) -> Optional[str]:
    found = _given_or_known_column(columns, label_column, LABEL_COLUMN_CANDIDATES, "label")
    if found is None and require_labels:
        raise ValueError(
            f"labels are required but no label column was found: the dataset has columns {columns}; "
            f"expected one of {list(LABEL_COLUMN_CANDIDATES)} or pass label_column="
        )
    return found


class _ImageRowMapper:
    """Picklable per-row transform (DataLoader workers pickle the map function)."""

    def __init__(self, image_column, label_column, in_channels, resolution, random_crop, resize, seed, epoch,
                 skip_bad_images=False):
        self.skip_bad_images = bool(skip_bad_images)
        self.image_column = image_column
        self.label_column = label_column
        self.in_channels = in_channels
        self.resolution = resolution
        self.random_crop = random_crop
        self.resize = resize
        self.seed = int(seed) & ((1 << 63) - 1)
        self.epoch = int(epoch)

    def __call__(self, example: dict) -> dict:
        image = example.get(self.image_column)
        if image is None:
            raise ValueError(f"example has no value in image column {self.image_column!r}; columns: {list(example)}")
        from PIL import Image

        where = (image.get("path") if isinstance(image, dict) else getattr(image, "filename", "")) or ""
        try:
            x = to_float_image(image, self.in_channels, where=where)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            # A truncated, corrupt or non-image file: named, and skipped only when asked (counted downstream).
            if self.skip_bad_images:
                return {"image": None, "label": None, "bad_image": where or "<an image without a file name>"}
            raise ValueError(f"cannot read image {where or '(no file name)'}: {type(error).__name__}: {error}. "
                             f"Expected an image file PIL can open; remove or replace it, or pass "
                             f"--skip_bad_images to skip such files (they are counted).") from None
        if self.resolution is not None:
            rng = None
            if self.random_crop:
                # Seeded per example (content hash) and per epoch: reproducible augmentation.
                rng = np.random.default_rng([self.seed, self.epoch, content_key(x)])
            x = resize_and_crop(x, self.resolution, random_crop=self.random_crop, rng=rng,
                                resize=self.resize, where=where)
        out = {"image": x}
        if self.label_column is not None:
            label = example.get(self.label_column)
            if label is None:
                raise ValueError(f"example has no value in label column {self.label_column!r}")
            out["label"] = int(label)
        return out


def image_dataset(
    name_or_path: str,
    split: str = "train",
    *,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    require_labels: bool = False,
    resolution: Optional[int] = None,
    in_channels: int = 3,
    random_crop: bool = False,
    resize: bool = True,
    seed: int = 0,
    epoch: int = 0,
    data_dir: Optional[str] = None,
    skip_bad_images: bool = False,
    **load_kwargs,
):
    """Stream any image dataset as rows ``{"image": float32 (C, H, W) in [0, 1], ["label": int]}``.

    Args:
        name_or_path: a ``datasets`` id (``"user/name"``), a local folder of data files, a
            folder of images (opened with the ``imagefolder`` builder; sub-folders become
            labels), a ``save_to_disk`` folder, or ``"imagefolder"`` with ``data_dir``.
        split: split name.
        image_column: column holding images; default: the first of ``image``, ``img``,
            ``pixel_values`` present, else the single ``Image`` feature.
        label_column: integer label column; default ``label`` / ``labels`` when present.
        require_labels: raise if there is no label column.
        resolution: output side.  ``None`` keeps native sizes (batching then needs equal sizes).
        in_channels: 1 (PIL "L") or 3 (PIL "RGB").
        random_crop: random instead of centre crop; the crop is seeded by
            ``(seed, epoch, image content)`` so it is reproducible yet changes every epoch.
        resize: downscale the shorter side to ``resolution`` before cropping (never upscale).
        seed, epoch: for the random crop.
        skip_bad_images: a file that cannot be decoded becomes a row ``{"image": None, "bad_image": path}``
            (dropped and counted by :func:`hf_vae.data.collate_batch`) instead of a ``ValueError`` naming it.
        data_dir, **load_kwargs: passed to ``datasets.load_dataset``.

    Raises:
        ValueError: missing image / label column (message lists the columns found); during
            iteration, an unknown image mode or an image smaller than ``resolution``.
    """
    ds = _load_stream(name_or_path, split, data_dir, load_kwargs)
    columns, features = _peek_columns(ds)
    image_col = _resolve_image_column(columns, features, image_column)
    label_col = _resolve_label_column(columns, label_column, require_labels)
    from datasets import Image as ImageFeature

    if isinstance(features.get(image_col), ImageFeature) and features[image_col].decode:
        # Decoded by the mapper, not by datasets, so that a bad file is reported with its path (or skipped).
        ds = ds.cast_column(image_col, ImageFeature(decode=False))
    mapper = _ImageRowMapper(image_col, label_col, int(in_channels), resolution, bool(random_crop),
                             bool(resize), seed, epoch, skip_bad_images)
    return ds.map(mapper, remove_columns=columns)


def image_folder_dataset(data_dir: str, split: str = "train", **kwargs):
    """Stream a folder of images (``imagefolder`` builder); see :func:`image_dataset`."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"image folder {data_dir!r} does not exist")
    return image_dataset("imagefolder", split, data_dir=data_dir, **kwargs)


# --------------------------------------------------------------------------------------
# scikit-image photo crops
# --------------------------------------------------------------------------------------
#: scikit-image's bundled RGB photos (shipped inside the wheel: no pooch download needed).
PHOTO_NAMES: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
)
PHOTO_NUM_EXAMPLES: dict[str, int] = {"train": 20_000, "test": 2_000}
_HELDOUT_FRACTION = 0.2
_SALT_SIDE = 0x0F07_051D
_SALT_CROPS = {"train": 0x0F07_7A17, "test": 0x0F07_7E57}


@functools.lru_cache(maxsize=1)
def available_photos() -> tuple[tuple[str, np.ndarray], ...]:
    """Load the bundled photos that work offline: ``((name, uint8 (H, W, 3)), ...)``.

    A photo whose loader needs a download (pooch) or fails otherwise is skipped.
    """
    import skimage.data

    out = []
    for name in PHOTO_NAMES:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception:  # missing in this version, or needs a network fetch
            continue
        if img.ndim == 3 and img.shape[2] >= 3:
            img = np.ascontiguousarray(img[:, :, :3])
            img.setflags(write=False)
            out.append((name, img))
    return tuple(out)


def _photo_regions(seed: int, resolution: int) -> list[dict]:
    """Per photo, the train and test rectangles (top, left, height, width).

    The held-out (test) region of each photo is a strip along one edge, 20 % of the photo
    (at least ``resolution`` pixels) thick; the edge (top, bottom, left or right) is chosen
    per photo by the seed.  Train crops lie entirely in the rest, so no train crop shares
    a pixel with any test crop.
    """
    photos = available_photos()
    key = seed_key(seed, _SALT_SIDE)
    sides = uniform_ints(key, np.arange(len(photos)), 0, 4)
    regions = []
    for (name, img), side in zip(photos, sides.tolist()):
        h, w = img.shape[:2]
        vertical = side in (0, 1)  # strip along the top or bottom edge
        dim = h if vertical else w
        strip = max(resolution, int(round(_HELDOUT_FRACTION * dim)))
        if dim - strip < resolution or min(h, w) < resolution:
            continue  # too small for disjoint train and test crops at this resolution
        if vertical:
            test = (0, 0, strip, w) if side == 0 else (h - strip, 0, strip, w)
            train = (strip, 0, h - strip, w) if side == 0 else (0, 0, h - strip, w)
        else:
            test = (0, 0, h, strip) if side == 2 else (0, w - strip, h, strip)
            train = (0, strip, h, w - strip) if side == 2 else (0, 0, h, w - strip)
        regions.append({"name": name, "image": img, "train": train, "test": test})
    return regions


def _photo_crop_rows(seed: int, split: str, resolution: int, ids: np.ndarray, regions: list) -> Iterator[tuple]:
    key = seed_key(seed, _SALT_CROPS[split])
    which = uniform_ints(key, ids, 0, len(regions))
    u_top = uniform_ints(key, ids, 1, 1 << 30)
    u_left = uniform_ints(key, ids, 2, 1 << 30)
    for ex_id, p, a, b in zip(ids.tolist(), which.tolist(), u_top.tolist(), u_left.tolist()):
        top, left, h, w = regions[p][split]
        y = top + a % (h - resolution + 1)
        x = left + b % (w - resolution + 1)
        yield ex_id, p, y, x


def _generate_photo_crops(id_chunks: list, seed: int, split: str, resolution: int, in_channels: int) -> Iterator[dict]:
    regions = _photo_regions(seed, resolution)
    for chunk in id_chunks:
        for ex_id, p, y, x in _photo_crop_rows(seed, split, resolution, chunk, regions):
            crop = regions[p]["image"][y: y + resolution, x: x + resolution]
            img = crop.transpose(2, 0, 1).astype(np.float32) * (1.0 / 255.0)
            if in_channels == 1:
                img = _luminance(img)
            yield {"image": img, "photo": p, "id": ex_id}


def photo_crops_dataset(
    split: str = "train",
    resolution: int = 64,
    num_examples: Optional[int] = None,
    seed: int = 0,
    *,
    in_channels: int = 3,
    num_shards: int = 16,
):
    """Random ``resolution`` x ``resolution`` crops of scikit-image's bundled RGB photos.

    Crops are taken at native scale.  Held-out split: in every photo, a strip along one
    edge (20 % of the photo, chosen per photo by ``seed``) is reserved for ``"test"`` and
    train crops never overlap it, so the two splits are pixel-disjoint.  Example ``i`` is a
    pure function of ``(seed, split, i)``: which photo, and where, are drawn from a
    counter-based generator.

    Args:
        split: ``"train"`` (default 20,000 crops) or ``"test"`` (default 2,000).
        resolution: crop side in pixels.
        num_examples: number of crops; smaller values give a prefix of the same stream.
        seed: decides held-out strips and crop positions.
        in_channels: 3 (RGB) or 1 (luminance).
        num_shards: shards for parallel / distributed reading.

    Rows: ``image`` float32 (C, resolution, resolution) in [0, 1]; ``photo`` int index into
    the photos used (see :func:`available_photos`); ``id`` int crop index.
    """
    from datasets import IterableDataset, NamedSplit

    if split not in PHOTO_NUM_EXAMPLES:
        raise ValueError(f"split must be one of {sorted(PHOTO_NUM_EXAMPLES)}, got {split!r}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    resolution = int(resolution)
    regions = _photo_regions(seed, resolution)
    if not regions:
        sizes = {name: img.shape[:2] for name, img in available_photos()}
        raise ValueError(
            f"no scikit-image photo is large enough for disjoint train/test crops at resolution "
            f"{resolution}; photos found (H, W): {sizes}"
        )
    n = PHOTO_NUM_EXAMPLES[split] if num_examples is None else int(num_examples)
    if n < 1:
        raise ValueError(f"num_examples must be >= 1, got {n}")
    ids = np.arange(n, dtype=np.int64)
    chunks = [c for c in np.array_split(ids, max(1, min(int(num_shards), n))) if c.size]
    return IterableDataset.from_generator(
        _generate_photo_crops,
        gen_kwargs={"id_chunks": chunks, "seed": int(seed), "split": split, "resolution": resolution,
                    "in_channels": int(in_channels)},
        split=NamedSplit(split),
    )
