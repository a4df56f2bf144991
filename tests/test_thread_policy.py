"""The intra-op thread policy (hf_vae/thread_policy.py): its decisions as a pure function of the work, the cores
and the load; a user's setting always wins; the trainer, evaluate.py and `generate` apply it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_vae import KLAEConfig, KLAEModel, VAEConfig, VAEModel, thread_policy
from hf_vae.thread_policy import ALL_CORES_WORK, SERIAL_WORK, choose_num_threads

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "scripts" / "train.py")
#: the default `scripts/train.py` run: the VAE recipe's forward on one 64x64 example, x3 for the training step
VAE_RECIPE_STEP_FLOPS_PER_EXAMPLE = 3 * 28.4e6
SD_KLAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4, sample_size=256)


@pytest.fixture
def policy_owns_threads(monkeypatch):
    """No user setting: OMP_NUM_THREADS unset (tests/conftest.py sets it for the session) and the current count
    the policy's own; the count and the policy's record come back afterwards."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    previous, owner = torch.get_num_threads(), thread_policy._policy_threads
    thread_policy._policy_threads = previous
    yield
    torch.set_num_threads(previous)
    thread_policy._policy_threads = owner


# -- the decision --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("load", [0.0, 1.0, 4.0])
def test_tiny_work_runs_single_threaded_whatever_the_load(load):
    assert choose_num_threads(1e6, 16, cores=16, load=load) == 1
    assert choose_num_threads(SERIAL_WORK / 2, 1, cores=2, load=load) == 1


def test_the_default_recipe_uses_both_cores_when_idle_and_one_when_busy():
    step = VAE_RECIPE_STEP_FLOPS_PER_EXAMPLE
    assert choose_num_threads(step, 32, cores=2, load=0.0) == 2
    assert choose_num_threads(step, 32, cores=2, load=0.3) == 2  # another engineer's editor, a shell
    assert choose_num_threads(step, 32, cores=2, load=1.0) == 1  # one busy process
    assert choose_num_threads(step, 32, cores=2, load=4.0) == 1


def test_mid_sized_work_takes_the_cores_others_leave_free():
    assert choose_num_threads(1e8, 32, cores=16, load=10.0) == 6
    assert choose_num_threads(1e8, 32, cores=16, load=40.0) == 1


def test_a_klae_at_256_uses_every_core_even_on_a_busy_machine():
    with torch.device("meta"):
        twin = KLAEModel(KLAEConfig(**SD_KLAE)).eval()
    decode = thread_policy.count_flops(lambda: twin._decode(torch.zeros(1, 4, 32, 32, device="meta")))
    assert decode > ALL_CORES_WORK  # ~0.6 TFLOPs
    for cores in (2, 16):
        assert choose_num_threads(decode, 1, cores=cores, load=5.0) == cores


def test_more_work_never_means_fewer_threads():
    for cores in (2, 8):
        for load in (0.0, 1.5, 6.0):
            counts = [choose_num_threads(10 ** e, 1, cores, load) for e in range(5, 13)]
            assert counts == sorted(counts) and counts[0] == 1 and counts[-1] == cores


def test_bad_inputs_are_one_clear_line():
    with pytest.raises(ValueError, match="Expected cores >= 1.*got cores=0"):
        choose_num_threads(1e9, 1, cores=0, load=0.0)
    with pytest.raises(ValueError, match="--num_threads: expected a positive number of threads, got 0"):
        thread_policy.check_num_threads(0)
    with pytest.raises(ValueError, match="OMP_NUM_THREADS: expected a positive number of threads, got 'many'"):
        thread_policy.check_num_threads("many", "OMP_NUM_THREADS")


def test_load_is_measured_in_cores_and_not_counting_this_process():
    load = thread_policy.measure_load(window_s=0.05)
    assert 0.0 <= load < 10 * os.cpu_count()


# -- who decides ---------------------------------------------------------------------------------------------


def test_num_threads_flag_wins(policy_owns_threads):
    choice = thread_policy.apply_thread_policy(1e12, 64, requested=1)
    assert (choice.threads, choice.source, torch.get_num_threads()) == (1, "--num_threads", 1)
    assert "set by --num_threads" in choice.describe()


def test_omp_num_threads_wins(policy_owns_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    choice = thread_policy.apply_thread_policy(1e12, 64)  # every core, were the policy asked
    assert (choice.threads, choice.source, torch.get_num_threads()) == (1, "OMP_NUM_THREADS", 1)


def test_an_earlier_set_num_threads_wins(policy_owns_threads):
    users = 3 if torch.get_num_threads() != 3 else 5
    torch.set_num_threads(users)  # neither PyTorch's default nor the policy's
    choice = thread_policy.apply_thread_policy(1e12, 64)
    assert (choice.threads, choice.source, torch.get_num_threads()) == (users, "torch.set_num_threads", users)


def test_the_policy_sets_the_count_when_nobody_did(policy_owns_threads):
    choice = thread_policy.apply_thread_policy(1e6, 8)
    assert (choice.threads, choice.source, torch.get_num_threads()) == (1, "policy", 1)
    assert choice.describe().startswith("1 intra-op (policy: 0.008 GFLOPs/step on ")


def test_generate_decodes_with_the_policy_and_restores_the_count(policy_owns_threads, monkeypatch):
    model = VAEModel(VAEConfig(image_size=16, hidden_dims=[16], latent_dim=2)).eval()
    seen = []
    decode = model._decode
    monkeypatch.setattr(model, "_decode", lambda *a: seen.append(torch.get_num_threads()) or decode(*a))
    torch.set_num_threads(2)
    thread_policy._policy_threads = 2
    model.generate(4)
    assert seen == [1] and torch.get_num_threads() == 2  # tiny decode: one thread, then the count comes back


def test_generate_keeps_a_users_count(policy_owns_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    model = VAEModel(VAEConfig(image_size=16, hidden_dims=[16], latent_dim=2)).eval()
    model.generate(4)
    assert torch.get_num_threads() == 2


def test_flops_are_counted_without_running_the_model():
    model = VAEModel(VAEConfig(image_size=16, hidden_dims=[16], latent_dim=2))
    flops = thread_policy.forward_flops_per_example(model)
    assert 2 * 16 * 16 * 16 <= flops < 1e6  # at least the first layer's matmul; no arithmetic was run for it


# -- the command lines -------------------------------------------------------------------------------------------


def test_num_threads_zero_is_refused_by_both_command_lines(capsys):
    from hf_vae.evaluation.evaluate import main as evaluate_main
    from hf_vae.training.arguments import parse_command_line

    with pytest.raises(SystemExit):
        parse_command_line(["--num_threads", "0"])
    assert "train.py: error: Expected `num_threads` to be a positive int, got 0." in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_main(["some_dir", "--num_threads", "0"])
    assert "Expected --num_threads >= 1 and <= 4096, got 0." in capsys.readouterr().err


# scripts/train.py in a subprocess; fast sibling:
# test_the_test_session_and_its_child_processes_run_with_the_policys_count
@pytest.mark.slow
def test_train_script_applies_the_policy_and_prints_it_in_the_banner(tmp_path):
    """A child process without OMP_NUM_THREADS: the trainer chooses (not PyTorch's default) and says so; then
    --num_threads wins."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = [sys.executable, TRAIN, "--image_size", "16", "--hidden_dims", "16", "--latent_dim", "2", "--batch_size",
           "8", "--max_steps", "2", "--eval_steps", "0", "--report_to", "none", "--final_eval_max_examples", "8",
           "--eval_importance_samples", "2", "--num_sample_images", "2", "--num_train_examples", "64"]
    result = subprocess.run([*run, "--output_dir", str(tmp_path / "policy")], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "  threads 1 intra-op (policy: " in result.stdout
    result = subprocess.run([*run, "--output_dir", str(tmp_path / "flag"), "--num_threads", "2"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "  threads 2 intra-op (set by --num_threads)" in result.stdout


def test_the_test_session_and_its_child_processes_run_with_the_policys_count():
    """tests/conftest.py sets OMP_NUM_THREADS to the policy's choice for the tests' tiny models (or keeps the
    user's), so scripts the tests start inherit it instead of PyTorch's one thread per core."""
    from conftest import TEST_STEP_FLOPS, THREADS_FROM_USER

    threads = int(os.environ["OMP_NUM_THREADS"])
    assert THREADS_FROM_USER or threads == choose_num_threads(TEST_STEP_FLOPS, 1, thread_policy.available_cores(), 0.0)
    child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                           env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert int(child.stdout) == threads


def test_evaluate_counts_k_forwards_per_example_and_passes_the_flag(monkeypatch):
    import importlib

    evaluation = importlib.import_module("hf_vae.evaluation.evaluate")  # the module (the package exports the function)
    seen = []

    def record(flops, batch, requested=None):
        seen.append((flops, batch, requested))
        return thread_policy.ThreadChoice(1, "policy", flops * batch, 2)

    monkeypatch.setattr(thread_policy, "apply_thread_policy", record)
    model = VAEModel(VAEConfig(image_size=16, hidden_dims=[16], latent_dim=2))
    evaluation._apply_thread_policy(model, None, 64, 10)
    evaluation._apply_thread_policy(model, 2, 64, None)
    forward = thread_policy.forward_flops_per_example(model)
    assert seen == [(10 * forward, 64, None), (forward, 64, 2)]
