"""Configuration of the Riemannian Hamiltonian VAE (Chadebec et al. 2020)."""

from .configuration_base import _check, check_positive_int, check_real
from .configuration_hvae import HVAEConfig


class RHVAEConfig(HVAEConfig):
    r"""An HVAE whose momentum lives on a learned Riemannian metric of the latent space, moved by the generalised
    leapfrog.

    Args:
        metric_temperature (`float`, defaults to 1.5): the metric's temperature T (pythae's `temperature`).
        metric_regularization (`float`, defaults to 0.01): λ, added to G⁻¹ (pythae's `regularization`).
        metric_hidden_dim (`int`, defaults to 400): hidden width of the network of L_ψ(x).
        metric_capacity (`int`, defaults to 200): the latest training centroids kept (with their matrices) as the
            metric of evaluation and sampling; the metric's cost grows with it.
        num_fixed_point_iterations (`int`, defaults to 3): fixed-point steps solving each implicit leapfrog equation.
        Other fields are those of [`HVAEConfig`]; the latent must be a vector (backbone "mlp" or "burgess", or a
        conv backbone with `latent_dim`).
    """

    model_type = "rhvae"

    def __init__(self, metric_temperature: float = 1.5, metric_regularization: float = 0.01,
                 metric_hidden_dim: int = 400, metric_capacity: int = 200, num_fixed_point_iterations: int = 3,
                 **kwargs):
        self.metric_temperature = metric_temperature
        self.metric_regularization = metric_regularization
        self.metric_hidden_dim = metric_hidden_dim
        self.metric_capacity = metric_capacity
        self.num_fixed_point_iterations = num_fixed_point_iterations
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_real("metric_temperature", self.metric_temperature, low=0, low_open=True)
        check_real("metric_regularization", self.metric_regularization, low=0, low_open=True)
        check_positive_int("metric_hidden_dim", self.metric_hidden_dim)
        check_positive_int("metric_capacity", self.metric_capacity)
        check_positive_int("num_fixed_point_iterations", self.num_fixed_point_iterations)
        _check(not self.per_dimension_step_size,
               "Expected per_dimension_step_size False for the RHVAE: its generalised leapfrog moves z along "
               "G⁻¹(z)ρ, which mixes dimensions, and is symplectic with one scalar step size only.")
        _check(self.vector_latent, f"Expected a vector latent for the metric (latent_dim set), got backbone="
                                   f"{self.backbone!r}, latent_dim={self.latent_dim!r}.")
