"""The fast input pipeline: Arrow caches, whole-batch streams, device-side noise, exact resume with workers."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest
import torch

from hf_vae.data import batch_to_tensors, build_batches, build_dataset, render_factors, shapes_dataset
from hf_vae.data import arrow_cache
from hf_vae.data import fashion_mnist as fm
from hf_vae.data.shapes import render_factors_batch, shapes_example_factors
from hf_vae.data.noise import BatchNoise, step_seed
from hf_vae.training.streams import TrainStream

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(not os.path.isfile(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz")),
                                   reason="apt-get install dataset-fashion-mnist")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test writes its Arrow caches into its own folder (and offline)."""
    from datasets import config

    monkeypatch.setattr(config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _batches(ds, num_workers=0):
    loader = torch.utils.data.DataLoader(ds, batch_size=None, collate_fn=batch_to_tensors, num_workers=num_workers)
    return list(loader)


@pytest.mark.parametrize("size", [16, 20, 64])
def test_vectorised_shapes_render_the_same_pixels(size):
    factors = shapes_example_factors(7, np.arange(600))
    batch = render_factors_batch(factors, size)
    assert batch.dtype == np.uint8 and batch.shape == (600, size, size)
    expected = np.stack([render_factors(f, size) for f in factors.tolist()])
    np.testing.assert_array_equal(batch, expected)
    with pytest.raises(ValueError, match="orientation index 40"):
        render_factors_batch([[0, 0, 40, 0, 0]], size)


def test_batches_hold_the_same_examples_as_the_row_stream():
    kw = dict(image_size=32, in_channels=3, value_range=(-1.0, 1.0), num_examples=200, data_seed=3)
    rows = {r["example_id"]: r for r in build_dataset("shapes", "test", with_ids=True, **kw)}
    batches = _batches(build_batches("shapes", "test", 64, with_ids=True, drop_last=False, **kw))
    assert [b["pixel_values"].shape[0] for b in batches] == [64, 64, 64, 8]
    ids = torch.cat([b["example_id"] for b in batches]).tolist()
    assert ids == sorted(rows)  # eval split: in order, every example once
    for b in batches:
        assert b["pixel_values"].dtype == torch.float32 and b["pixel_values"].shape[1:] == (3, 32, 32)
        assert b["factors"].shape == (b["labels"].shape[0], 5)
        for i, ex in enumerate(b["example_id"].tolist()):
            assert torch.equal(b["pixel_values"][i], rows[ex]["pixel_values"])
            assert b["labels"][i] == rows[ex]["labels"] and torch.equal(b["factors"][i], rows[ex]["factors"])


def test_batches_shuffle_per_epoch_and_shard_disjointly():
    kw = dict(image_size=16, num_examples=640, with_ids=True, shuffle_buffer=64, seed=1)

    def ids(epoch, **extra):
        return torch.cat([b["example_id"] for b in _batches(build_batches("shapes", "train", 32, epoch=epoch,
                                                                            **kw, **extra))]).tolist()

    e0, e0_again, e1 = ids(0), ids(0), ids(1)
    assert e0 == e0_again and e0 != e1 and sorted(e0) == sorted(e1) == list(sorted(set(e0)))
    assert e0 != sorted(e0) and len(e0) == 640
    for world in (2, 3):
        parts = [set(ids(0, process_index=p, num_processes=world)) for p in range(world)]
        assert sum(map(len, parts)) <= 640 and all(not a & b for i, a in enumerate(parts) for b in parts[i + 1:])
        assert sum(map(len, parts)) >= 640 - world * 32  # each process drops at most its last partial batch


def test_workers_read_every_example_once_and_the_same_way_each_time():
    kw = dict(image_size=16, num_examples=512, with_ids=True, epoch=2)
    one = [b["example_id"].tolist() for b in _batches(build_batches("shapes", "train", 16, **kw), num_workers=2)]
    two = [b["example_id"].tolist() for b in _batches(build_batches("shapes", "train", 16, **kw), num_workers=2)]
    assert one == two
    assert sorted(sum(one, [])) == sorted(set(sum(one, []))) and len(sum(one, [])) >= 512 - 2 * 16


def test_arrow_cache_is_written_once_and_keyed_by_content(tmp_path):
    build_batches("shapes", "test", 8, image_size=16, num_examples=20)
    files = sorted(os.listdir(arrow_cache.cache_dir()))
    assert len(files) == 1 and files[0].startswith("shapes-") and files[0].endswith(".arrow")
    stamp = os.stat(os.path.join(arrow_cache.cache_dir(), files[0])).st_mtime_ns
    build_batches("shapes", "test", 8, image_size=16, num_examples=20)
    assert os.stat(os.path.join(arrow_cache.cache_dir(), files[0])).st_mtime_ns == stamp  # not rewritten
    build_batches("shapes", "test", 8, image_size=16, num_examples=21)  # other settings, another file
    assert len(os.listdir(arrow_cache.cache_dir())) == 2

    # Local IDX files: the key is a hash of their bytes, so changed files give a new cache.
    import gzip
    import struct

    def write_idx(images, labels):
        for name, arr, magic in (("t10k-images-idx3-ubyte", images, 2051), ("t10k-labels-idx1-ubyte", labels, 2049)):
            header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
            with gzip.open(tmp_path / (name + ".gz"), "wb") as f:
                f.write(header + arr.astype(np.uint8).tobytes())

    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    write_idx(images, np.array([4, 1, 9]))
    (b,) = _batches(build_batches("fashion_mnist", "test", 3, data_dir=str(tmp_path), with_ids=True))
    np.testing.assert_allclose(b["pixel_values"][:, 0].numpy(), images / 255.0, rtol=0, atol=1e-7)
    assert b["labels"].tolist() == [4, 1, 9] and b["example_id"].tolist() == [0, 1, 2]
    write_idx(255 - images, np.array([4, 1, 9]))
    (c,) = _batches(build_batches("fashion_mnist", "test", 3, data_dir=str(tmp_path)))
    np.testing.assert_allclose(c["pixel_values"][:, 0].numpy(), (255 - images) / 255.0, rtol=0, atol=1e-7)
    assert len([f for f in os.listdir(arrow_cache.cache_dir()) if f.startswith("fashion_mnist-")]) == 2


@needs_fashion
def test_fashion_mnist_batches_are_the_idx_images():
    images, labels = fm.load_fashion_mnist_arrays("test")
    (b,) = _batches(build_batches("fashion_mnist", "test", 500, with_ids=True, drop_last=True))[:1]
    ids = b["example_id"].numpy()
    assert ids.tolist() == list(range(500))
    np.testing.assert_array_equal(b["pixel_values"][:, 0].numpy(), images[ids].astype(np.float32) * (1.0 / 255.0))
    assert b["labels"].tolist() == labels[ids].tolist()


def test_device_noise_is_a_function_of_seed_process_and_step():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    x[:, :, :2] = 0.0
    noise = BatchNoise(5, 0, binarize=True, value_range=(0.0, 1.0), device=torch.device("cpu"))
    a = noise({"pixel_values": x}, step=3)["pixel_values"]
    torch.randn(10)  # the global RNG does not matter
    assert torch.equal(a, noise({"pixel_values": x}, step=3)["pixel_values"])  # a resumed run draws the same
    assert set(a.unique().tolist()) <= {0.0, 1.0} and torch.all(a[:, :, :2] == 0)
    assert not torch.equal(a, noise({"pixel_values": x}, step=4)["pixel_values"])
    assert not torch.equal(a, noise({"pixel_values": x}, step=3, micro=1)["pixel_values"])
    other = BatchNoise(5, 1, binarize=True, value_range=(0.0, 1.0), device=torch.device("cpu"))
    assert not torch.equal(a, other({"pixel_values": x}, step=3)["pixel_values"])
    assert step_seed(5, 0, 3) != step_seed(5, 1, 3) != step_seed(6, 0, 3)
    # Bernoulli with the pixel intensities as means (a 5-sigma band over 400k draws).
    p = torch.full((100, 4000), 0.3)
    mean = noise({"pixel_values": p}, step=0)["pixel_values"].mean().item()
    assert abs(mean - 0.3) < 5 * (0.3 * 0.7 / p.numel()) ** 0.5
    # In [-1, 1]: the same draw, mapped to {-1, 1}.
    signed = BatchNoise(5, 0, binarize=True, value_range=(-1.0, 1.0), device=torch.device("cpu"))
    b = signed({"pixel_values": x * 2 - 1}, step=3)["pixel_values"]
    assert torch.equal(b, a * 2 - 1)
    off = BatchNoise(5, 0, binarize=False, value_range=(0.0, 1.0), device=torch.device("cpu"))
    assert off({"pixel_values": x}, step=3)["pixel_values"] is x


def _stream_batches(stream, count):
    out = []
    for batch in stream:
        out.append(batch)
        if len(out) == count:
            return out


@pytest.mark.parametrize("source", ["shapes", "folder"])
def test_train_stream_resumes_exactly(source, tmp_path):
    settings = {"image_size": 16, "in_channels": 3, "value_range": (-1.0, 1.0), "binarize": False}
    if source == "shapes":
        kw = dict(dataset="shapes", num_examples=96, num_workers=None)
    else:  # decoded in 2 DataLoader workers
        from PIL import Image

        rng = np.random.default_rng(0)
        (tmp_path / "images").mkdir()
        for i in range(40):
            Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(tmp_path / "images" / f"{i}.png")
        kw = dict(dataset=str(tmp_path / "images"), num_workers=2)
    make = lambda **pos: TrainStream(settings=settings, batch_size=8, seed=3, data_seed=0, shuffle_buffer=16,  # noqa
                                     **kw, **pos)
    reference = make()
    assert reference.num_workers == (0 if source == "shapes" else 2)
    full = _stream_batches(reference, 17)  # crosses an epoch boundary (12 or 5 batches per epoch)
    position = make()
    head = _stream_batches(position, 7)
    resumed = _stream_batches(make(epoch=position.epoch, batches=position.batches), 10)
    for a, b in zip(head + resumed, full):
        assert torch.equal(a["pixel_values"], b["pixel_values"])


def test_device_dequantisation_spreads_each_level_over_its_cell():
    levels = torch.randint(0, 256, (32, 3, 8, 8)).float()
    x = levels / 127.5 - 1.0  # 8-bit images in [-1, 1]
    noise = BatchNoise(1, 0, binarize=False, dequantize=True, value_range=(-1.0, 1.0), device=torch.device("cpu"))
    y = noise({"pixel_values": x}, step=7)["pixel_values"]
    cell = (y + 1) / 2 * 256 - levels  # (k + u) / 256 -> u
    assert cell.min() >= 0 and cell.max() < 1 and 0.45 < cell.mean() < 0.55
    assert torch.equal(y, noise({"pixel_values": x}, step=7)["pixel_values"])
    with pytest.raises(ValueError, match="at most one of binarize and dequantize"):
        BatchNoise(1, 0, binarize=True, dequantize=True, value_range=(0.0, 1.0), device=torch.device("cpu"))


def test_trainer_can_vouch_for_inputs_and_skip_their_device_sync():
    from hf_vae import VAEConfig, VAEModel

    model = VAEModel(VAEConfig(image_size=8, in_channels=1, hidden_dims=[16], latent_dim=2, likelihood="bernoulli"))
    x = torch.rand(4, 1, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        model(x)
    with model.inputs_checked_by_caller():
        assert not torch.isfinite(model(x).loss)  # not refused: the caller's non-finite loss check sees it
        with pytest.raises(ValueError, match="channels"):  # shapes are still checked
            model(torch.rand(4, 2, 8, 8))
    with pytest.raises(ValueError, match=r"in \[0.0, 1.0\]"):  # restored after the block
        model(torch.full((4, 1, 8, 8), 2.0))


def test_noise_streams_keep_their_numbers():
    """The seeds and first draws of every data noise, pinned: a change here changes every trained model."""
    from hf_vae.data.noise import dequantize, example_noise

    assert [step_seed(0, 0, 0), step_seed(5, 1, 3, 2), step_seed(-1, 0, 10**9)] == [
        6180702321605259609, 6971354274219430179, 1066316233667659181]
    x = torch.linspace(0, 1, 12).reshape(1, 1, 3, 4)
    binary = BatchNoise(5, 0, binarize=True, value_range=(0.0, 1.0), device=torch.device("cpu"))
    assert binary({"pixel_values": x}, step=3)["pixel_values"].flatten().tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1]
    levels = BatchNoise(5, 0, binarize=False, dequantize=True, value_range=(-1.0, 1.0), device=torch.device("cpu"))
    cells = (levels({"pixel_values": x * 2 - 1}, step=3, micro=1)["pixel_values"] + 1) / 2 * 256
    assert cells.flatten()[:3].tolist() == [0.205291748046875, 23.598785400390625, 46.353797912597656]
    evaluation = dequantize(x, (0.0, 1.0), torch.Generator().manual_seed(11))
    assert evaluation.flatten()[:3].tolist() == [0.0005821941886097193, 0.09174434840679169, 0.18353773653507233]
    # The row streams' per-example noise, keyed by the example id, or by the pixels when there is none.
    row = np.linspace(0, 1, 12, dtype=np.float32).reshape(1, 3, 4)
    kw = dict(seed=7, epoch=2)
    assert example_noise(row, binarize=True, dequantize=False, example_id=9, **kw).ravel().tolist() == [
        0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert example_noise(row, binarize=False, dequantize=True, example_id=9, **kw).ravel()[:3].tolist() == [
        1.6810838133096695e-05, 0.09321189671754837, 0.1817953735589981]
    assert example_noise(row, binarize=False, dequantize=True, **kw).ravel()[:3].tolist() == [
        0.0009132067207247019, 0.09103930741548538, 0.18165232241153717]
    assert example_noise(row, binarize=False, dequantize=False, **kw) is row


def test_mix64_of_python_ints_is_the_numpy_mixer():
    from hf_vae.data._hashing import mix64

    words = np.random.default_rng(0).integers(0, 2**64, 20_000, dtype=np.uint64, endpoint=False)
    words = np.concatenate([words, np.asarray([0, 1, 2**63, 2**64 - 1], dtype=np.uint64)])
    assert [mix64(int(w)) for w in words] == [int(v) for v in mix64(words)]
    assert [int(v) for v in mix64(np.asarray([0, 1, 2**64 - 1], dtype=np.uint64))] == [
        0, 6238072747940578789, 13029008266876403067]
    assert mix64(-1) == mix64(2**64 - 1)  # a Python int is read modulo 2**64
