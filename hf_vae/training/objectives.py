"""What the trainer minimises, per variant.

    ElboObjective         the model's own loss: −ELBO (VAE, CVAE), β·KL or capacity (β-VAE), VQ terms (VQ-VAE)
    AdversarialObjective  latent diffusion's autoencoder loss (KLAE) or taming's VQGAN loss (VQ-VAE):
                          pixel + perceptual (LPIPS) + KL or codebook terms + a PatchGAN discriminator switched on
                          at `disc_start`, weighted by the adaptive factor on the decoder's last layer
                          (hf_vae.training.ldm_loss.LatentDiffusionLoss does the arithmetic)
    PriorObjective        a prior's cross-entropy on the code maps of a frozen VQ-VAE, in nats per code

Both expose the same small interface, so the training loop has one code path:

    generator_loss(model, batch, step) -> (loss, logs, output)   forward pass of the (DDP-wrapped) model
    discriminator_active(step) -> bool                            whether a discriminator step is due
    discriminator_loss(batch, output, step) -> (loss, logs)       on detached reconstructions
    extra_parameters() / discriminator_parameters()               trained outside the published model
    generator_betas / discriminator_betas                         Adam's betas each prescribes (None: default)

The discriminator and the learned log-variance are not part of the model that gets published; they live in the
training state (checkpointed and resumed through `state_dict`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from ..distributions import DiagonalGaussianDistribution
from ..families import FAMILIES, get as get_family

#: the loss terms worth showing in the progress bar, by output field
_ELBO_LOG_FIELDS = ("reconstruction_loss", "regularisation_loss", "kl", "perplexity", "codebook_usage")
_SHORT_NAMES = {"reconstruction_loss": "rec", "regularisation_loss": "reg", "codebook_usage": "usage",
                "perplexity": "ppl"}

logger = logging.getLogger("hf_vae.training")


def _inputs(batch: Dict[str, torch.Tensor], model_is_conditional: bool, name: str):
    labels = batch.get("labels")
    if model_is_conditional and labels is None:
        raise ValueError(f"The conditional model needs labels, but the batches of {name!r} have only "
                         f"{sorted(batch)}: expected a dataset with a label column (--label_column).")
    return batch["pixel_values"], labels if model_is_conditional else None


def _posterior(output) -> DiagonalGaussianDistribution:
    """q(z|x) from the posterior parameters a forward output carries."""
    return DiagonalGaussianDistribution(mean=output.posterior_mean, logvar=output.posterior_logvar)


class ElboObjective:
    """Minimise the model's own `output.loss`."""

    #: Adam's betas for the model, when the objective prescribes them (None: the trainer's default)
    generator_betas = None
    #: Adam's betas for a discriminator it trains (the GAN default of latent diffusion)
    discriminator_betas = (0.5, 0.9)

    def __init__(self, is_conditional: bool, dataset_name: str = "dataset"):
        self.is_conditional = is_conditional
        self.dataset_name = dataset_name

    def to(self, device) -> "ElboObjective":
        return self

    def extra_parameters(self) -> List[nn.Parameter]:
        return []

    def discriminator_parameters(self) -> List[nn.Parameter]:
        return []

    def discriminator_active(self, step: int) -> bool:
        return False

    def generator_loss(self, model, batch, step: int):
        pixel_values, labels = _inputs(batch, self.is_conditional, self.dataset_name)
        output = model(pixel_values, labels=labels)
        logs = {"loss": output.loss.detach()}
        for name in _ELBO_LOG_FIELDS:
            value = getattr(output, name, None)
            if value is not None:
                logs[_SHORT_NAMES.get(name, name)] = value.detach().float()
        return output.loss, logs, output

    def state_dict(self) -> Dict:
        return {}

    def load_state_dict(self, state: Dict) -> None:
        pass


class DiscriminatorObjective(ElboObjective):
    """An ELBO-style objective with a discriminator that trains alongside the model (its own optimiser,
    checkpointed, not published): FactorVAE's latent critic, the AAE's, the VAE-GAN's. A subclass sets
    `self.discriminator` and writes `generator_loss` / `discriminator_loss`."""

    discriminator: nn.Module

    def to(self, device) -> "DiscriminatorObjective":
        self.discriminator.to(device)
        return self

    def discriminator_parameters(self) -> List[nn.Parameter]:
        return list(self.discriminator.parameters())

    def discriminator_active(self, step: int) -> bool:
        return True

    @contextlib.contextmanager
    def discriminator_frozen(self):
        """The model's step reads D without leaving gradients in it: no graph is recorded through its weights."""
        self.discriminator.requires_grad_(False)
        try:
            yield self.discriminator
        finally:
            self.discriminator.requires_grad_(True)

    def state_dict(self) -> Dict:
        return {"discriminator": self.discriminator.state_dict()}

    def load_state_dict(self, state: Dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])


class PriorObjective(ElboObjective):
    """Fit a prior to the code maps of a frozen VQ-VAE: the cross-entropy −log p(z) / n in nats per code.

    The codes are computed on the fly from each batch, in full precision even under mixed precision (a nearest-code
    search in bf16 would pick other codes). The checkpointed state is the VQ-VAE's weight fingerprint: resuming
    against another VQ-VAE is refused, since the codes would mean something else.
    """

    def __init__(self, autoencoder, dataset_name: str = "dataset"):
        from .priors import weights_fingerprint

        super().__init__(is_conditional=False, dataset_name=dataset_name)
        self.autoencoder = autoencoder
        self.fingerprint = weights_fingerprint(autoencoder)

    def to(self, device) -> "PriorObjective":
        self.autoencoder.to(device)
        return self

    def codes(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=pixel_values.device.type, enabled=False):
            return self.autoencoder.encode_to_indices(pixel_values.to(self.autoencoder.dtype))

    def generator_loss(self, model, batch, step: int):
        prior = getattr(model, "module", model)
        pixel_values, labels = _inputs(batch, prior.is_conditional, self.dataset_name)
        output = model(self.codes(pixel_values), labels=labels)
        return output.loss, {"loss": output.loss.detach()}, output

    def state_dict(self) -> Dict:
        return {"autoencoder_sha256": self.fingerprint}

    def load_state_dict(self, state: Dict) -> None:
        saved = state.get("autoencoder_sha256")
        if saved is not None and saved != self.fingerprint:
            raise ValueError(f"The checkpoint's prior was trained on the codes of another VQ-VAE (weights SHA-256 "
                             f"{saved[:12]}…, this --vqvae has {self.fingerprint[:12]}…): expected the same --vqvae as "
                             f"the interrupted run.")


class PerceptualAdapter(nn.Module):
    """Feed LPIPS what it expects: 3-channel images in [-1, 1] (grey images are repeated, [0, 1] data rescaled)."""

    def __init__(self, lpips: nn.Module, value_range=(-1.0, 1.0)):
        super().__init__()
        self.lpips = lpips
        self.lo, self.hi = float(value_range[0]), float(value_range[1])

    @property
    def is_pretrained(self) -> bool:
        return bool(getattr(self.lpips, "is_pretrained", True))

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if (self.lo, self.hi) != (-1.0, 1.0):
            x = (x - self.lo) * (2.0 / (self.hi - self.lo)) - 1.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x

    def forward(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        return self.lpips(self._prepare(in0), self._prepare(in1))


def build_perceptual(perceptual_weight: float, lpips_weights: Optional[str], value_range, image_size: int):
    """The frozen LPIPS network wrapped for the data, or None when the weight is 0.

    Refuses to train against a randomly initialised VGG: without `lpips_weights` it raises, naming both ways out.
    """
    from .perceptual import LPIPS, PerceptualWeightsMissingError, missing_weights_message

    if perceptual_weight == 0:
        return None
    if lpips_weights is None:
        raise PerceptualWeightsMissingError(
            f"--perceptual_weight {perceptual_weight:g} needs LPIPS weights and none were given. Either pass "
            f"--lpips_weights DIR (a folder with vgg16_features.safetensors and lpips_vgg_heads.safetensors), or "
            f"train without the perceptual term with --perceptual_weight 0.\n\n" + missing_weights_message())
    if image_size < 16:
        raise ValueError(f"LPIPS (VGG16, four 2x poolings) needs images of at least 16x16 pixels, got "
                         f"{image_size}x{image_size}; use --perceptual_weight 0 for smaller images.")
    return PerceptualAdapter(LPIPS.from_pretrained(lpips_weights), value_range)


class AdversarialObjective:
    """Latent diffusion's KL autoencoder loss, or taming's VQGAN loss for a VQ-VAE (see the module docstring).

    VQ-VAE: the model's VQ terms are sums over latent elements per example; taming's VQGAN averages them over
    elements, like its pixel term, so they are divided by the number of latent elements here.
    """

    #: None: the trainer's GAN default (0.5, 0.9), as in latent diffusion, for the model and the discriminator
    generator_betas = None
    discriminator_betas = (0.5, 0.9)

    def __init__(self, *, vq: bool, in_channels: int, image_size: int, latent_numel: int, value_range,
                 perceptual: Optional[nn.Module], perceptual_weight: float, pixel_loss: str, kl_weight: float,
                 disc_start: int, disc_weight: float, disc_loss: str, disc_num_layers: int, disc_ndf: int,
                 logvar_init: float, codebook_weight: float, dataset_name: str = "dataset",
                 learn_logvar: bool = False):
        from .ldm_loss import LatentDiffusionLoss

        min_side = 3 * 2 ** disc_num_layers
        if disc_weight > 0 and image_size < min_side:
            raise ValueError(f"A PatchGAN with --disc_num_layers {disc_num_layers} needs images of at least "
                             f"{min_side}x{min_side} pixels, got {image_size}x{image_size}: lower --disc_num_layers "
                             f"or pass --disc_weight 0 to train without a discriminator.")
        self.vq = vq
        self.latent_numel = latent_numel
        self.dataset_name = dataset_name
        self.disc_weight = disc_weight
        self.loss = LatentDiffusionLoss(
            disc_start=disc_start, logvar_init=logvar_init, learn_logvar=learn_logvar and not vq,
            kl_weight=kl_weight, pixel_loss=pixel_loss,
            perceptual_weight=perceptual_weight if perceptual is not None else 0.0, perceptual=perceptual,
            disc_num_layers=disc_num_layers, disc_in_channels=in_channels, disc_weight=disc_weight,
            disc_loss=disc_loss, disc_ndf=disc_ndf, codebook_weight=codebook_weight)

    def to(self, device) -> "AdversarialObjective":
        self.loss.to(device)
        return self

    # -- parameters trained outside the published model -------------------------------------------------------
    def extra_parameters(self) -> List[nn.Parameter]:
        # The output log-variance of the NLL, when it is learned (KL mode only; taming's VQGAN has none).
        return [self.loss.logvar] if self.loss.learn_logvar else []

    def discriminator_parameters(self) -> List[nn.Parameter]:
        return list(self.loss.discriminator.parameters()) if self.disc_weight > 0 else []

    def discriminator_active(self, step: int) -> bool:
        return self.disc_weight > 0 and self.loss.discriminator_active(step)

    # -- the two losses ----------------------------------------------------------------------------------------
    def generator_loss(self, model, batch, step: int):
        unwrapped = getattr(model, "module", model)
        pixel_values, labels = _inputs(batch, unwrapped.is_conditional, self.dataset_name)
        # The KLAE decodes its posterior mean unless asked otherwise (diffusers' default); the objective is the
        # ELBO's one-sample estimate, so it asks for a sample.
        output = model(pixel_values, labels=labels, sample_posterior=True)
        reconstruction = output.reconstruction
        # The generator step must not leave gradients in the discriminator: record no graph through its weights.
        discriminator = self.loss.discriminator
        discriminator.requires_grad_(False)
        try:
            if self.vq:
                codebook_loss = output.regularisation_loss / self.latent_numel
                loss, log = self.loss(pixel_values, reconstruction, codebook_loss=codebook_loss, optimizer_idx=0,
                                      global_step=step, last_layer=unwrapped.get_last_layer())
            else:
                loss, log = self.loss(pixel_values, reconstruction, kl=_posterior(output), optimizer_idx=0,
                                      global_step=step, last_layer=unwrapped.get_last_layer())
        finally:
            discriminator.requires_grad_(True)
        logs = {"loss": loss.detach()}
        for key, value in log.items():
            name = key.split("/", 1)[1]
            if name in ("total_loss",):
                continue
            logs[name] = value.float()
        for name in ("perplexity", "codebook_usage"):
            value = getattr(output, name, None)
            if value is not None:
                logs[_SHORT_NAMES[name]] = value.detach().float()
        return loss, logs, output

    def discriminator_loss(self, batch, output, step: int):
        d_loss, log = self.loss(batch["pixel_values"], output.reconstruction.detach(), optimizer_idx=1,
                                global_step=step)
        return d_loss, {key.split("/", 1)[1]: value.float() for key, value in log.items()}

    # -- checkpointed state: the discriminator and the log-variance, not the frozen LPIPS network -------------
    def state_dict(self) -> Dict:
        return {"discriminator": self.loss.discriminator.state_dict(), "logvar": self.loss.logvar.detach().clone()}

    def load_state_dict(self, state: Dict) -> None:
        self.loss.discriminator.load_state_dict(state["discriminator"])
        with torch.no_grad():
            self.loss.logvar.copy_(state["logvar"])


def build_objective(train_args, model, value_range, dataset_name: str, autoencoder=None):
    """The objective of `train_args.model`: its family's factory (`Family.objective` in hf_vae.families)."""
    return get_family(train_args.model).objective_factory(train_args, model, value_range, dataset_name,
                                                          autoencoder=autoencoder)


# ------------------------------------------------------------------------------------------------------------
# The factories the family table names, each called (train_args, model, value_range, dataset_name, autoencoder)
# ------------------------------------------------------------------------------------------------------------

_ADVERSARIAL_FACTORIES = ("objectives:build_adversarial_objective", "objectives:build_vq_objective")


def _refuse_adversarial_flags(train_args) -> None:
    """The perceptual and adversarial flags mean nothing to an ELBO objective: refused, naming who takes them."""
    asked = [flag for flag, value in (("--perceptual_weight", train_args.perceptual_weight),
                                      ("--disc_start", train_args.disc_start),
                                      ("--lpips_weights", train_args.lpips_weights)) if value]
    if asked:
        takers = sorted(name for name, family in FAMILIES.items() if family.objective in _ADVERSARIAL_FACTORIES)
        raise ValueError(f"{', '.join(asked)} apply to the {', '.join(takers[:-1])} and {takers[-1]} objectives, "
                         f"got --model {train_args.model}.")


def build_elbo_objective(train_args, model, value_range, dataset_name: str, autoencoder=None) -> ElboObjective:
    """The model's own loss (−ELBO, or the family's regularised reconstruction loss)."""
    _refuse_adversarial_flags(train_args)
    return ElboObjective(model.is_conditional, dataset_name)


def build_vq_objective(train_args, model, value_range, dataset_name: str, autoencoder=None):
    """A VQ-VAE's own loss, or taming's VQGAN loss when a perceptual term or a discriminator is asked for."""
    if (train_args.perceptual_weight or 0) > 0 or train_args.disc_start is not None:
        # taming's VQGAN: the codebook terms instead of a KL, the pixel term --pixel_loss (l1 when not given)
        return _adversarial_objective(train_args, model, value_range, dataset_name, vq=True, kl_weight=0.0,
                                      pixel_loss=train_args.pixel_loss or "l1", default_perceptual_weight=0.0,
                                      default_disc_start=0)
    return ElboObjective(model.is_conditional, dataset_name)


def build_adversarial_objective(train_args, model, value_range, dataset_name: str, autoencoder=None):
    """Latent diffusion's KL autoencoder loss: LPIPS on by default (when its weights can be had), the discriminator
    from step 50001 as in latent diffusion's KL-f8 config."""
    config = model.config
    return _adversarial_objective(train_args, model, value_range, dataset_name, vq=False,
                                  kl_weight=config.kl_weight, pixel_loss=train_args.pixel_loss or config.pixel_loss,
                                  default_perceptual_weight=1.0, default_disc_start=50001)


def build_prior_objective(train_args, model, value_range, dataset_name: str, autoencoder=None) -> PriorObjective:
    """A code prior's cross-entropy on the code maps of `autoencoder`."""
    return PriorObjective(autoencoder, dataset_name)


def _adversarial_objective(train_args, model, value_range, dataset_name: str, *, vq: bool, kl_weight: float,
                           pixel_loss: str, default_perceptual_weight: float,
                           default_disc_start: int) -> AdversarialObjective:
    config = model.config
    perceptual_weight, lpips_weights = train_args.perceptual_weight, train_args.lpips_weights
    if perceptual_weight is None:  # not asked for: the default uses LPIPS when its weights can be had
        perceptual_weight = default_perceptual_weight
        if perceptual_weight and lpips_weights is None:
            from .lpips_weights import default_lpips_weights

            lpips_weights, why = default_lpips_weights()
            if lpips_weights is None:
                logger.warning("%s: training WITHOUT the LPIPS perceptual term (perceptual_weight 0): %s. Pass "
                               "--lpips_weights DIR (see scripts/convert_lpips_weights.py) to train with it.",
                               train_args.model, why)
                perceptual_weight = 0.0
    disc_start = train_args.disc_start if train_args.disc_start is not None else default_disc_start
    image_size = config.image_size
    perceptual = build_perceptual(perceptual_weight, lpips_weights, value_range, image_size)
    return AdversarialObjective(
        vq=vq, in_channels=config.in_channels, image_size=image_size,
        latent_numel=math.prod(model.latent_shape), value_range=value_range, perceptual=perceptual,
        perceptual_weight=perceptual_weight, pixel_loss=pixel_loss, kl_weight=kl_weight,
        disc_start=disc_start, disc_weight=train_args.disc_weight, disc_loss=train_args.disc_loss,
        disc_num_layers=train_args.disc_num_layers, disc_ndf=train_args.disc_ndf,
        logvar_init=train_args.logvar_init, learn_logvar=train_args.learn_logvar,
        codebook_weight=train_args.codebook_weight, dataset_name=dataset_name)
