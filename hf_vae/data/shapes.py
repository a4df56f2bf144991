"""A procedurally generated dSprites-style dataset (no files, no network).

Each example is a white 2D shape on a black background, generated from five independent
ground-truth factors, as in dSprites (Matthey et al., 2017):

=============  ======  ==================================================
factor         size    values
=============  ======  ==================================================
shape          3       square, ellipse, heart
scale          6       linspace(0.5, 1.0, 6)
orientation    40      2*pi*k/40, k = 0..39 (radians, counter-clockwise)
pos_x          32      linspace(0, 1, 32) (left -> right)
pos_y          32      linspace(0, 1, 32) (top -> bottom)
=============  ======  ==================================================

Images are binary (0.0/1.0 float32), rasterised with numpy by testing each pixel centre
against the rotated, scaled and translated shape.  At ``scale=1`` the shape spans at most
``0.35 * image_size`` pixels, and positions are mapped into a margin wide enough for the
largest rotated shape, so every shape stays fully inside the frame.

Examples are not enumerated over the full factor grid (737,280 combinations); instead the
factors of example ``i`` are drawn uniformly with a counter-based generator keyed by
``(seed, i)``.  The held-out split is decided by a hash of ``(seed, factor tuple)`` -- 10 % of
factor combinations are test-only -- so train and test never share an example id, a factor
combination, or (thanks to canonicalising the rotational symmetries of the square and the
ellipse) an image.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator, Sequence, Union

import numpy as np

from ._hashing import seed_key, uniform_ints

__all__ = [
    "SHAPES_FACTOR_NAMES",
    "SHAPES_FACTOR_SIZES",
    "SHAPES_FACTOR_VALUES",
    "SHAPE_NAMES",
    "SHAPES_NUM_EXAMPLES",
    "SHAPES_TEST_FRACTION",
    "render_shape",
    "render_factors",
    "render_factors_batch",
    "factor_values",
    "shapes_example_factors",
    "shapes_split_ids",
    "shapes_dataset",
]

SHAPE_NAMES: tuple[str, ...] = ("square", "ellipse", "heart")
SHAPES_FACTOR_NAMES: tuple[str, ...] = ("shape", "scale", "orientation", "pos_x", "pos_y")
SHAPES_FACTOR_SIZES: tuple[int, ...] = (3, 6, 40, 32, 32)
#: Concrete value of every factor index (shape is given by its index into SHAPE_NAMES).
SHAPES_FACTOR_VALUES: dict[str, np.ndarray] = {
    "shape": np.arange(3),
    "scale": np.linspace(0.5, 1.0, 6),
    "orientation": 2.0 * np.pi * np.arange(40) / 40.0,
    "pos_x": np.linspace(0.0, 1.0, 32),
    "pos_y": np.linspace(0.0, 1.0, 32),
}
#: Default number of examples per split (a finite stream, so an "epoch" exists).
SHAPES_NUM_EXAMPLES: dict[str, int] = {"train": 50_000, "test": 5_000}
#: Fraction of factor combinations held out for the test split.
SHAPES_TEST_FRACTION = 0.1

# Geometry, in units of the image side.  _MAX_EXTENT: the full extent (diameter) of a shape at
# scale 1.  Canonical shapes live in the unit box [-1, 1]^2, so once rotated they stay within
# a disc of radius sqrt(2) (in units of the half extent); the margin keeps that disc inside.
_MAX_EXTENT = 0.35
_HALF = _MAX_EXTENT / 2.0
_SQRT2 = math.sqrt(2.0)
_SQUARE_HALF_SIDE = 0.8  # square side = 0.8 of the extent, so its area is close to the others'
_ELLIPSE_AXES = (1.0, 0.55)  # semi-axes; anisotropic so that orientation is visible

# Rotational symmetry, in orientation steps (40 steps = 2*pi): a square repeats every 90
# degrees and an ellipse every 180, so those orientations give the same image.
_SYMMETRY_PERIOD = (10, 20, 40)

_RENDER_BLOCK = 256  # images rendered per vectorised block

# Salts for independent random streams under one user seed.
_SALT_FACTORS = 0x5EED_F4C7
_SALT_SPLIT = 0x5EED_5917


ShapeLike = Union[int, str]


def _shape_index(shape: ShapeLike) -> int:
    if isinstance(shape, str):
        try:
            return SHAPE_NAMES.index(shape.lower())
        except ValueError:
            raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPE_NAMES}") from None
    idx = int(shape)
    if not 0 <= idx < len(SHAPE_NAMES):
        raise ValueError(f"shape index {idx} out of range; expected 0..{len(SHAPE_NAMES) - 1} {SHAPE_NAMES}")
    return idx


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Point-in-shape test in canonical coordinates (u right, v down, shape in [-1, 1]^2)."""
    if shape == 0:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= _SQUARE_HALF_SIDE
    if shape == 1:  # ellipse, long axis along u
        a, b = _ELLIPSE_AXES
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    # heart: the implicit curve (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 spans x in [-1.139, 1.139],
    # y in [-1, 1.236] (y up).  Scale by 1.14 and shift by 0.118 to centre it in [-1, 1]^2.
    x = u * 1.14
    y = -v * 1.14 + 0.118
    return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0


def render_shape(
    shape: ShapeLike,
    scale: float,
    orientation: float,
    pos_x: float,
    pos_y: float,
    image_size: int = 64,
) -> np.ndarray:
    """Rasterise one shape.

    Args:
        shape: index into :data:`SHAPE_NAMES` (0 square, 1 ellipse, 2 heart) or its name.
        scale: size multiplier, nominally in [0.5, 1]; the shape spans at most
            ``0.35 * scale * image_size`` pixels.
        orientation: rotation in radians (counter-clockwise on screen).
        pos_x, pos_y: position in [0, 1] of the shape centre within the allowed range
            (0 = left/top, 1 = right/bottom).  The range excludes a margin that keeps the
            largest rotated shape fully in the frame.
        image_size: side of the square image, >= 16.

    Returns:
        ``np.ndarray`` of shape ``(image_size, image_size)``, dtype float32, values in {0, 1}.
    """
    s = int(image_size)
    if s < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if not (0.0 <= pos_x <= 1.0 and 0.0 <= pos_y <= 1.0):
        raise ValueError(f"pos_x and pos_y must be in [0, 1], got ({pos_x}, {pos_y})")
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    shape_idx = _shape_index(shape)

    r = _HALF * scale * s  # half extent in pixels
    margin = _HALF * _SQRT2 * s + 1.0  # radius of the largest rotated shape, plus a pixel
    cx = margin + pos_x * (s - 2.0 * margin)
    cy = margin + pos_y * (s - 2.0 * margin)

    img = np.zeros((s, s), dtype=np.float32)
    # Only test pixels in the bounding box of the rotated shape (~4x fewer than the frame).
    reach = r * _SQRT2 + 1.0
    x0, x1 = max(0, int(cx - reach)), min(s, int(math.ceil(cx + reach)) + 1)
    y0, y1 = max(0, int(cy - reach)), min(s, int(math.ceil(cy + reach)) + 1)
    xs = (np.arange(x0, x1, dtype=np.float64) + 0.5 - cx) / r  # pixel centres
    ys = (np.arange(y0, y1, dtype=np.float64) + 0.5 - cy) / r
    dx, dy = xs[None, :], ys[:, None]
    # Rotate the pixel offsets by -orientation into the shape's frame.  Rows grow downwards,
    # so use -dy as the "up" axis to make positive angles turn counter-clockwise on screen.
    c, sn = math.cos(orientation), math.sin(orientation)
    u = c * dx - sn * dy
    v = sn * dx + c * dy
    mask = _inside(shape_idx, u, v)
    img[y0:y1, x0:x1] = mask
    if not mask.any():
        # Tiny shapes at small image sizes can fall between pixel centres; light the centre
        # pixel so that no example is blank.
        img[min(s - 1, int(cy)), min(s - 1, int(cx))] = 1.0
    return img


def factor_values(factors: Sequence[int]) -> tuple[int, float, float, float, float]:
    """Map a 5-tuple of factor indices to ``(shape, scale, orientation, pos_x, pos_y)`` values."""
    if len(factors) != len(SHAPES_FACTOR_SIZES):
        raise ValueError(f"expected {len(SHAPES_FACTOR_SIZES)} factor indices {SHAPES_FACTOR_NAMES}, got {list(factors)}")
    out = []
    for name, size, idx in zip(SHAPES_FACTOR_NAMES, SHAPES_FACTOR_SIZES, factors):
        idx = int(idx)
        if not 0 <= idx < size:
            raise ValueError(f"factor {name} index {idx} out of range 0..{size - 1}")
        out.append(SHAPES_FACTOR_VALUES[name][idx])
    return int(out[0]), float(out[1]), float(out[2]), float(out[3]), float(out[4])


def render_factors(factors: Sequence[int], image_size: int = 64) -> np.ndarray:
    """Render from factor *indices* ``(shape, scale, orientation, pos_x, pos_y)``: (H, W) float32."""
    return render_shape(*factor_values(factors), image_size=image_size)


def render_factors_batch(factors: np.ndarray, image_size: int = 64) -> np.ndarray:
    """Render many factor-index tuples at once: ``(N, 5)`` int -> ``(N, H, W)`` uint8 in {0, 1}.

    The same pixels as :func:`render_factors`, image by image (the same float64 arithmetic on
    every pixel centre, in a fixed-size window that contains every shape's bounding box), in a
    few numpy operations per shape kind instead of a Python call per image.
    """
    factors = np.asarray(factors, dtype=np.int64).reshape(-1, len(SHAPES_FACTOR_SIZES))
    s = int(image_size)
    if s < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    bad = (factors < 0) | (factors >= np.asarray(SHAPES_FACTOR_SIZES))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"factor {SHAPES_FACTOR_NAMES[j]} index {factors[i, j]} out of range 0..{SHAPES_FACTOR_SIZES[j] - 1}")
    if factors.shape[0] > _RENDER_BLOCK:  # bound the float64 temporaries (~5 arrays of block * H * W)
        return np.concatenate([render_factors_batch(factors[i: i + _RENDER_BLOCK], s)
                               for i in range(0, factors.shape[0], _RENDER_BLOCK)])
    n = factors.shape[0]
    scale = SHAPES_FACTOR_VALUES["scale"][factors[:, 1]]
    r = _HALF * scale * s
    margin = _HALF * _SQRT2 * s + 1.0
    cx = margin + SHAPES_FACTOR_VALUES["pos_x"][factors[:, 3]] * (s - 2.0 * margin)
    cy = margin + SHAPES_FACTOR_VALUES["pos_y"][factors[:, 4]] * (s - 2.0 * margin)
    # cos / sin from `math`, as render_shape does (numpy's vectorised versions may differ in the last bit).
    cos_table, sin_table = _orientation_tables()
    c, sn = cos_table[factors[:, 2]], sin_table[factors[:, 2]]
    # Test only a window around each shape: the largest rotated shape's reach, as in render_shape.
    side = min(s, 2 * int(math.ceil(_HALF * s * _SQRT2 + 1.0)) + 2)
    x0 = np.clip((cx - side / 2).astype(int), 0, s - side)
    y0 = np.clip((cy - side / 2).astype(int), 0, s - side)
    xs = x0[:, None] + np.arange(side)  # (N, side) pixel columns of each window
    ys = y0[:, None] + np.arange(side)
    dx = ((xs + 0.5) - cx[:, None])[:, None, :] / r[:, None, None]  # pixel centres, (N, 1, side)
    dy = ((ys + 0.5) - cy[:, None])[:, :, None] / r[:, None, None]  # (N, side, 1)
    u = c[:, None, None] * dx - sn[:, None, None] * dy
    v = sn[:, None, None] * dx + c[:, None, None] * dy
    window = np.zeros((n, side, side), dtype=np.uint8)
    for shape_idx in range(len(SHAPE_NAMES)):
        rows = np.flatnonzero(factors[:, 0] == shape_idx)
        if rows.size:
            window[rows] = _inside(shape_idx, u[rows], v[rows])
    out = np.zeros((n, s, s), dtype=np.uint8)
    out[np.arange(n)[:, None, None], ys[:, :, None], xs[:, None, :]] = window
    empty = np.flatnonzero(~out.reshape(n, -1).any(axis=1))
    if empty.size:  # as render_shape: light the centre pixel of a shape that falls between pixel centres
        out[empty, np.minimum(s - 1, cy[empty].astype(int)), np.minimum(s - 1, cx[empty].astype(int))] = 1
    return out


@functools.lru_cache(maxsize=1)
def _orientation_tables() -> tuple[np.ndarray, np.ndarray]:
    angles = SHAPES_FACTOR_VALUES["orientation"]
    return (np.asarray([math.cos(float(a)) for a in angles]), np.asarray([math.sin(float(a)) for a in angles]))


def shapes_example_factors(seed: int, ids: np.ndarray) -> np.ndarray:
    """Factor indices of examples ``ids`` under ``seed``: int64 array of shape (len(ids), 5).

    Each factor is drawn uniformly and independently from a counter-based generator keyed
    by ``(seed, example id)``, so an example does not depend on any other.
    """
    key = seed_key(seed, _SALT_FACTORS)
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack(
        [uniform_ints(key, ids, k, size) for k, size in enumerate(SHAPES_FACTOR_SIZES)], axis=-1
    )


def _is_test(seed: int, factors: np.ndarray) -> np.ndarray:
    """Held-out membership of factor tuples (N, 5) -> bool (N,), ~10 % True.

    Orientation is first reduced modulo the shape's rotational symmetry, so two factor
    tuples that render the same image always land in the same split.
    """
    period = np.asarray(_SYMMETRY_PERIOD)[factors[:, 0]]
    canon = factors.copy()
    canon[:, 2] = canon[:, 2] % period
    flat = np.ravel_multi_index(tuple(canon.T), SHAPES_FACTOR_SIZES)
    bucket = uniform_ints(seed_key(seed, _SALT_SPLIT), flat, 0, 1000)
    return bucket < int(round(SHAPES_TEST_FRACTION * 1000))


@functools.lru_cache(maxsize=32)
def _split_ids_cached(seed: int, split: str, num_examples: int) -> np.ndarray:
    want_test = split == "test"
    found: list[np.ndarray] = []
    count, start, chunk = 0, 0, 1 << 16
    while count < num_examples:
        ids = np.arange(start, start + chunk, dtype=np.int64)
        keep = ids[_is_test(seed, shapes_example_factors(seed, ids)) == want_test]
        found.append(keep)
        count += keep.size
        start += chunk
    out = np.concatenate(found)[:num_examples]
    out.setflags(write=False)  # shared through the cache
    return out


def shapes_split_ids(seed: int, split: str, num_examples: int) -> np.ndarray:
    """Example ids of a split: the first ``num_examples`` ids (in increasing order) whose
    factor tuple falls in that split.  A smaller ``num_examples`` gives a prefix."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    return _split_ids_cached(int(seed), split, int(num_examples))


def _checked_split_ids(split: str, image_size: int, seed: int, num_examples) -> np.ndarray:
    """The ids of a split after checking the arguments of a shapes source."""
    if int(image_size) < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if split not in SHAPES_NUM_EXAMPLES:
        raise ValueError(f"split must be one of {sorted(SHAPES_NUM_EXAMPLES)}, got {split!r}")
    return shapes_split_ids(seed, split, SHAPES_NUM_EXAMPLES[split] if num_examples is None else int(num_examples))


def _generate_shapes(id_chunks: list, seed: int, image_size: int) -> Iterator[dict]:
    # Module-level generator with small picklable arguments: `datasets` splits the
    # `id_chunks` list into shards (one chunk each) for DataLoader workers and processes.
    for chunk in id_chunks:
        factors = shapes_example_factors(seed, chunk)
        images = render_factors_batch(factors, image_size).astype(np.float32)[:, None]
        for ex_id, f, image in zip(chunk.tolist(), factors.tolist(), images):
            yield {"image": image, "label": f[0], "factors": f, "id": ex_id}


def shapes_dataset(
    split: str = "train",
    image_size: int = 64,
    num_examples: int | None = None,
    seed: int = 0,
    num_shards: int = 16,
):
    """dSprites-style stream as a ``datasets.IterableDataset``.

    Args:
        split: ``"train"`` (default 50,000 examples) or ``"test"`` (default 5,000).
        image_size: image side (>= 16).
        num_examples: number of examples in the split; a smaller value gives a prefix of
            the default stream.
        seed: decides the factors of every example and which factor combinations are
            held out.  Same seed -> same rows in the same order.
        num_shards: number of shards (contiguous id ranges) for parallel / distributed
            reading; 16 divides evenly among 1, 2, 4, 8 or 16 processes.

    Rows:
        ``image``: float32 ndarray (1, H, W) with values in {0, 1};
        ``label``: int shape index (0 square, 1 ellipse, 2 heart);
        ``factors``: list of 5 ints, the indices of (shape, scale, orientation, pos_x, pos_y);
        ``id``: int example id, unique across both splits of one seed.
    """
    from datasets import IterableDataset, NamedSplit

    ids = _checked_split_ids(split, image_size, seed, num_examples)
    n = ids.size
    chunks = [c for c in np.array_split(ids, max(1, min(int(num_shards), n))) if c.size]
    return IterableDataset.from_generator(
        _generate_shapes,
        gen_kwargs={"id_chunks": chunks, "seed": int(seed), "image_size": int(image_size)},
        split=NamedSplit(split),
    )
