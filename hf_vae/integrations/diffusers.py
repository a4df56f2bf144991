"""Using hf_vae's KL autoencoder inside diffusers pipelines, and diffusers' VAEs inside hf_vae.

`KLAEModel` is a drop-in for diffusers' `AutoencoderKL`: a pipeline can hold it as its `vae` (text-to-image,
image-to-image, SDXL's fp16 upcasting, model CPU offload), and `pipe.save_pretrained` /
`DiffusionPipeline.from_pretrained` bring it back (model_index.json records `["hf_vae.modeling_klae", "KLAEModel"]`,
so hf_vae must be importable where the pipeline is loaded). Typical workflows:

    # fine-tune a published SD VAE with hf_vae, then put it back into the pipeline
    pipe = StableDiffusionPipeline.from_pretrained(path)
    vae = use_klae_vae(pipe)                 # exact KLAEModel copy, installed as pipe.vae
    ...train vae...
    pipe.save_pretrained(out)                # or: use_diffusers_vae(pipe) to store an AutoencoderKL again

    # or build a pipeline around an hf_vae checkpoint directly
    pipe = StableDiffusionPipeline.from_pretrained(path, vae=KLAEModel.from_pretrained(klae_folder))

diffusers prints "Expected types for vae: (AutoencoderKL,), got KLAEModel" when loading such a pipeline; it is a
type-annotation check only, the component is used as is.

The VQ-VAE (`VQVAEModel`, conv backbone) plugs into `LDMPipeline` as `vqvae` the same way: `decode` quantises its
input to the nearest codes, and `config.scaling_factor` is the latent scale the pipeline divides by.
"""

from typing import Any

from ..families import DIFFUSERS_COMPONENT
from ..modeling_klae import KLAEModel

try:
    import diffusers  # noqa: F401
except ImportError as error:  # pragma: no cover - this module is only imported by diffusers users
    raise ImportError("hf_vae.integrations.diffusers needs diffusers: `pip install diffusers`.") from error


def to_autoencoder_kl(model: KLAEModel):
    """Exact diffusers `AutoencoderKL` copy of a `KLAEModel` (same weights, dtype, device, tiling settings)."""
    return model.to_diffusers()


def from_autoencoder_kl(vae, **config_overrides: Any) -> KLAEModel:
    """Exact `KLAEModel` copy of a diffusers `AutoencoderKL` (module, folder or Hub repo id)."""
    return KLAEModel.from_diffusers(vae, **config_overrides)


def use_klae_vae(pipe, **config_overrides: Any) -> KLAEModel:
    """Replace `pipe.vae` (a diffusers `AutoencoderKL`) by an exact `KLAEModel` copy and return it.

    A pipeline that already holds a `KLAEModel` is left as is. The pipeline's model_index entry for `vae` is updated,
    so `pipe.save_pretrained` stores the hf_vae model.
    """
    vae = getattr(pipe, DIFFUSERS_COMPONENT, None)
    if vae is None:
        raise ValueError(f"Expected a pipeline with a `vae` component, got {type(pipe).__name__} without one.")
    if isinstance(vae, KLAEModel):
        return vae
    model = KLAEModel.from_diffusers(vae, **config_overrides)
    pipe.vae = model  # DiffusionPipeline.__setattr__ re-registers the component (library, class) in its config
    return model


def use_diffusers_vae(pipe):
    """Replace `pipe.vae` (a `KLAEModel`) by an exact diffusers `AutoencoderKL` copy and return it, e.g. before
    saving a pipeline for environments without hf_vae."""
    vae = getattr(pipe, DIFFUSERS_COMPONENT, None)
    if not isinstance(vae, KLAEModel):
        raise ValueError(f"Expected a pipeline whose `vae` is a KLAEModel, got {type(vae).__name__}.")
    converted = vae.to_diffusers()
    pipe.vae = converted
    return converted


def save_diffusers_copy(model: KLAEModel, output_dir: str, subfolder: str = DIFFUSERS_COMPONENT) -> str:
    """Write `model` as a diffusers `AutoencoderKL` into `output_dir/subfolder` (checked to reproduce the model's
    outputs, as for a Hub push), replacing an older copy atomically: a temporary folder, then one rename.

    Then `AutoencoderKL.from_pretrained(output_dir, subfolder="vae")` and
    `StableDiffusionPipeline.from_pretrained(base, vae=...)` work on a training output without hf_vae. Returns the path.
    """
    import os
    import shutil

    from .hub import diffusers_autoencoder

    target = os.path.join(output_dir, subfolder)
    tmp = os.path.join(output_dir, f".tmp-{subfolder}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    diffusers_autoencoder(model).save_pretrained(tmp)
    old = None
    if os.path.exists(target):
        old = f"{tmp}-old"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
