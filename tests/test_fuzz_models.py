"""Fuzz: bad and hostile inputs to configs, model calls and `from_pretrained`. Each case asserts the exact outcome:
the error type and that the message names the field or file (and what was expected), or the correct behaviour."""

from __future__ import annotations

import json
import math
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import hf_vae
from hf_vae import (
    BetaVAEConfig,
    CVAEConfig,
    CVAEModel,
    KLAEConfig,
    KLAEModel,
    VAEConfig,
    VAEModel,
    VQVAEConfig,
)
from hf_vae.modeling_base import MAX_IMPORTANCE_SAMPLES

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(image_size=8, hidden_dims=[16], latent_dim=2)
TINY_KLAE = dict(block_out_channels=[8, 8], norm_num_groups=4, sample_size=8, latent_channels=2,
                 mid_block_add_attention=False)


# ------------------------------------------------------------------------------------------------------------
# Configs: every numeric field a finite number of the right sign, every divisibility checked
# ------------------------------------------------------------------------------------------------------------

NUMERIC_FIELDS = [  # (config class, field, base kwargs)
    (VAEConfig, "likelihood_scale", {}),
    (VAEConfig, "dropout", {}),
    (BetaVAEConfig, "beta", {}),
    (BetaVAEConfig, "gamma", {}),
    (BetaVAEConfig, "capacity_max", {}),
    (VQVAEConfig, "commitment_cost", {}),
    (VQVAEConfig, "ema_decay", {}),
    (VQVAEConfig, "ema_epsilon", {}),
    (VQVAEConfig, "dead_code_threshold", {}),
    (VQVAEConfig, "scaling_factor", {}),
    (KLAEConfig, "kl_weight", {}),
    (KLAEConfig, "scaling_factor", {}),
    (KLAEConfig, "shift_factor", {}),
]
BAD_NUMBERS = [float("inf"), float("-inf"), float("nan"), "0.5", None, True, [1.0]]


@pytest.mark.parametrize("config_class,name,base", NUMERIC_FIELDS, ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
def test_numeric_config_fields_refuse_non_finite_and_non_numbers(config_class, name, base, value):
    if value is None and name == "shift_factor":  # optional: None means "no shift"
        assert config_class(**{name: None}).shift_factor is None
        return
    with pytest.raises(ValueError) as error:
        config_class(**base, **{name: value})
    message = str(error.value)
    assert f"`{name}`" in message and "finite number" in message and repr(value) in message


@pytest.mark.parametrize("make,field,expected", [
    (lambda: BetaVAEConfig(beta=-1), "beta", ">= 0"),
    (lambda: VAEConfig(likelihood_scale=0), "likelihood_scale", "> 0"),
    (lambda: VAEConfig(dropout=1.0), "dropout", "< 1"),
    (lambda: VQVAEConfig(ema_decay=1.0), "ema_decay", "< 1"),
    (lambda: VQVAEConfig(ema_epsilon=0.0), "ema_epsilon", "> 0"),
    (lambda: KLAEConfig(scaling_factor=0.0), "scaling_factor", "> 0"),
    (lambda: KLAEConfig(latents_std=[1.0, 0.0, 1.0, 1.0]), "latents_std[1]", "> 0"),
    (lambda: KLAEConfig(latents_mean=[0.0, float("nan"), 0.0, 0.0]), "latents_mean[1]", "finite"),
    (lambda: BetaVAEConfig(capacity_steps=0), "capacity_steps", "positive int"),
    (lambda: BetaVAEConfig(capacity_steps="100"), "capacity_steps", "positive int"),
    (lambda: VAEConfig(in_channels="3"), "in_channels", "positive int"),
    (lambda: VAEConfig(image_size=2.5), "image_size", "positive int"),
    (lambda: VQVAEConfig(num_embeddings=-4), "num_embeddings", "positive int"),
    (lambda: CVAEConfig(num_classes=0), "num_classes", "positive int"),
    (lambda: KLAEConfig(sample_size="256"), "sample_size", "positive int"),
    (lambda: KLAEConfig(force_upcast="yes"), "force_upcast", "True or False"),
    (lambda: VQVAEConfig(use_ema=1), "use_ema", "True or False"),
    (lambda: BetaVAEConfig(use_capacity="false"), "use_capacity", "True or False"),
    (lambda: VAEConfig(learn_likelihood_scale=None), "learn_likelihood_scale", "True or False"),
])
def test_config_fields_name_the_field_and_the_expectation(make, field, expected):
    with pytest.raises(ValueError) as error:
        make()
    assert f"`{field}`" in str(error.value) and expected in str(error.value)


@pytest.mark.parametrize("name", [n for n in hf_vae.MODELS if n != "klae"])
def test_every_conv_variant_checks_image_size_divisibility(name):
    kwargs = dict(backbone="conv", image_size=30, block_out_channels=[8, 8, 8], norm_num_groups=4,
                  latent_channels=4)
    if name == "vq_vae":
        kwargs.update(embedding_dim=4)
    if name == "beta_tcvae":
        kwargs.update(dataset_size=100)
    if name in ("cvae",):
        kwargs.update(num_classes=3)
    with pytest.raises(ValueError, match=r"`image_size` divisible by the down-sampling factor 4.*image_size=30"):
        hf_vae.MODELS[name][0](**kwargs)


@pytest.mark.parametrize("sample_size,channels", [(30, [8, 8, 8]), (12, [8, 8, 8, 8]), (1, [8, 8])])
def test_klae_sample_size_divisible_by_its_down_sampling_factor(sample_size, channels):
    factor = 2 ** (len(channels) - 1)
    with pytest.raises(ValueError, match=rf"`sample_size` divisible by the down-sampling factor {factor}.*"
                                         rf"sample_size={sample_size}"):
        KLAEConfig(block_out_channels=channels, norm_num_groups=4, sample_size=sample_size)


# ------------------------------------------------------------------------------------------------------------
# Model calls: inputs checked once where they enter
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return VAEModel(VAEConfig(**TINY)).eval()


@pytest.fixture(scope="module")
def klae():
    torch.manual_seed(0)
    return KLAEModel(KLAEConfig(**TINY_KLAE)).eval()


def _x(*shape, low=0.0, high=1.0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * (high - low) + low


BAD_PIXELS = [  # (description, input, the message must contain)
    ("empty batch", torch.zeros(0, 1, 8, 8), "empty batch of shape (0, 1, 8, 8)"),
    ("integer images", torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "floating-point `pixel_values`, got dtype torch.uint8"),
    ("bool images", torch.zeros(2, 1, 8, 8, dtype=torch.bool), "floating-point `pixel_values`"),
    ("a list", [[0.0]], "torch.Tensor, got list"),
    ("a numpy array", __import__("numpy").zeros((2, 1, 8, 8)), "torch.Tensor, got ndarray"),
    ("no batch dim", torch.zeros(1, 8, 8), "shape (B, C, H, W) = (B, 1, 8, 8), got shape (1, 8, 8)"),
    ("wrong channels", torch.zeros(2, 3, 8, 8), "Expected 1 channels at dim 1"),
    ("wrong size", torch.zeros(2, 1, 9, 9), "size 8x8"),
    ("NaN", torch.full((2, 1, 8, 8), float("nan")), "finite `pixel_values`"),
    ("+inf", torch.full((2, 1, 8, 8), float("inf")), "finite `pixel_values`"),
    ("-inf in one pixel", torch.zeros(2, 1, 8, 8).index_put_((torch.tensor([1]), torch.tensor([0]), torch.tensor([3]),
                                                             torch.tensor([4])), torch.tensor(float("-inf"))),
     "finite `pixel_values`"),
    ("above the Bernoulli range", torch.full((2, 1, 8, 8), 1.5), "in [0.0, 1.0] for the bernoulli likelihood"),
    ("below the Bernoulli range", torch.full((2, 1, 8, 8), -0.1), "got values in [-0.1, -0.1]"),
    ("[0, 255] images", torch.full((2, 1, 8, 8), 255.0), "got values in [255, 255]"),
]


@pytest.mark.parametrize("method", ["forward", "encode", "reconstruct", "log_likelihood"])
@pytest.mark.parametrize("what,x,expected", BAD_PIXELS, ids=[c[0] for c in BAD_PIXELS])
def test_bad_pixel_values_are_refused_by_every_entry_point(vae, method, what, x, expected):
    call = {"forward": lambda: vae(x), "encode": lambda: vae.encode(x), "reconstruct": lambda: vae.reconstruct(x),
            "log_likelihood": lambda: vae.log_likelihood(x, num_samples=2)}[method]
    with pytest.raises(ValueError) as error:
        call()
    assert expected in str(error.value)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_cast_to_the_model_dtype(vae, dtype):
    x = _x(3, 1, 8, 8)
    out = vae(x.to(dtype), sample_posterior=False)
    assert out.reconstruction.dtype == torch.float32
    reference = vae(x.to(dtype).float(), sample_posterior=False)  # the same values, cast by hand
    torch.testing.assert_close(out.loss, reference.loss)
    assert vae.reconstruct(x.to(dtype)).dtype == torch.float32
    assert vae.decode(torch.zeros(2, 2, dtype=dtype)).sample.dtype == torch.float32


@pytest.mark.parametrize("x,expected", [
    (_x(2, 3, 8, 8, high=255.0), "[-1, 1] for KLAEModel"),
    (_x(2, 3, 8, 8, low=-1.0, high=1.0) * 1.01, "x / 127.5 - 1"),
    (torch.zeros(0, 3, 8, 8), "empty batch"),
    (torch.zeros(2, 3, 7, 7), "divisible by the down-sampling factor 2, got 7x7"),
    (torch.zeros(2, 3, 0, 8), "positive and divisible"),
    (torch.full((1, 3, 8, 8), float("nan")), "finite"),
])
def test_klae_inputs_outside_minus_one_one_are_refused(klae, x, expected):
    for call in (lambda: klae.encode(x), lambda: klae(x), lambda: klae.reconstruct(x)):
        with pytest.raises(ValueError) as error:
            call()
        assert expected in str(error.value)


def test_klae_range_check_has_an_explicit_opt_out():
    torch.manual_seed(0)
    model = KLAEModel(KLAEConfig(**TINY_KLAE)).eval()
    x = _x(1, 3, 8, 8, high=255.0)
    model.check_input_range = False
    assert torch.isfinite(model.encode(x).latent_dist.mean).all()
    with pytest.raises(ValueError, match="finite"):  # the opt-out is for the range only
        model.encode(torch.full((1, 3, 8, 8), float("inf")))


@pytest.mark.parametrize("labels", [torch.zeros(3, dtype=torch.long), torch.zeros(3, 4), 0, [1, 2, 3]],
                         ids=["class ids", "condition vectors", "an int", "a list"])
def test_labels_given_to_an_unconditional_model_are_refused(vae, labels):
    x = _x(3, 1, 8, 8)
    for call in (lambda: vae(x, labels=labels), lambda: vae.encode(x, labels=labels),
                 lambda: vae.reconstruct(x, labels=labels), lambda: vae.generate(3, labels=labels)):
        with pytest.raises(ValueError, match=r"VAEModel is unconditional: expected labels=None.*CVAEModel"):
            call()


@pytest.mark.parametrize("labels,expected", [
    (None, "needs `labels`"),
    (torch.tensor([0, 1, 2, 99]), r"class labels in \[0, 3\), got values in \[0, 99\]"),
    (torch.rand(4), "integer class labels"),
    (torch.tensor([0, 1]), r"labels of shape \(4,\), got \(2,\)"),
])
def test_cvae_labels_are_checked(labels, expected):
    model = CVAEModel(CVAEConfig(num_classes=3, **TINY))
    with pytest.raises(ValueError, match=expected):
        model(_x(4, 1, 8, 8), labels=labels)


@pytest.mark.parametrize("kwargs,expected", [
    (dict(num_samples=0), "positive int `num_samples`, got 0"),
    (dict(num_samples=-5), "positive int `num_samples`, got -5"),
    (dict(num_samples=2.0), "positive int `num_samples`, got 2.0 (a float)"),
    (dict(num_samples="10"), "positive int `num_samples`, got '10' (a str)"),
    (dict(num_samples=True), "positive int `num_samples`, got True"),
    (dict(num_samples=MAX_IMPORTANCE_SAMPLES + 1), f"`num_samples` <= {MAX_IMPORTANCE_SAMPLES:,}"),
    (dict(num_samples=10 ** 9), "split the request into several calls"),
    (dict(chunk_size=0), "positive int `chunk_size`, got 0"),
    (dict(chunk_size=-1), "positive int `chunk_size`, got -1"),
    (dict(chunk_size=1.5), "positive int `chunk_size`, got 1.5"),
    (dict(chunk_size=None), "positive int `chunk_size`, got None"),
])
def test_log_likelihood_bounds(vae, kwargs, expected):
    with pytest.raises(ValueError) as error:
        vae.log_likelihood(_x(2, 1, 8, 8), **kwargs)
    assert expected in str(error.value)


@pytest.mark.parametrize("call,expected", [
    (lambda m: m.generate(0), "positive int `num_samples`, got 0"),
    (lambda m: m.generate(-3), "positive int `num_samples`, got -3"),
    (lambda m: m.generate(2.0), "got 2.0 (a float)"),
    (lambda m: m.generate("4"), "got '4' (a str)"),
    (lambda m: m.generate(4, batch_size=0), "positive int `batch_size`, got 0"),
    (lambda m: m.generate(10 ** 9), "generate(1000000000) needs"),
    (lambda m: m.generate(10 ** 12), "GiB available"),
    (lambda m: m.reconstruct(_x(2, 1, 8, 8), batch_size=0), "positive int `batch_size`, got 0"),
    (lambda m: m.reconstruct(_x(2, 1, 8, 8), batch_size=-1), "positive int `batch_size`, got -1"),
    (lambda m: m.decode(torch.zeros(0, 2)), "empty tensor of shape (0, 2)"),
    (lambda m: m.decode(torch.zeros(2, 2, dtype=torch.long)), "floating-point latents"),
    (lambda m: m.decode(torch.zeros(2, 3)), "latents of shape (B, 2), got (2, 3)"),
    (lambda m: m.decode(torch.tensor([[0.0, float("nan")], [0.0, 0.0]])), "finite latents, got 1 NaN or infinite"),
    (lambda m: m.decode(torch.full((2, 2), float("inf"))), "finite latents, got 4 NaN or infinite"),
    (lambda m: m.generate(4, temperature=0.5), "no sampling options for VAEModel.generate"),
])
def test_generation_requests_are_bounded(vae, call, expected):
    with pytest.raises(ValueError) as error:
        call(vae)
    assert expected in str(error.value)


@pytest.mark.parametrize("call,expected", [
    (lambda m: m.generate(0), "positive int `num_samples`, got 0"),
    (lambda m: m.generate(4, batch_size=0), "positive int `batch_size`, got 0"),
    (lambda m: m.generate(10 ** 12), "GiB available"),
    (lambda m: m.generate(2, temperature=0.5), "attach one with `attach_prior`"),
])
def test_vq_vae_generation_goes_through_the_same_bounds(call, expected):
    torch.manual_seed(0)
    model = hf_vae.VQVAEModel(hf_vae.VQVAEConfig(**TINY, num_embeddings=8, embedding_dim=2)).eval()
    with pytest.raises(ValueError) as error:
        call(model)
    assert expected in str(error.value)


def test_value_checks_stay_out_of_exported_graphs_and_stay_on_for_eager_calls(vae):
    """torch.export cannot trace a data-dependent check: the exported forward has no range check, and the eager
    model keeps refusing the same input."""
    exported = torch.export.export(vae, (_x(2, 1, 8, 8),))
    out = exported.module()(torch.full((2, 1, 8, 8), 0.5))
    assert torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="finite `pixel_values`"):
        vae(torch.full((2, 1, 8, 8), float("nan")))


def test_generate_and_reconstruct_in_batches_give_the_unbatched_result(vae):
    one = vae.generate(7, generator=torch.Generator().manual_seed(3))
    batched = vae.generate(7, generator=torch.Generator().manual_seed(3), batch_size=2)
    torch.testing.assert_close(one, batched)
    x = _x(5, 1, 8, 8)
    torch.testing.assert_close(vae.reconstruct(x), vae.reconstruct(x, batch_size=2))


# ------------------------------------------------------------------------------------------------------------
# Loading: safetensors only, clear errors for missing, wrong or broken folders
# ------------------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates a file: the proof that a pickle was (or was not) executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def saved_vae(tmp_path, vae):
    folder = tmp_path / "vae"
    vae.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("cls", [VAEModel, KLAEModel, "auto"])
@pytest.mark.parametrize("pickled_name", ["pytorch_model.bin", "model.pt", "model.ckpt"])
def test_from_pretrained_never_unpickles(tmp_path, saved_vae, cls, pickled_name):
    marker = tmp_path / "executed"
    os.remove(saved_vae / "model.safetensors")
    (saved_vae / pickled_name).write_bytes(pickle.dumps(_Payload(str(marker))))
    from transformers import AutoModel

    loader = AutoModel if cls == "auto" else cls
    with pytest.raises((OSError, ValueError)) as error:
        loader.from_pretrained(saved_vae)
    assert "model.safetensors" in str(error.value) or "describes a 'vae' model" in str(error.value)
    assert not marker.exists(), "a pickle was executed"


def test_the_payload_would_run_if_unpickled(tmp_path):
    """The control for the tests above: the payload really executes when unpickled."""
    marker = tmp_path / "executed"
    pickle.loads(pickle.dumps(_Payload(str(marker))))
    assert marker.exists()


@pytest.mark.parametrize("path,expected", [
    ("/nonexistent/folder", "/nonexistent/folder: no such folder"),
    ("./missing-model", "./missing-model: no such folder"),
    ("a/b/c", "a/b/c: no such folder"),
])
def test_a_missing_local_path_is_not_reported_as_a_repo_id(path, expected):
    for cls in (VAEModel, KLAEModel):
        with pytest.raises(FileNotFoundError) as error:
            cls.from_pretrained(path)
        assert expected in str(error.value) and "Repo id must be" not in str(error.value)


def test_use_safetensors_false_is_refused(saved_vae):
    with pytest.raises(ValueError, match="safetensors only.*got use_safetensors=False"):
        VAEModel.from_pretrained(saved_vae, use_safetensors=False)


@pytest.mark.parametrize("content,expected", [
    ("{not json", "JSON"),
    ("[1, 2]", "JSON"),
])
def test_invalid_config_json_names_the_file(saved_vae, content, expected):
    (saved_vae / "config.json").write_text(content)
    for cls in (VAEModel, KLAEModel):
        with pytest.raises(ValueError) as error:
            cls.from_pretrained(saved_vae)
        assert "config.json" in str(error.value) and expected in str(error.value)


@pytest.mark.parametrize("content", ["{not json", "[]", "\xff\xfe"])
def test_invalid_diffusers_config_json_names_the_file(tmp_path, content):
    from hf_vae.klae_conversion import read_json

    path = tmp_path / "config.json"
    path.write_text(content, encoding="latin-1")
    with pytest.raises(ValueError) as error:
        read_json(str(path))
    assert str(path) in str(error.value)


def test_a_folder_of_another_model_type_is_named(saved_vae):
    with pytest.raises(ValueError, match=r"describes a 'vae' model; expected a 'klae' model for KLAEModel"):
        KLAEModel.from_pretrained(saved_vae)


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage header"])
def test_damaged_weights_name_the_file(saved_vae, damage):
    path = saved_vae / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"",
                      "garbage header": b"\xff" * 8 + data[8:]}[damage])
    with pytest.raises(ValueError) as error:
        VAEModel.from_pretrained(saved_vae)
    assert str(path) in str(error.value) and "truncated or corrupt safetensors file" in str(error.value)


@pytest.mark.parametrize("keep", [0, 7, 100])
def test_a_truncated_klae_weight_file_is_named(tmp_path, keep):
    weights = KLAEModel(KLAEConfig(**TINY_KLAE)).state_dict()
    path = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, path)
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ValueError, match=f"{path}: a truncated or corrupt safetensors file"):
        KLAEModel.from_pretrained(str(path))


def test_klae_single_file_loads_safetensors_only(tmp_path):
    marker = tmp_path / "executed"
    pickled = tmp_path / "vae.ckpt"
    pickled.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(Exception):
        KLAEModel.from_pretrained(str(pickled))
    assert not marker.exists()
    weights = KLAEModel(KLAEConfig(**TINY_KLAE)).state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp_path / "vae.safetensors")
    loaded = KLAEModel.from_pretrained(str(tmp_path / "vae.safetensors"), sample_size=8, norm_num_groups=4)
    assert math.isfinite(loaded.config.scaling_factor)


def test_saved_config_roundtrip_keeps_the_checks(saved_vae):
    config = json.loads((saved_vae / "config.json").read_text())
    config["likelihood_scale"] = "Infinity"
    (saved_vae / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="`likelihood_scale` to be a finite number > 0, got 'Infinity'"):
        VAEModel.from_pretrained(saved_vae)
