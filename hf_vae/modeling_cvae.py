"""The conditional VAE (Sohn et al. 2015, "Learning Structured Output Representation using Deep Conditional
Generative Models"): q(z|x, c), p(z) = N(0, I), p(x|z, c).

The only piece it changes is `embed_condition`: labels become a condition vector that the backbones
concatenate to their inputs (broadcast as channels for conv maps).
"""

import torch
import torch.nn as nn

from .configuration_cvae import CVAEConfig
from .input_checks import is_tracing
from .modeling_base import AutoencoderPreTrainedModel


class CVAEModel(AutoencoderPreTrainedModel):
    config_class = CVAEConfig
    is_conditional = True

    def __init__(self, config: CVAEConfig):
        super().__init__(config)
        if config.num_classes is not None:
            self.class_embedding = nn.Embedding(config.num_classes, config.class_embedding_dim)
        encoder_out = 2 * (config.latent_dim if config.vector_latent else config.latent_channels)
        self.encoder, self.decoder = self.build_backbone(encoder_out, condition_dim=config.condition_width)
        self.likelihood = self.build_likelihood()
        self.post_init()

    @property
    def num_classes(self):
        """Classes of the labels (None when the condition is a vector, `condition_dim`)."""
        return self.config.num_classes

    def _init_weights(self, module) -> None:
        super()._init_weights(module)
        if isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, std=1.0)

    def embed_condition(self, labels, batch_size: int) -> torch.Tensor:
        """(B,) int class labels -> (B, class_embedding_dim); (B, condition_dim) floats pass through.

        An int label, or a 0-d tensor, is broadcast to the whole batch (handy for `generate`).
        """
        config = self.config
        if labels is None:
            expected = f"class indices in [0, {config.num_classes})" if config.num_classes else \
                f"condition vectors of shape (B, {config.condition_dim})"
            raise ValueError(f"CVAEModel needs `labels`: expected {expected}, got None.")
        if config.num_classes is not None:
            labels = torch.as_tensor(labels, device=self.execution_device)
            if labels.dtype not in (torch.int32, torch.int64, torch.uint8, torch.int16):
                raise ValueError(f"Expected integer class labels, got dtype {labels.dtype}.")
            if labels.dim() == 0:
                labels = labels.expand(batch_size)
            if labels.shape != (batch_size,):
                raise ValueError(f"Expected labels of shape ({batch_size},), got {tuple(labels.shape)}.")
            if not is_tracing() and (labels.min() < 0 or labels.max() >= config.num_classes):  # eager only: a sync
                raise ValueError(f"Expected class labels in [0, {config.num_classes}), "
                                 f"got values in [{int(labels.min())}, {int(labels.max())}].")
            return self.class_embedding(labels.long())
        condition = torch.as_tensor(labels, device=self.execution_device)
        if not condition.is_floating_point() or condition.shape != (batch_size, config.condition_dim):
            raise ValueError(f"Expected float condition vectors of shape ({batch_size}, {config.condition_dim}), "
                             f"got {tuple(condition.shape)} of dtype {condition.dtype}.")
        if not is_tracing() and not torch.isfinite(condition).all():
            raise ValueError("Expected finite condition vectors, got NaN or infinite values.")
        return condition.to(self.dtype)
