"""The model layer's house rules: configs import no torch-side code, model files import only their siblings, torch
and transformers (so trust_remote_code copies everything they need), the data contract is stated once, and
what a model can do is an attribute of every model, not something to probe."""

import ast
import os
import sys

import pytest
import torch

import hf_vae
from hf_vae import families
from hf_vae.data_contract import LIKELIHOOD_KINDS, DataContract, contract_for, data_contract
from hf_vae.distributions import Likelihood
from hf_vae.input_checks import MAX_IMPORTANCE_SAMPLES

try:
    from tests.support.tiny_models import FAMILY_NAMES, is_prior, tiny_config
except ImportError:  # `tests` not importable as a package: pytest put tests/ itself on sys.path
    from support.tiny_models import FAMILY_NAMES, is_prior, tiny_config

PACKAGE = os.path.dirname(hf_vae.__file__)
#: the flat files of the model layer (the subpackages are training, evaluation, integrations, data)
MODEL_FILES = sorted(name for name in os.listdir(PACKAGE) if name.endswith(".py") and name != "__init__.py")
CONFIG_FILES = [name for name in MODEL_FILES if name.startswith("configuration_")]
AUTOENCODERS = [name for name in FAMILY_NAMES if not is_prior(name)]


def imports_of(filename):
    """(absolute module names, relative sibling names) that `filename` imports, at any depth of the file."""
    tree = ast.parse(open(os.path.join(PACKAGE, filename), encoding="utf-8").read())
    absolute, relative = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            absolute.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                relative.add(node.module or "")
            else:
                absolute.add(node.module)
    return absolute, relative


def top(name):
    return name.split(".")[0]


@pytest.mark.parametrize("filename", CONFIG_FILES)
def test_configs_import_only_configs_the_standard_library_and_transformers(filename):
    """The transformers rule: a configuration module never imports torch or modeling code (hf_vae's own
    `import hf_vae.configuration_x` runs the package's __init__, so the rule is read off the source)."""
    absolute, relative = imports_of(filename)
    foreign = sorted(name for name in absolute if top(name) not in sys.stdlib_module_names and top(name) != "transformers")
    assert not foreign, f"{filename} imports {foreign}"
    siblings = sorted(name for name in relative if not name.startswith("configuration_") and name != "data_contract")
    assert not siblings, f"{filename} imports the model-side siblings {siblings}"


@pytest.mark.parametrize("filename", MODEL_FILES)
def test_model_files_import_only_siblings_torch_and_transformers(filename):
    """What trust_remote_code copies next to the weights is the model file and the siblings it imports
    relatively; an import of hf_vae's subpackages (integrations, training, ...) would not travel."""
    if filename in ("families.py", "thread_policy.py"):
        pytest.skip("the family table and the thread policy are package-level modules")
    absolute, relative = imports_of(filename)
    allowed = {"torch", "transformers", "safetensors", "huggingface_hub", "diffusers", "accelerate", "psutil"}
    foreign = sorted(name for name in absolute if top(name) not in sys.stdlib_module_names and top(name) not in allowed)
    assert not foreign, f"{filename} imports {foreign}"
    upward = sorted(name for name in relative if "." in name or name in ("integrations", "training", "evaluation", "data"))
    assert not upward, f"{filename} imports {upward} (not a flat sibling)"


def test_the_data_contract_module_needs_no_torch():
    absolute, relative = imports_of("data_contract.py")
    assert all(top(name) in sys.stdlib_module_names for name in absolute) and not relative


@pytest.mark.parametrize("name", AUTOENCODERS)
def test_the_data_contract_of_every_family_is_read_once(name):
    """`data_contract(config)` (torch-free) and `model.data_contract` (from the likelihood) agree, with the rules
    the evaluation used to restate: [0, 1] and binarised for Bernoulli, else [-1, 1]; dequantised for a continuous
    density unless the latent is quantized."""
    config = tiny_config(name, "mlp") if name != "klae" else tiny_config(name)
    model = families.get(name).model_class(config)
    contract = data_contract(config)
    assert isinstance(contract, DataContract) and model.data_contract == contract
    likelihood = config.likelihood
    assert contract.value_range == ((0.0, 1.0) if likelihood == "bernoulli" else (-1.0, 1.0))
    assert contract.binary == (likelihood == "bernoulli")
    assert contract.dequantize == (likelihood in ("gaussian", "laplace") and not families.get(name).capabilities.quantized)


def test_a_continuous_likelihood_is_dequantised_except_under_a_quantized_latent():
    assert contract_for("gaussian") == DataContract((-1.0, 1.0), binary=False, dequantize=True)
    assert contract_for("gaussian", quantized=True).dequantize is False
    assert contract_for("discretized_logistic").dequantize is False
    with pytest.raises(ValueError, match="Expected a likelihood in .* got 'poisson'"):
        contract_for("poisson")


def test_every_likelihood_class_states_its_kind_from_the_one_table():
    classes = {cls.name: cls for cls in _subclasses(Likelihood) if cls.name is not None}
    assert set(classes) == set(LIKELIHOOD_KINDS)
    for name, cls in classes.items():
        kind = LIKELIHOOD_KINDS[name]
        assert (cls.data_range, cls.normalised, cls.continuous) == (kind.data_range, kind.normalised, kind.continuous)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@pytest.mark.parametrize("name", AUTOENCODERS)
def test_capabilities_are_attributes_of_every_model(name):
    """What the trainer, the evaluation and the cards read, present on every model without getattr defaults."""
    family = families.get(name)
    config = tiny_config(name, "mlp") if name != "klae" else tiny_config(name)
    model = family.model_class(config)
    assert isinstance(model.likelihood.normalised, bool) and isinstance(model.likelihood.continuous, bool)
    assert model.likelihood.data_range is None or len(model.likelihood.data_range) == 2
    assert isinstance(model.deterministic_encoder, bool)
    assert model.is_conditional == family.capabilities.conditional
    assert (model.num_classes is None) == (not family.capabilities.conditional)
    with model.inputs_checked_by_caller():
        pass
    if family.capabilities.quantized:
        assert model.prior is None


def test_the_quantized_family_goes_through_the_bounded_log_likelihood():
    model = families.get("vq_vae").model_class(tiny_config("vq_vae", "mlp")).eval()
    x = torch.rand(2, *model.config.data_shape)
    with pytest.raises(ValueError, match="num_samples"):
        model.log_likelihood(x, num_samples=MAX_IMPORTANCE_SAMPLES + 1)
    with pytest.raises(ValueError, match="labels=None"):
        model.log_likelihood(x, labels=torch.zeros(2, dtype=torch.long))
    assert torch.equal(model.log_likelihood(x), -sum(model.likelihood_bound(x)))


def test_push_to_hub_is_transformers_without_a_registered_publisher(monkeypatch):
    """The model layer calls the publisher the package registers; with none it is transformers' push."""
    from transformers import PreTrainedModel

    model = families.get("vae").model_class(tiny_config("vae"))
    calls = []
    monkeypatch.setattr(type(model), "publisher", None)
    monkeypatch.setattr(PreTrainedModel, "push_to_hub", lambda self, repo_id, **kw: calls.append(("transformers", repo_id)))
    model.push_to_hub("alice/a")
    monkeypatch.setattr(type(model), "publisher", staticmethod(lambda m, repo_id, **kw: calls.append(("hf_vae", repo_id))))
    model.push_to_hub("alice/b")
    assert calls == [("transformers", "alice/a"), ("hf_vae", "alice/b")]


def test_the_klae_key_rules_read_both_ways_give_back_every_name():
    """One table renames latent-diffusion keys to hf_vae's and back: a round trip is the identity, and the names
    are those of the module's table (SD-1.x shape: 4 resolutions, 2 ResNet blocks each)."""
    from hf_vae import KLAEConfig, KLAEModel
    from hf_vae.klae_conversion import _hf_key_to_ldm, _ldm_key_to_hf

    with torch.device("meta"):
        model = KLAEModel(KLAEConfig(block_out_channels=[128, 256, 512, 512], layers_per_block=2))
    keys = list(model.state_dict())
    ldm = [_hf_key_to_ldm(key, 4) for key in keys]
    assert len(set(ldm)) == len(keys)
    assert [_ldm_key_to_hf(key, 4) for key in ldm] == keys
    renamed = dict(zip(keys, ldm))
    assert renamed["encoder.down_blocks.1.resnets.0.conv_shortcut.weight"] == "encoder.down.1.block.0.nin_shortcut.weight"
    assert renamed["decoder.up_blocks.0.resnets.2.conv1.weight"] == "decoder.up.3.block.2.conv1.weight"
    assert renamed["decoder.up_blocks.2.upsamplers.0.conv.bias"] == "decoder.up.1.upsample.conv.bias"
    assert renamed["encoder.mid_block.resnets.1.norm1.weight"] == "encoder.mid.block_2.norm1.weight"
    assert renamed["encoder.mid_block.attentions.0.to_out.0.weight"] == "encoder.mid.attn_1.proj_out.weight"
    assert renamed["decoder.conv_norm_out.bias"] == "decoder.norm_out.bias"
    assert renamed["quant_conv.weight"] == "quant_conv.weight"


def test_a_model_too_large_for_memory_is_refused_before_its_weights_are_allocated():
    from hf_vae import VAEConfig, VAEModel

    with pytest.raises(ValueError, match=r"`latent_dim`=10000000000 has .* parameters.*expected a smaller latent_dim"):
        VAEModel(VAEConfig(image_size=8, hidden_dims=[16], latent_dim=10**10))
