"""medtl.run: the run folder as a layer of its own, below train, evaluate, explain and report.

- :mod:`medtl.run.layout`: every file and folder name of training and CV run folders;
- :mod:`medtl.run.files`: model_info.json, postprocess.json and prediction-table columns;
- :mod:`medtl.run.resume`: does a config match the run folder it continues;
- :mod:`medtl.run.predictor`: ONE predictor for every run kind ``medtl predict`` accepts.

Writes go through :mod:`medtl.io.atomic`. Importing this package loads no TensorFlow (models
are loaded on first prediction).

Example:
    >>> from medtl.run import Predictor, collect_paths
    >>> Predictor("runs/demo/cv-1a2b3c4d5e").predict_paths(collect_paths(["new/"]))
"""

from medtl.run.files import (
    decision_suffix, deployed_ensemble_thresholds, ensemble_thresholds, label_columns, pipeline_config,
    read_model_info, read_postprocess,
    save_postprocess, score_columns, scores_from_frame, set_threshold, targets_from_frame, threshold_columns,
    write_model_info, write_postprocess,
)
from medtl.run.layout import final_dir, finished_folds, fold_dir, is_cv_run
from medtl.run.predictor import Predictor, collect_paths, predict_paths

__all__ = [
    "Predictor", "predict_paths", "collect_paths",
    "is_cv_run", "fold_dir", "final_dir", "finished_folds",
    "write_model_info", "read_model_info", "set_threshold", "pipeline_config",
    "read_postprocess", "write_postprocess", "save_postprocess", "ensemble_thresholds", "deployed_ensemble_thresholds",
    "label_columns", "score_columns", "threshold_columns", "targets_from_frame", "scores_from_frame",
    "decision_suffix",
]
