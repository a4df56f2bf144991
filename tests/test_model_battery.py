"""The model battery: what every transformers model promises, checked on every registered family.

In the spirit of transformers' ModelTesterMixin, each check runs once per family of the table
(hf_vae/families.py: a new family gets the battery by its table entry and a tiny config), on the tiny configs of
tests/support/tiny_models.py with the conv backbone (the one with attention, norms and resolution stages). A
check that cannot apply to a family skips with the reason.

Checks that compare two runs of a model fix the posterior sample (`sample_posterior=False` where forward takes it,
and the same seed) unless the check is about the sampling itself, so that each check fails for its own reason.
"""

import inspect
import json
import math
import os

import pytest
import torch
import torch.nn as nn
from transformers import AutoModel

try:
    from tests.support.tiny_models import (FAMILY_NAMES, TINY, condition_name, example_inputs, family_classes,
                                           is_prior, tiny_config)
except ImportError:  # `tests` not importable as a package: pytest put tests/ itself on sys.path
    from support.tiny_models import (FAMILY_NAMES, TINY, condition_name, example_inputs, family_classes, is_prior,
                                     tiny_config)
from hf_vae import families as family_table

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH = 4


# ---- helpers ------------------------------------------------------------------------------------------------


def battery_config(name):
    return tiny_config(name) if is_prior(name) else tiny_config(name, "conv")


def build(name, **config_overrides):
    """A freshly initialised tiny model of family `name`, in eval mode, and its config."""
    torch.manual_seed(0)
    config = battery_config(name)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    return family_classes(name)[1](config).eval()


def fixed_sample(model):
    """forward's keyword that decodes the posterior mode instead of a sample (none for a prior)."""
    return {"sample_posterior": False} if "sample_posterior" in inspect.signature(model.forward).parameters else {}


def run(model, inputs, seed=0, **kwargs):
    """forward with the global RNG seeded, so that two calls draw the same noise if they draw any."""
    torch.manual_seed(seed)
    return model(**inputs, **kwargs)


def tensors_of(output, prefix=""):
    """{field: tensor} of a ModelOutput, tuple or tensor, nested tuples flattened to `field.i`; None fields left out."""
    if isinstance(output, torch.Tensor):
        return {prefix or "output": output}
    if hasattr(output, "items"):
        items = output.items()
    elif isinstance(output, (tuple, list)):
        items = ((str(i), value) for i, value in enumerate(output))
    else:
        return {}
    found = {}
    for key, value in items:
        if value is not None:
            found.update(tensors_of(value, f"{prefix}.{key}" if prefix else key))
    return found


def non_tensors_of(output, prefix=""):
    """{field: type name} of the values of an output that are neither tensors, None, nor tuples of tensors."""
    items = output.items() if hasattr(output, "items") else enumerate(output)
    found = {}
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, (tuple, list)):
            found.update(non_tensors_of(value, name))
        elif value is not None and not isinstance(value, torch.Tensor):
            found[name] = type(value).__name__
    return found


def assert_same_outputs(actual, expected, atol=1e-5, rtol=1e-4, what="outputs"):
    actual, expected = tensors_of(actual), tensors_of(expected)
    assert actual.keys() == expected.keys(), f"{what}: fields differ: {sorted(actual)} vs {sorted(expected)}"
    assert expected, f"{what}: no tensors to compare"
    for key in expected:
        torch.testing.assert_close(actual[key].float(), expected[key].float(), atol=atol, rtol=rtol,
                                   msg=lambda m, key=key: f"{what}, field {key!r}: {m}")


def needs_autoencoder(name):
    if is_prior(name):
        pytest.skip(f"{name} is a prior over code maps: it has no encode/decode")


def condition_kwargs(model, function, inputs):
    """The condition of `inputs`, if any, under the name `function` (the model's encode or decode) takes it."""
    forward_name = condition_name(type(model).forward)
    if forward_name not in inputs:
        return {}
    return {condition_name(function): inputs[forward_name]}


def images_of(inputs):
    return next(iter(inputs.values()))


def latents_for(model, inputs):
    """Posterior modes of the example images: latents `decode` takes."""
    with torch.no_grad():
        posterior = model.encode(images_of(inputs), **condition_kwargs(model, model.encode, inputs)).latent_dist
    return posterior if isinstance(posterior, torch.Tensor) else posterior.mode()


def encode_tensor(model, images, **condition):
    """The posterior's mode as a tensor from `encode` (diffusers' `latent_dist` is a distribution object)."""
    posterior = model.encode(images, **condition).latent_dist
    return posterior if isinstance(posterior, torch.Tensor) else posterior.mode()


class MethodModule(nn.Module):
    """`model.encode` (the posterior's mode) or `model.decode(...).sample` as a module returning a tensor, for
    torch.export and torch.compile."""

    def __init__(self, model, method, condition_name=None):
        super().__init__()
        self.model, self.method, self.condition_name = model, method, condition_name

    def forward(self, tensor, condition=None):
        kwargs = {} if condition is None else {self.condition_name: condition}
        if self.method == "encode":
            return encode_tensor(self.model, tensor, **kwargs)
        return self.model.decode(tensor, **kwargs).sample


def saved(model, path, **kwargs):
    model.save_pretrained(path, **kwargs)
    return path


families = pytest.mark.parametrize("name", FAMILY_NAMES)


def test_every_family_of_the_table_has_a_tiny_config():
    """The per-family tests run over the table; a family without a tiny config would fail each of them with the
    same KeyError, so this names the missing entries once."""
    missing = [name for name in family_table.FAMILIES if name not in TINY]
    assert not missing, f"families of the table without an entry in tests/support/tiny_models.py's TINY: {missing}"
    assert sorted(FAMILY_NAMES) == sorted(family_table.FAMILIES)


# ---- determinism and output structure ------------------------------------------------------------------------


@families
def test_eval_forward_is_deterministic(name):
    model = build(name)
    inputs = example_inputs(model.config, BATCH)
    with torch.no_grad():
        first = run(model, inputs, seed=1)
        second = run(model, inputs, seed=2)  # different global RNG state: eval mode must not draw from it
    assert_same_outputs(second, first, atol=0, rtol=0, what="two eval-mode forwards")


@families
def test_eval_forward_with_a_generator_is_reproducible(name):
    model = build(name)
    if "generator" not in inspect.signature(model.forward).parameters:
        pytest.skip(f"{type(model).__name__}.forward takes no generator: it draws no noise")
    inputs = example_inputs(model.config, BATCH)
    with torch.no_grad():
        first = model(**inputs, generator=torch.Generator().manual_seed(3))
        second = model(**inputs, generator=torch.Generator().manual_seed(3))
    assert_same_outputs(second, first, atol=0, rtol=0, what="two forwards with the same generator seed")


@families
def test_outputs_hold_tensors_only(name):
    model = build(name)
    inputs = example_inputs(model.config, BATCH)
    with torch.no_grad():
        outputs = {"forward": model(**inputs)}
        if not is_prior(name):
            outputs["decode"] = model.decode(latents_for(model, inputs), **condition_kwargs(model, model.decode, inputs))
    for what, output in outputs.items():
        assert not non_tensors_of(output), f"{what} returned non-tensor fields: {non_tensors_of(output)}"


@families
def test_main_input_name_is_forwards_first_argument(name):
    model_class = family_classes(name)[1]
    first = list(inspect.signature(model_class.forward).parameters)[1]
    # pipelines, the Trainer and transformers' tests feed the inputs under this name
    assert model_class.main_input_name == first, (model_class.main_input_name, first)


@families
def test_tuple_and_dict_outputs_agree(name):
    model = build(name)
    inputs = example_inputs(model.config, BATCH)
    with torch.no_grad():
        as_dict = run(model, inputs, **fixed_sample(model))
        as_tuple = run(model, inputs, return_dict=False, **fixed_sample(model))
    assert isinstance(as_tuple, tuple), f"return_dict=False gave a {type(as_tuple).__name__}"
    assert len(as_tuple) == len(as_dict.to_tuple())
    assert_same_outputs(as_tuple, as_dict.to_tuple(), atol=0, rtol=0, what="return_dict=False vs .to_tuple()")
    if is_prior(name):
        return
    images, latents = images_of(inputs), latents_for(model, inputs)
    with torch.no_grad():
        encoded = model.encode(images, return_dict=False, **condition_kwargs(model, model.encode, inputs))
        decoded = model.decode(latents, return_dict=False, **condition_kwargs(model, model.decode, inputs))
        decoded_dict = model.decode(latents, **condition_kwargs(model, model.decode, inputs))
    assert isinstance(encoded, tuple) and isinstance(decoded, tuple)
    torch.testing.assert_close(decoded[0], decoded_dict.sample)


@families
def test_batched_forward_equals_smaller_batches(name):
    model = build(name)
    inputs = example_inputs(model.config, BATCH)
    # Halves rather than single examples: MMD (InfoVAE, WAE) and the β-TCVAE's q(z) estimate need two examples.
    half = BATCH // 2
    with torch.no_grad():
        batched = tensors_of(run(model, inputs, **fixed_sample(model)))
        halves = [tensors_of(run(model, {k: v[i:i + half] for k, v in inputs.items()}, **fixed_sample(model)))
                  for i in (0, half)]
    # Per-example fields have the batch as their first dimension; the losses are batch averages (and MMD, TC or
    # a discriminator read the whole batch), so only those fields are compared.
    per_example = [k for k, v in batched.items() if v.dim() > 0 and v.shape[0] == BATCH
                   and all(k in h and h[k].dim() > 0 and h[k].shape[0] == half for h in halves)]
    assert per_example, f"no per-example output fields among {sorted(batched)}"
    for key in per_example:
        torch.testing.assert_close(torch.cat([h[key] for h in halves]), batched[key], atol=1e-5, rtol=1e-4,
                                   msg=lambda m, key=key: f"field {key!r}: {m}")


# ---- saving and loading --------------------------------------------------------------------------------------


@families
def test_save_and_load_give_the_same_model(name, tmp_path):
    model = build(name)
    inputs = example_inputs(model.config, BATCH)
    loaded = type(model).from_pretrained(saved(model, tmp_path / "model")).eval()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0, msg=f"{key} differs after loading")
    with torch.no_grad():
        assert_same_outputs(run(loaded, inputs, **fixed_sample(model)), run(model, inputs, **fixed_sample(model)),
                            atol=0, rtol=0, what="loaded vs saved model")


@families
def test_sharded_save_loads_back(name, tmp_path):
    model = build(name)
    path = saved(model, tmp_path / "sharded", max_shard_size="100KB")
    shards = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    assert len(shards) > 1, f"max_shard_size=100KB wrote {shards} for {model.num_parameters()} parameters"
    with open(path / "model.safetensors.index.json") as f:
        assert set(json.load(f)["weight_map"].values()) == set(shards)
    loaded = type(model).from_pretrained(path).eval()
    inputs = example_inputs(model.config, BATCH)
    with torch.no_grad():
        assert_same_outputs(run(loaded, inputs, **fixed_sample(model)), run(model, inputs, **fixed_sample(model)),
                            atol=0, rtol=0, what="sharded checkpoint vs saved model")


@families
def test_low_cpu_mem_usage_loading(name, tmp_path):
    model = build(name)
    loaded = type(model).from_pretrained(saved(model, tmp_path / "model"), low_cpu_mem_usage=True).eval()
    assert not any(p.is_meta for p in loaded.parameters())
    assert not any(b.is_meta for b in loaded.buffers())
    inputs = example_inputs(model.config, BATCH)
    with torch.no_grad():
        assert_same_outputs(run(loaded, inputs, **fixed_sample(model)), run(model, inputs, **fixed_sample(model)),
                            atol=0, rtol=0, what="low_cpu_mem_usage load vs saved model")


@families
def test_from_pretrained_without_a_path_takes_config_and_state_dict(name):
    model = build(name)
    loaded = type(model).from_pretrained(None, config=model.config, state_dict=model.state_dict()).eval()
    inputs = example_inputs(model.config, BATCH)
    with torch.no_grad():
        assert_same_outputs(run(loaded, inputs, **fixed_sample(model)), run(model, inputs, **fixed_sample(model)),
                            atol=0, rtol=0, what="from_pretrained(None, config=, state_dict=) vs the source model")


@families
@pytest.mark.parametrize("dtype_argument", ["dtype", "torch_dtype"])
def test_loads_in_bfloat16(name, dtype_argument, tmp_path):
    model = build(name)
    loaded = type(model).from_pretrained(saved(model, tmp_path / "model"), **{dtype_argument: torch.bfloat16}).eval()
    keep_fp32 = tuple(getattr(loaded, "_keep_in_fp32_modules", None) or ())
    wrong = {n: p.dtype for n, p in loaded.named_parameters()
             if p.dtype != torch.bfloat16 and not any(k in n for k in keep_fp32)}
    assert not wrong, f"parameters not loaded in bfloat16: {wrong}"
    assert loaded.dtype == torch.bfloat16
    inputs = example_inputs(model.config, BATCH)
    with torch.no_grad():
        reference = tensors_of(run(model, inputs, **fixed_sample(model)))
        output = tensors_of(run(loaded, inputs, **fixed_sample(model)))
    assert output.keys() == reference.keys()
    for key, value in output.items():
        assert value.is_floating_point() is reference[key].is_floating_point(), key
        if value.is_floating_point():
            assert torch.isfinite(value).all(), f"{key} is not finite in bfloat16"
    # bfloat16 keeps 8 bits of mantissa: the loss agrees with float32's to about a percent
    loss = output.get("loss", next(iter(output.values())))
    reference_loss = reference.get("loss", next(iter(reference.values())))
    torch.testing.assert_close(loss.float(), reference_loss, rtol=0.05, atol=0.05)


@families
def test_device_map_cpu(name, tmp_path):
    model = build(name)
    loaded = type(model).from_pretrained(saved(model, tmp_path / "model"), device_map={"": "cpu"}).eval()
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    inputs = example_inputs(model.config, BATCH)
    with torch.no_grad():
        assert_same_outputs(run(loaded, inputs, **fixed_sample(model)), run(model, inputs, **fixed_sample(model)),
                            atol=0, rtol=0, what="device_map={'': 'cpu'} vs saved model")


def offloaded(model, tmp_path):
    """`model` loaded with device_map="auto" and too little CPU memory for all of it, so that accelerate offloads
    the rest to disk and runs it through its offload hooks (the path that a GPU with too little memory takes)."""
    path = saved(model, tmp_path / "model")
    budget = int(model.num_parameters() * 4 * 0.3)  # 30% of the float32 weights fit in "cpu" memory
    loaded = type(model).from_pretrained(path, device_map="auto", max_memory={"cpu": budget},
                                         offload_folder=str(tmp_path / "offload")).eval()
    placements = set(getattr(loaded, "hf_device_map", {}).values())
    assert "disk" in placements, f"nothing was offloaded: {getattr(loaded, 'hf_device_map', None)}"
    return loaded


@pytest.mark.slow
@families
def test_device_map_auto_with_disk_offload_keeps_outputs(name, tmp_path):
    model = build(name)
    assert model._no_split_modules, (
        f"{type(model).__name__}._no_split_modules is {model._no_split_modules!r}: device_map='auto' may then "
        f"split any block (a ResNet block's convolutions, an attention's projections) across devices")
    loaded = offloaded(model, tmp_path)
    no_split = set(model._no_split_modules)
    split = [key for key in loaded.hf_device_map
             if any(type(loaded.get_submodule(parent)).__name__ in no_split
                    for parent in (key.rsplit(".", i)[0] for i in range(1, key.count(".") + 1)))]
    assert not split, f"device_map splits modules listed in _no_split_modules: {split}"
    inputs = example_inputs(model.config, BATCH)
    with torch.no_grad():
        assert_same_outputs(run(loaded, inputs, **fixed_sample(model)), run(model, inputs, **fixed_sample(model)),
                            what="forward, offloaded vs in memory")


@pytest.mark.slow
@families
def test_encode_and_decode_with_disk_offload(name, tmp_path):
    needs_autoencoder(name)
    model = build(name)
    loaded = offloaded(model, tmp_path)
    inputs = example_inputs(model.config, BATCH)
    images, latents = images_of(inputs), latents_for(model, inputs)
    with torch.no_grad():
        torch.testing.assert_close(encode_tensor(loaded, images, **condition_kwargs(model, model.encode, inputs)),
                                   encode_tensor(model, images, **condition_kwargs(model, model.encode, inputs)))
        torch.testing.assert_close(
            loaded.decode(latents, **condition_kwargs(model, model.decode, inputs)).sample,
            model.decode(latents, **condition_kwargs(model, model.decode, inputs)).sample)


# ---- training ------------------------------------------------------------------------------------------------


def loss_and_gradients(model, inputs):
    model.train()
    model.zero_grad(set_to_none=True)
    # A diffusers-shaped forward (the KLAE's) computes its objective only when asked, as CLIP's does
    asks = {"return_loss": True} if "return_loss" in inspect.signature(model.forward).parameters else {}
    loss = run(model, inputs, seed=5, **asks).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@families
def test_training_loss_reaches_every_trainable_parameter(name):
    model = build(name)
    loss, gradients = loss_and_gradients(model, example_inputs(model.config, BATCH))
    assert torch.isfinite(loss)
    missing = sorted(n for n, g in gradients.items() if g is None)
    assert not missing, f"no gradient reaches {missing}"
    zero = sorted(n for n, g in gradients.items() if not g.abs().sum() > 0)
    assert not zero, f"the gradient is exactly zero for {zero}"
    assert all(torch.isfinite(g).all() for g in gradients.values())


@families
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(name):
    model = build(name)
    inputs = example_inputs(model.config, BATCH)
    loss, gradients = loss_and_gradients(model, inputs)
    from transformers.modeling_layers import GradientCheckpointingLayer

    # transformers' checkpointing (and its tests) act on the GradientCheckpointingLayer blocks of a model
    layers = [n for n, m in model.named_modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers, f"{type(model).__name__} has no GradientCheckpointingLayer for gradient_checkpointing_enable()"
    model.gradient_checkpointing_enable()
    checkpointed = [n for n, m in model.named_modules() if getattr(m, "gradient_checkpointing", False)]
    assert checkpointed, "gradient_checkpointing_enable() switched on no module"
    assert model.is_gradient_checkpointing
    loss_checkpointed, gradients_checkpointed = loss_and_gradients(model, inputs)
    torch.testing.assert_close(loss_checkpointed, loss)
    for key, value in gradients.items():
        torch.testing.assert_close(gradients_checkpointed[key], value, msg=lambda m, key=key: f"grad of {key}: {m}")
    model.gradient_checkpointing_disable()
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


@families
def test_trainer_evaluate_reports_eval_loss(name, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = build(name)
    inputs = example_inputs(model.config, 6)
    dataset = [{key: value[i] for key, value in inputs.items()} for i in range(6)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=3, report_to=[], use_cpu=True,
                             dataloader_num_workers=0, disable_tqdm=True)
    metrics = Trainer(model=model, args=args, eval_dataset=dataset).evaluate()
    assert "eval_loss" in metrics, f"Trainer.evaluate() reported {sorted(metrics)}"
    assert math.isfinite(metrics["eval_loss"])
    with torch.no_grad():
        halves = [run(model.eval(), {k: v[i:i + 3] for k, v in inputs.items()}, **fixed_sample(model)).loss
                  for i in (0, 3)]
    assert metrics["eval_loss"] == pytest.approx(torch.stack(halves).mean().item(), rel=1e-4)


# ---- initialisation ------------------------------------------------------------------------------------------


@families
def test_init_weights_after_meta_construction_initialises_every_tensor(name):
    config_class, model_class = family_classes(name)
    config = battery_config(name)
    with torch.device("meta"):
        model = model_class(config)
    model.to_empty(device="cpu")
    # to_empty leaves whatever the allocator returned; poison it so that a tensor init_weights skips is visible
    sentinel = -123456789
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.fill_(float("nan") if tensor.is_floating_point() else sentinel)
    for module in model.modules():
        module.__dict__.pop("_is_hf_initialized", None)
    model.init_weights()
    untouched = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
                 if (t.is_floating_point() and not torch.isfinite(t).all())
                 or (not t.is_floating_point() and (t == sentinel).any())]
    assert not untouched, f"init_weights() left these uninitialised: {untouched}"
    reference = model_class(config)
    for key, value in reference.named_buffers():
        torch.testing.assert_close(dict(model.named_buffers())[key], value, msg=lambda m, key=key: f"buffer {key}: {m}")


# ---- attention and hidden states -----------------------------------------------------------------------------


@families
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attn_implementation_is_accepted_and_agrees(name, implementation):
    config_class, model_class = family_classes(name)
    torch.manual_seed(0)
    model = AutoModel.from_config(battery_config(name), attn_implementation=implementation).eval()
    assert model.config._attn_implementation == implementation
    reference = build(name)
    model.load_state_dict(reference.state_dict())
    inputs = example_inputs(model.config, BATCH)
    with torch.no_grad():
        assert_same_outputs(run(model, inputs, **fixed_sample(model)), run(reference, inputs, **fixed_sample(model)),
                            what=f"attn_implementation={implementation!r} vs the default")


@families
def test_output_hidden_states_returns_the_encoder_and_decoder_stages(name):
    model = build(name)
    inputs = example_inputs(model.config, BATCH)
    with torch.no_grad():
        plain = model(**inputs, **fixed_sample(model))
        output = model(**inputs, output_hidden_states=True, **fixed_sample(model))
    fields = [k for k in output.keys() if "hidden_states" in k]
    assert fields, f"output_hidden_states=True returned no hidden states among {list(output.keys())}"
    if not is_prior(name):
        assert any("encoder" in k for k in fields) and any("decoder" in k for k in fields), fields
    for key in fields:
        stages = output[key]
        assert isinstance(stages, tuple) and len(stages) >= 2, f"{key}: {type(stages).__name__}"
        assert all(isinstance(s, torch.Tensor) and s.shape[0] == BATCH for s in stages), key
        assert plain.get(key) is None, f"{key} returned without output_hidden_states=True"


# ---- torch.export and torch.compile --------------------------------------------------------------------------


def compiled_and_eager(function, *args, **kwargs):
    torch._dynamo.reset()
    compiled = torch.compile(function, fullgraph=True, backend="eager")
    with torch.no_grad():
        return compiled(*args, **kwargs), function(*args, **kwargs)


def method_module(name, method):
    """`encode` or `decode` of a fresh model of the family as a module of its own (eval mode), with its tensor
    argument and the condition keywords the method takes."""
    needs_autoencoder(name)
    model = build(name)
    inputs = example_inputs(model.config, BATCH)
    argument = images_of(inputs) if method == "encode" else latents_for(model, inputs)
    condition = condition_kwargs(model, getattr(model, method), inputs)
    return MethodModule(model, method, *condition.keys()).eval(), argument, condition


@pytest.mark.slow
@families
def test_forward_compiles_without_graph_breaks(name):
    model = build(name)
    inputs = example_inputs(model.config, BATCH)
    compiled, eager = compiled_and_eager(model, **inputs, **fixed_sample(model))
    assert_same_outputs(compiled, eager, what="torch.compile(fullgraph=True) vs eager forward")


@pytest.mark.slow
@families
@pytest.mark.parametrize("method", ["encode", "decode"])
def test_encode_and_decode_compile_without_graph_breaks(name, method):
    module, argument, condition = method_module(name, method)
    compiled, eager = compiled_and_eager(module, argument, *condition.values())
    torch.testing.assert_close(compiled, eager)


@pytest.mark.slow
@families
def test_forward_exports(name):
    model = build(name)
    inputs = example_inputs(model.config, BATCH)
    program = torch.export.export(model, args=(), kwargs={**inputs, **fixed_sample(model)})
    with torch.no_grad():
        assert_same_outputs(program.module()(**inputs, **fixed_sample(model)), model(**inputs, **fixed_sample(model)),
                            what="exported vs eager forward")


@pytest.mark.slow
@families
@pytest.mark.parametrize("method", ["encode", "decode"])
def test_encode_and_decode_export(name, method):
    module, argument, condition = method_module(name, method)
    program = torch.export.export(module, args=(argument, *condition.values()))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(argument, *condition.values()), module(argument, *condition.values()))
