"""Loading and publishing, as the model layer does them: what `from_pretrained` refuses, and where `push_to_hub`
hands over.

- `from_pretrained` reads safetensors only (a pickled `pytorch_model.bin` can run code when loaded), and names the
  problem of a missing folder, a folder of another model type and a truncated weights file in one line.
- `push_to_hub` is transformers' unless a publisher is registered (`AutoencoderPreTrainedModel.publisher`): the
  hf_vae package registers one that adds the model card and preview. The model layer imports nothing above it.
- `can_generate` is False, so a model loaded with `trust_remote_code` behaves like the installed class.
"""

import json
import os
from typing import Callable, Optional


class PretrainedIOMixin:
    """`from_pretrained`, `push_to_hub` and `can_generate` of the autoencoders (mixed in before PreTrainedModel)."""

    #: `publisher(model, repo_id, token=, private=, revision=, commit_message=)` that `push_to_hub` calls when set;
    #: None: transformers' own `push_to_hub`
    publisher: Optional[Callable] = None

    @classmethod
    def can_generate(cls) -> bool:
        """False: `generate` decodes draws from the prior p(z); it is not transformers' token generation.

        transformers' remote-code loader (`add_generation_mixin_to_remote_model` in `models/auto/auto_factory.py`)
        mixes `GenerationMixin` into every loaded class that defines a `generate` of its own, and
        `PreTrainedModel.can_generate()` then answers True because `GenerationMixin` is among the bases. Everything
        generation-specific keys off this answer: a `generation_config` built in `__init__`, the probe for
        `custom_generate/generate.py` in `from_pretrained`, and the `generation_config.json` that `save_pretrained`
        writes. Answering False here keeps a model loaded with `trust_remote_code=True` like the installed class
        (our `generate` comes first in the method resolution order, so it is still the one called).
        """
        return False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained`, from safetensors only (a pickled `pytorch_model.bin` is never read),
        with clear errors for a missing local folder and for a folder that holds another kind of model."""
        if kwargs.get("use_safetensors") is False:
            raise ValueError(f"Expected use_safetensors None or True: {cls.__name__} loads weights from safetensors "
                             f"only (pickled .bin files can run code), got use_safetensors=False.")
        kwargs["use_safetensors"] = True
        if pretrained_model_name_or_path is None:  # from `config=` and `state_dict=` alone: no file to check
            return super().from_pretrained(None, *model_args, **kwargs)
        path = os.fspath(pretrained_model_name_or_path)
        local = os.path.isdir(path)
        looks_local = path.startswith((".", "~", "/")) or path.count("/") > 1 or "\\" in path  # not 'user/name'
        if not local and looks_local:
            raise FileNotFoundError(f"{path}: no such folder; expected a folder written by save_pretrained or a Hub "
                                    f"repo id such as 'user/model'.")
        if local:
            _check_model_type(cls, os.path.join(path, kwargs.get("subfolder") or "", "config.json"))
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except Exception as error:
            # safetensors' own errors ("incomplete metadata, file not fully covered") do not say which file.
            if local and type(error).__name__ == "SafetensorError":
                folder = os.path.join(path, kwargs.get("subfolder") or "")
                names = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
                raise ValueError(f"{os.path.join(folder, names[0]) if len(names) == 1 else folder}: a truncated or "
                                 f"corrupt safetensors file ({error}); expected the complete file written by "
                                 f"save_pretrained.") from None
            raise

    def push_to_hub(self, repo_id: str, *, commit_message: Optional[str] = None, private: Optional[bool] = None,
                    token=None, revision: Optional[str] = None, **kwargs):
        """Push to the Hub in one commit: weights, config, model code, and, where hf_vae is installed, a model card
        with a preview image (and a diffusers copy under vae/ for the KLAE).

        Where hf_vae is not installed (a model loaded with trust_remote_code) this is transformers' push_to_hub.
        Options that only transformers' push knows (create_pr, max_shard_size, tags, ...) also go there.
        """
        publisher = type(self).publisher
        if publisher is None or kwargs:
            return super().push_to_hub(repo_id, commit_message=commit_message, private=private, token=token,
                                       revision=revision, **kwargs)
        return publisher(self, repo_id, token=token, private=bool(private), revision=revision,
                         commit_message=commit_message)


def _check_model_type(cls, config_file: str) -> None:
    """A local config.json of another model type is one clear error, not a model of the wrong class."""
    if not os.path.isfile(config_file) or cls.config_class is None:
        return
    try:
        with open(config_file, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (ValueError, UnicodeDecodeError, AttributeError) as error:
        raise ValueError(f"{config_file}: not a valid JSON object ({error}).") from None
    expected = getattr(cls.config_class, "model_type", None)
    if model_type is not None and expected and model_type != expected:
        raise ValueError(f"{config_file} describes a {model_type!r} model; expected a {expected!r} model "
                         f"for {cls.__name__} (load it with AutoModel.from_pretrained).")
