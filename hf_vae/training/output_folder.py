"""The output folder belongs to one run: `claim_output_dir` is the one guard of every path that writes a run.

A new run refuses a folder holding another run's files unless it is told to overwrite them or to resume that run.
A run lists what it writes in `run_manifest.json` (before writing it), and --overwrite_output_dir removes exactly
those entries (see docs/reliability.md).
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict, List, Optional, Tuple

from ..families import DIFFUSERS_COMPONENT
from .checkpoint_format import CheckpointError, read_json, write_json
from .checkpoint_store import TMP_PREFIX, checkpoint_dir, latest_checkpoint, list_checkpoints


#: Written into every output folder a run writes: the entries (files and folders) that run wrote, so that
#: --overwrite_output_dir removes exactly those and never a file the run did not write.
RUN_MANIFEST = "run_manifest.json"
RUN_FORMAT = "hf_vae-run"
#: What a run writes before its first step; a folder holding only these (and no checkpoint) is a run killed
#: before its first checkpoint, which holds nothing to lose.
RUN_START_ENTRIES = (RUN_MANIFEST, "training_args.json", "logs", "checkpoints")
#: What a run writes at its end besides the published model (whose file names `publish_pretrained` records).
RUN_END_ENTRIES = ("metrics.json", "reconstructions.png", "samples.png")
#: A folder written before run manifests existed is cleared of these names only (its code files are replaced,
#: not removed).
_LEGACY_RUN_ENTRIES = RUN_START_ENTRIES + RUN_END_ENTRIES + (
    "config.json", "model.safetensors", "model.safetensors.index.json", DIFFUSERS_COMPONENT, "training.json", "generation_config.json")


def read_run_manifest(output_dir: str) -> Optional[Dict[str, Any]]:
    """The run manifest of `output_dir`, or None for a folder without one (new, or written by an older version)."""
    path = os.path.join(output_dir, RUN_MANIFEST)
    if not os.path.isfile(path):
        return None
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != RUN_FORMAT or \
            not isinstance(manifest.get("entries"), list):
        raise CheckpointError(f"{path}: not an hf_vae run manifest; expected {{'format': {RUN_FORMAT!r}, "
                              f"'entries': [...]}}. Remove it by hand if that folder holds no run of hf_vae.")
    return manifest


def record_run_entries(output_dir: str, entries, **info) -> None:
    """Add `entries` (names directly under `output_dir`) to its run manifest, before they are written: a run
    killed while writing one still has it listed. `info` (e.g. resumed_from) is stored alongside."""
    manifest = read_run_manifest(output_dir) or {"format": RUN_FORMAT, "entries": []}
    manifest["entries"] = sorted(set(manifest["entries"]) | {str(name) for name in entries} | {RUN_MANIFEST})
    manifest.update({k: v for k, v in info.items() if v is not None})
    os.makedirs(output_dir, exist_ok=True)
    tmp = os.path.join(output_dir, f"{TMP_PREFIX}{os.getpid()}-{RUN_MANIFEST}")
    write_json(manifest, tmp)
    os.replace(tmp, os.path.join(output_dir, RUN_MANIFEST))


def _shown(names: List[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _killed_before_first_checkpoint(output_dir: str, found: List[str]) -> bool:
    """The folder holds only what a run writes before its first checkpoint, and no checkpoint."""
    return set(found) <= set(RUN_START_ENTRIES) and not list_checkpoints(checkpoint_dir(output_dir))


def _same_folder(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def claim_output_dir(output_dir: str, overwrite: bool, resume_from_checkpoint=None) -> List[str]:
    """The one guard of an output folder, for every path that writes a run. Returns the entries found.

    * a new or empty folder: any run may write into it;
    * --resume_from_checkpoint: only into the folder whose checkpoint is resumed (`latest` needs a checkpoint
      there), or into a new or empty folder; a run killed before its first checkpoint may be resumed anew;
    * --overwrite_output_dir: the previous run is removed by the caller (`clear_previous_run`), entry by entry
      as its manifest lists them;
    * otherwise a folder holding files is refused, naming them.
    """
    if not os.path.isdir(output_dir):
        if os.path.exists(output_dir):
            raise FileExistsError(f"--output_dir {output_dir} is a file; expected a folder (new or empty).")
        return []
    found = sorted(os.listdir(output_dir))
    if not found:
        return []
    if resume_from_checkpoint is not None:
        if overwrite:
            raise ValueError(f"--overwrite_output_dir and --resume_from_checkpoint {resume_from_checkpoint} "
                             f"contradict each other: expected one of them (resuming keeps the run in "
                             f"{output_dir}, overwriting removes it).")
        _check_resume_target(output_dir, str(resume_from_checkpoint), found)
        return found
    if overwrite:
        return found
    raise FileExistsError(
        f"--output_dir {output_dir} already holds files ({_shown(found)}), probably of another run; expected a new "
        f"or empty folder. Pass --overwrite_output_dir to replace that run, or --resume_from_checkpoint latest "
        f"to continue it.")


def _check_resume_target(output_dir: str, resume_from_checkpoint: str, found: List[str]) -> None:
    if resume_from_checkpoint == "latest":
        if latest_checkpoint(checkpoint_dir(output_dir)) is None and \
                not _killed_before_first_checkpoint(output_dir, found):
            raise FileExistsError(
                f"--resume_from_checkpoint latest: --output_dir {output_dir} holds files ({_shown(found)}) but no "
                f"complete checkpoint in {checkpoint_dir(output_dir)}; expected a folder with a checkpoint to "
                f"resume, or a new or empty folder. Pass --overwrite_output_dir (without --resume_from_checkpoint) "
                f"to replace that run.")
        return
    home = os.path.dirname(os.path.dirname(os.path.abspath(resume_from_checkpoint)))
    if _same_folder(home, output_dir):
        return
    manifest = read_run_manifest(output_dir) or {}
    same_resume = manifest.get("resumed_from") and _same_folder(manifest["resumed_from"], resume_from_checkpoint)
    if same_resume and _killed_before_first_checkpoint(output_dir, found):
        return  # the same resume, killed before its first checkpoint
    raise FileExistsError(
        f"--resume_from_checkpoint {resume_from_checkpoint} is a checkpoint of the run in {home}, and --output_dir "
        f"{output_dir} holds another run ({_shown(found)}); expected a new or empty --output_dir, or {home} itself.")


def clear_previous_run(output_dir: str) -> Tuple[List[str], List[str]]:
    """For --overwrite_output_dir: remove every entry the previous run wrote, as its run manifest lists them (a
    folder without one: the names a run writes), so that `latest`, retention and readers see only the new run.
    Returns (removed, kept): kept are the entries that run did not write; they are left as they are."""
    manifest = read_run_manifest(output_dir)
    written = set(manifest["entries"]) if manifest is not None else set(_LEGACY_RUN_ENTRIES)
    removed, kept = [], []
    for name in sorted(os.listdir(output_dir)):
        if name.startswith(TMP_PREFIX):
            continue  # leftovers of a killed run: remove_publish_leftovers
        if name not in written or os.sep in name or name in (".", ".."):
            kept.append(name)
            continue
        path = os.path.join(output_dir, name)
        doomed = os.path.join(output_dir, f"{TMP_PREFIX}removing-{name}")
        os.replace(path, doomed)  # renamed first: a kill half-way through leaves a .tmp- entry, never half a run
        if os.path.isdir(doomed) and not os.path.islink(doomed):
            shutil.rmtree(doomed, ignore_errors=True)
        else:
            os.remove(doomed)
        removed.append(name)
    return removed, kept


def describe_cleared(output_dir: str, removed: List[str], kept: List[str]) -> str:
    """The line --overwrite_output_dir prints: what it removed, and what it kept because that run did not write it."""
    line = f"--overwrite_output_dir: removed the previous run's {', '.join(removed) or 'nothing'} from {output_dir}"
    if kept:
        line += f"; kept {', '.join(kept)} (not written by that run)"
    return line + "."
