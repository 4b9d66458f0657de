"""The names of every file and folder in a medtl run folder, in one place.

A training run (made by :func:`medtl.train.trainer.train`)::

    runs/<name>/<YYYYmmdd-HHMMSS>/
        config.yaml          the resolved config
        model.keras          the best model (by train.monitor) over all stages
        model_info.json      task, classes and preprocessing; what predict needs
        history_stage<i>.csv, history.csv, tensorboard/
        metrics.json         best validation metrics, per-stage summary, epochs, wall time
        val_predictions.csv  the best model's scores on the validation split (averaged over the
                             predict.tta views, as predict scores films)
        postprocess.json     threshold(s) and calibrator fitted on the validation split, and the
                             predict.tta mode they were fitted under
        skipped.csv          files skipped as unreadable (data.on_error: skip)
        feature_summary.npz  training films in the model's pooled feature space (float16 vectors,
                             projection, reference k-NN distances; no pixels, paths or ids): what
                             the shift measures of evaluate/predict compare new films with
        ckpt/                state.json, the last epoch's weights and optimizer state and the
                             best weights so far: what --resume continues from

A cross-validation run (made by :func:`medtl.evaluate.cv.run_cv`)::

    RUN/
        cv.json              marks a CV run: folds, seed, task, classes, number of images
        config.yaml          the resolved config (the run's truth; later calls must agree)
        folds.csv            file, patient, fold, label: the fold of every image, written once
        fold_<k>/            k = 0 .. folds-1, a training run folder (model.keras, ...) plus
            split.csv            file, patient, role (train / val / test), written once
            postprocess.json     threshold(s) and calibrator fitted on the validation split
            test_predictions.csv the test fold, predicted once by the best model
            fold.json            written last: the fold is finished
        oof_predictions.csv  every image once, from the fold that held it out   (merge)
        metrics.json         per fold, pooled with patient-bootstrap CIs, mean/std (merge)
        ensemble.json        how the fold models are combined for predict/evaluate (merge)
        final/               only with evaluate.final_model: retrain: a fixed-epoch training
                             run on every image (model.keras, model_info.json, config.yaml,
                             history*.csv, ckpt/), plus
            postprocess.json     the threshold (median of the fold thresholds; no calibrator)
            final.json           written last: the final model is finished

Everything is written to a temporary name and renamed (:mod:`medtl.io.atomic`), and files that
several cluster jobs may create at once (config.yaml, folds.csv, cv.json, split.csv) are
created with a hard link, which fails if another job got there first; the loser then reads the
winner's file.

Example:
    >>> from medtl.run.layout import is_cv_run, fold_dir, MODEL_FILE
    >>> fold_dir("runs/demo/cv-1a2b3c4d5e", 0) / MODEL_FILE
    PosixPath('runs/demo/cv-1a2b3c4d5e/fold_0/model.keras')
"""

from __future__ import annotations

from pathlib import Path

from medtl.io.pseudonyms import SALT_FILE  # the run's secret salt (deid.salt): never share it

__all__ = [
    "CONFIG_FILE", "MODEL_FILE", "MODEL_INFO_FILE", "METRICS_FILE", "VAL_PREDICTIONS", "HISTORY_FILE",
    "SKIPPED_FILE", "POSTPROCESS_FILE", "SITE_POSTPROCESS_FILE", "CKPT_DIR", "STATE_FILE", "TENSORBOARD_DIR",
    "CV_FILE", "FOLDS_FILE", "SPLIT_FILE", "FOLD_DONE", "TEST_PREDICTIONS", "TEST_SKIPPED", "LOCK_FILE",
    "OOF_FILE", "ENSEMBLE_FILE", "FINAL_DIR", "FINAL_DONE", "PREDICTIONS_FILE", "FEATURE_SUMMARY_FILE",
    "OVERLAYS_FILE", "REPORT_FILE", "DEID_INDEX_FILE", "SALT_FILE", "EXPLANATIONS_FILE",
    "history_stage_file", "is_cv_run", "fold_dir", "final_dir", "finished_folds",
]

# A training run (also each fold folder and RUN/final of a CV run).
CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.keras"
MODEL_INFO_FILE = "model_info.json"
METRICS_FILE = "metrics.json"
VAL_PREDICTIONS = "val_predictions.csv"
HISTORY_FILE = "history.csv"
SKIPPED_FILE = "skipped.csv"
POSTPROCESS_FILE = "postprocess.json"
SITE_POSTPROCESS_FILE = "site_postprocess.json"  # medtl evaluate --recalibrate; medtl predict --site
CKPT_DIR = "ckpt"
STATE_FILE = "state.json"  # inside CKPT_DIR
TENSORBOARD_DIR = "tensorboard"
FEATURE_SUMMARY_FILE = "feature_summary.npz"  # see medtl.stats.shift

# A cross-validation run.
CV_FILE = "cv.json"
FOLDS_FILE = "folds.csv"
SPLIT_FILE = "split.csv"
FOLD_DONE = "fold.json"
TEST_PREDICTIONS = "test_predictions.csv"
TEST_SKIPPED = "test_skipped.csv"
LOCK_FILE = ".lock"
OOF_FILE = "oof_predictions.csv"
ENSEMBLE_FILE = "ensemble.json"
FINAL_DIR = "final"
FINAL_DONE = "final.json"

# Either kind of run: the report and what keeps it free of patient data.
REPORT_FILE = "report.html"  # the default of medtl report
OVERLAYS_FILE = Path("overlays") / "overlays.csv"  # precomputed gallery maps, listed by film
DEID_INDEX_FILE = "deid_index.json"  # salted hashes of the run's identifying strings

# The output folder of `medtl evaluate` (external evaluation), which may be read back.
PREDICTIONS_FILE = "predictions.csv"
# The output folder of `medtl explain`.
EXPLANATIONS_FILE = "explanations.csv"


def history_stage_file(stage: int) -> str:
    """``history_stage<i>.csv``: the epochs of one training stage."""
    return f"history_stage{int(stage)}.csv"


def is_cv_run(path: str | Path) -> bool:
    """True for a cross-validation run folder (it has cv.json)."""
    return (Path(path) / CV_FILE).is_file()


def fold_dir(run_dir: str | Path, fold: int) -> Path:
    """``RUN/fold_<k>``."""
    return Path(run_dir) / f"fold_{int(fold)}"


def final_dir(run_dir: str | Path) -> Path:
    """``RUN/final``: the model retrained on all data (``evaluate.final_model: retrain``)."""
    return Path(run_dir) / FINAL_DIR


def finished_folds(run_dir: str | Path, k: int) -> list[int]:
    """Folds of ``run_dir`` whose folder has the finished marker, in order."""
    return [f for f in range(k) if (fold_dir(run_dir, f) / FOLD_DONE).is_file()]
