#!/usr/bin/env python
"""Evaluate a trained model folder on a split: prints a table and writes JSON.

    python scripts/evaluate.py outputs/vae-shapes --dataset shapes --split test --num_importance_samples 1000

The work is done by hf_vae.evaluation.evaluate (the function the trainer calls).
"""

from hf_vae.evaluation.evaluate import main

if __name__ == "__main__":
    main()
