"""Configuration of the conditional VAE (Sohn et al. 2015)."""

from typing import Optional

from .configuration_base import AutoencoderConfig, _check, check_positive_int


class CVAEConfig(AutoencoderConfig):
    r"""A VAE conditioned on a class label or a given condition vector: q(z|x, c) and p(x|z, c).

    Exactly one of `num_classes` and `condition_dim` is set.

    Args:
        num_classes (`int`, defaults to 10 unless `condition_dim` is set): labels are class indices in [0, num_classes), embedded by a learned
            table of width `class_embedding_dim`.
        class_embedding_dim (`int`, defaults to 16).
        condition_dim (`int` or None): labels are (B, condition_dim) float condition vectors instead of classes.
        Other fields are those of [`AutoencoderConfig`]. With the conv backbone the condition is broadcast as
        extra input channels of the encoder and of the decoder (or concatenated to a vector latent).
    """

    model_type = "cvae"

    def __init__(self, num_classes: Optional[int] = None, class_embedding_dim: int = 16,
                 condition_dim: Optional[int] = None, **kwargs):
        if num_classes is None and condition_dim is None:
            num_classes = 10
        self.num_classes = num_classes
        self.class_embedding_dim = class_embedding_dim
        self.condition_dim = condition_dim
        super().__init__(**kwargs)

    @property
    def condition_width(self) -> int:
        return self.condition_dim if self.condition_dim is not None else self.class_embedding_dim

    def validate_fields(self) -> None:
        super().validate_fields()
        _check((self.num_classes is None) != (self.condition_dim is None),
               f"Expected exactly one of `num_classes` and `condition_dim`, got num_classes={self.num_classes!r}, "
               f"condition_dim={self.condition_dim!r}.")
        if self.num_classes is not None:
            check_positive_int("num_classes", self.num_classes)
            check_positive_int("class_embedding_dim", self.class_embedding_dim)
        else:
            check_positive_int("condition_dim", self.condition_dim)
