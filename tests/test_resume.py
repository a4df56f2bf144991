"""Nothing is lost: a run killed with SIGKILL and restarted with --resume_from_checkpoint latest ends with the
same weights, bit for bit, as an uninterrupted run; unfinished checkpoints are never taken for 'latest'."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_vae.training import DataArguments, TrainArguments, latest_checkpoint, list_checkpoints, train
from hf_vae.training.checkpointing import TMP_PREFIX, CheckpointError, remove_temporary, resolve_resume, write_manifest

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "scripts" / "train.py")
# Small enough to be quick, long enough (300 steps) to be killed mid-way; 1000 examples / 16 = 62 batches per
# epoch, so the run crosses several epoch boundaries and the kill lands inside an epoch. EMA and a β-VAE
# capacity schedule add state that must be restored too.
RUN = ["--model", "beta_vae", "--use_capacity", "--capacity_steps", "100", "--image_size", "16",
       "--hidden_dims", "32", "--latent_dim", "4", "--batch_size", "16", "--num_train_examples", "1000",
       "--max_steps", "300", "--checkpointing_steps", "50", "--eval_steps", "0", "--ema_decay", "0.9",
       "--report_to", "jsonl", "--eval_importance_samples", "2", "--final_eval_max_examples", "16",
       "--num_sample_images", "4", "--resume_from_checkpoint", "latest"]


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # see tests/conftest.py


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _weights(output_dir):
    return load_file(os.path.join(output_dir, "model.safetensors"))


# three training runs in subprocesses, one killed; fast siblings: the other tests here and
# tests/test_fuzz_checkpoints.py's SIGKILL moments
@pytest.mark.slow
def test_sigkill_then_resume_latest_gives_bitwise_identical_weights(tmp_path):
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    subprocess.run([sys.executable, TRAIN, "--output_dir", reference, *RUN], env=_env(), check=True,
                   capture_output=True, cwd=tmp_path)

    # The same command, killed with SIGKILL as soon as its second checkpoint is complete.
    log = open(tmp_path / "killed.log", "w")
    process = subprocess.Popen([sys.executable, TRAIN, "--output_dir", killed, *RUN], env=_env(), stdout=log,
                               stderr=subprocess.STDOUT, cwd=tmp_path)
    target = os.path.join(killed, "checkpoints", "checkpoint-100")
    deadline = time.time() + 120
    while not os.path.isdir(target) and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not os.path.exists(os.path.join(killed, "model.safetensors")), "killed too late to test anything"
    steps_done = list_checkpoints(os.path.join(killed, "checkpoints"))[-1][0]
    assert 100 <= steps_done < 300

    # Restart: the same command line (it says --resume_from_checkpoint latest from the start).
    result = subprocess.run([sys.executable, TRAIN, "--output_dir", killed, *RUN], env=_env(), check=True,
                            capture_output=True, text=True, cwd=tmp_path)
    assert f"Resumed from {os.path.join(killed, 'checkpoints', f'checkpoint-{steps_done}')}" in result.stdout
    expected, got = _weights(reference), _weights(killed)
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"resumed weights differ from the uninterrupted run in {different}"


def test_resume_extends_a_finished_run_exactly(tmp_path):
    """6 steps + 4 more after a resume == 10 steps straight (constant learning rate, so the schedules agree)."""
    common = dict(batch_size=8, eval_steps=0, report_to="none", eval_importance_samples=2,
                  final_eval_max_examples=16, num_sample_images=4, lr_scheduler="constant", warmup_steps=0,
                  checkpointing_steps=3)
    data = DataArguments(num_train_examples=40)  # 5 batches per epoch: the resume crosses an epoch boundary
    config = {"image_size": 16, "hidden_dims": [32], "latent_dim": 4}
    train(TrainArguments(output_dir=str(tmp_path / "straight"), max_steps=10, **common), data, dict(config))
    first = train(TrainArguments(output_dir=str(tmp_path / "resumed"), max_steps=6, **common), data, dict(config))
    assert first["train"]["resumed_from"] is None
    second = train(TrainArguments(output_dir=str(tmp_path / "resumed"), max_steps=10,
                                  resume_from_checkpoint="latest", **common), data, dict(config))
    assert second["train"]["resumed_from"].endswith("checkpoint-6") and second["train"]["steps"] == 4
    assert second["step"] == 10
    expected, got = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_latest_ignores_unfinished_checkpoints(tmp_path):
    directory = tmp_path / "checkpoints"
    for name in ("checkpoint-10", "checkpoint-200", "checkpoint-30", f"{TMP_PREFIX}checkpoint-300", "notes"):
        (directory / name).mkdir(parents=True)
        (directory / name / "model.safetensors").write_bytes(b"")
        write_manifest(str(directory / name), 0)
    assert [step for step, _ in list_checkpoints(str(directory))] == [10, 30, 200]
    assert latest_checkpoint(str(directory)) == str(directory / "checkpoint-200")
    assert resolve_resume("latest", str(tmp_path)) == str(directory / "checkpoint-200")
    assert resolve_resume(None, str(tmp_path)) is None
    with pytest.raises(ValueError, match="unfinished checkpoint"):
        resolve_resume(str(directory / f"{TMP_PREFIX}checkpoint-300"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="expected 'latest' or a checkpoint folder"):
        resolve_resume(str(directory / "checkpoint-999"), str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="manifest.json: missing"):
        resolve_resume(str(tmp_path / "empty"), str(tmp_path))
    assert remove_temporary(str(directory)) == [f"{TMP_PREFIX}checkpoint-300"]
    assert not (directory / f"{TMP_PREFIX}checkpoint-300").exists()
    assert resolve_resume("latest", str(tmp_path / "elsewhere")) is None  # no checkpoint yet: a fresh start
