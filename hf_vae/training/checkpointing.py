"""Checkpoints that survive a kill at any moment, and files published atomically.

A checkpoint is `accelerator.save_state` (model, optimisers, schedulers, RNG states of every process, and the
objects registered with `register_for_checkpointing`: the training position, the EMA, the discriminator) written
to `checkpoints/.tmp-checkpoint-<step>` and then renamed to `checkpoints/checkpoint-<step>`. A rename within one
file system is atomic, so a `checkpoint-<step>` folder is always complete; a run killed while saving leaves only a
`.tmp-` folder, which `latest` ignores and the next run deletes.

The published model (`config.json`, `model.safetensors` and the model code at the root of the output folder) is
written the same way: `save_pretrained` into a temporary folder, then each file renamed into place, weights first.
Both protect against a killed process; surviving a power cut would also need an fsync, which is not done here.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Dict, List, Optional, Tuple

CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class TrainingState:
    """The loop's position, checkpointed with the rest of the state.

    `data_epochs[r]` / `data_batches[r]`: the epoch of process r's stream and how many of its batches that
    process has consumed in it. Each process keeps its own position because shards may differ in length.
    """

    def __init__(self, num_processes: int = 1):
        self.step = 0
        self.num_processes = num_processes
        self.data_epochs: List[int] = [0] * num_processes
        self.data_batches: List[int] = [0] * num_processes
        self.skipped_batches = 0
        self.examples_seen = 0

    def state_dict(self) -> Dict:
        return {"step": self.step, "num_processes": self.num_processes, "data_epochs": list(self.data_epochs),
                "data_batches": list(self.data_batches), "skipped_batches": self.skipped_batches,
                "examples_seen": self.examples_seen}

    def load_state_dict(self, state: Dict) -> None:
        self.step = int(state["step"])
        self.skipped_batches = int(state.get("skipped_batches", 0))
        self.examples_seen = int(state.get("examples_seen", 0))
        saved_processes = int(state.get("num_processes", 1))
        epochs, batches = list(state["data_epochs"]), list(state["data_batches"])
        if saved_processes != self.num_processes:
            # The shards are different now, so the exact order cannot be restored; restart the epoch the first
            # process was in, skipping as many batches as it had consumed (close to the same data position).
            epochs, batches = [epochs[0]] * self.num_processes, [batches[0]] * self.num_processes
            self.resharded_from = saved_processes
        self.data_epochs, self.data_batches = epochs, batches


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def list_checkpoints(checkpoints_dir: str) -> List[Tuple[int, str]]:
    """Complete checkpoints as (step, path), oldest first. Temporary folders are not listed."""
    if not os.path.isdir(checkpoints_dir):
        return []
    found = []
    for name in os.listdir(checkpoints_dir):
        match = _CHECKPOINT_RE.match(name)
        path = os.path.join(checkpoints_dir, name)
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(checkpoints_dir: str) -> Optional[str]:
    found = list_checkpoints(checkpoints_dir)
    return found[-1][1] if found else None


def resolve_resume(resume_from_checkpoint: Optional[str], output_dir: str) -> Optional[str]:
    """'latest' -> the newest complete checkpoint (None when there is none yet); a path -> that checkpoint."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        return latest_checkpoint(checkpoint_dir(output_dir))
    path = resume_from_checkpoint
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: no such folder; expected 'latest' or a "
                                f"checkpoint folder such as {os.path.join(checkpoint_dir(output_dir), 'checkpoint-500')}.")
    if os.path.basename(os.path.normpath(path)).startswith(TMP_PREFIX):
        raise ValueError(f"--resume_from_checkpoint {path} is an unfinished checkpoint (a run was killed while "
                         f"writing it); expected a complete checkpoint-<step> folder.")
    if not any(name.startswith("model") for name in os.listdir(path)):
        raise ValueError(f"--resume_from_checkpoint {path} holds no model state (found {sorted(os.listdir(path))}); "
                         f"expected a folder written by accelerator.save_state.")
    return path


def remove_temporary(checkpoints_dir: str) -> List[str]:
    """Delete `.tmp-` folders left by a killed run. Call on the main process before training."""
    removed = []
    if os.path.isdir(checkpoints_dir):
        for name in os.listdir(checkpoints_dir):
            if name.startswith(TMP_PREFIX):
                shutil.rmtree(os.path.join(checkpoints_dir, name), ignore_errors=True)
                removed.append(name)
    return removed


def save_checkpoint(accelerator, output_dir: str, step: int, total_limit: Optional[int] = None) -> str:
    """Save the full training state as checkpoints/checkpoint-<step>, atomically, and prune old checkpoints.

    Every process must call this (each writes its RNG state). Returns the checkpoint path.
    """
    directory = checkpoint_dir(output_dir)
    final = os.path.join(directory, f"{CHECKPOINT_PREFIX}{step}")
    tmp = os.path.join(directory, f"{TMP_PREFIX}{CHECKPOINT_PREFIX}{step}")
    if os.path.isdir(final):  # this exact state is saved already (a resumed run that had nothing left to do)
        return final
    if accelerator.is_main_process:
        os.makedirs(directory, exist_ok=True)
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()  # every process has written its part before the folder becomes visible
    if accelerator.is_main_process:
        os.replace(tmp, final)
        if total_limit is not None:
            for _, old in list_checkpoints(directory)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def publish_pretrained(model, output_dir: str, safe_serialization: bool = True) -> List[str]:
    """`model.save_pretrained` into `output_dir` atomically: a temporary folder, then one rename per file.

    The weights are renamed before config.json, so a reader that finds a new config.json finds new weights.
    Returns the published file names.
    """
    os.makedirs(output_dir, exist_ok=True)
    tmp = os.path.join(output_dir, f"{TMP_PREFIX}publish-{os.getpid()}")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=safe_serialization)
    names = sorted(os.listdir(tmp), key=lambda n: (n == "config.json", n))
    umask = os.umask(0)
    os.umask(umask)
    for name in names:
        src = os.path.join(tmp, name)
        if os.path.isfile(src):  # safetensors writes 0600 files; published files follow the umask like the rest
            os.chmod(src, 0o666 & ~umask)
        if os.path.isdir(src):  # not produced by save_pretrained today; keep the layout if it ever is
            dst = os.path.join(output_dir, name)
            if os.path.exists(dst):
                shutil.rmtree(dst)
        os.replace(src, os.path.join(output_dir, name))
    shutil.rmtree(tmp, ignore_errors=True)
    return names
