"""Test-wide settings: the public Hugging Face Hub is never contacted (tests build models from configs, and the
Hub tests talk to a loopback fake that switches offline mode off only inside its fixture)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

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
