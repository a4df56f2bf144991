"""Fuzz: hostile and damaged checkpoints, reused output folders, kills at several moments of a run.

Nothing executes (a crafted pickle in a checkpoint is refused before anything is read, and its marker file never
appears), nothing is lost or mixed up (a used output folder is refused; `latest` survives a damaged newest
checkpoint; a run killed anywhere resumes to the same weights, bit for bit), nothing passes silently."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

from hf_vae.training import DataArguments, TrainArguments, train
from hf_vae.training import checkpoint_store, publishing
from hf_vae.training.checkpointing import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_tree,
    read_training_state,
    set_rng_state,
    verify_checkpoint,
    write_manifest,
)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

CONFIG = {"image_size": 16, "hidden_dims": [16], "latent_dim": 2}
FILES = ["model.safetensors", "model_config.json", "training_state.safetensors", "training_state.json",
         "rng_state_0.safetensors", "rng_state_0.json"]


def _args(output_dir, **overrides):
    kwargs = dict(output_dir=str(output_dir), max_steps=6, batch_size=8, eval_steps=0, report_to="none",
                  eval_importance_samples=2, final_eval_max_examples=16, num_sample_images=4, checkpointing_steps=2,
                  checkpoints_total_limit=None, lr_scheduler="constant", warmup_steps=0, ema_decay=0.9,
                  learning_rate=3e-3)
    kwargs.update(overrides)
    return TrainArguments(**kwargs), DataArguments(num_train_examples=40)


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run (6 steps, a checkpoint every 2): its folder and published weights. One intra-op thread
    for this module's runs, restored afterwards: a leaked thread count changes other modules' float rounding."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference") / "run"
    train(*_args(out), dict(CONFIG))
    _reset_accelerate()
    yield out
    torch.set_num_threads(threads)


@pytest.fixture
def checkpoint(reference, tmp_path):
    """A private copy of the reference run's checkpoint-4."""
    copy = tmp_path / "checkpoint-4"
    shutil.copytree(reference / "checkpoints" / "checkpoint-4", copy)
    return copy


def _weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert not [k for k in wa if not torch.equal(wa[k], wb[k])], "weights differ"


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling creates the marker file
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------------------------------------------------
# The format: only safetensors and JSON, verified against a manifest written last
# ------------------------------------------------------------------------------------------------------------


def test_a_checkpoint_is_safetensors_and_json_with_a_manifest(reference):
    folder = reference / "checkpoints" / "checkpoint-4"
    assert sorted(os.listdir(folder)) == sorted(FILES + ["manifest.json"])
    manifest = verify_checkpoint(str(folder))
    assert manifest["step"] == 4 and set(manifest["files"]) == set(FILES)
    state = read_training_state(str(folder))
    assert state["training_state"]["step"] == 4 and state["ema"]["num_updates"] == 4
    assert state["optimizer"]["state"][0]["exp_avg"].dtype == torch.float32  # Adam moments, as tensors
    assert isinstance(state["optimizer"]["param_groups"][0]["betas"], tuple)  # tuples come back as tuples


HOSTILE_NAMES = ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "pytorch_model.bin",
                 "scheduler.bin", "scaler.pt", "model.ckpt", "state.pth", "extra.npy", "payload"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("listed", [False, True], ids=["unlisted", "listed-in-manifest"])
def test_a_pickle_in_a_checkpoint_is_refused_naming_it(checkpoint, tmp_path, name, listed):
    marker = tmp_path / "executed"
    (checkpoint / name).write_bytes(pickle.dumps(_Payload(str(marker))))
    if listed:  # a hostile manifest that vouches for the payload
        write_manifest(str(checkpoint), 4)
    with pytest.raises(CheckpointError) as error:
        verify_checkpoint(str(checkpoint))
    assert repr(name) in str(error.value) and "not safetensors or JSON" in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("make", ["folder", "symlink"])
def test_folders_and_links_in_a_checkpoint_are_refused(checkpoint, tmp_path, make):
    if make == "folder":
        (checkpoint / "nested").mkdir()
    else:
        (tmp_path / "elsewhere.json").write_text("{}")
        os.symlink(tmp_path / "elsewhere.json", checkpoint / "linked.json")
    with pytest.raises(CheckpointError, match="not safetensors or JSON"):
        verify_checkpoint(str(checkpoint))


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl"])
def test_resuming_from_a_checkpoint_with_a_pickle_payload_runs_nothing(reference, tmp_path, name):
    marker = tmp_path / "executed"
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    target = run / "checkpoints" / "checkpoint-6"
    (target / name).write_bytes(pickle.dumps(_Payload(str(marker))))
    write_manifest(str(target), 6)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        train(*_args(run, max_steps=8, resume_from_checkpoint=str(target)), dict(CONFIG))
    assert not marker.exists(), "the pickle payload was executed"
    # `latest` skips the poisoned checkpoint (a warning) and resumes from the one before it
    record = train(*_args(run, max_steps=8, resume_from_checkpoint="latest"), dict(CONFIG))
    assert record["train"]["resumed_from"].endswith("checkpoint-4")
    assert not marker.exists()


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("damage,expected", [
    ("truncate", "bytes, the manifest says"),
    ("flip", "sha256 differs"),
    ("delete", "missing (listed in the manifest)"),
    ("append", "bytes, the manifest says"),
])
def test_damaged_files_are_found_and_named(checkpoint, name, damage, expected):
    path = checkpoint / name
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "delete":
        path.unlink()
    else:
        path.write_bytes(data + b" ")
    with pytest.raises(CheckpointError) as error:
        verify_checkpoint(str(checkpoint))
    assert str(path) in str(error.value) and expected in str(error.value)


@pytest.mark.parametrize("manifest,expected", [
    (None, "manifest.json: missing"),
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected an 'hf_vae-checkpoint' manifest"),
    ('{"format": "accelerate", "files": {}}', "expected an 'hf_vae-checkpoint' manifest"),
    ('{"format": "hf_vae-checkpoint", "format_version": 99, "files": {}}', "format version 99"),
    ('{"format": "hf_vae-checkpoint", "format_version": 1, "files": {"../../etc/passwd.json": {}}}',
     "expected plain .safetensors/.json file names"),
    ('{"format": "hf_vae-checkpoint", "format_version": 1, "files": {".hidden.json": {}}}',
     "expected plain .safetensors/.json file names"),
    ('{"format": "hf_vae-checkpoint", "format_version": 1, "files": {"model.safetensors": 5}}',
     "the manifest says 5"),
    ('{"format": "hf_vae-checkpoint", "format_version": 1, "files": {}}', "is not listed in the manifest"),
])
def test_a_bad_manifest_is_refused(checkpoint, manifest, expected):
    if manifest is None:
        (checkpoint / "manifest.json").unlink()
    else:
        (checkpoint / "manifest.json").write_text(manifest)
    with pytest.raises(CheckpointError) as error:
        verify_checkpoint(str(checkpoint))
    assert expected in str(error.value)


def test_an_extra_json_file_is_refused(checkpoint):
    (checkpoint / "notes.json").write_text("{}")
    with pytest.raises(CheckpointError, match="'notes.json' is not listed in the manifest"):
        verify_checkpoint(str(checkpoint))


RNG_DAMAGE = {
    "torch state truncated": (lambda s: s.update(torch_cpu=s["torch_cpu"][:100]), "torch_cpu must be a uint8 tensor"),
    "torch state as float": (lambda s: s.update(torch_cpu=s["torch_cpu"].float()), "torch_cpu must be a uint8"),
    "python state short": (lambda s: s["python"].update(state=s["python"]["state"][:-1]), "python must be"),
    "python version": (lambda s: s["python"].update(version=2), "python must be"),
    "python state strings": (lambda s: s["python"].update(state=["1"] * 625), "python must be"),
    "numpy keys short": (lambda s: s["numpy"].update(keys=s["numpy"]["keys"][:10]), "numpy must be"),
    "numpy key too large": (lambda s: s["numpy"]["keys"].__setitem__(0, 2 ** 40), "numpy must be"),
    "numpy position": (lambda s: s["numpy"].update(pos=700), "numpy must be"),
    "numpy generator": (lambda s: s["numpy"].update(bit_generator="PCG64"), "numpy must be"),
    "missing torch state": (lambda s: s.pop("torch_cpu"), "torch_cpu must be"),
    "cuda state shape": (lambda s: s.update(torch_cuda=torch.zeros(3, dtype=torch.uint8)), "torch_cuda must be"),
}


@pytest.mark.parametrize("damage", list(RNG_DAMAGE))
def test_a_damaged_rng_state_is_refused_and_changes_nothing(checkpoint, damage):
    edit, expected = RNG_DAMAGE[damage]
    state = load_tree(str(checkpoint), "rng_state_0")
    edit(state)
    before = torch.get_rng_state()
    with pytest.raises(CheckpointError) as error:
        set_rng_state(state, "rng_state_0.json")
    assert "rng_state_0.json" in str(error.value) and expected in str(error.value)
    assert torch.equal(torch.get_rng_state(), before)  # checked before anything is restored


def test_a_dangling_tensor_reference_is_named(checkpoint):
    structure = json.loads((checkpoint / "training_state.json").read_text())
    structure["ema"]["shadow"]["extra"] = {"__tensor__": "ema.shadow.nowhere"}
    (checkpoint / "training_state.json").write_text(json.dumps(structure))
    with pytest.raises(CheckpointError, match="'ema.shadow.nowhere'"):
        load_tree(str(checkpoint), "training_state")


# ------------------------------------------------------------------------------------------------------------
# `latest` survives corruption; resuming checks the model configuration
# ------------------------------------------------------------------------------------------------------------


def test_latest_skips_a_damaged_newest_checkpoint_with_a_warning(reference, tmp_path, caplog):
    directory = tmp_path / "checkpoints"
    shutil.copytree(reference / "checkpoints", directory)
    weights = directory / "checkpoint-6" / "training_state.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with caplog.at_level(logging.WARNING, logger="hf_vae.training"):
        assert latest_checkpoint(str(directory)) == str(directory / "checkpoint-4")
    assert "Skipping checkpoint-6" in caplog.text and "training_state.safetensors" in caplog.text
    for step in (2, 4):
        (directory / f"checkpoint-{step}" / "manifest.json").unlink()
    assert latest_checkpoint(str(directory)) is None  # nothing usable: a fresh start, not a broken resume


def test_resume_latest_after_a_torn_newest_checkpoint_ends_bitwise_equal(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for name in ("model.safetensors", "metrics.json"):
        os.remove(run / name)
    shutil.rmtree(run / "checkpoints" / "checkpoint-6")
    torn = run / "checkpoints" / "checkpoint-4" / "rng_state_0.json"
    torn.write_text(torn.read_text()[:50])  # the newest checkpoint is now damaged: 2 is the last good one
    record = train(*_args(run, resume_from_checkpoint="latest"), dict(CONFIG))
    assert record["train"]["resumed_from"].endswith("checkpoint-2") and record["train"]["steps"] == 4
    _assert_same_weights(reference, run)


@pytest.mark.parametrize("change,expected", [
    ({"latent_dim": 3}, "latent_dim: checkpoint 2, this run 3"),
    ({"hidden_dims": [8]}, "hidden_dims: checkpoint [16], this run [8]"),
    ({"likelihood": "gaussian"}, "likelihood: checkpoint 'bernoulli', this run 'gaussian'"),
])
def test_resuming_with_another_model_configuration_says_what_differs(reference, tmp_path, change, expected):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    with pytest.raises(CheckpointError) as error:
        train(*_args(run, max_steps=8, resume_from_checkpoint="latest"), {**CONFIG, **change})
    assert "different model configuration" in str(error.value) and expected in str(error.value)


# ------------------------------------------------------------------------------------------------------------
# Output folders belong to one run
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("leftover", ["model.safetensors", "metrics.json", "checkpoints", "notes.txt"])
def test_a_second_run_into_a_used_output_folder_is_refused(tmp_path, leftover):
    out = tmp_path / "used"
    out.mkdir()
    (out / leftover).mkdir() if leftover == "checkpoints" else (out / leftover).write_text("x")
    with pytest.raises(FileExistsError) as error:
        train(*_args(out), dict(CONFIG))
    message = str(error.value)
    assert leftover in message and "--overwrite_output_dir" in message and "--resume_from_checkpoint" in message
    assert sorted(os.listdir(out)) == [leftover]  # nothing was written


def test_the_command_line_reports_a_used_output_folder(reference, capsys):
    from hf_vae.training import main

    with pytest.raises(SystemExit) as exit_:
        main(["--output_dir", str(reference), "--max_steps", "2", "--image_size", "16", "--report_to", "none"])
    assert exit_.value.code == 1
    assert "already holds files" in capsys.readouterr().err


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file; expected a folder"):
        train(*_args(tmp_path / "file"), dict(CONFIG))


def test_overwrite_output_dir_replaces_the_old_run_without_mixing_checkpoints(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / ".tmp-publish-4242").mkdir()  # left by a run killed while publishing
    record = train(*_args(run, max_steps=3, checkpointing_steps=3, overwrite_output_dir=True), dict(CONFIG))
    assert [step for step, _ in list_checkpoints(str(run / "checkpoints"))] == [3]  # none of the old run's
    assert record["step"] == 3 and json.loads((run / "metrics.json").read_text())["step"] == 3
    assert not [n for n in os.listdir(run) if n.startswith(".tmp")]


def test_resuming_from_an_older_checkpoint_sets_the_newer_ones_aside_and_keeps_the_newest(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    older = run / "checkpoints" / "checkpoint-2"
    train(*_args(run, max_steps=5, checkpointing_steps=1, checkpoints_total_limit=2,
                 resume_from_checkpoint=str(older)), dict(CONFIG))
    assert [step for step, _ in list_checkpoints(str(run / "checkpoints"))] == [4, 5]  # this run's newest two
    set_aside = list((run / "checkpoints" / "superseded").glob("*/checkpoint-*"))
    assert sorted(p.name for p in set_aside) == ["checkpoint-4", "checkpoint-6"]  # the abandoned future, kept
    verify_checkpoint(str(run / "checkpoints" / "checkpoint-5"))


def test_saving_a_step_that_exists_replaces_it_and_says_so(reference, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    with caplog.at_level(logging.WARNING, logger="hf_vae.training"):
        record = train(*_args(run, resume_from_checkpoint="latest"), dict(CONFIG))  # nothing left to do
    assert record["train"]["steps"] == 0 and "Replacing" in caplog.text
    verify_checkpoint(str(run / "checkpoints" / "checkpoint-6"))
    _assert_same_weights(reference, run)


def test_a_run_whose_last_step_is_a_checkpoint_step_saves_it_once(tmp_path, caplog):
    # max_steps a multiple of checkpointing_steps (as in the default run): the loop saves the last step, and the end
    # of the run does not save it again (a second save would only replace it, with a warning a newcomer reads).
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="hf_vae.training"):
        train(*_args(run, max_steps=4), dict(CONFIG))
    assert "Replacing" not in caplog.text
    assert sorted(os.listdir(run / "checkpoints")) == ["checkpoint-2", "checkpoint-4"]
    verify_checkpoint(str(run / "checkpoints" / "checkpoint-4"))


# ------------------------------------------------------------------------------------------------------------
# SIGKILL at several moments: every checkpoint left behind loads, and the resumed run ends bit for bit equal
# ------------------------------------------------------------------------------------------------------------


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_when(module, name, condition, after=False):
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        if condition(*args, **kwargs) and not after:
            _kill()
        result = original(*args, **kwargs)
        if condition(*args, **kwargs) and after:
            _kill()
        return result

    setattr(module, name, wrapper)


KILL_POINTS = {
    # half-way through writing checkpoint-4: rng and model written, training state not
    "mid-checkpoint": lambda: _kill_when(checkpoint_store, "save_tree", lambda tree, d, stem: stem == "training_state"
                                         and d.endswith("checkpoint-4")),
    # every file of checkpoint-4 written, its manifest not yet
    "before-manifest": lambda: _kill_when(checkpoint_store, "write_manifest", lambda d, step: step == 4),
    # checkpoint-4 complete but not yet renamed into place
    "before-rename": lambda: _kill_when(checkpoint_store, "write_manifest", lambda d, step: step == 4, after=True),
    # retention half-way through deleting an old checkpoint
    "during-retention": lambda: _kill_when(checkpoint_store.shutil, "rmtree",
                                           lambda path, *a, **k: "removing-checkpoint-2" in str(path)),
    # the final model half-published: written to .tmp-publish-*, not yet renamed into place
    "during-publish": lambda: _kill_when(publishing.os, "chmod", lambda *a, **k: True),
}


@pytest.mark.parametrize("moment", list(KILL_POINTS))
def test_sigkill_at_several_moments_leaves_loadable_checkpoints_and_an_exact_resume(reference, tmp_path, moment):
    run = tmp_path / "run"
    limit = 2 if moment == "during-retention" else None
    pid = os.fork()
    if pid == 0:  # the child trains and is killed at `moment`
        try:
            KILL_POINTS[moment]()
            train(*_args(run, checkpoints_total_limit=limit), dict(CONFIG))
        finally:
            os._exit(3)  # reached only if the kill point was never hit
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"not killed at {moment}"
    assert not (run / "metrics.json").exists()
    expected = {"mid-checkpoint": [2], "before-manifest": [2], "before-rename": [2], "during-retention": [4, 6],
                "during-publish": [2, 4, 6]}[moment]
    assert [step for step, _ in list_checkpoints(str(run / "checkpoints"))] == expected  # killed where meant

    for _, path in list_checkpoints(str(run / "checkpoints")):  # everything that looks complete is complete
        verify_checkpoint(path)
        read_training_state(path)
    record = train(*_args(run, checkpoints_total_limit=limit, resume_from_checkpoint="latest"), dict(CONFIG))
    assert record["step"] == 6
    _assert_same_weights(reference, run)
    leftovers = [n for n in os.listdir(run) if n.startswith(".tmp")] + \
        [n for n in os.listdir(run / "checkpoints") if n.startswith(".tmp")]
    assert not leftovers, leftovers


# ------------------------------------------------------------------------------------------------------------
# scripts/convert.py: an existing destination is never overwritten without --overwrite
# ------------------------------------------------------------------------------------------------------------


def _convert_script():
    try:
        from tests.support.scripts import load_script
    except ImportError:  # `tests` not importable as a package: pytest put tests/ itself on sys.path
        from support.scripts import load_script
    return load_script("convert")


@pytest.fixture(scope="module")
def klae_folder(tmp_path_factory):
    from hf_vae import KLAEConfig, KLAEModel

    folder = tmp_path_factory.mktemp("klae") / "klae"
    KLAEModel(KLAEConfig(block_out_channels=[8, 8], norm_num_groups=4, sample_size=8, latent_channels=2,
                         mid_block_add_attention=False)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("target,destination", [("hf_vae", "out"), ("diffusers", "out"), ("ldm", "out.safetensors")])
def test_convert_refuses_an_existing_destination_and_overwrites_cleanly(klae_folder, tmp_path, target, destination):
    convert = _convert_script()
    dest = tmp_path / destination
    if destination.endswith(".safetensors"):
        dest.write_bytes(b"precious")
    else:
        dest.mkdir()
        (dest / "stale_modeling_code.py").write_text("# from an older conversion")
    with pytest.raises(FileExistsError, match="exists; expected a new path.*--overwrite"):
        convert.main([str(klae_folder), str(dest), "--to", target])
    assert (dest.read_bytes() == b"precious") if dest.is_file() else (dest / "stale_modeling_code.py").exists()
    assert convert.main([str(klae_folder), str(dest), "--to", target, "--overwrite"]) == 0
    if dest.is_dir():
        assert not (dest / "stale_modeling_code.py").exists()  # replaced as a whole, no stale files beside it
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


@pytest.mark.parametrize("argv,error,expected", [
    (["--set", "bogus=1"], ValueError, "'bogus' is not a KLAEConfig field"),
    (["--set", "scaling_factor"], ValueError, "Expected --set KEY=VALUE"),
    (["--set", "scaling_factor=inf"], ValueError, "`scaling_factor` to be a finite number"),
    (["--to", "ldm"], ValueError, "Expected a .safetensors destination for --to ldm"),
])
def test_convert_bad_arguments_are_named(klae_folder, tmp_path, argv, error, expected):
    convert = _convert_script()
    args = [str(klae_folder), str(tmp_path / "new"), "--to", "hf_vae", *argv]
    if "--to" in argv:
        args = [str(klae_folder), str(tmp_path / "new"), *argv]
    with pytest.raises(error) as raised:
        convert.main(args)
    assert expected in str(raised.value)
    assert not (tmp_path / "new").exists()


def test_convert_names_a_folder_of_another_model_and_a_missing_source(reference, tmp_path):
    convert = _convert_script()
    with pytest.raises(ValueError, match="describes a 'vae' model; expected a 'klae' model"):
        convert.main([str(reference), str(tmp_path / "new"), "--to", "hf_vae"])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        convert.main([str(tmp_path / "missing" / "folder"), str(tmp_path / "new"), "--to", "hf_vae"])
