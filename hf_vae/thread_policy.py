"""How many intra-op threads a CPU job should use, chosen from the work, the cores and the load on them.

PyTorch starts one intra-op thread per core. Every parallel region (one per convolution, matmul, norm...) ends at
a barrier where all threads wait for the slowest. On a machine where other processes also run, one of the threads
is often descheduled, and the region then lasts until the scheduler gives that thread its core back (a time
slice, milliseconds). A small model runs thousands of regions per second of work, so on a busy machine it spends
most of its time waiting (docs/performance.md has the measurements). A large model (an SD autoencoder at 256², ~0.6 TFLOPs per decode) does
seconds of work per region, so the waits do not matter and every core helps, busy or not.

The policy (`choose_num_threads`) is a pure function of the FLOPs of one step, the batch, the cores this process
may use and the load other processes put on them:

    work per step < SERIAL_WORK                  -> 1 thread (the barriers cost more than a second thread gives)
    work per step >= ALL_CORES_WORK              -> every core, whatever the load
    otherwise                                    -> the cores the other processes leave free (at least 1)

The load is measured when needed (`measure_load`): the CPU time other processes took on this process's cores
over a short window (/proc/stat, minus this process's own time), or the number of runnable tasks when that is
higher (more runnable tasks than cores), or os.getloadavg() where /proc is missing.

A user's choice always wins: `--num_threads N` (trainer, evaluate), OMP_NUM_THREADS, or a `torch.set_num_threads`
call made before (a thread count that is neither PyTorch's default nor the one this policy set).

This module imports only torch and the standard library, so model files may use it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import os
import time
import weakref
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

#: FLOPs per step under which one thread is used whatever the load: below ~0.1 ms of work per parallel region a
#: second thread gains less than a barrier costs even on an idle machine.
SERIAL_WORK = 2e8
#: FLOPs per step from which every core is used even on a busy machine: at ~25 GFLOP/s per core this is 2 s of
#: work per step, large against the few milliseconds a descheduled thread makes each region wait.
ALL_CORES_WORK = 5e10
#: how long a load measurement is reused (a probe takes LOAD_WINDOW_S)
LOAD_CACHE_S = 5.0
LOAD_WINDOW_S = 0.2

_policy_threads: Optional[int] = None  # the count this module last set: not a user's choice
_load_cache: Tuple[float, float] = (float("-inf"), 0.0)  # (time.monotonic() of the measurement, load)


@dataclasses.dataclass
class ThreadChoice:
    """What was chosen, by whom and from what: the trainer's banner prints `describe()`."""

    threads: int
    source: str  # "policy", "--num_threads", "OMP_NUM_THREADS" or "torch.set_num_threads"
    flops_per_step: Optional[float] = None
    cores: Optional[int] = None
    load: Optional[float] = None
    loadavg: Optional[float] = None

    def describe(self) -> str:
        if self.source != "policy":
            return f"{self.threads} intra-op (set by {self.source})"
        work = f"{self.flops_per_step / 1e9:.3g} GFLOPs/step"
        load = "" if self.load is None else f", others using {self.load:.1f}"
        loadavg = "" if self.loadavg is None else f", loadavg {self.loadavg:.2f}"
        return f"{self.threads} intra-op (policy: {work} on {self.cores} cores{load}{loadavg}; --num_threads N sets it)"


# ------------------------------------------------------------------------------------------------------------
# the decision
# ------------------------------------------------------------------------------------------------------------


def choose_num_threads(flops_per_example: float, batch_size: int, cores: int, load: float) -> int:
    """Intra-op threads for a step of `flops_per_example * batch_size` FLOPs on `cores` cores, while other
    processes keep `load` of them busy (0 on an idle machine; may exceed `cores`)."""
    if cores < 1 or batch_size < 1 or flops_per_example < 0 or load < 0:
        raise ValueError(f"Expected cores >= 1, batch_size >= 1, flops_per_example >= 0 and load >= 0, got cores="
                         f"{cores}, batch_size={batch_size}, flops_per_example={flops_per_example}, load={load}.")
    work = flops_per_example * batch_size
    if cores == 1 or work < SERIAL_WORK:
        return 1
    if work >= ALL_CORES_WORK:
        return cores
    return int(max(1, min(cores, round(cores - load))))


def needs_load(flops_per_step: float, cores: int) -> bool:
    """Whether `choose_num_threads` depends on the load for this much work (else no probe is needed)."""
    return cores > 1 and SERIAL_WORK <= flops_per_step < ALL_CORES_WORK


# ------------------------------------------------------------------------------------------------------------
# the machine: cores and load
# ------------------------------------------------------------------------------------------------------------


def available_cores() -> int:
    """Cores this process may run on (its affinity), shared among the processes of a local multi-process launch."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(1, local_processes))


def _cpu_times(cpus) -> Optional[Tuple[float, float]]:
    """(busy, total) jiffies of `cpus` from /proc/stat, or None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            lines = f.readlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [float(v) for v in values[:8]]
        idle = values[3] + values[4]  # idle + iowait
        busy += sum(values) - idle
        total += sum(values)
    return (busy, total) if total else None


def _runnable_tasks() -> Optional[int]:
    """Tasks runnable right now, system-wide (the 4th field of /proc/loadavg), less this reader."""
    try:
        with open("/proc/loadavg") as f:
            return max(0, int(f.read().split()[3].split("/")[0]) - 1)
    except (OSError, IndexError, ValueError):
        return None


def measure_load(window_s: float = LOAD_WINDOW_S) -> float:
    """How many of this process's cores other processes keep busy now (0 idle; above the core count when more
    tasks are runnable than there are cores). This process's own CPU time over the window is not counted."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        cpus = set(range(os.cpu_count() or 1))
    before, own_before, runnable = _cpu_times(cpus), os.times(), []
    if before is None:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    steps = 4
    for _ in range(steps):
        time.sleep(window_s / steps)
        count = _runnable_tasks()
        if count is not None:
            runnable.append(count)
    after, own_after = _cpu_times(cpus), os.times()
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return 0.0
    elapsed = own_after.elapsed - own_before.elapsed
    own = (own_after.user + own_after.system - own_before.user - own_before.system) / max(elapsed, 1e-6)
    busy_cores = max(0.0, busy / total * len(cpus) - own)
    runnable_tasks = sum(runnable) / len(runnable) if runnable else 0.0
    return max(busy_cores, runnable_tasks)


def current_load() -> float:
    """`measure_load()`, reused for LOAD_CACHE_S seconds."""
    global _load_cache
    measured_at, load = _load_cache
    if time.monotonic() - measured_at > LOAD_CACHE_S:
        load = measure_load()
        _load_cache = (time.monotonic(), load)
    return load


# ------------------------------------------------------------------------------------------------------------
# the user's choice
# ------------------------------------------------------------------------------------------------------------


def check_num_threads(value, name: str = "--num_threads") -> int:
    """`value` as a thread count, or one ValueError line naming what was expected and what was given."""
    try:
        threads = int(str(value).split(",")[0])  # OMP_NUM_THREADS may list nested levels: "4,2"
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"{name}: expected a positive number of threads, got {value!r}.")
    return threads


def _pytorch_default_counts() -> set:
    """Thread counts PyTorch starts with here: one per core of the affinity, or one per physical core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    counts = {cores, os.cpu_count() or cores}
    try:
        with open("/proc/cpuinfo") as f:
            physical = {line.split(":")[1].strip() for line in f if line.startswith("core id")}
        if physical:
            counts.add(len(physical))
    except OSError:
        pass
    return counts


def user_num_threads(requested: Optional[int] = None) -> Optional[Tuple[int, str]]:
    """(threads, who set them) when the user chose: `requested` (--num_threads), OMP_NUM_THREADS, or an earlier
    torch.set_num_threads to a count that is neither PyTorch's default nor this policy's. None otherwise."""
    if requested is not None:
        return check_num_threads(requested), "--num_threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return check_num_threads(os.environ["OMP_NUM_THREADS"], "OMP_NUM_THREADS"), "OMP_NUM_THREADS"
    current = torch.get_num_threads()
    ours = {_policy_threads} if _policy_threads is not None else _pytorch_default_counts()
    if current not in ours:
        return current, "torch.set_num_threads"
    return None


def _set_threads(threads: int) -> None:
    global _policy_threads
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    _policy_threads = threads


def apply_thread_policy(flops_per_example: float, batch_size: int, requested: Optional[int] = None,
                        load: Optional[float] = None) -> ThreadChoice:
    """Set torch's intra-op threads for this work (the user's choice when there is one) and say what was set.
    `load` None measures it, when the decision depends on it."""
    user = user_num_threads(requested)
    if user is not None:
        threads, source = user
        if source == "--num_threads":
            _set_threads(threads)
        return ThreadChoice(threads, source)
    cores = available_cores()
    work = flops_per_example * batch_size
    if load is None and needs_load(work, cores):
        load = current_load()
    threads = choose_num_threads(flops_per_example, batch_size, cores, load or 0.0)
    _set_threads(threads)
    loadavg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return ThreadChoice(threads, "policy", work, cores, load, loadavg)


@contextlib.contextmanager
def policy_threads(flops_per_example: float, batch_size: int) -> Iterator[ThreadChoice]:
    """`apply_thread_policy` inside the block; the previous count (and owner) come back after it."""
    global _policy_threads
    previous, previous_owner = torch.get_num_threads(), _policy_threads
    choice = apply_thread_policy(flops_per_example, batch_size)
    try:
        yield choice
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
        _policy_threads = previous_owner


# ------------------------------------------------------------------------------------------------------------
# the work: FLOPs of a model's step
# ------------------------------------------------------------------------------------------------------------

#: a training step (forward, backward through activations and weights) costs about three forwards
TRAIN_STEP_FORWARDS = 3
_forward_flops: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_decode_flops: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of `fn()` as torch.utils.flop_counter counts them (2 per multiply-add of matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _meta_twin(model: torch.nn.Module) -> torch.nn.Module:
    """The same architecture with weights on the meta device: shapes only, no memory, no arithmetic."""
    with torch.device("meta"):
        twin = type(model)(model.config)
    return twin.train(model.training)


def _example_inputs(model, device) -> Dict[str, torch.Tensor]:
    shape = tuple(model.config.data_shape)
    inputs = {"pixel_values": torch.zeros(1, *shape, device=device)}
    if getattr(model, "is_conditional", False):
        inputs["labels"] = torch.zeros(1, dtype=torch.long, device=device)
    return inputs


def _run_forward(model, device) -> float:
    checked = getattr(model, "inputs_checked_by_caller", contextlib.nullcontext)
    with checked():
        return count_flops(lambda: model(**_example_inputs(model, device)))


def forward_flops_per_example(model: torch.nn.Module) -> float:
    """FLOPs of the model's forward (loss included) on one example: counted on a meta-device twin (no arithmetic),
    else on a copy of the model with one real example, else 2 per parameter (an MLP's count)."""
    cached = _forward_flops.get(model)
    if cached is not None:
        return cached
    flops = None
    for attempt in (lambda: _run_forward(_meta_twin(model), "meta"),
                    lambda: _run_forward(copy.deepcopy(model).eval(), next(model.parameters()).device)):
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                flops = attempt()
            break
        except Exception:  # an op without a meta kernel, inputs this generic call cannot build: try the next way
            continue
    if not flops:
        flops = 2.0 * sum(p.numel() for p in model.parameters())
    _forward_flops[model] = flops
    return flops


def decode_flops_per_example(model: torch.nn.Module) -> float:
    """FLOPs of decoding one latent (what `generate` does per sample), counted on a meta twin; 2 per decoder
    parameter where that cannot run."""
    cached = _decode_flops.get(model)
    if cached is not None:
        return cached
    try:
        twin = _meta_twin(model).eval()
        latents = torch.zeros(1, *twin.latent_shape, device="meta")
        condition = twin.embed_condition(torch.zeros(1, dtype=torch.long, device="meta"), 1) \
            if getattr(twin, "is_conditional", False) else None
        with torch.no_grad():
            flops = count_flops(lambda: twin._decode(latents, condition))
    except Exception:  # no meta kernel for an op, or no latent_shape: the parameter count stands in
        decoder = getattr(model, "decoder", model)
        flops = 2.0 * sum(p.numel() for p in decoder.parameters())
    _decode_flops[model] = flops
    return flops


def on_cpu(model: torch.nn.Module) -> bool:
    parameter = next(model.parameters(), None)
    return parameter is None or parameter.device.type == "cpu"


def threads_for_generation(generate):
    """Decorator of `generate(self, num_samples, ..., batch_size=...)`: on the CPU, decode with the policy's threads
    for a batch of `min(batch_size, num_samples)` (the user's choice when there is one), then restore the count."""
    signature = inspect.signature(generate)

    @functools.wraps(generate)
    def wrapper(self, *args, **kwargs):
        if not on_cpu(self) or user_num_threads() is not None:
            return generate(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        num_samples, batch_size = bound.arguments["num_samples"], bound.arguments["batch_size"]
        if not isinstance(num_samples, int) or not isinstance(batch_size, int) or min(num_samples, batch_size) < 1:
            return generate(self, *args, **kwargs)  # generate's own checks say what is wrong
        with policy_threads(decode_flops_per_example(self), min(batch_size, num_samples)):
            return generate(self, *args, **kwargs)

    return wrapper
