"""What data a model expects, derived once from its decoder likelihood (standard library only).

Each likelihood p(x|z) of hf_vae.distributions fixes how the data must look:

    likelihood            value range   binarised   dequantised   normalised   continuous
    bernoulli             [0, 1]        yes         no            yes          no
    gaussian, laplace     [-1, 1]       no          yes           yes          yes
    discretized_logistic  [-1, 1]       no          no            yes          no
    pixel (KLAE's loss)   [-1, 1]       no          no            no           no

- Bernoulli: a normalised density only on binary data, so the data is dynamically binarised by default.
- Gaussian and Laplace are densities of continuous values; on 8-bit data they train on uniformly dequantised
  values (Theis et al. 2016), except under a quantized latent (the VQ-VAE trains on the 8-bit data).
- The discretised logistic models the 256 levels themselves (Salimans et al. 2017) and needs neither.

The likelihood classes read their `data_range` / `normalised` / `continuous` from `LIKELIHOOD_KINDS`, and
training, evaluation and the model cards read `data_contract(config)` (or `model.data_contract`), so the table
above is stated once. This module imports no torch: the command line reads it before torch loads.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class LikelihoodKind:
    """What a likelihood is. `data_range`: the values its density is defined on (None: any real value);
    `normalised`: whether −log p(x|z) is a normalised density (the ELBO and IWAE bounds are bounds on log p(x));
    `continuous`: whether it is a density of continuous values (8-bit data then needs dequantisation)."""

    data_range: Optional[Tuple[float, float]]
    normalised: bool
    continuous: bool
    #: the range the data streams produce for it
    value_range: Tuple[float, float] = (-1.0, 1.0)
    #: whether the data is binarised by default (the density is normalised on binary data only)
    binary: bool = False


LIKELIHOOD_KINDS: Dict[str, LikelihoodKind] = {
    "bernoulli": LikelihoodKind(data_range=(0.0, 1.0), normalised=True, continuous=False, value_range=(0.0, 1.0),
                                binary=True),
    "gaussian": LikelihoodKind(data_range=None, normalised=True, continuous=True),
    "laplace": LikelihoodKind(data_range=None, normalised=True, continuous=True),
    "discretized_logistic": LikelihoodKind(data_range=(-1.0, 1.0), normalised=True, continuous=False),
    "pixel": LikelihoodKind(data_range=None, normalised=False, continuous=False),
}


#: the likelihoods a config may choose (`likelihood`); "pixel" is the KLAE's fixed pixel loss
LIKELIHOODS = tuple(name for name in LIKELIHOOD_KINDS if name != "pixel")


@dataclass(frozen=True)
class DataContract:
    """The data a model trains and is evaluated on.

    Attributes:
        value_range: (low, high) of the values the model takes.
        binary: whether the data is binarised by default (a Bernoulli likelihood).
        dequantize: whether 8-bit data gets uniform dequantisation noise in training (a continuous density under a
            continuous latent).
    """

    value_range: Tuple[float, float]
    binary: bool
    dequantize: bool


def likelihood_kind(name: str) -> LikelihoodKind:
    try:
        return LIKELIHOOD_KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Expected a likelihood in {tuple(LIKELIHOOD_KINDS)}, got {name!r}.") from None


def contract_for(likelihood: str, quantized: bool = False) -> DataContract:
    """The contract of a model with the likelihood named `likelihood` (a quantized latent or not)."""
    kind = likelihood_kind(likelihood)
    return DataContract(value_range=kind.value_range, binary=kind.binary,
                        dequantize=kind.continuous and not quantized)


def data_contract(config) -> DataContract:
    """The contract of the model `config` describes (its `likelihood` name and whether its latent is quantized)."""
    return contract_for(config.likelihood, config.quantized)
