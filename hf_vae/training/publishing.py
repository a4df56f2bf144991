"""Publishing the trained model into the output folder atomically: `save_pretrained` into a temporary folder, then
each file renamed into place, weights first, so that a reader that finds a new config.json finds new weights.

This protects against a killed process; surviving a power cut would also need an fsync, which is not done here.
"""

from __future__ import annotations

import os
import shutil
from typing import List

from .checkpoint_store import TMP_PREFIX
from .output_folder import record_run_entries


def remove_publish_leftovers(output_dir: str) -> List[str]:
    """Delete `.tmp-publish-*` / `.tmp-removing-*` folders left in the output folder by a killed run."""
    removed = []
    if os.path.isdir(output_dir):
        for name in sorted(os.listdir(output_dir)):
            if name.startswith(TMP_PREFIX):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
                removed.append(name)
    return removed


def publish_pretrained(model, output_dir: str, safe_serialization: bool = True, record: bool = True) -> List[str]:
    """`model.save_pretrained` into `output_dir` atomically: a temporary folder, then one rename per file.

    With `record`, the file names are added to the folder's run manifest first (`record_run_entries`).

    The weights are renamed before config.json, so a reader that finds a new config.json finds new weights.
    Returns the published file names.
    """
    os.makedirs(output_dir, exist_ok=True)
    tmp = os.path.join(output_dir, f"{TMP_PREFIX}publish-{os.getpid()}")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=safe_serialization)
    names = sorted(os.listdir(tmp), key=lambda n: (n == "config.json", n))
    if record:
        record_run_entries(output_dir, names)
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
