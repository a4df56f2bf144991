"""Configuration of the β-VAE (Higgins et al. 2017; Burgess et al. 2018)."""

from .configuration_base import AutoencoderConfig, check_bool, check_positive_int, check_real


class BetaVAEConfig(AutoencoderConfig):
    r"""A VAE whose KL term is weighted by β, or pulled towards a growing capacity C.

    Args:
        beta (`float`, defaults to 4.0): weight of the KL term (Higgins et al. 2017). β = 1 is the VAE.
        use_capacity (`bool`, defaults to False): optimise γ·|KL − C(t)| instead of β·KL (Burgess et al. 2018).
        gamma (`float`, defaults to 1000.0): weight of the capacity term.
        capacity_max (`float`, defaults to 25.0): final capacity C_max in nats.
        capacity_steps (`int`, defaults to 100000): training steps over which C grows linearly from 0 to C_max.
        Other fields are those of [`AutoencoderConfig`].
    """

    model_type = "beta_vae"

    def __init__(self, beta: float = 4.0, use_capacity: bool = False, gamma: float = 1000.0,
                 capacity_max: float = 25.0, capacity_steps: int = 100_000, **kwargs):
        self.beta = beta
        self.use_capacity = use_capacity
        self.gamma = gamma
        self.capacity_max = capacity_max
        self.capacity_steps = capacity_steps
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_real("beta", self.beta, low=0)
        check_real("gamma", self.gamma, low=0)
        check_real("capacity_max", self.capacity_max, low=0)
        check_bool("use_capacity", self.use_capacity)
        check_positive_int("capacity_steps", self.capacity_steps)
