#!/usr/bin/env python
"""Train the small classifier whose features the offline Fréchet distance uses, once per dataset.

    python scripts/train_fid_classifier.py --dataset fashion_mnist --output_dir fid_classifier --epochs 3
    python scripts/evaluate.py outputs/vae-fashion_mnist --dataset fashion_mnist --fid_features fid_classifier

Writes config.json, model.safetensors and training.json (with the test accuracy) to --output_dir, which must be
new or empty; --overwrite_output_dir replaces an earlier classifier there (only the files that run wrote). A folder
holding a trained model or other files is never written into.
"""

import argparse
import sys

from hf_vae.utils.cli import ScriptParser, run_main


def main(argv=None):
    parser = ScriptParser(prog="train_fid_classifier.py", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--output_dir", default="fid_classifier")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_dir", default=None, help="data_dir for the dataset (Fashion-MNIST IDX files)")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="replace the classifier an earlier run of this script wrote to --output_dir")
    args = parser.parse_args(argv)
    parser.check_bounds(args, {"epochs": (1, 10_000), "batch_size": (1, 65536)})
    from hf_vae.evaluation.fid import train_feature_classifier

    extra = {"data_dir": args.data_dir} if args.data_dir else {}
    return train_feature_classifier(args.dataset, args.output_dir, epochs=args.epochs, batch_size=args.batch_size,
                                    learning_rate=args.learning_rate, seed=args.seed,
                                    overwrite_output_dir=args.overwrite_output_dir, **extra)


if __name__ == "__main__":
    sys.exit(run_main("train_fid_classifier.py", main))
