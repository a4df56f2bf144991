"""LPIPS weights fetched on first use: from a loopback HTTP server (127.0.0.1 only) serving random weights of the
real shapes, verified by sha256, converted once into the cache; a hash mismatch is refused and leaves nothing."""

import functools
import hashlib
import http.server
import threading

import pytest
import torch

from hf_vae.training import lpips_weights
from hf_vae.training.lpips_weights import WeightSource, default_lpips_weights, fetch_lpips_weights
from hf_vae.training.perceptual import HEADS_WEIGHTS_NAME, LPIPS, VGG_WEIGHTS_NAME


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """A folder of fake upstream checkpoints (random LPIPS weights, real shapes) served on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("upstream")
    torch.manual_seed(0)
    reference = LPIPS()
    torch.save(dict(reference.backbone_state_dict()), folder / "vgg16.pth")
    torch.save(dict(reference.heads_state_dict()), folder / "vgg.pth")
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    sha = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in ("vgg16.pth", "vgg.pth")}
    yield {"base": base, "sha": sha, "reference": reference, "requests": requests}
    server.shutdown()


def sources(upstream, vgg_sha=None):
    return (WeightSource("vgg16.pth", f"{upstream['base']}/vgg16.pth", vgg_sha or upstream["sha"]["vgg16.pth"]),
            WeightSource("vgg.pth", f"{upstream['base']}/vgg.pth", upstream["sha"]["vgg.pth"]))


def test_fetch_downloads_verifies_converts_once_and_reuses(upstream, tmp_path):
    upstream["requests"].clear()
    folder = fetch_lpips_weights(str(tmp_path / "cache"), sources(upstream), progress=False)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([HEADS_WEIGHTS_NAME, VGG_WEIGHTS_NAME])
    loaded = LPIPS.from_pretrained(folder)
    for key, value in upstream["reference"].state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    assert upstream["requests"] == ["/vgg16.pth", "/vgg.pth"]
    fetch_lpips_weights(str(tmp_path / "cache"), sources(upstream), progress=False)  # converted: no download
    assert len(upstream["requests"]) == 2


def test_a_download_with_the_wrong_hash_is_refused_and_nothing_is_kept(upstream, tmp_path):
    with pytest.raises(ValueError, match=r"sha256 .* does not match the expected 0000"):
        fetch_lpips_weights(str(tmp_path / "cache"), sources(upstream, vgg_sha="0000" * 16), progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_default_weights_offline_and_with_a_mirror_of_the_wrong_files(upstream, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, why = default_lpips_weights(progress=False)
    assert folder is None and "HF_HUB_OFFLINE is set" in why and str(tmp_path / "hf") in why
    # Online, with the URLs pointed at a mirror (the loopback server): its files are not the published ones, so
    # the official hashes refuse them.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_VAE_LPIPS_VGG_URL", f"{upstream['base']}/vgg16.pth")
    monkeypatch.setenv("HF_VAE_LPIPS_HEADS_URL", f"{upstream['base']}/vgg.pth")
    folder, why = default_lpips_weights(progress=False)
    assert folder is None and f"does not match the expected {lpips_weights.VGG16_SOURCE.sha256}" in why
    # Already converted in the cache: used as is, nothing is downloaded.
    fetch_lpips_weights(lpips_weights.lpips_cache_dir(), sources(upstream), progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert default_lpips_weights(progress=False) == (lpips_weights.lpips_cache_dir(), "")
