"""Configuration of the Hamiltonian VAE (Caterini et al. 2018)."""

from .configuration_base import _check, check_bool, check_positive_int, check_real
from .configuration_vae import VAEConfig


class HVAEConfig(VAEConfig):
    r"""A VAE whose posterior sample is moved by a tempered Hamiltonian flow that reads x through the decoder.

    Args:
        num_leapfrog_steps (`int`, defaults to 3): leapfrog steps K of the flow (pythae's `n_lf`).
        leapfrog_step_size (`float`, defaults to 0.001): the leapfrog step size ε (pythae's `eps_lf`).
        beta_zero (`float`, defaults to 0.3): the initial inverse temperature β₀ in (0, 1]; the momentum starts as
            N(0, I/β₀) and is cooled to β_K = 1 on Caterini et al.'s quadratic schedule (1 turns tempering off).
        learn_leapfrog_step_size (`bool`, defaults to False): train ε with the model.
        learn_beta_zero (`bool`, defaults to False): train β₀ with the model.
        per_dimension_step_size (`bool`, defaults to False): one step size per latent dimension, ε ∈ R^d, all
            starting at `leapfrog_step_size` (Caterini et al. 2018, sec. 4; pythae's is one scalar). The leapfrog
            stays volume-preserving: each of its half-steps is still a shear.
        Other fields are those of [`AutoencoderConfig`] (no local latent).
    """

    model_type = "hvae"

    def __init__(self, num_leapfrog_steps: int = 3, leapfrog_step_size: float = 0.001, beta_zero: float = 0.3,
                 learn_leapfrog_step_size: bool = False, learn_beta_zero: bool = False,
                 per_dimension_step_size: bool = False, **kwargs):
        self.num_leapfrog_steps = num_leapfrog_steps
        self.leapfrog_step_size = leapfrog_step_size
        self.beta_zero = beta_zero
        self.learn_leapfrog_step_size = learn_leapfrog_step_size
        self.learn_beta_zero = learn_beta_zero
        self.per_dimension_step_size = per_dimension_step_size
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_positive_int("num_leapfrog_steps", self.num_leapfrog_steps)
        check_real("leapfrog_step_size", self.leapfrog_step_size, low=0, low_open=True)
        check_real("beta_zero", self.beta_zero, low=0, high=1, low_open=True)
        check_bool("learn_leapfrog_step_size", self.learn_leapfrog_step_size)
        check_bool("learn_beta_zero", self.learn_beta_zero)
        check_bool("per_dimension_step_size", self.per_dimension_step_size)
        _check(not self.local_latent_channels,
               f"Expected local_latent_channels 0 for the HVAE (its flow moves one latent under one prior), got "
               f"{self.local_latent_channels}.")
