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

Security note -- where hf_vae unpickles:
``.pth`` files are Python pickles, and unpickling an arbitrary pickle can run
arbitrary code.  The hf_vae models and checkpoints are safetensors only.  The
two upstream LPIPS checkpoints necessarily are read once, by
``hf_vae.training.lpips_weights`` (this script's logic): here, on files the user
chose, or in the trainer, on files it downloaded and whose sha256 matched -- and
always with ``torch.load(..., weights_only=True)``, PyTorch's restricted
unpickler that only reconstructs tensors and primitive containers and refuses
any other object.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

try:  # running from a checkout without `pip install -e .`
    from hf_vae.training.lpips_weights import convert, find_heads, load_checkpoint, split_state_dict  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from hf_vae.training.lpips_weights import convert, find_heads, load_checkpoint, split_state_dict  # noqa: F401


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
