#!/usr/bin/env python
"""Train an hf_vae model. With no arguments: a VAE on the procedural shapes stream, a few minutes on a CPU.

    python scripts/train.py --model beta_vae --dataset shapes --beta 4 --max_steps 5000
    accelerate launch --multi_gpu --num_processes 8 scripts/train.py --model klae --dataset DIR ...

Every flag is documented by --help; the work is done by hf_vae.training.train.
"""

import importlib
import os
import sys
import types

#: the name under which the command line's modules are loaded without the package's __init__
_LIGHT = "_hf_vae_command_line"


def _arguments_module():
    """hf_vae/training/arguments.py and its standard-library siblings, loaded without `hf_vae/__init__.py`.

    `import hf_vae` imports torch and transformers, which takes seconds; the command line's modules import only
    the standard library. They are loaded as submodules of stand-in packages that point at hf_vae's folders (so
    their relative imports work) but run no `__init__`, which lets --help, and any mistake on the command line,
    answer before those imports.
    """
    package = importlib.util.find_spec("hf_vae")
    if package is None:  # not installed: the checkout this script belongs to
        checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if not os.path.isfile(os.path.join(checkout, "hf_vae", "__init__.py")):
            sys.exit("train.py: error: the hf_vae package is not installed; run `pip install -e .` in the "
                     "repository first (see the README).")
        sys.path.insert(0, checkout)
        package = importlib.util.find_spec("hf_vae")
    root = package.submodule_search_locations[0]
    for name, folder in ((_LIGHT, root), (f"{_LIGHT}.data", os.path.join(root, "data")),
                         (f"{_LIGHT}.training", os.path.join(root, "training"))):
        stand_in = types.ModuleType(name)
        stand_in.__path__ = [folder]
        sys.modules[name] = stand_in
    return importlib.import_module(f"{_LIGHT}.training.arguments")


if __name__ == "__main__":
    _arguments_module().parse_command_line()  # --help and bad arguments end here, in a fraction of a second
    from hf_vae.training import main

    main()
