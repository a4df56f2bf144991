"""Configuration of the VQ-VAE (van den Oord et al. 2017)."""

import math

from .configuration_base import AutoencoderConfig, _check, check_bool, check_positive_int, check_positive_ints, check_real

QUANTIZERS = ("vq", "fsq", "lfq", "rvq")
#: the quantisers with learned codebooks, which the codebook options apply to
LEARNED_CODEBOOKS = ("vq", "rvq")
#: RVQ's levels when none are given (SoundStream's smallest configurations use a handful of levels)
DEFAULT_RVQ_DEPTH = 4
#: FSQ's levels when none are given: 8·5·5·5 = 1000 codes (Mentzer et al. 2023, table 1's ~2^10 row)
DEFAULT_FSQ_LEVELS = (8, 5, 5, 5)
#: LFQ's bits when the code dimension is left at the VQ default: 2^10 codes
DEFAULT_LFQ_BITS = 10
#: LFQ's entropy penalty compares every latent with all 2^d codes: beyond 2^16 it costs more than it is worth
MAX_LFQ_BITS = 16


class VQVAEConfig(AutoencoderConfig):
    r"""A VQ-VAE: the encoder output is snapped to the nearest of `num_embeddings` learned codes.

    With the conv backbone the codes are spatial, (B, H/f, W/f) indices of `embedding_dim`-dimensional vectors.
    With the MLP backbone the encoder emits `latent_dim` features read as `latent_dim / embedding_dim` codes.

    Args:
        num_embeddings (`int`, defaults to 512): codebook size K.
        embedding_dim (`int`, defaults to 64): code dimension D (the conv latent's channels).
        commitment_cost (`float`, defaults to 0.25): β of the commitment term ‖z_e − sg[e]‖².
        use_ema (`bool`, defaults to False): update codes by exponential moving averages (decay `ema_decay`,
            Laplace smoothing `ema_epsilon`); the codebook loss term is then dropped.
        ema_decay (`float`, defaults to 0.99): decay γ of the EMA codebook updates (VQ-VAE appendix).
        ema_epsilon (`float`, defaults to 1e-5): Laplace smoothing of the EMA cluster sizes.
        kmeans_init (`bool`, defaults to False): initialise the codebook by k-means on the first training batch.
        dead_code_threshold (`float`, defaults to 0.0): restart codes whose moving-average count per batch falls
            below this (0 disables restarts).
        use_cosine_sim (`bool`, defaults to False): nearest codes by cosine similarity on l2-normalised vectors.
        codebook_dim (`int`, *optional*): a code dimension below `embedding_dim`: linear maps take the encoder
            output down to the codes and the codes back up (Yu et al. 2021's factorised codes); None keeps the codes
            `embedding_dim`-dimensional. "vq" and "rvq" only.
        rotation_trick (`bool`, defaults to False): pass the decoder's gradient to the encoder through the rotation
            and rescaling from z_e to its code (Fifty et al. 2024) instead of the identity. "vq" and "rvq" only.
        orthogonal_reg_weight (`float`, defaults to 0.0): weight of the penalty on the codes' squared pairwise
            cosine similarities (Shin et al. 2021, eq. 2), added once per example; needs a learned codebook
            (use_ema False). "vq" and "rvq" only.
        num_quantizers (`int`, *optional*): RVQ's levels (4 when not given): each position's code is that many
            indices, each into its level's codebook of `num_embeddings` codes ("rvq" only).
        beta_on_codebook (`bool`, defaults to False): legacy placement of β on the codebook term (taming's legacy
            quantiser, diffusers' VQModel), only for reproducing such checkpoints.
        scaling_factor (`float`, defaults to 1.0): latent scale that diffusers' LDMPipeline divides by before `decode`.
        quantizer (`str`, defaults to "vq"): "vq" (a learned codebook, the options above), "fsq" (finite scalar
            quantisation, Mentzer et al. 2023: each code channel rounded to `fsq_levels[i]` levels; no codebook to
            learn or collapse), "lfq" (lookup-free quantisation, Yu et al. 2023: each channel's sign is a bit, with
            an entropy penalty) or "rvq" (residual VQ, Zeghidour et al. 2021: `num_quantizers` codebooks, each
            quantising what the ones before it left; codes (h, w, num_quantizers)). FSQ sets `embedding_dim` = len(fsq_levels) and `num_embeddings` = their product;
            LFQ sets `num_embeddings` = 2^embedding_dim (embedding_dim 10 unless given).
        fsq_levels (`Sequence[int]`, defaults to (8, 5, 5, 5)): FSQ's levels per code channel.
        lfq_entropy_weight (`float`, defaults to 0.1): weight of LFQ's entropy penalty per code position
            (MAGVIT-v2's per-token value; the penalty is summed over the code map, as the commitment term).
        use_quant_conv (`bool`, defaults to False): 1x1 convs between the encoder's `latent_channels` and the
            `embedding_dim`-dimensional codes, and back before the decoder (`quant_conv`, `post_quant_conv`), as in
            taming's VQGAN and diffusers' VQModel (conv backbone only).
        Other fields are those of [`AutoencoderConfig`].
    """

    model_type = "vq_vae"
    quantized = True

    def __init__(self, num_embeddings: int = 512, embedding_dim: int = 64, commitment_cost: float = 0.25,
                 use_ema: bool = False, ema_decay: float = 0.99, ema_epsilon: float = 1e-5, kmeans_init: bool = False,
                 dead_code_threshold: float = 0.0, use_cosine_sim: bool = False, beta_on_codebook: bool = False,
                 scaling_factor: float = 1.0, use_quant_conv: bool = False, quantizer: str = "vq",
                 fsq_levels=None, lfq_entropy_weight: float = 0.1, codebook_dim=None, rotation_trick: bool = False,
                 orthogonal_reg_weight: float = 0.0, num_quantizers=None, **kwargs):
        self.quantizer = quantizer
        self.codebook_dim = codebook_dim
        self.rotation_trick = rotation_trick
        self.orthogonal_reg_weight = orthogonal_reg_weight
        self.num_quantizers = DEFAULT_RVQ_DEPTH if quantizer == "rvq" and num_quantizers is None else num_quantizers
        self.fsq_levels = None if fsq_levels is None else list(fsq_levels)
        self.lfq_entropy_weight = lfq_entropy_weight
        # The implicit codebooks fix the code dimension and the codebook size; fields left at their defaults
        # follow, fields given are checked against them in validate_fields.
        if quantizer == "fsq":
            self.fsq_levels = list(self.fsq_levels or DEFAULT_FSQ_LEVELS)
            embedding_dim = len(self.fsq_levels) if embedding_dim == 64 else embedding_dim
            num_embeddings = _product(self.fsq_levels) if num_embeddings == 512 else num_embeddings
        elif quantizer == "lfq":
            embedding_dim = DEFAULT_LFQ_BITS if embedding_dim == 64 else embedding_dim
            num_embeddings = 2 ** embedding_dim if num_embeddings == 512 and isinstance(embedding_dim, int) \
                and 0 < embedding_dim <= MAX_LFQ_BITS else num_embeddings
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.commitment_cost = commitment_cost
        self.use_ema = use_ema
        self.ema_decay = ema_decay
        self.ema_epsilon = ema_epsilon
        self.kmeans_init = kmeans_init
        self.dead_code_threshold = dead_code_threshold
        self.use_cosine_sim = use_cosine_sim
        self.beta_on_codebook = beta_on_codebook
        # Latent scale for diffusers' LDMPipeline, which divides its latents by it before `decode`.
        self.scaling_factor = scaling_factor
        self.use_quant_conv = use_quant_conv
        if kwargs.get("backbone", "mlp") == "conv":
            kwargs.setdefault("latent_channels", embedding_dim)
        elif kwargs.get("latent_dim") is None:
            kwargs["latent_dim"] = embedding_dim * 16
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        # first: the MLP VQ-VAE's default latent_dim is derived from embedding_dim, so a bad embedding_dim would
        # otherwise be reported as a bad latent_dim
        check_positive_int("num_embeddings", self.num_embeddings)
        check_positive_int("embedding_dim", self.embedding_dim)
        self._validate_quantizer()
        super().validate_fields()
        check_real("commitment_cost", self.commitment_cost, low=0)
        check_real("ema_decay", self.ema_decay, low=0, high=1, low_open=True, high_open=True)
        check_real("ema_epsilon", self.ema_epsilon, low=0, low_open=True)
        check_real("dead_code_threshold", self.dead_code_threshold, low=0)
        check_real("scaling_factor", self.scaling_factor, low=0, low_open=True)
        for name in ("use_ema", "kmeans_init", "use_cosine_sim", "beta_on_codebook", "use_quant_conv", "rotation_trick"):
            check_bool(name, getattr(self, name))
        if self.backbone == "conv":
            _check(self.latent_dim is None, "The conv VQ-VAE has spatial codes: expected `latent_dim` None, "
                                            f"got {self.latent_dim!r}.")
            _check(self.use_quant_conv or self.latent_channels == self.embedding_dim,
                   f"Expected `latent_channels` == `embedding_dim` ({self.embedding_dim}) for the conv VQ-VAE, "
                   f"got {self.latent_channels} (use_quant_conv=True maps between them).")
        else:
            _check(not self.use_quant_conv, "Expected use_quant_conv False with the MLP backbone (the quant convs "
                                            "are 1x1 convolutions of a spatial latent), got True.")
            _check(self.latent_dim % self.embedding_dim == 0,
                   f"Expected `latent_dim` divisible by `embedding_dim` ({self.embedding_dim}) for the MLP VQ-VAE, "
                   f"got {self.latent_dim}.")

    def _validate_quantizer(self) -> None:
        _check(self.quantizer in QUANTIZERS, f"Expected `quantizer` in {QUANTIZERS}, got {self.quantizer!r}.")
        check_real("lfq_entropy_weight", self.lfq_entropy_weight, low=0)
        if self.quantizer == "fsq":
            check_positive_ints("fsq_levels", self.fsq_levels)
            _check(min(self.fsq_levels) >= 2, f"Expected every FSQ level >= 2, got fsq_levels={self.fsq_levels}.")
            _check(self.embedding_dim == len(self.fsq_levels) and self.num_embeddings == _product(self.fsq_levels),
                   f"Expected FSQ's embedding_dim = len(fsq_levels) = {len(self.fsq_levels)} and num_embeddings = "
                   f"their product {_product(self.fsq_levels)}, got embedding_dim={self.embedding_dim}, "
                   f"num_embeddings={self.num_embeddings}.")
        elif self.quantizer == "lfq":
            _check(self.embedding_dim <= MAX_LFQ_BITS, f"Expected LFQ's embedding_dim (bits per code) <= "
                                                       f"{MAX_LFQ_BITS}, got {self.embedding_dim}.")
            _check(self.num_embeddings == 2 ** self.embedding_dim,
                   f"Expected LFQ's num_embeddings = 2^embedding_dim = {2 ** self.embedding_dim}, got "
                   f"{self.num_embeddings}.")
        else:
            _check(self.fsq_levels is None, f"Expected fsq_levels only with quantizer='fsq', got "
                                            f"{self.fsq_levels} with quantizer={self.quantizer!r}.")
        self._validate_codebook_options()

    def _validate_codebook_options(self) -> None:
        check_real("orthogonal_reg_weight", self.orthogonal_reg_weight, low=0)
        if self.quantizer == "rvq":
            check_positive_int("num_quantizers", self.num_quantizers)
        else:
            _check(self.num_quantizers is None, f"Expected num_quantizers only with quantizer='rvq', got "
                                                f"{self.num_quantizers} with quantizer={self.quantizer!r}.")
        if self.codebook_dim is not None:
            check_positive_int("codebook_dim", self.codebook_dim)
        if self.quantizer not in LEARNED_CODEBOOKS:
            given = [name for name, value in (("codebook_dim", self.codebook_dim is not None),
                                              ("rotation_trick", self.rotation_trick is True),
                                              ("orthogonal_reg_weight", self.orthogonal_reg_weight != 0)) if value]
            _check(not given, f"Expected {given} only with a learned codebook (quantizer in {LEARNED_CODEBOOKS}), "
                              f"got quantizer={self.quantizer!r}.")
        _check(not (self.use_ema is True and self.orthogonal_reg_weight), "Expected orthogonal_reg_weight 0 with "
               f"use_ema=True (the penalty moves the codebook by its gradient, which EMA updates replace), got "
               f"{self.orthogonal_reg_weight}.")


def _product(values) -> int:
    return math.prod(int(v) for v in values)
