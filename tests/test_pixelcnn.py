"""The gated PixelCNN code prior (van den Oord et al. 2016), `VQPriorConfig(prior_type="pixelcnn")`.

Its causality is checked by autograd (the logits at raster position i depend on exactly the codes before i: no
later code, and no blind spot), its likelihood against a direct computation of the chain rule, its samples against
that likelihood; it travels in the VQ-VAE's prior/ and samples through `generate` with the GPT-2 prior's controls;
the trainer fits it (`--prior_type pixelcnn`); bad input is refused with one line naming what was expected.
"""

import itertools
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from hf_vae import VQPriorConfig, VQPriorModel, VQVAEConfig, VQVAEModel
from hf_vae.pixelcnn import GatedPixelCNN
from transformers import AutoModel

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_pixelcnn(seed=0, num_embeddings=16, code_shape=(4, 4), num_classes=None, **fields) -> VQPriorModel:
    torch.manual_seed(seed)
    config = VQPriorConfig(num_embeddings=num_embeddings, code_shape=code_shape, num_classes=num_classes,
                           prior_type="pixelcnn", **{"pixelcnn_channels": 8, "pixelcnn_layers": 2, **fields})
    return VQPriorModel(config).eval()


def tiny_vqvae(seed=0, image_size=8) -> VQVAEModel:
    torch.manual_seed(seed)
    config = VQVAEConfig(in_channels=1, image_size=image_size, backbone="conv", block_out_channels=[8, 8], norm_num_groups=4,
                         num_embeddings=16, embedding_dim=4, mid_block_add_attention=False)
    return VQVAEModel(config).eval()


def dependencies(logits_at, embedded):
    """For each raster position p: the positions whose inputs the output at p has a nonzero gradient to (summed over
    a batch of random inputs, so that no ReLU that happens to be off hides a dependency)."""
    height, width = embedded.shape[-2:]
    found = []
    for p in range(height * width):
        (gradient,) = torch.autograd.grad(logits_at(p).sum(), embedded, retain_graph=True)
        found.append((gradient.abs().sum((0, 1)).flatten() > 0).nonzero().flatten().tolist())
    return found


# ------------------------------------------------------------------------------------------------------------
# causality: the receptive field by autograd
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 6), (1, 7), (6, 1)])
def test_each_output_depends_on_exactly_the_codes_before_it(shape):
    """Causal (nothing at or after position i) and free of the masked PixelCNN's blind spot (everything before i,
    the codes up and to the right included) once the stacks are deep enough to cover the map."""
    torch.manual_seed(0)
    network = GatedPixelCNN(num_embeddings=5, channels=8, num_layers=4, kernel_size=3, first_kernel_size=5).double()
    embedded = torch.randn(8, 8, *shape, dtype=torch.float64, requires_grad=True)
    logits = network.logits(embedded)
    width = shape[1]
    found = dependencies(lambda p: logits[:, :, p // width, p % width], embedded)
    assert found == [list(range(p)) for p in range(shape[0] * width)]


def test_one_layer_sees_the_rows_above_through_the_vertical_stack_and_the_left_through_the_horizontal():
    """A single layer of kernel 3 at (r, c): the vertical stack's 2×3 window over rows r−2, r−1 and columns c−1 … c+1
    (up and to the right too), the horizontal stack's codes (r, c−2), (r, c−1)."""
    torch.manual_seed(0)
    network = GatedPixelCNN(num_embeddings=5, channels=8, num_layers=1, kernel_size=3, first_kernel_size=3).double()
    embedded = torch.randn(8, 8, 5, 6, dtype=torch.float64, requires_grad=True)
    logits = network.logits(embedded)
    found = dependencies(lambda p: logits[:, :, p // 6, p % 6], embedded)
    r, c = 3, 3
    expected = sorted([6 * row + col for row in (r - 2, r - 1) for col in (c - 1, c, c + 1)] + [6 * r + c - 2,
                                                                                               6 * r + c - 1])
    assert found[6 * r + c] == expected


def test_the_prior_is_causal_through_its_codes_and_class_bias():
    """The whole model: changing the code at position i changes no logit at positions ≤ i."""
    prior = tiny_pixelcnn(num_classes=3, pixelcnn_layers=3)
    codes = torch.randint(0, 16, (4, 4, 4), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        base = prior(codes, labels=labels).logits
        for i in range(16):
            changed = codes.clone().view(4, 16)
            changed[:, i] = (changed[:, i] + 1) % 16
            logits = prior(changed.view(4, 4, 4), labels=labels).logits
            torch.testing.assert_close(logits[:, : i + 1], base[:, : i + 1], rtol=0, atol=0)
            assert not torch.equal(logits[:, i + 1:], base[:, i + 1:]) or i == 15
        # the class changes the first code's distribution already
        assert not torch.equal(prior(codes, labels=torch.tensor([1, 1, 2, 1])).logits[0, 0], base[0, 0])


def test_the_first_rows_alone_give_the_same_logits():
    """What sampling relies on: the rows up to r, run without the rows after them, give the same logits there."""
    prior = tiny_pixelcnn(code_shape=(5, 3), num_classes=2)
    codes = torch.randint(0, 16, (3, 5, 3), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        full = prior.pixelcnn(codes, labels)
        for row in range(5):
            torch.testing.assert_close(prior.pixelcnn(codes[:, : row + 1], labels), full[:, :, : row + 1])


# ------------------------------------------------------------------------------------------------------------
# the likelihood and the samples
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [None, 3])
def test_log_prob_matches_the_chain_rule_computed_position_by_position(num_classes):
    """A direct computation: for each position i, the code map with every code from i on replaced by noise, one
    pass of the network, log-softmax over the K codes at i; the sum over i. Equal to the one-pass log_prob only if
    the network never reads a code at or after i."""
    prior = tiny_pixelcnn(num_classes=num_classes)
    codes = torch.randint(0, 16, (3, 4, 4), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2, 1]) if num_classes else None
    classes = labels if num_classes else None
    noise = torch.Generator().manual_seed(1)
    expected = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for i in range(16):
            prefix = codes.clone().view(3, 16)
            prefix[:, i:] = torch.randint(0, 16, (3, 16 - i), generator=noise)
            logits = prior.pixelcnn(prefix.view(3, 4, 4), classes)[:, :, i // 4, i % 4].double()
            expected += torch.log_softmax(logits, -1).gather(1, codes.view(3, 16)[:, i: i + 1]).squeeze(1)
        output = prior(codes, labels=labels)
    torch.testing.assert_close(prior.log_prob(codes, labels).double(), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(output.loss, output.nll.mean() / 16)
    assert output.logits.shape == (3, 16, 16)


def test_log_prob_is_a_normalised_distribution_over_code_maps():
    prior = tiny_pixelcnn(num_embeddings=3, code_shape=(2, 2), num_classes=2)
    maps = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 2, 2)  # all 81 code maps
    with torch.no_grad():
        for label in (0, 1):
            assert abs(float(prior.log_prob(maps, labels=label).double().exp().sum()) - 1.0) < 1e-5


def peaked_prior(code_shape=(2, 2)):
    prior = tiny_pixelcnn(num_embeddings=3, code_shape=code_shape)
    with torch.no_grad():  # a peaked prior, far from uniform, so that a wrong sampler shows
        prior.pixelcnn.head[-1].weight.mul_(30)
    return prior


@pytest.mark.parametrize("code_shape", [(2, 2), (3,)])
def test_samples_follow_the_prior(code_shape):
    """Empirical frequencies of 4000 sampled maps against exp(log_prob) of every map."""
    prior = peaked_prior(code_shape)
    n = math.prod(code_shape)
    maps = torch.tensor(list(itertools.product(range(3), repeat=n))).view(-1, *code_shape)
    with torch.no_grad():
        probabilities = prior.log_prob(maps).double().exp()
    samples = prior.sample_codes(4000, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4000, *code_shape)
    index = (samples.view(4000, n) * (3 ** torch.arange(n - 1, -1, -1))).sum(1)
    frequencies = torch.bincount(index, minlength=3 ** n).double() / 4000
    assert float(probabilities.max()) > 0.2  # really peaked
    assert 0.5 * float((frequencies - probabilities).abs().sum()) < 0.04


def test_temperature_and_top_k_warp_each_conditional_as_transformers_generate_does():
    """Temperature → 0 and top_k=1 are greedy: every code is the argmax given the codes before it. A temperature T
    samples softmax(logits / T): on the first code, whose conditional has no prefix, the empirical frequencies
    match it."""
    prior = tiny_pixelcnn(num_embeddings=4, code_shape=(2, 3))
    greedy = prior.sample_codes(3, top_k=1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(prior(greedy).logits.argmax(-1), greedy.flatten(1))
        first = prior(greedy).logits[0, 0].double()
    assert torch.equal(prior.sample_codes(3, temperature=1e-4, generator=torch.Generator().manual_seed(5)), greedy)
    samples = prior.sample_codes(4000, temperature=0.5, generator=torch.Generator().manual_seed(1))
    frequencies = torch.bincount(samples[:, 0, 0], minlength=4).double() / 4000
    assert 0.5 * float((frequencies - torch.softmax(first / 0.5, -1)).abs().sum()) < 0.03
    # top_k=2: only the two most probable first codes are ever drawn
    top_two = set(first.topk(2).indices.tolist())
    drawn = set(prior.sample_codes(200, top_k=2, generator=torch.Generator().manual_seed(2))[:, 0, 0].tolist())
    assert drawn <= top_two


def test_sampling_is_seeded_and_leaves_the_global_rng_alone():
    prior = tiny_pixelcnn(num_classes=2)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = prior.sample_codes(5, labels=1, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, prior.sample_codes(5, labels=1, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(a, prior.sample_codes(5, labels=1, generator=torch.Generator().manual_seed(8)))
    assert a.shape == (5, 4, 4) and a.dtype == torch.long and 0 <= int(a.min()) and int(a.max()) < 16


# ------------------------------------------------------------------------------------------------------------
# inside the VQ-VAE
# ------------------------------------------------------------------------------------------------------------


def test_generate_and_the_bound_go_through_the_pixelcnn_prior():
    model = tiny_vqvae().attach_prior(tiny_pixelcnn(seed=1, num_classes=4))
    assert model.is_conditional and model.num_classes == 4
    images = model.generate(3, labels=2, generator=torch.Generator().manual_seed(0), temperature=0.8, top_k=5)
    codes = model.prior.sample_codes(3, labels=2, generator=torch.Generator().manual_seed(0), temperature=0.8,
                                     top_k=5)
    assert torch.equal(images, model.decode_indices(codes))
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(3)).round()
    labels = torch.tensor([0, 1, 2, 3])
    _, code_nll = model.likelihood_bound(x, labels=labels)
    torch.testing.assert_close(code_nll, -model.prior.log_prob(model.encode_to_indices(x), labels))


def test_save_and_load_inside_the_vq_vae(tmp_path):
    model = tiny_vqvae().attach_prior(tiny_pixelcnn(seed=1))
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(3)).round()
    expected = model.generate(4, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path / "m")
    assert {"pixelcnn.py", "prior/config.json", "prior/model.safetensors"} <= {
        p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*") if p.is_file()}
    loaded = AutoModel.from_pretrained(tmp_path / "m")
    assert type(loaded.prior) is VQPriorModel and loaded.prior.config.prior_type == "pixelcnn"
    assert loaded.prior.gpt is None and loaded.prior.pixelcnn is not None
    assert all(torch.equal(a, b) for a, b in zip(loaded.prior.state_dict().values(),
                                                 model.prior.state_dict().values()))
    assert torch.equal(loaded.generate(4, generator=torch.Generator().manual_seed(0)), expected)
    torch.testing.assert_close(loaded.log_likelihood(x), model.log_likelihood(x))


@pytest.mark.slow  # a fresh interpreter loads remote code; fast sibling: test_save_and_load_inside_the_vq_vae
def test_remote_code_loads_the_pixelcnn_prior_without_hf_vae(tmp_path):
    """The saved folder carries pixelcnn.py: a process where hf_vae cannot be imported loads the VQ-VAE and its
    PixelCNN prior with trust_remote_code and draws the same samples."""
    from safetensors.torch import save_file

    model = tiny_vqvae().attach_prior(tiny_pixelcnn(seed=1, num_classes=2))
    expected = model.generate(3, labels=1, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path / "folder")
    save_file({"expected": expected}, tmp_path / "expected.safetensors")
    child = textwrap.dedent("""
        import sys

        class Block:  # hf_vae may be installed: make it unimportable
            def find_spec(self, name, path=None, target=None):
                if name == "hf_vae" or name.startswith("hf_vae."):
                    raise ImportError("hf_vae is blocked in this test")

        sys.meta_path.insert(0, Block())
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel

        model = AutoModel.from_pretrained(sys.argv[2], trust_remote_code=True)
        assert type(model.prior).__module__.startswith("transformers_modules."), type(model.prior).__module__
        assert model.prior.config.prior_type == "pixelcnn"
        samples = model.generate(3, labels=1, generator=torch.Generator().manual_seed(0))
        assert torch.equal(samples, load_file(sys.argv[1])["expected"])
        assert not [m for m in sys.modules if m == "hf_vae" or m.startswith("hf_vae.")]
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": "", "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", child, str(tmp_path / "expected.safetensors"),
                             str(tmp_path / "folder")], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_meta_construction_then_init_gives_pytorch_default_scales():
    """`_init_weights` rebuilds every PixelCNN weight (transformers constructs on the meta device, then initialises
    what a checkpoint does not hold)."""
    config = tiny_pixelcnn().config
    with torch.device("meta"):
        prior = VQPriorModel(config)
    prior = prior.to_empty(device="cpu")
    prior.init_weights()
    embedding = prior.pixelcnn.embedding.weight.detach()
    assert torch.isfinite(embedding).all() and 0.5 < float(embedding.std()) < 1.5
    conv = prior.pixelcnn.layers[0].vertical.weight.detach()
    bound = 1 / math.sqrt(conv[0].numel())
    assert float(conv.abs().max()) <= bound and float(conv.abs().max()) > 0.5 * bound


# ------------------------------------------------------------------------------------------------------------
# bad input: one line naming what was expected and what was given
# ------------------------------------------------------------------------------------------------------------


def test_bad_input_names_expected_and_given():
    with pytest.raises(ValueError, match=r"`prior_type` to be one of 'gpt2', 'pixelcnn', got 'lstm'"):
        VQPriorConfig(prior_type="lstm")
    with pytest.raises(ValueError, match=r"`pixelcnn_kernel_size` to be an odd positive int, got 4"):
        VQPriorConfig(prior_type="pixelcnn", pixelcnn_kernel_size=4)
    with pytest.raises(ValueError, match=r"code map of shape \(h, w\) or \(n,\) for the PixelCNN.*got code_shape "
                                         r"\[4, 4, 2\]"):
        VQPriorConfig(prior_type="pixelcnn", code_shape=(4, 4, 2))
    with pytest.raises(ValueError, match="pixelcnn_layers"):
        VQPriorConfig(prior_type="pixelcnn", pixelcnn_layers=0)
    prior = tiny_pixelcnn()
    with pytest.raises(ValueError, match=r"Expected temperature, top_k and top_p for the PixelCNN prior, got a "
                                         r"generation_config"):
        from transformers import GenerationConfig

        prior.sample_codes(2, generation_config=GenerationConfig())
    with pytest.raises(ValueError, match=r"shape \(B, 4, 4\).*got \(2, 3, 3\)"):
        prior(torch.zeros(2, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"codes in \[0, 16\).*got values in \[16, 16\]"):
        prior(torch.full((1, 4, 4), 16))
    with pytest.raises(ValueError, match="unconditional.*expected labels=None"):
        prior.sample_codes(2, labels=1)
    with pytest.raises(ValueError, match=r"class-conditional \(3 classes\): expected `labels`.*got None"):
        tiny_pixelcnn(num_classes=3)(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="top_k"):
        prior.sample_codes(1, top_k=0)
    for message in ("prior_type", "pixelcnn_kernel_size"):  # each message is one line
        try:
            VQPriorConfig(prior_type="lstm" if message == "prior_type" else "pixelcnn", pixelcnn_kernel_size=2)
        except ValueError as error:
            assert "\n" not in str(error)


# ------------------------------------------------------------------------------------------------------------
# training: scripts/train.py --model vq_prior --prior_type pixelcnn --vqvae DIR
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_the_trainer_fits_a_pixelcnn_prior_and_publishes_it_in_the_vq_vae(tmp_path):
    from hf_vae.training import DataArguments, TrainArguments, train
    from hf_vae.training.arguments import parse_args

    vqvae = tiny_vqvae(image_size=16)
    vqvae.save_pretrained(tmp_path / "vq")
    # the command line knows the field (read from the config's source)
    _, _, fields = parse_args(["--model", "vq_prior", "--vqvae", str(tmp_path / "vq"), "--prior_type", "pixelcnn",
                               "--pixelcnn_layers", "2", "--pixelcnn_channels", "8"])
    assert fields == {"prior_type": "pixelcnn", "pixelcnn_layers": 2, "pixelcnn_channels": 8}
    record = train(TrainArguments(model="vq_prior", vqvae=str(tmp_path / "vq"), output_dir=str(tmp_path / "p"),
                                  max_steps=3, batch_size=16, eval_steps=0, report_to="none",
                                  final_eval_max_examples=32, num_sample_images=4, checkpointing_steps=0,
                                  eval_batch_size=32),
                   DataArguments(dataset="shapes", num_train_examples=64), fields)
    assert 0 < record["metrics"]["prior_nll_per_code"] < 2 * math.log(16)
    model = AutoModel.from_pretrained(tmp_path / "p")
    assert model.prior.config.prior_type == "pixelcnn" and model.prior.gpt is None
    assert model.generate(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 16, 16)
