"""LPIPS weights: convert the upstream checkpoints to safetensors, and fetch them on first use.

`convert` turns torchvision's VGG16 (`vgg16-397923af.pth`) and lpips' v0.1 heads (`vgg.pth`) into the two
safetensors files `LPIPS.from_pretrained` reads (`scripts/convert_lpips_weights.py` is its command line).
`default_lpips_weights` is what the trainer calls when a perceptual term is wanted and no `--lpips_weights` were
given: the converted files in the Hugging Face cache, downloaded (with a progress bar), verified by sha256 and
converted there the first time, or None with the reason when that is not possible (offline, no network).

Security: `.pth` files are pickles. They are read only here, only after their hash matched (a download) or on the
user's explicit request (the script), and always with `torch.load(..., weights_only=True)`, PyTorch's restricted
unpickler that rebuilds tensors and plain containers and refuses any other object.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import re
import shutil
import socket
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union
from urllib.parse import urlparse

import torch
from safetensors.torch import save_file

from .perceptual import HEADS_WEIGHTS_NAME, LPIPS, VGG_WEIGHTS_NAME

logger = logging.getLogger(__name__)

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
            logger.warning("ignoring %d trunk tensors found in %s", len(trunk_from_heads), _describe(heads_source))

    trunk = {k: v.detach().to(torch.float32).contiguous() for k, v in trunk.items()}
    head_sd = {k: v.detach().to(torch.float32).contiguous() for k, v in head_sd.items()}

    # Validate: strict key and shape checks (raise ValueError listing problems).
    model = LPIPS()
    model.load_backbone_state_dict(trunk)
    model.load_heads_state_dict(head_sd)
    if any(float(v.min()) < 0 for v in head_sd.values()):
        logger.warning("some LPIPS head weights are negative; the official v0.1 heads are non-negative")

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


# ------------------------------------------------------------------------------------------------------------
# Fetching on first use
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightSource:
    """Where one upstream checkpoint is downloaded from, and the sha256 (or its leading hex digits) it must have."""

    name: str
    url: str
    sha256: str


#: torchvision publishes no full digest: its file names carry the first 8 hex digits of the sha256, which is what
#: torch.hub's `check_hash` verifies.
VGG16_SOURCE = WeightSource("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
                            "397923af")
#: lpips/weights/v0.1/vgg.pth of the lpips 0.1.4 wheel (the same file as in the PerceptualSimilarity repository).
HEADS_SOURCE = WeightSource(
    "vgg.pth", "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
    "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868")


def default_sources() -> Tuple[WeightSource, WeightSource]:
    """The two sources, with URLs overridable by HF_VAE_LPIPS_VGG_URL / HF_VAE_LPIPS_HEADS_URL (a mirror); the
    expected hashes are not overridable."""
    vgg = os.environ.get("HF_VAE_LPIPS_VGG_URL")
    heads = os.environ.get("HF_VAE_LPIPS_HEADS_URL")
    return (WeightSource(VGG16_SOURCE.name, vgg or VGG16_SOURCE.url, VGG16_SOURCE.sha256),
            WeightSource(HEADS_SOURCE.name, heads or HEADS_SOURCE.url, HEADS_SOURCE.sha256))


def lpips_cache_dir() -> str:
    """The converted weights' folder in the Hugging Face cache: $HF_HOME/hf_vae/lpips-vgg-v0.1."""
    from huggingface_hub import constants

    home = os.environ.get("HF_HOME") or constants.HF_HOME
    return os.path.join(home, "hf_vae", "lpips-vgg-v0.1")


def _converted(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, name)) for name in (VGG_WEIGHTS_NAME, HEADS_WEIGHTS_NAME))


def download(source: WeightSource, folder: str, progress: bool = True) -> str:
    """Download `source` into `folder` with a progress bar; refuse it (and keep nothing) unless its sha256 matches."""
    import urllib.request

    from tqdm.auto import tqdm

    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, source.name)
    digest = hashlib.sha256()
    fd, partial = tempfile.mkstemp(dir=folder, prefix=f".{source.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(source.url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {source.name}",
                      disable=not progress) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        found = digest.hexdigest()
        if not found.startswith(source.sha256):
            raise ValueError(f"{source.url}: sha256 {found} does not match the expected {source.sha256}: refusing "
                             f"the download (corrupt, or not the published file).")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


def fetch_lpips_weights(cache_dir: Optional[str] = None, sources: Optional[Tuple[WeightSource, WeightSource]] = None,
                        progress: bool = True) -> str:
    """The folder of converted LPIPS weights: downloaded, verified and converted on the first call, then reused.

    The two upstream checkpoints (about 530 MB for VGG16) are deleted once converted.
    """
    folder = cache_dir or lpips_cache_dir()
    if _converted(folder):
        return folder
    vgg_source, heads_source = sources or default_sources()
    downloads = os.path.join(folder, "downloads")
    try:
        vgg = download(vgg_source, downloads, progress)
        heads = download(heads_source, downloads, progress)
        convert(vgg, heads, folder, skip_hash_check=True)  # verified just now, against the sources' hashes
    finally:
        shutil.rmtree(downloads, ignore_errors=True)
    return folder


def _unreachable(url: str, timeout: float = 3.0) -> Optional[str]:
    target = urlparse(url)
    if target.scheme == "file":
        return None
    port = target.port or (443 if target.scheme == "https" else 80)
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    host = (urlparse(proxy).hostname, urlparse(proxy).port or 80) if proxy else (target.hostname, port)
    try:
        socket.create_connection(host, timeout=timeout).close()
    except OSError as error:
        return f"{host[0]}:{host[1]} did not answer ({error})"
    return None


def default_lpips_weights(progress: bool = True) -> Tuple[Optional[str], str]:
    """(folder of converted LPIPS weights, "") from the cache or fetched now, or (None, why there are none)."""
    folder = lpips_cache_dir()
    if _converted(folder):
        return folder, ""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return None, f"HF_HUB_OFFLINE is set and {folder} holds no converted LPIPS weights"
    sources = default_sources()
    for source in sources:
        why = _unreachable(source.url)
        if why:
            return None, f"no LPIPS weights in {folder}, and they cannot be downloaded: {why}"
    try:
        return fetch_lpips_weights(folder, sources, progress), ""
    except (OSError, ValueError) as error:
        return None, f"fetching the LPIPS weights into {folder} failed: {error}"
