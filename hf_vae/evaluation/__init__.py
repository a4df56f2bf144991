"""Evaluation of hf_vae models: the metric functions and the split-level `evaluate` built on them."""

from .evaluate import (
    METRIC_NAMES,
    data_settings,
    evaluate,
    evaluate_output_dir,
    format_metrics_table,
    metrics_record,
    metrics_that_apply,
    write_json_atomic,
)
from .fid import ClassifierFeatures, FeatureClassifier, FeatureStatistics, frechet_distance, load_fid_features
from .inception import InceptionFeatures
from .metrics import codebook_stats, mutual_information_gap, psnr, ssim

__all__ = [
    "METRIC_NAMES",
    "ClassifierFeatures",
    "FeatureClassifier",
    "FeatureStatistics",
    "InceptionFeatures",
    "codebook_stats",
    "data_settings",
    "evaluate",
    "evaluate_output_dir",
    "format_metrics_table",
    "frechet_distance",
    "load_fid_features",
    "metrics_record",
    "metrics_that_apply",
    "mutual_information_gap",
    "psnr",
    "ssim",
    "write_json_atomic",
]
