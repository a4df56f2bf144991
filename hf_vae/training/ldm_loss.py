"""The latent-diffusion / taming autoencoder loss: pixel + LPIPS + KL (or codebook) + PatchGAN.

A clean re-write of

* ``LPIPSWithDiscriminator`` from latent-diffusion's
  ``ldm/modules/losses/contperceptual.py`` (Rombach et al., "High-Resolution
  Image Synthesis with Latent Diffusion Models", CVPR 2022) -- the loss that
  trained Stable Diffusion's KL-f8 autoencoder; and
* ``VQLPIPSWithDiscriminator`` from taming-transformers'
  ``taming/modules/losses/vqperceptual.py`` (Esser et al., "Taming Transformers
  for High-Resolution Image Synthesis", CVPR 2021) -- the VQGAN loss,

in one module.  Which of the two is computed is chosen per call: pass ``kl``
(KL autoencoder) or ``codebook_loss`` (VQ autoencoder).

Generator step (``optimizer_idx=0``), KL autoencoder::

    rec      = |x - x_hat|  (or (x - x_hat)^2)  + perceptual_weight * LPIPS(x, x_hat)   per pixel, (B, C, H, W)
    nll      = rec / exp(logvar) + logvar                                           scalar logvar, fixed (LDM) or learned
    nll_loss = sum(nll) / B          kl_loss = sum(kl) / B
    g_loss   = -mean(D(x_hat))
    d_weight = clamp(||dL_nll/dW|| / (||dL_g/dW|| + 1e-4), 0, 1e4).detach() * disc_weight   W = decoder's last layer
    loss     = nll_loss + kl_weight * kl_loss + d_weight * disc_factor * g_loss

(``disc_factor`` is 0 before ``disc_start``.)  The adaptive weight d_weight is
from Esser et al. 2021, eq. 7.  Note that LPIPS (B, 1, 1, 1) is broadcast over
the pixels before the sum, so per pixel it has the same weight as the L1 term.

VQ autoencoder (taming's ``VQLPIPSWithDiscriminator``): no logvar and a mean
instead of a per-example sum::

    nll_loss = mean(rec)
    loss     = nll_loss + d_weight * disc_factor * g_loss + codebook_weight * mean(codebook_loss)

Discriminator step (``optimizer_idx=1``), on detached inputs::

    d_loss = disc_factor * {hinge | vanilla}(D(x), D(x_hat))
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

from .discriminator import NLayerDiscriminator, adopt_weight, hinge_d_loss, vanilla_d_loss
from .perceptual import LPIPS, PerceptualWeightsMissingError, missing_weights_message

_D_LOSSES: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "hinge": hinge_d_loss,
    "vanilla": vanilla_d_loss,
}


class LatentDiffusionLoss(nn.Module):
    """Autoencoder loss of latent diffusion (KL) and taming's VQGAN (codebook).

    Args:
        disc_start: global step from which the adversarial terms are switched on
            (``disc_factor`` is 0 for ``global_step < disc_start``). KL-f8: 50001.
        logvar_init: value of the scalar output log-variance of the NLL (its initial value if learned).
        learn_logvar: learn the log-variance. Off by default, as in latent diffusion, whose trainer creates
            ``logvar`` as a parameter but never gives it to an optimiser, so it stays at ``logvar_init``; a learned
            log-variance changes the balance between the reconstruction and the KL and adversarial terms.
        kl_weight: weight of the KL term (KL-f8: 1e-6).
        pixel_loss: ``"l1"`` (|x - x_hat|) or ``"l2"`` ((x - x_hat)^2).
        perceptual_weight: weight of LPIPS; 0 disables the perceptual term.
        perceptual: the perceptual module (an :class:`LPIPS` from
            ``LPIPS.from_pretrained``, any module mapping two (B, 3, H, W)
            images to (B, 1, 1, 1)), or a path accepted by
            ``LPIPS.from_pretrained``, or None.
        disc_num_layers, disc_in_channels, disc_ndf, use_actnorm: PatchGAN layout
            (:class:`NLayerDiscriminator`).
        disc_factor: weight of the adversarial term once active.
        disc_weight: multiplies the adaptive weight (KL-f8: 0.5; taming VQGAN: 1.0 or 0.8).
        disc_loss: ``"hinge"`` or ``"vanilla"``.
        codebook_weight: weight of ``codebook_loss`` in VQ mode (taming: 1.0).
        allow_random_weights: tests only. Permits a perceptual module without
            pretrained weights (and builds a random LPIPS if ``perceptual`` is None).

    Raises:
        PerceptualWeightsMissingError: ``perceptual_weight > 0`` but no pretrained
            perceptual network was given (see the message for how to get one).

    Attributes:
        logvar: scalar ``nn.Parameter`` (KL mode only), with ``requires_grad`` only
            when ``learn_logvar``; include it in the generator optimiser then.
        discriminator: the :class:`NLayerDiscriminator` (optimise it with a
            separate optimiser).
        perceptual_loss: the frozen perceptual module, or None.
    """

    def __init__(
        self,
        disc_start: int,
        logvar_init: float = 0.0,
        learn_logvar: bool = False,
        kl_weight: float = 1e-6,
        pixel_loss: str = "l1",
        perceptual_weight: float = 1.0,
        perceptual: Union[nn.Module, str, "os.PathLike[str]", None] = None,
        disc_num_layers: int = 3,
        disc_in_channels: int = 3,
        disc_factor: float = 1.0,
        disc_weight: float = 0.5,
        disc_loss: str = "hinge",
        disc_ndf: int = 64,
        use_actnorm: bool = False,
        codebook_weight: float = 1.0,
        allow_random_weights: bool = False,
    ) -> None:
        super().__init__()
        if pixel_loss not in ("l1", "l2"):
            raise ValueError(f"pixel_loss must be 'l1' or 'l2', got {pixel_loss!r}")
        if disc_loss not in _D_LOSSES:
            raise ValueError(f"disc_loss must be one of {sorted(_D_LOSSES)}, got {disc_loss!r}")
        if perceptual_weight < 0:
            raise ValueError(f"perceptual_weight must be >= 0, got {perceptual_weight}")

        self.disc_start = int(disc_start)
        self.kl_weight = float(kl_weight)
        self.pixel_loss = pixel_loss
        self.perceptual_weight = float(perceptual_weight)
        self.disc_factor = float(disc_factor)
        self.discriminator_weight = float(disc_weight)
        self.disc_loss_name = disc_loss
        self.disc_loss = _D_LOSSES[disc_loss]
        self.codebook_weight = float(codebook_weight)

        self.perceptual_loss: Optional[nn.Module] = self._build_perceptual(perceptual, allow_random_weights)
        # Output log-variance of the decoder's Laplace (l1) / Gaussian (l2) likelihood.
        self.learn_logvar = bool(learn_logvar)
        self.logvar = nn.Parameter(torch.full((), float(logvar_init)), requires_grad=self.learn_logvar)
        self.discriminator = NLayerDiscriminator(
            input_nc=disc_in_channels, ndf=disc_ndf, n_layers=disc_num_layers, use_actnorm=use_actnorm
        )

    # ------------------------------------------------------------------ setup

    def _build_perceptual(self, perceptual: Any, allow_random_weights: bool) -> Optional[nn.Module]:
        if self.perceptual_weight == 0:
            return None
        if perceptual is None:
            if not allow_random_weights:
                raise PerceptualWeightsMissingError(
                    missing_weights_message(
                        f"LatentDiffusionLoss(perceptual_weight={self.perceptual_weight}) was built without a "
                        "perceptual network. The LPIPS term"
                    )
                )
            warnings.warn("LatentDiffusionLoss: using a RANDOMLY initialised LPIPS (allow_random_weights=True).")
            return LPIPS()
        if isinstance(perceptual, (str, os.PathLike)):
            return LPIPS.from_pretrained(perceptual)
        if not isinstance(perceptual, nn.Module):
            raise TypeError(f"perceptual must be an nn.Module, a weights path or None, got {type(perceptual)}")
        if not getattr(perceptual, "is_pretrained", True) and not allow_random_weights:
            raise PerceptualWeightsMissingError(
                missing_weights_message("The perceptual module passed to LatentDiffusionLoss has random weights. It")
            )
        for p in perceptual.parameters():
            p.requires_grad_(False)
        return perceptual.eval()

    # ------------------------------------------------------------------ helpers

    def discriminator_active(self, global_step: int) -> bool:
        """Whether the adversarial terms have non-zero weight at ``global_step``.

        Before ``disc_start`` a trainer may skip the discriminator step entirely.
        """
        return adopt_weight(self.disc_factor, global_step, threshold=self.disc_start) > 0

    def calculate_adaptive_weight(
        self, nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: Union[torch.Tensor, nn.Module]
    ) -> torch.Tensor:
        """Esser et al. 2021, eq. 7: balance the GAN gradient against the reconstruction gradient.

        ``clamp(||grad_W nll_loss|| / (||grad_W g_loss|| + 1e-4), 0, 1e4).detach() * disc_weight``
        with W = ``last_layer`` (the decoder's final conv weight, or that conv).
        Returns a 0-dim tensor.
        """
        if isinstance(last_layer, nn.Module):
            last_layer = last_layer.weight  # type: ignore[assignment]
        try:
            nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
            g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        except RuntimeError as e:
            raise RuntimeError(
                "LatentDiffusionLoss: could not differentiate the losses w.r.t. last_layer; it must be the "
                "weight of the decoder's final layer that produced `reconstructions`."
            ) from e
        d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
        d_weight = torch.clamp(d_weight, 0.0, 1e4).detach()
        return d_weight * self.discriminator_weight

    def _pixel(self, inputs: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        diff = inputs.contiguous() - reconstructions.contiguous()
        return diff.abs() if self.pixel_loss == "l1" else diff * diff

    @staticmethod
    def _per_example_kl(kl: Any, batch: int) -> torch.Tensor:
        if hasattr(kl, "kl") and callable(kl.kl):  # a DiagonalGaussianDistribution-like posterior
            kl = kl.kl()
        if not isinstance(kl, torch.Tensor):
            raise TypeError(f"kl must be a tensor of shape (B,) or a posterior with .kl(), got {type(kl)}")
        if kl.dim() == 0 or kl.shape[0] != batch:
            raise ValueError(
                f"kl must be per-example with leading dimension B={batch} (e.g. posterior.kl(), shape (B,)), "
                f"got shape {tuple(kl.shape)}; a batch mean would silently be scaled by 1/B."
            )
        return kl

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        kl: Any = None,
        optimizer_idx: int = 0,
        global_step: int = 0,
        last_layer: Union[torch.Tensor, nn.Module, None] = None,
        split: str = "train",
        weights: Optional[torch.Tensor] = None,
        codebook_loss: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Compute the generator (``optimizer_idx=0``) or discriminator (``1``) loss.

        Args:
            inputs: images x, (B, C, H, W), in [-1, 1].
            reconstructions: decoder outputs x_hat, (B, C, H, W).
            kl: KL mode: per-example KL, shape (B,) (or (B, ...), summed), or a
                posterior with ``.kl()`` returning that. Not needed for ``optimizer_idx=1``.
            optimizer_idx: 0 = autoencoder (generator) step, 1 = discriminator step.
            global_step: training step, compared with ``disc_start``.
            last_layer: the decoder's last layer weight (or that layer) for the
                adaptive weight; required once the discriminator is active and
                gradients are enabled.
            split: prefix of the log keys (``"train"``, ``"val"``).
            weights: optional per-pixel weights of the NLL (KL mode), broadcastable to x.
            codebook_loss: VQ mode instead of ``kl``: the quantiser's codebook /
                commitment loss, scalar or per-example; its mean is weighted by
                ``codebook_weight``.

        Returns:
            ``(loss, log)``: a scalar tensor and a dict ``"{split}/name" -> detached
            0-dim tensor`` (call ``.item()`` when logging).

        When there is no gradient to compute the adaptive weight with (e.g. under
        ``torch.no_grad()`` in validation), ``d_weight`` is 0.  Before
        ``disc_start`` the adaptive weight is not computed (it would be multiplied
        by 0) and is logged as 0, and the generator's ``D(x_hat)`` is evaluated
        without a graph.
        """
        if inputs.shape != reconstructions.shape:
            raise ValueError(
                f"inputs {tuple(inputs.shape)} and reconstructions {tuple(reconstructions.shape)} differ in shape"
            )
        if optimizer_idx == 0:
            return self._generator_step(inputs, reconstructions, kl, global_step, last_layer, split, weights,
                                        codebook_loss)
        if optimizer_idx == 1:
            return self._discriminator_step(inputs, reconstructions, global_step, split)
        raise ValueError(f"optimizer_idx must be 0 (generator) or 1 (discriminator), got {optimizer_idx}")

    def _generator_step(self, inputs, reconstructions, kl, global_step, last_layer, split, weights, codebook_loss):
        if (kl is None) == (codebook_loss is None):
            raise ValueError("pass exactly one of `kl` (KL autoencoder) or `codebook_loss` (VQ autoencoder)")
        vq_mode = codebook_loss is not None
        b = inputs.shape[0]
        zero = inputs.new_zeros(())

        rec_loss = self._pixel(inputs, reconstructions)  # (B, C, H, W)
        if self.perceptual_loss is not None:
            p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())  # (B, 1, 1, 1)
            rec_loss = rec_loss + self.perceptual_weight * p_loss
        else:
            p_loss = zero

        if vq_mode:
            if weights is not None:
                raise ValueError("`weights` is only supported with `kl` (KL autoencoder)")
            nll_loss = torch.mean(rec_loss)
            weighted_nll_loss = nll_loss
            reg_loss = torch.mean(codebook_loss)
            reg_term = self.codebook_weight * reg_loss
        else:
            nll = rec_loss / torch.exp(self.logvar) + self.logvar
            weighted = nll if weights is None else weights * nll
            weighted_nll_loss = torch.sum(weighted) / b
            nll_loss = torch.sum(nll) / b
            reg_loss = torch.sum(self._per_example_kl(kl, b)) / b
            reg_term = self.kl_weight * reg_loss

        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.disc_start)
        if disc_factor > 0:
            logits_fake = self.discriminator(reconstructions.contiguous())
            g_loss = -torch.mean(logits_fake)
            if torch.is_grad_enabled() and nll_loss.requires_grad and g_loss.requires_grad:
                if last_layer is None:
                    raise ValueError(
                        "LatentDiffusionLoss: `last_layer` (the decoder's last conv weight) is required for the "
                        "adaptive GAN weight once global_step >= disc_start."
                    )
                d_weight = self.calculate_adaptive_weight(nll_loss, g_loss, last_layer)
            else:  # no gradient available (evaluation): as in the original, weight 0
                d_weight = zero
        else:
            # The adversarial term has weight 0: skip the graph (and the two extra
            # backward passes of the adaptive weight); only log g_loss.
            with torch.no_grad():
                g_loss = -torch.mean(self.discriminator(reconstructions.contiguous()))
            d_weight = zero

        loss = weighted_nll_loss + reg_term + d_weight * disc_factor * g_loss

        log = {
            f"{split}/total_loss": loss.detach(),
            f"{split}/nll_loss": nll_loss.detach(),
            f"{split}/rec_loss": rec_loss.detach().mean(),
            f"{split}/p_loss": p_loss.detach().mean(),
            f"{split}/d_weight": d_weight.detach(),
            f"{split}/disc_factor": torch.tensor(float(disc_factor), device=inputs.device),
            f"{split}/g_loss": g_loss.detach(),
        }
        if vq_mode:
            log[f"{split}/quant_loss"] = reg_loss.detach()
        else:
            log[f"{split}/kl_loss"] = reg_loss.detach()
            log[f"{split}/logvar"] = self.logvar.detach()
        return loss, log

    def _discriminator_step(self, inputs, reconstructions, global_step, split):
        logits_real = self.discriminator(inputs.contiguous().detach())
        logits_fake = self.discriminator(reconstructions.contiguous().detach())
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.disc_start)
        d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
        log = {
            f"{split}/disc_loss": d_loss.detach(),
            f"{split}/logits_real": logits_real.detach().mean(),
            f"{split}/logits_fake": logits_fake.detach().mean(),
        }
        return d_loss, log


__all__ = ["LatentDiffusionLoss"]
