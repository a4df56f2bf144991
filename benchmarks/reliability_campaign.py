#!/usr/bin/env python
"""A hostile-input campaign against hf_vae: several hundred bad inputs, each classified by what happened.

    python benchmarks/reliability_campaign.py [--out benchmarks/results/reliability_campaign.json] [--only CATEGORY]

Every case feeds one bad value through one way in (a config constructor, a config.json, a command-line flag, a
config file, an output folder, a request size, a checkpoint file) and classifies the outcome:

    refused      one line naming what was expected (the field, flag or file), exit code 2 for command-line usage
    unclear      refused, but with a traceback, several lines, or without naming the field, flag or file
    silent       accepted although the value cannot be right
    hang         not answered within the case's time bound
    data_loss    a file that was in the output folder before is changed or gone
    ok           a valid control input accepted (each category has some, so that "refused" is not a reflex)

The targets of the reliability issue: 0 data loss, 0 hangs, 0 silent acceptances, at most 2 % unclear. The JSON
record lists every case with its outcome and message; the table sums them per category.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [sys.executable, os.path.join(ROOT, "scripts", "train.py")]
#: a run that is accepted finishes in seconds: the VAE's MLP on 16x16 shapes, one step, a tiny final evaluation
TINY_RUN = ["--dataset", "shapes", "--image_size", "16", "--backbone", "mlp", "--hidden_dims", "16", "--latent_dim",
            "2", "--max_steps", "1", "--batch_size", "4", "--eval_steps", "0", "--final_eval_max_examples", "8",
            "--num_sample_images", "4", "--report_to", "none", "--num_threads", "1"]
MEMORY_LIMIT_BYTES = 8 * 2 ** 30


@dataclasses.dataclass
class Case:
    category: str
    name: str
    run: Callable[[], "Result"]
    #: what a clear refusal names (any of these, case-insensitive); empty for a control case that must succeed
    expect: tuple = ()
    seconds: float = 60.0


@dataclasses.dataclass
class Result:
    accepted: bool
    message: str = ""
    traceback: bool = False
    exit_code: Optional[int] = None
    changed_files: tuple = ()


def classify(case: Case, result: Result, elapsed: float) -> str:
    if result.changed_files:
        return "data_loss"
    if elapsed > case.seconds:
        return "hang"
    if not case.expect:
        return "ok" if result.accepted else "unclear"
    if result.accepted:
        return "silent"
    lines = [line for line in result.message.strip().splitlines() if line.strip()]
    named = any(token.lower() in result.message.lower() for token in case.expect)
    return "refused" if named and len(lines) == 1 and not result.traceback else "unclear"


# ------------------------------------------------------------------------------------------------------------
# Ways in
# ------------------------------------------------------------------------------------------------------------


def in_process(call: Callable[[], object]) -> Result:
    try:
        call()
    except Exception as error:  # the message is what the user sees
        return Result(False, f"{type(error).__name__}: {error}".split(": ", 1)[1] or type(error).__name__)
    return Result(True)


def command(args: List[str], seconds: float, cwd: Optional[str] = None, watch: Optional[str] = None) -> Result:
    before = snapshot(watch) if watch else {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 5, cwd=cwd or ROOT, env=env)
    except subprocess.TimeoutExpired:
        return Result(False, "timed out", exit_code=None)
    after = snapshot(watch) if watch else {}
    changed = tuple(sorted(name for name, digest in before.items() if after.get(name) != digest))
    stderr = done.stderr.strip()
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(("WARNING", "INFO"))]
    message = lines[-1] if lines else ""
    return Result(done.returncode == 0, message if len(lines) <= 1 else "\n".join(lines[-3:]),
                  traceback="Traceback" in stderr, exit_code=done.returncode, changed_files=changed)


def snapshot(folder: str) -> Dict[str, str]:
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return found


# ------------------------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------------------------


def bad_values(default) -> Dict[str, object]:
    """Values no field with this default can take."""
    if isinstance(default, bool):
        return {"string": "yes", "int": 3}
    if isinstance(default, int):
        return {"negative": -3, "string": "ten", "fraction": 2.5, "nan": math.nan}
    if isinstance(default, float):
        return {"nan": math.nan, "inf": math.inf, "string": "ten"}
    if isinstance(default, (list, tuple)) and default and isinstance(default[0], int):
        return {"negative entry": [-4] * len(default), "string": "wide", "empty": []}
    return {}


def config_cases() -> List[Case]:
    """Every family's numeric fields through the constructor and through config.json."""
    from transformers import AutoConfig

    from hf_vae import families

    cases = []
    for family in families.FAMILIES.values():
        config_class = family.config_class
        defaults = config_class().to_dict()
        own = [name for name in inspect.signature(config_class.__init__).parameters if name not in ("self", "kwargs")]
        shared = ["latent_dim", "image_size", "in_channels", "hidden_dims", "block_out_channels"]
        for field in dict.fromkeys(own + [f for f in shared if f in defaults]):
            for label, value in bad_values(defaults.get(field)).items():
                cases.append(Case("config: constructor", f"{family.name}.{field} = {label}",
                                  lambda c=config_class, f=field, v=value: in_process(lambda: c(**{f: v})),
                                  expect=(field,), seconds=10))
                if label in ("negative", "nan", "negative entry"):
                    cases.append(Case("config: config.json", f"{family.name}.{field} = {label}",
                                      lambda n=family.name, f=field, v=value: in_process(
                                          lambda: _load_config_json(AutoConfig, n, {f: v})),
                                      expect=(field,), seconds=10))
        field = next(name for name in own + list(defaults) if len(name) >= 6 and not name.startswith("_"))
        typo = field[:2] + field[3] + field[2] + field[4:]  # two letters swapped: "latnet_dim"
        cases.append(Case("config: config.json", f"{family.name}: misspelt field {typo}",
                          lambda n=family.name, t=typo, v=defaults.get(field): in_process(
                              lambda: _load_config_json(AutoConfig, n, {t: v})), expect=(typo,), seconds=10))
        cases.append(Case("config: constructor", f"{family.name}: defaults", lambda c=config_class: in_process(c),
                          seconds=10))
    return cases


def _load_config_json(auto_config, model_type: str, values: dict):
    folder = tempfile.mkdtemp()
    try:
        with open(os.path.join(folder, "config.json"), "w") as handle:
            json.dump({"model_type": model_type, **values}, handle)
        return auto_config.from_pretrained(folder)
    finally:
        shutil.rmtree(folder)


def request_cases() -> List[Case]:
    """Request sizes through generate and log_likelihood, for every autoencoder family."""
    from hf_vae import families

    cases = []
    for family in families.autoencoders():
        def model(name=family.name):
            return family_model(name)

        for label, count in (("1e9 samples", 10 ** 9), ("negative", -1), ("zero", 0)):
            cases.append(Case("requests", f"{family.name}.generate({label})",
                              lambda m=model, c=count: in_process(lambda: _generate(m(), c)),
                              expect=("num_samples", f"generate({count})"), seconds=20))
        cases.append(Case("requests", f"{family.name}.generate(4)", lambda m=model: in_process(lambda: _generate(m(), 4)),
                          seconds=20))
        cases.append(Case("requests", f"{family.name}.log_likelihood(K=1e9)",
                          lambda m=model: in_process(lambda: _log_likelihood(m(), 10 ** 9)),
                          expect=("num_samples",), seconds=20))
    return cases


_MODELS: dict = {}


def family_model(name: str):
    if name not in _MODELS:
        from hf_vae import families
        from support.tiny_models import tiny_config

        _MODELS[name] = families.get(name).model_class(tiny_config(name)).eval()
    return _MODELS[name]


def _generate(model, count: int):
    import torch

    labels = torch.zeros(max(count, 1), dtype=torch.long) if model.is_conditional and 0 < count < 10 ** 6 else None
    return model.generate(count, labels=labels)


def _log_likelihood(model, k: int):
    import torch

    x = torch.rand(2, *model.config.data_shape)
    labels = torch.zeros(2, dtype=torch.long) if model.is_conditional else None
    return model.log_likelihood(x, labels=labels, num_samples=k)


def flag_cases() -> List[Case]:
    """Every trainer flag with values of the wrong kind, misspelt flags and dashed flags, on the command line."""
    sys.path.insert(0, os.path.join(ROOT, "hf_vae", "training"))
    help_text = subprocess.run(TRAIN + ["--help"], capture_output=True, text=True, cwd=ROOT).stdout
    kinds = dict(re.findall(r"--(\w+) ([NX])\b", help_text))  # the numeric flags: metavar N (int) or X (real)
    numeric = sorted(kinds)
    cases = []
    for flag in numeric:
        kind = kinds[flag]
        for label, value in (("word", "many"), ("nan", "nan"), ("inf", "inf")) + ((("fraction", "2.5"),) if kind == "N" else ()):
            cases.append(Case("command line: flag values", f"--{flag} {value}",
                              lambda f=flag, v=value: command(TRAIN + TINY_RUN + ["--output_dir", _scratch(), f"--{f}", v], 60),
                              expect=(flag,), seconds=60))
    for flag in numeric[:20]:
        typo = flag[:-1] + ("x" if flag[-1] != "x" else "y")
        cases.append(Case("command line: misspelt flags", f"--{typo}",
                          lambda t=typo: command(TRAIN + TINY_RUN + ["--output_dir", _scratch(), f"--{t}", "3"], 60),
                          expect=(typo, flag), seconds=60))
    for flag in ("max-steps", "batch-size", "learning-rate"):
        cases.append(Case("command line: dashed flags", f"--{flag} (accepted)",
                          lambda f=flag: command(TRAIN + TINY_RUN + ["--output_dir", _scratch(), f"--{f}", "1"], 120),
                          seconds=120))
    cases.append(Case("command line: flag values", "--model vea",
                      lambda: command(TRAIN + ["--model", "vea"], 30), expect=("vea", "--model"), seconds=30))
    return cases


def _scratch() -> str:
    return tempfile.mkdtemp(prefix="campaign-")


def file_cases() -> List[Case]:
    """Datasets, config files, output folders and checkpoints that are wrong."""
    cases = []
    missing = os.path.join(tempfile.gettempdir(), "campaign-no-such-folder")
    cases.append(Case("files: data", "--dataset missing folder",
                      lambda: command(TRAIN + ["--dataset", missing, "--output_dir", _scratch()], 60),
                      expect=(missing, "does not exist"), seconds=60))
    for label, text, expect in (("yaml syntax", "max_steps: [1,\n", "run.yaml"),
                                ("unknown key", "max_stesp: 3\n", "max_stesp"),
                                ("wrong type", "max_steps: many\n", "max_steps"),
                                ("json list", "[1, 2]\n", "run.yaml")):
        cases.append(Case("files: config file", label, lambda t=text: _config_file_case(t), expect=(expect,), seconds=60))
    for label, runner in (("a folder with files, no flag", _occupied_folder_case),
                          ("--resume_from_checkpoint latest without a checkpoint", _latest_without_checkpoint_case),
                          ("--overwrite_output_dir keeps foreign files", _overwrite_case)):
        cases.append(Case("files: output folder", label, runner,
                          expect=(("--output_dir", "checkpoint", "holds") if "keeps" not in label else ()),
                          seconds=240))
    return cases


def _config_file_case(text: str) -> Result:
    folder = _scratch()
    path = os.path.join(folder, "run.yaml")
    with open(path, "w") as handle:
        handle.write(text)
    return command(TRAIN + TINY_RUN + ["--output_dir", os.path.join(folder, "out"), "--config", path], 60)


def _occupied_folder_case() -> Result:
    folder = _scratch()
    with open(os.path.join(folder, "notes.txt"), "w") as handle:
        handle.write("mine")
    return command(TRAIN + TINY_RUN + ["--output_dir", folder], 60, watch=folder)


def _latest_without_checkpoint_case() -> Result:
    folder = _scratch()
    with open(os.path.join(folder, "config.json"), "w") as handle:
        handle.write("{}")
    return command(TRAIN + TINY_RUN + ["--output_dir", folder, "--resume_from_checkpoint", "latest"], 60, watch=folder)


def _overwrite_case() -> Result:
    folder = _scratch()
    first = command(TRAIN + TINY_RUN + ["--output_dir", folder], 180)
    if not first.accepted:
        return first
    with open(os.path.join(folder, "notes.txt"), "w") as handle:
        handle.write("mine")
    before = snapshot(folder)["notes.txt"]
    result = command(TRAIN + TINY_RUN + ["--output_dir", folder, "--overwrite_output_dir"], 180)
    kept = snapshot(folder).get("notes.txt") == before
    return dataclasses.replace(result, changed_files=() if kept else ("notes.txt",))


# ------------------------------------------------------------------------------------------------------------
# The campaign
# ------------------------------------------------------------------------------------------------------------

CATEGORIES = {"config": config_cases, "requests": request_cases, "flags": flag_cases, "files": file_cases}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "reliability_campaign.json"))
    parser.add_argument("--only", choices=sorted(CATEGORIES), action="append")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, hard))  # a request that allocates fails, not the machine
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import torch

    torch.set_num_threads(1)
    cases = [case for key in (args.only or CATEGORIES) for case in CATEGORIES[key]()]
    records, started = [], time.time()
    for i, case in enumerate(cases):
        begin = time.perf_counter()
        result = case.run()
        elapsed = time.perf_counter() - begin
        outcome = classify(case, result, elapsed)
        records.append({"category": case.category, "case": case.name, "outcome": outcome, "seconds": round(elapsed, 2),
                        "message": result.message[:400], "exit_code": result.exit_code})
        if outcome not in ("refused", "ok"):
            print(f"[{i + 1}/{len(cases)}] {outcome:9s} {case.category} | {case.name}: {result.message[:200]!r}",
                  flush=True)
    totals = {}
    for record in records:
        row = totals.setdefault(record["category"], {})
        row[record["outcome"]] = row.get(record["outcome"], 0) + 1
    outcomes = ("refused", "ok", "unclear", "silent", "hang", "data_loss")
    overall = {outcome: sum(row.get(outcome, 0) for row in totals.values()) for outcome in outcomes}
    summary = {"cases": len(records), **overall,
               "unclear_percent": round(100 * overall["unclear"] / max(1, len(records)), 2),
               "seconds": round(time.time() - started, 1), "loadavg": os.getloadavg()[0]}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({"summary": summary, "by_category": totals, "cases": records}, handle, indent=1)
    print(json.dumps(summary))
    print(f"\n| category | cases | {' | '.join(outcomes)} |\n|---|---|" + "---|" * len(outcomes))
    for category, row in totals.items():
        print(f"| {category} | {sum(row.values())} | " + " | ".join(str(row.get(o, 0)) for o in outcomes) + " |")
    print(f"| all | {len(records)} | " + " | ".join(str(overall[o]) for o in outcomes) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
