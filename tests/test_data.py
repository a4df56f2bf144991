"""Tests of the data layer (hf_vae.data): offline, fast (whole file well under 30 s)."""

import gzip
import math
import os
import struct
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest
import torch

from hf_vae.data import (
    SHAPES_FACTOR_NAMES,
    SHAPES_FACTOR_SIZES,
    build_dataset,
    collate_batch,
    describe_dataset,
    fashion_mnist_dataset,
    photo_crops_dataset,
    read_idx,
    render_shape,
    shapes_dataset,
)
from hf_vae.data import fashion_mnist as fm
from hf_vae.data import images as im
from hf_vae.data import shapes as sh

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz")),
    reason="apt-get install dataset-fashion-mnist",
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _rows(ds, n=None):
    out = []
    for row in ds:
        out.append(row)
        if n is not None and len(out) >= n:
            break
    return out


# ----------------------------------------------------------------------------- shapes
def test_shapes_factor_metadata():
    assert SHAPES_FACTOR_NAMES == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert SHAPES_FACTOR_SIZES == (3, 6, 40, 32, 32)
    assert np.allclose(sh.SHAPES_FACTOR_VALUES["scale"][[0, -1]], [0.5, 1.0])
    orient = sh.SHAPES_FACTOR_VALUES["orientation"]
    assert orient.min() == 0.0 and orient.max() < 2 * np.pi


@pytest.mark.parametrize("size", [16, 32, 64])
def test_render_is_binary_nonempty_and_inside_frame(size):
    rng = np.random.default_rng(0)
    for _ in range(60):
        f = [int(rng.integers(n)) for n in SHAPES_FACTOR_SIZES]
        # Push positions and scale to the extremes, where clipping would show first.
        f[3], f[4], f[1] = rng.choice([0, 31]), rng.choice([0, 31]), 5
        img = sh.render_factors(f, size)
        assert img.shape == (size, size) and img.dtype == np.float32
        assert set(np.unique(img)) <= {0.0, 1.0}
        assert img.sum() >= 1
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert border.sum() == 0, f"shape touches the frame: factors {f}"
        rows, cols = np.nonzero(img)
        extent = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
        assert extent <= 0.35 * size * np.sqrt(2) + 2


def test_render_geometry():
    # Scale grows the area; position moves the centre of mass; rotation changes the ellipse.
    small = render_shape("square", 0.5, 0.0, 0.5, 0.5, 64)
    big = render_shape("square", 1.0, 0.0, 0.5, 0.5, 64)
    assert big.sum() > 3 * small.sum()
    left = render_shape("heart", 1.0, 0.0, 0.0, 0.5, 64)
    right = render_shape("heart", 1.0, 0.0, 1.0, 0.5, 64)
    assert np.nonzero(left)[1].mean() + 20 < np.nonzero(right)[1].mean()
    e0 = render_shape("ellipse", 1.0, 0.0, 0.5, 0.5, 64)
    e90 = render_shape("ellipse", 1.0, np.pi / 2, 0.5, 0.5, 64)
    assert not np.array_equal(e0, e90) and np.array_equal(e0, e0.T) is False
    np.testing.assert_array_equal(e90, e0.T)  # a quarter turn of a centred ellipse is a transpose
    with pytest.raises(ValueError, match="image_size"):
        render_shape(0, 1.0, 0.0, 0.5, 0.5, 8)
    with pytest.raises(ValueError, match="unknown shape"):
        render_shape("circle", 1.0, 0.0, 0.5, 0.5, 64)


def test_shapes_deterministic_by_seed():
    a = _rows(shapes_dataset("train", image_size=32, num_examples=40, seed=3))
    b = _rows(shapes_dataset("train", image_size=32, num_examples=40, seed=3))
    c = _rows(shapes_dataset("train", image_size=32, num_examples=40, seed=4))
    assert len(a) == 40
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert all(np.array_equal(x["image"], y["image"]) and x["factors"] == y["factors"] for x, y in zip(a, b))
    assert [r["factors"] for r in a] != [r["factors"] for r in c]
    # A smaller num_examples is a prefix of the same stream.
    d = _rows(shapes_dataset("train", image_size=32, num_examples=10, seed=3))
    assert [r["factors"] for r in d] == [r["factors"] for r in a[:10]]


def test_shapes_row_schema_and_factors_match_render():
    rows = _rows(shapes_dataset("test", image_size=48, num_examples=25, seed=1))
    assert len(rows) == 25
    for r in rows:
        assert set(r) == {"image", "label", "factors", "id"}
        assert r["image"].shape == (1, 48, 48) and r["image"].dtype == np.float32
        assert len(r["factors"]) == 5 and all(isinstance(v, int) for v in r["factors"])
        assert all(0 <= v < n for v, n in zip(r["factors"], SHAPES_FACTOR_SIZES))
        assert r["label"] == r["factors"][0]
        np.testing.assert_array_equal(r["image"][0], sh.render_factors(r["factors"], 48))


def test_shapes_train_test_disjoint_full_size():
    seed = 0
    train = sh.shapes_split_ids(seed, "train", sh.SHAPES_NUM_EXAMPLES["train"])
    test = sh.shapes_split_ids(seed, "test", sh.SHAPES_NUM_EXAMPLES["test"])
    assert len(train) == 50_000 and len(test) == 5_000
    assert not set(train.tolist()) & set(test.tolist())
    # Disjoint factor combinations too, modulo rotational symmetry (same image).
    def canon(ids):
        f = sh.shapes_example_factors(seed, ids)
        f[:, 2] %= np.asarray(sh._SYMMETRY_PERIOD)[f[:, 0]]
        return set(map(tuple, f.tolist()))
    assert not canon(train) & canon(test)
    # About 10 % of ids are held out.
    frac = len(test) / (test.max() + 1)
    assert 0.08 < frac < 0.12
    # Each split covers all shapes.
    assert set(sh.shapes_example_factors(seed, test)[:, 0].tolist()) == {0, 1, 2}


def test_shapes_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        shapes_dataset("validation")
    with pytest.raises(ValueError, match="image_size"):
        shapes_dataset("train", image_size=8)


# ----------------------------------------------------------------------------- build_dataset
def test_build_dataset_value_ranges_and_schema():
    rows = _rows(build_dataset("shapes", "test", image_size=32, value_range=(-1.0, 1.0), num_examples=20))
    assert len(rows) == 20
    for r in rows:
        assert set(r) == {"pixel_values", "labels", "factors"}
        x = r["pixel_values"]
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (1, 32, 32)
        assert set(torch.unique(x).tolist()) <= {-1.0, 1.0}
        assert r["factors"].dtype == torch.long and r["factors"].shape == (5,)
    rgb = _rows(build_dataset("shapes", "test", image_size=32, in_channels=3, num_examples=2))
    assert rgb[0]["pixel_values"].shape == (3, 32, 32)


def test_build_dataset_is_deterministic_and_epochs_reshuffle():
    def ids(epoch):
        ds = build_dataset("shapes", "train", image_size=16, num_examples=300, epoch=epoch,
                           shuffle_buffer=64, with_ids=True)
        return [r["example_id"] for r in ds]

    e0, e0b, e1 = ids(0), ids(0), ids(1)
    assert e0 == e0b
    assert e0 != e1 and sorted(e0) == sorted(e1)
    assert e0 != sorted(e0)  # shuffled
    test = [r["example_id"] for r in build_dataset("shapes", "test", image_size=16, num_examples=50, with_ids=True)]
    assert test == sorted(test)  # eval splits keep their order


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharding_across_processes_is_disjoint_and_complete(world_size):
    kw = dict(image_size=16, num_examples=200, with_ids=True, epoch=2, seed=5)
    full = [r["example_id"] for r in build_dataset("shapes", "train", **kw)]
    parts = [
        [r["example_id"] for r in build_dataset("shapes", "train", process_index=p, num_processes=world_size, **kw)]
        for p in range(world_size)
    ]
    seen = [set(p) for p in parts]
    for i in range(world_size):
        assert len(seen[i]) == len(parts[i])
        for j in range(i + 1, world_size):
            assert not seen[i] & seen[j]
    assert set().union(*seen) == set(full) and sum(map(len, parts)) == len(full) == 200
    with pytest.raises(ValueError, match="process_index"):
        build_dataset("shapes", process_index=2, num_processes=2)


@needs_fashion
def test_dynamic_binarisation():
    def binarised(epoch, split="train", seed=0):
        ds = build_dataset("fashion_mnist", split, binarize=True, epoch=epoch, seed=seed, with_ids=True,
                           shuffle_buffer=16)
        return {r["example_id"]: r["pixel_values"] for r in _rows(ds, 64)}

    a, a2, b = binarised(0), binarised(0), binarised(1)
    common = sorted(set(a) & set(b))
    assert common, "the two epochs should share some of their first examples"
    for k, x in a.items():
        assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
        assert torch.equal(x, a2[k])  # reproducible
    assert any(not torch.equal(a[k], b[k]) for k in common)  # fresh noise per epoch
    # Noise follows intensity: bright pixels are mostly on, black pixels always off.
    raw = fm.load_fashion_mnist_arrays("train")[0]
    k = next(iter(a))
    assert torch.all(a[k][0][torch.from_numpy(raw[k] == 0)] == 0)
    # Eval split: the same noise every epoch.
    t0, t1 = binarised(0, "test"), binarised(3, "test")
    assert all(torch.equal(t0[k], t1[k]) for k in t0)


def test_uniform_dequantisation_of_the_8_bit_levels():
    def dequantised(epoch, value_range=(-1.0, 1.0)):
        ds = build_dataset("fashion_mnist", "train", dequantize=True, epoch=epoch, with_ids=True, shuffle=False,
                           value_range=value_range)
        return {r["example_id"]: r["pixel_values"] for r in _rows(ds, 8)}

    raw = fm.load_fashion_mnist_arrays("train")[0]
    a, a2, b = dequantised(0), dequantised(0), dequantised(1)
    for k, x in a.items():
        cell = (x[0].double() + 1) / 2 * 256 - torch.from_numpy(raw[k]).double()  # (k + u) / 256 -> u
        assert float(cell.min()) >= -1e-4 and float(cell.max()) < 1 + 1e-4  # each value inside its level's cell
        assert float(cell.std()) == pytest.approx(math.sqrt(1 / 12), rel=0.05)  # u ~ U[0, 1)
        assert torch.equal(x, a2[k]) and not torch.equal(x, b[k])  # reproducible, fresh noise per epoch
    with pytest.raises(ValueError, match="at most one of binarize and dequantize"):
        build_dataset("fashion_mnist", "train", binarize=True, dequantize=True)


def test_collate_and_dataloader():
    ds = build_dataset("shapes", "train", image_size=16, num_examples=40, value_range=(-1, 1))
    batches = list(torch.utils.data.DataLoader(ds, batch_size=16, collate_fn=collate_batch))
    assert [b["pixel_values"].shape[0] for b in batches] == [16, 16, 8]
    b = batches[0]
    assert b["pixel_values"].shape == (16, 1, 16, 16) and b["pixel_values"].dtype == torch.float32
    assert b["labels"].shape == (16,) and b["labels"].dtype == torch.long
    assert b["factors"].shape == (16, 5)
    # torch's default collate gives the same structure.
    d = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert d["pixel_values"].shape == (4, 1, 16, 16) and d["factors"].shape == (4, 5)
    with pytest.raises(ValueError):
        collate_batch([])


def test_describe_dataset():
    assert {k: describe_dataset("shapes")[k] for k in ("image_size", "in_channels", "num_classes")} == {
        "image_size": 64, "in_channels": 1, "num_classes": 3}
    d = describe_dataset("fashion_mnist")
    assert (d["image_size"], d["in_channels"], d["num_classes"]) == (28, 1, 10)
    p = describe_dataset("photos", image_size=32)
    assert (p["image_size"], p["in_channels"], p["num_classes"]) == (32, 3, None)


# ----------------------------------------------------------------------------- IDX / Fashion-MNIST
def _write_idx(path, arr, magic, compress):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip_and_errors(tmp_path, compress):
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28) % 256
    labels = np.array([7, 0, 9])
    ip, lp = tmp_path / "img", tmp_path / "lab"
    _write_idx(ip, images, 2051, compress)
    _write_idx(lp, labels, 2049, compress)
    np.testing.assert_array_equal(read_idx(ip), images.astype(np.uint8))
    np.testing.assert_array_equal(read_idx(lp), labels.astype(np.uint8))
    assert read_idx(ip).shape == (3, 28, 28) and read_idx(ip).dtype == np.uint8
    bad = tmp_path / "bad"
    _write_idx(bad, images, 1234, compress)
    with pytest.raises(ValueError, match=r"magic number 1234.*2051"):
        read_idx(bad)
    with pytest.raises(ValueError, match="expected 2049"):
        read_idx(ip, expected_magic=2049)
    truncated = tmp_path / "trunc"
    with (gzip.open if compress else open)(truncated, "wb") as f:
        f.write(struct.pack(">IIII", 2051, 3, 28, 28) + b"\0" * 100)
    with pytest.raises(ValueError, match="payload"):
        read_idx(truncated)


def test_fashion_mnist_from_data_dir_and_missing_files(tmp_path, monkeypatch):
    images = (np.arange(5 * 28 * 28) % 256).reshape(5, 28, 28)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, 2051, True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 3, 4, 5]), 2049, False)
    rows = _rows(fashion_mnist_dataset("test", data_dir=str(tmp_path)))
    assert [r["label"] for r in rows] == [1, 2, 3, 4, 5] and [r["id"] for r in rows] == list(range(5))
    np.testing.assert_allclose(rows[2]["image"][0], images[2] / 255.0, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist_dataset("train", data_dir=str(tmp_path))  # only the test files exist
    monkeypatch.setattr(fm, "DEFAULT_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist_dataset("train")
    with pytest.raises(ValueError, match="split"):
        fashion_mnist_dataset("validation")


@needs_fashion
def test_fashion_mnist_rows():
    ds = fashion_mnist_dataset("test")
    rows = _rows(ds, 5)
    for r in rows:
        assert r["image"].shape == (1, 28, 28) and r["image"].dtype == np.float32
        assert 0.0 <= r["image"].min() and r["image"].max() <= 1.0
        assert 0 <= r["label"] < 10
    assert sum(1 for _ in ds) == 10_000
    built = _rows(build_dataset("fashion_mnist", "test", value_range=(-1, 1)), 3)
    assert built[0]["pixel_values"].shape == (1, 28, 28)
    assert -1.0 <= built[0]["pixel_values"].min() and built[0]["pixel_values"].max() <= 1.0
    assert built[0]["labels"] == rows[0]["label"]
    big = _rows(build_dataset("fashion_mnist", "test", image_size=32), 1)
    assert big[0]["pixel_values"].shape == (1, 32, 32)


# ----------------------------------------------------------------------------- image folders
def _write_folder(root, sizes, labelled=True, mode="RGB"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        sub = root / (f"class{i % 2}" if labelled else "")
        sub.mkdir(parents=True, exist_ok=True)
        arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).convert(mode).save(sub / f"{i}.png")
    return root


def test_image_folder(tmp_path):
    folder = _write_folder(tmp_path / "imgs", [(40, 30), (33, 50), (64, 64), (20, 24)])
    ds = build_dataset(str(folder), "train", image_size=16, value_range=(-1, 1), shuffle=False)
    held_out = _rows(build_dataset(str(folder), "test", image_size=16, value_range=(-1, 1), shuffle=False))
    rows = _rows(ds)
    assert len(rows) == 3 and len(held_out) == 1  # class folders, no split folders: a held-out image is carved
    rows += held_out
    for r in rows:
        assert r["pixel_values"].shape == (3, 16, 16)
        assert -1.0 <= r["pixel_values"].min() and r["pixel_values"].max() <= 1.0
        assert r["labels"] in (0, 1)
    grey = _rows(build_dataset(str(folder), "train", image_size=20, in_channels=1, shuffle=False))
    assert all(r["pixel_values"].shape == (1, 20, 20) for r in grey)
    assert describe_dataset(str(folder))["num_classes"] == 2

    # Random crops: reproducible for a seed and epoch, different across epochs.
    def crops(epoch):
        src = im.image_dataset(str(folder), resolution=16, random_crop=True, resize=False, seed=1, epoch=epoch)
        return [r["image"] for r in src]

    a, b, c = crops(0), crops(0), crops(1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))


def test_image_folder_errors(tmp_path):
    folder = _write_folder(tmp_path / "imgs", [(40, 30), (12, 50)])
    with pytest.raises(ValueError, match=r"smaller than resolution 16"):
        _rows(build_dataset(str(folder), image_size=16, shuffle=False))
    with pytest.raises(ValueError, match=r"image column 'pixels' not found.*\['image', 'label'\]"):
        build_dataset(str(folder), image_column="pixels")
    with pytest.raises(ValueError, match=r"label column 'target' not found"):
        build_dataset(str(folder), label_column="target")
    flat = _write_folder(tmp_path / "flat", [(20, 20), (20, 20)], labelled=False)
    with pytest.raises(ValueError, match=r"labels are required.*\['image'\]"):
        build_dataset(str(flat), require_labels=True)
    assert "labels" not in _rows(build_dataset(str(flat), image_size=8), 1)[0]
    with pytest.raises(ValueError, match="labels are required"):
        build_dataset("photos", require_labels=True)


def test_image_modes():
    from PIL import Image

    for mode in ("L", "P", "RGBA", "CMYK", "1", "I;16"):
        x = im.to_float_image(Image.new(mode, (5, 4)), in_channels=3)
        assert x.shape == (3, 4, 5) and x.dtype == np.float32
        assert im.to_float_image(Image.new(mode, (5, 4)), in_channels=1).shape == (1, 4, 5)
    with pytest.raises(ValueError, match="unexpected image mode 'HSV'"):
        im.to_float_image(Image.new("HSV", (5, 4)))
    hwc = np.full((4, 5, 3), 255, np.uint8)
    np.testing.assert_allclose(im.to_float_image(hwc, 3), 1.0)
    with pytest.raises(ValueError, match="unexpected image array"):
        im.to_float_image(np.zeros((2, 4, 5, 3)))


# ----------------------------------------------------------------------------- photo crops
def test_photo_crops():
    assert len(im.available_photos()) >= 4
    rows = _rows(photo_crops_dataset("train", resolution=32, num_examples=30, seed=0))
    assert len(rows) == 30
    for r in rows:
        assert r["image"].shape == (3, 32, 32) and r["image"].dtype == np.float32
        assert 0.0 <= r["image"].min() and r["image"].max() <= 1.0
    again = _rows(photo_crops_dataset("train", resolution=32, num_examples=30, seed=0))
    assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(rows, again))
    grey = _rows(build_dataset("photos", "test", image_size=24, in_channels=1, num_examples=3))
    assert grey[0]["pixel_values"].shape == (1, 24, 24) and "labels" not in grey[0]

    # Held-out split: test crops lie in a strip of each photo that no train crop touches.
    res = 32
    regions = im._photo_regions(0, res)
    ids = np.arange(2000)
    for split, other in (("train", "test"), ("test", "train")):
        for _, p, y, x in im._photo_crop_rows(0, split, res, ids, regions):
            t, l, h, w = regions[p][split]
            assert t <= y and y + res <= t + h and l <= x and x + res <= l + w
            ot, ol, oh, ow = regions[p][other]
            overlap_y = min(y + res, ot + oh) - max(y, ot)
            overlap_x = min(x + res, ol + ow) - max(x, ol)
            assert overlap_y <= 0 or overlap_x <= 0


def test_stream_survives_set_epoch_zero_and_dataloader_workers():
    kw = dict(image_size=16, num_examples=96, epoch=1, with_ids=True)
    ref = [r["example_id"] for r in build_dataset("shapes", "train", **kw)]
    ds = build_dataset("shapes", "train", **kw)
    ds.set_epoch(0)  # what a fresh accelerate DataLoader does: must not change the stream
    assert [r["example_id"] for r in ds] == ref
    # Two DataLoader workers split the shards: every example exactly once.
    loader = torch.utils.data.DataLoader(build_dataset("shapes", "train", **kw), batch_size=10, num_workers=2,
                                         collate_fn=collate_batch)
    seen = torch.cat([b["example_id"] for b in loader]).tolist()
    assert sorted(seen) == sorted(ref)


def test_fashion_hub_rows_and_fallback(monkeypatch, tmp_path, caplog):
    from PIL import Image

    row = fm._hub_row({"image": Image.new("L", (28, 28), color=255), "label": 4}, 7)
    assert row["image"].shape == (1, 28, 28) and row["image"].dtype == np.float32
    assert row["image"].max() == 1.0 and row["label"] == 4 and row["id"] == 7
    # With the Hub allowed but failing, fall back to the local files with a warning.
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)), 2051, False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 1]), 2049, False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    assert fm.hub_allowed()

    def no_network(split):
        raise ConnectionError("no network")

    monkeypatch.setattr(fm, "hub_unreachable_reason", lambda: None)  # the probe passes, the download fails
    monkeypatch.setattr(fm, "_hub_dataset", no_network)
    monkeypatch.setattr(fm, "DEFAULT_FASHION_MNIST_DIR", str(tmp_path))
    monkeypatch.setattr(fm, "_warned", set())
    with caplog.at_level("WARNING", logger=fm.logger.name):
        ds = fashion_mnist_dataset("test")
    assert [r.getMessage() for r in caplog.records if "could not stream" in r.getMessage()]
    assert [r["label"] for r in ds] == [3, 1]
    monkeypatch.setattr(fm, "DEFAULT_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no network.*apt-get install dataset-fashion-mnist"):
        fashion_mnist_dataset("test")


def _png(path, value):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def _layout_rows(folder, split):
    rows = _rows(build_dataset(str(folder), split, image_size=8, shuffle=False))
    return sorted((int(round(float(r["pixel_values"].mean()) * 255)), r.get("labels")) for r in rows)


def test_image_folder_layouts(tmp_path):
    """The three ways people lay out image folders, in streaming mode: split folders holding the images,
    split folders of class folders, class folders alone and a flat folder (held-out split carved by name)."""
    split_root = tmp_path / "splits"
    for i in range(4):
        _png(split_root / "train" / f"{i}.png", 10 + i)
    _png(split_root / "test" / "0.png", 200)
    assert _layout_rows(split_root, "train") == [(10, None), (11, None), (12, None), (13, None)]
    assert _layout_rows(split_root, "test") == [(200, None)]
    assert describe_dataset(str(split_root))["num_classes"] is None

    classes_in_splits = tmp_path / "class_splits"
    for split, base in (("train", 10), ("test", 100)):
        for label, name in enumerate(("cat", "dog")):
            _png(classes_in_splits / split / name / "a.png", base + label)
    assert _layout_rows(classes_in_splits, "train") == [(10, 0), (11, 1)]
    assert _layout_rows(classes_in_splits, "test") == [(100, 0), (101, 1)]
    assert describe_dataset(str(classes_in_splits))["num_classes"] == 2

    flat = tmp_path / "flat"
    names = [f"img{i:03d}.png" for i in range(40)]
    for i, name in enumerate(names):
        _png(flat / name, i)
    files, has_labels = im.image_folder_files(str(flat))
    expected_test = sorted(str(flat / n) for n in names if zlib.crc32(n.encode()) % 10 == 0)
    assert not has_labels and files["test"] == expected_test and 0 < len(expected_test) < 40
    assert sorted(files["train"] + files["test"]) == sorted(str(flat / n) for n in names)
    assert describe_dataset(str(flat))["num_examples"] == {"train": 40 - len(expected_test), "test": len(expected_test)}
    test_values = [v for v, _ in _layout_rows(flat, "test")]
    assert test_values == sorted(names.index(os.path.basename(f)) for f in expected_test)
    _png(flat / "zzz-new.png", 250)  # adding an image never moves another one across
    assert [f for f in im.image_folder_files(str(flat))[0]["test"] if "zzz" not in f] == expected_test

    with pytest.raises(ValueError, match=r"split 'validation' not found in image folder .*\['test', 'train'\]"):
        build_dataset(str(flat), "validation")
    mixed = tmp_path / "mixed"
    _png(mixed / "a.png", 1)
    _png(mixed / "cls" / "b.png", 2)
    with pytest.raises(ValueError, match="mixes images"):
        build_dataset(str(mixed))


def test_fashion_mnist_without_network_falls_back_at_once_with_one_warning(tmp_path, monkeypatch, caplog):
    """Hub allowed but unreachable (its endpoint is a closed local port): the probe fails in milliseconds, the Hub
    loader is never called (no retries), the local copy is used, and one warning line says so, once."""
    import socket

    images = (np.arange(3 * 28 * 28) % 256).reshape(3, 28, 28)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images, 2051, False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([7, 8, 9]), 2049, False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(fm, "DEFAULT_FASHION_MNIST_DIR", str(tmp_path))
    monkeypatch.setattr(fm, "_warned", set())
    fm.hub_unreachable_reason.cache_clear()
    hub_calls = []
    monkeypatch.setattr(fm, "_hub_dataset", lambda split: hub_calls.append(split))
    with caplog.at_level("WARNING", logger=fm.logger.name):
        first = _rows(fashion_mnist_dataset("test"))
        second = _rows(fashion_mnist_dataset("test"))
    fm.hub_unreachable_reason.cache_clear()
    assert hub_calls == []
    assert [r["label"] for r in first] == [r["label"] for r in second] == [7, 8, 9]
    warnings_logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings_logged) == 1 and "\n" not in warnings_logged[0]
    assert f"127.0.0.1:{closed_port}" in warnings_logged[0] and str(tmp_path) in warnings_logged[0]
