#!/usr/bin/env python
"""Latent statistics of a model folder on a dataset (scaling_factor = 1/std, shift_factor, per-channel
latents_mean/latents_std); --write stores them in config.json and in the diffusers copy in vae/.

    python scripts/latent_stats.py outputs/klae-photos --dataset photos --write

The work is done by hf_vae.evaluation.latents.
"""

import sys

from hf_vae.evaluation.latents import main
from hf_vae.utils.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main("latent_stats.py", main))
