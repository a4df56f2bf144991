"""Fuzz: "nothing lost, nothing hangs" (issue 24). One test per category of the hostile-input campaign, each asserting
the exact outcome: refused with a named field or file, nothing changed on disk, a time bound met.

    data loss       the output-folder guard (resume, overwrite, the FID classifier, convert, latent_stats --write)
    hangs           Hub calls with timeouts and bounded retries; requests too large for the machine refused up front
    silent accepts  config fields checked (finite, range, type), misspelt keys named
    unclear errors  one line naming the file or field; flags with dashes or underscores; "did you mean"
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from hf_vae.training import DataArguments, TrainArguments, train
from hf_vae.training.checkpointing import RUN_MANIFEST, list_checkpoints, read_run_manifest

CONFIG = {"image_size": 16, "hidden_dims": [16], "latent_dim": 2}


def _args(output_dir, **overrides):
    kwargs = dict(output_dir=str(output_dir), max_steps=2, batch_size=8, eval_steps=0, report_to="none",
                  eval_importance_samples=2, final_eval_max_examples=16, num_sample_images=4, checkpointing_steps=2,
                  lr_scheduler="constant", warmup_steps=0)
    kwargs.update(overrides)
    return TrainArguments(**kwargs), DataArguments(num_train_examples=16)


def _snapshot(folder) -> dict:
    """Every file under `folder` with its sha256: equal snapshots mean nothing was written, moved or removed."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished 2-step run (a checkpoint at step 2): its folder. Copy it before changing anything."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("reliability") / "run"
    try:
        train(*_args(folder), dict(CONFIG))
    finally:
        _reset_accelerate()
        torch.set_num_threads(threads)
    return folder


@pytest.fixture
def run_copy(finished_run, tmp_path, fresh_accelerate_state):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


# ------------------------------------------------------------------------------------------------------------
# Data loss: one guard for the output folder
# ------------------------------------------------------------------------------------------------------------


def test_a_run_lists_what_it_wrote_in_its_manifest(finished_run):
    manifest = read_run_manifest(str(finished_run))
    assert manifest["kind"] == "train"
    on_disk = set(os.listdir(finished_run))
    assert on_disk <= set(manifest["entries"])  # everything there is listed...
    assert {"checkpoints", "logs", "config.json", "model.safetensors", "metrics.json", RUN_MANIFEST} <= \
        set(manifest["entries"]) | {"logs"}  # ...and what a run writes is (logs only with a tracker)


def test_resume_latest_into_a_used_folder_without_a_checkpoint_is_refused(tmp_path, fresh_accelerate_state):
    used = tmp_path / "used"
    used.mkdir()
    (used / "model.safetensors").write_bytes(b"someone's weights")
    (used / "notes.txt").write_text("keep me")
    before = _snapshot(used)
    with pytest.raises(FileExistsError, match=r"--resume_from_checkpoint latest: --output_dir .*used holds files "
                                              r"\(model.safetensors, notes.txt\) but no complete checkpoint"):
        train(*_args(used, resume_from_checkpoint="latest"), dict(CONFIG))
    assert _snapshot(used) == before


def test_resume_latest_after_a_kill_before_the_first_checkpoint_starts_anew(tmp_path, fresh_accelerate_state):
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    (killed / "training_args.json").write_text("{}")  # what a run writes before its first step
    record = train(*_args(killed, resume_from_checkpoint="latest"), dict(CONFIG))
    assert record["train"]["resumed_from"] is None and record["step"] == 2


def test_another_folders_checkpoint_into_a_folder_of_a_different_run_is_refused(finished_run, run_copy, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text('{"step": 7}')
    before = _snapshot(other)
    checkpoint = run_copy / "checkpoints" / "checkpoint-2"
    with pytest.raises(FileExistsError, match=r"is a checkpoint of the run in .*run, and --output_dir .*other holds "
                                              r"another run \(metrics.json\)"):
        train(*_args(other, max_steps=3, resume_from_checkpoint=str(checkpoint)), dict(CONFIG))
    assert _snapshot(other) == before
    # into a new folder it resumes, and the source run is left as it was
    source_before = _snapshot(run_copy)
    _reset_accelerate()
    record = train(*_args(tmp_path / "new", max_steps=3, resume_from_checkpoint=str(checkpoint)), dict(CONFIG))
    assert record["train"]["resumed_from"] == str(checkpoint) and record["step"] == 3
    assert _snapshot(run_copy) == source_before


def test_overwrite_and_resume_together_are_refused(run_copy):
    before = _snapshot(run_copy)
    with pytest.raises(ValueError, match="--overwrite_output_dir and --resume_from_checkpoint latest contradict"):
        train(*_args(run_copy, overwrite_output_dir=True, resume_from_checkpoint="latest"), dict(CONFIG))
    assert _snapshot(run_copy) == before


def test_overwrite_removes_everything_the_run_wrote_and_nothing_else(run_copy, capsys):
    (run_copy / "notes.txt").write_text("mine")
    (run_copy / "checkpoints" / "superseded").mkdir()  # inside a folder the run wrote: goes with it
    old_entries = set(read_run_manifest(str(run_copy))["entries"])
    record = train(*_args(run_copy, max_steps=1, checkpointing_steps=1, overwrite_output_dir=True), dict(CONFIG))
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("--overwrite_output_dir: removed"))
    for name in old_entries & {"checkpoints", "metrics.json", "model.safetensors", "config.json"}:
        assert name in line
    assert "kept notes.txt (not written by that run)" in line
    assert (run_copy / "notes.txt").read_text() == "mine"
    assert [step for step, _ in list_checkpoints(str(run_copy / "checkpoints"))] == [1]
    assert not (run_copy / "checkpoints" / "superseded").exists()
    assert record["step"] == 1 and json.loads((run_copy / "metrics.json").read_text())["step"] == 1


def test_overwrite_of_a_folder_without_manifest_removes_only_the_names_a_run_writes(run_copy, capsys):
    (run_copy / RUN_MANIFEST).unlink()  # a folder written before run manifests existed
    (run_copy / "my_model.safetensors").write_bytes(b"not the run's")
    train(*_args(run_copy, max_steps=1, checkpointing_steps=1, overwrite_output_dir=True), dict(CONFIG))
    assert (run_copy / "my_model.safetensors").read_bytes() == b"not the run's"
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("--overwrite_output_dir"))
    assert "my_model.safetensors" in line.split("; kept ")[1]


def test_the_fid_classifier_never_writes_into_a_folder_holding_a_trained_model(run_copy):
    from hf_vae.evaluation.fid import train_feature_classifier

    before = _snapshot(run_copy)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="already holds files|did not write"):
            train_feature_classifier("shapes", str(run_copy), epochs=1, overwrite_output_dir=overwrite)
    assert _snapshot(run_copy) == before


def test_convert_overwrite_refuses_a_training_run_folder(run_copy, tmp_path):
    try:
        from tests.support.scripts import load_script
    except ImportError:
        from support.scripts import load_script
    convert = load_script("convert")
    before = _snapshot(run_copy)
    with pytest.raises(FileExistsError, match=r"the folder also holds .*checkpoints.*metrics.json"):
        convert.main([str(run_copy), str(run_copy), "--to", "hf_vae", "--overwrite"])
    with pytest.raises(FileExistsError, match=r"model.safetensors: the weights of the training run"):
        convert.main([str(run_copy), str(run_copy / "model.safetensors"), "--to", "ldm", "--overwrite"])
    assert _snapshot(run_copy) == before


def test_latent_stats_write_keeps_the_values_it_replaces_and_refuses_non_finite_ones(tmp_path):
    from hf_vae.evaluation.latents import LATENT_STATS_FILE, write_latent_statistics

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "vqvae", "scaling_factor": 0.5}))
    before = _snapshot(folder)
    with pytest.raises(ValueError, match=r"\['scaling_factor'\] .* not finite"):
        write_latent_statistics(str(folder), {"scaling_factor": float("inf")}, ["scaling_factor"])
    assert _snapshot(folder) == before
    write_latent_statistics(str(folder), {"scaling_factor": 2.0}, ["scaling_factor"])
    write_latent_statistics(str(folder), {"scaling_factor": 3.0}, ["scaling_factor"])
    writes = json.loads((folder / LATENT_STATS_FILE).read_text())["writes"]
    assert [w["previous"]["scaling_factor"] for w in writes] == [0.5, 2.0]
    assert json.loads((folder / "config.json").read_text())["scaling_factor"] == 3.0


def test_resuming_with_a_new_learning_rate_and_max_steps_honours_both_and_says_so(run_copy, capsys):
    from hf_vae.training.checkpointing import read_training_state

    record = train(*_args(run_copy, max_steps=3, checkpointing_steps=3, learning_rate=1e-2,
                          resume_from_checkpoint="latest"), dict(CONFIG))
    out = capsys.readouterr().out
    assert "at step 2, to --max_steps 3; --learning_rate 0.01 replaces the checkpoint's" in out
    assert record["step"] == 3 and record["train"]["steps"] == 1
    state = read_training_state(str(run_copy / "checkpoints" / "checkpoint-3"))
    assert state["scheduler"]["base_lrs"] == [1e-2]
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-2)  # constant schedule


def test_resuming_with_max_steps_below_the_checkpoint_is_refused(run_copy):
    checkpoints = _snapshot(run_copy / "checkpoints")
    weights = (run_copy / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"--max_steps 1 is below step 2 of the checkpoint resumed"):
        train(*_args(run_copy, max_steps=1, resume_from_checkpoint="latest"), dict(CONFIG))
    assert _snapshot(run_copy / "checkpoints") == checkpoints
    assert (run_copy / "model.safetensors").read_bytes() == weights


def test_a_checkpoint_with_a_negative_step_is_refused(run_copy):
    from hf_vae.training.checkpointing import CheckpointError, write_manifest

    checkpoint = run_copy / "checkpoints" / "checkpoint-2"
    state = json.loads((checkpoint / "training_state.json").read_text())
    state["training_state"]["step"] = -5
    (checkpoint / "training_state.json").write_text(json.dumps(state))
    write_manifest(str(checkpoint), 2)  # a consistent manifest: the value itself must be refused
    with pytest.raises(CheckpointError, match=r"training_state.json: the training_state state does not fit this run "
                                              r".*counts >= 0, got \{'step': -5\}"):
        train(*_args(run_copy, max_steps=4, resume_from_checkpoint=str(checkpoint)), dict(CONFIG))


# ------------------------------------------------------------------------------------------------------------
# Hangs: every Hub request is bounded (timeout, retries); a failed push leaves no repository it created
# ------------------------------------------------------------------------------------------------------------

ALICE = "token-alice"
HUB_BOUND_S = 10.0  # far above 0.5 s x (1 + 1 retry) per held request, far below a hang


def _tiny_vae():
    import torch

    from hf_vae import VAEConfig, VAEModel

    torch.manual_seed(0)
    return VAEModel(VAEConfig(in_channels=1, image_size=8, hidden_dims=(16,), latent_dim=4)).eval()


@pytest.fixture
def no_client_backoff(monkeypatch):
    """huggingface_hub retries LFS uploads itself, with waits of seconds: the waits are skipped."""
    import types

    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=lambda seconds: None, time=__import__("time").time,
                                                             monotonic=__import__("time").monotonic))


@pytest.mark.parametrize("method,path,stage", [
    ("GET", r"/api/whoami-v2$", "authenticate"),
    ("POST", r"/api/repos/create$", "create"),
    ("POST", r"/preupload/", "upload"),
    ("PUT", r"/__lfs__/", "upload"),
    ("POST", r"/commit/", "commit"),
])
def test_a_hub_that_hangs_fails_the_push_in_bounded_time_and_leaves_no_repository(hub_server, no_client_backoff,
                                                                                   method, path, stage):
    import time

    from huggingface_hub import HfApi

    from hf_vae.integrations.hub import HubPushError, push_model

    hub_server.hold_request(method, path, seconds=HUB_BOUND_S, times=20)
    start = time.monotonic()
    with pytest.raises(HubPushError) as error:
        push_model(_tiny_vae(), "alice/hung", token=ALICE, timeout=0.5, retries=1)
    elapsed = time.monotonic() - start
    assert elapsed < HUB_BOUND_S, f"the push waited {elapsed:.1f} s for a hung Hub"
    assert error.value.stage == stage and f"at the {stage} stage" in str(error.value)
    assert error.value.repo_changed is False and "Nothing was pushed" in str(error.value)
    assert not HfApi().repo_exists("alice/hung", token=ALICE)  # a repository created for the push is deleted


def test_a_repository_whose_creation_answer_was_lost_is_deleted_again(hub_server):
    from huggingface_hub import HfApi

    from hf_vae.integrations.hub import HubPushError, push_model

    hub_server.drop_connection("POST", r"/api/repos/create$", after_handling=True)  # created, the answer lost
    with pytest.raises(HubPushError) as error:
        push_model(_tiny_vae(), "alice/lost", token=ALICE, timeout=5, retries=1)
    assert error.value.stage == "create" and "created for this push was deleted again" in str(error.value)
    assert not HfApi().repo_exists("alice/lost", token=ALICE)


def test_a_dropped_whoami_is_retried(hub_server):
    from hf_vae.integrations.hub import push_model

    hub_server.drop_connection("GET", r"/api/whoami-v2$", times=1)
    push_model(_tiny_vae(), "alice/retried", token=ALICE, timeout=5, retries=1)
    assert sum(1 for method, p in hub_server.requests if p.startswith("/api/whoami-v2")) == 2


@pytest.mark.parametrize("variable,value,expected", [
    ("HF_VAE_HUB_TIMEOUT", "soon", "HF_VAE_HUB_TIMEOUT or timeout=) to be a positive number of seconds, got nan"),
    ("HF_VAE_HUB_TIMEOUT", "0", "positive number of seconds, got 0.0"),
    ("HF_VAE_HUB_RETRIES", "1e9", "HF_VAE_HUB_RETRIES or retries=) to be a count from 0 to 10, got '1e9'"),
])
def test_hub_limits_from_the_environment_are_checked(monkeypatch, variable, value, expected):
    from hf_vae.integrations.hub import HubPushError, hub_limits

    assert hub_limits() == (30.0, 2)
    monkeypatch.setenv(variable, value)
    with pytest.raises(HubPushError) as error:
        hub_limits()
    assert expected in str(error.value)


def test_push_to_hub_checks_the_token_before_the_first_step(hub_server, tmp_path, fresh_accelerate_state):
    from hf_vae.integrations.hub import HubAuthError

    out = tmp_path / "run"
    with pytest.raises(HubAuthError, match="No Hugging Face token"):
        train(*_args(out, push_to_hub=True, hub_model_id="alice/early"), dict(CONFIG))
    assert not (out / "checkpoints").exists() and not (out / RUN_MANIFEST).exists()


# ------------------------------------------------------------------------------------------------------------
# Bounded requests: a size past its limit is refused while the command line is parsed, naming the flag
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag,value,limit", [
    ("--batch_size", "1e9", 65536), ("--eval_batch_size", "1000000000", 65536), ("--num_sample_images", "1e8", 4096),
    ("--eval_importance_samples", "1e7", 100_000),
])
def test_sizes_past_their_limit_are_refused_at_argument_time(capsys, flag, value, limit):
    from hf_vae.training.arguments import parse_command_line

    with pytest.raises(SystemExit) as exit_:
        parse_command_line([flag, value, "--output_dir", "never-written"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"train.py: error: Expected `{flag}` <= {limit} (its limit), got " \
                                      f"{int(float(value))}.\n"
    assert not os.path.exists("never-written")


def test_evaluate_refuses_max_examples_0(capsys):
    from hf_vae.evaluation.evaluate import main

    with pytest.raises(SystemExit) as exit_:
        main(["no-such-model", "--max_examples", "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "evaluate.py: error: Expected --max_examples >= 1, got 0. (see --help)\n"


@pytest.mark.parametrize("model,fields,named", [
    ("vae", {"latent_dim": 10**8}, "`latent_dim`=100000000"),
    ("iwae", {"num_importance_samples": 10**7}, "`num_importance_samples`=10000000"),
    ("vae", {"backbone": "conv", "image_size": 4096, "block_out_channels": [32, 64]}, "`image_size`=4096"),
])
def test_a_config_too_large_for_the_machine_is_refused_before_allocation(tmp_path, fresh_accelerate_state, model,
                                                                         fields, named):
    import time

    out = tmp_path / "run"
    start = time.monotonic()
    with pytest.raises(ValueError) as error:
        train(*_args(out, model=model), {**CONFIG, **fields})
    message = str(error.value)
    assert named in message and "GiB available" in message and "before anything was allocated" in message
    assert time.monotonic() - start < 30  # refused from the estimate, not after trying
    assert not out.exists() or not os.listdir(out)


# ------------------------------------------------------------------------------------------------------------
# Unclear errors: one line naming the flag, the file or the field; exit 2 for usage errors; --debug for a traceback
# ------------------------------------------------------------------------------------------------------------


def test_a_bad_model_field_on_the_command_line_is_a_usage_error(capsys, tmp_path):
    from hf_vae.training import main

    with pytest.raises(SystemExit) as exit_:
        main(["--backbone", "many", "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "Expected `backbone` in ('mlp', 'conv', 'burgess'), got 'many'" in err
    assert not (tmp_path / "run").exists()


def test_a_dataset_the_hub_cannot_serve_is_named(monkeypatch):
    from hf_vae.data import source_dataset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"Dataset 'no-such-user/no_such_set' is not a built-in dataset .* and the "
                                         r"Hub cannot serve it"):
        next(iter(source_dataset("no-such-user/no_such_set", image_size=16)))


def test_flags_take_dashes_or_underscores():
    from hf_vae.training.arguments import parse_args

    train_args, data_args, config = parse_args(["--max-steps", "7", "--batch-size=4", "--num-train-examples", "8",
                                                "--latent-dim", "3"])
    assert (train_args.max_steps, train_args.batch_size, data_args.num_train_examples) == (7, 4, 8)
    assert config == {"latent_dim": 3}


@pytest.mark.parametrize("argv,expected", [
    (["--max_step", "3"], "Unknown argument(s) --max_step for --model vae (did you mean --max_steps?)"),
    (["--model", "vq_vae", "--num_embedings", "8"], "(did you mean --num_embeddings?)"),
    (["--likelyhood", "bernoulli"], "(did you mean --likelihood?)"),
    (["--dataset", "./no/such/folder"], "--dataset ./no/such/folder: no such folder or file"),
])
def test_usage_errors_are_one_line_with_exit_status_2(capsys, argv, expected):
    from hf_vae.training.arguments import parse_command_line

    with pytest.raises(SystemExit) as exit_:
        parse_command_line(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("train.py: error: ") and expected in err
    with pytest.raises(FileNotFoundError if "--dataset" in argv else ValueError):
        parse_command_line([*argv, "--debug"])  # --debug: the exception itself, with its traceback


@pytest.mark.parametrize("name,text,expected", [
    ("run.yaml", "learning_rate: [1,\n", r"--config .*run.yaml: not valid YAML at line 2"),
    ("run.json", '{"learning_rate": 1e-3,}', r"--config .*run.json: not valid JSON"),
])
def test_a_broken_config_file_is_named(tmp_path, name, text, expected):
    from hf_vae.training.arguments import parse_args

    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=expected):
        parse_args(["--config", str(tmp_path / name)])


def test_a_config_file_value_of_the_wrong_type_is_refused_even_when_a_flag_overrides_it(tmp_path):
    from hf_vae.training.arguments import parse_args

    (tmp_path / "run.yaml").write_text("max_steps: many\n")
    with pytest.raises(ValueError, match=r"run.yaml: `max_steps` expected an int, got 'many'"):
        parse_args(["--config", str(tmp_path / "run.yaml"), "--max_steps", "1"])


def test_yaml_config_values_are_typed_like_the_command_line(tmp_path):
    from hf_vae.training.arguments import parse_args

    (tmp_path / "run.yaml").write_text("learning_rate: 1e-1\nmax_steps: 1e3\nlikelihood_scale: 5e-2\n")
    train_args, _, config = parse_args(["--config", str(tmp_path / "run.yaml")])
    assert train_args.learning_rate == 0.1 and train_args.max_steps == 1000 and config["likelihood_scale"] == 0.05


# ------------------------------------------------------------------------------------------------------------
# Silent acceptances: every family's fields are checked, however the config is made
# ------------------------------------------------------------------------------------------------------------


def _config(name, **fields):
    import hf_vae

    if name == "vq_prior":
        from hf_vae.configuration_vq_prior import VQPriorConfig

        return VQPriorConfig(**fields)
    return hf_vae.MODELS[name][0](**fields)


@pytest.mark.parametrize("name,fields,expected", [
    ("beta_tcvae", {"beta": float("inf")}, "`beta` to be a finite number >= 0, got inf"),
    ("beta_tcvae", {"gamma": float("nan")}, "`gamma` to be a finite number >= 0, got nan"),
    ("beta_tcvae", {"alpha": True}, "`alpha` to be a finite number >= 0, got True (a bool)"),
    ("factor_vae", {"gamma": float("-inf")}, "`gamma` to be a finite number >= 0, got -inf"),
    ("factor_vae", {"discriminator_hidden_dims": [True]}, "`discriminator_hidden_dims` to be a non-empty list"),
    ("vq_prior", {"layer_norm_epsilon": float("inf")}, "`layer_norm_epsilon` to be a finite number > 0"),
    ("vq_prior", {"dropout": float("nan")}, "`dropout` to be a finite number >= 0 and < 1, got nan"),
    ("vae", {"hidden_dims": [True]}, "`hidden_dims` to be a non-empty list of positive ints, got [True]"),
    ("vae", {"likelihood_scale": 1e-300}, "`likelihood_scale` in [1e-06, 1e+06]"),
    ("vae", {"likelyhood": "gaussian"}, "Unknown VAEConfig field 'likelyhood': likely a typo of 'likelihood'"),
    # fields the chosen backbone does not read are checked too (the MLP VAE and its conv fields)
    ("vae", {"block_out_channels": [-4, -4]}, "`block_out_channels` to be a non-empty list of positive ints"),
    ("ae", {"norm_num_groups": 0}, "`norm_num_groups` to be a positive int, got 0"),
    # the MLP VQ-VAE derives latent_dim from embedding_dim: the error names the field that was given
    ("vq_vae", {"embedding_dim": -3}, "`embedding_dim` to be a positive int, got -3"),
])
def test_bad_family_fields_are_refused_naming_the_field(name, fields, expected):
    with pytest.raises(ValueError) as error:
        _config(name, **fields)
    assert expected in str(error.value)


def test_from_pretrained_overrides_and_misspelt_config_keys_are_checked(tmp_path):
    from transformers import AutoModel

    from hf_vae import VAEConfig, VAEModel

    folder = tmp_path / "model"
    VAEModel(VAEConfig(image_size=8, hidden_dims=[8], latent_dim=2)).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"`dropout` to be a finite number >= 0 and < 1, got 5.0"):
        AutoModel.from_pretrained(folder, dropout=5.0)
    assert AutoModel.from_pretrained(folder, dropout=0.5).config.dropout == 0.5
    config = json.loads((folder / "config.json").read_text())
    config["likelyhood"] = config.pop("likelihood")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'likelyhood': likely a typo of 'likelihood'"):
        AutoModel.from_pretrained(folder)


def test_convert_set_goes_through_the_config_checks(tmp_path):
    try:
        from tests.support.scripts import load_script
    except ImportError:
        from support.scripts import load_script
    from hf_vae import KLAEConfig, KLAEModel

    source = tmp_path / "klae"
    KLAEModel(KLAEConfig(block_out_channels=[8, 8], norm_num_groups=4, sample_size=8, latent_channels=2,
                         mid_block_add_attention=False)).save_pretrained(source)
    with pytest.raises(ValueError, match=r"`scaling_factor` to be a finite number > 0, got -1"):
        load_script("convert").main([str(source), str(tmp_path / "out"), "--to", "hf_vae", "--set", "scaling_factor=-1"])
    assert not (tmp_path / "out").exists()


def test_scripts_take_dashes_or_underscores_and_suggest_the_closest_flag(capsys):
    from hf_vae.utils.cli import ScriptParser

    parser = ScriptParser(prog="convert.py")
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--max_examples", type=int)
    args = parser.parse_args(["--no_verify", "--max-examples=3", "--debug"])
    assert args.no_verify and args.max_examples == 3
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--max_exampels", "3"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("convert.py: error: unrecognized arguments: --max_exampels 3 (did you mean "
                                       "--max_examples?) (see --help)\n")


@pytest.mark.parametrize("raised,code,expected", [
    (FileNotFoundError("model_dir /nope: no such folder"), 1, "latent_stats.py: error: model_dir /nope: no such folder"),
    (ValueError("two\nlines"), 1, "latent_stats.py: error: two lines"),
    (KeyboardInterrupt(), 130, "latent_stats.py: interrupted."),
])
def test_script_errors_are_one_line_and_debug_shows_the_traceback(capsys, monkeypatch, raised, code, expected):
    from hf_vae.utils.cli import run_main

    def main(argv):
        raise raised

    monkeypatch.delenv("HF_VAE_DEBUG", raising=False)
    monkeypatch.delenv("HF_VAE_TRACEBACK", raising=False)
    assert run_main("latent_stats.py", main, []) == code
    assert capsys.readouterr().err == expected + "\n"
    with pytest.raises(type(raised)):
        run_main("latent_stats.py", main, ["--debug"])
    monkeypatch.setenv("HF_VAE_DEBUG", "1")
    with pytest.raises(type(raised)):
        run_main("latent_stats.py", main, [])


def test_train_command_line_ctrl_c_says_how_to_resume(monkeypatch, capsys, tmp_path):
    from hf_vae.training import trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    monkeypatch.delenv("HF_VAE_DEBUG", raising=False)
    monkeypatch.delenv("HF_VAE_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_:
        trainer.main(["--output_dir", str(tmp_path / "run")])
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume_from_checkpoint latest" in err and str(tmp_path / "run") in err


@pytest.mark.slow  # a whole training run in a subprocess (~12 s)
def test_a_run_logged_to_a_file_has_no_terminal_control_codes(tmp_path):
    import re
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log = tmp_path / "run.log"
    with open(log, "w") as handle:  # stdout and stderr are a file, as with `> run.log 2>&1`
        subprocess.run([sys.executable, os.path.join(repo, "scripts", "train.py"), "--output_dir",
                        str(tmp_path / "run"), "--image_size", "16", "--hidden_dims", "16", "--latent_dim", "2",
                        "--max_steps", "4", "--logging_steps", "2", "--batch_size", "8", "--num_train_examples", "16",
                        "--eval_steps", "0", "--report_to", "none", "--final_eval_max_examples", "16",
                        "--eval_importance_samples", "2", "--num_sample_images", "4", "--checkpointing_steps", "4"],
                       stdout=handle, stderr=subprocess.STDOUT, check=True, cwd=tmp_path,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo, "HF_HUB_OFFLINE": "1"})
    text = log.read_text()
    assert not re.search(r"[\x1b\r]", text), repr(text[:400])
    assert "step 2/4: " in text and "step 4/4: " in text  # a plain line per logging step instead of the bar


def test_the_memory_estimate_counts_parameters_without_allocating_them():
    from hf_vae import VAEConfig, VAEModel
    from hf_vae.memory import estimate_training_bytes

    small = VAEConfig(image_size=8, hidden_dims=[16], latent_dim=2)
    exact = sum(p.numel() for p in VAEModel(small).parameters())
    assert estimate_training_bytes(VAEModel, small, 8)["parameters"] == exact
    huge = estimate_training_bytes(VAEModel, VAEConfig(image_size=8, hidden_dims=[16], latent_dim=10**9), 8)
    assert huge["parameters"] > 3 * 10**10  # counted on the meta device: nothing of that size was allocated


def test_the_same_resume_killed_before_its_first_checkpoint_may_run_again(run_copy, tmp_path):
    from hf_vae.training.checkpointing import claim_output_dir, record_run_entries

    checkpoint = str(run_copy / "checkpoints" / "checkpoint-2")
    target = tmp_path / "continued"
    (target / "checkpoints").mkdir(parents=True)
    record_run_entries(str(target), ["training_args.json", "checkpoints"], kind="train", resumed_from=checkpoint)
    assert claim_output_dir(str(target), False, checkpoint) == ["checkpoints", RUN_MANIFEST]
    other = str(tmp_path / "elsewhere" / "checkpoints" / "checkpoint-2")  # another run's checkpoint: refused
    with pytest.raises(FileExistsError, match="holds another run"):
        claim_output_dir(str(target), False, other)
