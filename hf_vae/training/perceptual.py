"""LPIPS perceptual distance with a VGG16 trunk, in plain PyTorch.

This re-implements the metric of

    Zhang, Isola, Efros, Shechtman, Wang, "The Unreasonable Effectiveness of Deep
    Features as a Perceptual Metric", CVPR 2018 (https://arxiv.org/abs/1801.03924)

exactly as the reference ``lpips`` package (v0.1.4) computes it for ``net='vgg'``,
``version='0.1'`` -- the configuration used as the perceptual term of the
taming-transformers / latent-diffusion autoencoder losses (Esser et al. 2021,
Rombach et al. 2022).  It deliberately depends on neither ``torchvision`` nor
``lpips``: both pull a multi-GB CUDA build of torch into CPU-only environments.

Weights
-------
Two sets of weights are needed, and the library reads them from **safetensors
only** (it never unpickles anything):

* the VGG16 ImageNet trunk, torchvision's ``vgg16-397923af.pth``
  (https://download.pytorch.org/models/vgg16-397923af.pth), keys
  ``features.{idx}.weight/bias``;
* the LPIPS linear heads, ``lpips/weights/v0.1/vgg.pth`` from the ``lpips``
  wheel (``pip download --no-deps lpips``) or from
  https://github.com/richzhang/PerceptualSimilarity (``lin{0..4}.model.1.weight``).

``scripts/convert_lpips_weights.py`` converts both to
``vgg16_features.safetensors`` and ``lpips_vgg_heads.safetensors`` in one
folder, which :meth:`LPIPS.from_pretrained` loads.

A randomly initialised VGG is *not* a perceptual metric; a loss built on one
trains towards garbage while looking healthy.  :func:`build_perceptual_loss`
and :class:`hf_vae.training.ldm_loss.LatentDiffusionLoss` therefore refuse to
run without pretrained weights unless ``allow_random_weights=True`` (tests only)
is passed explicitly.
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

PathLike = Union[str, "os.PathLike[str]"]

#: File names written by ``scripts/convert_lpips_weights.py``.
VGG_WEIGHTS_NAME = "vgg16_features.safetensors"
HEADS_WEIGHTS_NAME = "lpips_vgg_heads.safetensors"

# torchvision's VGG16 configuration "D" (Simonyan & Zisserman 2015): numbers are
# output channels of 3x3 convs (each followed by ReLU), "M" is a 2x2 max-pool.
_VGG16_CFG: Tuple[Union[int, str], ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)
#: Indices in ``features`` of the ReLUs whose outputs LPIPS taps:
#: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (as in ``lpips.pretrained_networks.vgg16``).
VGG16_TAP_INDICES: Tuple[int, ...] = (3, 8, 15, 22, 29)
#: Channels of the tapped activations.
VGG16_TAP_CHANNELS: Tuple[int, ...] = (64, 128, 256, 512, 512)

# LPIPS v0.1 input scaling (lpips.ScalingLayer): maps [-1, 1] inputs to roughly
# ImageNet-normalised values, ((x + 1) / 2 - mean) / std.
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


class PerceptualWeightsMissingError(RuntimeError):
    """Raised when a perceptual loss would be trained against random weights."""


def missing_weights_message(what: str = "The LPIPS perceptual loss") -> str:
    """The explanation shown whenever pretrained LPIPS weights are missing."""
    return (
        f"{what} needs pretrained weights; a randomly initialised VGG16 is not a "
        "perceptual metric and training against it silently produces bad models.\n"
        "To get the weights (hf_vae never downloads or unpickles them itself):\n"
        "  1. VGG16 ImageNet trunk (torchvision): "
        "https://download.pytorch.org/models/vgg16-397923af.pth\n"
        "  2. LPIPS v0.1 linear heads: `pip download --no-deps lpips -d DIR` and use the "
        "wheel (it contains lpips/weights/v0.1/vgg.pth), or download "
        "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth\n"
        "  3. Convert both to safetensors:\n"
        "       python scripts/convert_lpips_weights.py --vgg vgg16-397923af.pth "
        "--heads vgg.pth --output lpips_weights/\n"
        "  4. Load them: LPIPS.from_pretrained('lpips_weights/') "
        "(or build_perceptual_loss('lpips_weights/')).\n"
        "To train without a perceptual term, set perceptual_weight=0."
    )


# ---------------------------------------------------------------------------
# VGG16 trunk
# ---------------------------------------------------------------------------


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` stack, returning the five LPIPS taps.

    Parameter names are identical to torchvision's (``features.{idx}.weight`` and
    ``features.{idx}.bias`` for idx in 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24,
    26, 28), so the ``features.*`` entries of a torchvision VGG16 state dict load
    without renaming.

    Forward: ``x`` of shape (B, 3, H, W) (already LPIPS-scaled) -> list of five
    tensors, relu1_2 (B, 64, H, W), relu2_2 (B, 128, H/2, W/2),
    relu3_3 (B, 256, H/4, W/4), relu4_3 (B, 512, H/8, W/8),
    relu5_3 (B, 512, H/16, W/16) (floor division at each pool).

    The ReLUs whose outputs are returned are not in-place; the others are (they
    act on fresh conv outputs, which is safe for autograd).  The final max-pool
    (index 30) is kept so the module mirrors torchvision, but it is never run.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        in_ch = 3
        for item in _VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(nn.Conv2d(in_ch, int(item), kernel_size=3, padding=1))
                tapped = len(layers) in VGG16_TAP_INDICES  # index the ReLU will get
                layers.append(nn.ReLU(inplace=not tapped))
                in_ch = int(item)
        self.features = nn.Sequential(*layers)
        # Same random initialisation as torchvision's VGG (only matters until
        # pretrained weights are loaded, e.g. in tests).
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs: List[torch.Tensor] = []
        h = x
        last = VGG16_TAP_INDICES[-1]
        for idx, layer in enumerate(self.features):
            h = layer(h)
            if idx in VGG16_TAP_INDICES:
                outs.append(h)
            if idx == last:
                break
        return outs


# ---------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------


class ScalingLayer(nn.Module):
    """LPIPS v0.1 input scaling ``(x - shift) / scale`` for inputs in [-1, 1].

    The constants are non-persistent buffers: they are not part of any checkpoint.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT)[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE)[None, :, None, None], persistent=False)

    @torch.no_grad()
    def reset_constants(self) -> None:
        """(Re)write the constants, e.g. after ``to_empty()``."""
        self.shift.copy_(torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.scale.copy_(torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """LPIPS head: (Dropout) + 1x1 conv from ``chn_in`` channels to 1, no bias.

    The Dropout is kept only so that the conv sits at ``model.1`` as in the lpips
    checkpoints; :class:`LPIPS` is pinned to eval mode, so it is always a no-op.
    """

    def __init__(self, chn_in: int, chn_out: int = 1) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Dropout(),
            nn.Conv2d(chn_in, chn_out, kernel_size=1, stride=1, padding=0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit-normalise along channels: ``x / (sqrt(sum_c x^2) + eps)``, x (B, C, H, W)."""
    norm = torch.sqrt(torch.sum(x * x, dim=1, keepdim=True))
    return x / (norm + eps)


class LPIPS(nn.Module):
    """LPIPS distance (Zhang et al. 2018), VGG16 trunk, version 0.1.

    ``d(x0, x1) = sum_l mean_{h,w} w_l . (n(f_l(x0)) - n(f_l(x1)))^2`` where f_l
    are the VGG16 taps of the scaled inputs, n the channel unit-normalisation
    and w_l the non-negative 1x1 linear heads.

    Forward: ``in0``, ``in1`` of shape (B, 3, H, W) in [-1, 1] (or [0, 1] with
    ``normalize=True``) -> (B, 1, 1, 1).  With ``return_per_layer=True`` also
    returns the list of five per-layer (B, 1, 1, 1) terms.

    All parameters are frozen (``requires_grad=False``) and the module stays in
    eval mode even if a parent calls ``.train()`` (in the original taming /
    latent-diffusion code PyTorch Lightning's ``model.train()`` silently turned
    on the heads' dropout during training; here it never is).  Gradients do flow
    to the inputs, so it can be used as a loss.

    State-dict keys: ``net.features.{idx}.weight/bias`` (trunk) and
    ``lin{0..4}.model.1.weight`` (heads).

    A freshly constructed ``LPIPS()`` has random weights (``is_pretrained`` is
    False); use :meth:`from_pretrained` for the real metric.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Features()
        self.chns = VGG16_TAP_CHANNELS
        self.lin0 = NetLinLayer(self.chns[0])
        self.lin1 = NetLinLayer(self.chns[1])
        self.lin2 = NetLinLayer(self.chns[2])
        self.lin3 = NetLinLayer(self.chns[3])
        self.lin4 = NetLinLayer(self.chns[4])
        self.lins = [self.lin0, self.lin1, self.lin2, self.lin3, self.lin4]  # plain list: no duplicate keys
        # Trained LPIPS heads are non-negative (lpips clamps them during training),
        # which makes the distance non-negative; keep that property for random heads.
        with torch.no_grad():
            for lin in self.lins:
                lin.model[1].weight.abs_()
        self.backbone_loaded = False
        self.heads_loaded = False
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    # -- mode / state -------------------------------------------------------

    def train(self, mode: bool = True) -> "LPIPS":  # noqa: D401 - nn.Module API
        """Always stays in eval mode (the metric is frozen; see class docstring)."""
        return super().train(False)

    @property
    def is_pretrained(self) -> bool:
        """True once both the VGG16 trunk and the LPIPS heads were loaded."""
        return self.backbone_loaded and self.heads_loaded

    # -- forward -------------------------------------------------------------

    def forward(
        self,
        in0: torch.Tensor,
        in1: torch.Tensor,
        normalize: bool = False,
        return_per_layer: bool = False,
    ):
        if in0.shape != in1.shape:
            raise ValueError(f"LPIPS inputs must have the same shape, got {tuple(in0.shape)} and {tuple(in1.shape)}")
        if in0.dim() != 4 or in0.shape[1] != 3:
            raise ValueError(f"LPIPS expects (B, 3, H, W) inputs, got {tuple(in0.shape)}")
        if normalize:  # [0, 1] -> [-1, 1]
            in0 = 2 * in0 - 1
            in1 = 2 * in1 - 1
        b = in0.shape[0]
        # One trunk pass over both images (identical numerics, better throughput).
        feats = self.net(self.scaling_layer(torch.cat([in0, in1], dim=0)))
        res: List[torch.Tensor] = []
        for kk, f in enumerate(feats):
            f0, f1 = normalize_tensor(f[:b]), normalize_tensor(f[b:])
            diff = (f0 - f1) ** 2
            res.append(self.lins[kk](diff).mean(dim=(2, 3), keepdim=True))
        val = res[0]
        for r in res[1:]:
            val = val + r
        if return_per_layer:
            return val, res
        return val

    # -- weights -------------------------------------------------------------

    def load_backbone_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Strictly load the VGG16 trunk from ``features.{idx}.*`` tensors.

        Raises ValueError listing missing / unexpected keys or mismatched shapes.
        """
        _strict_load(self.net, state_dict, "VGG16 backbone")
        self.backbone_loaded = True

    def load_heads_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Strictly load the five heads from ``lin{0..4}.model.1.weight`` tensors."""
        target = {f"lin{k}.model.1.weight": self.lins[k].model[1].weight for k in range(5)}
        _strict_load_params(target, state_dict, "LPIPS heads")
        self.heads_loaded = True

    def backbone_state_dict(self) -> Dict[str, torch.Tensor]:
        """The trunk tensors under torchvision names (``features.{idx}.*``)."""
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def heads_state_dict(self) -> Dict[str, torch.Tensor]:
        """The head tensors under lpips names (``lin{k}.model.1.weight``)."""
        return {f"lin{k}.model.1.weight": self.lins[k].model[1].weight.detach().clone() for k in range(5)}

    def save_weights(self, directory: PathLike) -> Tuple[str, str]:
        """Write ``vgg16_features.safetensors`` and ``lpips_vgg_heads.safetensors``.

        Returns the two file paths.
        """
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        vgg_path = os.path.join(directory, VGG_WEIGHTS_NAME)
        heads_path = os.path.join(directory, HEADS_WEIGHTS_NAME)
        save_file({k: v.contiguous() for k, v in self.backbone_state_dict().items()}, vgg_path,
                  metadata={"format": "pt", "content": "torchvision vgg16 features"})
        save_file({k: v.contiguous() for k, v in self.heads_state_dict().items()}, heads_path,
                  metadata={"format": "pt", "content": "lpips v0.1 vgg linear heads"})
        return vgg_path, heads_path

    @classmethod
    def from_pretrained(
        cls,
        vgg_path: PathLike,
        heads_path: Optional[PathLike] = None,
        map_location: Union[str, torch.device] = "cpu",
    ) -> "LPIPS":
        """Build LPIPS from safetensors files.

        Args:
            vgg_path: the trunk ``.safetensors`` file (``features.{idx}.*`` keys),
                or a directory holding ``vgg16_features.safetensors`` and
                ``lpips_vgg_heads.safetensors`` (as written by
                ``scripts/convert_lpips_weights.py``).
            heads_path: the heads ``.safetensors`` file; required unless
                ``vgg_path`` is a directory.
            map_location: device to load tensors to.

        Raises:
            FileNotFoundError: a file is absent (the message explains how to get it).
            ValueError: not a safetensors file, missing/unexpected keys, wrong shapes.
        """
        vgg_path, heads_path = _resolve_paths(vgg_path, heads_path)
        vgg_sd = _load_safetensors(vgg_path, map_location)
        heads_sd = _load_safetensors(heads_path, map_location)
        # Build without spending time on a random initialisation that is overwritten
        # anyway: every parameter is loaded below (strictly), constants are re-made.
        with torch.device("meta"):
            model = cls()
        model = model.to_empty(device=map_location)
        model.scaling_layer.reset_constants()
        model.load_backbone_state_dict(vgg_sd)
        model.load_heads_state_dict(heads_sd)
        return model


def build_perceptual_loss(
    weights: Optional[PathLike] = None,
    heads_path: Optional[PathLike] = None,
    allow_random_weights: bool = False,
) -> LPIPS:
    """Build the LPIPS module for training, refusing to use random weights.

    Args:
        weights: directory from ``scripts/convert_lpips_weights.py`` or the trunk
            ``.safetensors`` file (then ``heads_path`` is the heads file).
        heads_path: heads ``.safetensors`` file when ``weights`` is a file.
        allow_random_weights: for tests only -- return a randomly initialised
            LPIPS when ``weights`` is None instead of raising.

    Raises:
        PerceptualWeightsMissingError: ``weights`` is None and random weights
            were not explicitly allowed.
    """
    if weights is None:
        if not allow_random_weights:
            raise PerceptualWeightsMissingError(missing_weights_message())
        return LPIPS()
    return LPIPS.from_pretrained(weights, heads_path)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _resolve_paths(vgg_path: PathLike, heads_path: Optional[PathLike]) -> Tuple[str, str]:
    vgg_path = os.fspath(vgg_path)
    if not os.path.exists(vgg_path):
        raise FileNotFoundError(f"LPIPS weights not found: {vgg_path}\n\n" + missing_weights_message())
    if os.path.isdir(vgg_path):
        folder = vgg_path
        vgg_path = os.path.join(folder, VGG_WEIGHTS_NAME)
        if heads_path is None:
            heads_path = os.path.join(folder, HEADS_WEIGHTS_NAME)
    if heads_path is None:
        raise ValueError(
            "LPIPS.from_pretrained needs the heads file too: pass heads_path=..., or pass the "
            "directory written by scripts/convert_lpips_weights.py as the first argument."
        )
    heads_path = os.fspath(heads_path)
    for p in (vgg_path, heads_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"LPIPS weight file not found: {p}\n\n" + missing_weights_message())
    return vgg_path, heads_path


def _load_safetensors(path: str, map_location: Union[str, torch.device]) -> Dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.endswith(".safetensors"):
        raise ValueError(
            f"{path}: hf_vae loads LPIPS weights from .safetensors files only. Convert .pth "
            "checkpoints with scripts/convert_lpips_weights.py."
        )
    try:
        return load_file(path, device=str(map_location))
    except SafetensorError as e:  # corrupt / not a safetensors file
        raise ValueError(f"{path}: could not read safetensors file ({e})") from e


def _strict_load(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    params = dict(module.state_dict(keep_vars=True))
    _strict_load_params(params, state_dict, what)


def _strict_load_params(
    target: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], what: str
) -> None:
    """Copy ``state_dict`` into ``target`` tensors after exact key / shape checks."""
    missing = sorted(set(target) - set(state_dict), key=_natural_key)
    unexpected = sorted(set(state_dict) - set(target), key=_natural_key)
    if missing or unexpected:
        raise ValueError(
            f"{what}: state dict does not match. Missing keys: {missing}. Unexpected keys: {unexpected}."
        )
    bad = [
        f"{k}: expected {tuple(target[k].shape)}, got {tuple(state_dict[k].shape)}"
        for k in sorted(target, key=_natural_key)
        if tuple(target[k].shape) != tuple(state_dict[k].shape)
    ]
    if bad:
        raise ValueError(f"{what}: wrong tensor shapes: " + "; ".join(bad))
    with torch.no_grad():
        for k, t in target.items():
            t.copy_(state_dict[k].to(dtype=t.dtype, device=t.device))


def _natural_key(key: str) -> Sequence[object]:
    return [int(p) if p.isdigit() else p for p in key.split(".")]


__all__ = [
    "HEADS_WEIGHTS_NAME",
    "LPIPS",
    "NetLinLayer",
    "PerceptualWeightsMissingError",
    "ScalingLayer",
    "VGG16Features",
    "VGG16_TAP_CHANNELS",
    "VGG16_TAP_INDICES",
    "VGG_WEIGHTS_NAME",
    "build_perceptual_loss",
    "missing_weights_message",
    "normalize_tensor",
]
