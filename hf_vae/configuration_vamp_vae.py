"""Configuration of the VAE with a VampPrior (Tomczak & Welling 2018)."""

from .configuration_base import check_positive_int, check_real
from .configuration_vae import VAEConfig


class VampVAEConfig(VAEConfig):
    r"""A VAE whose prior is the "variational mixture of posteriors" p(z) = (1/C) Σ_c q(z|u_c).

    Args:
        num_pseudo_inputs (`int`, defaults to 500): C, the learned pseudo-inputs u_c (Tomczak & Welling use 500).
        pseudo_input_std (`float`, defaults to 0.01): the pseudo-inputs start at the middle of the data range
            plus N(0, std²) noise.
        Other fields are those of [`AutoencoderConfig`].
    """

    model_type = "vamp_vae"

    def __init__(self, num_pseudo_inputs: int = 500, pseudo_input_std: float = 0.01, **kwargs):
        self.num_pseudo_inputs = num_pseudo_inputs
        self.pseudo_input_std = pseudo_input_std
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_positive_int("num_pseudo_inputs", self.num_pseudo_inputs)
        check_real("pseudo_input_std", self.pseudo_input_std, low=0)
