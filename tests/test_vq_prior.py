"""The VQ-VAE's learned prior (issue #13): a GPT-2 over raster-ordered code maps.

Its likelihood is a normalised distribution over code maps and agrees with a token-by-token computation; its
samples follow that distribution; the VQ-VAE samples from it, reports the bound −log p(x|z_q) − log p(z_q), and
carries it in prior/ through save/load, the Hub and remote code; the trainer fits it to a frozen VQ-VAE's codes,
resumes exactly after SIGKILL, and refuses bad input with a message naming what was expected.
"""

import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import hf_vae
from hf_vae import VAEConfig, VAEModel, VQPriorConfig, VQPriorModel, VQVAEConfig, VQVAEModel
from hf_vae.evaluation import evaluate, metrics_that_apply
from hf_vae.training import DataArguments, TrainArguments, train
from hf_vae.training.arguments import parse_args
from transformers import AutoModel

try:
    from tests.support.scripts import same_threads
except ImportError:  # `tests` not importable as a package: pytest put tests/ itself on sys.path
    from support.scripts import same_threads

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "scripts" / "train.py")
ALICE = "token-alice"

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vqvae(seed=0, num_embeddings=16, image_size=8, **kwargs) -> VQVAEModel:
    torch.manual_seed(seed)
    config = VQVAEConfig(in_channels=1, image_size=image_size, backbone="conv", block_out_channels=[8, 8],
                         norm_num_groups=4, num_embeddings=num_embeddings, embedding_dim=4,
                         mid_block_add_attention=False, **kwargs)
    return VQVAEModel(config).eval()


def tiny_prior(seed=0, num_embeddings=16, code_shape=(4, 4), num_classes=None) -> VQPriorModel:
    torch.manual_seed(seed)
    config = VQPriorConfig(num_embeddings=num_embeddings, code_shape=code_shape, num_classes=num_classes,
                           n_embd=16, n_layer=1, n_head=2)
    return VQPriorModel(config).eval()


def with_prior(seed=0, num_classes=None) -> VQVAEModel:
    vqvae = tiny_vqvae(seed)
    return vqvae.attach_prior(tiny_prior(seed + 1, code_shape=vqvae.code_shape, num_classes=num_classes))


def binary_images(n=6, seed=5):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)).round()


# ------------------------------------------------------------------------------------------------------------
# The prior's likelihood and samples
# ------------------------------------------------------------------------------------------------------------


def test_token_layout_and_gpt2_config():
    config = VQPriorConfig(num_embeddings=512, code_shape=(7, 7), num_classes=10)
    gpt = config.gpt2_config()
    assert (config.start_token_id, config.class_token_id(0), config.class_token_id(9)) == (512, 513, 522)
    assert gpt.vocab_size == 512 + 1 + 10 and gpt.n_positions == 49 + 1 and not gpt.tie_word_embeddings
    assert VQPriorConfig(num_embeddings=8, code_shape=(3,)).gpt2_config().vocab_size == 9
    assert isinstance(VQPriorModel(VQPriorConfig(num_embeddings=8, code_shape=(2, 2), n_embd=8, n_layer=1,
                                                 n_head=2)).gpt, hf_vae.modeling_vq_prior.GPT2LMHeadModel)
    with pytest.raises(ValueError, match="divisible by `n_head`"):
        VQPriorConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="code_shape"):
        VQPriorConfig(code_shape=(2, 0))


@pytest.mark.parametrize("num_classes", [None, 3])
def test_log_prob_matches_the_chain_rule_token_by_token(num_classes):
    """An independent computation: feed each prefix alone, softmax over the K code logits, sum log-probabilities."""
    prior = tiny_prior(num_classes=num_classes)
    codes = torch.randint(0, 16, (3, 4, 4), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2, 1]) if num_classes else None
    first = [prior.config.class_token_id(int(c)) for c in labels] if num_classes else [16] * 3
    expected = []
    with torch.no_grad():
        for b in range(3):
            sequence = [first[b]] + codes[b].flatten().tolist()
            total = 0.0
            for i in range(1, len(sequence)):
                logits = prior.gpt(input_ids=torch.tensor([sequence[:i]])).logits[0, -1, :16].double()
                total += float(torch.log_softmax(logits, -1)[sequence[i]])
            expected.append(total)
        output = prior(codes, labels=labels)
    torch.testing.assert_close(prior.log_prob(codes, labels).double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(output.loss, output.nll.mean() / 16)
    assert output.logits.shape == (3, 16, 16)


def test_log_prob_is_a_normalised_distribution_over_code_maps():
    prior = tiny_prior(num_embeddings=3, code_shape=(2, 2), num_classes=2)
    maps = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 2, 2)  # all 81 code maps
    with torch.no_grad():
        for label in (0, 1):
            total = prior.log_prob(maps, labels=label).double().exp().sum()
            assert abs(float(total) - 1.0) < 1e-5


def test_samples_follow_the_prior():
    """Empirical frequencies of 4000 sampled maps against exp(log_prob) of every map: transformers' generate with
    the start/class tokens suppressed samples exactly the distribution that log_prob scores."""
    prior = tiny_prior(num_embeddings=3, code_shape=(2,))
    with torch.no_grad():  # a peaked prior, far from uniform, so that a wrong sampler shows
        prior.gpt.lm_head.weight.mul_(40)
    maps = torch.tensor(list(itertools.product(range(3), repeat=2)))
    with torch.no_grad():
        probabilities = prior.log_prob(maps).double().exp()
    samples = prior.sample_codes(4000, generator=torch.Generator().manual_seed(0))
    index = samples[:, 0] * 3 + samples[:, 1]
    frequencies = torch.bincount(index, minlength=9).double() / 4000
    assert float(probabilities.max()) > 0.3  # really peaked
    assert 0.5 * float((frequencies - probabilities).abs().sum()) < 0.03


def test_sampling_is_seeded_leaves_the_global_rng_alone_and_honours_top_k():
    prior = tiny_prior()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = prior.sample_codes(5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, prior.sample_codes(5, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(a, prior.sample_codes(5, generator=torch.Generator().manual_seed(8)))
    assert a.shape == (5, 4, 4) and a.dtype == torch.long and int(a.max()) < 16
    # top_k=1 is greedy decoding: every step takes the most probable code
    greedy = prior.sample_codes(2, top_k=1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = prior(greedy).logits
    assert torch.equal(logits.argmax(-1), greedy.flatten(1))


def test_prior_bad_input_names_expected_and_given():
    conditional = tiny_prior(num_classes=3)
    with pytest.raises(ValueError, match=r"class-conditional \(3 classes\): expected `labels`.*got None"):
        conditional.sample_codes(2)
    with pytest.raises(ValueError, match=r"Expected labels in \[0, 3\), got values in \[0, 3\]"):
        conditional.sample_codes(2, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="unconditional.*expected labels=None"):
        tiny_prior().sample_codes(2, labels=1)
    with pytest.raises(ValueError, match=r"shape \(B, 4, 4\).*got \(2, 3, 3\)"):
        tiny_prior()(torch.zeros(2, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"codes in \[0, 16\).*got values in \[16, 16\]"):
        tiny_prior()(torch.full((1, 4, 4), 16))
    with pytest.raises(ValueError, match="temperature"):
        tiny_prior().sample_codes(1, temperature=0)


# ------------------------------------------------------------------------------------------------------------
# The VQ-VAE with its prior
# ------------------------------------------------------------------------------------------------------------


def test_generate_samples_the_prior_or_warns_that_uniform_samples_are_noise():
    plain = tiny_vqvae()
    with pytest.warns(UserWarning, match="no learned prior.*noise"):
        noise = plain.generate(3, generator=torch.Generator().manual_seed(0))
    assert noise.shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="apply to a learned prior"):
        plain.generate(2, top_k=3)

    model = with_prior()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images = model.generate(3, generator=torch.Generator().manual_seed(0), temperature=0.8, top_p=0.9)
    codes = model.prior.sample_codes(3, generator=torch.Generator().manual_seed(0), temperature=0.8, top_p=0.9)
    assert torch.equal(images, model.decode_indices(codes))


def test_class_conditional_prior_needs_labels_in_generate():
    model = with_prior(num_classes=4)
    assert model.is_conditional and model.num_classes == 4
    with pytest.raises(ValueError, match="expected `labels`"):
        model.generate(2)
    assert model.generate(2, labels=3).shape == (2, 1, 8, 8)


def test_attach_refuses_a_prior_of_another_codebook_or_code_map():
    vqvae = tiny_vqvae()
    with pytest.raises(ValueError, match="models 32 codes but this VQ-VAE has a codebook of 16.*num_embeddings=16"):
        vqvae.attach_prior(tiny_prior(num_embeddings=32))
    with pytest.raises(ValueError, match=r"code maps of shape \(2, 2\) but this VQ-VAE's are \(4, 4\)"):
        vqvae.attach_prior(tiny_prior(code_shape=(2, 2)))
    with pytest.raises(ValueError, match="Expected a VQPriorModel"):
        vqvae.attach_prior(tiny_vqvae())
    assert vqvae.prior is None


def test_likelihood_bound_against_an_independent_computation():
    model, x = with_prior(), binary_images()
    reconstruction_nll, code_nll = model.likelihood_bound(x)
    with torch.no_grad():
        codes = model.encode_to_indices(x)
        logits = model.decoder(model.indices_to_latents(codes), None)
        expected_reconstruction = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, x, reduction="none").flatten(1).sum(1)
        expected_codes = -model.prior.log_prob(codes)
    torch.testing.assert_close(reconstruction_nll, expected_reconstruction)
    torch.testing.assert_close(code_nll, expected_codes)
    torch.testing.assert_close(model.log_likelihood(x, num_samples=50), -(expected_reconstruction + expected_codes))
    # without a prior, the second term is the uniform prior's n log K
    _, uniform = model.attach_prior(None).likelihood_bound(x)
    torch.testing.assert_close(uniform, torch.full((6,), 16 * math.log(16)))


def test_evaluate_reports_the_bound_and_the_prior_nll_per_code():
    model = with_prior()
    x = binary_images(n=8)
    rows = [{"pixel_values": image} for image in x]
    assert {"neg_elbo", "nll", "bits_per_dim", "prior_nll_per_code", "uniform_nll_per_code"} <= set(
        metrics_that_apply(model))
    assert "prior_nll_per_code" not in metrics_that_apply(tiny_vqvae())
    metrics = evaluate(model, rows, batch_size=3)
    reconstruction_nll, code_nll = model.likelihood_bound(x)
    bound = float((reconstruction_nll + code_nll).mean())
    assert metrics["neg_elbo"] == pytest.approx(bound, rel=1e-6) and metrics["nll"] == pytest.approx(bound, rel=1e-6)
    assert metrics["bits_per_dim"] == pytest.approx(bound / (64 * math.log(2)), rel=1e-6)
    assert metrics["prior_nll_per_code"] == pytest.approx(float(code_nll.mean()) / 16, rel=1e-6)
    assert metrics["uniform_nll_per_code"] == pytest.approx(math.log(16))


# ------------------------------------------------------------------------------------------------------------
# prior/ travels with the VQ-VAE
# ------------------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip_with_the_prior(tmp_path):
    model, x = with_prior(), binary_images()
    expected = model.generate(4, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path / "m")
    files = {p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "modeling_vqvae.py", "modeling_vq_prior.py", "prior/config.json",
            "prior/model.safetensors"} <= files
    assert not [k for k in load_file(tmp_path / "m" / "model.safetensors") if k.startswith("prior.")]

    loaded = AutoModel.from_pretrained(tmp_path / "m")
    assert type(loaded) is VQVAEModel and type(loaded.prior) is VQPriorModel
    assert torch.equal(loaded.generate(4, generator=torch.Generator().manual_seed(0)), expected)
    torch.testing.assert_close(loaded.log_likelihood(x), model.log_likelihood(x))
    assert AutoModel.from_pretrained(tmp_path / "m", load_prior=False).prior is None

    # Saving without a prior removes the old one: the folder describes the model that was saved.
    model.attach_prior(None).save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / "prior").exists()
    assert AutoModel.from_pretrained(tmp_path / "m").prior is None
    # ... but a prior/ folder that is not a saved prior is never deleted.
    (tmp_path / "m" / "prior").mkdir()
    (tmp_path / "m" / "prior" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a saved VQ prior"):
        with_prior().save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "prior" / "notes.txt").exists()


def test_a_truncated_prior_is_an_error_not_a_random_prior(tmp_path):
    with_prior().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "prior" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "lm_head" not in k}, tmp_path / "prior" / "model.safetensors")
    with pytest.raises(ValueError, match="does not match its config.*lm_head"):
        VQVAEModel.from_pretrained(tmp_path)


@pytest.mark.slow  # a fresh interpreter loads remote code; fast sibling: test_save_and_load_round_trip_with_the_prior
def test_push_in_one_commit_then_load_with_and_without_hf_vae(hub_server, tmp_path):
    """push_model puts prior/ in the same commit as the VQ-VAE; installed hf_vae and remote code (in a process
    where hf_vae cannot be imported) both load the prior and draw the same samples. A later push without a prior
    removes prior/ from the repo."""
    from huggingface_hub import HfApi

    from hf_vae.integrations.hub import push_model

    model = with_prior(seed=3)
    expected = model.generate(4, generator=torch.Generator().manual_seed(0))
    commit = push_model(model, "alice/vq-prior", token=ALICE)
    api = HfApi()
    files = set(api.list_repo_files("alice/vq-prior"))
    assert {"prior/config.json", "prior/model.safetensors", "model.safetensors", "README.md", "preview.png"} <= files
    assert len(api.list_repo_commits("alice/vq-prior")) == 2  # the repo's initial commit + this push
    loaded = AutoModel.from_pretrained("alice/vq-prior", cache_dir=tmp_path / "c")
    assert torch.equal(loaded.generate(4, generator=torch.Generator().manual_seed(0)), expected)
    # The card says what the prior is, and its snippet samples from it.
    from huggingface_hub import ModelCard

    card = ModelCard.load("alice/vq-prior").text
    assert "| Prior p(z) | GPT-2 (1 layers of width 16" in card and "draws codes uniformly" not in card
    snippet = re.findall(r"```python\n(.*?)```", card, flags=re.S)[0]
    namespace = {}
    exec(snippet, namespace)
    assert namespace["samples"].shape == (4, 1, 8, 8)

    model.save_pretrained(tmp_path / "folder")
    save_file({"expected": expected}, tmp_path / "expected.safetensors")
    child = textwrap.dedent("""
        import sys

        class Block:  # hf_vae is installed (editable) here: make it unimportable
            def find_spec(self, name, path=None, target=None):
                if name == "hf_vae" or name.startswith("hf_vae."):
                    raise ImportError("hf_vae is blocked in this test")

        sys.meta_path.insert(0, Block())
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel

        expected = load_file(sys.argv[1])["expected"]
        for source in (sys.argv[2], "alice/vq-prior"):
            model = AutoModel.from_pretrained(source, trust_remote_code=True, revision=sys.argv[3] if "/" in source
                                              and not source.startswith("/") else None)
            assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
            assert type(model.prior).__name__ == "VQPriorModel", type(model.prior)
            samples = model.generate(4, generator=torch.Generator().manual_seed(0))
            assert torch.equal(samples, expected), (source, (samples - expected).abs().max())
        assert not [m for m in sys.modules if m == "hf_vae" or m.startswith("hf_vae.")]
        print("ok")
    """)
    env = same_threads({**os.environ, **hub_server.env(hf_home=tmp_path / "child_home"), "PYTHONPATH": ""})
    env.pop("HF_TOKEN", None)
    result = subprocess.run([sys.executable, "-c", child, str(tmp_path / "expected.safetensors"),
                             str(tmp_path / "folder"), commit.oid], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")

    push_model(model.attach_prior(None), "alice/vq-prior", token=ALICE)
    assert not [f for f in api.list_repo_files("alice/vq-prior") if f.startswith("prior/")]


def test_ldm_pipeline_still_works_with_a_vq_vae_that_carries_a_prior(tmp_path):
    from diffusers import DDIMScheduler, DiffusionPipeline, LDMPipeline, UNet2DModel

    torch.manual_seed(3)
    vqvae = VQVAEModel(VQVAEConfig(backbone="conv", in_channels=3, image_size=16, block_out_channels=[8, 16],
                                   norm_num_groups=4, embedding_dim=4, num_embeddings=16, likelihood="gaussian"))
    vqvae.attach_prior(tiny_prior(code_shape=vqvae.code_shape)).eval()
    unet = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4)
    pipe = LDMPipeline(vqvae=vqvae, unet=unet, scheduler=DDIMScheduler())

    def run(p):
        return p(batch_size=1, num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images

    images = run(pipe)
    assert images.shape == (1, 16, 16, 3)
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "vqvae" / "prior" / "model.safetensors").is_file()
    reloaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(reloaded.vqvae) is VQVAEModel and type(reloaded.vqvae.prior) is VQPriorModel
    assert np.allclose(run(reloaded), images, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------------


TINY_RUN = dict(batch_size=16, eval_steps=0, report_to="none", final_eval_max_examples=128, num_sample_images=4,
                checkpointing_steps=0, logging_steps=20, eval_batch_size=64)


@pytest.fixture(scope="module")
def shapes_vqvae(tmp_path_factory):
    """A VQ-VAE trained for a few steps on 16x16 shapes: its codes are far from uniform (mostly background)."""
    out = tmp_path_factory.mktemp("vq") / "vqvae"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainArguments(model="vq_vae", output_dir=str(out), max_steps=40, **TINY_RUN),
              DataArguments(num_train_examples=640),
              {"image_size": 16, "backbone": "conv", "block_out_channels": [8, 16], "norm_num_groups": 4,
               "num_embeddings": 32, "embedding_dim": 4, "mid_block_add_attention": False, "use_ema": True})
    finally:
        torch.set_num_threads(previous)
        _reset_accelerate()
    return str(out)


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


# trains a VQ-VAE and a 60-step prior, then compares sample statistics; fast sibling:
# test_class_conditional_prior_trains_on_labelled_data
@pytest.mark.slow
@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_short_run_learns_the_codes_and_samples_like_the_data(shapes_vqvae, tmp_path):
    out = tmp_path / "prior"
    record = train(TrainArguments(model="vq_prior", vqvae=shapes_vqvae, output_dir=str(out), max_steps=60,
                                  learning_rate=3e-3, **TINY_RUN), DataArguments(num_train_examples=640),
                   {"n_embd": 32, "n_layer": 1, "n_head": 2})
    metrics = record["metrics"]
    assert metrics["uniform_nll_per_code"] == pytest.approx(math.log(32))
    assert metrics["prior_nll_per_code"] < 0.5 * math.log(32)
    assert {"neg_elbo", "nll", "bits_per_dim", "mse", "codebook_usage"} <= set(metrics)
    assert json.loads((out / "metrics.json").read_text())["model"] == "vq_prior"
    assert {"samples.png", "reconstructions.png", "prior"} <= set(os.listdir(out))

    # The output folder is the VQ-VAE with its prior: one from_pretrained away.
    model = AutoModel.from_pretrained(out)
    assert type(model) is VQVAEModel and model.prior is not None
    reference = VQVAEModel.from_pretrained(shapes_vqvae)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))

    # The code histogram of prior samples is closer to the data's than the uniform prior's.
    from hf_vae.data import build_dataset, collate_batch

    rows = list(itertools.islice(build_dataset("shapes", "test", image_size=16, in_channels=1, value_range=(0, 1),
                                               binarize=True, shuffle=False), 256))
    data = torch.bincount(model.encode_to_indices(collate_batch(rows)["pixel_values"]).flatten(), minlength=32)
    sampled = torch.bincount(model.prior.sample_codes(256, generator=torch.Generator().manual_seed(0)).flatten(),
                             minlength=32)
    uniform = torch.ones(32)

    def tv(p, q):
        return 0.5 * float((p / p.sum() - q / q.sum()).abs().sum())

    assert tv(sampled.double(), data.double()) < 0.5 * tv(uniform.double(), data.double())


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_class_conditional_prior_trains_on_labelled_data(tmp_path):
    vqvae = tiny_vqvae(image_size=28, num_embeddings=16)
    vqvae.save_pretrained(tmp_path / "vq")
    record = train(TrainArguments(model="vq_prior", vqvae=str(tmp_path / "vq"), output_dir=str(tmp_path / "p"),
                                  max_steps=3, **{**TINY_RUN, "final_eval_max_examples": 32}),
                   DataArguments(dataset="fashion_mnist"), {"n_embd": 16, "n_layer": 1, "n_head": 2,
                                                            "num_classes": 10})
    assert record["metrics"]["prior_nll_per_code"] > 0
    model = AutoModel.from_pretrained(tmp_path / "p")
    assert model.is_conditional and model.num_classes == 10
    assert model.generate(2, labels=torch.tensor([1, 7])).shape == (2, 1, 28, 28)


def test_bad_training_input_names_expected_and_given(tmp_path):
    with pytest.raises(ValueError, match="expected --vqvae DIR_OR_REPO"):
        TrainArguments(model="vq_prior")
    with pytest.raises(ValueError, match="--vqvae applies to --model vq_prior, got --model vae"):
        TrainArguments(model="vae", vqvae="x")
    _, _, fields = parse_args(["--model", "vq_prior", "--vqvae", "x", "--n_layer", "2"])
    assert fields == {"n_layer": 2}
    with pytest.raises(ValueError, match="Unknown argument.*--latent_dim.*VQPriorConfig"):
        parse_args(["--model", "vq_prior", "--vqvae", "x", "--latent_dim", "2"])

    VAEModel(VAEConfig(image_size=8, hidden_dims=[8], latent_dim=2)).save_pretrained(tmp_path / "vae")
    tiny_vqvae(image_size=16).save_pretrained(tmp_path / "vq")
    cases = [
        (str(tmp_path / "vae"), {}, r"holds a VAEConfig \(model_type 'vae'\); expected a VQ-VAE \(model_type 'vq_vae'"),
        (str(tmp_path / "missing"), {}, "no model config found"),
        (str(tmp_path / "vq"), {"num_embeddings": 64}, "--num_embeddings 64 does not match the VQ-VAE, whose "
                                                       "num_embeddings is 16"),
        (str(tmp_path / "vq"), {"code_shape": [2, 2]}, r"whose code_shape is \[8, 8\]"),
        (str(tmp_path / "vq"), {"num_classes": 2}, "--num_classes 2 is too small for dataset .shapes., which has 3"),
    ]
    for source, fields, message in cases:
        with pytest.raises(ValueError, match=message):
            train(TrainArguments(model="vq_prior", vqvae=source, output_dir=str(tmp_path / "out"), max_steps=1,
                                 **TINY_RUN), DataArguments(num_train_examples=32), fields)
        _reset_accelerate()


@pytest.mark.slow  # prior training runs in subprocesses, one killed
def test_sigkill_then_resume_is_exact(tmp_path):
    """As tests/test_resume.py, for the prior: its dropout RNG and EMA state must come back too."""
    vqvae = tiny_vqvae(image_size=16, num_embeddings=16)
    vqvae.save_pretrained(tmp_path / "vq")
    run = ["--model", "vq_prior", "--vqvae", str(tmp_path / "vq"), "--n_embd", "16", "--n_layer", "1", "--n_head",
           "2", "--dropout", "0.1", "--batch_size", "16", "--num_train_examples", "320",
           "--max_steps", "90", "--checkpointing_steps", "15", "--eval_steps", "0", "--ema_decay", "0.9",
           "--report_to", "none", "--final_eval_max_examples", "16", "--num_sample_images", "4",
           "--resume_from_checkpoint", "latest"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    subprocess.run([sys.executable, TRAIN, "--output_dir", reference, *run], env=env, check=True,
                   capture_output=True, cwd=tmp_path)

    process = subprocess.Popen([sys.executable, TRAIN, "--output_dir", killed, *run], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    target = os.path.join(killed, "checkpoints", "checkpoint-30")
    deadline = time.time() + 120
    while not os.path.isdir(target) and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not os.path.exists(os.path.join(killed, "prior")), "killed too late to test anything"

    result = subprocess.run([sys.executable, TRAIN, "--output_dir", killed, *run], env=env, check=True,
                            capture_output=True, text=True, cwd=tmp_path)
    assert "Resumed from" in result.stdout
    expected = load_file(os.path.join(reference, "prior", "model.safetensors"))
    got = load_file(os.path.join(killed, "prior", "model.safetensors"))
    assert expected.keys() == got.keys()
    assert not [k for k in expected if not torch.equal(expected[k], got[k])]


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_resume_refuses_the_codes_of_another_vq_vae(tmp_path):
    """A checkpoint remembers its VQ-VAE's weights (SHA-256): resuming against another one is refused, since its
    codes mean something else."""
    tiny_vqvae(image_size=16).save_pretrained(tmp_path / "vq")
    args = dict(TINY_RUN, output_dir=str(tmp_path / "p"), checkpointing_steps=2, final_eval_max_examples=16)
    fields = {"n_embd": 16, "n_layer": 1, "n_head": 2}
    train(TrainArguments(model="vq_prior", vqvae=str(tmp_path / "vq"), max_steps=2, **args),
          DataArguments(num_train_examples=64), dict(fields))
    _reset_accelerate()
    tiny_vqvae(seed=1, image_size=16).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="codes of another VQ-VAE"):
        train(TrainArguments(model="vq_prior", vqvae=str(tmp_path / "other"), max_steps=4,
                             resume_from_checkpoint="latest", **args), DataArguments(num_train_examples=64),
              dict(fields))


@pytest.mark.slow  # two `accelerate launch` processes
@pytest.mark.skipif(__import__("shutil").which("accelerate") is None, reason="needs the accelerate launcher")
def test_two_processes_train_the_prior(tmp_path):
    """`accelerate launch` with two gloo processes: each encodes its shard with the frozen VQ-VAE, the prior is
    averaged by DDP, and the evaluation reduces over both shards."""
    tiny_vqvae(image_size=16).save_pretrained(tmp_path / "vq")
    out = tmp_path / "ddp"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", "--main_process_port", "0", TRAIN, "--model", "vq_prior", "--vqvae",
         str(tmp_path / "vq"), "--n_embd", "16", "--n_layer", "1", "--n_head", "2", "--output_dir", str(out),
         "--batch_size", "8", "--num_train_examples", "160", "--max_steps", "4", "--checkpointing_steps", "2",
         "--eval_steps", "0", "--report_to", "none", "--final_eval_max_examples", "32", "--num_sample_images", "4"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    args = json.loads((out / "training_args.json").read_text())["resolved"]
    assert args["num_processes"] == 2 and args["effective_batch_size"] == 16
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 4 and metrics["metrics"]["prior_nll_per_code"] > 0
    assert AutoModel.from_pretrained(out).prior is not None
