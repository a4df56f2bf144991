"""Configuration of the VAE with inverse autoregressive flows (Kingma et al. 2016)."""

from .configuration_base import _check, check_positive_int, check_positive_ints, check_vector_latent
from .configuration_vae import VAEConfig


class VAEIAFConfig(VAEConfig):
    r"""A VAE whose Gaussian posterior is refined by `num_flows` inverse autoregressive flow steps.

    Args:
        num_flows (`int`, defaults to 2): IAF steps (their autoregressive orders alternate).
        flow_hidden_dims (`Sequence[int]`, defaults to (128, 128)): hidden sizes of each step's MADE network.
        flow_context_dim (`int`, defaults to 0): size of a context h that the encoder outputs beside the Gaussian's
            parameters and that every step's MADE reads (Kingma et al. 2016, sec. 4); 0 for none.
        Other fields are those of [`AutoencoderConfig`]; the latent must be a vector (backbone "mlp" or "burgess",
        without a local latent).
    """

    model_type = "vae_iaf"

    def __init__(self, num_flows: int = 2, flow_hidden_dims=(128, 128), flow_context_dim: int = 0, **kwargs):
        self.num_flows = num_flows
        self.flow_hidden_dims = list(flow_hidden_dims)
        self.flow_context_dim = flow_context_dim
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_positive_int("num_flows", self.num_flows)
        check_positive_ints("flow_hidden_dims", self.flow_hidden_dims)
        _check(isinstance(self.flow_context_dim, int) and not isinstance(self.flow_context_dim, bool)
               and self.flow_context_dim >= 0,
               f"Expected `flow_context_dim` to be an int >= 0, got {self.flow_context_dim!r}.")
        check_vector_latent(self, "the flows")
