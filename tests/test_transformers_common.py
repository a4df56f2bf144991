"""transformers' own common tests (`ModelTesterMixin`, `ConfigTester`) over every registered family.

The transformers wheel ships no tests, so this module fetches the source distribution of the installed version
from PyPI once (cached under ~/.cache/hf_vae/upstream/, or $HF_VAE_UPSTREAM_CACHE), extracts the two common-test
files into a temporary package and imports them from there; nothing upstream is copied into this repository.
Without network access (and no cached copy) the module is skipped with the reason.

The sdist of transformers 5.x carries only the top-level files of tests/: the subpackages that
test_modeling_common.py and test_configuration_common.py import from (exporters/, generation/, utils/) are
missing, so this module stands in for the three names they import:

* `ExportTesterMixin` (tests/exporters/test_export.py): an empty mixin, so upstream's torch.export tests do not
  run here (tests/test_model_battery.py exports forward, encode and decode of every family);
* `GenerationTesterMixin` (tests/generation/test_utils.py): an empty class; ModelTesterMixin only checks that a
  model which cannot generate does not inherit it, and none of ours can (`can_generate()` is False);
* `config_common_kwargs` (tests/utils/test_configuration_utils.py): our own dict of PretrainedConfig arguments
  set to non-default values, which ConfigTester checks every config keeps.

Each family is plugged in as an upstream vision model is: a ModelTester whose
`prepare_config_and_inputs_for_common` returns a tiny config (tests/support/tiny_models.py) and the inputs, and a
`unittest.TestCase` with the standard image-model flags. A test that cannot apply to an autoencoder is switched
off by the mixin's flag, or skipped with the reason.
"""

import importlib
import inspect
import os
import subprocess
import sys
import tarfile
import tempfile
import unittest
from pathlib import Path

import pytest
import torch
import transformers

try:
    from tests.support.tiny_models import (BATCH_STATISTIC_FAMILIES, FAMILY_NAMES, example_inputs, family_classes,
                                           is_prior, tiny_config)
except ImportError:  # `tests` not importable as a package: pytest put tests/ itself on sys.path
    from support.tiny_models import (BATCH_STATISTIC_FAMILIES, FAMILY_NAMES, example_inputs, family_classes,
                                     is_prior, tiny_config)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

UPSTREAM_FILES = ("tests/test_modeling_common.py", "tests/test_configuration_common.py")

#: stand-ins for the modules the sdist lacks (see the module docstring); written by us, not copied
STAND_INS = {
    "exporters/test_export.py": '"""Stand-in: the sdist lacks tests/exporters."""\n\n\nclass ExportTesterMixin:\n    pass\n',
    "generation/test_utils.py": '"""Stand-in: the sdist lacks tests/generation."""\n\n\nclass GenerationTesterMixin:\n    pass\n',
    "utils/test_configuration_utils.py": (
        '"""Stand-in: the sdist lacks tests/utils. PretrainedConfig arguments at non-default values."""\n\n'
        'config_common_kwargs = {"return_dict": False, "output_hidden_states": True, "dtype": "float16",\n'
        '                        "chunk_size_feed_forward": 5, "architectures": ["SomeModel"],\n'
        '                        "id2label": {0: "label"}, "label2id": {"label": "0"}, "problem_type": "regression"}\n'
    ),
}


def upstream_cache() -> Path:
    return Path(os.environ.get("HF_VAE_UPSTREAM_CACHE", Path.home() / ".cache" / "hf_vae" / "upstream"))


def transformers_sdist() -> Path:
    """The installed transformers version's source distribution, downloaded from PyPI on first use."""
    version = transformers.__version__
    archive = upstream_cache() / f"transformers-{version}.tar.gz"
    if archive.is_file():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               f"transformers=={version}", "-d", str(archive.parent)],
                              capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip download of the transformers {version} sdist timed out (no network?)", allow_module_level=True)
    if done.returncode != 0 or not archive.is_file():
        pytest.skip(f"could not download the transformers {version} sdist from PyPI (no network?): "
                    f"{done.stderr.strip().splitlines()[-1:] or done.returncode}", allow_module_level=True)
    return archive


def import_upstream_common_tests():
    """(test_modeling_common, test_configuration_common) of the installed transformers, from its sdist."""
    version = transformers.__version__
    package = "transformers_upstream_tests_" + version.replace(".", "_").replace("-", "_")
    root = Path(tempfile.mkdtemp(prefix="hf_vae_upstream_"))
    with tarfile.open(transformers_sdist()) as archive:
        prefix = f"transformers-{version}/"
        members = {m.name[len(prefix):]: m for m in archive.getmembers() if m.name.startswith(prefix)}
        missing = [name for name in UPSTREAM_FILES if name not in members]
        if missing:
            pytest.skip(f"the transformers {version} sdist lacks {missing}", allow_module_level=True)
        for name in UPSTREAM_FILES:
            target = root / package / Path(name).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(members[name]).read())
    for relative, text in STAND_INS.items():
        target = root / package / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.parent / "__init__.py").touch()
        target.write_text(text)
    (root / package / "__init__.py").touch()
    sys.path.insert(0, str(root))
    return (importlib.import_module(f"{package}.test_modeling_common"),
            importlib.import_module(f"{package}.test_configuration_common"))


pytest.importorskip("parameterized", reason="transformers' common tests import `parameterized` (the test extra)")
modeling_common, configuration_common = import_upstream_common_tests()
ModelTesterMixin, ConfigTester = modeling_common.ModelTesterMixin, configuration_common.ConfigTester


class FamilyModelTester:
    """What ModelTesterMixin asks of a model tester, for one family's tiny config."""

    batch_size = 3
    is_training = True

    def __init__(self, parent, name):
        self.parent, self.name = parent, name
        config = self.get_config()
        if is_prior(name):
            self.seq_length = config.num_codes
            self.hidden_size, self.num_hidden_layers, self.num_attention_heads = config.n_embd, config.n_layer, config.n_head
        else:
            self.image_size, self.num_channels = config.data_shape[-1], config.data_shape[0]

    def get_config(self):
        return tiny_config(self.name) if is_prior(self.name) else tiny_config(self.name, "conv")

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        return config, example_inputs(config, self.batch_size)


class FamilyTestMixin(ModelTesterMixin):
    """ModelTesterMixin with the flags of an image model that has no token embeddings (and, for an autoencoder, no
    attention outputs)."""

    family = None
    test_resize_embeddings = False  # no token embeddings: images in, images out
    test_resize_position_embeddings = False
    test_mismatched_shapes = False  # no classification head whose num_labels could change
    @property
    def has_attentions(self):
        # An autoencoder's only attention is the conv mid block's, which returns no attention weights
        # (output_attentions); the VQ prior is a GPT-2, whose attention outputs apply.
        return is_prior(self.family)

    is_encoder_decoder = False  # transformers' meaning: a seq2seq text model with cross-attention

    def setUp(self):
        self.model_tester = FamilyModelTester(self, self.family)
        self.all_model_classes = (family_classes(self.family)[1],)
        self.config_tester = ConfigTester(self, config_class=family_classes(self.family)[0], has_text_modality=False,
                                          common_properties=[], **self._config_kwargs())

    def _config_kwargs(self):
        """The tiny config's own arguments (ConfigTester builds the config from them)."""
        config = self.model_tester.get_config()
        own = inspect.signature(type(config).__init__).parameters
        return {k: v for k, v in config.to_dict().items() if k in own and k != "kwargs"}

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_hidden_states_output(self):
        if not is_prior(self.family):
            self.skipTest("upstream's check expects (B, seq_length, hidden_size) token states; an autoencoder's "
                          "stages are (B, C, H, W) maps (tests/test_model_battery.py checks them)")
        super().test_hidden_states_output()

    def test_retain_grad_hidden_states_attentions(self):
        if not is_prior(self.family):
            self.skipTest("reads outputs[0] as a hidden state and needs attention outputs; neither applies to an "
                          "autoencoder's output (tests/test_model_battery.py checks the stages)")
        super().test_retain_grad_hidden_states_attentions()

    def test_batching_equivalence(self):
        if self.family in BATCH_STATISTIC_FAMILIES:
            self.skipTest("compares a batch with single examples, and this family's objective is a statistic of "
                          "the batch (MMD or the minibatch estimate of q(z)): its forward refuses one example "
                          "(tests/test_model_battery.py compares halves of a batch)")
        super().test_batching_equivalence()

    def test_training_gradient_checkpointing_use_reentrant_true(self):
        if not family_classes(self.family)[1].supports_reentrant_checkpointing:
            self.skipTest("this family differentiates through its networks inside forward (torch.autograd.grad), "
                          "which reentrant checkpointing does not allow: it refuses use_reentrant=True "
                          "(tests/test_piwae.py), and non-reentrant checkpointing is tested above")
        super().test_training_gradient_checkpointing_use_reentrant_true()

    def test_inputs_embeds(self):
        self.skipTest("no token embeddings: the inputs are images (or code maps)")

    def test_inputs_embeds_matches_input_ids(self):
        self.skipTest("no token embeddings: the inputs are images (or code maps)")

    def test_model_get_set_embeddings(self):
        if not is_prior(self.family):
            self.skipTest("an autoencoder has no input embeddings to get or set")
        super().test_model_get_set_embeddings()


def family_test_case(name):
    case = type(f"Test{family_classes(name)[1].__name__}Common", (FamilyTestMixin, unittest.TestCase),
                {"family": name, "__module__": __name__,
                 "__doc__": f"transformers' ModelTesterMixin and ConfigTester on the {name} family."})
    return case


for _name in FAMILY_NAMES:
    _case = family_test_case(_name)
    globals()[_case.__name__] = _case
del _name, _case
