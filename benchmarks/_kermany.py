"""Helpers shared by the benchmarks on ../shared/data/kermany-pneumonia-224.

Patients: PNEUMONIA rows carry ``person_id``; NORMAL rows have none, so their study id is taken
from the file name (``IM-0115-0001.jpeg`` -> ``IM-0115``, ``NORMAL2-IM-1345-0001-0002.jpeg`` ->
``NORMAL2-IM-1345``). :func:`derived_manifest` writes that table as a medtl labels CSV.

Also here: a stratified sample of whole patients (:func:`sample_patients`) and the scoring of a
trained model on a held-out set of patients (:func:`evaluate_holdout`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA_DIR = SHARED / "data" / "kermany-pneumonia-224"
WEIGHTS_FILE = SHARED / "weights" / "mobilenet_v2_imagenet" / "mobilenet_v2_1.0_224_imagenet_notop.weights.h5"
_STUDY = re.compile(r"^((?:NORMAL2-)?IM-\d+)")


def add_input_args(ap) -> None:
    """``--data`` and ``--weights``, shared by the Kermany benchmarks."""
    ap.add_argument("--data", type=Path, default=DATA_DIR, help="kermany-pneumonia-224 folder")
    ap.add_argument("--weights", type=Path, default=WEIGHTS_FILE, help="MobileNetV2 ImageNet no-top weights file")


def study_id(file_name: str) -> str:
    """Patient/study id of a NORMAL file: ``IM-0115-0001.jpeg`` -> ``IM-0115``."""
    name = Path(file_name).name
    m = _STUDY.match(name)
    if not m:
        raise ValueError(f"{file_name}: no IM-<number> study id in the file name; cannot group it by patient")
    return m.group(1)


def check_inputs(data_dir: Path, weights: Path | None = None) -> None:
    """Exit with a one-line message when the data set (or the weights file) is missing."""
    for what, p in (("--data", Path(data_dir) / "labels.csv"), ("--weights", weights)):
        if p is not None and not Path(p).exists():
            raise SystemExit(f"{what}: {p} not found (the project's ../shared folder); pass the path")


def kermany_table(data_dir: Path) -> pd.DataFrame:
    """``labels.csv`` of ``data_dir`` with absolute ``file`` paths and a ``patient`` column."""
    df = pd.read_csv(Path(data_dir) / "labels.csv")
    pid = df["person_id"].astype("string")
    df["patient"] = [p if isinstance(p, str) and p.strip() else study_id(f) for p, f in zip(pid, df["file"])]
    df["file"] = [str((Path(data_dir) / f).resolve()) for f in df["file"]]
    return df


def sample_patients(labels: Any, patients: Any, n: int, seed: int) -> np.ndarray:
    """Row positions of about ``n`` rows, whole patients, in the original class ratio.

    Patients are taken in a seeded random order per class until the class's quota is reached
    (the last patient may overshoot it). With one seed, a smaller ``n`` gives a subset of a
    larger one.

    Example:
        >>> sample_patients([0, 0, 1, 1], ["a", "a", "b", "c"], 2, seed=0)
        array([0, 1, 2])
    """
    labels = np.asarray(labels)
    patients = np.asarray(patients, dtype=object)
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        quota = round(n * len(rows) / len(labels))
        by_patient: dict[Any, list[int]] = {}
        for i in rows:
            by_patient.setdefault(patients[i], []).append(int(i))
        order = pd.unique(patients[rows])
        rng.shuffle(order)
        taken = 0
        for p in order:
            if taken >= quota:
                break
            keep.extend(by_patient[p])
            taken += len(by_patient[p])
    return np.asarray(sorted(keep), dtype=np.int64)


def write_labels(df: pd.DataFrame, out: Path) -> Path:
    """Write ``out/labels.csv`` with the columns file, label, patient; return its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "labels.csv"
    df[["file", "label", "patient"]].to_csv(path, index=False)
    return path


def derived_manifest(data_dir: Path, out: Path, limit: int | None, seed: int) -> Path:
    """Write ``out/labels.csv`` (file, label, patient) for ``data_dir``; ``limit`` keeps about that
    many images, whole patients, in the original class ratio."""
    df = kermany_table(data_dir)
    if limit is not None and limit < len(df):
        df = df.iloc[sample_patients(df["label"], df["patient"], limit, seed)]
    return write_labels(df, out)


def predict_scores(model, cfg, manifest) -> np.ndarray:
    """Positive-class scores (N,) of a binary ``model`` on ``manifest``, preprocessed as ``cfg``."""
    from medtl.data.pipeline import ImagePipeline

    pipe = ImagePipeline(cfg)
    prepared = pipe.prepare(manifest)
    if len(prepared) != len(manifest):
        raise RuntimeError(f"{len(manifest) - len(prepared)} held-out file(s) could not be read: {pipe.skipped}")
    scores = model.predict(pipe.dataset(prepared, training=False), verbose=0)
    return np.asarray(scores, dtype=np.float64)[:, 0]


def evaluate_holdout(result, cfg, test, n_boot: int, seed: int) -> tuple[dict, np.ndarray]:
    """Score a :class:`~medtl.train.trainer.TrainResult` on the held-out manifest ``test``.

    The threshold is chosen by Youden's index on the run's own validation predictions, never on
    the held-out images; metrics at the fixed 0.5 threshold are given too.

    Returns:
        (summary dict, held-out scores). The summary has val_roc_auc, roc_auc and its 95%
        patient-bootstrap interval roc_auc_ci, youden_threshold, and at_youden / at_0.5 with
        balanced_accuracy, sensitivity and specificity.
    """
    from medtl.stats.bootstrap import bootstrap_ci
    from medtl.stats.metrics import binary_metrics, roc_auc
    from medtl.stats.thresholds import choose_threshold

    val = result.val_predictions
    threshold = choose_threshold(val["label"].to_numpy(), val["score"].to_numpy(), "youden")
    scores = predict_scores(result.model, cfg, test)
    y = test.targets()[:, 0]
    ci = bootstrap_ci(y, scores, "roc_auc", groups=test.df["patient_id"].astype(str).to_numpy(),
                      n_boot=n_boot, seed=seed)
    keys = ("balanced_accuracy", "sensitivity", "specificity")
    at = {name: {k: binary_metrics(y, scores, t)[k] for k in keys}
          for name, t in (("at_youden", threshold), ("at_0.5", 0.5))}
    summary = {
        "val_roc_auc": roc_auc(val["label"].to_numpy(), val["score"].to_numpy()),
        "roc_auc": ci.point,
        "roc_auc_ci": [ci.low, ci.high],
        "youden_threshold": threshold,
        **at,
    }
    return summary, scores


def init_overrides(cfg_path: Path, work: Path, weights: Path, size: int, max_epochs: int
                   ) -> tuple[list[str], list[list]]:
    """Config overrides that train the ``medtl init`` settings of ``cfg_path`` at CPU size:
    MobileNetV2 from ``weights`` at ``size`` px, each stage capped at ``max_epochs``, caches and
    runs under ``work``. Returns (overrides, [[unfreeze, epochs, lr] per stage])."""
    from medtl.config import load_config

    base = ["model.backbone=mobilenetv2", f"model.weights={weights}", f"data.image_size=[{size},{size}]",
            f"data.cache_dir={work / 'cache'}", f"output_dir={work / 'runs'}"]
    stages = load_config(cfg_path, base).train.stages
    caps = [f"train.stages.{i}.epochs={min(st.epochs, max_epochs)}" for i, st in enumerate(stages)]
    return base + caps, [[st.unfreeze, min(st.epochs, max_epochs), st.lr] for st in stages]
