"""Configuration of the VAE with planar and radial flows (Rezende & Mohamed 2015)."""

from .configuration_base import _check, check_vector_latent
from .configuration_vae import VAEConfig

FLOW_KINDS = ("planar", "radial")


class VAELinNFConfig(VAEConfig):
    r"""A VAE whose Gaussian posterior is refined by a sequence of planar and radial flows.

    Args:
        flows (`Sequence[str]`, defaults to ("planar", "radial", "planar", "radial")): the flow steps, in order.
        Other fields are those of [`AutoencoderConfig`]; the latent must be a vector (backbone "mlp" or "burgess",
        without a local latent).
    """

    model_type = "vae_lin_nf"

    def __init__(self, flows=("planar", "radial", "planar", "radial"), **kwargs):
        self.flows = list(flows)
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        _check(len(self.flows) > 0 and all(kind in FLOW_KINDS for kind in self.flows),
               f"Expected `flows` to be a non-empty list of {FLOW_KINDS}, got {self.flows!r}.")
        check_vector_latent(self, "the flows")
