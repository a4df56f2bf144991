#!/usr/bin/env python
"""Convert the VGG16 trunk and LPIPS heads you downloaded into safetensors for hf_vae.

Usage::

    # 1. torchvision's VGG16 ImageNet weights
    wget https://download.pytorch.org/models/vgg16-397923af.pth
    # 2. the LPIPS v0.1 linear heads, e.g. from the lpips wheel (do NOT install it:
    #    it pulls torchvision and a CUDA build of torch)
    pip download --no-deps lpips -d lpips_wheel/
    # 3. convert
    python scripts/convert_lpips_weights.py --vgg vgg16-397923af.pth \
        --heads lpips_wheel/ --output lpips_weights/

``--heads`` accepts the heads ``.pth`` itself (``lpips/weights/v0.1/vgg.pth`` or
taming-transformers' ``vgg.pth``), an lpips ``.whl``, a folder containing
either (an unpacked wheel, a source checkout, the ``pip download`` folder), or
may be omitted when the ``lpips`` package happens to be installed (it is located
without being imported).  ``--vgg`` accepts torchvision's VGG16 state dict or a
full ``lpips``/taming LPIPS state dict (``net.sliceN.{idx}.*``); in the latter
case the heads are taken from the same file when ``--heads`` is omitted.

Output (loaded by ``hf_vae.training.perceptual.LPIPS.from_pretrained(OUTPUT)``)::

    OUTPUT/vgg16_features.safetensors   features.{idx}.weight / .bias
    OUTPUT/lpips_vgg_heads.safetensors  lin{0..4}.model.1.weight

Security note -- why this script, and only this script, unpickles:
``.pth`` files are Python pickles, and unpickling an arbitrary pickle can run
arbitrary code.  The hf_vae library itself therefore only ever reads
safetensors, a plain tensor container that cannot execute anything.  Converting
the two upstream checkpoints necessarily reads a pickle once; that happens here,
in a script the user runs explicitly on files they chose to download, and always
with ``torch.load(..., weights_only=True)``, PyTorch's restricted unpickler that
only reconstructs tensors and primitive containers and refuses any other object.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import os
import re
import sys
import zipfile
from typing import Dict, Optional, Tuple, Union

import torch
from safetensors.torch import save_file

try:  # running from a checkout without `pip install -e .`
    from hf_vae.training.perceptual import HEADS_WEIGHTS_NAME, LPIPS, VGG_WEIGHTS_NAME
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from hf_vae.training.perceptual import HEADS_WEIGHTS_NAME, LPIPS, VGG_WEIGHTS_NAME

# Path of the v0.1 VGG heads inside the lpips package / wheel / repository.
LPIPS_HEADS_MEMBER = "lpips/weights/v0.1/vgg.pth"

_FEATURE_KEY = re.compile(r"^(?:module\.)?features\.(\d+)\.(weight|bias)$")
# lpips / taming LPIPS trunk: net.slice{1..5}.{torchvision index}.{weight,bias}
_SLICE_KEY = re.compile(r"^(?:module\.)?(?:perceptual_loss\.)?(?:net\.)?slice\d\.(\d+)\.(weight|bias)$")
_HEAD_KEY = re.compile(r"^(?:module\.)?(?:perceptual_loss\.)?(lin[0-4]\.model\.1\.weight)$")
_IGNORED_KEY = re.compile(r"^(?:module\.)?(?:perceptual_loss\.)?(classifier\.|scaling_layer\.)")

Source = Union[str, Tuple[str, bytes]]  # a path, or (description, raw bytes)


def load_checkpoint(source: Source) -> Dict[str, torch.Tensor]:
    """Read a ``.pth`` state dict with the restricted unpickler (see module docstring)."""
    if isinstance(source, tuple):
        obj = torch.load(io.BytesIO(source[1]), map_location="cpu", weights_only=True)
    else:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # Lightning-style wrapper
    if not isinstance(obj, dict):
        raise ValueError(f"{_describe(source)}: expected a state dict, got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def split_state_dict(sd: Dict[str, torch.Tensor], what: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Split a checkpoint into (trunk ``features.*``, heads ``lin*``) under hf_vae names."""
    trunk: Dict[str, torch.Tensor] = {}
    heads: Dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        m = _FEATURE_KEY.match(key) or _SLICE_KEY.match(key)
        if m:
            trunk[f"features.{m.group(1)}.{m.group(2)}"] = value
            continue
        m = _HEAD_KEY.match(key)
        if m:
            heads[m.group(1)] = value
            continue
        if _IGNORED_KEY.match(key):
            continue  # VGG classifier, LPIPS input-scaling constants
        unknown.append(key)
    if unknown:
        raise ValueError(f"{what}: unrecognised keys {sorted(unknown)}")
    return trunk, heads


def find_heads(spec: Optional[str]) -> Source:
    """Locate the LPIPS v0.1 VGG heads from a file, wheel, folder, or the installed package."""
    if spec is None:
        found = importlib.util.find_spec("lpips")  # locates without importing (no torchvision needed)
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(
                "--heads not given and the lpips package is not installed. Pass the heads .pth, an lpips "
                "wheel (`pip download --no-deps lpips -d DIR`) or its folder."
            )
        path = os.path.join(list(found.submodule_search_locations)[0], "weights", "v0.1", "vgg.pth")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"installed lpips package has no {path}")
        return path
    if os.path.isdir(spec):
        for rel in (LPIPS_HEADS_MEMBER, "weights/v0.1/vgg.pth", "vgg.pth"):
            cand = os.path.join(spec, rel)
            if os.path.isfile(cand):
                return cand
        wheels = sorted(f for f in os.listdir(spec) if f.startswith("lpips-") and f.endswith(".whl"))
        if wheels:
            return find_heads(os.path.join(spec, wheels[-1]))
        raise FileNotFoundError(f"no {LPIPS_HEADS_MEMBER}, vgg.pth or lpips-*.whl under {spec}")
    if not os.path.isfile(spec):
        raise FileNotFoundError(spec)
    if zipfile.is_zipfile(spec) and spec.endswith((".whl", ".zip")):
        with zipfile.ZipFile(spec) as zf:
            names = [n for n in zf.namelist() if n.endswith(LPIPS_HEADS_MEMBER)]
            if not names:
                raise FileNotFoundError(f"{spec} does not contain {LPIPS_HEADS_MEMBER}")
            return (f"{spec}!{names[0]}", zf.read(names[0]))
    return spec


def _describe(source: Source) -> str:
    return source[0] if isinstance(source, tuple) else source


def _sha256(source: Source) -> str:
    h = hashlib.sha256()
    if isinstance(source, tuple):
        h.update(source[1])
    else:
        with open(source, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _check_torchvision_hash(path: str, digest: str) -> None:
    """torchvision names checkpoints ``<name>-<first 8 hex of sha256>.pth``; verify it."""
    m = re.match(r"^vgg16-([0-9a-f]{8,})\.pth$", os.path.basename(path))
    if m and not digest.startswith(m.group(1)):
        raise ValueError(
            f"{path}: sha256 {digest[:12]}... does not match the hash prefix in the file name "
            f"({m.group(1)}); the download is corrupt or not the torchvision file. "
            "Use --skip-hash-check to convert it anyway."
        )


def convert(vgg: str, heads: Optional[str], output: str, skip_hash_check: bool = False) -> Tuple[str, str]:
    """Convert the checkpoints, validate them against :class:`LPIPS`, write safetensors.

    Returns the paths of the two written files.
    """
    vgg_sha = _sha256(vgg)
    if not skip_hash_check:
        _check_torchvision_hash(vgg, vgg_sha)
    trunk, heads_from_vgg = split_state_dict(load_checkpoint(vgg), vgg)

    if heads is None and heads_from_vgg:
        heads_source: Source = vgg
        head_sd = heads_from_vgg
    else:
        heads_source = find_heads(heads)
        trunk_from_heads, head_sd = split_state_dict(load_checkpoint(heads_source), _describe(heads_source))
        if trunk_from_heads and heads is not None:
            print(f"note: ignoring {len(trunk_from_heads)} trunk tensors found in {_describe(heads_source)}")

    trunk = {k: v.detach().to(torch.float32).contiguous() for k, v in trunk.items()}
    head_sd = {k: v.detach().to(torch.float32).contiguous() for k, v in head_sd.items()}

    # Validate: strict key and shape checks (raise ValueError listing problems).
    model = LPIPS()
    model.load_backbone_state_dict(trunk)
    model.load_heads_state_dict(head_sd)
    if any(float(v.min()) < 0 for v in head_sd.values()):
        print("warning: some LPIPS head weights are negative; the official v0.1 heads are non-negative")

    os.makedirs(output, exist_ok=True)
    vgg_out = os.path.join(output, VGG_WEIGHTS_NAME)
    heads_out = os.path.join(output, HEADS_WEIGHTS_NAME)
    save_file(trunk, vgg_out, metadata={
        "format": "pt",
        "content": "torchvision vgg16 features (ImageNet)",
        "source": os.path.basename(vgg),
        "source_sha256": vgg_sha,
    })
    save_file(head_sd, heads_out, metadata={
        "format": "pt",
        "content": "lpips v0.1 vgg linear heads",
        "source": os.path.basename(_describe(heads_source)),
        "source_sha256": _sha256(heads_source),
    })
    return vgg_out, heads_out


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vgg", required=True, help="torchvision vgg16-397923af.pth (or a full LPIPS state dict)")
    parser.add_argument("--heads", default=None,
                        help="LPIPS v0.1 heads: vgg.pth, an lpips .whl, or a folder holding either "
                             "(default: the installed lpips package, or the --vgg file if it has heads)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--skip-hash-check", action="store_true",
                        help="do not verify the sha256 prefix in torchvision's file name")
    args = parser.parse_args(argv)
    vgg_out, heads_out = convert(args.vgg, args.heads, args.output, skip_hash_check=args.skip_hash_check)
    print(f"wrote {vgg_out}\nwrote {heads_out}")
    print(f"load with: LPIPS.from_pretrained({args.output!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
