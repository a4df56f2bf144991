"""Export a KLAE's encoder and decoder to ONNX, for ONNX Runtime and other deployment runtimes.

    from hf_vae.integrations.onnx import export_klae_onnx
    paths = export_klae_onnx(model, "klae-onnx", image_size=256)   # {"encoder": ..., "decoder": ...}

Two graphs, as a latent-diffusion deployment uses them:

* encoder.onnx: `images` (B, C, H, W) in [-1, 1] -> `moments` (B, 2·latent_channels, H/f, W/f), the posterior's
  mean and log-variance stacked along dim 1 (diffusers' `latent_dist.parameters`; the mean is the first half);
* decoder.onnx: `latents` (B, latent_channels, h, w) -> `images` (B, C, h·f, w·f), as `model.decode(z).sample`
  (unscaled latents: divide by `config.scaling_factor` first, as a diffusion pipeline does).

The batch dimension is dynamic; height and width are fixed at `image_size` (a graph per resolution). Needs
`torch.onnx.export(..., dynamo=True)`, i.e. the `onnx` and `onnxscript` packages (`pip install hf-vae[deploy]`).
"""

import os
from typing import Dict, Optional

import torch
import torch.nn as nn

#: the ONNX opset of the exported graphs (ONNX Runtime >= 1.17 runs it)
DEFAULT_OPSET = 18


class _KLAEEncoderGraph(nn.Module):
    """images -> moments, without slicing, tiling or input checks (none of them belongs in a static graph)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model._encode_tile(images)


class _KLAEDecoderGraph(nn.Module):
    """latents -> images (the decoder's output is the image itself: the KLAE's likelihood is a pixel loss)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.likelihood.mean(self.model._decode_tile(latents))


def export_klae_onnx(model, folder, image_size: Optional[int] = None, batch_size: int = 2,
                     opset_version: int = DEFAULT_OPSET) -> Dict[str, str]:
    """Write `folder`/encoder.onnx and `folder`/decoder.onnx for a `KLAEModel`; return their paths.

    Args:
        model: a `KLAEModel` (its weights are exported in its current dtype, on the CPU).
        folder: where to write the two graphs (created if missing).
        image_size: the side of the square images the graphs take (default `config.sample_size`); a multiple of
            the down-sampling factor.
        batch_size: the example batch traced (at least 2: torch.export specialises a dimension of size 1); the
            exported batch dimension is dynamic whatever it is.
        opset_version: the ONNX opset to target.
    """
    from hf_vae import KLAEModel

    if not isinstance(model, KLAEModel):
        raise ValueError(f"Expected a KLAEModel, got {type(model).__name__}.")
    try:
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
    except ImportError as error:
        raise ImportError("export_klae_onnx needs the `onnx` and `onnxscript` packages: "
                          "pip install 'hf-vae[deploy]'.") from error
    config = model.config
    image_size = config.sample_size if image_size is None else image_size
    factor = config.downsampling_factor
    if not isinstance(image_size, int) or image_size <= 0 or image_size % factor:
        raise ValueError(f"Expected `image_size` a positive multiple of the down-sampling factor {factor}, "
                         f"got {image_size!r}.")
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"Expected an int `batch_size` >= 2 (torch.export specialises a dimension of size 1), "
                         f"got {batch_size!r}.")
    os.makedirs(folder, exist_ok=True)
    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    images = torch.zeros(batch_size, config.in_channels, image_size, image_size, dtype=parameter.dtype)
    latents = torch.zeros(batch_size, config.latent_channels, image_size // factor, image_size // factor,
                          dtype=parameter.dtype)
    batch = torch.export.Dim("batch", min=1, max=1024)
    paths = {"encoder": os.path.join(folder, "encoder.onnx"), "decoder": os.path.join(folder, "decoder.onnx")}
    graphs = [("encoder", _KLAEEncoderGraph(model).eval(), images, "images", "moments"),
              ("decoder", _KLAEDecoderGraph(model).eval(), latents, "latents", "images")]
    try:
        for name, graph, example, input_name, output_name in graphs:
            with torch.no_grad():
                program = torch.onnx.export(graph, (example,), dynamo=True, input_names=[input_name],
                                            output_names=[output_name], opset_version=opset_version,
                                            dynamic_shapes={input_name: {0: batch}})
            program.save(paths[name])
    finally:
        model.train(was_training)
    return paths
