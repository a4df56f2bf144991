"""Plumbing shared by the benchmark scripts: the machine record, a plain-text table, and writing the result."""

import json
import os
import platform

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def table(rows, headers) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(str(v).ljust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def write_result(result: dict, output: str) -> None:
    """Write the JSON next to the other results (or to `output`) and print it."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


def write_merged_result(result: dict, rows: dict, output: str, merge_rows: bool = False) -> dict:
    """Write `result` with `rows` as its "models", keeping the rows of an earlier run at `output` whose recipe is
    the same (so models can be measured by separate processes); `merge_rows` also keeps a model's earlier fields
    that this run did not measure (one part of it). Written atomically; returns the merged result."""
    models = {}
    if os.path.exists(output):
        with open(output) as f:
            previous = json.load(f)
        if previous.get("recipe") == result.get("recipe"):
            models.update(previous.get("models", {}))
    for key, row in rows.items():
        models[key] = {**models.get(key, {}), **row} if merge_rows else row
    result = {**result, "models": models}
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(output + ".tmp", output)
    return result

