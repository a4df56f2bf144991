"""PatchGAN discriminator and GAN losses of the taming / latent-diffusion autoencoders.

The discriminator is pix2pix's "NLayerDiscriminator" (Isola et al., "Image-to-Image
Translation with Conditional Adversarial Networks", CVPR 2017,
https://arxiv.org/abs/1611.07004) in the exact form used by taming-transformers
(Esser et al., "Taming Transformers for High-Resolution Image Synthesis", CVPR 2021)
and latent-diffusion (Rombach et al., CVPR 2022).  Module and parameter names
(``main.{i}.*``, ActNorm ``loc``/``scale``/``initialized``) follow taming, so
its discriminator weights load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ActNorm(nn.Module):
    """Activation normalisation (Kingma & Dhariwal, Glow, 2018), as in taming.

    Per-channel affine ``scale * (x + loc)``; on the first forward in training
    mode ``loc``/``scale`` are initialised from the batch so the output has zero
    mean and unit variance per channel.  Input (B, C, H, W) or (B, C).
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        mean = flat.mean(1).view(1, -1, 1, 1)
        std = flat.std(1).view(1, -1, 1, 1)
        self.loc.copy_(-mean)
        self.scale.copy_(1.0 / (std + 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = x.dim() == 2
        if squeeze:
            x = x[:, :, None, None]
        if self.training and int(self.initialized.item()) == 0:
            self.initialize(x)
            self.initialized.fill_(1)
        h = self.scale * (x + self.loc)
        return h[:, :, 0, 0] if squeeze else h


class NLayerDiscriminator(nn.Module):
    """pix2pix PatchGAN discriminator (taming-transformers variant).

    Layout (all convs 4x4, padding 1, LeakyReLU slope 0.2):

    * conv ``input_nc -> ndf``, stride 2, with bias, no norm;
    * for n in 1..n_layers-1: conv ``ndf*min(2^(n-1),8) -> ndf*min(2^n,8)``,
      stride 2, no bias, norm;
    * conv ``-> ndf*min(2^n_layers,8)``, stride 1, no bias, norm;
    * conv ``-> 1``, stride 1, with bias (the patch logits).

    Norm is BatchNorm2d, or ActNorm with ``use_actnorm=True`` (then the normed
    convs keep their bias, as in taming).  Weights are initialised with
    :func:`weights_init`.

    Forward: (B, input_nc, H, W) -> logits (B, 1, H', W'); for n_layers=3,
    256x256 -> 30x30 and 64x64 -> 6x6 (each stride-2 conv halves, each
    stride-1 conv removes one pixel).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, use_actnorm: bool = False) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        norm_layer = ActNorm if use_actnorm else nn.BatchNorm2d
        use_bias = use_actnorm  # BatchNorm has its own affine shift
        kw, padw = 4, 1
        sequence: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
            nn.LeakyReLU(0.2, True),
        ]
        nf_mult = 1
        for n in range(1, n_layers):  # gradually increase the number of filters
            nf_mult_prev, nf_mult = nf_mult, min(2**n, 8)
            sequence += [
                nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=2, padding=padw, bias=use_bias),
                norm_layer(ndf * nf_mult),
                nn.LeakyReLU(0.2, True),
            ]
        nf_mult_prev, nf_mult = nf_mult, min(2**n_layers, 8)
        sequence += [
            nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=1, padding=padw, bias=use_bias),
            norm_layer(ndf * nf_mult),
            nn.LeakyReLU(0.2, True),
        ]
        sequence += [nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw)]  # 1-channel patch map
        self.main = nn.Sequential(*sequence)
        self.apply(weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def weights_init(m: nn.Module) -> None:
    """DCGAN / pix2pix init: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0.

    Conv biases keep PyTorch's default initialisation, as in taming.
    """
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss ``0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))``.

    (Lim & Ye 2017, "Geometric GAN"; as in taming.)  Logits of any shape -> scalar.
    """
    loss_real = torch.mean(F.relu(1.0 - logits_real))
    loss_fake = torch.mean(F.relu(1.0 + logits_fake))
    return 0.5 * (loss_real + loss_fake)


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN discriminator loss (Goodfellow et al. 2014), as in taming.

    ``0.5 * (mean softplus(-D(x)) + mean softplus(D(x_hat)))``, i.e. binary
    cross-entropy with real=1 / fake=0 on the logits.  Logits of any shape -> scalar.
    """
    return 0.5 * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake)))


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """``value`` while ``global_step < threshold``, else ``weight`` (taming's warm-up switch)."""
    return value if global_step < threshold else weight


__all__ = ["ActNorm", "NLayerDiscriminator", "adopt_weight", "hinge_d_loss", "vanilla_d_loss", "weights_init"]
