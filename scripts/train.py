#!/usr/bin/env python
"""Train an hf_vae model. With no arguments: a VAE on the procedural shapes stream, a few minutes on a CPU.

    python scripts/train.py --model beta_vae --dataset shapes --beta 4 --max_steps 5000
    accelerate launch --multi_gpu --num_processes 8 scripts/train.py --model klae --dataset DIR ...

Every flag is documented by --help; the work is done by hf_vae.training.train.
"""

from hf_vae.training import main

if __name__ == "__main__":
    main()
