#!/usr/bin/env python
"""Train an hf_vae model. With no arguments: a VAE on the procedural shapes stream, a few minutes on a CPU.

    python scripts/train.py --model beta_vae --dataset shapes --beta 4 --max_steps 5000
    accelerate launch --multi_gpu --num_processes 8 scripts/train.py --model klae --dataset DIR ...

Every flag is documented by --help; the work is done by hf_vae.training.train.
"""

import importlib.util
import os
import sys


def _arguments_module():
    """hf_vae/training/arguments.py, loaded on its own.

    `import hf_vae` imports torch and transformers, which takes seconds; the arguments module imports only the
    standard library, so loading it by path (not through the package) lets --help, and any mistake on the
    command line, answer before those imports.
    """
    package = importlib.util.find_spec("hf_vae")
    if package is None:  # not installed: the checkout this script belongs to
        checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if not os.path.isfile(os.path.join(checkout, "hf_vae", "__init__.py")):
            sys.exit("train.py: error: the hf_vae package is not installed; run `pip install -e .` in the "
                     "repository first (see the README).")
        sys.path.insert(0, checkout)
        package = importlib.util.find_spec("hf_vae")
    path = os.path.join(package.submodule_search_locations[0], "training", "arguments.py")
    spec = importlib.util.spec_from_file_location("_hf_vae_train_arguments", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    _arguments_module().parse_command_line()  # --help and bad arguments end here, in a fraction of a second
    from hf_vae.training import main

    main()
