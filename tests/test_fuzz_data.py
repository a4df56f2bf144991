"""Fuzz: bad images in a dataset, data problems that would only show at the end of a run, and bad command-line
values. Each case asserts the exact outcome: the file or field named, or the skip counted."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from hf_vae.data import build_dataset, collate_batch
from hf_vae.training import DataArguments, TrainArguments, main, train
from hf_vae.training.streams import TrainStream

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((8, 8, 3)) * 255).astype("uint8")).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_FILES = {
    "garbage.png": b"\x89PNG\r\n\x1a\n this is not a PNG body",
    "truncated.png": _png(99)[:40],
    "empty.png": b"",
    "text.jpg": b"hello, I am a text file",
    "header-only.jpg": b"\xff\xd8\xff\xe0",
    "html.webp": b"<html><body>404 not found</body></html>",
}


def _folder(root, bad_name=None, test=True, n_train=8):
    for i in range(n_train):
        (root / "train").mkdir(parents=True, exist_ok=True)
        (root / "train" / f"{i:02d}.png").write_bytes(_png(i))
    if test:
        (root / "test").mkdir(parents=True, exist_ok=True)
        for i in range(4):
            (root / "test" / f"{i:02d}.png").write_bytes(_png(100 + i))
    if bad_name is not None:
        (root / "train" / f"03-{bad_name}").write_bytes(BAD_FILES[bad_name])
    return root


@pytest.mark.parametrize("bad_name", list(BAD_FILES))
def test_an_unreadable_image_is_named(tmp_path, bad_name):
    root = _folder(tmp_path / "data", bad_name)
    stream = build_dataset(str(root), "train", image_size=8, in_channels=3, shuffle=False)
    with pytest.raises(ValueError) as error:
        list(stream)
    message = str(error.value)
    assert f"03-{bad_name}" in message and "--skip_bad_images" in message


@pytest.mark.parametrize("bad_name", list(BAD_FILES))
def test_skip_bad_images_drops_and_counts_them(tmp_path, bad_name):
    root = _folder(tmp_path / "data", bad_name)
    rows = list(build_dataset(str(root), "train", image_size=8, in_channels=3, shuffle=False, skip_bad_images=True))
    batch = collate_batch(rows)
    assert batch["pixel_values"].shape == (8, 3, 8, 8)  # the eight good images
    assert [os.path.basename(p) for p in batch["bad_images"]] == [f"03-{bad_name}"]


def test_a_batch_of_only_bad_images_is_skipped_by_the_stream(tmp_path):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    for i in range(4):
        (root / "train" / f"bad{i}.png").write_bytes(b"broken")
    for i in range(4):
        (root / "train" / f"good{i}.png").write_bytes(_png(i))
    settings = {"image_size": 8, "in_channels": 3, "value_range": (0.0, 1.0), "binarize": False, "dequantize": False}
    stream = TrainStream(str(root), settings, batch_size=4, seed=0, data_seed=0, shuffle_buffer=1,
                         skip_bad_images=True)
    batches = iter(stream)
    first = next(batches)
    assert first["pixel_values"].shape[0] >= 1 and "bad_images" not in first
    for _ in range(3):
        next(batches)
    assert stream.skipped_images >= 4


def test_skipped_images_are_counted_in_metrics_json(tmp_path):
    root = _folder(tmp_path / "data", "garbage.png", n_train=15)
    (root / "test" / "99-truncated.png").write_bytes(BAD_FILES["truncated.png"])
    args = TrainArguments(output_dir=str(tmp_path / "out"), max_steps=4, batch_size=4, eval_steps=0,
                          report_to="none", eval_importance_samples=2, num_sample_images=2, checkpointing_steps=2)
    data = DataArguments(dataset=str(root), skip_bad_images=True)
    record = train(args, data, {"image_size": 8, "hidden_dims": [16], "latent_dim": 2})
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["skipped_images"] == record["skipped_images"] == {"train": 1, "test": 1}


def test_without_a_test_split_the_run_fails_before_the_first_step(tmp_path):
    root = _folder(tmp_path / "data", test=False)
    args = TrainArguments(output_dir=str(tmp_path / "out"), max_steps=4, batch_size=4, eval_steps=0,
                          report_to="none", checkpointing_steps=1)
    with pytest.raises(ValueError) as error:
        train(args, DataArguments(dataset=str(root)), {"image_size": 8, "hidden_dims": [16], "latent_dim": 2})
    assert "evaluation split 'test'" in str(error.value) and "before the first step" in str(error.value)
    assert not os.path.exists(tmp_path / "out" / "checkpoints" / "checkpoint-1")  # no step was taken


def test_a_conditional_model_without_labels_fails_before_the_first_step(tmp_path):
    root = _folder(tmp_path / "data")
    args = TrainArguments(model="cvae", output_dir=str(tmp_path / "out"), max_steps=4, batch_size=4, eval_steps=0,
                          report_to="none", checkpointing_steps=1)
    with pytest.raises(ValueError, match="label"):
        train(args, DataArguments(dataset=str(root)), {"image_size": 8, "hidden_dims": [16], "latent_dim": 2,
                                                       "num_classes": 3})
    assert not os.path.exists(tmp_path / "out" / "checkpoints" / "checkpoint-1")


@pytest.mark.parametrize("argv,expected", [
    (["--model", "beta_vae", "--beta", "abc"], "`beta` to be a finite number >= 0, got 'abc' (a str)"),
    (["--model", "beta_vae", "--beta", "inf"], "`beta` to be a finite number >= 0, got inf"),
    (["--model", "beta_vae", "--gamma", "nan"], "`gamma` to be a finite number >= 0, got nan"),
    (["--model", "klae", "--kl_weight", "-inf"], "`kl_weight` to be a finite number >= 0, got -inf"),
    (["--likelihood_scale", "0"], "`likelihood_scale` to be a finite number > 0, got 0"),
    (["--latent_dim", "2.5"], "`latent_dim` to be a positive int, got 2.5"),
    (["--learning_rate", "inf"], "`learning_rate` to be a finite number, got inf"),
    (["--max_grad_norm", "nan"], "`max_grad_norm` to be a finite number, got nan"),
    (["--model", "vq_vae", "--commitment_cost", "1e999"], "`commitment_cost` to be a finite number >= 0, got inf"),
])
def test_bad_numeric_values_on_the_command_line_name_the_field(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        main(["--output_dir", str(tmp_path / "out"), "--image_size", "16", "--report_to", "none", *argv])
    # A usage error either way (2, as argparse's): a trainer flag is checked while the command line is parsed, a
    # model field when its config is built.
    assert exit_.value.code == 2
    assert expected in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out" / "checkpoints")  # refused before anything was written
