"""Training a prior over a trained autoencoder's latents: `scripts/train.py --model vq_prior --vqvae DIR_OR_REPO`.

The VQ-VAE is loaded once and frozen; every training batch is encoded to its code map on the fly, and the prior
(hf_vae.modeling_vq_prior: a GPT-2, or a gated PixelCNN with --prior_type pixelcnn) learns them with the same loop,
checkpoints and evaluations as the autoencoders (the objective is `hf_vae.training.objectives.PriorObjective`). The run publishes the VQ-VAE with the prior
attached (its config.json and weights at the root, the prior in prior/), so that `from_pretrained` of the output
folder gives a VQ-VAE whose `generate` samples from the prior.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict

import torch

from ..families import get as get_family, names as family_names


def load_autoencoder(source: str):
    """The VQ-VAE in `source` (a folder or a Hub repo), frozen, in eval mode, without any prior it carries.

    Raises:
        ValueError: `source` holds no model, or a model that is not a VQ-VAE.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        where = "folder" if os.path.isdir(source) else "Hub repository or folder"
        raise ValueError(f"--vqvae {source}: no model config found in that {where} ({error}). Expected a trained "
                         f"VQ-VAE: a folder with config.json and model.safetensors (as scripts/train.py --model "
                         f"vq_vae writes) or a Hub repo id.") from error
    quantized = family_names(quantized=True)
    if config.model_type not in quantized:
        raise ValueError(f"--vqvae {source} holds a {type(config).__name__} (model_type {config.model_type!r}); "
                         f"expected a VQ-VAE (model_type {' or '.join(map(repr, quantized))}), whose code maps the "
                         f"prior learns.")
    model = get_family(config.model_type).model_class.from_pretrained(source, load_prior=False)
    return model.eval().requires_grad_(False)


def prior_config(config_class, autoencoder, fields: Dict[str, Any], dataset_info: Dict[str, Any], dataset: str):
    """The prior's config (of `config_class`) for `autoencoder`'s code maps: the codebook size and code-map shape come from the VQ-VAE
    (a conflicting value given by the user is an error); `num_classes` makes the prior class-conditional and needs
    a dataset with that many classes at most."""
    kwargs = dict(fields)
    expected = {"num_embeddings": autoencoder.config.num_embeddings, "code_shape": list(autoencoder.code_shape)}
    for name, value in expected.items():
        given = kwargs.setdefault(name, value)
        if (list(given) if isinstance(given, (list, tuple)) else given) != value:
            raise ValueError(f"--{name} {given} does not match the VQ-VAE, whose {name} is {value}: the prior models "
                             f"that VQ-VAE's code maps (leave --{name} out).")
    if kwargs.get("num_classes") is not None:
        found = dataset_info.get("num_classes")
        if found is None:
            raise ValueError(f"A class-conditional prior (--num_classes {kwargs['num_classes']}) needs class labels, but "
                             f"dataset {dataset!r} has none that its description shows: expected a dataset with a label "
                             f"column (--label_column NAME), or no --num_classes for an unconditional prior.")
        if kwargs["num_classes"] < found:
            raise ValueError(f"--num_classes {kwargs['num_classes']} is too small for dataset {dataset!r}, which has "
                             f"{found} classes.")
    try:
        return config_class(**kwargs)
    except TypeError as error:
        raise ValueError(f"Bad model config for --model {config_class.model_type} ({config_class.__name__}): "
                         f"{error}; got {kwargs}.") from error


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a model's weights (names, dtypes, shapes and values): what a resumed run checks, so that a prior
    is never continued on the codes of another VQ-VAE."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
