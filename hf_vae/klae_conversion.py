"""Moving KL-autoencoder weights between hf_vae, diffusers and the original latent-diffusion code.

Three naming schemes describe the same tensors (SD-1.x shown; i indexes resolutions, j ResNet blocks):

    hf_vae / diffusers (identical)                  latent-diffusion (CompVis `ldm`, "LDM" below)
    encoder.down_blocks.i.resnets.j.conv1           encoder.down.i.block.j.conv1
    encoder.down_blocks.i.resnets.j.conv_shortcut   encoder.down.i.block.j.nin_shortcut
    encoder.down_blocks.i.downsamplers.0.conv       encoder.down.i.downsample.conv
    encoder.mid_block.resnets.0 / .1                encoder.mid.block_1 / block_2
    encoder.mid_block.attentions.0.group_norm       encoder.mid.attn_1.norm
    encoder.mid_block.attentions.0.to_q  (Linear)   encoder.mid.attn_1.q         (1x1 conv: weight (C, C, 1, 1))
    encoder.mid_block.attentions.0.to_out.0         encoder.mid.attn_1.proj_out
    encoder.conv_norm_out                           encoder.norm_out
    decoder.up_blocks.i.resnets.j                   decoder.up.(n-1-i).block.j   (LDM numbers up blocks from the
    decoder.up_blocks.i.upsamplers.0.conv           decoder.up.(n-1-i).upsample.conv   lowest resolution up)

Older diffusers checkpoints name the attention projections `query`/`key`/`value`/`proj_attn`. A full Stable
Diffusion checkpoint stores the autoencoder under `first_stage_model.`; an LDM autoencoder training checkpoint
also carries its loss networks under `loss.` (LPIPS, discriminator), which are not part of the model.

`to_hf_state_dict` recognises all of these and returns hf_vae (= diffusers) names; `to_ldm_state_dict` goes
back. Conversion is a renaming (plus the 1x1-conv <-> Linear reshape of attention weights): every tensor is
bit-for-bit the one that was given.

This file is a model file: it may import only torch, transformers and its siblings (trust_remote_code copies
exactly those).
"""

import json
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from .configuration_klae import KLAEConfig

#: diffusers' weight file names, in the order we look for them (safetensors only: we never unpickle).
DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DIFFUSERS_CONFIG_NAME = "config.json"

#: fields of diffusers' `AutoencoderKL.__init__`, which `KLAEConfig` shares by name.
DIFFUSERS_CONFIG_FIELDS = (
    "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels", "layers_per_block",
    "act_fn", "latent_channels", "norm_num_groups", "sample_size", "scaling_factor", "shift_factor", "latents_mean",
    "latents_std", "force_upcast", "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention",
)

LDM_PREFIX = "first_stage_model."
#: LDM training checkpoints keep their loss networks (LPIPS, PatchGAN, the learned logvar) under this prefix.
LDM_TRAINING_ONLY_PREFIX = "loss."

_LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LDM_ATTENTION_NAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


# ------------------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------------------


def config_from_diffusers(config: Mapping[str, Any], **overrides) -> KLAEConfig:
    """A diffusers `AutoencoderKL` config (its `config.json` dict or `vae.config`) -> `KLAEConfig`.

    Private entries (`_class_name`, `_diffusers_version`, `_name_or_path`, ...) and fields that `AutoencoderKL`
    does not have are dropped; `overrides` (any `KLAEConfig` field) win over the file.
    """
    config = dict(config)
    class_name = config.get("_class_name", "AutoencoderKL")
    if class_name != "AutoencoderKL":
        raise ValueError(f"Expected a diffusers config with _class_name 'AutoencoderKL', got {class_name!r}.")
    fields = {key: config[key] for key in DIFFUSERS_CONFIG_FIELDS if key in config}
    sample_size = fields.get("sample_size")
    if isinstance(sample_size, (list, tuple)):
        # diffusers allows (height, width) and tiles with sample_size[0]; KLAEConfig keeps one int.
        fields["sample_size"] = int(sample_size[0])
    for key in ("block_out_channels", "down_block_types", "up_block_types", "latents_mean", "latents_std"):
        if fields.get(key) is not None:
            fields[key] = list(fields[key])
    fields.update(overrides)
    return KLAEConfig(**fields)


def config_to_diffusers(config: KLAEConfig) -> Dict[str, Any]:
    """`KLAEConfig` -> keyword arguments of diffusers' `AutoencoderKL` (training-only fields dropped)."""
    return {key: getattr(config, key) for key in DIFFUSERS_CONFIG_FIELDS}


def read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); expected a model configuration.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object (a model configuration), got a {type(value).__name__}.")
    return value


def is_diffusers_config(config: Mapping[str, Any]) -> bool:
    """True for a config.json written by diffusers (it records `_class_name`; transformers writes `model_type`)."""
    return "_class_name" in config and "model_type" not in config


# ------------------------------------------------------------------------------------------------------------
# State dicts
# ------------------------------------------------------------------------------------------------------------


def load_safetensors(path: str) -> Dict[str, torch.Tensor]:
    """Read a `.safetensors` file into CPU tensors. Pickled checkpoints (.bin/.ckpt/.pt) are refused: loading
    them runs arbitrary code."""
    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise ValueError(f"Expected a .safetensors weight file (pickled checkpoints are never loaded), got {path!r}. "
                         "Convert it once in a trusted environment with safetensors.torch.save_file.")
    if not os.path.isfile(path):
        raise ValueError(f"Expected a weight file at {path!r}, found none.")
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as error:  # safetensors' errors do not name the file
        raise ValueError(f"{path}: a truncated or corrupt safetensors file ({error}).") from None


def detect_layout(keys: Iterable[str]) -> str:
    """'ldm' for latent-diffusion names, else 'hf' (hf_vae/diffusers names, current or legacy attention)."""
    for key in keys:
        if re.match(r"(encoder\.(down|mid)\.|decoder\.(up|mid)\.|(en|de)coder\.norm_out\.)", key):
            return "ldm"
    return "hf"


def _strip_checkpoint_wrappers(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Keep only the autoencoder of a full SD checkpoint (`first_stage_model.*`) and drop LDM loss networks."""
    if any(key.startswith(LDM_PREFIX) for key in state_dict):
        # A whole Stable Diffusion checkpoint: the UNet, text encoder and EMA copies are other models' weights.
        state_dict = {key[len(LDM_PREFIX):]: value for key, value in state_dict.items() if key.startswith(LDM_PREFIX)}
    return {key: value for key, value in state_dict.items() if not key.startswith(LDM_TRAINING_ONLY_PREFIX)}


def _count_ldm_resolutions(keys: Iterable[str]) -> int:
    levels = {int(m.group(1)) for key in keys for m in [re.match(r"(?:encoder\.down|decoder\.up)\.(\d+)\.", key)] if m}
    if not levels:
        raise ValueError("Expected latent-diffusion keys `encoder.down.N.*` / `decoder.up.N.*`, found none.")
    return max(levels) + 1


def _attention_weight_to_linear(key: str, value: torch.Tensor) -> torch.Tensor:
    # LDM (and some early diffusers conversions) store the q/k/v/out projections as 1x1 convs, (C, C, 1, 1), or
    # as 1-wide 1-D convs, (C, C, 1); the Linear layers here hold the same matrix as (C, C).
    if re.search(r"attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$", key) and value.dim() > 2:
        if value.dim() > 4 or any(size != 1 for size in value.shape[2:]):
            raise ValueError(f"Expected a 1x1 convolution weight for {key!r}, got shape {tuple(value.shape)}.")
        return value.reshape(value.shape[0], value.shape[1])
    return value


#: The renaming between latent-diffusion and hf_vae names, one row per rule, read in both directions:
#: (LDM name, hf_vae name). `{part}` is encoder or decoder; `{i}` a resolution index and `{j}` a ResNet block's;
#: `{r}` = n − 1 − i, the LDM number of the decoder's up block i (LDM counts them from the lowest resolution);
#: `{resnet}` a ResNet block's parameter (its `nin_shortcut` is `conv_shortcut`); `{rest}` any parameter name.
_KEY_RULES = (
    ("{part}.down.{i}.block.{j}.{resnet}", "{part}.down_blocks.{i}.resnets.{j}.{resnet}"),
    ("{part}.down.{i}.downsample.{rest}", "{part}.down_blocks.{i}.downsamplers.0.{rest}"),
    ("{part}.up.{r}.block.{j}.{resnet}", "{part}.up_blocks.{i}.resnets.{j}.{resnet}"),
    ("{part}.up.{r}.upsample.{rest}", "{part}.up_blocks.{i}.upsamplers.0.{rest}"),
    ("{part}.mid.block_1.{resnet}", "{part}.mid_block.resnets.0.{resnet}"),
    ("{part}.mid.block_2.{resnet}", "{part}.mid_block.resnets.1.{resnet}"),
    *((f"{{part}}.mid.attn_1.{ldm}.{{rest}}", f"{{part}}.mid_block.attentions.0.{hf}.{{rest}}")
      for ldm, hf in _LDM_ATTENTION_NAMES.items()),
    ("{part}.norm_out.{rest}", "{part}.conv_norm_out.{rest}"),
)
#: renamings inside a ResNet block's parameter names: (LDM, hf_vae)
_RESNET_NAMES = (("nin_shortcut", "conv_shortcut"),)
_FIELD_PATTERNS = {"part": "(?P<part>encoder|decoder)", "i": r"(?P<i>\d+)", "j": r"(?P<j>\d+)", "r": r"(?P<r>\d+)",
                   "resnet": "(?P<resnet>.*)", "rest": "(?P<rest>.*)"}


def _rule_pattern(template: str) -> "re.Pattern":
    pieces = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
    return re.compile("".join(_FIELD_PATTERNS[piece] if n % 2 else re.escape(piece) for n, piece in enumerate(pieces))
                      + "$")


_LDM_TO_HF = tuple((_rule_pattern(ldm), hf) for ldm, hf in _KEY_RULES)
_HF_TO_LDM = tuple((_rule_pattern(hf), ldm) for ldm, hf in _KEY_RULES)


def _rename_key(key: str, rules, num_resolutions: int, to_hf: bool) -> str:
    """`key` renamed by the first rule whose source side matches it; unchanged when none does (quant_conv, ...)."""
    for pattern, target in rules:
        m = pattern.match(key)
        if m is None:
            continue
        fields = m.groupdict()
        if fields.get("r") is not None:
            fields["i"] = str(num_resolutions - 1 - int(fields["r"]))
        elif fields.get("i") is not None:
            fields["r"] = str(num_resolutions - 1 - int(fields["i"]))
        if fields.get("resnet") is not None:
            for ldm_name, hf_name in _RESNET_NAMES:
                fields["resnet"] = fields["resnet"].replace(*((ldm_name, hf_name) if to_hf else (hf_name, ldm_name)))
        return target.format(**fields)
    return key


def _ldm_key_to_hf(key: str, num_resolutions: int) -> str:
    return _rename_key(key, _LDM_TO_HF, num_resolutions, to_hf=True)


def _hf_key_to_ldm(key: str, num_resolutions: int) -> str:
    return _rename_key(key, _HF_TO_LDM, num_resolutions, to_hf=False)


def _rename_legacy_attention(key: str) -> str:
    m = re.match(r"(.*\.attentions\.0\.)(query|key|value|proj_attn)\.(.*)$", key)
    return f"{m.group(1)}{_LEGACY_ATTENTION_NAMES[m.group(2)]}.{m.group(3)}" if m else key


def to_hf_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Any supported layout (hf_vae/diffusers, legacy diffusers attention, LDM, full SD checkpoint) -> hf_vae names.

    The tensors are not copied, except attention weights reshaped from 1x1 convs to Linear (a view).
    """
    state_dict = _strip_checkpoint_wrappers(state_dict)
    if detect_layout(state_dict) == "ldm":
        num_resolutions = _count_ldm_resolutions(state_dict)
        state_dict = {_ldm_key_to_hf(key, num_resolutions): value for key, value in state_dict.items()}
    converted = {}
    for key, value in state_dict.items():
        key = _rename_legacy_attention(key)
        if key in converted:
            raise ValueError(f"Expected each parameter once, got {key!r} under two names (old and new attention names?).")
        converted[key] = _attention_weight_to_linear(key, value)
    return converted


def to_ldm_state_dict(state_dict: Mapping[str, torch.Tensor], num_resolutions: int) -> Dict[str, torch.Tensor]:
    """hf_vae names -> latent-diffusion names (attention projections as 1x1 conv weights), e.g. for tools that read
    original Stable Diffusion VAE files."""
    converted = {}
    for key, value in state_dict.items():
        new_key = _hf_key_to_ldm(key, num_resolutions)
        if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", new_key) and value.dim() == 2:
            value = value[:, :, None, None]
        converted[new_key] = value
    return converted


def infer_config_from_state_dict(state_dict: Mapping[str, torch.Tensor], **overrides) -> KLAEConfig:
    """Read the architecture off hf_vae-named weights (as `to_hf_state_dict` returns them).

    Channels, depth, latent channels, quant convs and mid-block attention are determined by the weights.
    `norm_num_groups` (32), `sample_size` (512, the SD tile size) and the latent statistics `scaling_factor`
    (0.18215) / `shift_factor` (None) are not: they default to Stable Diffusion 1.x values and any of them can be
    given in `overrides` (SDXL: scaling_factor=0.13025; SD3: 1.5305 / 0.0609; Flux: 0.3611 / 0.1159).
    """
    def shape(key: str) -> Tuple[int, ...]:
        if key not in state_dict:
            raise ValueError(f"Cannot infer the KLAE architecture: expected the key {key!r} in the weights, "
                             f"got keys such as {sorted(state_dict)[:5]}.")
        return tuple(state_dict[key].shape)

    levels = sorted({int(m.group(1)) for key in state_dict for m in [re.match(r"encoder\.down_blocks\.(\d+)\.", key)] if m})
    if not levels:
        raise ValueError("Cannot infer the KLAE architecture: expected keys `encoder.down_blocks.N.*`, found none.")
    block_out_channels = [shape(f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0] for i in range(len(levels))]
    layers = {int(m.group(1)) for key in state_dict for m in [re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", key)] if m}
    fields = dict(
        in_channels=shape("encoder.conv_in.weight")[1],
        out_channels=shape("decoder.conv_out.weight")[0],
        block_out_channels=block_out_channels,
        down_block_types=["DownEncoderBlock2D"] * len(block_out_channels),
        up_block_types=["UpDecoderBlock2D"] * len(block_out_channels),
        layers_per_block=len(layers),
        latent_channels=shape("decoder.conv_in.weight")[1],
        sample_size=512,
        use_quant_conv="quant_conv.weight" in state_dict,
        use_post_quant_conv="post_quant_conv.weight" in state_dict,
        mid_block_add_attention="encoder.mid_block.attentions.0.to_q.weight" in state_dict,
    )
    fields.update(overrides)
    return KLAEConfig(**fields)


def check_state_dict(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], source: str = "") -> None:
    """Raise a ValueError that lists missing keys, unexpected keys and shape mismatches (all of them at once)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = [f"{key}: expected {tuple(expected[key].shape)}, got {tuple(given[key].shape)}"
                  for key in sorted(set(expected) & set(given)) if tuple(expected[key].shape) != tuple(given[key].shape)]
    if missing or unexpected or mismatched:
        lines = [f"The weights{f' in {source}' if source else ''} do not fit the KLAE architecture of the config."]
        if missing:
            lines.append(f"Missing keys ({len(missing)}): {missing}")
        if unexpected:
            lines.append(f"Unexpected keys ({len(unexpected)}): {unexpected}")
        if mismatched:
            lines.append(f"Shape mismatches ({len(mismatched)}): {mismatched}")
        raise ValueError("\n".join(lines))


def split_config_overrides(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Pop the entries of `kwargs` that name `KLAEConfig` fields and return them."""
    fields = set(DIFFUSERS_CONFIG_FIELDS) | {"kl_weight", "pixel_loss"}
    return {key: kwargs.pop(key) for key in list(kwargs) if key in fields}


def unsupported_kwargs(kwargs: Dict[str, Any], ignored: Iterable[str] = ()) -> List[str]:
    """Names of loading options that were set (not None / default) but that the diffusers-format loader ignores."""
    ignored = set(ignored)
    return sorted(key for key, value in kwargs.items() if key not in ignored and value not in (None, False))


def resolve_file(path_or_repo_id: str, filename: str, subfolder: Optional[str], hub_kwargs: Dict[str, Any]) -> Optional[str]:
    """Local path of `filename` in a folder (optionally `subfolder`) or Hub repo, or None if it has no such file."""
    root = os.fspath(path_or_repo_id)
    if os.path.isdir(root):
        path = os.path.join(root, subfolder or "", filename)
        return path if os.path.isfile(path) else None
    from transformers.utils import cached_file

    return cached_file(root, filename, subfolder=subfolder or "", _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False, **hub_kwargs)
