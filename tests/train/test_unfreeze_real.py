"""Staged fine-tuning of real ImageNet weights on real chest X-rays must not collapse.

Issue 3 measured a plain Keras transfer-learning script on the Kermany films: validation ROC AUC
0.986 after the head stage, then 0.50 after unfreezing everything at lr 1e-5 (every film called
pneumonia), because BatchNormalization ran on batch statistics. medtl's stages keep it frozen.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def test_unfreezing_all_after_the_head_does_not_lower_validation_auc(kermany_dir, mobilenet_weights, tmp_path):
    from medtl.config import config_from_dict
    from medtl.stats.metrics import roc_auc
    from medtl.train.trainer import train

    df = pd.read_csv(kermany_dir / "labels.csv")
    # NORMAL rows carry no person_id; their study id is in the file name (IM-0115-0001 -> IM-0115).
    stem = df["file"].str.rsplit("/", n=1).str[-1].str.split("-").str[:2].str.join("-")
    df["patient"] = df["person_id"].astype("string").fillna(stem)
    rng = np.random.default_rng(0)
    picks = [rng.choice(df.index[df["label"] == k], 120, replace=False) for k in (0, 1)]
    sub = df.loc[np.concatenate(picks), ["file", "label", "patient"]]
    sub["file"] = [str(kermany_dir / f) for f in sub["file"]]
    csv = tmp_path / "labels.csv"
    sub.to_csv(csv, index=False)
    cfg = config_from_dict({
        "name": "unfreeze", "seed": 1, "output_dir": str(tmp_path / "runs"),
        "data": {"manifest": str(csv), "patient_column": "patient", "classes": ["normal", "pneumonia"],
                 "image_size": [96, 96], "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.3},
        "augment": {"preset": "none"},
        "model": {"backbone": "mobilenetv2", "weights": str(mobilenet_weights), "dropout": 0.2},
        "train": {"batch_size": 16, "patience": 10, "mixed_precision": "off", "distribute": "none",
                  "stages": [{"unfreeze": "head", "epochs": 3, "lr": 1e-3},
                             {"unfreeze": "all", "epochs": 2, "lr": 1e-5}]},
    })
    res = train(cfg, progress=False)
    hist = pd.read_csv(res.run_dir / "history.csv")
    head_auc = hist.loc[hist["stage"] == 1, "val_roc_auc"].max()
    all_auc = hist.loc[hist["stage"] == 2, "val_roc_auc"].to_numpy()
    assert head_auc > 0.85, f"head stage reached only {head_auc:.3f}"
    assert all_auc.min() >= head_auc - 0.03, f"unfreezing everything dropped val AUC {head_auc:.3f} -> {all_auc}"
    val = res.val_predictions
    assert roc_auc(val["label"], val["score"]) >= head_auc - 0.03
    assert 0.1 < (val["score"] >= 0.5).mean() < 0.9, "the model calls nearly every film one class"
