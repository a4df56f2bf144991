"""Tests for hf_vae.training.{perceptual, discriminator, ldm_loss} and the LPIPS converter.

All core tests use randomly initialised networks; no pretrained weights are needed.
The one test that uses the real LPIPS heads runs only when HF_VAE_LPIPS_WHEEL
points to a downloaded lpips wheel (``pip download --no-deps lpips``).
"""

from __future__ import annotations

import importlib.util
import math
import os
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from hf_vae.training.discriminator import (
    ActNorm,
    NLayerDiscriminator,
    hinge_d_loss,
    vanilla_d_loss,
)
from hf_vae.training.ldm_loss import LatentDiffusionLoss
from hf_vae.training.perceptual import (
    HEADS_WEIGHTS_NAME,
    LPIPS,
    VGG_WEIGHTS_NAME,
    PerceptualWeightsMissingError,
    VGG16Features,
    build_perceptual_loss,
)

REPO = Path(__file__).resolve().parents[1]

# torchvision vgg16().features: conv indices and (in, out) channels.
TV_CONVS = {
    0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256),
    17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512),
}
POOLS_AFTER = {2, 7, 14, 21}  # a 2x2 max-pool follows these convs (before the next tapped block)
TAPS_AFTER = {2, 7, 14, 21, 28}  # the LPIPS taps are the ReLUs after these convs


@pytest.fixture(scope="module")
def lpips_random() -> LPIPS:
    torch.manual_seed(0)
    return LPIPS()


def _images(b=2, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(b, 3, size, size, generator=g)).clamp(-1, 1)
    return x, y


def _load_converter():
    path = REPO / "scripts" / "convert_lpips_weights.py"
    spec = importlib.util.spec_from_file_location("convert_lpips_weights", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------- VGG16 / LPIPS


def test_vgg16_features_keys_and_shapes(lpips_random):
    net = lpips_random.net
    assert isinstance(net, VGG16Features)
    expected = {f"features.{i}.{p}" for i in TV_CONVS for p in ("weight", "bias")}
    assert set(net.state_dict()) == expected
    for i, (cin, cout) in TV_CONVS.items():
        assert tuple(net.state_dict()[f"features.{i}.weight"].shape) == (cout, cin, 3, 3)
    assert len(net.features) == 31  # same Sequential length as torchvision
    outs = net(torch.randn(1, 3, 36, 36))
    assert [tuple(o.shape) for o in outs] == [
        (1, 64, 36, 36), (1, 128, 18, 18), (1, 256, 9, 9), (1, 512, 4, 4), (1, 512, 2, 2)
    ]
    assert all((o >= 0).all() for o in outs)  # post-ReLU
    for idx in (3, 8, 15, 22, 29):  # tapped ReLUs are not in-place
        assert isinstance(net.features[idx], nn.ReLU) and not net.features[idx].inplace


def test_lpips_state_dict_names(lpips_random):
    keys = set(lpips_random.state_dict())
    heads = {f"lin{k}.model.1.weight" for k in range(5)}
    assert heads <= keys
    assert keys - heads == {f"net.features.{i}.{p}" for i in TV_CONVS for p in ("weight", "bias")}
    assert [tuple(lpips_random.state_dict()[h].shape) for h in sorted(heads)] == [
        (1, 64, 1, 1), (1, 128, 1, 1), (1, 256, 1, 1), (1, 512, 1, 1), (1, 512, 1, 1)
    ]


def test_lpips_basic_properties(lpips_random):
    x, y = _images()
    d = lpips_random(x, y)
    assert d.shape == (2, 1, 1, 1)
    assert torch.all(d > 0)
    assert torch.allclose(lpips_random(x, x), torch.zeros_like(d), atol=1e-7)
    assert torch.allclose(lpips_random(y, x), d, rtol=1e-5, atol=1e-7)
    # [0, 1] inputs with normalize=True are the same as [-1, 1] inputs.
    assert torch.allclose(lpips_random((x + 1) / 2, (y + 1) / 2, normalize=True), d, rtol=1e-5, atol=1e-7)
    val, per_layer = lpips_random(x, y, return_per_layer=True)
    assert len(per_layer) == 5 and torch.allclose(sum(per_layer), val)


def test_lpips_frozen_eval_but_differentiable(lpips_random):
    assert all(not p.requires_grad for p in lpips_random.parameters())
    parent = nn.Module()
    parent.lp = lpips_random
    parent.train()
    assert not lpips_random.training and not lpips_random.lin0.model[0].training  # dropout stays off
    x, y = _images()
    y = y.clone().requires_grad_(True)
    a, b = lpips_random(x, y), lpips_random(x, y)
    assert torch.equal(a, b)  # deterministic: no dropout
    a.sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in lpips_random.parameters())


def _reference_lpips(sd, in0, in1):
    """Straightforward LPIPS (Zhang et al. 2018, lpips v0.1 'vgg') from a raw state dict."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def trunk(x):
        feats = []
        h = (x - shift) / scale
        for i in sorted(TV_CONVS):
            h = F.relu(F.conv2d(h, sd[f"net.features.{i}.weight"], sd[f"net.features.{i}.bias"], padding=1))
            if i in TAPS_AFTER:
                feats.append(h)
            if i in POOLS_AFTER:
                h = F.max_pool2d(h, 2, 2)
        return feats

    total = 0.0
    for k, (f0, f1) in enumerate(zip(trunk(in0), trunk(in1))):
        n0 = f0 / (f0.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        n1 = f1 / (f1.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = sd[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
        total = total + ((n0 - n1) ** 2 * w).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    return total


def test_lpips_matches_reference_recomputation(lpips_random):
    x, y = _images(b=2, size=40, seed=1)
    ours = lpips_random(x, y)
    ref = _reference_lpips(lpips_random.state_dict(), x, y)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


def test_lpips_safetensors_round_trip(tmp_path, lpips_random):
    vgg_path, heads_path = lpips_random.save_weights(tmp_path)
    assert os.path.basename(vgg_path) == VGG_WEIGHTS_NAME and os.path.basename(heads_path) == HEADS_WEIGHTS_NAME
    assert set(load_file(vgg_path)) == {f"features.{i}.{p}" for i in TV_CONVS for p in ("weight", "bias")}
    assert not lpips_random.is_pretrained
    for loaded in (LPIPS.from_pretrained(tmp_path), LPIPS.from_pretrained(vgg_path, heads_path),
                   build_perceptual_loss(str(tmp_path))):
        assert loaded.is_pretrained
        for k, v in lpips_random.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
    x, y = _images()
    assert torch.equal(LPIPS.from_pretrained(tmp_path)(x, y), lpips_random(x, y))


def test_lpips_loading_errors(tmp_path, lpips_random):
    sd = lpips_random.backbone_state_dict()
    heads = lpips_random.heads_state_dict()
    save_file(heads, str(tmp_path / "heads.safetensors"))

    bad = dict(sd)
    del bad["features.28.bias"]
    del bad["features.0.weight"]
    bad["classifier.0.weight"] = torch.zeros(2, 2)
    save_file(bad, str(tmp_path / "vgg_bad.safetensors"))
    with pytest.raises(ValueError) as ei:
        LPIPS.from_pretrained(tmp_path / "vgg_bad.safetensors", tmp_path / "heads.safetensors")
    msg = str(ei.value)
    assert "features.28.bias" in msg and "features.0.weight" in msg and "classifier.0.weight" in msg

    wrong = dict(sd)
    wrong["features.2.weight"] = torch.zeros(64, 64, 1, 1)
    save_file(wrong, str(tmp_path / "vgg_shape.safetensors"))
    with pytest.raises(ValueError, match=r"features\.2\.weight"):
        LPIPS.from_pretrained(tmp_path / "vgg_shape.safetensors", tmp_path / "heads.safetensors")

    heads_missing = {k: v for k, v in heads.items() if not k.startswith("lin4")}
    save_file(sd, str(tmp_path / "vgg.safetensors"))
    save_file(heads_missing, str(tmp_path / "heads_missing.safetensors"))
    with pytest.raises(ValueError, match=r"lin4\.model\.1\.weight"):
        LPIPS.from_pretrained(tmp_path / "vgg.safetensors", tmp_path / "heads_missing.safetensors")

    torch.save(sd, tmp_path / "vgg.pth")  # pickles are never read by the library
    with pytest.raises(ValueError, match="safetensors"):
        LPIPS.from_pretrained(tmp_path / "vgg.pth", tmp_path / "heads.safetensors")
    with pytest.raises(FileNotFoundError, match="convert_lpips_weights"):
        LPIPS.from_pretrained(tmp_path / "nope")


def test_convert_script(tmp_path, lpips_random):
    conv = _load_converter()
    # A torchvision-style checkpoint: features.* plus the classifier that must be dropped.
    tv_sd = dict(lpips_random.backbone_state_dict())
    tv_sd["classifier.0.weight"] = torch.zeros(4, 4)
    tv_sd["classifier.0.bias"] = torch.zeros(4)
    torch.save(tv_sd, tmp_path / "vgg16-test.pth")
    # The heads inside a (fake) lpips wheel, as shipped by `pip download lpips`.
    buf = tmp_path / "heads.pth"
    torch.save(lpips_random.heads_state_dict(), buf)
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    with zipfile.ZipFile(wheel_dir / "lpips-0.1.4-py3-none-any.whl", "w") as zf:
        zf.write(buf, "lpips/weights/v0.1/vgg.pth")

    expected = lpips_random.state_dict()

    def assert_same(folder):
        loaded = LPIPS.from_pretrained(folder)
        assert loaded.is_pretrained
        for k, v in loaded.state_dict().items():
            assert torch.equal(v, expected[k]), k

    # The heads are found from the .pth, the wheel, or the folder holding the wheel.
    wheel = wheel_dir / "lpips-0.1.4-py3-none-any.whl"
    assert conv.find_heads(str(buf)) == str(buf)
    for spec in (str(wheel), str(wheel_dir)):
        desc, raw = conv.find_heads(spec)
        assert desc.endswith("lpips/weights/v0.1/vgg.pth") and raw == buf.read_bytes()
    assert conv.main(["--vgg", str(tmp_path / "vgg16-test.pth"), "--heads", str(wheel_dir),
                      "--output", str(tmp_path / "out")]) == 0
    assert_same(tmp_path / "out")

    # A full lpips-package state dict (net.sliceN.idx.*, lin*, scaling_layer.*) also converts.
    full = {}
    slices = {1: range(0, 4), 2: range(4, 9), 3: range(9, 16), 4: range(16, 23), 5: range(23, 30)}
    for k, v in lpips_random.backbone_state_dict().items():
        idx = int(k.split(".")[1])
        s = next(n for n, r in slices.items() if idx in r)
        full[f"net.slice{s}.{idx}.{k.split('.')[2]}"] = v
    full.update(lpips_random.heads_state_dict())
    full["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    torch.save(full, tmp_path / "lpips_full.pth")
    conv.convert(str(tmp_path / "lpips_full.pth"), None, str(tmp_path / "out_full"))
    assert_same(tmp_path / "out_full")

    # torchvision's file-name hash prefix is verified.
    torch.save(tv_sd, tmp_path / "vgg16-deadbeef.pth")
    with pytest.raises(ValueError, match="sha256"):
        conv.convert(str(tmp_path / "vgg16-deadbeef.pth"), str(buf), str(tmp_path / "out_bad"))


def test_perceptual_refuses_random_weights(lpips_random):
    with pytest.raises(PerceptualWeightsMissingError) as ei:
        build_perceptual_loss()
    msg = str(ei.value)
    assert "vgg16-397923af.pth" in msg and "convert_lpips_weights.py" in msg and "perceptual_weight=0" in msg
    assert isinstance(build_perceptual_loss(allow_random_weights=True), LPIPS)

    with pytest.raises(PerceptualWeightsMissingError, match="perceptual_weight=0"):
        LatentDiffusionLoss(disc_start=0)  # default perceptual_weight=1.0 without a network
    with pytest.raises(PerceptualWeightsMissingError):
        LatentDiffusionLoss(disc_start=0, perceptual=lpips_random)  # random weights passed in
    # Explicit opt-outs.
    assert LatentDiffusionLoss(disc_start=0, perceptual_weight=0.0).perceptual_loss is None
    with pytest.warns(UserWarning, match="RANDOM"):
        assert LatentDiffusionLoss(disc_start=0, allow_random_weights=True).perceptual_loss is not None
    assert LatentDiffusionLoss(disc_start=0, perceptual=lpips_random, allow_random_weights=True).perceptual_loss \
        is lpips_random


@pytest.mark.skipif(not os.environ.get("HF_VAE_LPIPS_WHEEL"), reason="set HF_VAE_LPIPS_WHEEL to an lpips wheel")
def test_real_lpips_heads_from_wheel(tmp_path, lpips_random):
    """Optional: the real v0.1 heads from a downloaded lpips wheel convert and load."""
    conv = _load_converter()
    src = conv.find_heads(os.environ["HF_VAE_LPIPS_WHEEL"])
    _, heads = conv.split_state_dict(conv.load_checkpoint(src), "wheel")
    assert sorted(heads) == [f"lin{k}.model.1.weight" for k in range(5)]
    assert all((v >= 0).all() for v in heads.values())  # official heads are non-negative
    model = LPIPS()
    model.load_heads_state_dict(heads)
    x, y = _images()
    d = model(x, y)
    assert torch.isfinite(d).all() and (d > 0).all()


# --------------------------------------------------------------------------- discriminator


def test_discriminator_structure_and_keys():
    d = NLayerDiscriminator()
    convs = [m for m in d.main if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0], c.bias is not None) for c in convs] == [
        (3, 64, 2, True), (64, 128, 2, False), (128, 256, 2, False), (256, 512, 1, False), (512, 1, 1, True)
    ]
    assert all(c.kernel_size == (4, 4) and c.padding == (1, 1) for c in convs)
    kinds = [type(m).__name__ for m in d.main]
    assert kinds == ["Conv2d", "LeakyReLU", "Conv2d", "BatchNorm2d", "LeakyReLU", "Conv2d", "BatchNorm2d",
                     "LeakyReLU", "Conv2d", "BatchNorm2d", "LeakyReLU", "Conv2d"]
    assert all(m.negative_slope == 0.2 for m in d.main if isinstance(m, nn.LeakyReLU))
    # taming-transformers key names
    assert {k for k in d.state_dict() if k.endswith("weight")} == {
        "main.0.weight", "main.2.weight", "main.3.weight", "main.5.weight", "main.6.weight",
        "main.8.weight", "main.9.weight", "main.11.weight"}
    # weights_init: conv N(0, 0.02), BN weight N(1, 0.02), BN bias 0
    big = d.main[8].weight
    assert abs(big.mean().item()) < 1e-3 and abs(big.std().item() - 0.02) < 1e-3
    bn = d.main[9]
    assert abs(bn.weight.mean().item() - 1) < 5e-3 and bn.bias.abs().max().item() == 0

    assert tuple(NLayerDiscriminator(n_layers=2, ndf=8).main[-1].weight.shape) == (1, 32, 4, 4)
    assert NLayerDiscriminator(n_layers=5, ndf=8).main[-3].num_features == 64  # ndf * min(2^n, 8)


@pytest.mark.parametrize("size,out", [(64, 6), (256, 30)])
def test_discriminator_patch_shape(size, out):
    d = NLayerDiscriminator(ndf=8) if size == 256 else NLayerDiscriminator()
    assert d(torch.randn(2, 3, size, size)).shape == (2, 1, out, out)


def test_discriminator_actnorm():
    d = NLayerDiscriminator(ndf=8, use_actnorm=True)
    convs = [m for m in d.main if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)  # ActNorm variant keeps conv biases (as taming)
    assert sum(isinstance(m, ActNorm) for m in d.main) == 3
    d(torch.randn(4, 3, 64, 64))
    an = ActNorm(5)
    h = an(torch.randn(8, 5, 6, 6) * 3 + 2)
    assert an.initialized.item() == 1
    flat = h.transpose(0, 1).reshape(5, -1)
    assert torch.allclose(flat.mean(1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(flat.std(1), torch.ones(5), atol=1e-4)


def test_gan_losses_hand_values():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.5])
    # hinge: relu(1 - real) = [0, .5, 2], relu(1 + fake) = [0, 1, 2.5]
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3.5 / 3))
    sp = lambda t: math.log1p(math.exp(t))  # noqa: E731
    want = 0.5 * (sum(sp(-r) for r in real.tolist()) / 3 + sum(sp(f) for f in fake.tolist()) / 3)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(want, rel=1e-6)
    assert hinge_d_loss(torch.full((4,), 5.0), torch.full((4,), -5.0)).item() == 0.0


# --------------------------------------------------------------------------- LatentDiffusionLoss


class _Posterior:
    def __init__(self, kl):
        self._kl = kl

    def kl(self):
        return self._kl


def _toy_decoder(seed=0, b=2, size=32):
    torch.manual_seed(seed)
    h = torch.randn(b, 8, size, size)
    last = nn.Conv2d(8, 3, 3, padding=1)
    x = torch.rand(b, 3, size, size) * 2 - 1
    return h, last, x


def test_adaptive_weight_matches_gradient_ratio():
    h, last, x = _toy_decoder()
    loss_fn = LatentDiffusionLoss(disc_start=5, perceptual_weight=0.0, disc_weight=0.5, kl_weight=1e-3,
                                  disc_ndf=16)
    kl = torch.tensor([3.0, 5.0])
    recon = last(h)
    loss, log = loss_fn(x, recon, kl, optimizer_idx=0, global_step=5, last_layer=last.weight)

    # Independent computation of the same quantities.
    nll = (x - recon).abs().sum() / 2  # logvar = 0
    g = -loss_fn.discriminator(recon).mean()  # BN uses batch statistics in train mode: same logits
    gn = torch.autograd.grad(nll, last.weight, retain_graph=True)[0]
    gg = torch.autograd.grad(g, last.weight, retain_graph=True)[0]
    d_weight = 0.5 * torch.clamp(gn.norm() / (gg.norm() + 1e-4), 0, 1e4)
    assert log["train/d_weight"].item() == pytest.approx(d_weight.item(), rel=1e-5)
    assert log["train/disc_factor"].item() == 1.0
    want = nll + 1e-3 * kl.sum() / 2 + d_weight * g
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    # d_weight is detached: the gradient of the loss is grad(nll) + d_weight * grad(g).
    gl = torch.autograd.grad(loss, last.weight)[0]
    torch.testing.assert_close(gl, gn + d_weight * gg, rtol=1e-4, atol=1e-6)
    # Passing the layer itself works too.
    _, log2 = loss_fn(x, last(h), kl, 0, 5, last_layer=last)
    assert log2["train/d_weight"].item() == pytest.approx(d_weight.item(), rel=1e-5)


def test_disc_factor_zero_before_disc_start():
    h, last, x = _toy_decoder()
    loss_fn = LatentDiffusionLoss(disc_start=100, perceptual_weight=0.0, kl_weight=1e-2, disc_ndf=16)
    kl = torch.tensor([1.0, 2.0])
    recon = last(h)
    loss, log = loss_fn(x, recon, _Posterior(kl), optimizer_idx=0, global_step=99, last_layer=last.weight)
    assert log["train/disc_factor"].item() == 0.0 and log["train/d_weight"].item() == 0.0
    assert loss.item() == pytest.approx(((x - recon).abs().sum() / 2 + 1e-2 * 1.5).item(), rel=1e-6)
    assert torch.isfinite(log["train/g_loss"])
    d_loss, dlog = loss_fn(x, recon, optimizer_idx=1, global_step=99)
    assert d_loss.item() == 0.0 and set(dlog) == {"train/disc_loss", "train/logits_real", "train/logits_fake"}
    assert not loss_fn.discriminator_active(99) and loss_fn.discriminator_active(100)
    _, log = loss_fn(x, last(h), kl, optimizer_idx=0, global_step=100, last_layer=last.weight)
    assert log["train/disc_factor"].item() == 1.0 and log["train/d_weight"].item() > 0


def test_discriminator_step_uses_detached_inputs_and_loss_choice():
    h, last, x = _toy_decoder()
    for name, fn in (("hinge", hinge_d_loss), ("vanilla", vanilla_d_loss)):
        loss_fn = LatentDiffusionLoss(disc_start=0, perceptual_weight=0.0, disc_loss=name, disc_ndf=16)
        recon = last(h)
        d_loss, log = loss_fn(x, recon, None, optimizer_idx=1, global_step=0, split="val")
        want = fn(loss_fn.discriminator(x), loss_fn.discriminator(recon.detach()))
        assert d_loss.item() == pytest.approx(want.item(), rel=1e-5)
        assert "val/disc_loss" in log
        d_loss.backward()
        assert last.weight.grad is None  # the generator receives nothing from the D step
        assert loss_fn.discriminator.main[0].weight.grad is not None


def test_ldm_loss_with_perceptual_and_logvar():
    torch.manual_seed(0)
    lp = LPIPS()
    loss_fn = LatentDiffusionLoss(disc_start=10**9, perceptual=lp, perceptual_weight=0.7, logvar_init=0.3,
                                  learn_logvar=True, pixel_loss="l2", allow_random_weights=True, disc_ndf=8,
                                  disc_num_layers=2)
    x, y = _images(size=16)
    y.requires_grad_(True)
    kl = torch.tensor([2.0, 4.0])
    loss, log = loss_fn(x, y, kl, 0, 0)
    rec = (x - y) ** 2 + 0.7 * lp(x, y)
    nll = rec / math.exp(0.3) + 0.3
    want = nll.sum() / 2 + 1e-6 * 3.0
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert log["train/logvar"].item() == pytest.approx(0.3)
    loss.backward()
    assert loss_fn.logvar.grad is not None and y.grad is not None
    assert all(p.grad is None for p in lp.parameters())


def test_ldm_loss_keeps_the_log_variance_fixed_unless_asked_to_learn_it():
    # latent diffusion creates `logvar` as a parameter but never optimises it: it stays at logvar_init.
    h, last, x = _toy_decoder()
    fixed = LatentDiffusionLoss(disc_start=10**9, perceptual_weight=0.0, logvar_init=0.5, disc_ndf=8)
    loss, log = fixed(x, last(h), torch.tensor([1.0, 1.0]), 0, 0)
    loss.backward()
    assert not fixed.logvar.requires_grad and fixed.logvar.grad is None and float(fixed.logvar) == 0.5
    assert LatentDiffusionLoss(disc_start=0, perceptual_weight=0.0, learn_logvar=True, disc_ndf=8).logvar.requires_grad


def test_ldm_loss_vq_mode():
    h, last, x = _toy_decoder()
    loss_fn = LatentDiffusionLoss(disc_start=10, perceptual_weight=0.0, codebook_weight=1.0, disc_ndf=16)
    recon = last(h)
    cb = torch.tensor([0.2, 0.4])
    loss, log = loss_fn(x, recon, codebook_loss=cb, optimizer_idx=0, global_step=0, last_layer=last.weight)
    assert loss.item() == pytest.approx(((x - recon).abs().mean() + 0.3).item(), rel=1e-6)
    assert log["train/quant_loss"].item() == pytest.approx(0.3) and "train/kl_loss" not in log
    loss.backward()
    assert loss_fn.logvar.grad is None  # taming's VQ loss has no learned variance
    with pytest.raises(ValueError, match="exactly one"):
        loss_fn(x, last(h), torch.ones(2), codebook_loss=cb)


def test_ldm_loss_eval_and_argument_errors():
    h, last, x = _toy_decoder()
    loss_fn = LatentDiffusionLoss(disc_start=0, perceptual_weight=0.0, disc_ndf=16)
    kl = torch.ones(2)
    with torch.no_grad():  # validation: no gradients -> adaptive weight 0, no error
        loss, log = loss_fn(x, last(h), kl, 0, 10, last_layer=last.weight, split="val")
    assert log["val/d_weight"].item() == 0.0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="last_layer"):
        loss_fn(x, last(h), kl, 0, 10)
    with pytest.raises(ValueError, match="per-example"):
        loss_fn(x, last(h), kl.mean(), 0, 0, last_layer=last.weight)
    with pytest.raises(ValueError, match="optimizer_idx"):
        loss_fn(x, last(h), kl, 2, 0)
    with pytest.raises(RuntimeError, match="last_layer"):
        other = nn.Conv2d(8, 3, 3)
        loss_fn(x, last(h), kl, 0, 10, last_layer=other.weight)
    with pytest.raises(ValueError):
        LatentDiffusionLoss(disc_start=0, perceptual_weight=0.0, pixel_loss="l3")
    with pytest.raises(ValueError):
        LatentDiffusionLoss(disc_start=0, perceptual_weight=0.0, disc_loss="wgan")
