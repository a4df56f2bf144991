"""Configuration of the HRQ-VAE (Hosking et al. 2022, hierarchical residual quantisation)."""

from .configuration_base import _check, check_positive_int, check_real
from .configuration_vqvae import VQVAEConfig

#: the VQ-VAE's codebook options, which the HRQ-VAE's Gumbel-softmax codes do not use, with their neutral values
_UNUSED_CODEBOOK_OPTIONS = {"use_ema": False, "kmeans_init": False, "dead_code_threshold": 0.0,
                            "use_cosine_sim": False, "beta_on_codebook": False, "codebook_dim": None,
                            "rotation_trick": False, "orthogonal_reg_weight": 0.0}


class HRQVAEConfig(VQVAEConfig):
    r"""A VQ-VAE whose code is a coarse-to-fine column of `num_quantizers` residual codes, drawn by Gumbel-softmax
    in training (hierarchical residual quantisation, Hosking et al. 2022; pythae's HRQVAE).

    Args:
        num_embeddings (`int`, defaults to 64): codes per level.
        num_quantizers (`int`, defaults to 4): levels of the hierarchy (the code map is (h, w, num_quantizers), or
            (n, num_quantizers) with the MLP backbone).
        kl_weight (`float`, defaults to 0.1): weight of KL(uniform ‖ softmax(−distances)) per level and position.
        init_scale (`float`, defaults to 1.0): radius of the first level's codes at initialisation (about the
            encoder output's norm).
        init_decay (`float`, defaults to 0.5): each level's initial radius is the one before it times this.
        norm_loss_weight (`float`, defaults to 0.5): weight of the norm loss (max(‖q_{l+1}‖/‖q_l‖ · s, 1) − 1)².
        norm_loss_scale (`float`, defaults to 1.5): s of the norm loss.
        temperature_decay_steps (`float`, defaults to 10000): γ of the Gumbel temperature
            τ_l = max(exp(−t / (γ · 1.5^l)), min_temperature) after t training passes.
        min_temperature (`float`, defaults to 0.5): the temperature's floor.
        depth_drop_rate (`float`, defaults to 0.1): probability of dropping a level (and the finer ones) in training.
        Other fields are those of [`VQVAEConfig`] (the quantizer is always "rvq"; the codebook options of the
        learned VQ codebook do not apply); and [`AutoencoderConfig`].
    """

    model_type = "hrq_vae"

    def __init__(self, num_embeddings: int = 64, num_quantizers: int = 4, kl_weight: float = 0.1,
                 init_scale: float = 1.0, init_decay: float = 0.5, norm_loss_weight: float = 0.5,
                 norm_loss_scale: float = 1.5, temperature_decay_steps: float = 10000.0, min_temperature: float = 0.5,
                 depth_drop_rate: float = 0.1, **kwargs):
        self.kl_weight = kl_weight
        self.init_scale = init_scale
        self.init_decay = init_decay
        self.norm_loss_weight = norm_loss_weight
        self.norm_loss_scale = norm_loss_scale
        self.temperature_decay_steps = temperature_decay_steps
        self.min_temperature = min_temperature
        self.depth_drop_rate = depth_drop_rate
        kwargs.setdefault("quantizer", "rvq")
        super().__init__(num_embeddings=num_embeddings, num_quantizers=num_quantizers, **kwargs)

    def validate_fields(self) -> None:
        _check(self.quantizer == "rvq", f"Expected quantizer 'rvq' for the HRQ-VAE (its codes are residual), got "
                                        f"{self.quantizer!r}.")
        super().validate_fields()
        check_positive_int("num_quantizers", self.num_quantizers)
        for name in ("kl_weight", "norm_loss_weight"):
            check_real(name, getattr(self, name), low=0)
        for name in ("init_scale", "init_decay", "norm_loss_scale", "temperature_decay_steps", "min_temperature"):
            check_real(name, getattr(self, name), low=0, low_open=True)
        check_real("depth_drop_rate", self.depth_drop_rate, low=0, high=1, high_open=True)
        changed = [name for name, neutral in _UNUSED_CODEBOOK_OPTIONS.items() if getattr(self, name) != neutral]
        _check(not changed, f"Expected the VQ codebook options {changed} at their defaults for the HRQ-VAE (its codes "
                            f"are drawn by Gumbel-softmax, not snapped and updated), got "
                            f"{ {name: getattr(self, name) for name in changed} }.")
