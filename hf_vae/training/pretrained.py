"""Starting a training run from a pretrained autoencoder (`--pretrained_model_name_or_path SRC`).

    python scripts/train.py --pretrained_model_name_or_path stabilityai/sd-vae-ft-ema --dataset my_images/ \\
        --train_modules decoder --image_size 256 --ema_decay 0.9999

`SRC` is recognised by what it holds, never by its name:

    format      what is found                                                     becomes
    hf_vae      config.json with an hf_vae `model_type` (+ model.safetensors)    that variant
    diffusers   config.json with `_class_name: AutoencoderKL`                     the KLAE
                (+ diffusion_pytorch_model.safetensors; `--pretrained_subfolder vae` inside a pipeline)
    diffusers   config.json with `_class_name: VQModel`                           the VQ-VAE (quant convs, β on
                (+ diffusion_pytorch_model.safetensors; `--pretrained_subfolder vqvae`)   the codebook term kept)
    ldm         one `.safetensors` file of latent-diffusion (or diffusers) names,  the KLAE
                optionally a whole SD checkpoint under `first_stage_model.`

A local folder, a local file or a Hub repo id (`--pretrained_revision` pins a branch or commit). The
architecture of an LDM file is read off its key shapes (`hf_vae.klae_conversion.infer_config_from_state_dict`:
channels, depth, latent channels, quant convs, attention; GroupNorm groups 32 as in latent diffusion), or given by
`--pretrained_config FILE` (a diffusers / hf_vae config.json, or latent diffusion's YAML with its `ddconfig`).

The run's model config is the source's config. Flags that only change the objective or how the model is used
(`kl_weight`, `beta`, `commitment_cost`, `scaling_factor`, the image size of a fully convolutional model, ...)
apply; flags that would change the architecture (channels, latent size, codebook size, ...) are refused with
the field and both values, since the pretrained weights would not fit. A `--model` that names another variant
than the source's is refused too. Every check runs before the trainer writes anything.

`--train_modules decoder` freezes the encoder side (encoder and `quant_conv`; for the VQ-VAE the codebook too):
the latent space stays exactly the pretrained one, so every diffusion model trained on its latents keeps working
(how stabilityai's sd-vae-ft-ema / ft-mse were made). Frozen weights are excluded from the optimiser (so from
weight decay), are never changed by the EMA (an average of identical values is that value, bit for bit) and stay
in eval mode (no dropout, no codebook EMA updates), so the published encoder is bit-identical to the source's.
"""

from __future__ import annotations

import json
import os
import re
import types
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from ..families import DIFFUSERS_COMPONENT, autoencoders, get as get_family, importing, of as family_of

#: What `--train_modules` accepts.
TRAIN_MODULES = ("all", "decoder")

#: Config fields that change the objective or the use of the model, not the shapes of its weights: a fine-tune
#: may set them. (Everything else must equal the source's value.)
OBJECTIVE_FIELDS = frozenset({
    "kl_weight", "pixel_loss", "beta", "use_capacity", "gamma", "capacity_max", "capacity_steps", "commitment_cost",
    "beta_on_codebook", "ema_decay", "ema_epsilon", "dead_code_threshold", "kmeans_init", "likelihood_scale",
    "dropout", "scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast",
})
#: The image size of a fully convolutional model (spatial latents) is free: the same weights run at any size.
SIZE_FIELDS = frozenset({"image_size", "sample_size"})

#: Modules frozen by `--train_modules decoder`: everything that computes q(z|x). The CVAE's class embedding feeds
#: the encoder as well as the decoder, so it is frozen too (q(z|x,c) must not move); the VQ-VAE's codebook is
#: part of its latent space.
ENCODER_SIDE = ("encoder", "quant_conv", "quantizer", "class_embedding")


#: What a Hub model repo id looks like ("name" or "owner/name"); anything else that is not on disk is not found.
_HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class PretrainedSourceError(ValueError):
    """The pretrained source cannot be used: not found, neither format, or not fitting the run's arguments."""


@dataclass
class PretrainedSource:
    """A resolved `--pretrained_model_name_or_path`: where the weights are, in which format, for which variant."""

    name_or_path: str
    format: str  # "hf_vae" | "diffusers" | "diffusers_vq" | "ldm"
    model: str  # the hf_vae family it loads into (its model_type)
    config: Any  # the source's hf_vae config (a PretrainedConfig)
    subfolder: Optional[str] = None
    revision: Optional[str] = None
    config_file: Optional[str] = None

    def describe(self) -> str:
        where = self.name_or_path + (f" (subfolder {self.subfolder!r})" if self.subfolder else "") + \
            (f" at revision {self.revision!r}" if self.revision else "")
        return f"{where}, {self.format} format, --model {self.model}"

    def record(self) -> Dict[str, Any]:
        """What training_args.json, metrics.json and the model card say about the source."""
        return {"name_or_path": self.name_or_path, "format": self.format, "model": self.model,
                "subfolder": self.subfolder, "revision": self.revision}

    def load(self, config=None):
        """The pretrained model with `config` (default: the source's): every weight loaded, nothing initialised.

        Raises PretrainedSourceError when the weights do not fit the config (missing, unexpected or mis-shaped
        keys, all listed).
        """
        config = config if config is not None else self.config
        model_class = get_family(self.model).model_class
        kwargs = {"config": config}
        if self.subfolder:
            kwargs["subfolder"] = self.subfolder
        if self.revision:
            kwargs["revision"] = self.revision
        try:
            if self.format == "diffusers_vq":
                model = _load_diffusers_vq(self, config)
            elif self.format == "hf_vae":
                self._check_weights_fit(config)
                model, info = model_class.from_pretrained(self.name_or_path, output_loading_info=True, **kwargs)
                problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys",
                                                                         "mismatched_keys", "error_msgs")}
                if problems:
                    raise PretrainedSourceError(
                        f"The weights of {self.describe()} do not fit its config ({type(config).__name__}): "
                        + "; ".join(f"{k.replace('_', ' ')}: {list(v)[:8]}" for k, v in problems.items()))
            else:
                model = model_class.from_pretrained(self.name_or_path, **kwargs)
        except PretrainedSourceError:
            raise
        except (ValueError, RuntimeError, OSError) as error:
            raise PretrainedSourceError(f"Could not load the weights of {self.describe()} into "
                                        f"{model_class.__name__}: {error}") from error
        model.config.name_or_path = self.name_or_path
        return model.float().train()

    def _check_weights_fit(self, config) -> None:
        """Compare the shapes in model.safetensors (read from its header, no tensor loaded) with the model of
        `config`, and name every missing, unexpected or mis-shaped weight."""
        import torch
        from safetensors import safe_open

        from ..klae_conversion import resolve_file

        hub_kwargs = {"revision": self.revision} if self.revision else {}
        weights_file = resolve_file(self.name_or_path, "model.safetensors", self.subfolder, hub_kwargs)
        if weights_file is None:  # sharded or missing: transformers' loader reports it
            return
        with safe_open(weights_file, framework="pt") as handle:
            found = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        with torch.device("meta"):
            model = get_family(self.model).model_class(config)
        problems = _fit_problems({key: tuple(value.shape) for key, value in model.state_dict().items()}, found)
        if problems:
            raise PretrainedSourceError(f"The weights in {weights_file} do not fit the config of {self.describe()}: "
                                        f"{problems}.")


def _fit_problems(expected: Mapping[str, tuple], found: Mapping[str, tuple], optional=()) -> str:
    """'' when `found` (name -> shape) has exactly the `expected` weights (those in `optional` may be absent),
    else every shape mismatch, missing and unexpected name, in one line."""
    missing = sorted(set(expected) - set(found) - set(optional))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [f"{key}: the config needs {tuple(expected[key])}, the file has {tuple(found[key])}"
                  for key in sorted(set(expected) & set(found)) if tuple(expected[key]) != tuple(found[key])]
    return "; ".join(f"{what} ({len(keys)}): {keys[:6]}" for what, keys in
                     (("shape mismatches", mismatched), ("missing", missing), ("unexpected", unexpected)) if keys)


# ------------------------------------------------------------------------------------------------------------
# Resolving the source
# ------------------------------------------------------------------------------------------------------------


def _autoencoder_names() -> List[str]:
    """The model_types a pretrained source may have: every autoencoder family's (its name)."""
    return [family.name for family in autoencoders()]


def _what_is_there(folder: str) -> str:
    entries = sorted(os.listdir(folder))
    shown = ", ".join(entries[:12]) + (", ..." if len(entries) > 12 else "")
    return f"[{shown}]" if entries else "nothing (an empty folder)"


def _neither_format(where: str, found: str) -> PretrainedSourceError:
    return PretrainedSourceError(
        f"--pretrained_model_name_or_path {where} is neither format: expected an hf_vae output folder or Hub repo "
        f"(config.json with an hf_vae model_type), a diffusers AutoencoderKL (config.json with _class_name "
        f"'AutoencoderKL'; --pretrained_subfolder vae inside a pipeline) or a latent-diffusion .safetensors file; "
        f"found {found}.")


def _hub_file(repo_id: str, filename: str, subfolder: Optional[str], revision: Optional[str]) -> str:
    """Download one file of a Hub repo, turning the client's errors into messages that say what was expected."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return hf_hub_download(repo_id, filename, subfolder=subfolder or None, revision=revision)
    except LocalEntryNotFoundError as error:  # offline (HF_HUB_OFFLINE=1 or no network) and not in the cache
        raise PretrainedSourceError(f"--pretrained_model_name_or_path {repo_id!r} is not a local path, and the Hub "
                                    f"repo of that name is neither in the local cache nor reachable (offline: "
                                    f"{error}).") from error
    except RevisionNotFoundError as error:
        raise PretrainedSourceError(f"--pretrained_revision {revision!r} does not exist in Hub repo {repo_id!r}: "
                                    f"expected a branch name or commit sha of that repo.") from error
    except RepositoryNotFoundError as error:
        raise PretrainedSourceError(f"--pretrained_model_name_or_path {repo_id!r} is neither a local path nor a Hub "
                                    f"repo this client can read (not found, or private without a token).") from error
    except EntryNotFoundError as error:
        files = _hub_listing(repo_id, revision)
        if subfolder and not any(f.startswith(subfolder.rstrip("/") + "/") for f in files):
            folders = sorted({f.split("/")[0] for f in files if "/" in f})
            raise PretrainedSourceError(f"--pretrained_subfolder {subfolder!r} does not exist in Hub repo "
                                        f"{repo_id!r}: expected one of its folders {folders}.") from error
        raise _neither_format(repr(repo_id) + (f" (subfolder {subfolder!r})" if subfolder else ""),
                              f"no {filename}; files {files[:12]}") from error


def _hub_listing(repo_id: str, revision: Optional[str]) -> List[str]:
    from huggingface_hub import HfApi

    try:
        return sorted(HfApi().list_repo_files(repo_id, revision=revision))
    except Exception:  # only used to explain another error; that error is what matters
        return []


def resolve_source(name_or_path: str, *, subfolder: Optional[str] = None, revision: Optional[str] = None,
                   config_file: Optional[str] = None) -> PretrainedSource:
    """Find out what `name_or_path` is (see the module docstring) and read its config; no weights are loaded.

    Raises:
        PretrainedSourceError: the path/repo/subfolder/revision does not exist, or holds neither format, or
            its config cannot be read. The message names what was found and what was expected.
    """
    from ..klae_conversion import config_from_diffusers, infer_config_from_state_dict, load_safetensors, to_hf_state_dict

    source = os.path.expanduser(os.fspath(name_or_path))
    if config_file is not None and not os.path.isfile(config_file):
        raise PretrainedSourceError(f"--pretrained_config {config_file!r} does not exist: expected a config.json "
                                    f"(diffusers or hf_vae) or latent diffusion's YAML.")
    if os.path.isfile(source):
        if not source.endswith(".safetensors"):
            raise _neither_format(repr(source), f"a file with suffix {os.path.splitext(source)[1]!r} (pickled "
                                                f"checkpoints are never loaded; convert them to .safetensors)")
        if subfolder:
            raise PretrainedSourceError(f"--pretrained_subfolder {subfolder!r} was given for the single file "
                                        f"{source!r}: expected a folder or Hub repo with that subfolder.")
        try:
            weights = to_hf_state_dict(load_safetensors(source))
            config = (config_from_file(config_file) if config_file is not None
                      else infer_config_from_state_dict(weights))
        except PretrainedSourceError:
            raise
        except ValueError as error:
            raise _neither_format(repr(source), f"weights that are not a KL autoencoder's ({error})") from error
        return PretrainedSource(source, "ldm", importing("ldm").name, config, config_file=config_file)

    if os.path.isdir(source):
        folder = os.path.join(source, subfolder) if subfolder else source
        if subfolder and not os.path.isdir(folder):
            subfolders = sorted(e for e in os.listdir(source) if os.path.isdir(os.path.join(source, e)))
            raise PretrainedSourceError(f"--pretrained_subfolder {subfolder!r} does not exist in {source!r}: "
                                        f"expected one of its folders {subfolders}.")
        if revision:
            raise PretrainedSourceError(f"--pretrained_revision {revision!r} was given for the local folder "
                                        f"{source!r}: revisions exist only for Hub repos.")
        config_path = os.path.join(folder, "config.json")
        if not os.path.isfile(config_path):
            hint = (f" (it has a {DIFFUSERS_COMPONENT}/ folder: add --pretrained_subfolder {DIFFUSERS_COMPONENT})"
                    if os.path.isdir(os.path.join(folder, DIFFUSERS_COMPONENT)) else "")
            raise _neither_format(repr(folder), f"no config.json but {_what_is_there(folder)}{hint}")
    else:
        if not _HUB_REPO_ID.match(source):
            raise PretrainedSourceError(f"--pretrained_model_name_or_path {source!r} does not exist: expected a "
                                        f"local folder or .safetensors file, or a Hub repo id 'owner/name'.")
        config_path = _hub_file(source, "config.json", subfolder, revision)
    try:
        with open(config_path, encoding="utf-8") as handle:
            config_dict = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise _neither_format(repr(source), f"a config.json that is not JSON ({error})") from error
    if not isinstance(config_dict, dict):
        raise _neither_format(repr(source), f"a config.json holding {type(config_dict).__name__}")
    names = _autoencoder_names()
    if "model_type" in config_dict:
        model_type = config_dict["model_type"]
        if model_type not in names:
            raise _neither_format(repr(source), f"config.json of model_type {model_type!r} (hf_vae's are "
                                                f"{sorted(names)})")
        config = get_family(model_type).config_class.from_dict(dict(config_dict))
        return PretrainedSource(source, "hf_vae", model_type, config, subfolder, revision, config_file)
    class_name = config_dict.get("_class_name")
    if class_name == "VQModel":
        from ..vq_conversion import vq_config_from_diffusers

        try:
            config = vq_config_from_diffusers(config_dict)
        except ValueError as error:
            raise PretrainedSourceError(f"{source!r} is a diffusers VQModel that hf_vae cannot represent: {error}") \
                from error
        return PretrainedSource(source, "diffusers_vq", importing("diffusers_vq").name, config, subfolder, revision,
                                config_file)
    if class_name == "AutoencoderKL":
        config = config_from_file(config_file) if config_file is not None else config_from_diffusers(config_dict)
        return PretrainedSource(source, "diffusers", importing("diffusers").name, config, subfolder, revision,
                                config_file)
    found = f"config.json of diffusers class {class_name!r}" if class_name else \
        f"a config.json without model_type or _class_name (keys {sorted(config_dict)[:8]})"
    if class_name in ("StableDiffusionPipeline", "StableDiffusionXLPipeline") or "_diffusers_version" in config_dict \
            and class_name and class_name.endswith("Pipeline"):
        found += " (a pipeline: add --pretrained_subfolder vae)"
    raise _neither_format(repr(source), found)


def _load_diffusers_vq(source: PretrainedSource, config):
    """A diffusers VQModel's weights in a `VQVAEModel` of `config`: every parameter from the file (the quantiser's
    usage counters, which VQModel does not have, start at their initial values)."""
    from ..klae_conversion import DIFFUSERS_WEIGHTS_NAME, load_safetensors, resolve_file
    from ..vq_conversion import vq_state_dict_from_diffusers

    hub_kwargs = {"revision": source.revision} if source.revision else {}
    weights_file = resolve_file(source.name_or_path, DIFFUSERS_WEIGHTS_NAME, source.subfolder, hub_kwargs)
    if weights_file is None:
        raise PretrainedSourceError(f"Expected diffusers weights {DIFFUSERS_WEIGHTS_NAME!r} in {source.describe()}, "
                                    f"found none (pickled .bin files are never loaded).")
    weights = vq_state_dict_from_diffusers(load_safetensors(weights_file))
    model = importing("diffusers_vq").model_class(config)
    buffers = {name for name, _ in model.named_buffers()}
    problems = _fit_problems({k: v.shape for k, v in model.state_dict().items()}, {k: v.shape for k, v in weights.items()},
                             optional=buffers)
    if problems:
        raise PretrainedSourceError(f"The weights in {weights_file} do not fit the VQ-VAE of the config: {problems}.")
    model.load_state_dict(weights, strict=False)
    return model


def config_from_file(path: str):
    """`--pretrained_config FILE`: a diffusers AutoencoderKL config.json, an hf_vae KLAE config.json, or latent
    diffusion's YAML (`model.params.ddconfig` + `embed_dim`, or a full SD YAML's `first_stage_config`)."""
    from ..klae_conversion import config_from_diffusers

    target = importing("diffusers").config_class
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
        return _config_from_ldm_yaml(data, path)
    data = json.loads(text)
    if not isinstance(data, dict):
        raise PretrainedSourceError(f"--pretrained_config {path} holds {type(data).__name__}: expected a JSON object.")
    if data.get("model_type") == target.model_type:
        return target.from_dict(data)
    if data.get("_class_name", "AutoencoderKL") == "AutoencoderKL" and "model_type" not in data:
        return config_from_diffusers(data)
    raise PretrainedSourceError(f"--pretrained_config {path}: expected a KL autoencoder config (diffusers "
                                f"AutoencoderKL or hf_vae {target.model_type}), got _class_name={data.get('_class_name')!r}, "
                                f"model_type={data.get('model_type')!r}.")


def _config_from_ldm_yaml(data: Any, path: str):
    """Latent diffusion's autoencoder YAML -> the config of the family importing `ldm` checkpoints (GroupNorm with 32
    groups, as in `ldm`'s Normalize)."""
    node = data
    for key in ("model", "params"):
        node = node.get(key, node) if isinstance(node, dict) else node
    if isinstance(node, dict) and "first_stage_config" in node:
        node = node["first_stage_config"].get("params", {})
    if not isinstance(node, dict) or "ddconfig" not in node or "embed_dim" not in node:
        raise PretrainedSourceError(f"--pretrained_config {path}: expected latent diffusion's autoencoder YAML "
                                    f"(model.params.ddconfig and embed_dim), found keys "
                                    f"{sorted(node) if isinstance(node, dict) else type(node).__name__}.")
    dd = node["ddconfig"]
    if not dd.get("double_z", True):
        raise PretrainedSourceError(f"--pretrained_config {path}: ddconfig.double_z is false (a VQ autoencoder); "
                                    f"expected a KL autoencoder.")
    if int(dd["z_channels"]) != int(node["embed_dim"]):
        raise PretrainedSourceError(f"--pretrained_config {path}: z_channels {dd['z_channels']} != embed_dim "
                                    f"{node['embed_dim']}; diffusers' AutoencoderKL (and KLAE) need them equal.")
    if dd.get("attn_resolutions"):
        raise PretrainedSourceError(f"--pretrained_config {path}: attention at resolutions {dd['attn_resolutions']} "
                                    f"is not part of AutoencoderKL's architecture; expected attn_resolutions [].")
    channels = [int(dd["ch"]) * int(m) for m in dd["ch_mult"]]
    return importing("ldm").config_class(in_channels=int(dd["in_channels"]), out_channels=int(dd["out_ch"]), block_out_channels=channels,
                      down_block_types=["DownEncoderBlock2D"] * len(channels),
                      up_block_types=["UpDecoderBlock2D"] * len(channels), layers_per_block=int(dd["num_res_blocks"]),
                      latent_channels=int(dd["z_channels"]), norm_num_groups=32,
                      sample_size=int(dd.get("resolution", 256)))


# ------------------------------------------------------------------------------------------------------------
# The run's config: the source's, with objective-only flags applied
# ------------------------------------------------------------------------------------------------------------


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _spatial(config) -> bool:
    return getattr(config, "backbone", "conv") == "conv" and not getattr(config, "vector_latent", False)


def check_requested_model(source: PretrainedSource, requested: Optional[str]) -> str:
    """The variant of the run: the source's; an explicit `--model` that names another one is refused."""
    if requested is not None and requested != source.model:
        raise PretrainedSourceError(f"--model {requested} contradicts the pretrained model: {source.describe()} is "
                                    f"a {source.model!r} model. Drop --model (it is inferred) or give a "
                                    f"{requested!r} source.")
    return source.model


def run_config(source: PretrainedSource, overrides: Mapping[str, Any], *, image_size: Optional[int] = None,
               pixel_loss: Optional[str] = None, dataset_num_classes: Optional[int] = None, dataset: str = ""):
    """The config of a run that starts from `source`.

    Args:
        overrides: model-config fields given on the command line / --config file.
        image_size: the data's fixed image size, if it has one (used for fully convolutional models when no
            --image_size is given; other models keep theirs).
        pixel_loss: --pixel_loss (KLAE).
        dataset_num_classes: the dataset's number of classes (checked against a pretrained CVAE's).

    Raises:
        PretrainedSourceError: a field would change the architecture (all such fields listed with both values),
            or the CVAE's classes differ from the dataset's.
    """
    config = source.config
    capabilities = family_of(config).capabilities
    values = config.to_dict()
    overrides = dict(overrides)
    if capabilities.diffusers_twin:
        if "image_size" in overrides:  # the KLAE's alias of sample_size
            overrides["sample_size"] = overrides.pop("image_size")
        if pixel_loss is not None:
            if overrides.get("pixel_loss", pixel_loss) != pixel_loss:
                raise PretrainedSourceError(f"Conflicting pixel losses: --pixel_loss {pixel_loss} and the config "
                                            f"field pixel_loss={overrides['pixel_loss']!r}; give one.")
            overrides["pixel_loss"] = pixel_loss
    size_key = "sample_size" if capabilities.diffusers_twin else "image_size"
    if _spatial(config) and size_key not in overrides and image_size is not None:
        overrides[size_key] = image_size
    conflicts = []
    for key, value in overrides.items():
        if key in OBJECTIVE_FIELDS or (key in SIZE_FIELDS and _spatial(config)):
            continue
        if not _same(values.get(key), value):
            conflicts.append(f"{key}: the pretrained model has {values.get(key)!r}, the run asks for {value!r}")
    if conflicts:
        raise PretrainedSourceError(
            f"These settings would change the architecture of the pretrained model ({source.describe()}), whose "
            f"weights would then not fit: " + "; ".join(conflicts) + ". Drop them (the architecture comes from the "
            f"source), or train a new model without --pretrained_model_name_or_path.")
    if capabilities.conditional and config.condition_dim is None and \
            dataset_num_classes is not None and dataset_num_classes != config.num_classes:
        raise PretrainedSourceError(f"The pretrained CVAE ({source.describe()}) has num_classes={config.num_classes}, "
                                    f"but dataset {dataset!r} has {dataset_num_classes} classes: expected a dataset "
                                    f"with the same classes (the class embedding is part of the weights).")
    values.update(overrides)
    try:
        return type(config).from_dict(values)
    except (TypeError, ValueError) as error:
        raise PretrainedSourceError(f"Bad settings for the pretrained {source.model} config: {error}") from error


def restore_source_fields(model, source: PretrainedSource, overrides: Mapping[str, Any]) -> None:
    """Before publishing: the training resolution of a KLAE (`--image_size`) is not a property of the model, so the
    published config keeps the source's `sample_size` (diffusers' tile size) unless --sample_size was given."""
    if get_family(source.model).capabilities.diffusers_twin and "sample_size" not in overrides:
        model.config.sample_size = source.config.sample_size


# ------------------------------------------------------------------------------------------------------------
# Training part of the model
# ------------------------------------------------------------------------------------------------------------


def _stay_in_eval_mode(module) -> None:
    """`module.train()` becomes a no-op: a frozen part keeps eval behaviour (no dropout, no codebook updates)
    whatever the trainer or the evaluation do with the model around it."""
    module.eval()
    module.train = types.MethodType(lambda self, mode=True: self, module)


def freeze_modules(model, train_modules: str) -> List[str]:
    """Apply `--train_modules`: "all" trains everything; "decoder" freezes the encoder side (`ENCODER_SIDE`).

    Returns the names of the frozen modules (empty for "all").
    """
    if train_modules not in TRAIN_MODULES:
        raise ValueError(f"Expected --train_modules in {TRAIN_MODULES}, got {train_modules!r}.")
    if train_modules == "all":
        return []
    frozen = []
    for name in ENCODER_SIDE:
        module = getattr(model, name, None)
        if module is None:
            continue
        module.requires_grad_(False)
        _stay_in_eval_mode(module)
        frozen.append(name)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"--train_modules decoder left nothing to train in {type(model).__name__}.")
    return frozen
