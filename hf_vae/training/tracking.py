"""Where training logs go: Accelerate trackers, with a JSON-lines tracker for machines without TensorBoard.

`report_to`: "auto" = TensorBoard when it is installed, otherwise JSON lines; "all" = both; "none".
The JSON-lines file is `<output_dir>/logs/<run>/metrics.jsonl`, one `{"step": s, name: value, ...}` per line,
appended to on resume.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional

from accelerate.tracking import GeneralTracker, on_main_process


class JSONLinesTracker(GeneralTracker):
    """An Accelerate tracker that appends one JSON object per `log` call to `metrics.jsonl`."""

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str):
        super().__init__()
        self.run_name = run_name
        self.logging_dir = os.path.join(logging_dir, run_name)
        self.path = os.path.join(self.logging_dir, "metrics.jsonl")
        self._file = None

    @on_main_process
    def start(self):
        os.makedirs(self.logging_dir, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)  # line-buffered: every record reaches the disk

    @property
    def tracker(self):
        return self._file

    @on_main_process
    def store_init_configuration(self, values: dict):
        with open(os.path.join(self.logging_dir, "config.json"), "w") as f:
            json.dump(values, f, indent=2, default=str)

    @on_main_process
    def log(self, values: dict, step: Optional[int] = None, **kwargs):
        if self._file is None:
            self.start()
        record = {"step": step, **{k: (float(v) if hasattr(v, "__float__") else v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")

    @on_main_process
    def finish(self):
        if self._file is not None:
            self._file.close()
            self._file = None


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def make_trackers(report_to: str, logging_dir: str, run_name: str = "train") -> List:
    """The `log_with` list for `Accelerator`: tracker names or tracker instances."""
    if report_to == "none":
        return []
    trackers: List = []
    if report_to in ("tensorboard", "all") or (report_to == "auto" and tensorboard_available()):
        if not tensorboard_available():
            raise ValueError("Expected the tensorboard package for --report_to tensorboard, but it is not "
                             "installed: pip install tensorboard, or use --report_to jsonl.")
        trackers.append("tensorboard")
    if report_to in ("jsonl", "all") or (report_to == "auto" and not trackers):
        trackers.append(JSONLinesTracker(run_name, logging_dir))
    return trackers
