"""hf_vae: variational autoencoders as Hugging Face transformers models.

Importing the package registers every variant with `AutoConfig` / `AutoModel`, and marks each config and model
class for `trust_remote_code`, so `save_pretrained` writes an `auto_map` and copies the model code next to the
weights: a checkpoint then loads with `AutoModel.from_pretrained(path, trust_remote_code=True)` where hf_vae is
not installed.
"""

from transformers import AutoConfig, AutoModel

from .configuration_aae import AAEConfig
from .configuration_ae import AEConfig
from .configuration_base import AutoencoderConfig
from .configuration_beta_tcvae import BetaTCVAEConfig
from .configuration_beta_vae import BetaVAEConfig
from .configuration_ciwae import CIWAEConfig
from .configuration_cvae import CVAEConfig
from .configuration_hrq_vae import HRQVAEConfig
from .configuration_info_vae import InfoVAEConfig
from .configuration_factor_vae import FactorVAEConfig
from .configuration_hvae import HVAEConfig
from .configuration_iwae import IWAEConfig
from .configuration_klae import KLAEConfig
from .configuration_miwae import MIWAEConfig
from .configuration_msssim_vae import MSSSIMVAEConfig
from .configuration_piwae import PIWAEConfig
from .configuration_poincare_vae import PoincareVAEConfig
from .configuration_rae import RAEConfig
from .configuration_rhvae import RHVAEConfig
from .configuration_svae import SVAEConfig
from .configuration_vae import VAEConfig
from .configuration_vae_gan import VAEGANConfig
from .configuration_vae_iaf import VAEIAFConfig
from .configuration_vae_lin_nf import VAELinNFConfig
from .configuration_vamp_vae import VampVAEConfig
from .configuration_vq_prior import VQPriorConfig
from .configuration_vqvae import VQVAEConfig
from .configuration_wae import WAEConfig
from .distributions import DiagonalGaussianDistribution
from .modeling_aae import AAEModel
from .modeling_ae import AEModel
from .modeling_base import AutoencoderOutput, AutoencoderPreTrainedModel, DecoderOutput, EncoderOutput
from .modeling_beta_tcvae import BetaTCVAEModel
from .modeling_beta_vae import BetaVAEModel
from .modeling_ciwae import CIWAEModel
from .modeling_cvae import CVAEModel
from .modeling_factor_vae import FactorVAEModel
from .modeling_hrq_vae import HRQVAEModel, HRQVAEOutput
from .modeling_info_vae import InfoVAEModel
from .modeling_hvae import HVAEModel
from .modeling_iwae import IWAEModel
from .modeling_klae import KLAEModel
from .modeling_miwae import MIWAEModel
from .modeling_msssim_vae import MSSSIMVAEModel
from .modeling_piwae import PIWAEModel
from .modeling_poincare_vae import PoincareVAEModel
from .modeling_rae import RAEModel
from .modeling_rhvae import RHVAEModel
from .modeling_svae import SVAEModel
from .modeling_vae import VAEModel
from .modeling_vae_gan import VAEGANModel
from .modeling_vae_iaf import VAEIAFModel
from .modeling_vae_lin_nf import VAELinNFModel
from .modeling_vamp_vae import VampVAEModel
from .modeling_vq_prior import VQPriorModel, VQPriorOutput
from .modeling_vqvae import VQVAEModel, VQVAEOutput
from .modeling_wae import WAEModel
from .quantizers import VectorQuantizer
from .residual_quantization import ResidualVectorQuantizer

__version__ = "0.1.0"

from . import families

#: --model NAME -> (config class, model class), for the autoencoders and the code priors (hf_vae.families)
MODELS = {family.name: (family.config_class, family.model_class) for family in families.autoencoders()}
PRIORS = {family.name: (family.config_class, family.model_class) for family in families.FAMILIES.values()
          if family.capabilities.code_prior}



def _publish_with_card(model, repo_id, **options):
    """`model.push_to_hub`'s publisher: the card, preview and (KLAE) diffusers copy of hf_vae.integrations.hub,
    imported on first use (the model layer itself imports nothing above it)."""
    from .integrations.hub import push_model

    return push_model(model, repo_id, **options)


AutoencoderPreTrainedModel.publisher = staticmethod(_publish_with_card)

for _config_class, _model_class in (*MODELS.values(), *PRIORS.values()):
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModel.register(_config_class, _model_class, exist_ok=True)
    _config_class.register_for_auto_class()
    _model_class.register_for_auto_class("AutoModel")

__all__ = [
    "MODELS",
    "families",
    "PRIORS",
    "AAEConfig",
    "AAEModel",
    "AEConfig",
    "AEModel",
    "AutoencoderConfig",
    "AutoencoderOutput",
    "AutoencoderPreTrainedModel",
    "BetaTCVAEConfig",
    "BetaTCVAEModel",
    "BetaVAEConfig",
    "BetaVAEModel",
    "CIWAEConfig",
    "CIWAEModel",
    "CVAEConfig",
    "CVAEModel",
    "DecoderOutput",
    "DiagonalGaussianDistribution",
    "EncoderOutput",
    "FactorVAEConfig",
    "FactorVAEModel",
    "HRQVAEConfig",
    "HRQVAEModel",
    "HRQVAEOutput",
    "HVAEConfig",
    "HVAEModel",
    "IWAEConfig",
    "IWAEModel",
    "InfoVAEConfig",
    "InfoVAEModel",
    "KLAEConfig",
    "KLAEModel",
    "MIWAEConfig",
    "MIWAEModel",
    "MSSSIMVAEConfig",
    "MSSSIMVAEModel",
    "PIWAEConfig",
    "PIWAEModel",
    "PoincareVAEConfig",
    "PoincareVAEModel",
    "RAEConfig",
    "RAEModel",
    "ResidualVectorQuantizer",
    "RHVAEConfig",
    "RHVAEModel",
    "SVAEConfig",
    "SVAEModel",
    "VAEConfig",
    "VAEModel",
    "VAEGANConfig",
    "VAEGANModel",
    "VAEIAFConfig",
    "VAEIAFModel",
    "VAELinNFConfig",
    "VAELinNFModel",
    "VQPriorConfig",
    "VQPriorModel",
    "VQPriorOutput",
    "VQVAEConfig",
    "VQVAEModel",
    "VQVAEOutput",
    "VampVAEConfig",
    "VampVAEModel",
    "VectorQuantizer",
    "WAEConfig",
    "WAEModel",
]
