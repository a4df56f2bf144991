"""The family table: every model hf_vae trains, declared once.

A family is the skeleton of `modeling_base.py` with some pieces swapped. Everything outside a family's own files
learns what the family is from its `Family` entry here, never from its name:

- `config` / `model`: the classes, as "module:Class" paths inside hf_vae, imported on first use. This module
  imports only the standard library, so the command line can list the families, show their recipes and answer
  `--help` before torch is imported.
- `objective`: the factory of the training objective ("module:function" inside hf_vae.training), called as
  `factory(train_args, model, value_range, dataset_name, autoencoder=None)` (`autoencoder`: the quantized model
  whose codes a code prior learns).
- `recipe`: `configs/recipes/<name>.yaml`, the settings a run uses for what its command line leaves open.
- `card`: what the model card says (title, tags, Hub task); its template is `model_cards/<name>.md.j2`. None for
  a family that is published inside another's card.
- `capabilities`: what the rest of the package may rely on (see `Capabilities`).
- `summary` and `papers`: the piece the family changes and where it comes from; the README's family list and the
  table of docs/families.md are rendered from them (`python scripts/render_family_docs.py`).

Adding a family is its configuration file, its modeling file, its objective if the existing ones do not fit, one
entry below, a recipe and a card template (docs/adding_a_family.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Optional, Tuple


@dataclass(frozen=True)
class Capabilities:
    """What a family can do, declared rather than probed.

    Attributes:
        quantized: the latent is a map of codebook indices (`encode_to_indices`, `decode_indices`); its codes can
            be modelled by a code prior, and evaluation reports codebook usage.
        conditional: the model takes a class `condition`; sample grids get one row per class.
        diffusers_twin: the model is diffusers' `AutoencoderKL` under another name: its image size field is
            `sample_size`, a trained run also writes a diffusers copy (`vae/`), and published SD VAEs load into it.
        code_prior: the model is a prior over another family's codes, trained on a quantized autoencoder
            (`--vqvae DIR`); it is not an autoencoder itself.
        compilable: the trainer's `--compile` applies (the fused fast path of the model).
        imports_from: checkpoint formats `scripts/convert.py` and `--pretrained` turn into this family: "ldm"
            (CompVis/SGM single files), "diffusers" (`AutoencoderKL`), "diffusers_vq" (`VQModel`).
    """

    quantized: bool = False
    conditional: bool = False
    diffusers_twin: bool = False
    code_prior: bool = False
    compilable: bool = False
    imports_from: Tuple[str, ...] = ()


@dataclass(frozen=True)
class CardSpec:
    """What a model card says about a family."""

    title: str
    tags: Tuple[str, ...]
    #: the Hub pipeline tag, where one fits (None: no Hub task describes the model)
    pipeline_tag: Optional[str]
    #: the task of the model-index entry (`type`, `name`)
    task: Tuple[str, str]


@dataclass(frozen=True)
class Family:
    name: str
    config: str
    model: str
    objective: str
    card: Optional[CardSpec]
    capabilities: Capabilities = field(default_factory=Capabilities)
    #: the piece of the skeleton the family changes (one sentence; markdown code spans allowed)
    summary: str = ""
    #: (short citation, title) of each paper the family implements
    papers: Tuple[Tuple[str, str], ...] = ()

    @property
    def config_class(self):
        return _load(self.config)

    @property
    def model_class(self):
        return _load(self.model)

    @property
    def objective_factory(self) -> Callable[..., Any]:
        return _load(self.objective, package="hf_vae.training")

    @property
    def config_module(self) -> str:
        """The configuration module's name inside hf_vae (read as source by the command line, without importing)."""
        return self.config.split(":")[0]

    @property
    def recipe(self) -> str:
        return f"{self.name}.yaml"

    @property
    def card_template(self) -> str:
        return f"{self.name}.md.j2"


def _load(path: str, package: str = "hf_vae"):
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(f"{package}.{module}"), attribute)


#: diffusers' name for a pipeline's autoencoder component, and the folder of a diffusers twin's copy in a run or
#: repository (diffusers' convention; not the `vae` family)
DIFFUSERS_COMPONENT = "vae"

_GENERATION = ("unconditional-image-generation", "Density estimation")
_DISENTANGLEMENT = ("unconditional-image-generation", "Density estimation and disentanglement")
_RECONSTRUCTION = ("image-to-image", "Image reconstruction")
_ELBO = "objectives:build_elbo_objective"

FAMILIES: Dict[str, Family] = {family.name: family for family in (
    Family("vae", "configuration_vae:VAEConfig", "modeling_vae:VAEModel", _ELBO,
           CardSpec("VAE", ("vae", "variational-autoencoder", "generative-model"),
                    "unconditional-image-generation", _GENERATION),
           summary="nothing: Gaussian posterior, N(0, I) prior, the ELBO",
           papers=(("Kingma & Welling 2014", "Auto-Encoding Variational Bayes"),)),
    Family("beta_vae", "configuration_beta_vae:BetaVAEConfig", "modeling_beta_vae:BetaVAEModel", _ELBO,
           CardSpec("β-VAE", ("beta-vae", "vae", "disentanglement", "representation-learning"),
                    "unconditional-image-generation", _DISENTANGLEMENT),
           summary="β·KL, or the capacity objective γ·|KL − C(t)|",
           papers=(("Higgins et al. 2017", "β-VAE"),
                   ("Burgess et al. 2018", "Understanding disentangling in β-VAE"))),
    Family("vq_vae", "configuration_vqvae:VQVAEConfig", "modeling_vqvae:VQVAEModel",
           "objectives:build_vq_objective",
           CardSpec("VQ-VAE", ("vq-vae", "vector-quantization", "autoencoder", "image-tokenizer"),
                    "image-to-image", _RECONSTRUCTION),
           Capabilities(quantized=True, imports_from=("diffusers_vq",)),
           summary='a learned codebook, straight-through estimator, commitment loss; or another quantiser: '
                   '`quantizer="fsq"` (finite scalar), `"lfq"` (lookup-free) or `"rvq"` (residual); cosine codebook, '
                   'lower codebook dimension, rotation trick, orthogonal codebook penalty',
           papers=(("van den Oord et al. 2017", "Neural Discrete Representation Learning"),
                   ("Mentzer et al. 2023", "Finite Scalar Quantization"),
                   ("Yu et al. 2023", "Language Model Beats Diffusion"),
                   ("Zeghidour et al. 2021", "SoundStream"),
                   ("Fifty et al. 2024", "Restructuring Vector Quantization with the Rotation Trick"))),
    Family("hrq_vae", "configuration_hrq_vae:HRQVAEConfig", "modeling_hrq_vae:HRQVAEModel",
           "objectives:build_vq_objective",
           CardSpec("HRQ-VAE", ("hrq-vae", "residual-quantization", "vector-quantization", "autoencoder",
                                "image-tokenizer"), "image-to-image", _RECONSTRUCTION),
           Capabilities(quantized=True),
           summary="the quantiser: hierarchical residual codes drawn by Gumbel-softmax, with depth dropout, "
                   "shrinking level radii and a norm loss",
           papers=(("Hosking et al. 2022", "Hierarchical Sketch Induction for Paraphrase Generation"),)),
    Family("cvae", "configuration_cvae:CVAEConfig", "modeling_cvae:CVAEModel", _ELBO,
           CardSpec("Conditional VAE", ("cvae", "conditional-vae", "vae", "generative-model"), None,
                    ("unconditional-image-generation", "Conditional density estimation")),
           Capabilities(conditional=True),
           summary="q(z|x, c), p(x|z, c)",
           papers=(("Sohn et al. 2015",
                    "Learning Structured Output Representation using Deep Conditional Generative Models"),)),
    Family("klae", "configuration_klae:KLAEConfig", "modeling_klae:KLAEModel",
           "objectives:build_adversarial_objective",
           CardSpec("KL autoencoder (latent diffusion VAE)",
                    ("autoencoder-kl", "latent-diffusion", "stable-diffusion", "vae"), "image-to-image",
                    _RECONSTRUCTION),
           Capabilities(diffusers_twin=True, compilable=True, imports_from=("ldm", "diffusers")),
           summary="Stable Diffusion's compressor; diffusers' `AutoencoderKL` under another name",
           papers=(("Rombach et al. 2022", "High-Resolution Image Synthesis with Latent Diffusion Models"),)),
    Family("iwae", "configuration_iwae:IWAEConfig", "modeling_iwae:IWAEModel", _ELBO,
           CardSpec("IWAE", ("iwae", "vae", "generative-model"), "unconditional-image-generation", _GENERATION),
           summary="K posterior samples combined by a log-mean-exp: the importance-weighted bound",
           papers=(("Burda et al. 2016", "Importance Weighted Autoencoders"),)),
    Family("miwae", "configuration_miwae:MIWAEConfig", "modeling_miwae:MIWAEModel", _ELBO,
           CardSpec("MIWAE", ("miwae", "iwae", "vae", "generative-model"), "unconditional-image-generation",
                    _GENERATION),
           summary="M×K samples, the average of M K-sample bounds",
           papers=(("Rainforth et al. 2018", "Tighter Variational Bounds are Not Necessarily Better"),)),
    Family("ciwae", "configuration_ciwae:CIWAEConfig", "modeling_ciwae:CIWAEModel", _ELBO,
           CardSpec("CIWAE", ("ciwae", "iwae", "vae", "generative-model"), "unconditional-image-generation",
                    _GENERATION),
           summary="β·ELBO + (1 − β)·L_K from the same K samples",
           papers=(("Rainforth et al. 2018", "Tighter Variational Bounds are Not Necessarily Better"),)),
    Family("piwae", "configuration_piwae:PIWAEConfig", "modeling_piwae:PIWAEModel", _ELBO,
           CardSpec("PIWAE", ("piwae", "iwae", "vae", "generative-model"), "unconditional-image-generation",
                    _GENERATION),
           summary="the bound, per network: the decoder follows the IWAE bound over M·K samples, the encoder the "
                   "MIWAE bound (M bounds of K), routed by one loss",
           papers=(("Rainforth et al. 2018", "Tighter Variational Bounds are Not Necessarily Better"),)),
    Family("vae_lin_nf", "configuration_vae_lin_nf:VAELinNFConfig", "modeling_vae_lin_nf:VAELinNFModel", _ELBO,
           CardSpec("VAE with planar and radial flows", ("vae", "normalizing-flows", "generative-model"),
                    "unconditional-image-generation", _GENERATION),
           summary="the Gaussian posterior's sample pushed through planar and radial flows shared by all examples; "
                   "the KL estimated at the sample",
           papers=(("Rezende & Mohamed 2015", "Variational Inference with Normalizing Flows"),)),
    Family("vae_iaf", "configuration_vae_iaf:VAEIAFConfig", "modeling_vae_iaf:VAEIAFModel", _ELBO,
           CardSpec("VAE with inverse autoregressive flows", ("vae", "iaf", "normalizing-flows", "generative-model"),
                    "unconditional-image-generation", _GENERATION),
           summary="the Gaussian posterior's sample pushed through inverse autoregressive flows (MADE, alternating "
                   "orders); the KL estimated at the sample",
           papers=(("Kingma et al. 2016", "Improved Variational Inference with Inverse Autoregressive Flow"),)),
    Family("svae", "configuration_svae:SVAEConfig", "modeling_svae:SVAEModel", _ELBO,
           CardSpec("Hyperspherical VAE", ("svae", "hyperspherical-vae", "von-mises-fisher", "vae", "generative-model"),
                    "unconditional-image-generation", _GENERATION),
           summary="the latent space: a von Mises–Fisher posterior on the unit sphere and the uniform prior on it; "
                   "the KL in closed form",
           papers=(("Davidson et al. 2018", "Hyperspherical Variational Auto-Encoders"),)),
    Family("poincare_vae", "configuration_poincare_vae:PoincareVAEConfig", "modeling_poincare_vae:PoincareVAEModel",
           _ELBO, CardSpec("Poincaré VAE", ("poincare-vae", "hyperbolic", "vae", "generative-model"),
                           "unconditional-image-generation", _GENERATION),
           summary="the latent space: wrapped normal posterior and prior on the Poincaré ball (curvature −c); the KL "
                   "estimated at the sample",
           papers=(("Mathieu et al. 2019",
                    "Continuous Hierarchical Representations with Poincaré Variational Auto-Encoders"),)),
    Family("hvae", "configuration_hvae:HVAEConfig", "modeling_hvae:HVAEModel", _ELBO,
           CardSpec("Hamiltonian VAE", ("hvae", "hamiltonian-monte-carlo", "vae", "generative-model"),
                    "unconditional-image-generation", _GENERATION),
           summary="the posterior: its sample and a momentum moved by tempered leapfrog steps on −log p(x, z); the "
                   "ELBO over (z, ρ), log p(x) by importance sampling over the extended space",
           papers=(("Caterini et al. 2018", "Hamiltonian Variational Auto-Encoder"),)),
    Family("rhvae", "configuration_rhvae:RHVAEConfig", "modeling_rhvae:RHVAEModel", _ELBO,
           CardSpec("Riemannian Hamiltonian VAE", ("rhvae", "hamiltonian-monte-carlo", "riemannian-geometry", "vae",
                                                   "generative-model"),
                    "unconditional-image-generation", _GENERATION),
           summary="the HVAE with a momentum on a learned Riemannian metric G(z), moved by the generalised "
                   "leapfrog; the metric's latest training centroids saved with the model",
           papers=(("Chadebec et al. 2020", "Geometry-Aware Hamiltonian Variational Auto-Encoder"),)),
    Family("vamp_vae", "configuration_vamp_vae:VampVAEConfig", "modeling_vamp_vae:VampVAEModel", _ELBO,
           CardSpec("VAE with a VampPrior", ("vampprior", "vae", "generative-model"),
                    "unconditional-image-generation", _GENERATION),
           summary="the prior: a mixture of the posteriors of learned pseudo-inputs",
           papers=(("Tomczak & Welling 2018", "VAE with a VampPrior"),)),
    Family("info_vae", "configuration_info_vae:InfoVAEConfig", "modeling_info_vae:InfoVAEModel", _ELBO,
           CardSpec("InfoVAE", ("info-vae", "mmd-vae", "vae", "generative-model"),
                    "unconditional-image-generation", _GENERATION),
           summary="(1 − α)·KL + (α + λ − 1)·MMD(q(z), p(z)) over the batch",
           papers=(("Zhao et al. 2019", "InfoVAE"),)),
    Family("wae", "configuration_wae:WAEConfig", "modeling_wae:WAEModel", _ELBO,
           CardSpec("Wasserstein autoencoder (MMD)", ("wae", "autoencoder", "generative-model"),
                    "unconditional-image-generation", ("unconditional-image-generation", "Image generation")),
           summary="deterministic encoder, λ·MMD(q(z), p(z)) (IMQ or RBF kernel, unbiased U-statistic)",
           papers=(("Tolstikhin et al. 2018", "Wasserstein Auto-Encoders"),)),
    Family("rae", "configuration_rae:RAEConfig", "modeling_rae:RAEModel", _ELBO,
           CardSpec("Regularised autoencoder", ("rae", "autoencoder", "generative-model"),
                    "unconditional-image-generation", ("unconditional-image-generation", "Image generation")),
           summary="deterministic encoder, β·½‖z‖² + λ·(‖θ_D‖² or ‖∇_z D(z)‖²), sampled through an ex-post mixture",
           papers=(("Ghosh et al. 2020", "From Variational to Deterministic Autoencoders"),)),
    Family("ae", "configuration_ae:AEConfig", "modeling_ae:AEModel", _ELBO,
           CardSpec("Autoencoder", ("autoencoder", "representation-learning", "generative-model"),
                    "unconditional-image-generation", ("unconditional-image-generation", "Image generation")),
           summary="deterministic encoder, reconstruction only: the plain autoencoder every comparison needs",
           papers=(("Hinton & Salakhutdinov 2006",
                    "Reducing the Dimensionality of Data with Neural Networks"),)),
    Family("beta_tcvae", "configuration_beta_tcvae:BetaTCVAEConfig", "modeling_beta_tcvae:BetaTCVAEModel", _ELBO,
           CardSpec("β-TCVAE", ("beta-tcvae", "vae", "disentanglement", "representation-learning"),
                    "unconditional-image-generation", _DISENTANGLEMENT),
           summary="the KL split into MI + β·TC + dimension-wise KL, q(z) estimated from the minibatch",
           papers=(("Chen et al. 2018", "Isolating Sources of Disentanglement in VAEs"),)),
    Family("factor_vae", "configuration_factor_vae:FactorVAEConfig", "modeling_factor_vae:FactorVAEModel",
           "factor_vae:build_factor_vae_objective",
           CardSpec("FactorVAE", ("factor-vae", "vae", "disentanglement", "representation-learning"),
                    "unconditional-image-generation", _DISENTANGLEMENT),
           summary="+ γ·TC from a latent discriminator, trained by the trainer (own optimiser, checkpointed, not "
                   "published)",
           papers=(("Kim & Mnih 2018", "Disentangling by Factorising"),)),
    Family("msssim_vae", "configuration_msssim_vae:MSSSIMVAEConfig", "modeling_msssim_vae:MSSSIMVAEModel", _ELBO,
           CardSpec("MS-SSIM VAE", ("msssim-vae", "vae", "perceptual-loss", "generative-model"),
                    "unconditional-image-generation", ("unconditional-image-generation", "Image generation")),
           summary="the reconstruction term 1 − MS-SSIM(x̂, x) instead of −log p(x|z) (a pixel loss built by "
                   "`build_likelihood`), + β·KL",
           papers=(("Snell et al. 2017", "Learning to Generate Images with Perceptual Similarity Metrics"),
                   ("Wang et al. 2003", "Multiscale Structural Similarity for Image Quality Assessment"))),
    Family("vae_gan", "configuration_vae_gan:VAEGANConfig", "modeling_vae_gan:VAEGANModel",
           "vae_gan:build_vae_gan_objective",
           CardSpec("VAE-GAN", ("vae-gan", "vae", "gan", "generative-model"), "unconditional-image-generation",
                    ("unconditional-image-generation", "Image generation")),
           summary="the reconstruction measured in a discriminator's layer-l features, + a GAN game on decoded "
                   "prior samples; the discriminator trained by the trainer (own optimiser, checkpointed, not "
                   "published)",
           papers=(("Larsen et al. 2016", "Autoencoding beyond pixels using a learned similarity metric"),)),
    Family("aae", "configuration_aae:AAEConfig", "modeling_aae:AAEModel", "aae:build_aae_objective",
           CardSpec("Adversarial autoencoder", ("aae", "adversarial-autoencoder", "autoencoder", "generative-model"),
                    "unconditional-image-generation", ("unconditional-image-generation", "Image generation")),
           summary="no KL: q(z) matched to N(0, I) by a latent discriminator, trained by the trainer (own "
                   "optimiser, checkpointed, not published)",
           papers=(("Makhzani et al. 2016", "Adversarial Autoencoders"),)),
    Family("vq_prior", "configuration_vq_prior:VQPriorConfig", "modeling_vq_prior:VQPriorModel",
           "objectives:build_prior_objective",
           None,  # published inside its VQ-VAE's card (`prior/`), not on its own
           Capabilities(code_prior=True),
           summary="not an autoencoder: an autoregressive prior over a trained VQ-VAE's code maps, a GPT-2 "
                   '(`prior_type="gpt2"`) or a gated PixelCNN (`"pixelcnn"`), so that the VQ-VAE can sample',
           papers=(("van den Oord et al. 2016", "Conditional Image Generation with PixelCNN Decoders"),
                   ("van den Oord et al. 2017", "Neural Discrete Representation Learning"),
                   ("Esser et al. 2021", "Taming Transformers for High-Resolution Image Synthesis"))),
)}

#: the family a run trains when the command line names none
DEFAULT_FAMILY = "vae"


class UnknownFamilyError(ValueError):
    pass


def get(name: str) -> Family:
    """The family called `name` (its `model_type`), or one line naming the known ones."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise UnknownFamilyError(f"Unknown model family {name!r}: expected one of {', '.join(FAMILIES)}.") from None


def of(model_or_config) -> Family:
    """The family of a model or config, from its `model_type`."""
    config = getattr(model_or_config, "config", model_or_config)
    return get(config.model_type)


def names(**capabilities: bool) -> Tuple[str, ...]:
    """The families whose capabilities match every keyword given (all families without one)."""
    return tuple(name for name, family in FAMILIES.items()
                 if all(getattr(family.capabilities, key) == value for key, value in capabilities.items()))


def autoencoders() -> Iterator[Family]:
    """Every family that is an autoencoder (not a prior over another model's codes)."""
    return (family for family in FAMILIES.values() if not family.capabilities.code_prior)


def importing(source_format: str) -> Family:
    """The family a checkpoint of `source_format` ("ldm", "diffusers", "diffusers_vq") converts into."""
    found = [family for family in FAMILIES.values() if source_format in family.capabilities.imports_from]
    if len(found) != 1:
        raise UnknownFamilyError(f"Expected one family importing {source_format!r} checkpoints, found "
                                 f"{[family.name for family in found]}.")
    return found[0]
