"""Test-wide settings: the public Hugging Face Hub is never contacted (tests build models from configs, and the
Hub tests talk to a loopback fake that switches offline mode off only inside its fixture)."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

#: whether the user gave the tests' thread count (OMP_NUM_THREADS) rather than the policy
THREADS_FROM_USER = bool(os.environ.get("OMP_NUM_THREADS"))
#: the tests' models are tiny: a step of the largest is well under this many FLOPs per example x batch
TEST_STEP_FLOPS = 1e8


def _thread_policy_for_the_tests() -> None:
    """Intra-op threads from hf_vae/thread_policy.py for the tests' work (one thread: a tiny model's parallel
    regions are too short to share), not PyTorch's one per core. Set as OMP_NUM_THREADS, unless the user set it,
    so that it binds this process (in-process training keeps it: a user's setting wins over the trainer's choice)
    and every child process (scripts/train.py runs whose weights are compared bit for bit with another run's need
    the same count). The module is loaded by path: importing the hf_vae package here would import transformers."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "hf_vae" / "thread_policy.py"
    spec = importlib.util.spec_from_file_location("_hf_vae_thread_policy_for_tests", path)
    policy = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = policy  # dataclasses look their module up
    spec.loader.exec_module(policy)
    cores = policy.available_cores()
    load = policy.measure_load() if policy.needs_load(TEST_STEP_FLOPS, cores) else 0.0
    threads = policy.choose_num_threads(TEST_STEP_FLOPS, 1, cores, load)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


_thread_policy_for_the_tests()

import pytest


@pytest.fixture
def hub_server(tmp_path):
    """A running fake Hugging Face Hub (tests/support/hub_server.py) that this process's client talks to.

    Yields a ``FakeHub``: ``.endpoint``, ``.env()`` (env vars for subprocesses), ``.requests`` (what it received).
    Tokens: ``token-alice`` -> user ``alice``, ``token-bob`` -> user ``bob``. HF_HOME is ``tmp_path / "hf_home"``;
    any non-loopback request from the client raises.
    """
    try:
        from tests.support.hub_server import fake_hub
    except ImportError:  # `tests` not importable as a package: pytest put tests/ itself on sys.path
        from support.hub_server import fake_hub

    with fake_hub(hf_home=tmp_path / "hf_home") as hub:
        yield hub
    assert not hub.errors, f"fake hub crashed while serving: {hub.errors}"


@pytest.fixture(scope="module")
def one_thread():
    """The models in these tests are tiny, so one intra-op thread is as fast as two, and it cannot stall: with two
    OpenMP threads on a 2-core machine that something else is using, every small op waits at a barrier for a
    descheduled thread (measured: the diffusers tests take 17 s with one thread, ~10 min with two under load)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def fresh_accelerate_state():
    """One intra-op thread for the tiny training runs; afterwards reset Accelerate's process-wide state so that the
    next run may use other settings (bf16)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test of more than a few seconds on 2 cores (SIGKILL, distributed "
                                       "and statistical tests, whole training runs, export, compile, offload, "
                                       "upstream suites); `python -m pytest` leaves them out (pyproject's addopts "
                                       "-m 'not slow'), `python -m pytest -m 'slow or not slow'` (.ci/run) runs all")


def deselects_slow(markexpr: str) -> bool:
    """Whether `-m markexpr` leaves out the tests marked slow, read as pytest reads it ("slow or not slow" keeps
    them). `_pytest.mark.expression` is pytest's own parser of -m (stable since pytest 6, not public API)."""
    if not markexpr:
        return False
    from _pytest.mark.expression import Expression

    return not Expression.compile(markexpr).evaluate(lambda name, **kwargs: name in ("slow", "usefixtures"))


def pytest_ignore_collect(collection_path, config):
    """Leave test_transformers_common.py uncollected when slow tests are deselected (-m "not slow"): all of it is
    slow, and importing it downloads transformers' sdist on first use (the upstream test classes are built at
    import time, so a marker alone would not spare the download)."""
    if collection_path.name == "test_transformers_common.py" and deselects_slow(config.getoption("markexpr")):
        return True
    return None
