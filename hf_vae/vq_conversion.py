"""diffusers' `VQModel` (taming-transformers' VQGAN layout) -> hf_vae's `VQVAEModel`.

    diffusers VQModel                    VQVAEModel (conv backbone, use_quant_conv=True)
    encoder.*                            encoder.body.*         (the same Encoder, double_z=False)
    quant_conv                           quant_conv             latent_channels -> vq_embed_dim
    quantize.embedding.weight            quantizer.embedding.weight
    post_quant_conv                      post_quant_conv        vq_embed_dim -> latent_channels
    decoder.*                            decoder.body.*

The quantiser's loss keeps diffusers' (taming's "legacy") placement of β on the codebook term
(`beta_on_codebook=True`, β = 0.25), so continuing such a model optimises the objective it was trained with. The
data range is [-1, 1] (`likelihood="gaussian"`). diffusers' MoVQ variant (`norm_type="spatial"`, the decoder
conditioned on the codes) has no hf_vae equivalent and is refused.

This file is a model file: it may import only torch, transformers and its siblings.
"""

from typing import Any, Dict, Mapping

import torch

from .configuration_vqvae import VQVAEConfig


def vq_config_from_diffusers(config: Mapping[str, Any], **overrides) -> VQVAEConfig:
    """A diffusers `VQModel` config (its config.json dict) -> `VQVAEConfig`; `overrides` win."""
    config = dict(config)
    if config.get("_class_name", "VQModel") != "VQModel":
        raise ValueError(f"Expected a diffusers config with _class_name 'VQModel', got {config.get('_class_name')!r}.")
    if config.get("norm_type", "group") != "group":
        raise ValueError(f"Expected a VQModel with norm_type 'group', got {config['norm_type']!r} (MoVQ's spatial "
                         f"norm conditions the decoder on the codes, which VQVAEModel does not do).")
    for key, expected in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        found = set(config.get(key, [expected]))
        if found != {expected}:
            raise ValueError(f"Expected {key} all {expected!r}, got {sorted(found)}.")
    in_channels = config.get("in_channels", 3)
    if config.get("out_channels", 3) != in_channels:
        raise ValueError(f"Expected out_channels == in_channels for a VQ-VAE, got {config.get('out_channels')} and "
                         f"{in_channels}.")
    latent_channels = config.get("latent_channels", 3)
    sample_size = config.get("sample_size", 32)
    fields = dict(
        backbone="conv", in_channels=in_channels, image_size=int(sample_size[0] if isinstance(sample_size, (list, tuple))
                                                                 else sample_size),
        block_out_channels=list(config.get("block_out_channels", [64])), layers_per_block=config.get("layers_per_block", 1),
        act_fn=config.get("act_fn", "silu"), latent_channels=latent_channels,
        norm_num_groups=config.get("norm_num_groups", 32),
        mid_block_add_attention=config.get("mid_block_add_attention", True),
        num_embeddings=config.get("num_vq_embeddings", 256),
        embedding_dim=config.get("vq_embed_dim") or latent_channels, commitment_cost=0.25, beta_on_codebook=True,
        scaling_factor=config.get("scaling_factor", 0.18215), use_quant_conv=True, likelihood="gaussian",
    )
    fields.update(overrides)
    return VQVAEConfig(**fields)


def vq_state_dict_from_diffusers(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """diffusers VQModel names -> VQVAEModel names (the tensors themselves, not copies)."""
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(("encoder.", "decoder.")):
            part, _, rest = key.partition(".")
            key = f"{part}.body.{rest}"
        elif key.startswith("quantize."):
            key = "quantizer." + key[len("quantize."):]
        converted[key] = value
    return converted
