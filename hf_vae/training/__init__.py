"""Training hf_vae models: one Accelerate loop for every family (`train`), its arguments and its pieces.

    from hf_vae.training import TrainArguments, DataArguments, train
    record = train(TrainArguments(model="beta_vae", max_steps=2000), DataArguments(dataset="shapes"), {"beta": 4.0})

`scripts/train.py` is `hf_vae.training.main`. The losses of the KL autoencoder (LPIPS, PatchGAN, the latent
diffusion loss) live in `perceptual`, `discriminator` and `ldm_loss`.
"""

from .arguments import DataArguments, TrainArguments, build_parser, model_config_fields, parse_args
from .checkpointing import TrainingState, latest_checkpoint, list_checkpoints, publish_pretrained, save_checkpoint
from .ema import EMA
from .objectives import AdversarialObjective, ElboObjective, build_objective
from .trainer import NonFiniteLossError, build_model_config, default_output_dir, main, train

__all__ = [
    "AdversarialObjective",
    "DataArguments",
    "EMA",
    "ElboObjective",
    "NonFiniteLossError",
    "TrainArguments",
    "TrainingState",
    "build_model_config",
    "build_objective",
    "build_parser",
    "default_output_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "main",
    "model_config_fields",
    "parse_args",
    "publish_pretrained",
    "save_checkpoint",
    "train",
]
