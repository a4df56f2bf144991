"""Hub round trip (issue #5): push with a generated card, load back with and without hf_vae, refuse bad input.

Everything runs against the loopback fake of the Hub (tests/support/hub_server.py, fixture `hub_server`); the
public Hub is never contacted. Models are tiny: an MLP VAE on 8×8 images and a KLAE with two 32-channel blocks.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from PIL import Image
from safetensors.torch import load_file, save_file

import hf_vae
from hf_vae import KLAEConfig, KLAEModel, VAEConfig, VAEModel
from hf_vae.integrations.hub import (
    HubAuthError,
    HubPushError,
    ModelCardTemplateError,
    OutputDirError,
    prepare_output_dir,
    push_model,
    push_output_dir,
)
from hf_vae.integrations.model_card import image_grid, render_model_card
from transformers import AutoModel

try:
    from tests.support.scripts import same_threads
    from tests.support.tiny_models import family_classes, tiny_config
except ImportError:  # `tests` not importable as a package: pytest put tests/ itself on sys.path
    from support.scripts import same_threads
    from support.tiny_models import family_classes, tiny_config

ALICE, BOB = "token-alice", "token-bob"
REPO_ROOT = Path(__file__).resolve().parents[1]
KLAE_EXTRA_FILES = {".gitattributes", "README.md", "preview.png", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"}


# ------------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------------


def tiny_vae(seed=0, cls=VAEModel, config_cls=VAEConfig, **kwargs):
    torch.manual_seed(seed)
    return cls(config_cls(**{"in_channels": 1, "image_size": 8, "hidden_dims": (16,), "latent_dim": 4, **kwargs})).eval()


def tiny_klae(seed=0):
    torch.manual_seed(seed)
    return KLAEModel(KLAEConfig(block_out_channels=(32, 32), norm_num_groups=8, sample_size=16)).eval()


def inputs_for(model):
    """Fixed inputs: images in the model's range and latents."""
    generator = torch.Generator().manual_seed(123)
    x = torch.rand(3, *model.config.data_shape, generator=generator)
    if model.config.model_type == "klae":
        x = x * 2 - 1
    z = torch.randn(3, *model.latent_shape, generator=generator)
    return {"x": x, "z": z}


@torch.no_grad()
def outputs_of(model, inputs):
    """Deterministic outputs: posterior mean, decoded latents, reconstructions."""
    model = model.eval()
    return {"mean": model.encode(inputs["x"]).latent_dist.mean, "decoded": model.decode(inputs["z"]).sample,
            "reconstruction": model.reconstruct(inputs["x"])}


def assert_same_outputs(model, expected, inputs):
    got = outputs_of(model, inputs)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), f"{name} differs after the round trip"


METRICS = {"neg_elbo": 41.5, "nll": 40.25, "bits_per_dim": 0.905, "mse": 0.0123, "psnr": 19.04, "ssim": 0.612}


def make_output_dir(root: Path, model, *, dataset="fashion_mnist", metrics=None, images=True) -> Path:
    """What the trainer leaves behind after a run."""
    root.mkdir(parents=True)
    model.save_pretrained(root)
    name = model.config.model_type
    (root / "metrics.json").write_text(json.dumps({"model": name, "dataset": dataset, "split": "test", "step": 200,
                                                   "metrics": metrics or METRICS}))
    args = {"model": name, "dataset": dataset, "max_steps": 200, "batch_size": 32, "gradient_accumulation_steps": 2,
            "learning_rate": 0.001, "seed": 7, "mixed_precision": "no", "output_dir": str(root),
            "lpips_weights": "/home/someone/lpips", "hub_token": "hf_secret_should_not_leak", "push_to_hub": True,
            "hub_model_id": "alice/x", "model_config": {"latent_channels": 4},
            "resolved": {"max_steps": 200, "effective_batch_size": 64, "num_processes": 1}}
    (root / "training_args.json").write_text(json.dumps(args))
    if images:
        low_high = (0.0, 1.0) if name != "klae" else (-1.0, 1.0)
        x = inputs_for(model)["x"]
        image_grid(torch.cat([x, model.reconstruct(x)]), low_high, nrow=3).save(root / "reconstructions.png")
        image_grid(model.generate(4, generator=torch.Generator().manual_seed(0)), low_high).save(root / "samples.png")
    (root / "checkpoints" / "checkpoint-100").mkdir(parents=True)
    (root / "checkpoints" / "checkpoint-100" / "model.safetensors").write_bytes(b"not pushed")
    return root


def saved_files(model, folder: Path) -> set:
    """What `save_pretrained` writes: config.json, model.safetensors and the model code (which modules it copies is
    the model files' business)."""
    model.save_pretrained(folder)
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", f"modeling_{model.config.model_type}.py", "modeling_base.py"} <= files
    return files


def repo_files(repo_id, revision=None, token=None):
    return set(HfApi().list_repo_files(repo_id, revision=revision, token=token))


def python_blocks(markdown: str):
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


# ------------------------------------------------------------------------------------------------------------
# Push, card, load
# ------------------------------------------------------------------------------------------------------------


def test_klae_output_dir_push_and_load_from_empty_cache(hub_server, tmp_path):
    model = tiny_klae()
    out = make_output_dir(tmp_path / "run", model)
    commit = push_output_dir(out, "alice/tiny-klae", token=ALICE)

    api = HfApi()
    # One commit (after the Hub's initial one) with exactly the model files: no checkpoints/, no run files.
    assert [c.title for c in api.list_repo_commits("alice/tiny-klae")] == \
        ["Upload klae trained on fashion_mnist (step 200)", "initial commit"]
    assert repo_files("alice/tiny-klae") == saved_files(model, tmp_path / "local") | KLAE_EXTRA_FILES
    assert api.model_info("alice/tiny-klae").sha == commit.oid
    config = json.loads(Path(hf_hub_download("alice/tiny-klae", "config.json", cache_dir=tmp_path / "c")).read_text())
    assert config["model_type"] == "klae" and config["auto_map"]["AutoModel"] == "modeling_klae.KLAEModel"

    # The card: metadata that huggingface_hub parses, with the measured metrics; the sections; the image.
    card = ModelCard.load("alice/tiny-klae")
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    assert card.data.datasets == ["zalando-datasets/fashion_mnist"]
    assert {"hf_vae", "autoencoder-kl", "diffusers"} <= set(card.data.tags)
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == METRICS and {r.dataset_split for r in card.data.eval_results} == {"test"}
    for section in ("## Model description", "## Training objective", "## How to use", "## Training data",
                    "## Training procedure", "## Evaluation", "kl_weight = 1e-06", "| Batch size (per process) | 32 |",
                    "| Effective batch size | 64 |", "| `model_config.latent_channels` | `4` |",
                    "| `lpips_weights` | `(local path)` |",
                    "| PSNR | 19.04 | dB | higher |", "![Reconstructions and samples of tiny-klae](preview.png)",
                    "import hf_vae", "trust_remote_code=True", 'AutoencoderKL.from_pretrained("alice/tiny-klae", subfolder="vae")'):
        assert section in card.text, section
    for private in ("hf_secret_should_not_leak", str(out), "/home/someone", "hub_model_id"):
        assert private not in card.content, private
    card.validate()  # the Hub's YAML check (loopback server)
    with Image.open(hf_hub_download("alice/tiny-klae", "preview.png", cache_dir=tmp_path / "c")) as preview:
        with Image.open(out / "reconstructions.png") as rec:
            assert preview.mode == "RGB" and preview.width > rec.width and preview.height >= 256

    # Load after `import hf_vae`, from an empty cache, by branch and by commit: identical outputs.
    inputs = inputs_for(model)
    expected = outputs_of(model, inputs)
    for i, revision in enumerate([None, commit.oid]):
        loaded = AutoModel.from_pretrained("alice/tiny-klae", revision=revision, cache_dir=tmp_path / f"empty{i}")
        assert type(loaded) is KLAEModel  # hf_vae's own class, not remote code
        assert_same_outputs(loaded, expected, inputs)

    # The card's first snippet, run as written.
    namespace = {}
    exec(python_blocks(card.text)[0], namespace)
    assert type(namespace["model"]) is KLAEModel and namespace["reconstructions"].shape == (4, 3, 16, 16)


# fresh interpreters load remote code and a diffusers pipeline; fast sibling:
# test_klae_output_dir_push_and_load_from_empty_cache
@pytest.mark.slow
def test_load_without_hf_vae_trust_remote_code_and_diffusers(hub_server, tmp_path):
    """In a fresh process where `import hf_vae` fails: the card's trust_remote_code and diffusers snippets load the
    pushed models from an empty HF_HOME and reproduce the pushed models' outputs."""
    klae, vae = tiny_klae(1), tiny_vae(1)
    push_output_dir(make_output_dir(tmp_path / "klae_run", klae), "alice/klae", token=ALICE)
    push_model(vae, "alice/vae", token=ALICE, metrics=METRICS, training_args={"dataset": "fashion_mnist"})

    cases = []
    for repo, model in (("alice/klae", klae), ("alice/vae", vae)):
        inputs = inputs_for(model)
        path = tmp_path / f"{repo.split('/')[1]}.safetensors"
        save_file({**inputs, **{f"expected.{k}": v.contiguous() for k, v in outputs_of(model, inputs).items()}}, path)
        readme = Path(hf_hub_download(repo, "README.md", cache_dir=tmp_path / "c")).read_text()
        snippets = python_blocks(readme)
        cases.append({"repo": repo, "tensors": str(path), "remote_code": snippets[1],
                      "diffusers": snippets[2] if repo == "alice/klae" else None})
    assert "trust_remote_code=True" in cases[1]["remote_code"] and "import hf_vae" not in cases[1]["remote_code"]
    (tmp_path / "cases.json").write_text(json.dumps(cases))

    child = textwrap.dedent("""
        import json, sys

        class Block:  # hf_vae is installed (editable) here: make it unimportable
            def find_spec(self, name, path=None, target=None):
                if name == "hf_vae" or name.startswith("hf_vae."):
                    raise ImportError("hf_vae is blocked in this test")

        sys.meta_path.insert(0, Block())
        try:
            import hf_vae
            raise SystemExit("hf_vae should not be importable")
        except ImportError:
            pass
        import torch
        from safetensors.torch import load_file

        for case in json.load(open(sys.argv[1])):
            data = load_file(case["tensors"])
            namespace = {}
            exec(case["remote_code"], namespace)  # AutoModel.from_pretrained(repo, trust_remote_code=True)
            model = namespace["model"]
            assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
            with torch.no_grad():
                got = {"mean": model.encode(data["x"]).latent_dist.mean, "decoded": model.decode(data["z"]).sample,
                       "reconstruction": model.reconstruct(data["x"])}
            for name, tensor in got.items():
                assert torch.equal(tensor, data["expected." + name]), (case["repo"], name)
            if case["diffusers"]:
                exec(case["diffusers"], namespace)  # AutoencoderKL.from_pretrained(repo, subfolder="vae")
                vae = namespace["vae"]
                assert type(vae).__name__ == "AutoencoderKL"
                with torch.no_grad():
                    mean = vae.encode(data["x"]).latent_dist.mean
                    decoded = vae.decode(data["z"]).sample
                torch.testing.assert_close(mean, data["expected.mean"], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(decoded, data["expected.decoded"], rtol=1e-5, atol=1e-5)
        assert not [m for m in sys.modules if m == "hf_vae" or m.startswith("hf_vae.")]
        print("ok")
    """)
    home = tmp_path / "child_home"  # empty HF_HOME: nothing cached, no token
    env = same_threads({**os.environ, **hub_server.env(hf_home=home), "PYTHONPATH": ""})
    env.pop("HF_TOKEN", None)
    result = subprocess.run([sys.executable, "-c", child, str(tmp_path / "cases.json")], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")
    assert (home / "hub").is_dir()  # the child really downloaded into its own empty cache


def test_second_push_makes_a_new_revision_and_the_old_one_still_loads(hub_server, tmp_path):
    old, new = tiny_vae(seed=1), tiny_vae(seed=2)
    inputs = inputs_for(old)
    first = push_model(old, "alice/history", token=ALICE, metrics={"neg_elbo": 50.0},
                       training_args={"dataset": "fashion_mnist", "max_steps": 100}, pixel_values=inputs["x"])
    second = push_model(new, "alice/history", token=ALICE, metrics={"neg_elbo": 45.0},
                        training_args={"dataset": "fashion_mnist", "max_steps": 200})
    assert first.oid != second.oid
    assert [c.commit_id for c in HfApi().list_repo_commits("alice/history")][:2] == [second.oid, first.oid]

    assert_same_outputs(AutoModel.from_pretrained("alice/history", cache_dir=tmp_path / "a"), outputs_of(new, inputs), inputs)
    assert_same_outputs(AutoModel.from_pretrained("alice/history", revision=first.oid, cache_dir=tmp_path / "b"),
                        outputs_of(old, inputs), inputs)
    old_card = ModelCard.load(hf_hub_download("alice/history", "README.md", revision=first.oid,
                                              cache_dir=tmp_path / "e"))  # each revision keeps its own card
    assert [r.metric_value for r in old_card.data.eval_results] == [50.0]
    assert [r.metric_value for r in ModelCard.load("alice/history").data.eval_results] == [45.0]

    # A branch: main is untouched, the branch loads.
    other = tiny_vae(seed=3)
    push_model(other, "alice/history", token=ALICE, revision="experiment")
    assert HfApi().model_info("alice/history").sha == second.oid
    assert_same_outputs(AutoModel.from_pretrained("alice/history", revision="experiment", cache_dir=tmp_path / "c"),
                        outputs_of(other, inputs), inputs)

    # Replacing a KLAE by a VAE removes the KLAE's files (vae/, its code) in the same commit.
    push_model(tiny_klae(), "alice/swap", token=ALICE)
    assert repo_files("alice/swap") == saved_files(tiny_klae(), tmp_path / "klae") | KLAE_EXTRA_FILES
    push_model(old, "alice/swap", token=ALICE)
    assert repo_files("alice/swap") == saved_files(old, tmp_path / "vae") | {".gitattributes", "README.md", "preview.png"}
    assert_same_outputs(AutoModel.from_pretrained("alice/swap", cache_dir=tmp_path / "d"), outputs_of(old, inputs), inputs)


def test_model_push_to_hub_includes_the_card_and_preview(hub_server, tmp_path):
    """`model.push_to_hub` goes through push_model: weights, code, our card and the preview, in one commit."""
    model = tiny_vae(seed=4)
    model.push_to_hub("alice/plain", token=ALICE)
    files = repo_files("alice/plain")
    assert {"config.json", "model.safetensors", "modeling_vae.py", "modeling_base.py", "README.md",
            "preview.png"} <= files
    assert "import hf_vae" in ModelCard.load("alice/plain").text
    inputs = inputs_for(model)
    loaded = AutoModel.from_pretrained("alice/plain", cache_dir=tmp_path / "a")
    assert_same_outputs(loaded, outputs_of(model, inputs), inputs)


def test_transformers_only_push_options_fall_back_to_transformers(hub_server, tmp_path):
    """An option only transformers' push knows (max_shard_size) uses its push: config, weights and code."""
    model = tiny_vae(seed=4)
    model.push_to_hub("alice/sharded", token=ALICE, max_shard_size="10GB")
    files = repo_files("alice/sharded")
    assert {"config.json", "model.safetensors", "modeling_vae.py"} <= files and "preview.png" not in files
    loaded = AutoModel.from_pretrained("alice/sharded", cache_dir=tmp_path / "b")
    inputs = inputs_for(model)
    assert_same_outputs(loaded, outputs_of(model, inputs), inputs)


@pytest.mark.parametrize("variant", ["vae", "beta_vae", "vq_vae", "cvae"])
def test_card_of_every_variant_and_its_snippet(hub_server, variant, tmp_path):
    model_class, config_class = hf_vae.MODELS[variant][::-1]
    kwargs = {"vq_vae": dict(embedding_dim=4, num_embeddings=8, latent_dim=8), "beta_vae": dict(beta=4.0)}.get(variant, {})
    model = tiny_vae(seed=5, cls=model_class, config_cls=config_class, **kwargs)
    metrics = {"model": variant, "dataset": "shapes", "split": "test", "step": 50,
               "metrics": {"mse": 0.02, "mig": 0.31} if variant == "beta_vae" else {"mse": 0.02}}
    labels = torch.arange(3) if variant == "cvae" else None
    push_model(model, f"alice/{variant}", token=ALICE, metrics=metrics, pixel_values=inputs_for(model)["x"], labels=labels)
    card = ModelCard.load(f"alice/{variant}")
    assert card.data.datasets is None  # local dataset: no Hub id to link
    assert {r.metric_type for r in card.data.eval_results} == set(metrics["metrics"])
    assert hf_vae.MODELS[variant][1].__name__ in card.text and "Shapes (dSprites-style)" in card.text
    specific = {"vae": "−ELBO = E_q(z|x)[−log p(x|z)] + KL", "beta_vae": "β = 4.0", "vq_vae": "8 codes of dimension 4",
                "cvae": "labels = torch.arange(4) % 10"}[variant]
    assert specific in card.text
    assert "diffusers" not in card.data.tags and "subfolder=" not in card.text
    namespace = {}
    exec(python_blocks(card.text)[0], namespace)  # the "import hf_vae" snippet, against the loopback Hub
    assert namespace["reconstructions"].shape == (4, 1, 8, 8)


# ------------------------------------------------------------------------------------------------------------
# Access control
# ------------------------------------------------------------------------------------------------------------


def test_private_repo_refuses_a_missing_or_wrong_token(hub_server, tmp_path):
    model = tiny_vae(seed=6)
    out = make_output_dir(tmp_path / "run", model)
    push_output_dir(out, "alice/secret", token=ALICE, private=True)
    assert HfApi().model_info("alice/secret", token=ALICE).private

    for i, token in enumerate([None, BOB, "token-wrong"]):  # none stored in the isolated HF_HOME
        with pytest.raises(OSError):  # transformers' wrapping of RepositoryNotFoundError / 401
            AutoModel.from_pretrained("alice/secret", token=token, cache_dir=tmp_path / f"c{i}")
    inputs = inputs_for(model)
    loaded = AutoModel.from_pretrained("alice/secret", token=ALICE, cache_dir=tmp_path / "ok")
    assert_same_outputs(loaded, outputs_of(model, inputs), inputs)

    # Asking for a private push to an existing public repo is refused rather than publishing the model.
    push_model(model, "alice/public", token=ALICE)
    with pytest.raises(HubPushError, match="exists and is public"):
        push_model(model, "alice/public", token=ALICE, private=True)


# ------------------------------------------------------------------------------------------------------------
# Bad input: a clear message and nothing pushed
# ------------------------------------------------------------------------------------------------------------


def _assert_nothing_written(hub):
    writes = [(m, p) for m, p in hub.requests if m in ("POST", "PUT", "DELETE") and "/paths-info/" not in p]
    assert writes == [], writes
    assert hub.repos == {}


def test_bad_input_gives_a_clear_message_and_pushes_nothing(hub_server, tmp_path):
    model = tiny_vae(seed=7)
    good = make_output_dir(tmp_path / "good", model)

    def variant_dir(name, edit):
        path = tmp_path / name
        shutil.copytree(good, path)
        edit(path)
        return path

    cases = [
        # (output dir, repo id, token, extra kwargs, error, message)
        (good, "alice/x", None, {}, HubAuthError, "No Hugging Face token"),
        (good, "alice/x", "token-wrong", {}, HubAuthError, "refused the token"),
        (good, "alice/x", BOB, {}, HubAuthError, "belongs to 'bob'.*cannot write to the namespace 'alice'"),
        (tmp_path / "nope", "alice/x", ALICE, {}, OutputDirError, "does not exist"),
        (variant_dir("no_weights", lambda p: (p / "model.safetensors").unlink()), "alice/x", ALICE, {},
         OutputDirError, "missing model.safetensors"),
        (variant_dir("no_metrics", lambda p: (p / "metrics.json").unlink()), "alice/x", ALICE, {},
         OutputDirError, "missing metrics.json"),
        (variant_dir("unfinished", lambda p: [(p / f).unlink() for f in os.listdir(p) if (p / f).is_file()]),
         "alice/x", ALICE, {}, OutputDirError, "did the run finish"),
        (variant_dir("truncated", lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:300])),
         "alice/x", ALICE, {}, OutputDirError, "Could not load the VAEModel"),
        (variant_dir("missing_key", lambda p: save_file({k: v for k, v in load_file(p / "model.safetensors").items()
                                                         if not k.startswith("decoder.")}, p / "model.safetensors")),
         "alice/x", ALICE, {}, OutputDirError, "does not match its config.*missing keys"),
        (variant_dir("nan_metric", lambda p: (p / "metrics.json").write_text(json.dumps(
            {"model": "vae", "dataset": "d", "split": "test", "step": 1, "metrics": {"nll": "NaN"}}))),
         "alice/x", ALICE, {}, OutputDirError, "metric 'nll' to be a finite number"),
        (variant_dir("bad_json", lambda p: (p / "training_args.json").write_text("{oops")),
         "alice/x", ALICE, {}, OutputDirError, "training_args.json is not valid JSON"),
        (variant_dir("other_run", lambda p: (p / "metrics.json").write_text(json.dumps(
            {"model": "klae", "dataset": "d", "split": "test", "step": 1, "metrics": {}}))),
         "alice/x", ALICE, {}, OutputDirError, "is for model 'klae' but config.json has model_type 'vae'"),
        (good, "alice/x", ALICE, {"revision": "a" * 40}, HubPushError, "branch name"),
        (good, "not/a/repo", ALICE, {}, HubPushError, "Invalid repository id"),
    ]
    for out, repo_id, token, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            push_output_dir(out, repo_id, token=token, **kwargs)
    _assert_nothing_written(hub_server)

    # Card template errors name the template and the line.
    def broken_templates(name, edit):
        folder = tmp_path / name
        shutil.copytree(REPO_ROOT / "model_cards", folder)
        edit(folder)
        return folder

    template_cases = [
        (broken_templates("syntax", lambda f: (f / "vae.md.j2").write_text('{% extends "base.md.j2" %}\n\n{% block objective %}\n{% if %}\n')),
         r"Syntax error in model card template vae.md.j2, line 4"),
        (broken_templates("undefined", lambda f: (f / "vae.md.j2").write_text(
            '{% extends "base.md.j2" %}\n{% block objective %}\nβ = {{ config.no_such_field }}\n{% endblock %}\n')),
         r"template error at vae.md.j2, line 3: UndefinedError: .* no attribute 'no_such_field'"),
        (broken_templates("missing", lambda f: (f / "vae.md.j2").unlink()), r"'vae.md.j2' not found"),
        (broken_templates("no_metadata", lambda f: (f / "base.md.j2").write_text(
            (f / "base.md.j2").read_text().replace("---\n{{ card_data }}\n---\n", ""))), "must start with the metadata block"),
    ]
    for folder, message in template_cases:
        with pytest.raises(ModelCardTemplateError, match=message):
            push_output_dir(good, "alice/x", token=ALICE, template_dir=folder)
    _assert_nothing_written(hub_server)


def test_failed_commit_deletes_the_repository_it_created(hub_server, monkeypatch):
    try:
        from tests.support.hub_server import HubError
    except ImportError:
        from support.hub_server import HubError

    def refuse(*args, **kwargs):  # the Hub refuses the commit (as it does for invalid card metadata)
        raise HubError(422, "Invalid metadata in README.md")

    monkeypatch.setattr(hub_server, "_commit", refuse)
    with pytest.raises(HubPushError, match="Invalid metadata.*Nothing was pushed.*created for this push was deleted again"):
        push_model(tiny_vae(), "alice/x", token=ALICE)
    assert not HfApi().repo_exists("alice/x", token=ALICE)


def test_diffusers_copy_is_checked(monkeypatch):
    from hf_vae.integrations.hub import diffusers_autoencoder

    model = tiny_klae(2)
    # A conversion that does not reproduce the model is refused before anything is pushed.
    broken = model.to_diffusers()
    with torch.no_grad():
        broken.decoder.conv_out.bias.add_(0.1)
    monkeypatch.setattr(KLAEModel, "to_diffusers", lambda self: broken)
    with pytest.raises(HubPushError, match=r"does not reproduce the KLAE: decode\(z\).sample differs"):
        diffusers_autoencoder(model)
    with pytest.raises(HubPushError, match=r"Only the diffusers twins \(klae\)"):
        diffusers_autoencoder(tiny_vae())


# ------------------------------------------------------------------------------------------------------------
# The script and the dry run
# ------------------------------------------------------------------------------------------------------------


def _script():
    spec = importlib.util.spec_from_file_location("push_to_hub_script", REPO_ROOT / "scripts" / "push_to_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_push_to_hub_script(hub_server, tmp_path, capsys):
    script = _script()
    model = tiny_vae(seed=8)
    out = make_output_dir(tmp_path / "run", model, images=False)  # no PNGs: the preview is generated

    assert script.main([str(out), "alice/cli", "--dry-run", str(tmp_path / "dry")]) == 0
    built = {p.relative_to(tmp_path / "dry").as_posix() for p in (tmp_path / "dry").rglob("*") if p.is_file()}
    assert {"README.md", "preview.png", "config.json", "model.safetensors", "modeling_vae.py"} <= built
    assert not any(name.startswith("checkpoints") or name.endswith(".json") and name != "config.json" for name in built)
    assert hub_server.repos == {}

    assert script.main([str(out), "cli", "--token", ALICE, "--commit-message", "first model"]) == 0  # bare name
    assert "alice/cli" in capsys.readouterr().out
    assert HfApi().list_repo_commits("alice/cli")[0].title == "first model"
    assert ModelCard.load("alice/cli").data.eval_results[0].metric_value == METRICS["neg_elbo"]

    assert script.main([str(tmp_path / "missing"), "alice/cli2", "--token", ALICE]) == 1
    assert "error:" in capsys.readouterr().err and not HfApi().repo_exists("alice/cli2", token=ALICE)


def test_render_model_card_from_an_output_dir(tmp_path):
    """No Hub needed: the card renders from the run's files alone; a flat-data VAE gets no image."""
    model = tiny_vae(seed=9)
    out = make_output_dir(tmp_path / "run", model)
    card = render_model_card(out, repo_id="alice/r")
    assert isinstance(card, ModelCard) and card.data.eval_results[0].metric_type == "neg_elbo"
    assert card.data.eval_results[0].dataset_name == "Fashion-MNIST"
    assert "| Steps | 200 |" in card.text and "| Seed | 7 |" in card.text

    torch.manual_seed(0)
    flat = VAEModel(VAEConfig(in_channels=5, image_size=None, hidden_dims=(8,), latent_dim=2))
    assert prepare_output_dir(make_output_dir(tmp_path / "flat", flat, images=False), tmp_path / "built",
                              repo_id="alice/flat") and not (tmp_path / "built" / "preview.png").exists()
    text = (tmp_path / "built" / "README.md").read_text()
    assert "preview.png" not in text and "torch.rand(4, 5)" in text


def test_klae_card_says_whether_the_log_variance_was_learned():
    model = tiny_klae()
    args = {"model": "klae", "dataset": "photos", "max_steps": 10, "logvar_init": 0.0}
    fixed = render_model_card(model, training_args=args).text
    assert "was **fixed** at logvar = 0.0, as in latent diffusion" in fixed and "**learned**" not in fixed
    learned = render_model_card(model, training_args={**args, "learn_logvar": True}).text
    assert "was **learned** (`--learn_logvar`)" in learned and "**fixed**" not in learned


@pytest.mark.parametrize("method,path,after,stage,changed", [
    ("GET", r"/api/whoami-v2$", False, "authenticate", False),
    ("POST", r"/api/repos/create$", False, "create", False),
    ("POST", r"/preupload/", False, "upload", False),
    ("POST", r"/commit/", False, "commit", False),
    ("POST", r"/commit/", True, "commit", True),  # the commit went through; its answer was lost
])
def test_transport_failures_name_the_stage_and_the_state_of_the_repository(hub_server, monkeypatch, method, path,
                                                                            after, stage, changed):
    import types

    from huggingface_hub.utils import _http

    # The client retries some requests 5 times with back-off: every try is dropped, and the waits are skipped.
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    hub_server.drop_connection(method, path, after_handling=after, times=1 if after else 6)
    with pytest.raises(HubPushError) as error:
        push_model(tiny_vae(), "alice/dropped", token=ALICE)
    assert (error.value.stage, error.value.repo_changed) == (stage, changed)
    assert f"at the {stage} stage" in str(error.value)
    exists = HfApi().repo_exists("alice/dropped", token=ALICE)
    if changed:
        assert exists and "the repository was changed" in str(error.value)
    else:
        # a repository this push created is deleted again: no empty repository is left behind
        assert not exists and "Nothing was pushed" in str(error.value)
        if stage in ("upload", "commit"):
            assert "created for this push was deleted again" in str(error.value)


def _sections(markdown: str) -> dict:
    """{'## heading': body} for every second-level section of a card's text (ModelCard.text: no metadata)."""
    parts = re.split(r"^(## .+)$", markdown, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.mark.parametrize("variant", sorted(hf_vae.MODELS))
def test_every_card_section_has_content(variant):
    torch.manual_seed(5)
    model = family_classes(variant)[1](tiny_config(variant)).eval()  # the model battery's tiny config
    full = dict(metrics={"model": variant, "dataset": "shapes", "split": "test", "step": 5, "metrics": {"mse": 0.1}},
                training_args={"model": variant, "dataset": "shapes", "max_steps": 5, "learning_rate": 1e-3})
    for card in (render_model_card(model), render_model_card(model, **full)):
        sections = _sections(card.text)
        assert "## Model description" in sections and "## How to use" in sections
        empty = [heading for heading, body in sections.items() if not body.strip()]
        assert not empty, f"{variant}: empty sections {empty}"
        assert "was not recorded" not in card.text
    bare = _sections(render_model_card(model).text)
    assert not {"## Training data", "## Training procedure", "## Evaluation"} & set(bare)
    assert {"## Training data", "## Training procedure", "## Evaluation"} <= set(_sections(card.text))


def test_every_metric_has_a_unit_and_a_direction_and_unknown_ones_are_not_guessed():
    from hf_vae.evaluation import METRIC_NAMES
    from hf_vae.integrations.model_card import METRICS

    for name in METRIC_NAMES:
        assert name in METRICS, f"metric {name!r} has no MetricSpec in the model card"
        assert METRICS[name].unit.strip() and METRICS[name].higher_is_better is not None, name
    card = render_model_card(tiny_vae(), metrics={"ssim": 0.5, "fid": 12.0})
    assert "| SSIM | 0.5 | unitless, ≤ 1 | higher |" in card.text
    assert "| fid | 12 | unknown | unknown |" in card.text  # not guessed as "higher is better"


@pytest.mark.parametrize("dataset, hub_id", [("fashion_mnist", "zalando-datasets/fashion_mnist"), ("photos", None)])
def test_klae_card_metadata_has_pipeline_tag_and_datasets(dataset, hub_id):
    card = render_model_card(tiny_klae(), metrics={"psnr": 20.0}, training_args={"model": "klae", "dataset": dataset})
    assert card.data.pipeline_tag == "image-to-image"
    assert card.data.datasets == ([hub_id] if hub_id else None)  # no Hub id invented for embedded data
